"""``shelf site``: the registry as one static page, built from the git tags and the cards.

Every release (date, commit, author, gate verdict, metrics, its card and its diff against the
one before), who holds each stage and since when, and one chart per metric across releases
with its thresholds and the stage changes marked. The page needs no server and no network:
Vega, Vega-Lite and vega-embed come from ``vl-convert-python``'s bundle, written beside it.
"""

from __future__ import annotations

import html
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from modelshelf.card import diff_cards
from modelshelf.errors import ConfigError
from modelshelf.registry.core import Registry, Release, Workspace, open_registry

MARKER = ".modelshelf-site"   # in every directory this module writes, so a rebuild may replace it


@dataclass(frozen=True)
class Site:
    """What :func:`build` wrote."""

    index: Path
    releases: int
    charts: int


def build(start: str | Path = ".", out: str | Path = "build/registry") -> Site:
    """Write the registry's static page: ``out/index.html``, ``out/assets/``, ``out/cards/``.

    The directory is built beside ``out`` and renamed into place, so a reader sees the old
    site or the new one, never half of one.

    Args:
        start: a directory inside the project.
        out: the site's directory (relative to the current directory).

    Returns:
        The :class:`Site`: the index page, the number of releases and of charts on it.

    Raises:
        ConfigError: ``out`` exists and is not a site this command wrote.
        GitError: not a git repository, or a clone without the model's tags.
    """
    out = Path(out).absolute()
    if out.exists() and not (out / MARKER).is_file():
        raise ConfigError(str(out), "exists and is not a site written by `shelf site`",
                          "choose another directory with -o, or remove it")
    reg = open_registry(Workspace.open(start))
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        specs = _write(reg, stage)
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        if out.exists():
            out.rename(old)
        stage.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    return Site(out / "index.html", len(reg.releases), specs)


def _write(reg: Registry, root: Path) -> int:
    (root / MARKER).write_text("written by `shelf site`; rebuilt as a whole\n", encoding="utf-8")
    (root / "assets").mkdir()
    (root / "assets" / "vega.js").write_text(_bundle(), encoding="utf-8")
    (root / "cards").mkdir()
    for rel in reg.releases:
        if rel.card is not None:
            (root / "cards" / f"v{rel.version}.json").write_text(json.dumps(rel.card, indent=2, sort_keys=True),
                                                                 encoding="utf-8")
    specs = metric_specs(reg)
    (root / "index.html").write_text(page(reg, specs), encoding="utf-8")
    return len(specs)


def _bundle() -> str:
    import vl_convert  # only here: a heavy native module

    return vl_convert.javascript_bundle()


def _when(timestamp: int) -> str:
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M UTC")


def _iso(timestamp: int) -> str:
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _num(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "" if value is None else str(value)
    return f"{value:.4g}"


def metric_specs(reg: Registry) -> list[dict[str, Any]]:
    """One Vega-Lite spec per metric: its value per release over time, the gate's threshold
    per release (dashed), and a rule at every stage change."""
    rows, thresholds = [], []
    for rel in reg.releases:
        card = rel.card or {}
        for metric, value in card.get("metrics", {}).items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                rows.append({"metric": metric, "version": f"v{rel.version}", "date": _iso(rel.timestamp),
                             "value": value})
        for metric, check in card.get("gate", {}).get("checks", {}).items():
            if isinstance(check.get("threshold"), int | float):
                thresholds.append({"metric": metric, "date": _iso(rel.timestamp), "threshold": check["threshold"]})
    events = [{"date": _iso(a.timestamp), "event": f"{a.stage} {'→ v' + str(a.version) if a.version else 'unassigned'}",
               "stage": a.stage} for a in reg.assignments]
    specs = []
    for metric in sorted({r["metric"] for r in rows}):
        mine = [r for r in rows if r["metric"] == metric]
        layers: list[dict[str, Any]] = [{
            "data": {"values": mine},
            "mark": {"type": "line", "point": {"size": 60}},
            "encoding": {"x": {"field": "date", "type": "temporal", "title": None},
                         "y": {"field": "value", "type": "quantitative", "title": metric,
                               "scale": {"zero": False}},
                         "tooltip": [{"field": "version"}, {"field": "value", "format": ".4g"},
                                     {"field": "date", "type": "temporal"}]},
        }]
        limit = [t for t in thresholds if t["metric"] == metric]
        if limit:
            layers.append({"data": {"values": limit},
                           "mark": {"type": "line", "interpolate": "step-after", "strokeDash": [6, 4],
                                    "color": "#c0392b"},
                           "encoding": {"x": {"field": "date", "type": "temporal"},
                                        "y": {"field": "threshold", "type": "quantitative"},
                                        "tooltip": [{"field": "threshold", "format": ".4g"}]}})
        if events:
            layers.append({"data": {"values": events}, "mark": {"type": "rule", "opacity": 0.5},
                           "encoding": {"x": {"field": "date", "type": "temporal"},
                                        "color": {"field": "stage", "type": "nominal", "title": "stage change"},
                                        "tooltip": [{"field": "event"}, {"field": "date", "type": "temporal"}]}})
        specs.append({"$schema": "https://vega.github.io/schema/vega-lite/v5.json",
                      "title": metric, "width": 560, "height": 160, "layer": layers})
    return specs


def _diff(old: Release | None, new: Release) -> str:
    if old is None or old.card is None or new.card is None:
        return "<p>first release</p>" if old is None else "<p>no card to compare</p>"
    changes = diff_cards(old.card, new.card)
    def names(card: dict[str, Any]) -> set[str]:
        return {f.get("name") for f in card.get("input_schema", {}).get("features", []) if isinstance(f, dict)}
    added, dropped = sorted(names(new.card) - names(old.card)), sorted(names(old.card) - names(new.card))
    rows = [(group, key, a, b) for group, items in changes.items() for key, (a, b) in items.items()]
    if not rows and not added and not dropped:
        return f"<p>no change from v{old.version}</p>"
    body = "".join(f"<tr><td>{html.escape(g)}</td><td>{html.escape(k)}</td><td>{html.escape(_num(a))}</td>"
                   f"<td>{html.escape(_num(b))}</td></tr>" for g, k, a, b in rows)
    extra = "".join(f"<p>{label}: {html.escape(', '.join(map(str, items)))}</p>"
                    for label, items in (("features added", added), ("features dropped", dropped)) if items)
    return (f"<table><tr><th></th><th>against v{old.version}</th><th>before</th><th>now</th></tr>{body}</table>"
            + extra)


def _script_json(value: Any) -> str:
    """JSON safe inside a ``<script>`` element: no ``</script>`` or ``<!--`` can end it early."""
    return json.dumps(value).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def page(reg: Registry, specs: list[dict[str, Any]]) -> str:
    """The index page's HTML (every value from git or a card is escaped)."""
    e = html.escape
    name = e(reg.name)
    holders = "".join(f"<tr><td>{e(stage)}</td><td>{e(str(v))}</td></tr>" for stage, v in sorted(reg.holders.items()))
    history = "".join(
        f"<tr><td>{e(_when(a.timestamp))}</td><td>{e(a.stage)}</td>"
        f"<td>{e('v' + str(a.version)) if a.version else ('unassigned' if a.kind == 'unassign' else e(a.commit[:12]))}"
        f"</td><td><code>{e(a.tag)}</code></td></tr>"
        for a in reversed(reg.assignments))
    metrics = sorted({m for r in reg.releases for m in (r.card or {}).get("metrics", {})})
    rows, details = [], []
    for rel in sorted(reg.releases, key=lambda r: r.version, reverse=True):
        card = rel.card or {}
        passed = card.get("gate", {}).get("passed")
        verdict = "passed" if passed else ("failed" if passed is False else "unknown")
        flags = " ".join(filter(None, ["deprecated" if rel.deprecated else "", e(rel.problem or "")]))
        cells = "".join(f"<td class=num>{e(_num(card.get('metrics', {}).get(m)))}</td>" for m in metrics)
        rows.append(f"<tr id='v{e(str(rel.version))}'><td><a href='#card-v{e(str(rel.version))}'>v{e(str(rel.version))}</a>"
                    f"</td><td>{e(_when(rel.timestamp))}</td><td><code>{e(rel.commit[:12])}</code></td>"
                    f"<td>{e(rel.author)}</td><td class='{verdict}'>{verdict}</td>{cells}"
                    f"<td>{e(', '.join(rel.stages))}</td><td>{flags}</td></tr>")
    ascending = list(reg.releases)
    for i, rel in enumerate(ascending):
        previous = ascending[i - 1] if i else None
        version = e(str(rel.version))
        card = json.dumps(rel.card, indent=2, sort_keys=True) if rel.card is not None else "(no card)"
        details.append(f"<details id='card-v{version}'><summary>v{version}: card and diff</summary>"
                       f"<h4>against the release before</h4>{_diff(previous, rel)}"
                       f"<h4>card</h4><p><a href='cards/v{version}.json'>cards/v{version}.json</a></p>"
                       f"<pre>{e(card)}</pre></details>")
    heads = "".join(f"<th>{e(m)}</th>" for m in metrics)
    divs = "".join(f"<div class=chart id='chart-{i}'></div>"
                   f"<script type='application/json' id='spec-{i}'>{_script_json(s)}</script>"
                   for i, s in enumerate(specs))
    newest = _when(reg.last_event) if reg.last_event else "no events"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{name}: model registry</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body {{ font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 1100px; padding: 0 1em; color: #222; }}
table {{ border-collapse: collapse; margin: .5em 0 1.5em; }}
th, td {{ border-bottom: 1px solid #ddd; padding: .25em .6em; text-align: left; vertical-align: top; }}
td.num {{ text-align: right; font-variant-numeric: tabular-nums; }}
.passed {{ color: #1e7b34; }} .failed {{ color: #b3261e; font-weight: bold; }}
pre {{ background: #f6f8fa; padding: .8em; overflow: auto; max-height: 30em; }}
details {{ margin: .4em 0; }} summary {{ cursor: pointer; }}
</style></head>
<body>
<h1>{name}</h1>
<p>{len(reg.releases)} releases; newest event {e(newest)}; built from the git tags and the cards at each release's commit.</p>
<h2>Stages</h2>
<table><tr><th>stage</th><th>held by</th></tr>{holders or "<tr><td colspan=2>no stage assigned</td></tr>"}</table>
<h2>Releases</h2>
<table><tr><th>version</th><th>date</th><th>commit</th><th>author</th><th>gate</th>{heads}<th>stages</th><th></th></tr>
{"".join(rows) or "<tr><td>no release yet</td></tr>"}</table>
<h2>Metrics across releases</h2>
{divs or "<p>no metrics to chart</p>"}
<h2>Stage history</h2>
<table><tr><th>date</th><th>stage</th><th>version</th><th>tag</th></tr>{history or "<tr><td colspan=4>none</td></tr>"}</table>
<h2>Cards</h2>
{"".join(details)}
<script src="assets/vega.js"></script>
<script>
for (const el of document.querySelectorAll("script[id^=spec-]")) {{
  const target = "#chart-" + el.id.slice(5);
  vegaEmbed(target, JSON.parse(el.textContent), {{renderer: "svg", actions: false}})
    .catch((err) => {{ console.error(err); document.querySelector(target).textContent = "chart failed: " + err; }});
}}
</script>
</body></html>
"""
