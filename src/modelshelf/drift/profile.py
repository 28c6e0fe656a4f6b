"""The reference profile of training data, and drift of new data against it.

The profile (a small JSON file, git-tracked) holds per-feature quantiles, bin shares,
category shares and missing rates, and the label distribution, so any release can be
checked against new data without its training set.  A feature drifts by its PSI (confirmed
by a KS or chi-square test) or by a change in its missing rate (confirmed by a two-proportion
test).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from modelshelf.params import DriftParams

if TYPE_CHECKING:
    import pandas as pd

SCHEMA_VERSION = 1
N_BINS = 10
N_QUANTILES = 101
MAX_CATEGORIES = 200
OTHER = "__other__"
EPS = 1e-4
PARALLEL_ROWS = 100_000  # compare() spreads features over threads from this many rows
MAX_WORKERS = 4


# Decile bins over the 102 intervals the 101 percentiles cut: <= q10, (q10, q20], …, > q90.
_DECILES = (0, 11, 21, 31, 41, 51, 61, 71, 81, 91, N_QUANTILES + 1)


# _percentile_counts looks most values up on a uniform grid of this many cells; arrays
# shorter than _GRID_MIN_VALUES are searched directly (the grid's tables would cost more).
_GRID = 16384
_GRID_MIN_VALUES = 50_000


def _percentile_counts(present: Any, quantiles: Any) -> Any:
    """Counts of values in each interval the (sorted) percentiles cut, exactly
    ``bincount(searchsorted(quantiles, present, side="left"), minlength=len(quantiles) + 1)``."""
    if len(present) < _GRID_MIN_VALUES:
        return _searched_counts(present, quantiles)
    return _gridded_counts(present, quantiles, _GRID)


def _searched_counts(present: Any, quantiles: Any) -> Any:
    """The reference: one binary search per value."""
    import numpy as np

    return np.bincount(np.searchsorted(quantiles, present, side="left"), minlength=len(quantiles) + 1)


def _gridded_counts(present: Any, quantiles: Any, grid: int) -> Any:
    """``_searched_counts`` through a uniform grid of ``grid`` cells over ``quantiles[1]…quantiles[-2]``
    (plus one cell below and one above): a value in a cell that holds no quantile gets the
    cell's interval from a table; only values in cells that hold one are searched."""
    import numpy as np

    q = np.asarray(quantiles, dtype=float)
    x = np.asarray(present)
    if len(q) < 3 or x.dtype != np.float64 or not bool(np.all(q[:-1] <= q[1:])):
        return _searched_counts(present, quantiles)  # unsorted or NaN quantiles: the search's own answer
    lo, hi = float(q[1]), float(q[-2])
    scale = (grid - 1) / (hi - lo) if hi > lo else math.nan
    offset = 1.5 - lo * scale
    if not (math.isfinite(scale) and scale > 0 and math.isfinite(offset)):
        return _searched_counts(present, quantiles)

    def cells(v: Any) -> Any:
        # Any non-decreasing map to cells is exact (see the table below); rounding keeps
        # v * scale + offset non-decreasing, ±inf land in the end cells, and fmin sends NaN
        # to the top cell, above every quantile, as the search does.
        t = np.multiply(v, scale)
        t += offset
        np.fmin(t, grid + 1, out=t)
        np.maximum(t, 0, out=t)
        return t.astype(np.intp)

    cq, cx = cells(q), cells(x)
    # In a cell c without a quantile, every value lies above each quantile of a lower cell and
    # below each of a higher one, so its interval is the number of quantiles in cells below c.
    below = np.searchsorted(cq, np.arange(grid + 2), side="left")
    holds = np.zeros(grid + 2, dtype=bool)
    holds[cq] = True
    per_cell = np.bincount(cx, minlength=grid + 2)
    per_cell[holds] = 0
    counts = np.zeros(len(q) + 1, dtype=np.intp)
    np.add.at(counts, below, per_cell)
    return counts + _searched_counts(x[holds.take(cx)], quantiles)


def _decile_shares(counts: Any) -> Any:
    import numpy as np

    sums = np.add.reduceat(counts, _DECILES[:-1])
    return sums / max(counts.sum(), 1)


def _present(values: Any) -> tuple[Any, Any]:
    """``values`` as floats, and those that are not NaN (no copy when none is)."""
    import numpy as np

    x = np.asarray(values, dtype=float)
    nan = np.isnan(x)
    return x, (x[~nan] if nan.any() else x)


def _numeric_profile(values: Any) -> dict[str, Any]:
    import numpy as np

    x, present = _present(values)
    if present.size == 0:
        return {"kind": "numeric", "missing": 1.0, "rows": int(x.size)}
    quantiles = np.quantile(present, np.linspace(0, 1, N_QUANTILES))
    shares = _decile_shares(_percentile_counts(present, quantiles))
    return {"kind": "numeric", "rows": int(x.size), "missing": float(1 - present.size / x.size),
            "mean": float(present.mean()), "std": float(present.std()),
            "min": float(present.min()), "max": float(present.max()),
            "shares": shares.tolist(), "quantiles": quantiles.tolist()}


def _categorical_profile(values: Any) -> dict[str, Any]:
    import pandas as pd

    s = pd.Series(values, dtype=object)
    present = s.dropna().astype(str)
    counts = present.value_counts()
    top = counts.iloc[:MAX_CATEGORIES]
    shares = {str(k): float(v / max(len(present), 1)) for k, v in top.items()}
    rest = float(counts.iloc[MAX_CATEGORIES:].sum() / max(len(present), 1))
    if rest:
        shares[OTHER] = rest
    return {"kind": "categorical", "rows": int(len(s)), "missing": float(1 - len(present) / max(len(s), 1)),
            "shares": shares}


def build(frame: pd.DataFrame, schema: Mapping[str, Any], missing_target_dropped: int = 0) -> dict[str, Any]:
    """The profile of ``frame`` (features and target) under ``schema``; rows dropped for a
    missing target (``data.missing_target: drop``) are counted as ``missing_target_dropped``."""
    features = {}
    for f in schema["features"]:
        col = frame[f["name"]]
        features[f["name"]] = (_numeric_profile(col.to_numpy(dtype=float)) if f["kind"] == "numeric"
                               else _categorical_profile(col))
    target = schema["target"]["name"]
    label = (_numeric_profile(frame[target].to_numpy(dtype=float)) if schema["task"] == "regression"
             else _categorical_profile(frame[target].astype(str)))
    out = {"schema_version": SCHEMA_VERSION, "rows": int(len(frame)), "features": features, "label": label}
    if missing_target_dropped:
        out["missing_target_dropped"] = int(missing_target_dropped)
    return out


# --- drift ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class FeatureDrift:
    name: str
    kind: str
    psi: float
    test: str
    statistic: float
    p_value: float
    missing_ref: float
    missing_new: float
    level: str  # "ok", "warn", "drift"
    bins: tuple[str, ...] = ()          # what was compared: decile or category labels,
    ref_shares: tuple[float, ...] = ()  # the training shares (of the values present),
    new_shares: tuple[float, ...] = ()  # and the new data's
    missing_p_value: float = 1.0        # the two-proportion test of missing_new against missing_ref
    reasons: tuple[str, ...] = ()       # why the level is warn or drift: "PSI 0.312", "missing 1.0% → 80.0%"


@dataclass(frozen=True)
class DriftResult:
    rows: int
    features: tuple[FeatureDrift, ...]
    schema_problems: tuple[str, ...] = ()
    prediction: FeatureDrift | None = None
    thresholds: DriftParams = field(default_factory=DriftParams)

    @property
    def verdict(self) -> str:
        if self.schema_problems:
            return "schema break"
        levels = [f.level for f in self.features] + ([self.prediction.level] if self.prediction else [])
        return "drift" if "drift" in levels else "no drift"

    def drifted(self) -> list[str]:
        return [f.name for f in self.features if f.level == "drift"]


def _psi(ref: Any, new: Any) -> float:
    import numpy as np

    p = np.clip(np.asarray(ref, dtype=float), EPS, None)
    q = np.clip(np.asarray(new, dtype=float), EPS, None)
    return float(np.sum((q - p) * np.log(q / p)))


def _numeric_drift(name: str, ref: Mapping[str, Any], values: Any, th: DriftParams,
                   n_tests: int) -> FeatureDrift:
    import numpy as np

    x, present = _present(values)
    missing_new = float(1 - present.size / max(x.size, 1))
    if present.size == 0 or "quantiles" not in ref:
        missing_ref = ref.get("missing", 0.0)
        if present.size == 0 and "quantiles" not in ref:  # no values on either side: nothing moved
            f = FeatureDrift(name, "numeric", 0.0, "ks", 0.0, 1.0, missing_ref, missing_new, "ok")
        else:
            f = FeatureDrift(name, "numeric", math.inf if present.size == 0 else 0.0, "ks", 1.0, 0.0,
                             missing_ref, missing_new, "drift")
        return _judged(f, ref, x.size, th, n_tests)
    q = np.asarray(ref["quantiles"])
    counts = _percentile_counts(present, q)
    psi = _psi(ref["shares"], _decile_shares(counts))
    # KS statistic at the reference's percentiles: F_new(q_j) against F_ref(q_j) = j/100.
    f_new = np.cumsum(counts)[: len(q)] / present.size
    f_ref = np.linspace(0, 1, len(q))
    d = float(np.max(np.abs(f_new - f_ref)))
    n_ref = max(int(ref["rows"] * (1 - ref.get("missing", 0.0))), 1)
    n_eff = present.size * n_ref / (present.size + n_ref)
    p = _ks_pvalue(d, n_eff)
    return _judged(FeatureDrift(name, "numeric", psi, "ks", d, p, ref.get("missing", 0.0), missing_new,
                                _level(psi, p, th, n_tests), bin_labels(ref["quantiles"]), tuple(ref["shares"]),
                                tuple(float(v) for v in _decile_shares(counts))),
                   ref, x.size, th, n_tests)


def _categorical_drift(name: str, ref: Mapping[str, Any], values: Any, th: DriftParams,
                       n_tests: int) -> FeatureDrift:
    import numpy as np
    import pandas as pd

    s = pd.Series(values, dtype=object)
    present = s.dropna().astype(str)
    missing_new = float(1 - len(present) / max(len(s), 1))
    known = list(ref["shares"])
    mapped = present.where(present.isin(known), OTHER)
    counts = mapped.value_counts()
    cats = known + ([OTHER] if OTHER not in known and OTHER in counts.index else [])
    observed = np.array([counts.get(c, 0) for c in cats], dtype=float)
    expected_share = np.array([ref["shares"].get(c, 0.0) for c in cats], dtype=float)
    n = observed.sum()
    if n == 0:
        both_empty = not known
        return _judged(FeatureDrift(name, "categorical", 0.0 if both_empty else math.inf, "chi2", 0.0,
                                    1.0 if both_empty else 0.0, ref.get("missing", 0.0), missing_new,
                                    "ok" if both_empty else "drift"), ref, len(s), th, n_tests)
    psi = _psi(expected_share, observed / n)
    expected = np.clip(expected_share, EPS, None)
    expected = expected / expected.sum() * n
    from scipy.special import chdtrc

    chi2 = float(np.sum((observed - expected) ** 2 / expected))
    p = float(chdtrc(max(len(cats) - 1, 1), chi2))
    return _judged(FeatureDrift(name, "categorical", psi, "chi2", float(chi2), float(p), ref.get("missing", 0.0),
                                missing_new, _level(psi, float(p), th, n_tests), tuple(cats),
                                tuple(float(v) for v in expected_share), tuple(float(v) for v in observed / n)),
                   ref, len(s), th, n_tests)


def _workers() -> int:
    import os

    return max(1, min(MAX_WORKERS, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                      else os.cpu_count() or 1))


def _ks_pvalue(d: float, n_eff: float) -> float:
    """Two-sided KS p-value; the asymptotic Kolmogorov form for large samples (it avoids
    importing scipy.stats, which costs more than the test on a million rows)."""
    if n_eff >= 1000:
        from scipy.special import kolmogorov

        return float(kolmogorov(math.sqrt(n_eff) * d))
    from scipy import stats

    return float(stats.kstwo.sf(d, max(int(round(n_eff)), 1)))


def _level(psi: float, p: float, th: DriftParams, n_tests: int) -> str:
    # A test alone over many features raises false alarms; it only confirms a PSI warning,
    # and at a Bonferroni-corrected level.
    if psi >= th.psi_alert or (psi >= th.psi_warn and p < th.p_value / max(n_tests, 1)):
        return "drift"
    return "warn" if psi >= th.psi_warn else "ok"


def _missing_p_value(ref_rate: float, ref_rows: int, new_rate: float, new_rows: int) -> float:
    """Two-sided p-value of a missing rate ``new_rate`` in ``new_rows`` rows against ``ref_rate``
    in ``ref_rows``: the two-proportion z-test, or Fisher's exact test when a cell of the 2×2
    table expects fewer than 5 rows (small samples, rare missing values)."""
    a, b = round(ref_rate * ref_rows), round(new_rate * new_rows)
    if ref_rows <= 0 or new_rows <= 0 or a + b in (0, ref_rows + new_rows):
        return 1.0  # no rows, or none (or all) missing on both sides: nothing to tell apart
    pooled = (a + b) / (ref_rows + new_rows)
    if min(pooled, 1 - pooled) * min(ref_rows, new_rows) < 5:
        from scipy import stats

        return float(stats.fisher_exact([[a, ref_rows - a], [b, new_rows - b]]).pvalue)
    se = math.sqrt(pooled * (1 - pooled) * (1 / ref_rows + 1 / new_rows))
    return math.erfc(abs(b / new_rows - a / ref_rows) / se / math.sqrt(2))


def _psi_reason(f: FeatureDrift, th: DriftParams) -> str:
    if f.missing_new >= 1.0:
        return "no values"
    if f.missing_ref >= 1.0:
        return "no values in training"
    if f.level == "drift" and f.psi < th.psi_alert:
        return f"PSI {f.psi:.3f}, {f.test} p={f.p_value:.2g}"
    return f"PSI {f.psi:.3f}"


def _judged(f: FeatureDrift, ref: Mapping[str, Any], rows: int, th: DriftParams, n_tests: int) -> FeatureDrift:
    """``f`` with its missing rate judged: drift when it moved by more than ``drift.missing_rate``
    and the test confirms it at ``drift.p_value`` (Bonferroni-corrected as the PSI tests are);
    a move the sample is too small to confirm is a warning.  Also sets the reasons."""
    ref_rows = int(ref.get("rows", 0))
    p = _missing_p_value(f.missing_ref, ref_rows, f.missing_new, rows)
    rates = f"missing {f.missing_ref:.1%} → {f.missing_new:.1%}"
    drift: list[str] = []
    warn: list[str] = []
    if abs(f.missing_new - f.missing_ref) > th.missing_rate + 1e-12:
        if p < th.p_value / max(n_tests, 1):
            drift.append(rates)
        else:
            warn.append(f"{rates} (p={p:.2g}: too few rows to confirm)")
    if f.level == "drift" and not (drift and math.isinf(f.psi)):  # "no values" is the missing rate's story
        drift.insert(0, _psi_reason(f, th))
    elif f.level == "warn":
        warn.insert(0, _psi_reason(f, th))
    level = "drift" if drift else "warn" if warn else "ok"
    return replace(f, level=level, missing_p_value=p, reasons=tuple(drift or warn))


def _plain(v: float, decimals: int) -> str:
    """``v`` with thousands separators and ``decimals`` decimals; never "-0"."""
    if math.isinf(v):
        return "∞" if v > 0 else "-∞"
    if math.isnan(v):
        return "nan"
    if decimals > 12 or abs(v) >= 1e15:  # beyond ordinary magnitudes
        return f"{v:.4g}"
    text = f"{v:,.{decimals}f}"
    return text[1:] if text.startswith("-") and not text.strip("-0.,") else text


def _decimals(edges: Sequence[float]) -> int:
    """Decimals enough for the narrowest bin between ``edges``, and to tell every two apart."""
    finite = sorted({float(e) for e in edges if math.isfinite(e)})
    gaps = [b - a for a, b in zip(finite, finite[1:]) if b > a]
    if gaps:
        d = max(0, -math.floor(math.log10(min(gaps))))
    else:
        d = 0 if all(e.is_integer() for e in finite) else 2
    while d <= 12 and len({_plain(e, d) for e in finite}) < len(finite):
        d += 1
    return d


def bin_labels(quantiles: Sequence[float]) -> tuple[str, ...]:
    """The decile bins' labels from a profile's 101 percentiles: ``≤q10``, ``q10–q20``, …,
    ``>q90``, as plain numbers (``2,010–2,015``, ``12.5–13.1``) with the decimals the
    narrowest bin needs."""
    edges = [float(quantiles[10 * i]) for i in range(1, 10)]
    d = _decimals(edges)
    e = [_plain(v, d) for v in edges]
    return (f"≤{e[0]}", *(f"{e[i]}–{e[i + 1]}" for i in range(8)), f">{e[8]}")


def compare(profile: Mapping[str, Any], schema: Mapping[str, Any], frame: pd.DataFrame,
            thresholds: DriftParams, predictions: Any = None,
            prediction_profile: Mapping[str, Any] | None = None) -> DriftResult:
    """Drift of ``frame`` against ``profile``; schema problems are reported, never raised."""
    problems = []
    names = [f["name"] for f in schema["features"]]
    for n in names:
        if n not in frame.columns:
            problems.append(f"missing column '{n}'")
    target = schema["target"]["name"]
    for c in frame.columns:
        if c not in names and c != target:
            problems.append(f"new column '{c}'")
    import pandas as pd

    for f in schema["features"]:
        if f["kind"] == "numeric" and f["name"] in frame.columns:
            col = frame[f["name"]]
            if not pd.api.types.is_numeric_dtype(col) or pd.api.types.is_bool_dtype(col):
                problems.append(f"column '{f['name']}' is no longer numeric")
    if problems:
        return DriftResult(len(frame), (), tuple(problems), thresholds=thresholds)
    n_tests = len(names)

    def numeric(f: Mapping[str, Any], values: Any) -> FeatureDrift:
        return _numeric_drift(f["name"], profile["features"][f["name"]], values, thresholds, n_tests)

    def categorical(f: Mapping[str, Any]) -> FeatureDrift:
        return _categorical_drift(f["name"], profile["features"][f["name"]], frame[f["name"]], thresholds, n_tests)

    features = schema["features"]
    if len(frame) < PARALLEL_ROWS or _workers() == 1:
        results = [numeric(f, frame[f["name"]].to_numpy(dtype=float)) if f["kind"] == "numeric" else categorical(f)
                   for f in features]
    else:
        # Numeric drift is numpy on an array taken out here, which releases the GIL in the heavy
        # parts: those run in threads, categorical ones (pandas) here.  Results are collected in
        # the schema's order, so the report is the same as from one thread.
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=_workers()) as pool:
            futures = {i: pool.submit(numeric, f, frame[f["name"]].to_numpy(dtype=float))
                       for i, f in enumerate(features) if f["kind"] == "numeric"}
            results = [futures[i].result() if i in futures else categorical(f) for i, f in enumerate(features)]
    pred = None
    if predictions is not None and prediction_profile is not None:
        if prediction_profile["kind"] == "numeric":
            pred = _numeric_drift("(predictions)", prediction_profile, predictions, thresholds, 1)
        else:
            pred = _categorical_drift("(predictions)", prediction_profile,
                                      [str(v) for v in predictions], thresholds, 1)
    return DriftResult(len(frame), tuple(results), (), pred, thresholds)


def prediction_profile(predictions: Any, task: str) -> dict[str, Any]:
    """The held-out predictions' distribution, for prediction drift."""
    if task == "regression":
        return _numeric_profile(predictions)
    return _categorical_profile([str(v) for v in predictions])
