"""Benchmark: ``shelf drift`` on a large CSV against pandas alone reading it.

Run from the repository root::

    .venv/bin/python benchmarks/drift.py                    # 1,000,000 new rows, 3 runs each
    .venv/bin/python benchmarks/drift.py --rows 200000 --runs 5 --shift 0.3 --json

Everything happens in a fresh temporary directory with its own HOME, no
system/global git config, a fixed git identity and DVC analytics off; the venv's
``bin`` (the directory of ``sys.executable``) comes first on PATH so ``shelf``
and ``dvc`` are this checkout's.  Nothing outside the temporary directory is
touched, and it is removed at the end.

The goal (the issue): ``shelf drift`` on 1 million rows × 30 features finishes
within 3× the time pandas alone takes to read that CSV.

Data: one generator for both CSVs.  30 numeric features ``x0 … x29``, independent
standard normals, and a binary target ``y = [x0 + 0.8·x1 − 0.5·x2 + ε > 0]`` with
ε ~ N(0, 0.5²); features written with 6 decimals, ``y`` as 0/1, a header line
(``numpy.savetxt`` in chunks: a plain CSV).  The new data comes from another
seed; ``--shift S`` adds S to its ``x0`` after the label is drawn (default 0: no
drift expected).  The verdict is reported either way.

Set-up: ``modelshelf.project.init`` scaffolds a project; the training CSV
(``--train-rows``, 20,000 rows) is written to data/raw/train.csv and tracked with
``dvc add``; params.yaml gets ``data.source: data/raw/train.csv``, ``data.target:
y``, ``train.hyperparams.n_estimators: --trees`` (20; max_depth stays 8) and gate
thresholds of 0.5 (accuracy, f1, roc_auc) so the gate passes; commit, ``dvc
repro`` (which writes the training profile and the ONNX copy), commit the outputs.
The new-data CSV (``--rows``, 1,000,000 rows) is written outside the project.

Measured (wall time of the whole command, ``time.perf_counter`` around
``subprocess.run``, each command started in the project with the same
environment):

(a) ``python -c "import pandas; pandas.read_csv(PATH)"``: pandas alone reading
    the CSV, interpreter start-up and ``import pandas`` included (the floor).
(b) ``shelf drift PATH --json``: the whole check against the workspace model's
    training profile, prediction drift included (the model scores a seeded sample
    of at most 100,000 rows, ``modelshelf.drift.core.PREDICTION_SAMPLE``).
(c) ``shelf drift PATH --json --no-predictions``: the same without prediction
    drift; b − c is what sampling and scoring the rows costs.

One discarded round of all three (it also warms the page cache), then
``--runs`` (3) rounds, the order rotating every round so no command always goes
first.  ``shelf drift`` may exit 0 (no drift) or 9 (drift): both are fine as
long as the JSON verdict agrees; any other exit status is an error.  Each run
must report every row, and (b) must include prediction drift, (c) must not.
Goal: median(b) / median(a) ≤ 3 (c/a is printed against the same goal).

The results are medians and minima; the exit status is 0 whether or not the goal
is met (this is a measurement, not a test; "ABOVE GOAL" marks a miss).  A set-up
failure (a command exiting non-zero, or a check failing) exits 1 with its output.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from _common import (BenchError, Sample, bench_env, check, loadavg, nproc, positive, run, scaffold, set_param, show,
                     tools_missing, version_of)

from modelshelf.drift.core import PREDICTION_SAMPLE

GOAL = 3.0               # shelf drift at most this many times pandas alone reading the CSV
N_FEATURES = 30
TRAIN_CSV = "data/raw/train.csv"
TARGET = "y"
CHUNK = 100_000          # rows generated and written at a time
RUN_TIMEOUT = 1800.0     # seconds for any one command
DRIFT_EXITS = {0: "no drift", 9: "drift"}
READ_CSV = "import sys, pandas; pandas.read_csv(sys.argv[1])"


@dataclass(frozen=True)
class Machine:
    nproc: int
    python: str
    pandas: str
    numpy: str
    scipy: str
    scikit_learn: str
    onnxruntime: str
    platform: str
    load_start: str    # 1/5/15-minute load averages: other work on the machine skews timings
    load_end: str = "-"


def machine() -> Machine:
    return Machine(nproc=nproc(), python=platform.python_version(), pandas=version_of("pandas"),
                   numpy=version_of("numpy"), scipy=version_of("scipy"), scikit_learn=version_of("scikit-learn"),
                   onnxruntime=version_of("onnxruntime"), platform=platform.platform(), load_start=loadavg())


# -- data ----------------------------------------------------------------------------------------

def write_csv(path: Path, rows: int, seed: int, shift: float = 0.0) -> float:
    """Write ``rows`` rows of the generator (seed ``seed``, ``x0`` shifted by ``shift``); the seconds taken."""
    import numpy as np

    start = time.perf_counter()
    rng = np.random.default_rng(seed)
    header = ",".join([f"x{i}" for i in range(N_FEATURES)] + [TARGET])
    fmt = ["%.6f"] * N_FEATURES + ["%d"]
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="ascii", newline="") as fh:
        fh.write(header + "\n")
        for lo in range(0, rows, CHUNK):
            n = min(CHUNK, rows - lo)
            x = rng.normal(size=(n, N_FEATURES))
            noise = rng.normal(scale=0.5, size=n)
            y = (x[:, 0] + 0.8 * x[:, 1] - 0.5 * x[:, 2] + noise > 0).astype(np.int64)
            x[:, 0] += shift
            block = np.empty((n, N_FEATURES + 1))
            block[:, :N_FEATURES] = x
            block[:, N_FEATURES] = y
            np.savetxt(fh, block, fmt=fmt, delimiter=",")
    return time.perf_counter() - start


# -- the project ---------------------------------------------------------------------------------

def set_up(root: Path, env: Mapping[str, str], train_rows: int, trees: int) -> None:
    """Scaffold, the training CSV tracked with DVC, loose gate; commit, reproduce, commit the outputs."""

    def edit(r: Path) -> None:
        write_csv(r / TRAIN_CSV, train_rows, seed=1)
        run(["dvc", "add", "-q", TRAIN_CSV], r, env, timeout=RUN_TIMEOUT)
        params = r / "params.yaml"
        set_param(params, "source", TRAIN_CSV)
        set_param(params, "target", TARGET)
        set_param(params, "n_estimators", str(trees))
        for metric in ("accuracy", "f1", "roc_auc"):
            set_param(params, metric, "0.5")

    scaffold(root, env, edit=edit, message=f"scaffold: {train_rows} training rows, {trees}-tree forest",
             timeout=RUN_TIMEOUT)
    card = json.loads((root / "models" / "card.json").read_text(encoding="utf-8"))
    check(card["dataset"]["rows"] == train_rows,
          f"the card records {card['dataset']['rows']} training rows, expected {train_rows}")
    check(card.get("profile", {}).get("predictions") is not None,
          "the card records no prediction profile: `shelf drift` would skip prediction drift")
    check("onnx" in card["artefacts"], "the card records no ONNX copy")


# -- measurements --------------------------------------------------------------------------------

def drift_run(root: Path, env: Mapping[str, str], path: Path, rows: int, *,
              predictions: bool) -> tuple[float, dict[str, Any]]:
    """One ``shelf drift PATH --json [--no-predictions]``: its wall time and its checked JSON (with "exit")."""
    cmd = ["shelf", "drift", str(path), "--json"] + ([] if predictions else ["--no-predictions"])
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=root, env=dict(env), capture_output=True, text=True, check=False,
                              timeout=RUN_TIMEOUT)
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"`{' '.join(cmd)}` did not finish in {RUN_TIMEOUT:g} s") from exc
    elapsed = time.perf_counter() - start
    if proc.returncode not in DRIFT_EXITS:
        raise BenchError(f"`{' '.join(cmd)}` exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    try:
        out = json.loads(proc.stdout)
    except json.JSONDecodeError as exc:
        raise BenchError(f"`{' '.join(cmd)}` printed no JSON\n{proc.stdout}\n{proc.stderr}") from exc
    check(out["verdict"] == DRIFT_EXITS[proc.returncode],
          f"`{' '.join(cmd)}` exited {proc.returncode} but its verdict is {out['verdict']!r}")
    check(out["rows"] == rows, f"`{' '.join(cmd)}` reports {out['rows']} rows, expected {rows}")
    check(len(out["features"]) == N_FEATURES, f"`{' '.join(cmd)}` reports {len(out['features'])} features")
    if predictions:
        check(out["predictions"] is not None, f"`{' '.join(cmd)}` skipped prediction drift")
    else:
        check(out["predictions"] is None, f"`{' '.join(cmd)}` reported prediction drift")
    out["exit"] = proc.returncode
    return elapsed, out


def rotated(calls: Sequence[Callable[[], float]], runs: int) -> list[list[float]]:
    """One discarded round of every call, then ``runs`` rounds, the order rotating each round."""
    for f in calls:
        f()
    times: list[list[float]] = [[] for _ in calls]
    k = len(calls)
    for i in range(runs):
        for j in range(k):
            idx = (i + j) % k
            times[idx].append(calls[idx]())
    return times


def measure(root: Path, env: Mapping[str, str], path: Path, rows: int,
            runs: int) -> tuple[Sample, Sample, Sample, dict[str, Any], dict[str, Any]]:
    last: dict[str, dict[str, Any]] = {}

    def pandas_read() -> float:
        return run([sys.executable, "-c", READ_CSV, str(path)], root, env, timeout=RUN_TIMEOUT)[0]

    def drift() -> float:
        elapsed, last["full"] = drift_run(root, env, path, rows, predictions=True)
        return elapsed

    def drift_no_pred() -> float:
        elapsed, last["nopred"] = drift_run(root, env, path, rows, predictions=False)
        return elapsed

    a, b, c = rotated([pandas_read, drift, drift_no_pred], runs)
    return (Sample("pandas.read_csv", a), Sample("shelf drift", b), Sample("shelf drift --no-predictions", c),
            last["full"], last["nopred"])


# -- report --------------------------------------------------------------------------------------

def summary(out: Mapping[str, Any]) -> str:
    drifted = out["drifted"]
    text = f"verdict {out['verdict']} (exit {out['exit']})"
    if drifted:
        text += f", drifted: {', '.join(drifted)}"
    top = max(out["features"], key=lambda f: f["psi"] if f["psi"] is not None else float("inf"))
    text += f"; max feature PSI {top['psi']:.4f} ({top['feature']})"
    if out["predictions"] is not None:
        p = out["predictions"]
        text += f"; predictions PSI {p['psi']:.4f} ({p['level']})"
    return text


def report(m: Machine, data: Mapping[str, Any], a: Sample, b: Sample, c: Sample, full: Mapping[str, Any],
           nopred: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    rb, rc = b.median / a.median, c.median / a.median
    ok_b, ok_c = rb <= GOAL, rc <= GOAL
    pred_cost = b.median - c.median

    def row(name: str, text: str) -> str:
        return f"{name:<22}{text}"

    def times(s: Sample) -> str:
        return f"median {s.median:.3f} s  min {s.min:.3f} s  [{len(s.times)} runs]"

    lines = [
        row("machine", f"nproc {m.nproc}, python {m.python}, pandas {m.pandas}, numpy {m.numpy}, scipy {m.scipy}, "
                       f"scikit-learn {m.scikit_learn}, onnxruntime {m.onnxruntime}"),
        row("", f"{m.platform}; load average {m.load_start} at start, {m.load_end} at end"),
        row("data", f"new CSV {data['rows']:,} rows × {N_FEATURES} features + {TARGET}, "
                    f"{data['bytes'] / 1e6:.0f} MB (written in {data['write_s']:.1f} s), x0 shifted by "
                    f"{data['shift']:g}; trained on {data['train_rows']:,} rows"),
        row("model", f"{data['trees']}-tree RandomForest (max_depth 8), scored through its ONNX copy"),
        row("(a) pandas alone", f"{times(a)}  python -c \"import pandas; pandas.read_csv(PATH)\""),
        row("(b) shelf drift", f"{times(b)}  {summary(full)}"),
        row("(c) --no-predictions", f"{times(c)}  {summary(nopred)}"),
        row("prediction drift", f"b − c = {pred_cost:.3f} s (sampling {min(data['rows'], PREDICTION_SAMPLE):,} of {data['rows']:,} rows, "
                                   "scoring them, their PSI/χ²)"),
        "goal (issue: shelf drift ≤ 3 × pandas reading the CSV)",
        f"  b/a  {rb:.2f}  goal ≤ {GOAL:g}  {'OK' if ok_b else 'ABOVE GOAL'}",
        f"  c/a  {rc:.2f}  goal ≤ {GOAL:g}  {'OK' if ok_c else 'ABOVE GOAL'}",
    ]
    result = {
        "machine": asdict(m),
        "data": dict(data),
        "pandas_read_csv": a.to_json(),
        "drift": {**b.to_json(), "verdict": full["verdict"], "exit": full["exit"], "drifted": full["drifted"],
                  "ratio": round(rb, 4), "goal": GOAL, "ok": ok_b},
        "drift_no_predictions": {**c.to_json(), "verdict": nopred["verdict"], "exit": nopred["exit"],
                                 "drifted": nopred["drifted"], "ratio": round(rc, 4), "goal": GOAL, "ok": ok_c},
        "prediction_cost_s": round(pred_cost, 4),
    }
    return "\n".join(lines), result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rows", type=positive, default=1_000_000, help="rows of new data (default 1,000,000)")
    parser.add_argument("--train-rows", type=positive, default=20_000, help="training rows (default 20,000)")
    parser.add_argument("--trees", type=positive, default=20, help="n_estimators of the model (default 20)")
    parser.add_argument("--shift", type=float, default=0.0,
                        help="added to x0 of the new data (default 0: no drift expected)")
    parser.add_argument("--runs", type=positive, default=3, help="runs of each command (default 3)")
    parser.add_argument("--json", action="store_true", help="also print the results as JSON")
    args = parser.parse_args(argv)

    if tools_missing(("shelf", "dvc"), "drift.py"):
        return 1

    m = machine()
    with tempfile.TemporaryDirectory(prefix="modelshelf-bench-") as tmp:
        env = bench_env(Path(tmp) / "home")
        root = Path(tmp) / "proj"
        new = Path(tmp) / "new.csv"
        try:
            print(f"setting up a project in {root} ({args.train_rows:,} training rows, {args.trees} trees; "
                  f"init, dvc add, commit, dvc repro, commit) …", flush=True)
            set_up(root, env, args.train_rows, args.trees)
            print(f"writing {args.rows:,} rows of new data to {new} …", flush=True)
            write_s = write_csv(new, args.rows, seed=2, shift=args.shift)
            data = {"rows": args.rows, "bytes": new.stat().st_size, "write_s": round(write_s, 2),
                    "shift": args.shift, "train_rows": args.train_rows, "trees": args.trees}
            print(f"measuring pandas.read_csv, shelf drift, shelf drift --no-predictions "
                  f"(1 discarded + {args.runs} rounds, interleaved) …", flush=True)
            a, b, c, full, nopred = measure(root, env, new, args.rows, args.runs)
        except BenchError as exc:
            print(f"benchmark: {exc}", file=sys.stderr)
            return 1

    m = Machine(**{**asdict(m), "load_end": loadavg()})
    text, result = report(m, data, a, b, c, full, nopred)
    return show(text, result, args.json)


if __name__ == "__main__":
    raise SystemExit(main())
