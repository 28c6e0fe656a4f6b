"""Benchmark: ``shelf serve`` against in-process prediction, the HTTP floor and MLflow.

Run from the repository root::

    .venv/bin/python benchmarks/serve.py                      # everything, MLflow installed afresh
    .venv/bin/python benchmarks/serve.py --mlflow-venv ~/.cache/modelshelf-mlflow --json
    .venv/bin/python benchmarks/serve.py --skip-mlflow --requests 1000

Everything happens in a fresh temporary directory with its own HOME, no
system/global git config, a fixed git identity and DVC analytics off; the venv's
``bin`` (the directory of ``sys.executable``) comes first on PATH so ``shelf`` and
``dvc`` are this checkout's.  Every server listens on 127.0.0.1 and every client
connects there; servers run in their own process group and are stopped (SIGTERM,
then SIGKILL) in ``finally`` blocks.  Nothing outside the temporary directory is
touched (except ``--mlflow-venv``, when given), and it is removed at the end.

Set-up: ``modelshelf.project.init`` scaffolds a project, params.yaml gets
``train.hyperparams.n_estimators: 100`` (a 100-tree forest, max_depth 8), it is
committed, ``dvc repro`` runs and its outputs are committed.  The served model is
``models/`` (card, model.joblib, onnx/model.onnx).  One row of the held-out set
is used throughout: one the model is unsure of (probability nearest 0.3 or 0.7),
so the two models of the hot-swap test answer it with different probabilities.

Measured, on that model and this machine:

1. **One-row /predict over HTTP** to ``shelf serve --model models --poll 0``: p50
   and p99 from one keep-alive ``http.client`` client (``--requests`` in all,
   split into ``--rounds`` runs, each after ``--warmup`` requests), and
   requests/s from that client and from ``--clients`` (4) concurrent client
   processes (``--duration`` seconds).  Clients are ``benchmarks/_loadgen.py``
   processes.
2. **(a) In-process** ``model.predict`` of the same row (a one-row pandas
   DataFrame) with the verified joblib pipeline: p50/p99 of ``--requests`` calls.
   For the breakdown, the pieces of one /predict (parse, tensors, onnxruntime, the
   one-row lane that answers a single all-numeric row, the app without a socket)
   are timed in-process too, called back to back and each after a 100 µs sleep
   (what a server does between requests).
3. **(b) MLflow**: the same fitted pipeline (model.joblib, verified by sha256
   against card.json, loaded with joblib in MLflow's own venv) saved with
   ``mlflow.sklearn.save_model`` (MLflow's default, skops, trusting exactly the
   types skops reports as untrusted: ``sklearn.tree._tree.Tree`` and
   ``numpy.dtype`` here; cloudpickle if skops still refuses) and served by ``mlflow models serve
   --env-manager local -w 1``; the same latency and throughput measurements
   against POST /invocations (``dataframe_split``).  MLflow lives in a venv of
   its own (``--mlflow-venv`` or one in the temporary directory: ``python -m
   venv`` + ``pip install mlflow scikit-learn==<the project's>``), never in the
   project's.  If it cannot be installed the run prints ``mlflow: unavailable
   (reason)`` and goes on.  ``--skip-mlflow`` leaves it out.
4. **(c) The HTTP floor**: GET /ping on the same shelf server (the same
   server, modelshelf.serve.httpd; constant answer): p50/p99 from one client, its runs
   interleaved with the /predict runs (the order rotates every round) so both
   see the same background load.  For context, POST /ping with the /predict
   body (answered 405, the body unread) is measured the same way: the floor
   plus sending and parsing a request body.
5. **Cold start**: from spawning ``shelf serve`` to the first answered /predict,
   against the floor of starting Python, importing onnxruntime and building an
   InferenceSession from the model file (a subprocess, timed until it prints that
   the session exists; neither its exit nor the server's is timed);
   ``--cold-runs`` (9) of each, interleaved, medians; the client retries its
   connection every millisecond until the port accepts (``shelf serve`` binds it
   before loading the model) and sends its request at once.  modelshelf's bytecode is compiled first, as a
   wheel install has it.  Then, to show where the difference goes, a child
   process does ``shelf serve``'s work up to listening and times each part
   (start-up; imports of onnxruntime, the CLI, modelshelf's serving modules,
   the HTTP server; the argument parser; loading); the rest of the median cold
   start is binding the socket and the first request.
6. **Hot swap**: two verified versions, v1 (the 100-tree model, copied from
   models/) and v2 (``n_estimators: 60``, ``gate.tolerance: 0.05``, ``dvc
   repro``, copied), and a symlink ``current`` pointing at one of them, swapped
   atomically (a new symlink then ``os.replace``).  ``shelf serve --model
   .../current --poll 0`` runs with SHELF_ADMIN_TOKEN set; after each switch of
   the link the benchmark calls POST /admin/reload with the bearer token.  First
   a steady run: ``--clients`` clients for the swap run's planned length, no
   swaps.  Then the swap run: the same clients while ``--swaps`` (20) swaps,
   alternating v2/v1, one every ``--swap-interval`` seconds.  Reported: requests,
   failed responses, which model answered how often (told apart by version and
   the row's probability), and the p99 of requests started inside the swap
   window against the steady run's p99 over the same stretch: the medians over
   ``--swap-rounds`` (3) rounds of both runs, the steady one first every other round
   (one pair of runs on 2 shared cores gave ratios from 1.1 to 2.0 for the same code).
   With ``--workers 2`` every server here runs two workers, and a swap happens in both or in
   neither (``shelf serve --workers``).

Goals (printed with OK / ABOVE GOAL / BELOW GOAL): HTTP p50 < in-process
scikit-learn p50; HTTP p50 ≤ 1.5 × the /ping p50; throughput ≥ 5 × MLflow's (one
client, and ``--clients`` clients); cold start ≤ 1.2 × its floor; hot swap with 0
failed responses and swap-window p99 ≤ 1.5 × steady p99.  The exit status is 0
whether or not they are met (a measurement, not a test).  A set-up failure (a
command exiting non-zero, a server not coming up, a check failing) exits 1 with
its output.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import http.client
import json
import math
import os
import platform
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _common import (BenchError, loadavg, version_of, bench_env, check, environ, nproc, positive, run, scaffold, set_param, sha256,
                     show, tools_missing)

LOADGEN = Path(__file__).resolve().with_name("_loadgen.py")
HOST = "127.0.0.1"
P50_VS_FLOOR_GOAL = 1.5
THROUGHPUT_VS_MLFLOW_GOAL = 5.0
COLD_VS_FLOOR_GOAL = 1.2
SWAP_P99_GOAL = 1.5
READY_TIMEOUT = 60.0          # seconds for a server to answer after spawning
MLFLOW_READY_TIMEOUT = 180.0
PIP_TIMEOUT = 1800.0          # the MLflow install (it pulls a few hundred MB)
RUN_TIMEOUT = 900.0           # seconds for a set-up command (git, dvc repro)
CLIENT_CAP = 1_000_000        # upper bound on requests per client in time-bounded runs
SWAP_LEAD, SWAP_TAIL = 1.0, 1.0  # seconds of load before the first and after the last swap


class Unavailable(RuntimeError):
    """MLflow could not be installed or started: reported, and the rest goes on."""


# -- statistics ----------------------------------------------------------------------------------

def pct(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    if not values:
        return math.nan
    s = sorted(values)
    return s[max(0, min(len(s) - 1, math.ceil(q / 100 * len(s)) - 1))]


@dataclass
class Latency:
    """One-request latencies in seconds."""

    label: str
    times: list[float]
    failed: int = 0

    @property
    def p50(self) -> float:
        return pct(self.times, 50)

    @property
    def p99(self) -> float:
        return pct(self.times, 99)

    def to_json(self) -> dict[str, Any]:
        return {"label": self.label, "n": len(self.times), "failed": self.failed,
                "p50_ms": round(self.p50 * 1e3, 4), "p99_ms": round(self.p99 * 1e3, 4),
                "mean_ms": round(statistics.fmean(self.times) * 1e3, 4) if self.times else None}


@dataclass
class Load:
    """What loadgen clients reported: one or more runs, one after another, of concurrent clients."""

    label: str
    runs: list[list[dict[str, Any]]]

    @classmethod
    def merge(cls, label: str, loads: Sequence[Load]) -> Load:
        return cls(label, [r for ld in loads for r in ld.runs])

    @property
    def clients(self) -> list[dict[str, Any]]:
        return [c for r in self.runs for c in r]

    @property
    def width(self) -> int:
        """Concurrent clients per run."""
        return max(len(r) for r in self.runs)

    @property
    def requests(self) -> int:
        return sum(c["requests"] for c in self.clients)

    @property
    def failed(self) -> int:
        return sum(c["failed"] for c in self.clients)

    @property
    def window(self) -> float:
        """Seconds measured: per run from the first client's start to the last one's end, summed."""
        return sum(max(c["end"] for c in r) - min(c["start"] for c in r) for r in self.runs)

    @property
    def rps(self) -> float:
        return self.requests / self.window if self.window > 0 else math.nan

    def latency(self) -> Latency:
        return Latency(self.label, [t for c in self.clients for t in c["latencies"]], self.failed)

    def between(self, lo: float, hi: float) -> list[float]:
        """Latencies of requests that started in [lo, hi] (epoch seconds)."""
        return [t for c in self.clients for t, o in zip(c["latencies"], c["offsets"])
                if lo <= c["start"] + o <= hi]

    def _summed(self, key: str) -> dict[str, int]:
        out: dict[str, int] = {}
        for c in self.clients:
            for k, v in c[key].items():
                out[k] = out.get(k, 0) + v
        return out

    def tags(self) -> dict[str, int]:
        return self._summed("tags")

    def errors(self) -> dict[str, int]:
        return self._summed("errors")

    def to_json(self) -> dict[str, Any]:
        return {"clients": self.width, "runs": len(self.runs), "requests": self.requests, "failed": self.failed,
                "window_s": round(self.window, 4), "rps": round(self.rps, 1),
                **{k: v for k, v in self.latency().to_json().items() if k in ("p50_ms", "p99_ms")}}


# -- environment ---------------------------------------------------------------------------------

def hermetic_env(home: Path) -> dict[str, str]:
    """The benchmarks' hermetic environment (_common.bench_env) without MLFLOW_*, SHELF_ADMIN_TOKEN
    or a proxy for 127.0.0.1."""
    env = {k: v for k, v in bench_env(home).items() if not k.startswith("MLFLOW_")}
    env.pop("SHELF_ADMIN_TOKEN", None)
    env.update({"NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"})
    return env



# -- commands and the project --------------------------------------------------------------------

def set_up(root: Path, env: Mapping[str, str]) -> None:
    """Scaffold through the library, 100 trees, commit, reproduce, commit the outputs."""
    scaffold(root, env, edit=lambda r: set_param(r / "params.yaml", "n_estimators", "100"),
             message="scaffold: 100-tree forest", timeout=RUN_TIMEOUT)


def read_card(models: Path) -> dict[str, Any]:
    return json.loads((models / "card.json").read_text(encoding="utf-8"))


def verified_copy(src: Path, dst: Path) -> dict[str, Any]:
    """Copy a model directory and check every artefact against the copy's card."""
    shutil.copytree(src, dst)
    card = read_card(dst)
    for rec in card["artefacts"].values():
        check(sha256(dst / rec["file"]) == rec["sha256"], f"{dst / rec['file']}: sha256 differs from the card")
    check("onnx" in card["artefacts"], f"{dst}: the card records no ONNX copy (serve would use joblib)")
    return card


# -- the row -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Row:
    names: list[str]
    values: list[Any]
    proba: float  # the first class's probability from the 100-tree pipeline

    def shelf_body(self) -> bytes:
        return json.dumps({"rows": [dict(zip(self.names, self.values))]}).encode()

    def mlflow_body(self) -> bytes:
        return json.dumps({"dataframe_split": {"columns": self.names, "data": [self.values]}}).encode()

    def frame(self) -> Any:
        import pandas as pd

        return pd.DataFrame([self.values], columns=self.names)


def pick_row(root: Path, model: Any, card: Mapping[str, Any]) -> Row:
    """A held-out row the model is unsure of: first-class probability nearest 0.3 or 0.7.

    Unsure, so another model answers it with another probability (the hot-swap test tells
    the two versions apart that way); not 0.5, where float32 ONNX and float64 scikit-learn
    could disagree on the label.
    """
    import pandas as pd

    feats = card["input_schema"]["features"]
    names = [f["name"] for f in feats]
    with open(root / "data" / "prepared" / "test.csv", newline="", encoding="utf-8") as fh:
        raw = list(csv.DictReader(fh))
    check(bool(raw), "data/prepared/test.csv is empty")

    def value(f: Mapping[str, Any], text: str) -> Any:
        if text == "":
            return None
        return float(text) if f["kind"] == "numeric" else text

    rows = [[value(f, r[f["name"]]) for f in feats] for r in raw]
    frame = pd.DataFrame(rows, columns=names)
    for f in feats:
        frame[f["name"]] = frame[f["name"]].astype(float if f["kind"] == "numeric" else object)
    proba = model.predict_proba(frame)[:, 0]
    best = min(range(len(rows)), key=lambda i: abs(abs(proba[i] - 0.5) - 0.2))
    return Row(names, rows[best], float(proba[best]))


# -- servers -------------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def request(port: int, method: str, path: str, body: bytes | None = None,
            headers: Mapping[str, str] | None = None, timeout: float = 30.0) -> tuple[int, bytes]:
    """One request on a fresh connection to 127.0.0.1; raises OSError when nothing answers."""
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        hdrs = dict(headers or {})
        if body is not None:
            hdrs.setdefault("Content-Type", "application/json")
        conn.request(method, path, body=body, headers=hdrs)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    port: int
    log: Path
    started: float  # perf_counter just before spawning

    def tail(self, n: int = 4000) -> str:
        try:
            return self.log.read_text(encoding="utf-8", errors="replace")[-n:]
        except OSError:
            return ""


def stop_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the server's own process group (it was started in a new session), then SIGKILL."""
    pgid = proc.pid

    def alive() -> bool:
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return False
        return True

    for sig, grace in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
        if not alive():
            break
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            if proc.poll() is not None and not alive():
                break
            time.sleep(0.05)
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass


@contextmanager
def server(cmd: Sequence[str], cwd: Path, env: Mapping[str, str], log: Path, port: int) -> Iterator[Server]:
    """Spawn a server in its own session; always stopped on the way out."""
    with open(log, "wb") as fh:
        started = time.perf_counter()
        proc = subprocess.Popen(list(cmd), cwd=cwd, env=dict(env), stdout=fh, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            yield Server(proc, port, log, started)
        finally:
            stop_group(proc)


def wait_until(srv: Server, probe: Callable[[], bool], timeout: float, what: str, interval: float = 0.005) -> float:
    """Poll ``probe`` every ``interval`` s until it is true; seconds since the spawn. Raises if the
    server dies or stalls."""
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        try:
            if probe():
                return time.perf_counter() - srv.started
        except (OSError, http.client.HTTPException):
            pass
        if srv.proc.poll() is not None:
            raise BenchError(f"{what} exited {srv.proc.returncode} before answering:\n{srv.tail()}")
        time.sleep(interval)
    raise BenchError(f"{what} did not answer within {timeout:g} s:\n{srv.tail()}")


def answers(port: int, method: str, path: str, body: bytes | None = None, timeout: float = 2.0
            ) -> Callable[[], bool]:
    return lambda: request(port, method, path, body, timeout=timeout)[0] == 200


SERVE_WORKERS = ["1"]  # --workers of every shelf serve here (set from the command line)


def shelf_serve_cmd(model: Path, port: int) -> list[str]:
    return ["shelf", "serve", "--model", str(model), "--port", str(port), "--poll", "0",
            "--workers", SERVE_WORKERS[0]]


# -- load ----------------------------------------------------------------------------------------

@dataclass
class LoadSpec:
    port: int
    method: str
    path: str
    body: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    expect: int = 200


def spawn_clients(spec: LoadSpec, work: Path, env: Mapping[str, str], *, clients: int, count: int,
                  warmup: int, max_seconds: float, start_at: float, track: bool) -> list[subprocess.Popen[str]]:
    args = [sys.executable, str(LOADGEN), "--port", str(spec.port), "--method", spec.method,
            "--path", spec.path, "--count", str(count), "--warmup", str(warmup),
            "--start-at", repr(start_at), "--max-seconds", repr(max_seconds), "--expect", str(spec.expect)]
    if spec.body is not None:
        body_file = work / f"body-{hashlib.sha256(spec.body).hexdigest()[:12]}.json"
        body_file.write_bytes(spec.body)
        args += ["--body-file", str(body_file)]
    for k, v in spec.headers.items():
        args += ["--header", f"{k}: {v}"]
    if track:
        args.append("--track")
    return [subprocess.Popen(args, env=dict(env), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             stdin=subprocess.DEVNULL) for _ in range(clients)]


def collect(procs: list[subprocess.Popen[str]], label: str, timeout: float) -> Load:
    outs: list[dict[str, Any]] = []
    try:
        deadline = time.monotonic() + timeout
        for p in procs:
            try:
                out, err = p.communicate(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired as exc:
                raise BenchError(f"{label}: a client did not finish in {timeout:g} s") from exc
            if p.returncode != 0:
                raise BenchError(f"{label}: a client exited {p.returncode}\n{err}")
            outs.append(json.loads(out))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return Load(label, [outs])


def load(spec: LoadSpec, work: Path, env: Mapping[str, str], label: str, *, clients: int, count: int,
         warmup: int, max_seconds: float, track: bool = False) -> Load:
    """``clients`` processes; several start together ~1 s from now (warming until then)."""
    start_at = time.time() + 1.0 if clients > 1 else 0.0
    procs = spawn_clients(spec, work, env, clients=clients, count=count, warmup=warmup,
                          max_seconds=max_seconds, start_at=start_at, track=track)
    return collect(procs, label, timeout=max_seconds + 90.0)


def loadgen_module() -> Any:
    """benchmarks/_loadgen.py as a module (for its answer-tagging function)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("_loadgen", LOADGEN)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# -- (a) in process ------------------------------------------------------------------------------

def time_calls(fn: Callable[[], Any], n: int, warmup: int, max_seconds: float, idle: float = 0.0) -> list[float]:
    """Seconds per call of ``fn``, ``n`` calls after ``warmup``; with ``idle``, each call comes
    after that many seconds asleep, as in a server between requests (on this kind of machine
    code runs slower on a CPU that has just idled)."""
    for _ in range(warmup):
        fn()
    out: list[float] = []
    stop = time.perf_counter() + max_seconds
    for _ in range(n):
        if idle:
            time.sleep(idle)
        s = time.perf_counter()
        if s >= stop:
            break
        fn()
        out.append(time.perf_counter() - s)
    return out


def measure_in_process(model: Any, row: Row, n: int, warmup: int, max_seconds: float) -> Latency:
    frame = row.frame()
    return Latency("in-process sklearn predict", time_calls(lambda: model.predict(frame), n,
                                                           min(warmup, 20), max_seconds))


def measure_breakdown(models: Path, row: Row, n: int) -> dict[str, tuple[float, float]]:
    """p50 (µs) of the pieces of one /predict, in this process, no socket: where the time goes;
    called back to back, and each after a 100 µs sleep."""
    import orjson

    from modelshelf.onnxcopy import feeds
    from modelshelf.serve.server import build

    app = build(str(models), poll=0)
    cur = app.holder.current
    assert cur is not None
    body = row.shelf_body()
    batch = cur.parser.parse(body)
    data = json.loads(body)
    tensors = feeds(batch)
    result = cur.runner.predict(batch)
    pieces: dict[str, Callable[[], Any]] = {
        "parse (json + checks)": lambda: cur.parser.parse(body),
        "feeds (float32 matrix)": lambda: feeds(batch),
        "onnxruntime run": lambda: cur.runner.session.run(tensors),
        "runner.predict (feeds+run+lists)": lambda: cur.runner.predict(batch),
        "one-row lane (checks+run+lists)": lambda: cur.one_row.predict(data) if cur.one_row else None,
        "orjson.dumps answer": lambda: orjson.dumps({"model": cur.name, "version": cur.version, **result}),
        "app.handle /predict (no socket)": lambda: app.handle("POST", "/predict", body),
        "app.handle /ping (no socket)": lambda: app.handle("GET", "/ping", b""),
    }
    return {k: (statistics.median(time_calls(f, n, 200, 30.0)) * 1e6,
                statistics.median(time_calls(f, min(n, 1000), 1, 30.0, idle=1e-4)) * 1e6)
            for k, f in pieces.items()}


# -- shelf over HTTP -----------------------------------------------------------------------------

@dataclass
class ShelfHttp:
    predict: Load
    ping: Load
    ping_body: Load  # POST /ping with the /predict body: answered 405 without reading it
    predict_conc: Load
    ping_conc: Load
    answer: dict[str, Any]


def measure_shelf(root: Path, work: Path, env: Mapping[str, str], row: Row, a: argparse.Namespace) -> ShelfHttp:
    port = free_port()
    with server(shelf_serve_cmd(root / "models", port), root, env, work / "shelf-serve.log", port) as srv:
        body = row.shelf_body()
        wait_until(srv, answers(port, "GET", "/ping"), READY_TIMEOUT, "shelf serve")
        status, raw = request(port, "POST", "/predict", body)
        check(status == 200, f"shelf /predict answered {status}: {raw[:300]!r}")
        answer = json.loads(raw)
        status, raw = request(port, "POST", "/ping", body)
        check(status == 405, f"POST /ping answered {status}, expected 405: {raw[:200]!r}")
        specs = {"predict": LoadSpec(port, "POST", "/predict", body), "ping": LoadSpec(port, "GET", "/ping"),
                 "ping_body": LoadSpec(port, "POST", "/ping", body, expect=405)}
        pred, ping = specs["predict"], specs["ping"]
        # One client: /predict, /ping (and POST /ping with the body) in --rounds runs whose order
        # rotates, so that all see the same background load; each run a client process of its own.
        per = math.ceil(a.requests / a.rounds)
        runs: dict[str, list[Load]] = {k: [] for k in specs}
        names = list(specs)
        for i in range(a.rounds):
            for name in names[i % 3:] + names[:i % 3]:
                runs[name].append(load(specs[name], work, env, name, clients=1, count=per, warmup=a.warmup,
                                       max_seconds=a.max_seconds / a.rounds))
        p1 = Load.merge("shelf /predict, 1 client", runs["predict"])
        g1 = Load.merge("shelf /ping, 1 client", runs["ping"])
        b1 = Load.merge("shelf POST /ping + body (405), 1 client", runs["ping_body"])
        many = dict(clients=a.clients, count=CLIENT_CAP, warmup=a.warmup, max_seconds=a.duration)
        pn = load(pred, work, env, f"shelf /predict, {a.clients} clients", **many)
        gn = load(ping, work, env, f"shelf /ping, {a.clients} clients", **many)
    return ShelfHttp(p1, g1, b1, pn, gn, answer)


# -- MLflow --------------------------------------------------------------------------------------

MLFLOW_SAVE = r'''
import hashlib, json, shutil, sys, warnings
from pathlib import Path

models, out, row = Path(sys.argv[1]), Path(sys.argv[2]), json.loads(sys.argv[3])
card = json.loads((models / "card.json").read_text(encoding="utf-8"))
rec = card["artefacts"]["model"]
path = models / rec["file"]
digest = hashlib.sha256(path.read_bytes()).hexdigest()
if digest != rec["sha256"]:
    sys.exit(f"{path}: sha256 {digest} does not match the card's {rec['sha256']}")
import joblib, sklearn
import pandas as pd
from sklearn.exceptions import InconsistentVersionWarning
if sklearn.__version__ != card["dependencies"].get("scikit-learn"):
    sys.exit(f"scikit-learn {sklearn.__version__} here, the card says {card['dependencies'].get('scikit-learn')}")
with warnings.catch_warnings():
    warnings.simplefilter("error", InconsistentVersionWarning)
    pipe = joblib.load(path)  # verified above: the very file the card records
import mlflow, mlflow.sklearn
from mlflow.models import infer_signature
X = pd.DataFrame(row["data"], columns=row["columns"])
signature = infer_signature(X, pipe.predict(X))
reqs = [f"mlflow=={mlflow.__version__}", f"scikit-learn=={sklearn.__version__}"]
try:  # MLflow's default format; trust exactly what skops reports as untrusted in this pipeline
    import skops.io as sio
    trusted = sorted(sio.get_untrusted_types(data=sio.dumps(pipe)))
    fmt = "skops, trusting " + ", ".join(trusted)
    mlflow.sklearn.save_model(pipe, str(out), signature=signature, pip_requirements=reqs,
                              skops_trusted_types=trusted)
except Exception as exc:
    shutil.rmtree(out, ignore_errors=True)
    fmt = f"cloudpickle (skops refused: {type(exc).__name__}: {str(exc)[-120:]})"
    mlflow.sklearn.save_model(pipe, str(out), signature=signature, pip_requirements=reqs,
                              serialization_format="cloudpickle")
print(json.dumps({"format": fmt, "mlflow": mlflow.__version__, "sklearn": sklearn.__version__,
                  "sha256": digest, "prediction": pipe.predict(X).tolist()}))
'''


def mlflow_env(env: Mapping[str, str], venv: Path) -> dict[str, str]:
    out = dict(env)
    out.update({
        "PATH": f"{venv / 'bin'}{os.pathsep}{env['PATH']}",  # mlflow starts `uvicorn` by name
        "VIRTUAL_ENV": str(venv),
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "DO_NOT_TRACK": "true",
        "MLFLOW_TRACKING_URI": (Path(env["HOME"]) / "mlruns").as_uri(),
    })
    return out


def mlflow_venv(venv: Path, env: Mapping[str, str], sklearn_version: str) -> tuple[str, float]:
    """A venv with MLflow and the project's scikit-learn: reused when it has both, else made.

    Returns (mlflow version, install seconds; 0 when reused). Raises Unavailable.
    """
    py = venv / "bin" / "python"
    probe = "import mlflow, sklearn; print(mlflow.__version__, sklearn.__version__)"

    def versions() -> tuple[str, str] | None:
        if not py.exists():
            return None
        p = subprocess.run([str(py), "-c", probe], env=dict(env), capture_output=True, text=True,
                           timeout=120, check=False)
        parts = p.stdout.split()
        return (parts[0], parts[1]) if p.returncode == 0 and len(parts) == 2 else None

    got = versions()
    if got and got[1] == sklearn_version:
        return got[0], 0.0
    start = time.perf_counter()
    try:
        if not py.exists():
            p = subprocess.run([sys.executable, "-m", "venv", str(venv)], env=dict(env), capture_output=True,
                               text=True, timeout=300, check=False)
            if p.returncode != 0:
                raise Unavailable(f"python -m venv failed: {(p.stderr or p.stdout).strip()[-300:]}")
        p = subprocess.run([str(py), "-m", "pip", "install", "--disable-pip-version-check", "-q", "mlflow",
                            f"scikit-learn=={sklearn_version}"], env=dict(env), capture_output=True, text=True,
                           timeout=PIP_TIMEOUT, check=False)
    except subprocess.TimeoutExpired:
        raise Unavailable(f"installing mlflow took more than {PIP_TIMEOUT:g} s") from None
    if p.returncode != 0:
        lines = [ln for ln in (p.stderr + p.stdout).splitlines()
                 if ln.strip() and not ln.startswith("WARNING: Location")]
        raise Unavailable(f"pip install mlflow failed: {' | '.join(lines[-3:])[-400:]}")
    got = versions()
    if not got or got[1] != sklearn_version:
        raise Unavailable(f"after pip install: mlflow/scikit-learn not importable as expected ({got})")
    return got[0], time.perf_counter() - start


@dataclass
class MlflowResult:
    version: str = ""
    install_s: float = 0.0
    format: str = ""
    ready_s: float = math.nan
    predict: Load | None = None
    conc: Load | None = None
    answer: Any = None
    unavailable: str = ""


def measure_mlflow(root: Path, work: Path, env: Mapping[str, str], row: Row, venv: Path,
                   sklearn_version: str, a: argparse.Namespace) -> MlflowResult:
    res = MlflowResult()
    try:
        print(f"  MLflow venv {venv} (reused if it has mlflow and scikit-learn {sklearn_version}) …", flush=True)
        res.version, res.install_s = mlflow_venv(venv, env, sklearn_version)
        menv = mlflow_env(env, venv)
        mdir = work / "mlflow-model"
        mwork = work / "mlflow-work"
        mwork.mkdir(exist_ok=True)
        split = {"columns": row.names, "data": [row.values]}
        p = subprocess.run([str(venv / "bin" / "python"), "-c", MLFLOW_SAVE, str(root / "models"), str(mdir),
                            json.dumps(split)], cwd=mwork, env=menv, capture_output=True, text=True,
                           timeout=600, check=False)
        if p.returncode != 0:
            raise Unavailable(f"mlflow.sklearn.save_model failed: {(p.stderr or p.stdout).strip()[-400:]}")
        saved = json.loads(p.stdout.strip().splitlines()[-1])
        res.format = saved["format"]
        port = free_port()
        cmd = [str(venv / "bin" / "mlflow"), "models", "serve", "-m", str(mdir), "--env-manager", "local",
               "-h", HOST, "-p", str(port), "-w", "1"]
        body = row.mlflow_body()
        with server(cmd, mwork, menv, work / "mlflow-serve.log", port) as srv:
            try:
                res.ready_s = wait_until(srv, answers(port, "POST", "/invocations", body), MLFLOW_READY_TIMEOUT,
                                         "mlflow models serve")
            except BenchError as exc:
                raise Unavailable(str(exc).splitlines()[0] + " (log: " + srv.tail(300).replace("\n", " ") + ")")
            status, raw = request(port, "POST", "/invocations", body)
            check(status == 200, f"mlflow /invocations answered {status}: {raw[:300]!r}")
            res.answer = json.loads(raw)
            spec = LoadSpec(port, "POST", "/invocations", body)
            res.predict = load(spec, work, env, "mlflow /invocations, 1 client", clients=1, count=a.requests,
                               warmup=min(a.warmup, 50), max_seconds=a.max_seconds)
            res.conc = load(spec, work, env, f"mlflow /invocations, {a.clients} clients", clients=a.clients,
                            count=CLIENT_CAP, warmup=min(a.warmup, 20), max_seconds=a.duration)
    except (Unavailable, BenchError, OSError, http.client.HTTPException, ValueError) as exc:
        # MLflow is the peer, not the subject: whatever goes wrong with it, the rest goes on.
        reason = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        res = MlflowResult(version=res.version, install_s=res.install_s, unavailable=reason)
        print(f"mlflow: unavailable ({res.unavailable})", flush=True)
    return res


# -- cold start ----------------------------------------------------------------------------------

# The floor is done when the session exists (it says so on stdout); its exit is not timed,
# just as a server's is not.
FLOOR_CODE = ("import sys, onnxruntime; "
              "s = onnxruntime.InferenceSession(open(sys.argv[1], 'rb').read(), "
              "providers=['CPUExecutionProvider']); print(len(s.get_inputs()), flush=True)")


# Where a cold start goes: the same work as `shelf serve` up to listening, timed in the child.
# Shared dependencies count where first imported (numpy under onnxruntime, as in the floor).
COLD_PARTS = r'''
import json, sys, time
parts = {"python start-up": time.time() - float(sys.argv[2])}
t0 = time.perf_counter()
def mark(k):
    global t0
    t = time.perf_counter()
    parts[k] = t - t0
    t0 = t
import onnxruntime
mark("import onnxruntime (+numpy)")
import gc
gc.disable()  # as `shelf serve` does for its start-up (it imports onnxruntime that way too)
import modelshelf.cli
mark("import the CLI (argparse)")
import modelshelf.commands.serving, modelshelf.serve.server, modelshelf.serve.runner, modelshelf.serve.onerow
mark("import serving modules (orjson, threading, sha256)")
import modelshelf.serve.httpd
mark("import the HTTP server (socket, httptools)")
modelshelf.cli.build_parser("serve").parse_args(["serve", "--model", sys.argv[1], "--poll", "0"])
mark("build the CLI parser, parse")
from modelshelf.serve.server import build
build(sys.argv[1], poll=0)
mark("build(): card, sha256, session, warm-up")
print(json.dumps(parts), flush=True)
'''


@dataclass
class Cold:
    shelf: list[float]
    floor: list[float]
    parts: dict[str, float]  # medians, seconds

    @property
    def shelf_median(self) -> float:
        return statistics.median(self.shelf)

    @property
    def floor_median(self) -> float:
        return statistics.median(self.floor)


def measure_cold(root: Path, work: Path, env: Mapping[str, str], row: Row, runs: int) -> Cold:
    import compileall

    import modelshelf

    # modelshelf's bytecode, as a wheel install has it (PYTHONDONTWRITEBYTECODE may be set).
    compileall.compile_dir(str(Path(modelshelf.__file__).parent), quiet=1)
    onnx = root / "models" / read_card(root / "models")["artefacts"]["onnx"]["file"]
    body = row.shelf_body()

    def shelf_once() -> float:
        port = free_port()
        with server(shelf_serve_cmd(root / "models", port), root, env, work / "cold.log", port) as srv:
            return wait_until(srv, answers(port, "POST", "/predict", body, timeout=5.0), READY_TIMEOUT,
                              "shelf serve (cold start)", interval=0.001)

    def ready_line(args: list[str]) -> tuple[float, str]:
        """Seconds from spawning ``python args`` to its first line on stdout, and that line."""
        start = time.perf_counter()
        p = subprocess.Popen([sys.executable, *args], cwd=root, env=dict(env), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
        try:
            assert p.stdout is not None
            line = p.stdout.readline()
            elapsed = time.perf_counter() - start
            _, err = p.communicate(timeout=120)
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
        check(p.returncode == 0 and bool(line.strip()), f"`python {args[0]} …` exited {p.returncode}: {err[-500:]}")
        return elapsed, line

    def floor_once() -> float:
        return ready_line(["-c", FLOOR_CODE, str(onnx)])[0]

    def parts_once() -> dict[str, float]:
        return json.loads(ready_line(["-c", COLD_PARTS, str(root / "models"), repr(time.time())])[1])

    shelf_once()  # discarded: page cache
    floor_once()
    shelf_t: list[float] = []
    floor_t: list[float] = []
    samples: list[dict[str, float]] = []
    for i in range(runs):  # the parts interleaved too, so that all see the machine in the same state
        for f in ((shelf_once, floor_once) if i % 2 == 0 else (floor_once, shelf_once)):
            (shelf_t if f is shelf_once else floor_t).append(f())
        samples.append(parts_once())
    parts = {k: statistics.median(s[k] for s in samples) for k in samples[0]}
    parts["the rest: listening, first request"] = statistics.median(shelf_t) - sum(parts.values())
    return Cold(shelf_t, floor_t, parts)


# -- hot swap ------------------------------------------------------------------------------------

@dataclass
class SwapRound:
    steady: Load
    swapping: Load
    reloads: list[dict[str, Any]]
    window: tuple[float, float]          # epoch seconds of the first reload's start, last one's end
    steady_window: tuple[float, float]

    @property
    def swap_p99(self) -> float:
        return pct(self.swapping.between(*self.window), 99)

    @property
    def steady_p99(self) -> float:
        return pct(self.steady.between(*self.steady_window), 99)


@dataclass
class SwapResult:
    rounds: list[SwapRound]
    labels: dict[str, str]               # tag -> "v1"/"v2"

    @property
    def steady(self) -> Load:
        return Load.merge("steady", [r.steady for r in self.rounds])

    @property
    def swapping(self) -> Load:
        return Load.merge("swapping", [r.swapping for r in self.rounds])

    @property
    def reloads(self) -> list[dict[str, Any]]:
        return [x for r in self.rounds for x in r.reloads]

    @property
    def window_s(self) -> float:
        """The swap windows' length, summed over the rounds."""
        return sum(r.window[1] - r.window[0] for r in self.rounds)

    @property
    def swap_p99(self) -> float:
        """The median over the rounds of the swap window's p99."""
        return statistics.median(r.swap_p99 for r in self.rounds)

    @property
    def steady_p99(self) -> float:
        """The median over the rounds of the steady run's p99."""
        return statistics.median(r.steady_p99 for r in self.rounds)

    @property
    def swapped(self) -> int:
        return sum(1 for r in self.reloads if r["ok"])


def point(link: Path, target: Path) -> None:
    """Make ``link`` a symlink to ``target`` atomically: a new link beside it, then os.replace."""
    tmp = link.with_name(f".{link.name}.{os.getpid()}.tmp")
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    os.symlink(target.name, tmp)
    os.replace(tmp, link)


def make_v2(root: Path, env: Mapping[str, str], dst: Path) -> dict[str, Any]:
    """A second valid version: 60 trees (gate tolerance 0.05 so a small regression passes)."""
    set_param(root / "params.yaml", "n_estimators", "60")
    set_param(root / "params.yaml", "tolerance", "0.05")
    run(["dvc", "repro"], root, env, timeout=RUN_TIMEOUT)
    return verified_copy(root / "models", dst)


def measure_swap(root: Path, work: Path, env: Mapping[str, str], row: Row, swap_dir: Path,
                 a: argparse.Namespace) -> SwapResult:
    v1, v2, current = swap_dir / "v1", swap_dir / "v2", swap_dir / "current"
    point(current, v1)
    token = secrets.token_hex(16)
    senv = dict(env, SHELF_ADMIN_TOKEN=token)
    auth = {"Authorization": f"Bearer {token}"}
    port = free_port()
    body = row.shelf_body()

    def reload() -> dict[str, Any]:
        s = time.time()
        status, raw = request(port, "POST", "/admin/reload", b"", auth)
        e = time.time()
        result = json.loads(raw) if status == 200 else {"raw": raw[:200].decode("latin-1")}
        ok = status == 200 and str(result.get("result", "")).startswith("serving") and not result.get("error")
        return {"start": s, "end": e, "status": status, "ok": ok, "result": result.get("result")}

    def tag() -> str:
        status, raw = request(port, "POST", "/predict", body)
        check(status == 200, f"/predict answered {status} during the swap set-up")
        return loadgen_module().tag_of(raw)

    with server(shelf_serve_cmd(current, port), root, senv, work / "swap-serve.log", port) as srv:
        wait_until(srv, answers(port, "GET", "/ping"), READY_TIMEOUT, "shelf serve (hot swap)")
        t1 = tag()
        point(current, v2)
        r = reload()
        check(r["ok"], f"reload to v2 did not swap: {r}")
        t2 = tag()
        point(current, v1)
        r = reload()
        check(r["ok"], f"reload back to v1 did not swap: {r}")
        check(tag() == t1, "after swapping back, /predict does not answer as v1 did")
        labels = {t1: "v1", t2: "v2"} if t1 != t2 else {t1: "v1|v2 (indistinguishable)"}

        spec = LoadSpec(port, "POST", "/predict", body)
        planned = SWAP_LEAD + a.swaps * a.swap_interval + SWAP_TAIL

        def steady_run() -> tuple[Load, tuple[float, float]]:
            steady = load(spec, work, env, "steady", clients=a.clients, count=CLIENT_CAP, warmup=a.warmup,
                          max_seconds=planned, track=True)
            s0 = min(c["start"] for c in steady.clients)
            return steady, (s0 + SWAP_LEAD, s0 + SWAP_LEAD + a.swaps * a.swap_interval)

        def swap_run() -> tuple[Load, list[dict[str, Any]]]:
            start_at = time.time() + 1.0
            procs = spawn_clients(spec, work, env, clients=a.clients, count=CLIENT_CAP, warmup=a.warmup,
                                  max_seconds=planned + a.swaps * 30.0 + 60.0, start_at=start_at, track=True)
            reloads: list[dict[str, Any]] = []
            try:
                time.sleep(max(0.0, start_at + SWAP_LEAD - time.time()))
                first = time.time()
                for i in range(a.swaps):
                    time.sleep(max(0.0, first + i * a.swap_interval - time.time()))
                    target = v2 if i % 2 == 0 else v1
                    point(current, target)
                    rec = reload()
                    rec["to"] = target.name
                    reloads.append(rec)
                time.sleep(SWAP_TAIL)
            except BaseException:
                for p in procs:
                    if p.poll() is None:
                        p.kill()
                        p.wait()
                raise
            for p in procs:
                if p.poll() is None:
                    p.send_signal(signal.SIGUSR1)  # the clients end their loop and report
            return collect(procs, "swap run", timeout=60.0), reloads

        rounds = []
        for r in range(a.swap_rounds):  # steady first in even rounds, the swaps first in odd ones
            if r % 2 == 0:
                (steady, steady_window), (swapping, reloads) = steady_run(), swap_run()
            else:
                (swapping, reloads), (steady, steady_window) = swap_run(), steady_run()
            if reloads[-1]["to"] != v1.name:  # every round starts on v1
                point(current, v1)
                check(reload()["ok"], "the reload back to v1 between rounds did not swap")
            window = (reloads[0]["start"], reloads[-1]["end"])
            rounds.append(SwapRound(steady, swapping, reloads, window, steady_window))
    return SwapResult(rounds, labels)


# -- report --------------------------------------------------------------------------------------

def ms(x: float) -> str:
    if x != x:
        return "n/a"
    return f"{x * 1e3:.3f} ms" if x < 0.1 else f"{x * 1e3:.1f} ms"


def verdict(ok: bool | None, miss: str = "ABOVE GOAL") -> str:
    return "n/a" if ok is None else ("OK" if ok else miss)


def report(info: dict[str, str], inproc: Latency, breakdown: dict[str, tuple[float, float]], sh: ShelfHttp,
           ml: MlflowResult | None, cold: Cold, sw: SwapResult, same_label: str) -> tuple[str, dict[str, Any]]:
    p1, g1, pn = sh.predict.latency(), sh.ping.latency(), sh.predict_conc.latency()
    shelf_p50, floor_p50 = p1.p50, g1.p50
    have_ml = ml is not None and not ml.unavailable and ml.predict is not None and ml.conc is not None
    reload_s = [r["end"] - r["start"] for r in sw.reloads]
    seen = sorted(sw.swapping.tags().items(), key=lambda kv: sw.labels.get(kv[0], kv[0]))
    n = sh.predict_conc.width

    def row(name: str, text: str) -> str:
        return f"{name:<17}{text}"

    lines = [
        row("machine", f"nproc {info['nproc']}, python {info['python']}, scikit-learn {info['scikit-learn']}, "
                       f"onnxruntime {info['onnxruntime']}, httptools {info['httptools']}"
                       + (f", mlflow {info['mlflow']}" if "mlflow" in info else "")),
        row("", f"{info['platform']}; load average {info['load avg at start']} at start, "
                f"{info.get('load avg at end', '-')} at end"),
        row("model", "100-tree RandomForest (max_depth 8), served as ONNX; one held-out row, "
                     f"p(class 0) {sh.answer.get('probabilities', [[math.nan]])[0][0]:.3f}"),
        row("shelf /predict", f"p50 {ms(shelf_p50)}  p99 {ms(p1.p99)}  1 client {sh.predict.rps:,.0f} req/s  "
                              f"{n} clients {sh.predict_conc.rps:,.0f} req/s (p50 {ms(pn.p50)}, p99 {ms(pn.p99)})  "
                              f"[{len(p1.times)} req in {len(sh.predict.runs)} runs; "
                              f"{p1.failed + sh.predict_conc.failed} failed]"),
        row("(c) floor /ping", f"p50 {ms(floor_p50)}  p99 {ms(g1.p99)}  1 client {sh.ping.rps:,.0f} req/s  "
                               f"{sh.ping_conc.width} clients {sh.ping_conc.rps:,.0f} req/s  "
                               f"[{len(g1.times)} req, interleaved with /predict]"),
        row("", f"POST /ping with the /predict body (405, body not read): p50 {ms(sh.ping_body.latency().p50)}  "
                f"p99 {ms(sh.ping_body.latency().p99)}  [{len(sh.ping_body.latency().times)} req]"),
        row("(a) in-process", f"sklearn predict, 1-row DataFrame: p50 {ms(inproc.p50)}  p99 {ms(inproc.p99)}  "
                              f"[{len(inproc.times)} calls]"),
    ]
    if ml is None:
        lines.append(row("(b) mlflow", "skipped (--skip-mlflow)"))
    elif not have_ml:
        lines.append(row("(b) mlflow", f"unavailable ({ml.unavailable})"))
    else:
        assert ml.predict is not None and ml.conc is not None
        mp, mc = ml.predict.latency(), ml.conc.latency()
        lines += [
            row("(b) mlflow", f"/invocations p50 {ms(mp.p50)}  p99 {ms(mp.p99)}  1 client {ml.predict.rps:,.1f} req/s  "
                              f"{ml.conc.width} clients {ml.conc.rps:,.1f} req/s (p50 {ms(mc.p50)}, p99 {ms(mc.p99)})  "
                              f"[{len(mp.times)} req; {mp.failed + ml.conc.failed} failed]"),
            row("", f"1 worker; {ml.format}; first answer {ml.ready_s:.1f} s after spawn; "
                    + (f"venv installed in {ml.install_s:.0f} s" if ml.install_s else "venv reused")),
        ]
    lines += [
        row("cold start", f"shelf serve → first /predict median {cold.shelf_median:.3f} s "
                          f"({', '.join(f'{t:.3f}' for t in cold.shelf)})  floor (python + onnxruntime + session) "
                          f"median {cold.floor_median:.3f} s ({', '.join(f'{t:.3f}' for t in cold.floor)})"),
        row("", "parts, medians: " + ", ".join(f"{k} {v * 1e3:.0f} ms" for k, v in cold.parts.items())),
        row("hot swap", f"{sw.swapped}/{len(sw.reloads)} swaps (reload p50 {ms(statistics.median(reload_s))}, "
                        f"max {ms(max(reload_s))}) in {len(sw.rounds)} rounds of {sw.window_s / len(sw.rounds):.1f} s; "
                        f"{sw.swapping.requests:,} requests from {sw.swapping.width} clients, "
                        f"{sw.swapping.failed} failed" + (f" {sw.swapping.errors()}" if sw.swapping.failed else "")),
        row("", "answered by " + ", ".join(f"{sw.labels.get(k, '? ' + k)} ({k.split('|')[0]}) {v:,}"
                                           for k, v in seen)
                + f"; p99 in the swap window {ms(sw.swap_p99)}, steady {ms(sw.steady_p99)} (medians of "
                  f"the rounds: {', '.join(f'{ms(r.swap_p99)}/{ms(r.steady_p99)}' for r in sw.rounds)}) "
                  f"(steady run {sw.steady.requests:,} requests, {sw.steady.failed} failed)"),
        row("breakdown", "in-process p50 µs, back to back / after 100 µs idle: "
                         + ", ".join(f"{k} {hot:.1f} / {idle:.1f}" for k, (hot, idle) in breakdown.items())),
        row("sanity", f"same label from in-process sklearn, shelf and MLflow: {same_label}"),
        "goals",
    ]
    g_inproc = shelf_p50 < inproc.p50
    r_floor = shelf_p50 / floor_p50
    g_floor = r_floor <= P50_VS_FLOOR_GOAL
    r_cold = cold.shelf_median / cold.floor_median
    g_cold = r_cold <= COLD_VS_FLOOR_GOAL
    r_swap = sw.swap_p99 / sw.steady_p99
    g_swap = sw.swapping.failed == 0 and sw.swapped == len(sw.reloads) and r_swap <= SWAP_P99_GOAL
    r_t1 = r_tn = math.nan
    g_thr: bool | None = None
    if have_ml:
        assert ml is not None and ml.predict is not None and ml.conc is not None
        r_t1 = sh.predict.rps / ml.predict.rps
        r_tn = sh.predict_conc.rps / ml.conc.rps
        g_thr = r_t1 >= THROUGHPUT_VS_MLFLOW_GOAL and r_tn >= THROUGHPUT_VS_MLFLOW_GOAL
    goals = [
        ("HTTP p50 < in-process sklearn p50", f"{ms(shelf_p50)} vs {ms(inproc.p50)}", verdict(g_inproc)),
        (f"HTTP p50 ≤ {P50_VS_FLOOR_GOAL:g} × floor p50", f"{ms(shelf_p50)} vs {ms(floor_p50)}, ratio {r_floor:.2f}",
         verdict(g_floor)),
        (f"throughput ≥ {THROUGHPUT_VS_MLFLOW_GOAL:g} × MLflow's (1 / {n} clients)",
         f"×{r_t1:.1f} / ×{r_tn:.1f}" if have_ml else "no MLflow", verdict(g_thr, "BELOW GOAL")),
        (f"cold start ≤ {COLD_VS_FLOOR_GOAL:g} × floor",
         f"{cold.shelf_median:.3f} s vs {cold.floor_median:.3f} s, ratio {r_cold:.2f}", verdict(g_cold)),
        (f"swaps: 0 failed, p99 ≤ {SWAP_P99_GOAL:g} × steady",
         f"{sw.swapping.failed} failed, {sw.swapped}/{len(sw.reloads)} swapped, ratio {r_swap:.2f}", verdict(g_swap)),
    ]
    w0 = max(len(g[0]) for g in goals)
    w1 = max(len(g[1]) for g in goals)
    lines += [f"  {a:<{w0}}  {b:<{w1}}  {c}" for a, b, c in goals]

    result: dict[str, Any] = {
        "machine": info,
        "shelf": {"predict": sh.predict.to_json(), "ping": sh.ping.to_json(), "ping_post_body": sh.ping_body.to_json(),
                  "predict_concurrent": sh.predict_conc.to_json(), "ping_concurrent": sh.ping_conc.to_json()},
        "in_process": inproc.to_json(),
        "breakdown_us": {k: {"back_to_back": round(hot, 2), "after_idle": round(idle, 2)}
                         for k, (hot, idle) in breakdown.items()},
        "mlflow": (None if ml is None else
                   {"unavailable": ml.unavailable} if not have_ml else
                   {"version": ml.version, "format": ml.format, "ready_s": round(ml.ready_s, 3),
                    "install_s": round(ml.install_s, 1), "predict": ml.predict.to_json() if ml.predict else None,
                    "concurrent": ml.conc.to_json() if ml.conc else None}),
        "cold_start": {"shelf_s": [round(t, 4) for t in cold.shelf], "floor_s": [round(t, 4) for t in cold.floor],
                       "shelf_median_s": round(cold.shelf_median, 4), "floor_median_s": round(cold.floor_median, 4),
                       "parts_s": {k: round(v, 4) for k, v in cold.parts.items()}},
        "hot_swap": {"swaps": len(sw.reloads), "swapped": sw.swapped, "reload_s": [round(t, 4) for t in reload_s],
                     "requests": sw.swapping.requests, "failed": sw.swapping.failed,
                     "errors": sw.swapping.errors(),
                     "answered_by": {f"{sw.labels.get(k, '?')} {k}": v for k, v in seen},
                     "swap_window_s": round(sw.window_s, 3),
                     "rounds": [{"swap_p99_ms": round(r.swap_p99 * 1e3, 4), "steady_p99_ms": round(r.steady_p99 * 1e3, 4)}
                                for r in sw.rounds],
                     "swap_p99_ms": round(sw.swap_p99 * 1e3, 4), "steady_p99_ms": round(sw.steady_p99 * 1e3, 4),
                     "steady": sw.steady.to_json(), "swapping": sw.swapping.to_json()},
        "same_label": same_label,
        "goals": {
            "http_p50_below_in_process": {"shelf_p50_ms": round(shelf_p50 * 1e3, 4),
                                          "in_process_p50_ms": round(inproc.p50 * 1e3, 4), "ok": g_inproc},
            "http_p50_vs_floor": {"ratio": round(r_floor, 3), "goal": P50_VS_FLOOR_GOAL, "ok": g_floor},
            "throughput_vs_mlflow": {"one_client": None if r_t1 != r_t1 else round(r_t1, 2),
                                     "concurrent": None if r_tn != r_tn else round(r_tn, 2),
                                     "goal": THROUGHPUT_VS_MLFLOW_GOAL, "ok": g_thr},
            "cold_start_vs_floor": {"ratio": round(r_cold, 3), "goal": COLD_VS_FLOOR_GOAL, "ok": g_cold},
            "hot_swap": {"failed": sw.swapping.failed, "p99_ratio": round(r_swap, 3), "goal": SWAP_P99_GOAL,
                         "ok": g_swap},
        },
    }
    return "\n".join(lines), result


def seconds(value: str) -> float:
    x = float(value)
    if not 0 < x <= 3600:
        raise argparse.ArgumentTypeError("must be in (0, 3600]")
    return x


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--requests", type=positive, default=2000,
                        help="measured one-client requests, and in-process calls (default 2000)")
    parser.add_argument("--warmup", type=positive, default=200, help="warm-up requests per client (default 200)")
    parser.add_argument("--rounds", type=positive, default=4,
                        help="one-client /predict and /ping runs alternate in this many rounds (default 4)")
    parser.add_argument("--clients", type=positive, default=4, help="concurrent client processes (default 4)")
    parser.add_argument("--duration", type=seconds, default=5.0,
                        help="seconds of each concurrent throughput run (default 5)")
    parser.add_argument("--max-seconds", type=seconds, default=60.0,
                        help="time bound of each one-client run (default 60)")
    parser.add_argument("--cold-runs", type=positive, default=9, help="cold starts of each kind (default 9)")
    parser.add_argument("--swaps", type=positive, default=20, help="hot swaps under load (default 20)")
    parser.add_argument("--swap-interval", type=seconds, default=0.25, help="seconds between swaps (default 0.25)")
    parser.add_argument("--swap-rounds", type=positive, default=3,
                        help="rounds of a steady run and a swap run, in turn; medians are reported (default 3)")
    parser.add_argument("--skip-mlflow", action="store_true", help="leave MLflow out")
    parser.add_argument("--workers", type=positive, default=1,
                        help="shelf serve --workers for every measurement, the hot swaps included (default 1)")
    parser.add_argument("--mlflow-venv", type=Path,
                        help="a venv directory for MLflow, reused across runs (made if missing)")
    parser.add_argument("--json", action="store_true", help="also print the results as JSON")
    args = parser.parse_args(argv)
    SERVE_WORKERS[0] = str(args.workers)

    if tools_missing(("shelf", "dvc"), "serve.py"):
        return 1

    sklearn_version = version_of("scikit-learn")
    info = {"nproc": str(nproc()), "python": platform.python_version(), "scikit-learn": sklearn_version,
            "onnxruntime": version_of("onnxruntime"), "httptools": version_of("httptools"),
            "load avg at start": loadavg(), "platform": platform.platform()}
    with tempfile.TemporaryDirectory(prefix="modelshelf-bench-serve-") as tmp:
        env = hermetic_env(Path(tmp) / "home")
        root = Path(tmp) / "proj"
        work = Path(tmp) / "work"
        work.mkdir()
        swap_dir = Path(tmp) / "swap"
        swap_dir.mkdir()
        try:
            print(f"setting up a project in {root} (init, 100 trees, commit, dvc repro, commit) …", flush=True)
            set_up(root, env)
            card = verified_copy(root / "models", swap_dir / "v1")
            from modelshelf.artefacts import load_verified

            rec = card["artefacts"]["model"]
            with environ(env):
                model = load_verified(root / "models" / rec["file"], rec["sha256"],
                                      sklearn_version=card["dependencies"].get("scikit-learn"))
            row = pick_row(root, model, card)

            ml: MlflowResult | None = None
            if not args.skip_mlflow:
                print("preparing MLflow (its own venv; the first install takes minutes) …", flush=True)
                venv = args.mlflow_venv.resolve() if args.mlflow_venv else Path(tmp) / "mlflow-venv"
                ml = measure_mlflow(root, work, env, row, venv, sklearn_version, args)
                if ml.version:
                    info["mlflow"] = ml.version

            print(f"measuring in-process sklearn predict ({args.requests} calls) and the /predict breakdown …",
                  flush=True)
            with environ(env):
                inproc = measure_in_process(model, row, args.requests, args.warmup, args.max_seconds)
                breakdown = measure_breakdown(root / "models", row, args.requests)
            print(f"measuring shelf serve: /predict and /ping, 1 client × {args.requests} requests, "
                  f"{args.clients} clients × {args.duration:g} s …", flush=True)
            sh = measure_shelf(root, work, env, row, args)
            print(f"measuring cold starts ({args.cold_runs} of each, interleaved) …", flush=True)
            cold = measure_cold(root, work, env, row, args.cold_runs)
            print("making a second version (60 trees, dvc repro) for the hot-swap test …", flush=True)
            make_v2(root, env, swap_dir / "v2")
            print(f"measuring hot swap: {args.swap_rounds} rounds of a steady run and {args.swaps} swaps under "
                  f"{args.clients} clients …", flush=True)
            sw = measure_swap(root, work, env, row, swap_dir, args)
        except (BenchError, OSError, http.client.HTTPException) as exc:
            print(f"benchmark: {type(exc).__name__}: {exc}", file=sys.stderr)
            return 1

        labels = {"sklearn": model.predict(row.frame()).tolist()[0],
                  "shelf": sh.answer["predictions"][0]}
        if ml is not None and ml.answer is not None:
            preds = ml.answer.get("predictions") if isinstance(ml.answer, dict) else ml.answer
            labels["mlflow"] = preds[0] if isinstance(preds, list) and preds else preds
        same = len({str(v) for v in labels.values()}) == 1
        same_label = ("yes" if same else "NO") + " (" + ", ".join(f"{k} {v}" for k, v in labels.items()) + ")"
        info["load avg at end"] = loadavg()

    text, result = report(info, inproc, breakdown, sh, ml, cold, sw, same_label)
    return show(text, result, args.json)


if __name__ == "__main__":
    raise SystemExit(main())
