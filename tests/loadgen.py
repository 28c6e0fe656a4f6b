"""A small, bounded HTTP load generator for ``shelf serve`` (run as a separate process).

It POSTs the given bodies to ``/predict`` on 127.0.0.1 over keep-alive connections (one
thread each, ``http.client``) and writes a JSON summary: status counts, transport errors,
and per connection the versions seen in order (run-length encoded).  It always stops by
itself: after ``--max-requests`` requests in all, after ``--max-seconds``, or once every
connection has seen ``--tail`` responses from ``--stop-on-version``.

Usage: python loadgen.py --port P --body FILE [--body FILE] --out OUT.json
       [--connections 2] [--max-requests 20000] [--max-seconds 60]
       [--started FILE --warmup 20] [--stop-on-version 1.1.0 --tail 30]
"""

from __future__ import annotations

import argparse
import http.client
import json
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any


class Shared:
    def __init__(self, max_requests: int, deadline: float) -> None:
        self.lock = threading.Lock()
        self.sent = 0
        self.max_requests = max_requests
        self.deadline = deadline
        self.statuses: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.bad_bodies: list[str] = []

    def take(self) -> bool:
        """Reserve one request; False when the budget of requests or time is spent."""
        with self.lock:
            if self.sent >= self.max_requests or time.monotonic() >= self.deadline:
                return False
            self.sent += 1
            return True


def worker(port: int, bodies: list[tuple[bytes, int]], shared: Shared, stop_version: str | None,
           tail: int, runs: list[list[Any]], warm: threading.Event, warmup: int) -> None:
    conn: http.client.HTTPConnection | None = None
    seen_new = ok = 0
    i = 0
    while shared.take():
        body, n_rows = bodies[i % len(bodies)]
        i += 1
        try:
            if conn is None:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            conn.request("POST", "/predict", body=body, headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            data = resp.read()
            status = resp.status
        except Exception as exc:  # noqa: BLE001 - every transport failure is counted, then we reconnect
            with shared.lock:
                shared.errors[type(exc).__name__] += 1
            if conn is not None:
                conn.close()
            conn = None
            continue
        version = None
        if status == 200:
            try:
                doc = json.loads(data)
                version = doc["version"]
                if not isinstance(version, str) or len(doc["predictions"]) != n_rows:
                    raise ValueError("wrong shape")
            except (ValueError, KeyError, TypeError):
                with shared.lock:
                    if len(shared.bad_bodies) < 5:
                        shared.bad_bodies.append(data[:200].decode("utf-8", "replace"))
                version = None
        with shared.lock:
            shared.statuses[str(status)] += 1
        if status == 200:
            ok += 1
            if ok >= warmup:
                warm.set()
        label = version if version is not None else f"status {status}"
        if runs and runs[-1][0] == label:
            runs[-1][1] += 1
        else:
            runs.append([label, 1])
        if stop_version is not None and version == stop_version:
            seen_new += 1
            if seen_new >= tail:
                break
    if conn is not None:
        conn.close()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--body", action="append", required=True, type=Path,
                    help="a JSON request body; repeat to cycle through several")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--connections", type=int, default=2)
    ap.add_argument("--max-requests", type=int, default=20_000)
    ap.add_argument("--max-seconds", type=float, default=60.0)
    ap.add_argument("--started", type=Path, help="written once every connection has had --warmup 200s")
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--stop-on-version")
    ap.add_argument("--tail", type=int, default=30)
    a = ap.parse_args()

    bodies = []
    for path in a.body:
        raw = path.read_bytes()
        doc = json.loads(raw)
        n = len(doc["rows"]) if "rows" in doc else len(next(iter(doc["columns"].values())))
        bodies.append((raw, n))
    start = time.monotonic()
    shared = Shared(a.max_requests, start + a.max_seconds)
    runs: list[list[list[Any]]] = [[] for _ in range(a.connections)]
    warm = [threading.Event() for _ in range(a.connections)]
    threads = [threading.Thread(target=worker, args=(a.port, bodies[k:] + bodies[:k], shared, a.stop_on_version,
                                                     a.tail, runs[k], warm[k], a.warmup), daemon=True)
               for k in range(a.connections)]
    for t in threads:
        t.start()
    if a.started is not None:
        end = time.monotonic() + a.max_seconds
        if all(w.wait(timeout=max(0.0, end - time.monotonic())) for w in warm):
            a.started.write_text("started\n")
    for t in threads:
        t.join(timeout=a.max_seconds + 60)
    versions: Counter[str] = Counter()
    for conn_runs in runs:
        for label, n in conn_runs:
            versions[label] += n
    summary = {
        "requests": shared.sent,
        "seconds": round(time.monotonic() - start, 3),
        "statuses": dict(shared.statuses),
        "errors": dict(shared.errors),
        "bad_bodies": shared.bad_bodies,
        "versions": dict(versions),
        "runs": runs,
        "stopped_on_version": all(r and r[-1][0] == a.stop_on_version and r[-1][1] >= a.tail for r in runs)
        if a.stop_on_version else False,
        "alive_threads": sum(t.is_alive() for t in threads),
    }
    tmp = a.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(summary, indent=1))
    tmp.replace(a.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
