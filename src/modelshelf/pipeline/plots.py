"""PNG charts people would rather look at than read: drift per feature, metrics per release.

matplotlib is an optional dependency (``pip install 'modelshelf[plots]'``).
"""

from __future__ import annotations

import io
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modelshelf import artefacts
from modelshelf.errors import ConfigError

if TYPE_CHECKING:
    from modelshelf.drift.profile import DriftResult
    from modelshelf.registry.core import Assignment, Release


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise ConfigError("--plot", "matplotlib is not installed",
                          "install it with `pip install 'modelshelf[plots]'`") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    with artefacts.atomic_output(path, "wb") as fh:
        fh.write(buf.getvalue())
    return path


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "feature"


def drift(result: DriftResult, out_dir: Path, version: str) -> list[Path]:
    """One PNG per feature (training vs new shares per bin), plus ``overview.png`` (PSI per feature)."""
    plt = _pyplot()
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    rows = [f for f in ([result.prediction] if result.prediction else []) + list(result.features) if f.bins]
    colour = {"ok": "#4c9a2a", "warn": "#e0a100", "drift": "#c0392b"}
    for f in rows:
        fig, ax = plt.subplots(figsize=(7, 3.2))
        x = range(len(f.bins))
        ax.bar([i - 0.2 for i in x], f.ref_shares, width=0.4, label=f"training (v{version})", color="#7f8c8d")
        ax.bar([i + 0.2 for i in x], f.new_shares, width=0.4, label="new data", color=colour[f.level])
        ax.set_xticks(list(x), f.bins, rotation=35, ha="right", fontsize=7)
        ax.set_ylabel("share of rows")
        ax.set_title(f"{f.name}: PSI {f.psi:.3f}, {f.test} p={f.p_value:.2g} ({f.level})", fontsize=9)
        ax.legend(fontsize=7)
        written.append(_save(fig, out_dir / f"{_slug(f.name)}.png"))
        plt.close(fig)
    if result.features:
        ordered = sorted(result.features, key=lambda f: f.psi)
        fig, ax = plt.subplots(figsize=(7, max(2.5, 0.25 * len(ordered))))
        ax.barh([f.name for f in ordered], [f.psi for f in ordered], color=[colour[f.level] for f in ordered])
        ax.axvline(result.thresholds.psi_warn, color="#e0a100", linestyle="--", linewidth=1, label="warn")
        ax.axvline(result.thresholds.psi_alert, color="#c0392b", linestyle="--", linewidth=1, label="alert")
        ax.set_xlabel("PSI")
        ax.set_title(f"drift against v{version}: {result.verdict}", fontsize=10)
        ax.tick_params(axis="y", labelsize=7)
        ax.legend(fontsize=7)
        written.append(_save(fig, out_dir / "overview.png"))
        plt.close(fig)
    return written


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
