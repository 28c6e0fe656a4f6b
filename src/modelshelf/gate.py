"""The gate: one verdict on a candidate's metrics, against thresholds and a baseline.

Fails closed: a missing or NaN metric fails, and so does any regression beyond
the tolerance.  Without a baseline (the first model) only thresholds apply, and
the result says so.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from modelshelf.errors import ConfigError, DataError
from modelshelf.gitrepo import GitRepo
from modelshelf.metrics import CATALOGUE, higher_is_better, metrics_for
from modelshelf.params import GateParams, suggest

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class Baseline:
    """The committed metrics the candidate must not regress from."""

    rev: str
    path: str
    commit: str | None = None
    metrics: Mapping[str, float] | None = None
    note: str = ""

    @property
    def found(self) -> bool:
        return self.metrics is not None


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

    def line(self) -> str:
        """``✓ accuracy: 0.947 (threshold ≥ 0.88, baseline 0.900)``."""
        mark = "✓" if self.passed else "✗"
        cmp = "≥" if self.higher_is_better else "≤"
        ctx = [f"threshold {cmp} {_fmt(self.threshold)}" if self.threshold is not None else "no threshold",
               f"baseline {_fmt(self.baseline)}" if self.baseline is not None else "no baseline"]
        if self.tolerance:
            ctx.append(f"tolerance {_fmt(self.tolerance)}")
        text = f"{mark} {self.metric}: {_fmt(self.value)} ({', '.join(ctx)})"
        return text + (": " + "; ".join(self.reasons) if self.reasons else "")


@dataclass(frozen=True)
class GateResult:
    passed: bool
    task: str
    checks: tuple[Check, ...]
    baseline: Baseline
    metrics: Mapping[str, float] = field(default_factory=dict)

    def table(self) -> str:
        """The human verdict: one line per gated metric, then the baseline and verdict."""
        lines = [c.line() for c in self.checks]
        b = self.baseline
        if b.found:
            lines.append(f"baseline: {b.path} at {b.rev} ({(b.commit or '')[:12]})")
        else:
            lines.append(f"baseline: none ({b.note}); thresholds only")
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
                }
                for c in self.checks
            },
            "baseline": {
                "rev": self.baseline.rev,
                "commit": self.baseline.commit,
                "path": self.baseline.path,
                "found": self.baseline.found,
                "note": self.baseline.note,
            },
            "candidate": {k: _json_num(v) for k, v in self.metrics.items()},
        }


def judge(metrics: Mapping[str, Any], params: GateParams, task: str, baseline: Baseline) -> GateResult:
    """The verdict on ``metrics`` for a ``task`` model; ConfigError for impossible thresholds."""
    produced = metrics_for(task)
    gated = list(params.thresholds) + [m for m in params.tolerance if m not in params.thresholds]
    for name in gated:
        if name not in produced:
            key = "thresholds" if name in params.thresholds else "tolerance"
            raise ConfigError(f"params.yaml: gate.{key}.{name}",
                              f"a {task} model does not produce '{name}'",
                              suggest(name, tuple(produced), f"{task} metrics"))
    if not gated:
        raise ConfigError("params.yaml: gate.thresholds", "no metric is gated",
                          f"add at least one threshold, e.g. {produced[0]}: …")
    checks = []
    for name in gated:
        hib = higher_is_better(name)
        value = _number(metrics.get(name))
        threshold = params.thresholds.get(name)
        tol = params.tolerance_for(name)
        base = _number(baseline.metrics.get(name)) if baseline.metrics is not None else None
        reasons: list[str] = []
        if value is None:
            reasons.append("missing or NaN: fails closed")
        else:
            if threshold is not None and not (value >= threshold if hib else value <= threshold):
                reasons.append(f"{'below' if hib else 'above'} threshold {_fmt(threshold)}")
            if base is not None:
                delta = (base - value) if hib else (value - base)
                if delta > tol + 1e-12:
                    reasons.append(f"regressed by {_fmt(delta)} from baseline {_fmt(base)}"
                                   + (f" (tolerance {_fmt(tol)})" if tol else ""))
        checks.append(Check(name, value, hib, threshold, base, tol, not reasons, tuple(reasons)))
    clean = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    return GateResult(all(c.passed for c in checks), task, tuple(checks), baseline, clean)


def read_baseline(repo: GitRepo, rev: str, path: str) -> Baseline:
    """The metrics committed at ``rev`` under repo-relative ``path``."""
    commit = repo.resolve(rev)
    if commit is None and not repo.has_any_commit():
        return Baseline(rev, path, note="the repository has no commits yet: first model")
    if commit is None:
        raise ConfigError("params.yaml: gate.baseline", f"revision '{rev}' not found in git",
                          "set gate.baseline to your default branch, or fetch it "
                          f"(`git fetch origin {rev}:{rev}`)")
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
    return Baseline(rev, path, commit, metrics)


def result_from_json(data: Mapping[str, Any]) -> tuple[bool, Mapping[str, Any]]:
    """``(passed, candidate metrics)`` from a written gate report."""
    return bool(data.get("passed")) is True, data.get("candidate", {})


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return None if math.isnan(value) else float(value)


def _json_num(value: float | None) -> float | None:
    return None if value is None or math.isnan(value) else value


def _fmt(value: float | None) -> str:
    if value is None:
        return "missing"
    return f"{value:.4g}" if abs(value) < 1e4 else f"{value:.6g}"

