"""Vega-Lite helpers shared by every chart modelshelf draws: offline pages, PNG and SVG.

Vega, Vega-Lite and vega-embed come from ``vl-convert-python``'s bundle, so a page written
here (and DVC's ``dvc plots show`` page, through :func:`dvc_html_template`) renders with no
network.  ``vl_convert`` is a heavy native module: it is imported only inside the functions
that render, never on a stage's or ``shelf serve``'s start-up path.
"""

from __future__ import annotations

import html
import json
from functools import cache
from typing import Any

from modelshelf.errors import ConfigError

SCHEMA = "https://vega.github.io/schema/vega-lite/v5.json"
#: DVC's ``plots.html_template``, relative to the ``.dvc`` directory (how DVC reads the key).
HTML_TEMPLATE = "plots/modelshelf.html"
#: The custom DVC template for curves (ROC, precision-recall): one line per class.
CURVE_TEMPLATE = "modelshelf_curve"
CURVE_TEMPLATE_FILE = f"plots/{CURVE_TEMPLATE}.json"

# Wraps vega-embed so that every chart on the page (DVC's inline `vegaEmbed('#id', spec)`
# calls included) draws as SVG, and a failure is a console error and a message in its div.
_EMBED = """<script>
(function () {
  var embed = window.vegaEmbed;
  window.vegaEmbed = function (el, spec, opts) {
    var options = Object.assign({renderer: "svg", actions: false}, opts || {});
    return embed(el, spec, options).catch(function (err) {
      console.error("chart failed: " + err);
      var target = typeof el === "string" ? document.querySelector(el) : el;
      if (target) { target.appendChild(document.createTextNode("chart failed: " + err)); }
    });
  };
})();
</script>"""


def _vlc() -> Any:
    try:
        import vl_convert
    except ImportError:
        raise ConfigError("charts", "vl-convert-python is not installed",
                          "install it with `pip install vl-convert-python`") from None
    return vl_convert


@cache
def bundle() -> str:
    """Vega, Vega-Lite and vega-embed as one script that sets ``window.vegaEmbed`` (about 1 MB)."""
    return str(_vlc().javascript_bundle())


def _script(js: str) -> str:
    # The bundle holds no "</script" today; escape it anyway so it can never end the tag early.
    return "<script>\n" + js.replace("</script", "<\\/script") + "\n</script>"


def dvc_html_template() -> str:
    """The page ``dvc plots show`` fills (``{plot_divs}``), with the bundle inline and no CDN.

    It has no ``{scripts}`` placeholder: DVC would put its CDN ``<script>`` tags there.
    """
    return (f"<!DOCTYPE html>\n<html>\n<head>\n<meta charset=\"utf-8\">\n{{refresh_tag}}\n"
            f"<title>DVC plots (modelshelf)</title>\n{_script(bundle())}\n{_EMBED}\n"
            "<style>body { font-family: sans-serif; } table { border-spacing: 15px; }</style>\n"
            "</head>\n<body>\n{plot_divs}\n</body>\n</html>\n")


def curve_template() -> str:
    """DVC's custom template for ROC and precision-recall: one line per ``class``, dashed per revision."""
    axis = {"type": "quantitative", "scale": {"domain": [0, 1]}}
    spec = {
        "$schema": SCHEMA,
        "data": {"values": "<DVC_METRIC_DATA>"},
        "title": "<DVC_METRIC_TITLE>",
        "width": 300,
        "height": 300,
        "mark": {"type": "line", "tooltip": {"content": "data"}, "interpolate": "linear"},
        "encoding": {
            "x": {"field": "<DVC_METRIC_X>", "title": "<DVC_METRIC_X_LABEL>", **axis},
            "y": {"field": "<DVC_METRIC_Y>", "title": "<DVC_METRIC_Y_LABEL>", **axis},
            "color": {"field": "class", "type": "nominal", "title": "class"},
            "strokeDash": {"field": "rev", "type": "nominal", "title": "revision"},
            "order": {"field": "rank", "type": "quantitative"},
        },
    }
    return json.dumps(spec, indent=2) + "\n"


def offline_html(title: str, specs: list[dict[str, Any]]) -> str:
    """A standalone page of Vega-Lite ``specs`` (SVG renderer) that needs no network."""
    divs = []
    for i, spec in enumerate(specs):
        data = json.dumps(spec).replace("</", "<\\/")
        divs.append(f'<div id="chart-{i}" class="chart"></div>\n'
                    f'<script type="application/json" id="spec-{i}">{data}</script>')
    run = ('<script>\nfor (const el of document.querySelectorAll("script[id^=spec-]")) {\n'
           '  vegaEmbed("#chart-" + el.id.slice(5), JSON.parse(el.textContent));\n}\n</script>')
    return (f"<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<title>{html.escape(title)}</title>\n{_script(bundle())}\n{_EMBED}\n</head>\n<body>\n"
            f"<h1>{html.escape(title)}</h1>\n" + "\n".join(divs) + f"\n{run}\n</body>\n</html>\n")


def to_png(spec: dict[str, Any], scale: float = 2.0) -> bytes:
    """``spec`` rendered as PNG bytes."""
    return bytes(_vlc().vegalite_to_png(spec, scale=scale))


def to_svg(spec: dict[str, Any]) -> str:
    """``spec`` rendered as an SVG document."""
    return str(_vlc().vegalite_to_svg(spec))


# --------------------------------------------------------------------------- evaluate's plots

#: The kinds :func:`plot_spec` draws, by the file stem the evaluate stage writes.
KINDS = ("confusion", "roc", "precision_recall", "fit", "residuals")


def plot_spec(kind: str, rows: list[dict[str, Any]], title: str | None = None) -> dict[str, Any]:
    """A Vega-Lite spec of one of the evaluate stage's plots (``metrics/plots/*.json`` rows).

    ``kind``: ``confusion`` and ``fit``/``residuals`` read ``predictions`` rows, ``roc`` and
    ``precision_recall`` their own (with a ``class`` column).
    """
    base: dict[str, Any] = {"$schema": SCHEMA, "title": title or kind.replace("_", "-"),
                            "data": {"values": rows}, "width": 300, "height": 300}
    q = "quantitative"
    if kind == "confusion":
        return base | {
            "transform": [{"aggregate": [{"op": "count", "as": "rows"}], "groupby": ["actual", "predicted"]}],
            "encoding": {"x": {"field": "predicted", "type": "nominal"},
                         "y": {"field": "actual", "type": "nominal"}},
            "layer": [{"mark": "rect", "encoding": {"color": {"field": "rows", "type": q}}},
                      {"mark": "text", "encoding": {"text": {"field": "rows", "type": q}}}],
        }
    if kind in ("roc", "precision_recall"):
        x, y = ("fpr", "tpr") if kind == "roc" else ("recall", "precision")
        unit = {"type": q, "scale": {"domain": [0, 1]}}
        return base | {"mark": "line", "encoding": {
            "x": {"field": x, **unit}, "y": {"field": y, **unit},
            "color": {"field": "class", "type": "nominal"}, "order": {"field": "rank", "type": q}}}
    if kind == "fit":
        return base | {"layer": [
            {"mark": {"type": "point", "opacity": 0.6},
             "encoding": {"x": {"field": "actual", "type": q}, "y": {"field": "predicted", "type": q}}},
            {"transform": [{"aggregate": [{"op": "min", "field": "actual", "as": "lo"},
                                          {"op": "max", "field": "actual", "as": "hi"}]},
                           {"fold": ["lo", "hi"], "as": ["end", "v"]}],
             "mark": {"type": "line", "strokeDash": [4, 4], "color": "grey"},
             "encoding": {"x": {"field": "v", "type": q}, "y": {"field": "v", "type": q}}}]}
    if kind == "residuals":
        return base | {"layer": [
            {"mark": {"type": "point", "opacity": 0.6},
             "encoding": {"x": {"field": "predicted", "type": q}, "y": {"field": "residual", "type": q}}},
            {"mark": {"type": "rule", "color": "grey"}, "encoding": {"y": {"datum": 0}}}]}
    raise ConfigError("plot kind", f"unknown kind {kind!r}", f"use one of {', '.join(KINDS)}")


#: Each task family's plots, as ``(kind, the evaluate stage's file stem, title)``; the titles are
#: the names of the plot entries ``shelf init`` declares in dvc.yaml.
TASK_PLOTS: dict[str, tuple[tuple[str, str, str], ...]] = {
    "classification": (("confusion", "predictions", "Confusion matrix"), ("roc", "roc", "ROC"),
                       ("precision_recall", "precision_recall", "Precision-recall")),
    "regression": (("fit", "predictions", "Predicted vs actual"), ("residuals", "predictions", "Residuals")),
}


def task_specs(plots: dict[str, list[dict[str, Any]]], task: str,
               kinds: tuple[str, ...] | None = None) -> dict[str, tuple[str, dict[str, Any]]]:
    """``{kind: (title, spec)}`` of a task's plots from the evaluate stage's ``{stem: rows}``.

    ``task``: binary, multiclass, classification or regression; ``kinds`` keeps only those (in
    the task's order).  A plot whose data is missing or empty is left out.
    """
    family = "regression" if task == "regression" else "classification"
    return {kind: (title, plot_spec(kind, plots[stem], title)) for kind, stem, title in TASK_PLOTS[family]
            if (kinds is None or kind in kinds) and plots.get(stem)}


def task_plots(plots: dict[str, list[dict[str, Any]]], task: str) -> dict[str, dict[str, Any]]:
    """The Vega-Lite specs of a task's plots from the evaluate stage's ``{stem: rows}``, by name."""
    return dict(task_specs(plots, task).values())
