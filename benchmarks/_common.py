"""What the benchmarks in this directory share: errors, timings, commands, the scaffolded project.

Imported by the benchmark scripts as ``from _common import …`` (a script's own directory
is first on ``sys.path``).  Standard library only at import time: ``modelshelf`` is
imported inside the functions that need it, so a run with the wrong interpreter gets
the scripts' "run with the venv's python" message rather than an ImportError.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from importlib import metadata
from typing import Any

BIN = Path(sys.executable).parent


class BenchError(RuntimeError):
    """A command or server the benchmark depends on failed, or a check did not hold."""


def check(cond: bool, message: str) -> None:
    if not cond:
        raise BenchError(message)


@dataclass(frozen=True)
class Sample:
    """Timings of one measured command, in seconds."""

    label: str
    times: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def min(self) -> float:
        return min(self.times)

    def to_json(self) -> dict[str, Any]:
        return {"label": self.label, "median_s": round(self.median, 4), "min_s": round(self.min, 4),
                "runs_s": [round(t, 4) for t in self.times]}


def interleaved(a: Callable[[], float], b: Callable[[], float], runs_a: int,
                runs_b: int) -> tuple[list[float], list[float]]:
    """One discarded call of each, then rounds of a/b (order alternating) until both have their runs."""
    a()
    b()
    ta: list[float] = []
    tb: list[float] = []
    for i in range(max(runs_a, runs_b)):
        order = (a, b) if i % 2 == 0 else (b, a)
        for f in order:
            if f is a and len(ta) < runs_a:
                ta.append(a())
            elif f is b and len(tb) < runs_b:
                tb.append(b())
    return ta, tb


# -- environment -------------------------------------------------------------------------------

def bench_env(home: Path) -> dict[str, str]:
    """:func:`modelshelf.sandbox.hermetic_env` in ``home`` with the identity "Bench Author/Committer"."""
    from modelshelf.sandbox import hermetic_env

    return hermetic_env(home, name="Bench")


@contextmanager
def environ(env: Mapping[str, str]) -> Iterator[None]:
    """Replace os.environ for library calls that spawn git/dvc themselves (project.init)."""
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def nproc() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 0


def tools_missing(tools: Sequence[str], script: str) -> bool:
    """Whether one of ``tools`` is not beside this interpreter (said on stderr): not the venv's python."""
    for tool in tools:
        if not (BIN / tool).exists():
            print(f"benchmark: {BIN / tool} not found; run with the venv's python "
                  f"(.venv/bin/python benchmarks/{script})", file=sys.stderr)
            return True
    return False


# -- running commands ----------------------------------------------------------------------------

def run(cmd: Sequence[str], cwd: Path, env: Mapping[str, str], *, stdin: bytes | None = None,
        timeout: float | None = None) -> tuple[float, subprocess.CompletedProcess[str]]:
    """Run ``cmd`` (fed ``stdin`` if given); return its wall time and result, or raise BenchError.

    It fails if the command exits non-zero or, with a ``timeout`` (seconds), does not finish in time.
    """
    start = time.perf_counter()
    try:
        if stdin is None:
            proc = subprocess.run(list(cmd), cwd=cwd, env=dict(env), capture_output=True, text=True,
                                  check=False, timeout=timeout)
        else:
            raw = subprocess.run(list(cmd), cwd=cwd, env=dict(env), capture_output=True, input=stdin,
                                 check=False, timeout=timeout)
            proc = subprocess.CompletedProcess(raw.args, raw.returncode, raw.stdout.decode(errors="replace"),
                                               raw.stderr.decode(errors="replace"))
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"`{' '.join(cmd)}` did not finish in {timeout:g} s") from exc
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise BenchError(f"`{' '.join(cmd)}` exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return elapsed, proc


def commit(root: Path, env: Mapping[str, str], message: str, *, timeout: float | None = None) -> None:
    run(["git", "add", "-A"], root, env, timeout=timeout)
    run(["git", "commit", "-q", "-m", message], root, env, timeout=timeout)


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# -- the project ---------------------------------------------------------------------------------

def set_param(path: Path, key: str, value: str) -> None:
    """Change ``key: old`` to ``key: value`` on its one line in params.yaml, keeping comments."""
    text = path.read_text(encoding="utf-8")
    new, count = re.subn(rf"(?m)^(\s*{re.escape(key)}:\s*)[^\s#]+", rf"\g<1>{value}", text)
    check(count == 1, f"{path}: expected one '{key}:' line, found {count}")
    path.write_text(new, encoding="utf-8")


def scaffold(root: Path, env: Mapping[str, str], *, edit: Callable[[Path], object] | None = None,
             message: str = "scaffold", timeout: float | None = None) -> None:
    """Scaffold through the library, ``edit(root)`` if given, commit, reproduce once, commit the outputs."""
    from modelshelf.project import init

    with environ(env):
        init(root)
    if edit is not None:
        edit(root)
    commit(root, env, message, timeout=timeout)
    run(["dvc", "repro"], root, env, timeout=timeout)
    commit(root, env, "first model", timeout=timeout)


def built_project(given: Path | None, work: Path, env: Mapping[str, str]) -> Path:
    """``given`` (a built project), or one scaffolded and built in ``work/proj``; resolved."""
    if given is not None:
        return given.resolve()
    root = work / "proj"
    root.mkdir()
    print("building a project (scaffold, dvc repro) ...", file=sys.stderr)
    scaffold(root, env, timeout=600)
    return root.resolve()


def loopback_env(home: Path) -> dict[str, str]:
    """:func:`bench_env` for a server on 127.0.0.1: no admin token, no proxy for loopback."""
    env = bench_env(home)
    env.pop("SHELF_ADMIN_TOKEN", None)
    env.update({"NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"})
    return env


# -- command line and output ---------------------------------------------------------------------

def script(main: Callable[[], int]) -> None:
    """Run a benchmark's ``main`` as a script: exit with its status, or with one line and status
    1 when the set-up fails (a :class:`BenchError`)."""
    try:
        raise SystemExit(main())
    except BenchError as exc:
        print(f"benchmark: {exc}", file=sys.stderr)
        raise SystemExit(1) from None


def positive(value: str) -> int:
    n = int(value)
    if n < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return n


def show(text: str, result: Mapping[str, Any], as_json: bool) -> int:
    """Print the report (and the results as JSON if asked); the exit status, 0."""
    print()
    print(text)
    if as_json:
        print(json.dumps(result, indent=2))
    return 0


def version_of(dist: str) -> str:
    """The installed version of ``dist``, or "-"."""
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "-"


def loadavg() -> str:
    """The 1, 5 and 15 minute load averages, or "-"."""
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "-"
