"""Paired confidence intervals of (candidate − baseline) for the gated metrics.

Both models are scored on the same held-out rows; each bootstrap replicate resamples those
rows once and computes both models' metric on that resample, so the interval is of the paired
difference.  Everything is vectorised over replicates:

- count metrics (accuracy, precision, recall, f1 and their macro forms) depend on a row only
  through its cell ``(label, candidate prediction, baseline prediction)``: a resample of ``n``
  rows is a multinomial draw over the observed cells (exact, and cheap at any ``n``);
- roc_auc, roc_auc_ovr, rmse, mae and r2 use per-replicate row weights (how many times each row
  is drawn): the exact multinomial counts of an index resample up to ``EXACT_ROWS`` rows, and
  above that independent Poisson(1) weights (the Poisson bootstrap, which approximates the
  multinomial closely at that size and is ~3× cheaper to draw).  AUC is the rank (Mann–Whitney)
  AUC with mid-rank ties, computed from cumulative weights over the rows sorted once, never
  re-sorted per replicate.

The interval is the percentile interval.  Deterministic: the random stream is seeded from
``seed`` (``data.random_state``) and the metric's name.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from modelshelf.pipeline.metrics import CATALOGUE

METHOD = "paired bootstrap"
EXACT_ROWS = 20_000          # above this many rows, Poisson(1) weights instead of index counts
CHUNK_CELLS = 131_072        # weights held at once (replicates × rows): small enough for the CPU cache
COUNT_METRICS = ("accuracy", "precision", "recall", "f1", "precision_macro", "recall_macro", "f1_macro")
WEIGHTED_METRICS = ("roc_auc", "roc_auc_ovr", "rmse", "mae", "r2")


@dataclass(frozen=True)
class Outputs:
    """One model's held-out outputs, aligned with ``y``.

    Classification: ``y`` and ``pred`` are class indices (into the candidate's ``classes_``),
    ``score`` the positive-class score (binary, 1-D) or class probabilities (multiclass, 2-D),
    or None.  Regression: ``y`` and ``pred`` are the values, ``score`` None.
    """

    y: np.ndarray
    pred: np.ndarray
    score: np.ndarray | None = None


@dataclass(frozen=True)
class Interval:
    """The paired difference (candidate − baseline) of one metric and its interval."""

    metric: str
    delta: float
    low: float
    high: float
    confidence: float           # the family's level, as configured
    level: float                # this metric's level after the Bonferroni correction
    resamples: int
    method: str = METHOD

    def to_json(self) -> dict[str, Any]:
        return {"delta": self.delta, "ci": [self.low, self.high], "confidence": self.confidence,
                "level": self.level, "method": self.method, "resamples": self.resamples,
                "correction": "bonferroni"}

    def regressed(self, higher_is_better: bool, tolerance: float) -> bool:
        """True when the whole interval lies beyond the tolerance in the worse direction."""
        return regressed(self, higher_is_better, tolerance)

    def text(self) -> str:
        """``-0.0002 [-0.004, +0.003]``."""
        return f"{_signed(self.delta)} [{_signed(self.low)}, {_signed(self.high)}]"


def outputs(model: Any, X: Any, y: Any, task: str, classes: Sequence[Any] | None = None) -> Outputs:
    """``model``'s held-out outputs on ``(X, y)`` in the form :func:`intervals` takes.

    Args:
        model: a fitted scikit-learn estimator or pipeline.
        X, y: the held-out split.
        task: ``binary``, ``multiclass`` or ``regression``.
        classes: the class order to encode against (the candidate's ``classes_``); default the
            model's own.
    Returns:
        The :class:`Outputs`; classes the model never saw encode as -1 (never correct).
    """
    from modelshelf.pipeline.evaluate import _scores

    pred = np.asarray(model.predict(X))
    if task == "regression":
        return Outputs(np.asarray(y, dtype=float), pred.astype(float))
    own = list(model.classes_)
    order = list(classes) if classes is not None else own
    index = {c: i for i, c in enumerate(order)}
    enc = np.vectorize(lambda v: index.get(v, -1), otypes=[np.int64])
    scores = _scores(model, X)
    score: np.ndarray | None = None
    if scores is not None:
        scores = np.asarray(scores, dtype=float)
        if task == "binary":
            score = scores[:, own.index(order[1])] if scores.ndim == 2 else scores
        elif scores.ndim == 2 and hasattr(model, "predict_proba") and np.allclose(scores.sum(axis=1), 1):
            score = scores[:, [own.index(c) for c in order]] if set(own) == set(order) else None
    return Outputs(enc(np.asarray(y)), enc(pred), score)


def intervals(metrics: Sequence[str], candidate: Outputs, baseline: Outputs, task: str, *,
              confidence: float = 0.95, resamples: int = 2000, seed: int = 0) -> dict[str, Interval]:
    """Paired percentile intervals of (candidate − baseline) for each of ``metrics``.

    Bonferroni over the family: each metric's interval is at level ``1 − (1 − confidence) / m``.

    Args:
        metrics: the gated metric names (catalogue names of ``task``).
        candidate, baseline: both models' :class:`Outputs` on the same rows (same ``y``).
        task: ``binary``, ``multiclass`` or ``regression``.
        confidence: the family-wise confidence level, in (0, 1).
        resamples: bootstrap replicates.
        seed: the random seed (``data.random_state``).
    Returns:
        Metric name → :class:`Interval`; a metric either model cannot produce (no scores for
        AUC) or whose resamples are all degenerate is left out.
    Raises:
        ValueError: the two outputs are not on the same rows.
    """
    if candidate.y.shape != baseline.y.shape or not np.array_equal(candidate.y, baseline.y):
        raise ValueError("the candidate and the baseline were not scored on the same rows")
    level = 1.0 - (1.0 - confidence) / max(1, len(metrics))
    out: dict[str, Interval] = {}
    for name in metrics:
        rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
        diffs = replicate(name, candidate, baseline, task, resamples, rng)
        if diffs is None:
            continue
        delta = point_delta(name, candidate, baseline, task)
        diffs = diffs[np.isfinite(diffs)]
        if not diffs.size or not np.isfinite(delta):
            continue
        tail = (1.0 - level) / 2.0
        low, high = np.quantile(diffs, [tail, 1.0 - tail])
        out[name] = Interval(name, delta, float(low), float(high), confidence, level, resamples)
    return out


def regressed(interval: Interval, higher_is_better: bool, tolerance: float) -> bool:
    """True when the whole interval lies beyond the tolerance in the worse direction."""
    if higher_is_better:
        return interval.high < -tolerance - 1e-12
    return interval.low > tolerance + 1e-12


def replicate(name: str, candidate: Outputs, baseline: Outputs, task: str, resamples: int,
              rng: np.random.Generator) -> np.ndarray | None:
    """``resamples`` bootstrap differences (candidate − baseline) of metric ``name``, or None
    when the metric cannot be computed for these outputs."""
    if name not in CATALOGUE:
        raise ValueError(f"unknown metric {name!r}")
    if name in COUNT_METRICS:
        return _count_replicates(name, candidate, baseline, task, resamples, rng)
    if name in ("roc_auc", "roc_auc_ovr") and (candidate.score is None or baseline.score is None):
        return None
    n = candidate.y.size
    parts = []
    chunk = max(1, CHUNK_CELLS // max(1, n))
    stat = _weighted_stat(name, candidate, baseline)
    for start in range(0, resamples, chunk):
        r = min(chunk, resamples - start)
        parts.append(stat(_weights(rng, n, r)))
    return np.concatenate(parts)


# --- count metrics: multinomial over (label, candidate, baseline) cells --------------------------

def _count_replicates(name: str, c: Outputs, b: Outputs, task: str, resamples: int,
                      rng: np.random.Generator | None) -> np.ndarray:
    """Bootstrap differences from multinomial draws over the observed cells; with ``rng``
    None, the one difference on the observed counts."""
    k = int(max(c.y.max(initial=0), c.pred.max(initial=0), b.pred.max(initial=0))) + 1
    if task == "binary":  # positive-class cells: (y == 1, pred == 1) per model
        y, pc, pb, k = ((c.y == 1).astype(np.int64), (c.pred == 1).astype(np.int64),
                        (b.pred == 1).astype(np.int64), 2)
    else:  # an unseen class (-1) gets its own index k, never a true label
        y, pc, pb = c.y, np.where(c.pred < 0, k, c.pred), np.where(b.pred < 0, k, b.pred)
        k += 1
    cell = (y * k + pc) * k + pb
    cells, counts = np.unique(cell, return_counts=True)
    n = int(counts.sum())
    draws = (counts[None, :].astype(float) if rng is None
             else rng.multinomial(n, counts / n, size=resamples).astype(float))  # replicates × cells
    cy, rest = np.divmod(cells, k * k)
    cpc, cpb = np.divmod(rest, k)
    return _count_metric(name, draws, cy, cpc, task) - _count_metric(name, draws, cy, cpb, task)


def _count_metric(name: str, draws: np.ndarray, y: np.ndarray, pred: np.ndarray, task: str) -> np.ndarray:
    """The metric per replicate from cell counts ``draws`` (replicates × cells)."""
    if name == "accuracy":
        return draws @ (y == pred).astype(float) / draws.sum(axis=1)
    # macro: sklearn averages over the labels in y or in this model's predictions
    classes = [1] if task == "binary" else sorted(set(y.tolist()) | set(pred.tolist()))
    per = []
    with np.errstate(divide="ignore", invalid="ignore"):
        for cls in classes:
            tp = draws @ ((y == cls) & (pred == cls)).astype(float)
            fp = draws @ ((y != cls) & (pred == cls)).astype(float)
            fn = draws @ ((y == cls) & (pred != cls)).astype(float)
            if name.startswith("precision"):
                v = np.where(tp + fp > 0, tp / (tp + fp), 0.0)
            elif name.startswith("recall"):
                v = np.where(tp + fn > 0, tp / (tp + fn), 0.0)
            else:
                v = np.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), 0.0)
            per.append(v)
    return np.mean(per, axis=0)


# --- weighted metrics -----------------------------------------------------------------------------

def _weights(rng: np.random.Generator, n: int, r: int) -> np.ndarray:
    """``r × n`` bootstrap row weights (float32): index-resample counts, or Poisson(1) when large."""
    if n <= EXACT_ROWS:
        idx = rng.integers(0, n, size=(r, n)) + (np.arange(r) * n)[:, None]
        return np.bincount(idx.ravel(), minlength=r * n).reshape(r, n).astype(np.float32)
    # Poisson(1) from 16 random bits through its inverse CDF (resolution 2^-16).
    bits = rng.bit_generator.random_raw((r * n + 3) // 4).view(np.uint16)[: r * n]
    return np.take(_POISSON, bits).reshape(r, n)


def _poisson_table() -> np.ndarray:
    from math import exp, factorial

    cdf = np.cumsum([exp(-1.0) / factorial(k) for k in range(16)]) * 65536
    return np.searchsorted(cdf, np.arange(65536), side="right").astype(np.float32)


_POISSON = _poisson_table()


def _weighted_stat(name: str, c: Outputs, b: Outputs) -> Callable[[np.ndarray], np.ndarray]:
    """A function of the ``r × n`` weights (in some fixed row order) to the ``r`` differences."""
    if name in ("rmse", "mae", "r2"):
        y = c.y.astype(float)
        ec, eb = c.pred - y, b.pred - y
        one = np.ones_like(y)
        cols = np.stack({"rmse": [ec * ec, eb * eb, one], "mae": [np.abs(ec) - np.abs(eb), one],
                         "r2": [eb * eb - ec * ec, y, y * y, one]}[name])

        def regression(w: np.ndarray) -> np.ndarray:
            s = _sums(w, cols)  # r × columns: weighted sums
            total = s[:, -1]
            with np.errstate(divide="ignore", invalid="ignore"):
                if name == "rmse":
                    return np.sqrt(s[:, 0] / total) - np.sqrt(s[:, 1] / total)
                if name == "mae":
                    return s[:, 0] / total
                # (1 − SSEc/SST) − (1 − SSEb/SST)
                return s[:, 0] / (s[:, 2] - s[:, 1] ** 2 / total)
        return regression
    assert c.score is not None and b.score is not None
    if name == "roc_auc":
        problems = [(c.y == 1, np.asarray(c.score, float), np.asarray(b.score, float))]
    else:  # roc_auc_ovr: the macro mean of the one-vs-rest AUCs
        problems = [(c.y == k, c.score[:, k], b.score[:, k]) for k in range(c.score.shape[1])]
    if c.y.size > EXACT_ROWS:
        # Linearised: AUC(w) ≈ AUC + Σ w_i·d_i (the rows' AUC influence values, DeLong's
        # placements), error O(1/n); one matrix product per chunk instead of cumulative sums.
        d = np.mean([_auc_influence(pos, sc, sb) for pos, sc, sb in problems], axis=0)
        delta = float(np.mean([_auc(pos, sc) - _auc(pos, sb) for pos, sc, sb in problems]))
        return lambda w: delta + _sums(w, d[None, :])[:, 0]
    layouts = [_auc_layout(pos, sc, sb, permuted=len(problems) > 1) for pos, sc, sb in problems]
    if len(layouts) == 1:
        return layouts[0]
    return lambda w: np.mean([f(w) for f in layouts], axis=0)


def _sums(w: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """``w @ cols.T`` as float64, one matrix-vector product per column (faster than one
    thin matrix product here)."""
    return np.stack([w @ c.astype(w.dtype) for c in cols], axis=1).astype(float)


def _placements(positive: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per positive, the share of negatives it outranks; per negative, the share of positives
    that outrank it (ties count one half)."""
    sn, sp = np.sort(score[~positive]), np.sort(score[positive])
    p_scores, n_scores = score[positive], score[~positive]
    v10 = (np.searchsorted(sn, p_scores, "left") + np.searchsorted(sn, p_scores, "right")) / (2 * sn.size)
    v01 = 1.0 - (np.searchsorted(sp, n_scores, "left") + np.searchsorted(sp, n_scores, "right")) / (2 * sp.size)
    return v10, v01


def _auc(positive: np.ndarray, score: np.ndarray) -> float:
    return float(np.mean(_placements(positive, score)[0]))


def _auc_influence(positive: np.ndarray, sc: np.ndarray, sb: np.ndarray) -> np.ndarray:
    """Each row's first-order effect of its weight on (AUC_c − AUC_b)."""
    out = np.zeros(positive.size)
    for sign, score in ((1.0, sc), (-1.0, sb)):
        v10, v01 = _placements(positive, score)
        a = v10.mean()
        out[positive] += sign * (v10 - a) / v10.size
        out[~positive] += sign * (v01 - a) / v01.size
    return out


def _auc_layout(positive: np.ndarray, sc: np.ndarray, sb: np.ndarray,
                permuted: bool = False) -> Callable[[np.ndarray], np.ndarray]:
    """Weighted rank AUC difference (candidate − baseline) for labels ``positive``.

    The weights' columns are read as the rows ordered ``[negatives by candidate score,
    positives]`` (weights are exchangeable across rows, so any fixed order is a valid
    resample); with ``permuted`` (several layouts on one draw) they are first gathered
    from the original row order.
    """
    neg, pos = np.flatnonzero(~positive), np.flatnonzero(positive)
    neg = neg[np.argsort(sc[neg], kind="stable")]
    order = np.concatenate([neg, pos])
    m = neg.size
    # where each positive falls among the negatives: strictly below (lo) and at-or-below (hi)
    c_sorted = sc[neg]
    c_lo, c_hi = np.searchsorted(c_sorted, sc[pos], "left"), np.searchsorted(c_sorted, sc[pos], "right")
    b_perm = np.argsort(sb[neg], kind="stable")       # negatives (in candidate order) by baseline score
    b_sorted = sb[neg][b_perm]
    b_lo, b_hi = np.searchsorted(b_sorted, sb[pos], "left"), np.searchsorted(b_sorted, sb[pos], "right")
    c_ties, b_ties = bool(np.any(c_lo != c_hi)), bool(np.any(b_lo != b_hi))

    def below(cum: np.ndarray, lo: np.ndarray, hi: np.ndarray, ties: bool) -> np.ndarray:
        return 0.5 * (cum[:, lo] + cum[:, hi]) if ties else cum[:, lo]

    def auc(w: np.ndarray) -> np.ndarray:
        if permuted:
            w = w[:, order]
        wn, wp = w[:, :m], w[:, m:]
        cum = np.zeros((w.shape[0], m + 1), dtype=np.float64)
        np.cumsum(wn, axis=1, out=cum[:, 1:])
        num_c = np.einsum("ij,ij->i", wp, below(cum, c_lo, c_hi, c_ties))
        np.cumsum(wn[:, b_perm], axis=1, out=cum[:, 1:])
        num_b = np.einsum("ij,ij->i", wp, below(cum, b_lo, b_hi, b_ties))
        with np.errstate(divide="ignore", invalid="ignore"):
            return (num_c - num_b) / (cum[:, -1] * wp.sum(axis=1, dtype=np.float64))
    return auc


def point_delta(name: str, candidate: Outputs, baseline: Outputs, task: str) -> float:
    """(candidate − baseline) of ``name`` on the rows as they are (unit weights), by the
    formulas the replicates use; NaN when it cannot be computed."""
    if name in COUNT_METRICS:
        return float(_count_replicates(name, candidate, baseline, task, 1, None)[0])
    if name in ("roc_auc", "roc_auc_ovr") and (candidate.score is None or baseline.score is None):
        return float("nan")
    ones = np.ones((1, candidate.y.size))
    return float(_weighted_stat(name, candidate, baseline)(ones)[0])


def _signed(value: float) -> str:
    return f"{value:+.2g}"
