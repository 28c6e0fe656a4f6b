"""Drift charts as Vega-Lite specs (for a page to embed), rendered to PNG offline by vl-convert.

One chart per feature (training against new shares of rows per bin or category, missing
values as a bar of their own) and an overview: PSI per feature on a symmetric-log axis, so the
warn and alert lines stay readable beside an outlier, and the missing rates, training → new.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

from modelshelf import artefacts
from modelshelf.drift.profile import OTHER, DriftResult, FeatureDrift

SCHEMA = "https://vega.github.io/schema/vega-lite/v5.json"
MISSING = "(missing)"
OTHER_LABEL = "(other)"
GREY = "#7f8c8d"
COLOUR = {"ok": "#4c9a2a", "warn": "#e0a100", "drift": "#c0392b"}
LINES = {"warn": "#e0a100", "alert": "#c0392b"}
ROW_PX = 18  # overview height per feature


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "feature"


def _psi_text(f: FeatureDrift) -> str:
    return "∞" if math.isinf(f.psi) else f"{f.psi:.3g}"


def _title(f: FeatureDrift) -> dict[str, Any]:
    test = f"{f.test} p={f.p_value:.2g}"
    rates = f"missing {f.missing_ref:.1%} → {f.missing_new:.1%}"
    others = [r for r in f.reasons if r != rates]
    sub = [f"{rates}" + (f" ({f.level})" if rates in f.reasons else "")] + (
        [f"{f.level}: " + "; ".join(others)] if others else [])
    return {"text": f"{f.name}: PSI {_psi_text(f)}, {test} ({f.level})", "subtitle": sub,
            "anchor": "start", "fontSize": 13}


def feature_spec(f: FeatureDrift, version: str) -> dict[str, Any]:
    """Shares of rows per bin (or category, by name) and missing, training against new data."""
    train = f"training (v{version})"
    labels = [OTHER_LABEL if b == OTHER else b for b in f.bins] + [MISSING]
    rows = []
    for source, shares, missing in ((train, f.ref_shares, f.missing_ref), ("new data", f.new_shares, f.missing_new)):
        present = 1.0 - missing
        values = [s * present for s in shares] + [missing]
        rows += [{"order": i, "bin": labels[i], "source": source, "share": float(v)} for i, v in enumerate(values)]
    # x is the bin's position: two decile bins may share a label (ties in the percentiles).
    label_expr = json.dumps(labels, ensure_ascii=False) + "[datum.value]"
    return {
        "$schema": SCHEMA,
        "title": _title(f),
        "width": max(360, 44 * len(labels)),
        "height": 200,
        "data": {"values": rows},
        "mark": {"type": "bar"},
        "encoding": {
            "x": {"field": "order", "type": "ordinal", "title": None,
                  "axis": {"labelExpr": label_expr, "labelAngle": -35, "labelLimit": 140}},
            "xOffset": {"field": "source", "sort": [train, "new data"]},
            "y": {"field": "share", "type": "quantitative", "title": "share of rows", "axis": {"format": "%"}},
            "color": {"field": "source", "type": "nominal", "sort": [train, "new data"],
                      "scale": {"domain": [train, "new data"], "range": [GREY, COLOUR[f.level]]},
                      "legend": {"orient": "top", "title": None}},
            "tooltip": [{"field": "bin", "title": "bin"}, {"field": "source"},
                        {"field": "share", "format": ".2%"}],
        },
    }


def _psi_scale(result: DriftResult) -> dict[str, Any]:
    """Symmetric log: linear below about psi_warn / 2, logarithmic above, from 0 to a little past
    the largest finite PSI (at least twice the alert level)."""
    th = result.thresholds
    finite = [f.psi for f in result.features if math.isfinite(f.psi)]
    top = max([th.psi_alert * 2, 0.05] + [1.15 * v for v in finite])
    return {"type": "symlog", "constant": max(th.psi_warn / 2, 1e-3), "domain": [0, top], "nice": False,
            "clamp": True}


def overview_spec(result: DriftResult, version: str) -> dict[str, Any]:
    """PSI per feature with the warn and alert lines, beside each feature's missing rates."""
    th = result.thresholds
    ordered = sorted(result.features, key=lambda f: -f.psi)
    names = [f.name for f in ordered]
    scale = _psi_scale(result)
    top = scale["domain"][1]
    rows = [{"feature": f.name, "psi": f.psi if math.isfinite(f.psi) else top, "psi_text": _psi_text(f),
             "level": f.level, "colour": COLOUR[f.level], "missing_ref": f.missing_ref,
             "missing_new": f.missing_new, "reasons": "; ".join(f.reasons) or "—",
             "missing_colour": COLOUR["drift" if any(r.startswith("missing") for r in f.reasons) and f.level == "drift"
                                      else "warn" if any(r.startswith("missing") for r in f.reasons) else "ok"]}
            for f in ordered]
    ticks = [0, th.psi_warn, th.psi_alert] + [10.0 ** k for k in range(0, 4) if 10.0 ** k <= top]
    x = {"field": "psi", "type": "quantitative", "scale": scale, "title": "PSI (symmetric log scale)",
         "axis": {"values": sorted(set(ticks)), "format": "~g", "grid": True}}
    y = {"field": "feature", "type": "nominal", "sort": names, "title": None}
    height = max(120, ROW_PX * len(ordered))
    lines = [{"psi": th.psi_warn, "line": f"warn {th.psi_warn:g}", "colour": LINES["warn"]},
             {"psi": th.psi_alert, "line": f"alert {th.psi_alert:g}", "colour": LINES["alert"]}]
    psi_panel = {
        "width": 420, "height": height, "title": "population stability index",
        "layer": [
            {"data": {"values": rows}, "mark": {"type": "bar"},
             "encoding": {"x": x, "y": y, "color": {"field": "colour", "type": "nominal", "scale": None},
                          "tooltip": [{"field": "feature"}, {"field": "psi_text", "title": "PSI"},
                                      {"field": "level"}, {"field": "reasons"}]}},
            {"data": {"values": lines}, "mark": {"type": "rule", "strokeDash": [4, 3], "strokeWidth": 1.5},
             "encoding": {"x": x, "color": {"field": "colour", "type": "nominal", "scale": None}}},
            {"data": {"values": lines}, "mark": {"type": "text", "dy": -4, "align": "center", "baseline": "bottom",
                                                 "fontSize": 10},
             "encoding": {"x": x, "y": {"value": 0}, "text": {"field": "line"},
                          "color": {"field": "colour", "type": "nominal", "scale": None}}},
            {"data": {"values": rows}, "mark": {"type": "text", "align": "left", "dx": 3, "fontSize": 10},
             "encoding": {"x": x, "y": y, "text": {"field": "psi_text"}}},
        ],
    }
    rate = {"type": "quantitative", "scale": {"domain": [0, 1]}, "axis": {"format": "%"}}
    missing_panel = {
        "width": 220, "height": height, "title": "missing values: training → new",
        "data": {"values": rows},
        "layer": [
            {"mark": {"type": "rule", "color": GREY},
             "encoding": {"x": {"field": "missing_ref", **rate, "title": "share of rows missing"},
                          "x2": {"field": "missing_new"}, "y": {**y, "axis": {"labels": False}}}},
            {"mark": {"type": "point", "filled": False, "color": GREY, "size": 40},
             "encoding": {"x": {"field": "missing_ref", **rate}, "y": y}},
            {"mark": {"type": "point", "filled": True, "size": 50},
             "encoding": {"x": {"field": "missing_new", **rate}, "y": y,
                          "color": {"field": "missing_colour", "type": "nominal", "scale": None},
                          "tooltip": [{"field": "feature"}, {"field": "missing_ref", "format": ".1%", "title": "training"},
                                      {"field": "missing_new", "format": ".1%", "title": "new"}]}},
        ],
    }
    return {"$schema": SCHEMA, "title": {"text": f"drift against v{version}: {result.verdict}", "anchor": "start"},
            "hconcat": [psi_panel, missing_panel], "spacing": 12}


def specs(result: DriftResult, version: str) -> dict[str, dict[str, Any]]:
    """Every chart of ``result`` by file stem: one per feature (and the predictions) with bins or
    missing values, and ``overview`` (when there are features)."""
    out: dict[str, dict[str, Any]] = {}
    for f in ([result.prediction] if result.prediction else []) + list(result.features):
        if not (f.bins or f.missing_ref or f.missing_new):
            continue  # nothing to draw (a feature with no values has only its missing bar)
        stem = _slug(f.name)
        while stem in out or stem == "overview":
            stem += "_"
        out[stem] = feature_spec(f, version)
    if result.features:
        out["overview"] = overview_spec(result, version)
    return out


def write(result: DriftResult, out_dir: Path, version: str) -> list[Path]:
    """Render :func:`specs` to ``out_dir/STEM.png`` (each written atomically); the paths written."""
    import vl_convert

    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for stem, spec in specs(result, version).items():
        png = vl_convert.vegalite_to_png(spec, scale=2)
        path = out_dir / f"{stem}.png"
        with artefacts.atomic_output(path, "wb") as fh:
            fh.write(png)
        written.append(path)
    return written
