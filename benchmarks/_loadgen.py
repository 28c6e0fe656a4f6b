"""One keep-alive HTTP client for benchmarks/serve.py (standard library only).

Run as a process by the benchmark, once per client::

    python benchmarks/_loadgen.py --port 8080 --path /predict --body-file row.json \\
        --count 2000 --warmup 200 --start-at 1700000000.5 --max-seconds 60

It connects to 127.0.0.1 only (the host is fixed), sends ``--warmup`` requests and
keeps warming until the wall-clock ``--start-at`` (so several clients begin
together), then sends up to ``--count`` measured requests, stopping early at
``--start-at + --max-seconds``.  Every loop is bounded in count and in time.  A
failed request (an exception or a status other than ``--expect``, 200) is counted, the
connection is reopened, and the run continues.  SIGUSR1 ends the measured loop
early (after the request in flight), as if ``--count`` had been reached.

Prints one JSON object: latencies (seconds) and start offsets from the measured
start, the window actually measured (epoch seconds), counts of successes and
failures, and with ``--track`` how many answers each model gave (a tag made of the
answer's ``version`` and first probability, which tells two models apart even when
both carry the same version).
"""

from __future__ import annotations

import argparse
import http.client
import json
import signal
import sys
import time
from typing import Any

HOST = "127.0.0.1"
MAX_WARMUP_SECONDS = 30.0
_stop = False


def _on_stop(_signum: int, _frame: object) -> None:
    global _stop
    _stop = True


def tag_of(body: bytes) -> str:
    """``version|first probability`` of a /predict answer (``?`` when it has neither)."""
    try:
        data = json.loads(body)
    except ValueError:
        return "?"
    if not isinstance(data, dict):
        return "?"
    probs = data.get("probabilities")
    first: Any = probs[0][0] if probs and probs[0] else (data.get("predictions") or [None])[0]
    value = f"{first:.6f}" if isinstance(first, float) else str(first)
    return f"{data.get('version', '?')}|{value}"


class Client:
    def __init__(self, port: int, method: str, path: str, body: bytes | None,
                 headers: dict[str, str], timeout: float) -> None:
        self.port, self.method, self.path, self.body = port, method, path, body
        self.headers = headers
        self.timeout = timeout
        self.conn: http.client.HTTPConnection | None = None

    def request(self) -> tuple[int, bytes]:
        """``(status, body)``; status 0 and the error's name as body when the request failed."""
        try:
            if self.conn is None:
                self.conn = http.client.HTTPConnection(HOST, self.port, timeout=self.timeout)
            self.conn.request(self.method, self.path, body=self.body, headers=self.headers)
            resp = self.conn.getresponse()
            data = resp.read()
            if resp.will_close:
                self.close()
            return resp.status, data
        except (OSError, http.client.HTTPException) as exc:
            self.close()
            return 0, type(exc).__name__.encode()

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def run(port: int, method: str, path: str, body: bytes | None, headers: dict[str, str], *,
        count: int, warmup: int, start_at: float, max_seconds: float, track: bool,
        expect: int = 200, timeout: float = 10.0) -> dict[str, Any]:
    client = Client(port, method, path, body, headers, timeout)
    warm_deadline = time.time() + MAX_WARMUP_SECONDS
    warm_failed = 0
    done = 0
    while (done < warmup or time.time() < start_at) and time.time() < warm_deadline:
        status, _ = client.request()
        warm_failed += status != expect
        done += 1
    latencies: list[float] = []
    offsets: list[float] = []
    failed = 0
    errors: dict[str, int] = {}
    tags: dict[str, int] = {}
    t0_wall = time.time()
    t0 = time.perf_counter()
    stop = t0 + max_seconds
    for _ in range(count):
        s = time.perf_counter()
        if s >= stop or _stop:
            break
        status, data = client.request()
        e = time.perf_counter()
        latencies.append(e - s)
        offsets.append(s - t0)
        if status != expect:
            failed += 1
            key = str(status) if status else data.decode("latin-1", "replace")
            errors[key] = errors.get(key, 0) + 1
        elif track:
            tag = tag_of(data)
            tags[tag] = tags.get(tag, 0) + 1
    elapsed = time.perf_counter() - t0
    client.close()
    return {"requests": len(latencies), "failed": failed, "errors": errors, "warmup_requests": done,
            "warmup_failed": warm_failed, "start": t0_wall, "end": t0_wall + elapsed, "elapsed": elapsed,
            "latencies": latencies, "offsets": offsets, "tags": tags}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="one keep-alive HTTP client on 127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--method", default="POST")
    p.add_argument("--path", required=True)
    p.add_argument("--body-file")
    p.add_argument("--header", action="append", default=[], help="Name: value")
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--start-at", type=float, default=0.0, help="epoch seconds; 0: right after warm-up")
    p.add_argument("--max-seconds", type=float, default=60.0)
    p.add_argument("--expect", type=int, default=200, help="the status that counts as success")
    p.add_argument("--track", action="store_true", help="count answers per version|first-probability")
    a = p.parse_args(argv)
    signal.signal(signal.SIGUSR1, _on_stop)  # end the measured loop early (after the current request)
    body = open(a.body_file, "rb").read() if a.body_file else None
    headers = dict(h.split(":", 1) for h in a.header)
    headers = {k.strip(): v.strip() for k, v in headers.items()}
    if body is not None:
        headers.setdefault("Content-Type", "application/json")
    out = run(a.port, a.method, a.path, body, headers, count=a.count, warmup=a.warmup,
              start_at=a.start_at, max_seconds=a.max_seconds, track=a.track, expect=a.expect)
    json.dump(out, sys.stdout)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
