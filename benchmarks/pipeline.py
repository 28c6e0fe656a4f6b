"""Benchmark: what the DVC pipeline costs on top of the work it does.

Run from the repository root::

    .venv/bin/python benchmarks/pipeline.py                 # 7 no-op runs, 3 full runs
    .venv/bin/python benchmarks/pipeline.py --runs 11 --full-runs 5 --json

(or ``make bench``).  Everything happens in a fresh temporary directory with its
own HOME, no system/global git config, a fixed git identity and DVC analytics
off; the venv's ``bin`` (the directory of ``sys.executable``) comes first on PATH
so ``shelf`` and ``dvc`` are this checkout's.  Nothing outside the temporary
directory is touched, and it is removed at the end.

Set-up: ``modelshelf.project.init`` scaffolds a project (the reference dvc.yaml
and params.yaml), it is committed, ``dvc repro`` runs once as a warm-up and its
outputs are committed, so the pipeline is up to date on ``main``.

Measured (wall time of the whole command, ``time.perf_counter`` around
``subprocess.run``):

1. **No-op ``dvc repro``** against bare ``dvc status`` in the same up-to-date
   project: ``--runs`` of each, interleaved (the order alternates every round
   so neither command always goes first), after one discarded round.  ``dvc
   status`` is the floor: DVC's own start-up plus checking every stage's
   dependencies.  A no-op ``dvc repro`` should cost little more; the goal is a
   ratio of medians ≤ 1.5 (DVC alone measures about 1.4 here).  The run checks that no stage
   actually ran.
2. **Full pipeline** ``dvc repro -f`` (``--full-runs`` times: prepare → train →
   evaluate → gate → serialise, each a ``shelf`` process) against a **trivial
   pipeline of the same shape**: five DVC stages with the same dependency graph,
   each a Python process that copies a small file, in its own project, run as
   many times, interleaved.  The difference of medians is what modelshelf adds on
   top of DVC's own cost per stage: interpreter and import start-up of five
   processes, CSV and joblib round-trips, hashing, re-scoring the baseline, the
   ONNX export and its parity check, the card, and the real work; goal ≤ 3 s.
   The same fit and evaluation done in this process with imports already warm
   (one discarded call first) is shown for scale, and its metrics must equal the
   pipeline's.

   The stage commands run in a warm host (``modelshelf.pipeline.warm``, see
   docs/pipeline.md "Warm stages") unless ``SHELF_WARM=0`` is set: the discarded
   first run starts it, so the measured runs are warm.  Run with ``SHELF_WARM=0``
   to measure every stage as a process of its own; the report says which it was.

The results are medians and minima; the exit status is 0 whether or not the
goal is met (this is a measurement, not a test; "ABOVE GOAL" marks a miss).
A set-up failure (a command exiting non-zero) exits 1 with its output.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from _common import (BenchError, Sample, bench_env, environ, interleaved, nproc, positive, run, scaffold,
                     show, tools_missing)

NOOP_GOAL = 1.5
OVERHEAD_GOAL = 3.0   # seconds over the trivial pipeline of the same shape

# The trivial peer: five stages, the reference dvc.yaml's dependency graph, each copying a file.
TRIVIAL_STAGES = {
    "prepare": (["raw.txt"], "prepared.txt"),
    "train": (["prepared.txt"], "candidate.txt"),
    "evaluate": (["prepared.txt", "candidate.txt"], "eval.json"),
    "gate": (["prepared.txt", "eval.json", "candidate.txt"], "gate.json"),
    "serialise": (["prepared.txt", "candidate.txt", "eval.json", "gate.json"], "model.txt"),
}
UP_TO_DATE = "Data and pipelines are up to date."


@dataclass(frozen=True)
class Machine:
    nproc: int
    python: str
    dvc: str
    scikit_learn: str
    platform: str


def machine() -> Machine:
    return Machine(nproc=nproc(), python=platform.python_version(), dvc=metadata.version("dvc"),
                   scikit_learn=metadata.version("scikit-learn"), platform=platform.platform())


# -- measurements --------------------------------------------------------------------------------

def measure_noop(root: Path, env: Mapping[str, str], runs: int) -> tuple[Sample, Sample]:
    """No-op ``dvc repro`` and ``dvc status``, interleaved, order alternating per round."""
    repro_cmd, status_cmd = ["dvc", "repro"], ["dvc", "status"]

    def repro() -> float:
        elapsed, proc = run(repro_cmd, root, env)
        out = proc.stdout + proc.stderr
        if "Running stage" in out:
            raise BenchError(f"`dvc repro` was expected to be a no-op but ran a stage:\n{out}")
        return elapsed

    def status() -> float:
        elapsed, proc = run(status_cmd, root, env)
        if UP_TO_DATE not in proc.stdout:
            raise BenchError(f"`dvc status` reports changes, the project is not up to date:\n{proc.stdout}")
        return elapsed

    # after one discarded round, which warms the page cache and DVC's site cache
    repro_times, status_times = interleaved(repro, status, runs, runs)
    return Sample("dvc repro (no-op)", repro_times), Sample("dvc status", status_times)


def fit_and_evaluate(params_path: Path) -> dict[str, float]:
    """The pipeline's fit and evaluation, in this process, from the same params.yaml."""
    from modelshelf.pipeline import data
    from modelshelf.pipeline.evaluate import evaluate
    from modelshelf.params import load_params
    from modelshelf.pipeline.train import train

    params = load_params(params_path)
    ds = data.load_source(params.data, params_path.parent)
    task = data.validate(ds.frame, params.data, ds.path or ds.source)
    frame = data.normalise(ds.frame, params.data.target)
    schema = data.schema_of(frame, params.data.target, task)
    train_frame, test_frame = data.split(frame, params.data, task)
    features = [f["name"] for f in schema["features"]]
    target = params.data.target
    model = train(train_frame[features], train_frame[target], params.train, schema,
                  params.data.random_state)
    metrics, _plots = evaluate(model, test_frame[features], test_frame[target], task)
    return metrics


def measure_in_process(params_path: Path, runs: int) -> tuple[Sample, dict[str, float]]:
    metrics = fit_and_evaluate(params_path)  # discarded: imports and first-call caches
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        metrics = fit_and_evaluate(params_path)
        times.append(time.perf_counter() - start)
    return Sample("in-process fit+evaluate", times), metrics


def trivial_project(root: Path, env: Mapping[str, str]) -> None:
    """A git + DVC project whose five stages have the reference pipeline's shape and do nothing
    but start Python and copy a file."""
    import yaml

    root.mkdir(parents=True)
    run(["git", "init", "-q", "-b", "main"], root, env)
    run(["dvc", "init", "-q"], root, env)
    (root / "raw.txt").write_text("x\n", encoding="utf-8")
    stages = {}
    for name, (deps, out) in TRIVIAL_STAGES.items():
        code = f"import shutil; shutil.copy({deps[-1]!r}, {out!r})"
        stages[name] = {"cmd": f"{sys.executable} -c \"{code}\"", "deps": deps, "outs": [out]}
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}, sort_keys=False), encoding="utf-8")
    run(["dvc", "repro", "-q"], root, env)


def measure_full(root: Path, trivial: Path, env: Mapping[str, str], runs: int) -> tuple[Sample, Sample]:
    """``dvc repro -f`` of the real pipeline and of the trivial one, interleaved."""
    def real() -> float:
        return run(["dvc", "repro", "-f"], root, env)[0]

    def peer() -> float:
        return run(["dvc", "repro", "-f"], trivial, env)[0]

    ours, theirs = interleaved(real, peer, runs, runs)
    return Sample("dvc repro -f", ours), Sample("trivial 5-stage dvc repro -f", theirs)


def same_metrics(ours: Mapping[str, float], pipeline: Mapping[str, Any]) -> bool:
    """Whether the in-process metrics equal the pipeline's metrics/eval.json (sanity check)."""
    for key, value in ours.items():
        theirs = pipeline.get(key)
        if theirs is None:
            if value == value:  # not NaN: the pipeline wrote None for NaN only
                return False
        elif abs(float(theirs) - value) > 1e-9:
            return False
    return set(ours) == set(pipeline)


def warm_host() -> bool:
    """Whether the stage commands run in a warm host (``SHELF_WARM=0`` turns it off)."""
    from modelshelf.pipeline import warm

    return warm.enabled()


# -- report --------------------------------------------------------------------------------------

def report(m: Machine, repro: Sample, status: Sample, full: Sample, trivial: Sample, inproc: Sample,
           metrics_match: bool) -> tuple[str, dict[str, Any]]:
    noop_ratio = repro.median / status.median
    ok = noop_ratio <= NOOP_GOAL
    overhead = full.median - trivial.median
    full_ok = overhead <= OVERHEAD_GOAL
    lines = [
        f"machine           nproc {m.nproc}, python {m.python}, dvc {m.dvc}, "
        f"scikit-learn {m.scikit_learn}, {m.platform}",
        f"no-op dvc repro   median {repro.median:.3f} s  min {repro.min:.3f} s  "
        f"(dvc status median {status.median:.3f} s  min {status.min:.3f} s)  "
        f"ratio {noop_ratio:.2f}  goal ≤ {NOOP_GOAL}  {'OK' if ok else 'ABOVE GOAL'}"
        f"  [{len(repro.times)} runs each]",
        f"full pipeline     median {full.median:.2f} s  min {full.min:.2f} s  "
        f"(trivial 5-stage pipeline median {trivial.median:.2f} s)  overhead {overhead:.2f} s  "
        f"goal ≤ {OVERHEAD_GOAL:g} s  {'OK' if full_ok else 'ABOVE GOAL'}  [{len(full.times)} runs each, "
        f"warm host {'on' if warm_host() else 'off'}]",
        f"real work         in-process fit+evaluate median {inproc.median:.3f} s (imports warm)",
        f"sanity            in-process metrics equal the pipeline's metrics/eval.json: "
        f"{'yes' if metrics_match else 'NO'}",
    ]
    result = {
        "machine": asdict(m),
        "noop": {"repro": repro.to_json(), "status": status.to_json(), "ratio": round(noop_ratio, 4),
                 "goal": NOOP_GOAL, "ok": ok},
        "full": {"pipeline": full.to_json(), "trivial": trivial.to_json(), "in_process": inproc.to_json(),
                 "overhead_s": round(overhead, 4), "goal_s": OVERHEAD_GOAL, "ok": full_ok,
                 "metrics_match": metrics_match, "warm_host": warm_host()},
    }
    return "\n".join(lines), result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=positive, default=7, help="no-op repro/status runs each (default 7)")
    parser.add_argument("--full-runs", type=positive, default=3,
                        help="full `dvc repro -f` and in-process runs (default 3)")
    parser.add_argument("--json", action="store_true", help="also print the results as JSON")
    args = parser.parse_args(argv)

    if tools_missing(("shelf", "dvc"), "pipeline.py"):
        return 1

    m = machine()
    with tempfile.TemporaryDirectory(prefix="modelshelf-bench-") as tmp:
        env = bench_env(Path(tmp) / "home")
        root = Path(tmp) / "proj"
        try:
            print(f"setting up a project in {root} (init, commit, dvc repro, commit) …", flush=True)
            scaffold(root, env)
            print(f"measuring no-op dvc repro vs dvc status ({args.runs} runs each) …", flush=True)
            repro, status = measure_noop(root, env, args.runs)
            print(f"measuring dvc repro -f, a trivial 5-stage pipeline and in-process fit+evaluate "
                  f"({args.full_runs} runs each) …",
                  flush=True)
            with environ(env):
                inproc, metrics = measure_in_process(root / "params.yaml", args.full_runs)
            trivial_project(Path(tmp) / "trivial", env)
            full, trivial = measure_full(root, Path(tmp) / "trivial", env, args.full_runs)
            pipeline_metrics = json.loads((root / "metrics" / "eval.json").read_text(encoding="utf-8"))
        except BenchError as exc:
            print(f"benchmark: {exc}", file=sys.stderr)
            return 1

    text, result = report(m, repro, status, full, trivial, inproc, same_metrics(metrics, pipeline_metrics))
    return show(text, result, args.json)


if __name__ == "__main__":
    raise SystemExit(main())
