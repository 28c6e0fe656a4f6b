"""The metric catalogue: every metric modelshelf computes, its direction and task kind."""

from __future__ import annotations

from dataclasses import dataclass
from collections.abc import Iterable
from typing import Literal

Task = Literal["binary", "multiclass", "regression"]


@dataclass(frozen=True)
class MetricSpec:
    name: str
    higher_is_better: bool
    tasks: frozenset[str]


def _spec(name: str, higher: bool, *tasks: str) -> MetricSpec:
    return MetricSpec(name, higher, frozenset(tasks))


CATALOGUE: dict[str, MetricSpec] = {
    s.name: s
    for s in (
        _spec("accuracy", True, "binary", "multiclass"),
        _spec("precision", True, "binary"),
        _spec("recall", True, "binary"),
        _spec("f1", True, "binary"),
        _spec("roc_auc", True, "binary"),
        _spec("precision_macro", True, "multiclass"),
        _spec("recall_macro", True, "multiclass"),
        _spec("f1_macro", True, "multiclass"),
        _spec("roc_auc_ovr", True, "multiclass"),
        _spec("rmse", False, "regression"),
        _spec("mae", False, "regression"),
        _spec("r2", True, "regression"),
    )
}


def metrics_for(task: str) -> list[str]:
    """Names of the metrics a task produces, in catalogue order."""
    return [name for name, spec in CATALOGUE.items() if task in spec.tasks]


def higher_is_better(name: str) -> bool:
    return CATALOGUE[name].higher_is_better


def task_of(names: Iterable[str]) -> str | None:
    """The one task whose metric set covers ``names`` beyond accuracy, or None."""
    names = set(names) & set(CATALOGUE)
    fits = [t for t in ("binary", "multiclass", "regression") if names <= set(metrics_for(t))]
    return fits[0] if len(fits) == 1 else None
