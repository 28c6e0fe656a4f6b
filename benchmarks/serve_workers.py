"""Benchmark: ``shelf serve --workers 1`` and ``--workers 2`` against uvicorn with 2 workers on
the same ``App``, and the cost of ``--log-predictions``.

    .venv/bin/python benchmarks/serve_workers.py --project /path/to/built/project
    .venv/bin/python benchmarks/serve_workers.py            # scaffolds and builds one first (~1 min)

Needs ``wrk`` (Debian's package) and uvicorn (``pip install -e '.[bench]'``).  Every server
listens on 127.0.0.1, port 0 for shelf (the port it prints) and a free port for uvicorn, and
is stopped on the way out; ``wrk`` shares the machine's cores with the servers, as a load
generator on one host does.  ``wrk`` runs ``--wrk-threads`` threads (1): on 2 cores a second
thread is a fourth busy thread beside two workers, and p99 at 16 connections then measures the
scheduler's time slices more than any server (seen here: shelf 2 workers p99 3.3–3.6 ms with 2
threads, 0.8–0.9 ms with 1, at 30k and 38k req/s).

1. **Throughput and p99**: for one-row bodies and 100-row bodies of the held-out set, ``wrk``
   with 1, 4 and 16 connections (``--seconds`` each, after a one-second warm-up; the medians
   of ``--rounds`` rounds, the servers interleaved) against
   ``shelf serve --workers 1``, ``--workers 2`` and ``uvicorn --workers 2`` serving
   ``modelshelf.serve.server.build("models")`` (httptools, no access log).  Every answer is
   checked to be a 200 (wrk counts the others).
2. **The prediction log**: ``shelf serve --workers 1`` with and without ``--log-predictions``
   (every request recorded), ``wrk`` with 4 connections, one-row bodies, ``--rounds`` runs of
   each interleaved; p50 and p99 medians over the rounds, and the records written.

Goals (printed with OK / BELOW GOAL): with 16 connections, 2 workers reach ≥ 1.4 × one
worker's requests/s on one-row bodies and ≥ 1.6 × on 100-row bodies, and their p99 is no
worse than uvicorn's with 2 workers.  Exit status 0 whether or not they are met; a set-up
failure exits 1.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from _common import (BIN, BenchError, built_project, check, loadavg, loopback_env, nproc, positive, script,
                     show, tools_missing)

START_TIMEOUT = 90.0
CONNECTIONS = (1, 4, 16)
ONE_ROW_GOAL, BATCH_GOAL = 1.4, 1.6
# uvicorn --workers binds its socket with proto 0, and asyncio sets TCP_NODELAY only on sockets
# whose proto is IPPROTO_TCP: every keep-alive answer then waits ~40 ms for a delayed ACK (23
# req/s).  The peer sets it per connection, as a single uvicorn process gets it.
UVICORN_APP = '''\
import socket

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from modelshelf.serve.server import build

_made = HttpToolsProtocol.connection_made


def connection_made(self, transport):
    sock = transport.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    _made(self, transport)


HttpToolsProtocol.connection_made = connection_made
app = build("models", poll=0)
'''


def bodies(root: Path) -> dict[str, bytes]:
    """One row and 100 rows of the held-out set, as compact JSON."""
    card = json.loads((root / "models" / "card.json").read_text(encoding="utf-8"))
    names = [f["name"] for f in card["input_schema"]["features"]]
    with open(root / "data" / "prepared" / "test.csv", newline="", encoding="utf-8") as fh:
        held = [{n: float(rec[n]) for n in names} for rec in csv.DictReader(fh)]
    sep = {"separators": (",", ":")}
    return {"one-row": json.dumps({"rows": held[:1]}, **sep).encode(),
            "100-row": json.dumps({"rows": [held[i % len(held)] for i in range(100)]}, **sep).encode()}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_answering(port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    """Until GET /ready answers 200 (bounded by START_TIMEOUT)."""
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(f"the server exited {proc.returncode}:\n{log.read_text(errors='replace')[-3000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.sendall(b"GET /ready HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                if s.recv(64).startswith(b"HTTP/1.1 200"):
                    return
        except OSError:
            pass
        time.sleep(0.05)  # a bounded wait for start-up
    raise BenchError(f"no answer on port {port} in {START_TIMEOUT:g} s:\n{log.read_text(errors='replace')[-3000:]}")


@contextmanager
def server(kind: str, root: Path, env: dict[str, str], work: Path, *extra: str) -> Iterator[int]:
    """A running server (``shelf-1``, ``shelf-2`` or ``uvicorn-2``); yields its port."""
    log = work / f"{kind}-{time.monotonic_ns()}.log"
    if kind.startswith("shelf"):
        cmd = [str(BIN / "shelf"), "serve", "--model", "models", "--host", "127.0.0.1", "--port", "0",
               "--poll", "0", "--workers", kind.split("-")[1], *extra]
        port = 0
    else:
        (work / "uvicorn_app.py").write_text(UVICORN_APP, encoding="utf-8")
        port = free_port()
        cmd = [str(BIN / "uvicorn"), "uvicorn_app:app", "--app-dir", str(work), "--host", "127.0.0.1",
               "--port", str(port), "--workers", "2", "--http", "httptools", "--no-access-log",
               "--log-level", "warning"]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        if port == 0:
            deadline = time.monotonic() + START_TIMEOUT
            while not (m := re.search(r"http://127\.0\.0\.1:(\d+)", log.read_text(errors="replace"))):
                check(proc.poll() is None and time.monotonic() < deadline,
                      f"shelf serve printed no port:\n{log.read_text(errors='replace')[-3000:]}")
                time.sleep(0.05)  # a bounded wait for the first line
            port = int(m.group(1))
        wait_answering(port, proc, log)
        yield port
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=20)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=20)


WRK_THREADS = [1]  # set from --wrk-threads


def wrk(port: int, body: Path, connections: int, seconds: float, script: Path) -> dict[str, float]:
    """One wrk run: requests/s, p50 and p99 (ms), and the non-2xx answers and socket errors."""
    cmd = ["wrk", "-t", str(min(connections, WRK_THREADS[0])), "-c", str(connections), "-d", f"{seconds:g}s", "--latency",
           "-s", str(script), f"http://127.0.0.1:{port}/predict"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60,
                          env={**os.environ, "BODY_FILE": str(body)})
    out = done.stdout
    check(done.returncode == 0 and "Requests/sec" in out, f"wrk failed: {done.stderr} {out}")

    def latency(q: str) -> float:
        m = re.search(rf"^\s+{q}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        check(m is not None, f"no {q}% latency in wrk's output:\n{out}")
        assert m is not None
        return float(m.group(1)) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[m.group(2)]

    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    return {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),  # type: ignore[union-attr]
            "p50_ms": latency("50"), "p99_ms": latency("99"),
            "failed": (int(bad.group(1)) if bad else 0) + (sum(map(int, errors.groups())) if errors else 0)}


WRK_LUA = '''\
local f = assert(io.open(os.getenv("BODY_FILE"), "rb"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "application/json"
'''


def throughput(root: Path, env: dict[str, str], work: Path, files: dict[str, Path], a: argparse.Namespace
               ) -> dict[str, dict[str, dict[int, dict[str, float]]]]:
    """server → body → connections → the medians of wrk's figures over ``--rounds`` rounds, the
    servers in turn within each round (the order reversed every other round), so that a slow
    spell of the machine meets every server alike."""
    kinds = ("shelf-1", "shelf-2", "uvicorn-2")
    runs: dict[str, dict[str, dict[int, list[dict[str, float]]]]] = {}
    for r in range(a.rounds):
        for kind in kinds if r % 2 == 0 else kinds[::-1]:
            print(f"round {r + 1}/{a.rounds}: measuring {kind} ...", file=sys.stderr)
            with server(kind, root, env, work) as port:
                for body, path in files.items():
                    wrk(port, path, 4, 1.0, work / "post.lua")  # warm-up: caches, branch predictors, workers
                    for c in CONNECTIONS:
                        got = wrk(port, path, c, a.seconds, work / "post.lua")
                        runs.setdefault(kind, {}).setdefault(body, {}).setdefault(c, []).append(got)
    return {kind: {body: {c: {"rps": statistics.median(x["rps"] for x in rs),
                              "p50_ms": statistics.median(x["p50_ms"] for x in rs),
                              "p99_ms": statistics.median(x["p99_ms"] for x in rs),
                              "failed": sum(x["failed"] for x in rs)}
                          for c, rs in per_c.items()}
                   for body, per_c in per_body.items()}
            for kind, per_body in runs.items()}


def prediction_log(root: Path, env: dict[str, str], work: Path, one: Path, a: argparse.Namespace
                   ) -> dict[str, Any]:
    """p50/p99 with 4 connections, log off and on, interleaved rounds."""
    runs: dict[str, list[dict[str, float]]] = {"off": [], "on": []}
    written = 0
    for r in range(a.rounds):
        for mode in ("off", "on") if r % 2 == 0 else ("on", "off"):
            logdir = work / f"predlog-{r}"
            extra = ("--log-predictions", str(logdir)) if mode == "on" else ()
            with server("shelf-1", root, env, work, *extra) as port:
                wrk(port, one, 4, 1.0, work / "post.lua")
                runs[mode].append(wrk(port, one, 4, a.seconds, work / "post.lua"))
            if mode == "on":
                written += sum(1 for f in logdir.glob("*.jsonl") for _ in f.open("rb"))
                shutil.rmtree(logdir)
    med = {mode: {k: statistics.median(x[k] for x in rs) for k in ("rps", "p50_ms", "p99_ms")}
           for mode, rs in runs.items()}
    requests = sum(x["rps"] for x in runs["on"]) * (a.seconds + 1)
    return {**med, "records_written": written, "about_requests": round(requests),
            "failed": sum(x["failed"] for rs in runs.values() for x in rs)}


def main(argv: Sequence[str] | None = None) -> int:
    summary, details = __doc__.split("\n\n", 1)
    p = argparse.ArgumentParser(description=summary, epilog=details, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--project", type=Path, help="a built project (default: scaffold and build one)")
    p.add_argument("--seconds", type=float, default=5.0, help="length of each wrk run (default 5)")
    p.add_argument("--rounds", type=positive, default=3, help="rounds of every server and of each prediction-log mode; medians "
                   "are reported (default 3)")
    p.add_argument("--wrk-threads", type=positive, default=1, help="wrk's threads (default 1; see above)")
    p.add_argument("--skip-throughput", action="store_true", help="only the prediction log")
    p.add_argument("--json", action="store_true", help="print the results as JSON too")
    a = p.parse_args(argv)
    WRK_THREADS[0] = a.wrk_threads
    if tools_missing(["shelf", "dvc", "uvicorn"], "serve_workers.py"):
        return 2
    if shutil.which("wrk") is None:
        print("benchmark: wrk not found (apt-get install wrk)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="shelf-workers-") as tmp:
        work = Path(tmp)
        env = loopback_env(work / "home")
        root = built_project(a.project, work, env)
        (work / "post.lua").write_text(WRK_LUA, encoding="utf-8")
        files = {}
        for name, data in bodies(root).items():
            files[name] = work / f"{name}.json"
            files[name].write_bytes(data)
        res: dict[str, Any] = {"cpus": nproc(), "loadavg_before": loadavg(), "wrk_threads": a.wrk_threads}
        if not a.skip_throughput:
            res["throughput"] = throughput(root, env, work, files, a)
        res["prediction_log"] = prediction_log(root, env, work, files["one-row"], a)
    return show(text(res), res, a.json)


def text(res: dict[str, Any]) -> str:
    lines = [f"{res['cpus']} CPUs; load average before {res['loadavg_before']}; wrk with {res['wrk_threads']} "
             f"thread{'s' if res['wrk_threads'] > 1 else ''}"]
    if "throughput" in res:
        t = res["throughput"]
        lines.append(f"{'':12}{'body':9}" + "".join(f"{f'{c} conn req/s':>15}{'p99 ms':>8}" for c in CONNECTIONS)
                     + f"{'failed':>8}")
        for kind, per_body in t.items():
            for body, per_c in per_body.items():
                lines.append(f"{kind:12}{body:9}" + "".join(f"{per_c[c]['rps']:15.0f}{per_c[c]['p99_ms']:8.2f}"
                                                            for c in CONNECTIONS)
                             + f"{sum(r['failed'] for r in per_c.values()):8d}")
        for body, goal in (("one-row", ONE_ROW_GOAL), ("100-row", BATCH_GOAL)):
            two, one, uv = (t[k][body][16] for k in ("shelf-2", "shelf-1", "uvicorn-2"))
            ratio = two["rps"] / one["rps"]
            lines.append(f"{body}, 16 connections: 2 workers / 1 = {ratio:.2f}x (goal >= {goal}: "
                         f"{'OK' if ratio >= goal else 'BELOW GOAL'}); / uvicorn 2 workers = "
                         f"{two['rps'] / uv['rps']:.2f}x; p99 {two['p99_ms']:.2f} ms vs uvicorn's "
                         f"{uv['p99_ms']:.2f} ms ({'OK' if two['p99_ms'] <= uv['p99_ms'] else 'ABOVE GOAL'})")
    pl = res["prediction_log"]
    lines.append(f"--log-predictions, one-row, 4 connections (medians): p50 {pl['off']['p50_ms']:.3f} → "
                 f"{pl['on']['p50_ms']:.3f} ms, p99 {pl['off']['p99_ms']:.3f} → {pl['on']['p99_ms']:.3f} ms, "
                 f"req/s {pl['off']['rps']:.0f} → {pl['on']['rps']:.0f}; {pl['records_written']} records written")
    return "\n".join(lines)


if __name__ == "__main__":
    script(main)
