"""Drift of new data against a model's training profile: ``shelf drift``.

``profile`` builds the training profile and compares new data with it, ``core`` finds a
model's reference profile and checks a file against it (:func:`check`), ``charts`` draws the
result.  Importing this package imports none of them (nor pandas): the pipeline's stages
import ``modelshelf.drift.profile`` on their lazy paths.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from modelshelf.drift.core import PREDICTION_SAMPLE, DriftReport, check

__all__ = ["PREDICTION_SAMPLE", "DriftReport", "check"]


def __getattr__(name: str) -> Any:
    """``check``, ``DriftReport`` and ``PREDICTION_SAMPLE`` from :mod:`modelshelf.drift.core`, when first used."""
    if name in __all__:
        from modelshelf.drift import core

        return getattr(core, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
