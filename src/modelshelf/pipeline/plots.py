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
    from modelshelf.registry.core import Release


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


def versions(releases: Sequence[Release], path: Path, metrics: Sequence[str] | None = None) -> Path:
    """The metrics of every release over time (by tag date), one line per metric."""
    from datetime import datetime

    plt = _pyplot()
    with_cards = [r for r in releases if r.card]
    if not with_cards:
        raise ConfigError("--plot", "no release with a card to plot", "run `shelf release` first")
    ordered = sorted(with_cards, key=lambda r: (r.timestamp, r.version))
    names = list(metrics or sorted({m for r in ordered for m in r.card.get("metrics", {})}))  # type: ignore[union-attr]
    fig, ax = plt.subplots(figsize=(8, 3.6))
    when = [datetime.fromtimestamp(r.timestamp) for r in ordered]
    for m in names:
        ax.plot(when, [r.card.get("metrics", {}).get(m) for r in ordered], marker="o", label=m)  # type: ignore[union-attr]
    if len(ordered) <= 20:  # few releases: name them on the axis
        ax.set_xticks(when, [f"v{r.version}\n{t:%Y-%m-%d}" for t, r in zip(when, ordered, strict=True)],
                      fontsize=7)
    else:
        fig.autofmt_xdate()
    ax.set_title(f"{ordered[0].name}: metrics per release", fontsize=10)
    ax.legend(fontsize=7, ncol=3, loc="best")
    path.parent.mkdir(parents=True, exist_ok=True)
    out = _save(fig, path)
    plt.close(fig)
    return out
