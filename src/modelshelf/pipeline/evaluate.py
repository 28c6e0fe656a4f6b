"""Held-out metrics and plot data for ``dvc plots``."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd


def _scores(model: Any, X: pd.DataFrame) -> Any:
    """Class scores for ROC: probabilities if available, else the decision function."""
    if hasattr(model, "predict_proba"):
        try:
            return model.predict_proba(X)
        except AttributeError:  # e.g. SVC(probability=False) exposes the attribute but refuses
            pass
    if hasattr(model, "decision_function"):
        return model.decision_function(X)
    return None


def evaluate(model: Any, X: pd.DataFrame, y: pd.Series, task: str) -> tuple[dict[str, float], dict[str, list[dict[str, Any]]]]:
    """``(metrics, plots)`` of ``model`` on the held-out ``(X, y)``.

    Metric names follow :mod:`modelshelf.pipeline.metrics`; plots map a file stem to rows.
    """
    import numpy as np
    from sklearn import metrics as skm

    pred = model.predict(X)
    plots: dict[str, list[dict[str, Any]]] = {
        "predictions": [{"actual": _py(a), "predicted": _py(p)} for a, p in zip(y, pred, strict=True)],
    }
    if task == "regression":
        plots["predictions"] = [{"actual": _py(a), "predicted": _py(p), "residual": _py(a - p)}
                                for a, p in zip(y, pred, strict=True)]
        out = {
            "rmse": math.sqrt(skm.mean_squared_error(y, pred)),
            "mae": skm.mean_absolute_error(y, pred),
            "r2": skm.r2_score(y, pred),
        }
        return _finite(out), plots

    out = {"accuracy": skm.accuracy_score(y, pred)}
    scores = _scores(model, X)
    classes = list(model.classes_)
    if task == "binary":
        pos = classes[1]
        out |= {
            "precision": skm.precision_score(y, pred, pos_label=pos, zero_division=0),
            "recall": skm.recall_score(y, pred, pos_label=pos, zero_division=0),
            "f1": skm.f1_score(y, pred, pos_label=pos, zero_division=0),
        }
        if scores is not None:
            s = scores[:, 1] if np.ndim(scores) == 2 else scores
            y_pos = (np.asarray(y) == pos)
            out["roc_auc"] = skm.roc_auc_score(y_pos, s)
            plots["roc"], plots["precision_recall"] = _curves(y_pos, s, pos)
    else:
        out |= {
            "precision_macro": skm.precision_score(y, pred, average="macro", zero_division=0),
            "recall_macro": skm.recall_score(y, pred, average="macro", zero_division=0),
            "f1_macro": skm.f1_score(y, pred, average="macro", zero_division=0),
        }
        if scores is not None and np.ndim(scores) == 2 and len(set(y)) == len(classes):
            proba = scores if hasattr(model, "predict_proba") and np.allclose(scores.sum(axis=1), 1) else None
            if proba is not None:
                out["roc_auc_ovr"] = skm.roc_auc_score(y, proba, multi_class="ovr", average="macro",
                                                       labels=classes)
        if scores is not None and np.ndim(scores) == 2 and scores.shape[1] == len(classes):
            # One-vs-rest curves, one per class, in one file: the `class` column tells them apart.
            plots["roc"], plots["precision_recall"] = [], []
            for i, cls in enumerate(classes):
                y_pos = (np.asarray(y) == cls)
                if y_pos.all() or not y_pos.any():
                    continue  # a class absent from (or alone in) the test split has no curve
                roc, pr = _curves(y_pos, scores[:, i], cls)
                plots["roc"] += roc
                plots["precision_recall"] += pr
    return _finite(out), plots


def _curves(y_pos: Any, score: Any, cls: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """ROC and precision-recall rows of one class against the rest (``rank``: the drawing order)."""
    from sklearn import metrics as skm

    label = str(_py(cls))
    fpr, tpr, thr = skm.roc_curve(y_pos, score)
    roc = [{"class": label, "rank": i, "fpr": _py(f), "tpr": _py(t), "threshold": _clip(th)}
           for i, (f, t, th) in enumerate(zip(fpr, tpr, thr, strict=True))]
    prec, rec, thr = skm.precision_recall_curve(y_pos, score)
    pr = [{"class": label, "rank": i, "precision": _py(p), "recall": _py(r), "threshold": _clip(th)}
          for i, (p, r, th) in enumerate(zip(prec, rec, [*thr, 1.0], strict=True))]
    return roc, pr


def _finite(metrics: dict[str, Any]) -> dict[str, float]:
    # NaN is kept (as a float) so that the gate can fail on it explicitly.
    return {k: float(v) for k, v in metrics.items()}


def _clip(value: Any) -> float:
    v = float(value)
    return v if math.isfinite(v) else 1.0


def _py(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value
