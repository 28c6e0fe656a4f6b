"""Benchmark: one-row /predict latency on one connection while other clients send large batches.

    .venv/bin/python benchmarks/serve_batches.py --project /path/to/built/project
    .venv/bin/python benchmarks/serve_batches.py            # scaffolds and builds one first (~1 min)

A real ``shelf serve --model models --port 0 --poll 0`` on 127.0.0.1 (the port it prints), and
``benchmarks/_loadgen.py`` client processes, each one keep-alive connection:

1. **alone**: one client sends one-row bodies back to back for ``--seconds`` (after
   ``--warmup`` requests), at most ``--requests`` of them;
2. **beside batches**: the same, while ``--batch-clients`` (2) other clients each send
   ``--rows``-row bodies (9,000 rows of the held-out set, repeated) back to back.

Reported: the one-row p50, p99 and maximum in each phase and the ratio of the p99s, and the
batches answered (each checked 200) per second.  Every loop is bounded in count and in time;
the server and clients are stopped on the way out.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from _common import (BIN, BenchError, built_project, check, loadavg, loopback_env, positive, script, show,
                     tools_missing)

HERE = Path(__file__).resolve().parent
START_TIMEOUT = 90.0  # seconds for the server to print its port


def pct(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def bodies(root: Path, rows: int) -> tuple[bytes, bytes]:
    """One row, and ``rows`` rows, of the held-out set (compact JSON, the card's features)."""
    card = json.loads((root / "models" / "card.json").read_text(encoding="utf-8"))
    names = [f["name"] for f in card["input_schema"]["features"]]
    check(all(f["kind"] == "numeric" for f in card["input_schema"]["features"]), "expects numeric features")
    with open(root / "data" / "prepared" / "test.csv", newline="", encoding="utf-8") as fh:
        held = [{n: float(rec[n]) for n in names} for rec in csv.DictReader(fh)]
    compact = {"separators": (",", ":")}
    return (json.dumps({"rows": held[:1]}, **compact).encode(),
            json.dumps({"rows": [held[i % len(held)] for i in range(rows)]}, **compact).encode())


def start_server(root: Path, env: dict[str, str], log: Path) -> tuple[subprocess.Popen[bytes], int]:
    """``shelf serve`` on 127.0.0.1, port 0; returns once it has printed its port."""
    with open(log, "wb") as out:  # the server has its own descriptor
        proc = subprocess.Popen([str(BIN / "shelf"), "serve", "--model", "models", "--host", "127.0.0.1",
                                 "--port", "0", "--poll", "0"], cwd=root, env=env, stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        m = re.search(r"http://127\.0\.0\.1:(\d+)", log.read_text(errors="replace"))
        if m:
            return proc, int(m.group(1))
        if proc.poll() is not None:
            raise BenchError(f"shelf serve exited {proc.returncode}:\n{log.read_text(errors='replace')}")
        time.sleep(0.05)  # a bounded wait for the first line
    stop(proc)
    raise BenchError(f"shelf serve printed no port in {START_TIMEOUT:g} s")


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)


def client(port: int, body: Path, count: int, warmup: int, start_at: float, seconds: float,
           env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, str(HERE / "_loadgen.py"), "--port", str(port), "--path", "/predict",
                             "--body-file", str(body), "--count", str(count), "--warmup", str(warmup),
                             "--start-at", f"{start_at:.3f}", "--max-seconds", f"{seconds:g}"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def result(proc: subprocess.Popen[str], timeout: float) -> dict[str, Any]:
    out, err = proc.communicate(timeout=timeout)
    if proc.returncode not in (0, -signal.SIGUSR1) or not out.strip():  # the stop can arrive as it exits
        raise BenchError(f"a client exited {proc.returncode}: {err[-2000:]} {out[-500:]}")
    return json.loads(out)


def phase(port: int, one: Path, batch: Path, args: argparse.Namespace, env: dict[str, str],
          batch_clients: int) -> dict[str, Any]:
    """One-row latencies, with ``batch_clients`` batch senders beside (0: alone)."""
    start_at = time.time() + 3.0 + 0.5 * batch_clients  # time for the clients to connect and warm up
    senders = [client(port, batch, 10**6, 1, start_at, args.seconds + 5, env) for _ in range(batch_clients)]
    try:
        measured = result(client(port, one, args.requests, args.warmup, start_at, args.seconds, env),
                          timeout=args.seconds + 90)
        for s in senders:
            if s.poll() is None:
                s.send_signal(signal.SIGUSR1)  # end after the batch in flight
        batches = [result(s, timeout=120) for s in senders]
    finally:
        for s in senders:
            if s.poll() is None:
                s.kill()
                s.wait(timeout=15)
    lat = measured["latencies"]
    check(measured["failed"] == 0 and lat, f"one-row requests failed: {measured['errors']}")
    check(all(b["failed"] == 0 for b in batches), f"batches failed: {[b['errors'] for b in batches]}")
    window = (measured["start"], measured["end"])
    done = [o for b in batches for o, x in zip(b["offsets"], b["latencies"], strict=True)
            if b["start"] + o + x <= window[1]]  # batches answered within the one-row window
    return {"requests": len(lat), "p50_ms": pct(lat, 0.5) * 1e3, "p99_ms": pct(lat, 0.99) * 1e3,
            "max_ms": max(lat) * 1e3, "seconds": measured["elapsed"],
            "batches": len(done), "batches_per_s": len(done) / measured["elapsed"],
            "batch_p50_ms": pct([x for b in batches for x in b["latencies"]], 0.5) * 1e3 if batches else None}


def main(argv: list[str] | None = None) -> int:
    summary, details = __doc__.split("\n\n", 1)
    p = argparse.ArgumentParser(description=summary, epilog=details,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--project", type=Path, help="a built project (models/, data/prepared/test.csv); "
                                                "default: scaffold and build one in a temporary directory")
    p.add_argument("--rows", type=positive, default=9000, help="rows per batch (default 9000)")
    p.add_argument("--batch-clients", type=positive, default=2, help="batch senders (default 2)")
    p.add_argument("--seconds", type=float, default=10.0, help="length of each phase (default 10)")
    p.add_argument("--requests", type=positive, default=100_000,
                   help="most one-row requests in a phase (default 100000)")
    p.add_argument("--warmup", type=positive, default=300, help="one-row requests before each phase (default 300)")
    p.add_argument("--json", action="store_true", help="print the results as JSON too")
    args = p.parse_args(argv)
    if tools_missing(["shelf", "dvc"], "serve_batches.py"):
        return 2
    with tempfile.TemporaryDirectory(prefix="shelf-batches-") as tmp:
        work = Path(tmp)
        env = loopback_env(work / "home")
        root = built_project(args.project, work, env)
        one, batch = work / "one.json", work / "batch.json"
        one_body, batch_body = bodies(root, args.rows)
        one.write_bytes(one_body)
        batch.write_bytes(batch_body)
        proc, port = start_server(root, env, work / "serve.log")
        try:
            alone = phase(port, one, batch, args, env, 0)
            beside = phase(port, one, batch, args, env, args.batch_clients)
        finally:
            stop(proc)
    res = {"alone": alone, "beside_batches": beside, "rows": args.rows, "batch_bytes": len(batch_body),
           "batch_clients": args.batch_clients, "p99_ratio": beside["p99_ms"] / alone["p99_ms"],
           "loadavg": loadavg(), "cpus": os.cpu_count()}
    text = "\n".join([
        f"one-row /predict, {args.batch_clients} clients sending {args.rows}-row batches "
        f"({len(batch_body) / 1e6:.1f} MB) beside; load average {res['loadavg']}",
        f"{'':16}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}{'requests':>10}{'batches/s':>11}",
        *(f"{label:16}{r['p50_ms']:9.2f}{r['p99_ms']:9.2f}{r['max_ms']:9.2f}{r['requests']:10d}"
          f"{r['batches_per_s']:11.1f}" for label, r in (("alone", alone), ("beside batches", beside))),
        f"p99 beside batches / alone: {res['p99_ratio']:.1f}x; a batch took {beside['batch_p50_ms']:.0f} ms (p50)"])
    return show(text, res, args.json)


if __name__ == "__main__":
    script(main)
