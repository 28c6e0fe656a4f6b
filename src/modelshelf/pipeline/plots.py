"""PNG charts people would rather look at than read: metrics per release (drift's charts are
:mod:`modelshelf.drift.charts`).

matplotlib is an optional dependency (``pip install 'modelshelf[plots]'``).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modelshelf import artefacts
from modelshelf.errors import ConfigError

if TYPE_CHECKING:
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
