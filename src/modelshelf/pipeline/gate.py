"""The gate: one verdict on a candidate's metrics, against thresholds and a baseline.

Fails closed: a missing or NaN metric fails, and so does any regression beyond
the tolerance.  Without a baseline (the first model) only thresholds apply, and
the result says so.  The baseline is the committed metrics at ``gate.baseline``,
or, when :mod:`modelshelf.pipeline.baseline` could re-score the baseline model on the
candidate's held-out set, those re-scored metrics (see :func:`with_rescore`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from modelshelf.errors import ConfigError, DataError
from modelshelf.gitrepo import GitRepo
from modelshelf.pipeline.metrics import CATALOGUE, higher_is_better, metrics_for
from modelshelf.params import NO_BASELINE, GateParams, suggest

if TYPE_CHECKING:  # numpy is imported only when significance is asked for
    from modelshelf.pipeline.significance import Interval, Outputs

SCHEMA_VERSION = 1
RESCORED = "re-scored on this held-out set"
COMMITTED = "committed metrics"


@dataclass(frozen=True)
class Rescore:
    """The attempt to score the baseline model on the candidate's held-out set."""

    used: bool                                  # True: the gate compares with ``metrics``
    note: str                                   # what was re-scored, or why it was not
    metrics: Mapping[str, float] | None = None  # the baseline model on this held-out set
    committed: Mapping[str, float] | None = None  # the metrics committed at the revision
    model: Mapping[str, Any] = field(default_factory=dict)  # version, sha256, source, rows
    outputs: Outputs | None = None    # the baseline model's held-out outputs (significance)

    def label(self) -> str:
        """``re-scored on this held-out set (240 rows)``."""
        rows = self.model.get("rows")
        return RESCORED + (f" ({rows} rows)" if rows is not None else "")


@dataclass(frozen=True)
class Baseline:
    """What the candidate must not regress from: ``metrics``, committed or re-scored."""

    rev: str
    path: str
    commit: str | None = None
    metrics: Mapping[str, float] | None = None
    note: str = ""
    rescore: Rescore | None = None

    @property
    def found(self) -> bool:
        return self.metrics is not None

    @property
    def rescored(self) -> bool:
        return self.rescore is not None and self.rescore.used

    @property
    def used(self) -> str:
        """``"rescored"``, ``"committed"`` or ``"none"``."""
        return "rescored" if self.rescored else "committed" if self.found else "none"

    @property
    def committed(self) -> Mapping[str, float] | None:
        """The metrics committed at ``rev``, whether or not the gate compares with them."""
        return self.rescore.committed if self.rescore is not None and self.rescored else self.metrics


def with_rescore(base: Baseline, metrics: Mapping[str, float] | None, note: str,
                 model: Mapping[str, Any] | None = None, outputs: Outputs | None = None) -> Baseline:
    """``base`` compared with the re-scored ``metrics`` when they are usable, else with its
    committed metrics and ``note`` saying why.

    Usable means: every metric the committed file holds (a number, not NaN) was re-scored
    to a number.  Anything less keeps the committed metrics, the old behaviour: a baseline
    that could not be re-scored, fetched or verified never makes the gate more lenient.
    """
    if not base.found or base.rescored:
        return base
    committed = dict(base.metrics or {})
    if metrics is not None:
        lacking = [k for k, v in committed.items()
                   if _number(v) is not None and _number(metrics.get(k)) is None]
        if lacking:
            note, metrics = f"re-scoring the baseline model gave no {lacking[0]}", dict(metrics)
        else:
            clean = catalogue_numbers(metrics)
            return replace(base, metrics=clean,
                           rescore=Rescore(True, note, clean, committed, dict(model or {}), outputs))
    return replace(base, rescore=Rescore(False, note, None if metrics is None else dict(metrics),
                                         committed, dict(model or {})))


@dataclass(frozen=True)
class Check:
    metric: str
    value: float | None
    higher_is_better: bool
    threshold: float | None
    baseline: float | None
    tolerance: float
    passed: bool
    reasons: tuple[str, ...] = ()
    rescored: bool = False            # ``baseline`` is the baseline model re-scored
    committed: float | None = None    # the committed baseline value, when ``rescored``
    interval: Interval | None = None  # the paired interval of (candidate − baseline)

    def line(self) -> str:
        """``✓ accuracy: 0.947 (threshold ≥ 0.88, baseline 0.900)``; a re-scored baseline
        adds its committed value: ``baseline 0.900 re-scored, committed 0.920``."""
        mark = "✓" if self.passed else "✗"
        cmp = "≥" if self.higher_is_better else "≤"
        base = f"baseline {_fmt(self.baseline)}" if self.baseline is not None else "no baseline"
        if self.rescored and self.baseline is not None:
            base += f" re-scored, committed {_fmt(self.committed)}"
        ctx = [f"threshold {cmp} {_fmt(self.threshold)}" if self.threshold is not None else "no threshold", base]
        if self.tolerance:
            ctx.append(f"tolerance {_fmt(self.tolerance)}")
        if self.interval is not None:
            ctx.append(f"change {self.interval.text()} at {self.interval.level:.4g}")
        text = f"{mark} {self.metric}: {_fmt(self.value)} ({', '.join(ctx)})"
        return text + (": " + "; ".join(self.reasons) if self.reasons else "")


@dataclass(frozen=True)
class GateResult:
    passed: bool
    task: str
    checks: tuple[Check, ...]
    baseline: Baseline
    metrics: Mapping[str, float] = field(default_factory=dict)
    regression: str = "point"
    significance: str = ""            # how regressions were judged, or why not as asked

    def table(self) -> str:
        """The human verdict: one line per gated metric, then the baseline and verdict."""
        lines = [c.line() for c in self.checks]
        b = self.baseline
        where = f"at {b.note if b.found and b.note else b.rev} ({(b.commit or '')[:12]})"
        if b.rescored and b.rescore is not None:
            lines.append(f"baseline: {b.rescore.label()}: {b.rescore.note} {where}; "
                         f"committed {b.path} shown for reference")
        elif b.found and b.rescore is not None:
            lines.append(f"baseline: {COMMITTED}: {b.path} {where}; not re-scored: {b.rescore.note}")
        elif b.found:
            lines.append(f"baseline: {b.path} {where}")
        else:
            lines.append(f"baseline: none ({b.note}); thresholds only")
        if self.significance:
            lines.append(f"regressions: {self.significance}")
        lines.append("gate: PASSED" if self.passed else "gate: FAILED")
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "passed": self.passed,
            "task": self.task,
            "metrics": {
                c.metric: {
                    "value": _json_num(c.value),
                    "threshold": c.threshold,
                    "baseline": _json_num(c.baseline),
                    "tolerance": c.tolerance,
                    "direction": "higher" if c.higher_is_better else "lower",
                    "passed": c.passed,
                    "reasons": list(c.reasons),
                    "baseline_committed": _json_num(c.committed if c.rescored else c.baseline),
                    "baseline_rescored": _json_num(c.baseline) if c.rescored else None,
                    **({} if c.interval is None else c.interval.to_json()),
                }
                for c in self.checks
            },
            "regression": {"mode": self.regression, "note": self.significance},
            "baseline": self._baseline_json(),
            "candidate": {k: _json_num(v) for k, v in self.metrics.items()},
        }

    def _baseline_json(self) -> dict[str, Any]:
        b, r = self.baseline, self.baseline.rescore
        return {
            "rev": b.rev, "commit": b.commit, "path": b.path, "found": b.found, "note": b.note,
            "used": b.used,
            "label": RESCORED if b.rescored else COMMITTED if b.found else "none",
            "committed_metrics": _json_metrics(b.committed),
            "rescored_metrics": _json_metrics(r.metrics if r is not None else None),
            "rescore": None if r is None else {"used": r.used, "note": r.note, "model": dict(r.model)},
        }


def check_names(params: GateParams, task: str) -> None:
    """Every gated metric name is one a ``task`` model produces, and at least one is gated.

    Raises:
        ConfigError: listing every bad name at once, each with its did-you-mean.
    """
    produced = metrics_for(task)
    bad = [(key, name) for key, names in (("thresholds", params.thresholds), ("tolerance", params.tolerance))
           for name in names if name not in produced]
    if bad:
        where = ", ".join(f"gate.{key}.{name}" for key, name in bad)
        names = ", ".join(f"'{name}'" for _, name in bad)
        hints = "; ".join(f"{name}: {suggest(name, tuple(produced), f'{task} metrics')}" for _, name in bad)
        raise ConfigError(f"params.yaml: {where}", f"a {task} model does not produce {names}",
                          hints if len(bad) > 1 else suggest(bad[0][1], tuple(produced), f"{task} metrics"))
    if not params.thresholds and not params.tolerance:
        raise ConfigError("params.yaml: gate.thresholds", "no metric is gated",
                          f"add at least one threshold, e.g. {produced[0]}: …")


@dataclass(frozen=True)
class Paired:
    """Both models' outputs on the same held-out rows, for ``gate.regression: significant``."""

    candidate: Outputs
    baseline: Outputs
    seed: int


def judge(metrics: Mapping[str, Any], params: GateParams, task: str, baseline: Baseline,
          paired: Paired | None = None) -> GateResult:
    """The verdict on ``metrics`` for a ``task`` model; ConfigError for impossible thresholds.

    With ``gate.regression: significant`` and ``paired`` outputs of the baseline model re-scored
    on the candidate's held-out rows, a drop counts only when the whole paired interval lies
    beyond the tolerance; without them the point comparison applies and the result says why.
    """
    check_names(params, task)
    gated = list(params.thresholds) + [m for m in params.tolerance if m not in params.thresholds]
    found: dict[str, Interval] = {}
    note = ""
    if params.regression == "significant":
        if not baseline.found:
            note = "no baseline: nothing to test"
        elif paired is None or not baseline.rescored:
            note = ("point comparison: significance needs the baseline model re-scored on this "
                    "held-out set" + (f" ({baseline.rescore.note})" if baseline.rescore and
                                      not baseline.rescored else ""))
        else:
            from modelshelf.pipeline.significance import intervals

            tested = [m for m in gated if baseline.metrics and _number(baseline.metrics.get(m)) is not None]
            found = intervals(tested, paired.candidate, paired.baseline, task,
                              confidence=params.confidence, resamples=params.resamples, seed=paired.seed)
            level = 1 - (1 - params.confidence) / max(1, len(tested))
            note = (f"significant only: paired bootstrap, {params.resamples} resamples, "
                    f"{params.confidence:g} confidence Bonferroni-corrected over {len(tested)} "
                    f"metric{'s' * (len(tested) != 1)} ({level:.4g} each)")
            lacking = [m for m in tested if m not in found]
            if lacking:
                note += f"; point comparison for {', '.join(lacking)} (no interval)"
    checks = []
    for name in gated:
        hib = higher_is_better(name)
        value = _number(metrics.get(name))
        threshold = params.thresholds.get(name)
        tol = params.tolerance_for(name)
        base = _number(baseline.metrics.get(name)) if baseline.metrics is not None else None
        committed = baseline.committed
        committed_value = _number(committed.get(name)) if baseline.rescored and committed is not None else None
        interval = found.get(name) if base is not None else None
        reasons: list[str] = []
        if value is None:
            reasons.append("missing or NaN: fails closed")
        else:
            if threshold is not None and not (value >= threshold if hib else value <= threshold):
                reasons.append(f"{'below' if hib else 'above'} threshold {_fmt(threshold)}")
            if base is not None:
                delta = (base - value) if hib else (value - base)
                if interval is not None:
                    if interval.regressed(hib, tol):
                        reasons.append(f"regressed by {_fmt(delta)} from baseline {_fmt(base)}, "
                                       f"change {interval.text()} excludes "
                                       f"{'-' if hib else '+'}{_fmt(tol)}")
                elif delta > tol + 1e-12:
                    reasons.append(f"regressed by {_fmt(delta)} from baseline {_fmt(base)}"
                                   + (f" (tolerance {_fmt(tol)})" if tol else ""))
        checks.append(Check(name, value, hib, threshold, base, tol, not reasons, tuple(reasons),
                            baseline.rescored, committed_value, interval))
    clean = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    return GateResult(all(c.passed for c in checks), task, tuple(checks), baseline, clean,
                      params.regression, note)


def read_baseline(repo: GitRepo, rev: str, path: str) -> Baseline:
    """The metrics committed at ``rev`` under repo-relative ``path``; none for
    ``gate.baseline: none`` (a first-of-a-line gate)."""
    if rev == NO_BASELINE:
        return Baseline(rev, path, note="gate.baseline: none: a first-of-a-line gate")
    found = repo.resolve_branch(rev)
    if found is None and not repo.has_any_commit():
        return Baseline(rev, path, note="the repository has no commits yet: first model")
    if found is None:
        raise ConfigError("params.yaml: gate.baseline", f"revision '{rev}' not found in git "
                          f"(nor origin/{rev}, nor a pull request's base)",
                          "set gate.baseline to your default branch, or fetch it "
                          f"(`git fetch origin {rev}:{rev}`)")
    commit, how = found
    stand_in = f"{rev} as {how}" if how else ""
    raw = repo.show(commit, path)
    if raw is None:
        return Baseline(rev, path, commit, note=f"no {path} at {rev}: first model")
    try:
        data = json.loads(raw)
    except ValueError:
        raise DataError(f"{rev}:{path}", "baseline metrics are not valid JSON",
                        f"fix {path} on {rev} or point gate.baseline elsewhere") from None
    if not isinstance(data, dict):
        raise DataError(f"{rev}:{path}", "baseline metrics are not a JSON object",
                        f"fix {path} on {rev}")
    metrics = {k: float(v) for k, v in data.items()
               if isinstance(v, (int, float)) and not isinstance(v, bool) and k in CATALOGUE}
    return Baseline(rev, path, commit, metrics, note=stand_in)


def result_from_json(data: Mapping[str, Any]) -> tuple[bool, Mapping[str, Any]]:
    """``(passed, candidate metrics)`` from a written gate report."""
    return bool(data.get("passed")) is True, data.get("candidate", {})


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return None if math.isnan(value) else float(value)


def catalogue_numbers(metrics: Any) -> dict[str, float]:
    """The catalogue metrics of a metrics mapping that are numbers (not None, NaN or bool),
    as floats; ``{}`` for anything that is not a mapping."""
    if not isinstance(metrics, Mapping):
        return {}
    return {k: n for k, v in metrics.items() if k in CATALOGUE and (n := _number(v)) is not None}


def _json_num(value: float | None) -> float | None:
    return None if value is None or math.isnan(value) else value


def _json_metrics(metrics: Mapping[str, Any] | None) -> dict[str, float | None] | None:
    return None if metrics is None else {k: _number(v) for k, v in metrics.items()}


def _fmt(value: float | None) -> str:
    if value is None:
        return "missing"
    return f"{value:.4g}" if abs(value) < 1e4 else f"{value:.6g}"

