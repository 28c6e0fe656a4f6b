"""``shelf canary report DIR``: the stable model and its candidate compared from the prediction
log a canary or a shadow wrote, and whether to promote the candidate.

Shadow records hold both answers to one request, so agreement is measured row by row; a
canary's two sides answered different requests (split by a hash of their keys, so the two
samples come from one population), so only their distributions and latencies compare.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modelshelf.errors import DataError
from modelshelf.serve.logread import Entry, read_log
from modelshelf.serve.logread import shown as _shown

REL_TOL = 0.05  # two regression predictions agree within 5 %
ROLES = ("stable", "canary", "shadow")  # a record without a role is a server's without a candidate


@dataclass(frozen=True)
class Side:
    """One model's answers: its version, requests, rows, predictions and latencies (ms)."""

    version: str
    requests: int
    predictions: list[Any]
    latencies: list[float]

    def latency(self, q: float) -> float | None:
        xs = sorted(self.latencies)
        return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else None

    def to_json(self) -> dict[str, Any]:
        return {"version": self.version, "requests": self.requests, "rows": len(self.predictions),
                "latency_p50_ms": self.latency(0.5), "latency_p99_ms": self.latency(0.99)}


@dataclass(frozen=True)
class Comparison:
    """The report: the mode, both sides, the measures, and the verdict with its reasons."""

    mode: str  # "shadow" or "canary"
    task: str  # "classification" or "regression"
    stable: Side
    candidate: Side
    agreement: float | None  # shadow only: the share of rows both models answered alike
    shift: float  # classification: the largest change of a class's share; regression: of the mean, in stable SDs
    classes: dict[str, tuple[float, float]]  # class → (stable share, candidate share)
    errors: int  # requests the shadow could not answer
    promote: bool
    reasons: list[str] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)  # cut_short (lines), not_compared (records)

    def to_json(self) -> dict[str, Any]:
        """What ``shelf canary report --json`` prints."""
        return {"mode": self.mode, "task": self.task, "stable": self.stable.to_json(),
                "candidate": self.candidate.to_json(), "agreement": self.agreement,
                "shift": self.shift if math.isfinite(self.shift) else None,  # one side has no predictions
                "classes": {k: {"stable": s, "candidate": c} for k, (s, c) in self.classes.items()},
                "errors": self.errors, "verdict": "promote" if self.promote else "hold", "reasons": self.reasons,
                "skipped": {"cut_short": self.skipped.get("cut_short", 0),
                            "not_compared": self.skipped.get("not_compared", 0)}}

    def text(self) -> str:
        """The report as lines for a terminal."""
        s, c = self.stable, self.candidate
        verdict = f"promote v{c.version}" if self.promote else f"hold v{c.version}"
        lines = [f"{self.mode}: v{c.version} beside v{s.version}: {verdict}",
                 f"  requests: {s.requests} stable, {c.requests} candidate"
                 + (f" ({self.errors} the candidate could not answer)" if self.errors else "")]
        if self.agreement is not None:
            lines.append(f"  agreement: {self.agreement:.2%} of {len(c.predictions)} rows")
        if self.task == "classification":
            lines.append("  class shares (stable → candidate): " + ", ".join(
                f"{k} {a:.1%} → {b:.1%}" for k, (a, b) in self.classes.items()) + f"; largest shift {self.shift:.1%}")
        else:
            lines.append(f"  mean prediction shift: {self.shift:.3g} stable standard deviations")
        p50 = lambda side: "-" if side.latency(0.5) is None else f"{side.latency(0.5):.2f}"  # noqa: E731
        p99 = lambda side: "-" if side.latency(0.99) is None else f"{side.latency(0.99):.2f}"  # noqa: E731
        lines.append(f"  latency ms p50/p99: stable {p50(s)}/{p99(s)}, candidate {p50(c)}/{p99(c)}"
                     + (" (the shadow's: scoring only, no HTTP)" if self.mode == "shadow" else ""))
        if skipped := _skipped(self.skipped):
            lines.append(f"  skipped: {skipped}")
        lines += [f"  - {r}" for r in self.reasons]
        return "\n".join(lines) + "\n"


def _skipped(counts: dict[str, int]) -> str:
    """What was left out, in words (empty when nothing was)."""
    cut, other = counts.get("cut_short", 0), counts.get("not_compared", 0)
    parts = []
    if cut:
        parts.append(f"{cut} line{'s' if cut != 1 else ''} cut short (a server killed or still writing)")
    if other:
        parts.append(f"{other} record{'s' if other != 1 else ''} outside this comparison "
                     "(no canary or shadow role, or an older pair of versions)")
    return ", ".join(parts)


def compare(directory: str | Path, *, min_agreement: float = 0.95, max_shift: float = 0.05,
            max_regression_shift: float = 0.25, max_latency_ratio: float = 1.5,
            min_requests: int = 100) -> Comparison:
    """Compare the stable model and the candidate in the prediction log in ``directory``.

    Only the newest pair of versions in the log is compared (an older canary's records are left out).

    Args:
        directory: the ``--log-predictions`` directory of a server run with ``--canary`` or ``--shadow``.
        min_agreement: the least share of rows both must answer alike (shadow).
        max_shift: the largest change of a class's share allowed (classification).
        max_regression_shift: the largest change of the mean prediction, in stable standard deviations.
        max_latency_ratio: the candidate's p99 may be at most this times the stable one's.
        min_requests: requests each side needs before a verdict can be promote.

    Returns:
        The comparison; ``promote`` is True when every check holds.

    Raises:
        DataError: the directory is missing or holds no canary or shadow records, or a line of
            the log is malformed (its file, line and field named); a line cut short at a file's
            end is skipped and counted in ``skipped``.
    """
    log = read_log(directory)
    where = log.directory
    records = [_checked(e) for e in log.entries if "role" in e.record]
    if not records:
        n, cut = len(log.entries), log.cut_short
        held = [text for count, text in ((n, f"{n} record{'s' if n != 1 else ''} without a canary or shadow role"),
                                         (cut, f"{cut} line{'s' if cut != 1 else ''} cut short")) if count]
        raise DataError(where, "no canary or shadow records in the prediction log"
                        + (f" ({', '.join(held)})" if held else ""),
                        "serve with --canary or --shadow and --log-predictions DIR first")
    newest = records[-1]
    if newest["role"] == "shadow":
        mine = [r for r in records if r["role"] == "shadow" and r["version"] == newest["version"]
                and r["shadow"]["version"] == newest["shadow"]["version"]]
        done = _shadow(mine, min_agreement, max_shift, max_regression_shift, max_latency_ratio, min_requests)
    else:
        pair = _canary_pair(records, where)
        mine = [r for r in records if r["role"] != "shadow" and r["version"] in pair]
        done = _canary(mine, pair, max_shift, max_regression_shift, max_latency_ratio, min_requests)
    return dataclasses.replace(done, skipped={"cut_short": log.cut_short,
                                              "not_compared": len(log.entries) - len(mine)})


def _checked(entry: Entry) -> dict[str, Any]:
    """A canary's or shadow's record, its fields checked (a refusal names its file and line)."""
    role = entry.get("role", "text")
    if role not in ROLES:
        entry.refuse(f'field "role" is {_shown(role)}, not "stable", "canary" or "shadow"')
    entry.get("version", "text")
    entry.get("latency_ms", "number")
    _answer(entry, "response")
    if role == "shadow":
        entry.get("shadow.version", "text")
        entry.get("shadow.latency_ms", "number")
        if entry.has("shadow.response") or not entry.has("shadow.status"):
            _answer(entry, "shadow.response")
        else:
            entry.get("shadow.status", "integer")
    return entry.record


def _answer(entry: Entry, name: str) -> None:
    """Refuse the answer ``name`` unless it is an object whose predictions are a list of classes or numbers."""
    entry.get(name, "object")
    for i, value in enumerate(entry.get(f"{name}.predictions", "list")):
        if not isinstance(value, str | int | float):  # a bool too: a class
            entry.refuse(f'field "{name}.predictions" holds {_shown(value)} (item {i + 1}), '
                         "not a class or a number")


def _canary_pair(records: list[dict[str, Any]], where: str) -> tuple[str, str]:
    """The (stable, candidate) versions of the newest canary records."""
    stable = next((r["version"] for r in reversed(records) if r["role"] == "stable"), None)
    cand = next((r["version"] for r in reversed(records) if r["role"] == "canary"), None)
    if stable is None or cand is None:
        raise DataError(where, "the canary's records hold only one side",
                        "let the canary answer its share of requests, then report again")
    return stable, cand


def _predictions(response: dict[str, Any]) -> list[Any]:
    preds = response.get("predictions")
    return list(preds) if isinstance(preds, list) else []


def _task(responses: list[dict[str, Any]]) -> str:
    if any("probabilities" in r for r in responses):
        return "classification"
    values = [p for r in responses for p in _predictions(r)]
    if any(isinstance(v, str | bool) for v in values):
        return "classification"
    return "regression" if any(isinstance(v, float) and not v.is_integer() for v in values) else "classification"


def _shadow(records: list[dict[str, Any]], min_agreement: float, max_shift: float, max_regression_shift: float,
            max_latency_ratio: float, min_requests: int) -> Comparison:
    answered = [r for r in records if "response" in r["shadow"]]
    errors = len(records) - len(answered)
    stable = Side(records[0]["version"], len(records), [p for r in answered for p in _predictions(r["response"])],
                  [r["latency_ms"] for r in records])
    cand = Side(records[0]["shadow"]["version"], len(answered),
                [p for r in answered for p in _predictions(r["shadow"]["response"])],
                [r["shadow"]["latency_ms"] for r in answered])
    task = _task([r["response"] for r in answered])
    pairs = list(zip(stable.predictions, cand.predictions, strict=False))
    alike = sum(_alike(a, b, task) for a, b in pairs)
    agreement = alike / len(pairs) if pairs else 0.0
    shift, classes = _shift(stable.predictions, cand.predictions, task)
    reasons = _checks(stable, cand, task, shift, max_shift, max_regression_shift, max_latency_ratio, min_requests)
    if agreement < min_agreement:
        reasons.append(f"agreement {agreement:.2%} is below {min_agreement:.0%}")
    if errors:
        reasons.append(f"the candidate could not answer {errors} of {len(records)} requests")
    return Comparison("shadow", task, stable, cand, agreement, shift, classes, errors, not reasons, reasons)


def _canary(records: list[dict[str, Any]], pair: tuple[str, str], max_shift: float, max_regression_shift: float,
            max_latency_ratio: float, min_requests: int) -> Comparison:
    sides = []
    for role, version in zip(("stable", "canary"), pair, strict=True):
        mine = [r for r in records if r["role"] == role and r["version"] == version]
        sides.append(Side(version, len(mine), [p for r in mine for p in _predictions(r["response"])],
                          [r["latency_ms"] for r in mine]))
    stable, cand = sides
    task = _task([r["response"] for r in records])
    shift, classes = _shift(stable.predictions, cand.predictions, task)
    reasons = _checks(stable, cand, task, shift, max_shift, max_regression_shift, max_latency_ratio, min_requests)
    return Comparison("canary", task, stable, cand, None, shift, classes, 0, not reasons, reasons)


def _alike(a: Any, b: Any, task: str) -> bool:
    if task == "regression" and isinstance(a, int | float) and isinstance(b, int | float):
        return math.isclose(a, b, rel_tol=REL_TOL, abs_tol=1e-9)
    return a == b


def _shift(old: list[Any], new: list[Any], task: str) -> tuple[float, dict[str, tuple[float, float]]]:
    if not old or not new:
        return math.inf, {}
    if task == "regression":
        sd = statistics.pstdev(old) or 1.0
        return abs(statistics.fmean(new) - statistics.fmean(old)) / sd, {}
    a, b = Counter(map(str, old)), Counter(map(str, new))
    classes = {k: (a[k] / len(old), b[k] / len(new)) for k in sorted(a.keys() | b.keys())}
    return max(abs(x - y) for x, y in classes.values()), classes


def _checks(stable: Side, cand: Side, task: str, shift: float, max_shift: float, max_regression_shift: float,
            max_latency_ratio: float, min_requests: int) -> list[str]:
    reasons = []
    for side, name in ((stable, "stable"), (cand, "candidate")):
        if side.requests < min_requests:
            reasons.append(f"too few requests for a verdict: {side.requests} {name} (at least {min_requests})")
    limit = max_shift if task == "classification" else max_regression_shift
    if shift > limit:
        what = "a class's share" if task == "classification" else "the mean prediction (stable SDs)"
        reasons.append(f"{what} moved by {shift:.3g}, more than {limit:g}")
    s99, c99 = stable.latency(0.99), cand.latency(0.99)
    if s99 is not None and c99 is not None and c99 > max_latency_ratio * max(s99, 0.001):
        reasons.append(f"the candidate's p99 latency {c99:.2f} ms is over {max_latency_ratio:g} × the stable "
                       f"{s99:.2f} ms")
    return reasons
