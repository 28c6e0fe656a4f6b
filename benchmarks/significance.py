"""Benchmark: the gate's paired bootstrap, per metric.

Run from the repository root::

    .venv/bin/python benchmarks/significance.py                  # 2,000 resamples, 100k rows
    .venv/bin/python benchmarks/significance.py --rows 114 --json

Two synthetic models score the same ``--rows`` held-out rows (binary, 3-class and
regression problems, seeded); for every metric the catalogue gates, the wall time
(``time.perf_counter``, best of ``--repeat``) of one call of
``modelshelf.pipeline.significance.intervals`` with ``--resamples`` replicates.
Exits 1 when any metric takes longer than ``--goal`` seconds (default 2).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any


def problems(rows: int, seed: int) -> dict[str, tuple[Any, Any]]:
    """Task → (candidate, baseline) outputs of two noisy models on the same rows."""
    import numpy as np

    from modelshelf.pipeline.significance import Outputs

    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, rows)
    sc, sb = (y + rng.normal(scale=s, size=rows) for s in (0.8, 0.85))
    binary = (Outputs(y, (sc > 0.5).astype(int), sc), Outputs(y, (sb > 0.5).astype(int), sb))
    k = rng.integers(0, 3, rows)
    logits = [np.eye(3)[k] * 2 + rng.normal(size=(rows, 3)) for _ in range(2)]
    proba = [np.exp(z) / np.exp(z).sum(axis=1, keepdims=True) for z in logits]
    multi = tuple(Outputs(k, p.argmax(axis=1), p) for p in proba)
    t = rng.normal(size=rows)
    reg = tuple(Outputs(t, t + rng.normal(scale=s, size=rows)) for s in (0.5, 0.55))
    return {"binary": binary, "multiclass": multi, "regression": reg}


def measure(rows: int, resamples: int, repeat: int, seed: int) -> list[dict[str, Any]]:
    from modelshelf.pipeline.metrics import CATALOGUE
    from modelshelf.pipeline.significance import intervals

    data = problems(rows, seed)
    out = []
    for name, spec in CATALOGUE.items():
        task = next(t for t in ("binary", "multiclass", "regression") if t in spec.tasks)
        cand, base = data[task]
        best, found = float("inf"), {}
        for _ in range(repeat):
            start = time.perf_counter()
            found = intervals([name], cand, base, task, resamples=resamples, seed=seed)
            best = min(best, time.perf_counter() - start)
        iv = found.get(name)
        out.append({"metric": name, "task": task, "seconds": best,
                    "interval": iv.text() if iv else None})
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--resamples", type=int, default=2000)
    ap.add_argument("--repeat", type=int, default=1, help="runs per metric; the best counts")
    ap.add_argument("--goal", type=float, default=2.0, help="seconds per metric")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    try:
        rows = measure(a.rows, a.resamples, a.repeat, a.seed)
    except ImportError as exc:
        print(f"error: {exc}: run with the venv's python (.venv/bin/python)", file=sys.stderr)
        return 1
    slow = [r["metric"] for r in rows if r["seconds"] > a.goal]
    if a.json:
        print(json.dumps({"rows": a.rows, "resamples": a.resamples, "goal_seconds": a.goal,
                          "results": rows, "above_goal": slow}, indent=2))
    else:
        print(f"paired bootstrap: {a.resamples} resamples on {a.rows} rows (goal ≤ {a.goal:g} s)")
        print(f"{'metric':<16} {'task':<11} {'seconds':>8}  interval")
        for r in rows:
            mark = "  ABOVE GOAL" if r["seconds"] > a.goal else ""
            print(f"{r['metric']:<16} {r['task']:<11} {r['seconds']:>8.3f}  {r['interval']}{mark}")
    return 1 if slow else 0


if __name__ == "__main__":
    sys.exit(main())
