"""Benchmark: start-up of ``shelf`` now against the same commands at an older commit.

    .venv/bin/python benchmarks/startup.py                     # against c86c760 (before issue 16)
    .venv/bin/python benchmarks/startup.py --baseline REF --project /path/to/built/project --runs 21

The older code is ``git archive REF src`` unpacked in a temporary directory and run by the same
interpreter with ``PYTHONPATH`` pointing at it (the venv's packages are shared), so the two
differ only by modelshelf's own sources.  Measured, ``--runs`` of each, interleaved (the order
alternates every round), after one discarded round, medians:

1. ``shelf --version``: the interpreter and the CLI's start-up;
2. **stage start-up**: a process that imports what a stage command imports before its work
   (``modelshelf.cli`` and ``modelshelf.pipeline.stages``), cold (``SHELF_WARM=0``);
3. ``shelf serve --model models --port 0 --poll 0`` on a built project: from spawning it to
   the first ``GET /ready`` answered 200.

Goal (OK / ABOVE GOAL): each median at most 1.10 × the older code's.  Exit status 0 whether
or not it is met; a set-up failure exits 1.
"""

from __future__ import annotations

import argparse
import io
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _common import (BenchError, bench_env, built_project, check, loadavg, positive, script, show,
                     tools_missing)

REPO = Path(__file__).resolve().parents[1]
BASELINE = "c86c760"  # the last commit before issue 16's CLI, plots and site work
GOAL = 1.10
MAIN = "import sys; from modelshelf.cli import main; sys.exit(main())"


def unpack(ref: str, dest: Path) -> Path:
    """``src/`` of ``ref``, unpacked under ``dest``; returns the directory to put on PYTHONPATH."""
    archive = subprocess.run(["git", "-C", str(REPO), "archive", "--format=tar", ref, "src"], capture_output=True,
                             timeout=120)
    check(archive.returncode == 0, f"git archive {ref}: {archive.stderr.decode(errors='replace')}")
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(dest, filter="data")
    return dest / "src"


def timed(cmd: list[str], env: dict[str, str], cwd: Path) -> float:
    started = time.perf_counter()
    done = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, timeout=120)
    took = time.perf_counter() - started
    check(done.returncode == 0, f"{' '.join(cmd)} exited {done.returncode}: {done.stderr.decode(errors='replace')}")
    return took


def serve_start(env: dict[str, str], root: Path, log: Path) -> float:
    """Seconds from spawning ``shelf serve`` to its first 200 on /ready."""
    started = time.perf_counter()
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-c", MAIN, "serve", "--model", "models", "--host", "127.0.0.1",
                                 "--port", "0", "--poll", "0"], env=env, cwd=root, stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not (m := re.search(r"on http://127\.0\.0\.1:(\d+)", log.read_text(errors="replace"))):
            check(proc.poll() is None and time.monotonic() < deadline,
                  f"shelf serve printed no port: {log.read_text(errors='replace')[-2000:]}")
            time.sleep(0.001)  # a bounded wait for the line that names the port
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", int(m.group(1))), timeout=5) as s:
                    s.sendall(b"GET /ready HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                    if s.recv(64).startswith(b"HTTP/1.1 200"):
                        return time.perf_counter() - started
            except OSError:
                pass
        raise BenchError("shelf serve never answered /ready")
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)


def main(argv: list[str] | None = None) -> int:
    summary, details = __doc__.split("\n\n", 1)
    p = argparse.ArgumentParser(description=summary, epilog=details, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--baseline", default=BASELINE, help=f"the older commit (default {BASELINE})")
    p.add_argument("--project", type=Path, help="a built project for serve (default: scaffold and build one)")
    p.add_argument("--runs", type=positive, default=15, help="runs of each command and version (default 15)")
    p.add_argument("--json", action="store_true", help="print the results as JSON too")
    a = p.parse_args(argv)
    if tools_missing(["shelf", "dvc"], "startup.py"):
        return 2
    with tempfile.TemporaryDirectory(prefix="shelf-startup-") as tmp:
        work = Path(tmp)
        env = {**bench_env(work / "home"), "SHELF_WARM": "0"}
        root = built_project(a.project, work, env)
        subprocess.run([sys.executable, "-m", "compileall", "-q", str(REPO / "src")], check=True, timeout=300)
        old_src = unpack(a.baseline, work / "baseline")
        subprocess.run([sys.executable, "-m", "compileall", "-q", str(old_src)], check=True, timeout=300)
        envs = {"now": {**env, "PYTHONPATH": str(REPO / "src")}, "baseline": {**env, "PYTHONPATH": str(old_src)}}
        for e in envs.values():
            e.pop("PYTHONDONTWRITEBYTECODE", None)  # as a wheel install: bytecode compiled above, and used
        cases: dict[str, Callable[[dict[str, str]], float]] = {
            "shelf --version": lambda e: timed([sys.executable, "-c", MAIN, "--version"], e, root),
            "stage start-up": lambda e: timed([sys.executable, "-c", "import modelshelf.cli, modelshelf.pipeline.stages"],
                                              e, root),
            "shelf serve to /ready": lambda e: serve_start(e, root, work / "serve.log"),
        }
        runs: dict[str, dict[str, list[float]]] = {c: {"now": [], "baseline": []} for c in cases}
        for r in range(a.runs + 1):
            for case, fn in cases.items():
                for which in ("now", "baseline") if r % 2 else ("baseline", "now"):
                    took = fn(envs[which])
                    if r:  # the first round warms the page cache and is discarded
                        runs[case][which].append(took)
    res: dict[str, Any] = {"baseline": a.baseline, "runs": a.runs, "loadavg": loadavg(), "cases": {}}
    lines = [f"start-up, now against {a.baseline} (medians of {a.runs}, interleaved; load {res['loadavg']})"]
    for case, by in runs.items():
        now, base = statistics.median(by["now"]), statistics.median(by["baseline"])
        ratio = now / base
        res["cases"][case] = {"now_ms": now * 1e3, "baseline_ms": base * 1e3, "ratio": ratio}
        lines.append(f"  {case:24}{now * 1e3:8.1f} ms vs {base * 1e3:8.1f} ms: {ratio:.2f}x "
                     f"({'OK' if ratio <= GOAL else 'ABOVE GOAL'}, goal <= {GOAL})")
    return show("\n".join(lines), res, a.json)


if __name__ == "__main__":
    script(main)
