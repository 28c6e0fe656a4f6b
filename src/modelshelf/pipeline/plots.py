"""The registry's metrics per release as a PNG (drift's charts are :mod:`modelshelf.drift.charts`),
drawn as Vega-Lite and rendered offline by :mod:`modelshelf.charts`."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modelshelf import artefacts
from modelshelf.errors import ConfigError

if TYPE_CHECKING:
    from modelshelf.registry.core import Assignment, Release


def versions(releases: Sequence[Release], path: Path, metrics: Sequence[str] | None = None,
             assignments: Sequence[Assignment] = ()) -> Path:
    """A PNG of every release's metrics over time (by tag date): one panel per metric on its
    own y axis, the gate's threshold of each release dashed, and a rule at every stage change."""
    from datetime import UTC, datetime

    from modelshelf import charts

    with_cards = [r for r in releases if r.card]
    if not with_cards:
        raise ConfigError("--plot", "no release with a card to plot", "run `shelf release` first")
    ordered = sorted(with_cards, key=lambda r: (r.timestamp, r.version))

    def iso(ts: int) -> str:
        return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

    names = list(metrics or sorted({m for r in ordered for m in r.card.get("metrics", {})}))  # type: ignore[union-attr]
    events = [{"date": iso(a.timestamp), "stage": a.stage,
               "event": f"{a.stage} → v{a.version}" if a.version else f"{a.stage} unassigned"} for a in assignments]
    panels = []
    for m in names:
        rows = [{"date": iso(r.timestamp), "version": f"v{r.version}", "value": r.card.get("metrics", {}).get(m)}  # type: ignore[union-attr]
                for r in ordered]
        rows = [row for row in rows if isinstance(row["value"], int | float)]
        limits = [{"date": iso(r.timestamp), "threshold": t} for r in ordered
                  if isinstance(t := (r.card.get("gate", {}).get("checks", {}).get(m) or {}).get("threshold"),  # type: ignore[union-attr]
                                int | float)]
        x = {"field": "date", "type": "temporal", "title": None}
        layers: list[dict[str, Any]] = [
            {"data": {"values": rows}, "mark": {"type": "line", "point": True},
             "encoding": {"x": x, "y": {"field": "value", "type": "quantitative", "title": m,
                                        "scale": {"zero": False}}}},
            {"data": {"values": rows}, "mark": {"type": "text", "dy": -10, "fontSize": 9},
             "encoding": {"x": x, "y": {"field": "value", "type": "quantitative"}, "text": {"field": "version"}}}]
        if limits:
            layers.append({"data": {"values": limits},
                           "mark": {"type": "line", "interpolate": "step-after", "strokeDash": [6, 4],
                                    "color": "#c0392b"},
                           "encoding": {"x": x, "y": {"field": "threshold", "type": "quantitative"}}})
        if events:
            layers.append({"data": {"values": events}, "mark": {"type": "rule", "strokeDash": [2, 2]},
                           "encoding": {"x": x, "color": {"field": "stage", "type": "nominal",
                                                          "title": "stage change"}}})
        panels.append({"title": m, "width": 560, "height": 140, "layer": layers})
    spec = {"$schema": charts.SCHEMA, "title": f"{ordered[0].name}: metrics per release",
            "vconcat": panels, "resolve": {"scale": {"y": "independent"}}}
    png = charts.to_png(spec)
    with artefacts.atomic_output(path, "wb") as fh:
        fh.write(png)
    return path
