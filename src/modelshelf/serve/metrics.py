"""Prometheus metrics in the text exposition format, with no client library."""

from __future__ import annotations

import threading
from bisect import bisect_left
from collections import Counter
from collections.abc import Callable
from typing import Any

# Counted by the server's loop alone (no lock), and what /metrics says of each.
CONNECTION_COUNTERS = {
    "connections_opened": "Client connections accepted.",
    "connection_errors": "Connections closed by an error met while handling them (logged with a traceback).",
    "connections_evicted": "Idle, lingering or slow connections closed to make room at --max-connections.",
    "connections_refused": "Connections answered 503 at --max-connections, every open one busy.",
}
BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)


class Metrics:
    """Counts of requests by path and status, and a latency histogram of /predict."""

    # A plain class, not a dataclass: creating one costs ~1 ms of the server's timed start-up.
    def __init__(self) -> None:
        self.requests: Counter[tuple[str, int]] = Counter()
        self.rows = 0
        self.buckets = [0] * (len(BUCKETS) + 1)
        self.latency_sum = 0.0
        self.latency_count = 0
        self._lock = threading.Lock()  # the server's loop and its worker threads both count
        # counted by the server's loop alone (no lock)
        self.connections_opened = 0
        self.connection_errors = 0  # connections closed by a fault met while handling them
        self.connections_evicted = 0  # closed to make room for a new one (--max-connections)
        self.connections_refused = 0  # answered 503: full, every connection busy
        self.open_connections: Callable[[], int] = lambda: 0
        # beside a canary: answers by (role, version, status), and each role's latency histogram
        self.roles: Counter[tuple[str, str, int]] = Counter()
        self.role_latency: dict[str, dict[str, Any]] = {}

    def observe(self, path: str, status: int, seconds: float, rows: int = 0) -> None:
        with self._lock:
            self.requests[(path, status)] += 1
            if path == "/predict":
                self.rows += rows
                self.latency_sum += seconds
                self.latency_count += 1
                self.buckets[bisect_left(BUCKETS, seconds)] += 1  # the first bound >= seconds, or +Inf

    def observe_role(self, role: str, version: str, status: int, seconds: float) -> None:
        """An answer beside a canary: by the stable model or the candidate (``role``), at ``version``."""
        with self._lock:
            self.roles[(role, version, status)] += 1
            h = self.role_latency.get(role)
            if h is None:
                h = self.role_latency[role] = {"buckets": [0] * (len(BUCKETS) + 1), "sum": 0.0, "count": 0}
            h["buckets"][bisect_left(BUCKETS, seconds)] += 1
            h["sum"] += seconds
            h["count"] += 1

    def snapshot(self) -> dict[str, Any]:
        """Every counter as plain data (JSON-ready), for summing over workers with :func:`add`."""
        with self._lock:
            counts: dict[str, Any] = {"requests": [[p, s, n] for (p, s), n in sorted(self.requests.items())],
                                      "rows": self.rows, "buckets": list(self.buckets),
                                      "latency_sum": self.latency_sum, "latency_count": self.latency_count,
                                      "roles": [[r, v, st, n] for (r, v, st), n in sorted(self.roles.items())],
                                      "role_latency": {r: {"buckets": list(h["buckets"]), "sum": h["sum"],
                                                           "count": h["count"]}
                                                       for r, h in self.role_latency.items()}}
        for key in CONNECTION_COUNTERS:
            counts[key] = getattr(self, key)
        return counts

    def render(self, name: str, version: str, fmt: str, swaps: int, failures: int, healthy: bool, *,
               counts: dict[str, Any] | None = None, connections: int | None = None) -> str:
        """The exposition text: this process's counters, or ``counts`` (a :meth:`snapshot`, or
        several summed) and ``connections`` open now, when given."""
        c = self.snapshot() if counts is None else counts
        requests = {(p, s): n for p, s, n in c["requests"]}
        rows = c["rows"]
        if connections is None:
            connections = self.open_connections()
        out = ["# HELP modelshelf_requests_total HTTP requests by path and status.",
               "# TYPE modelshelf_requests_total counter"]
        for (path, status), n in sorted(requests.items()):
            out.append(f'modelshelf_requests_total{{path="{path}",status="{status}"}} {n}')
        errors = sum(n for (_, status), n in requests.items() if status >= 400)
        out += ["# HELP modelshelf_errors_total Responses with a 4xx or 5xx status.",
                "# TYPE modelshelf_errors_total counter", f"modelshelf_errors_total {errors}",
                "# HELP modelshelf_prediction_rows_total Rows predicted.",
                "# TYPE modelshelf_prediction_rows_total counter", f"modelshelf_prediction_rows_total {rows}",
                "# HELP modelshelf_predict_seconds Latency of /predict, in seconds.",
                "# TYPE modelshelf_predict_seconds histogram",
                *_histogram("modelshelf_predict_seconds", "", c["buckets"], c["latency_sum"], c["latency_count"]),
                "# HELP modelshelf_model_info The model version being served.",
                "# TYPE modelshelf_model_info gauge",
                f'modelshelf_model_info{{name="{name}",version="{version}",format="{fmt}"}} 1',
                "# HELP modelshelf_model_swaps_total Hot swaps to a new version.",
                "# TYPE modelshelf_model_swaps_total counter", f"modelshelf_model_swaps_total {swaps}",
                "# HELP modelshelf_model_load_failures_total Versions refused (failed to fetch, verify or load).",
                "# TYPE modelshelf_model_load_failures_total counter",
                f"modelshelf_model_load_failures_total {failures}",
                "# HELP modelshelf_healthy 1 when the last load attempt succeeded.",
                "# TYPE modelshelf_healthy gauge", f"modelshelf_healthy {int(healthy)}",
                "# HELP modelshelf_connections Client connections open now.",
                "# TYPE modelshelf_connections gauge", f"modelshelf_connections {connections}"]
        for name, text in CONNECTION_COUNTERS.items():
            out += [f"# HELP modelshelf_{name}_total {text}", f"# TYPE modelshelf_{name}_total counter",
                    f"modelshelf_{name}_total {c[name]}"]
        if c["roles"]:
            out += ["# HELP modelshelf_canary_answers_total Answers beside a canary (/predict and v2 inference), "
                    "by the model that answered: role stable or canary, its version, the status.",
                    "# TYPE modelshelf_canary_answers_total counter"]
            out += [f'modelshelf_canary_answers_total{{role="{r}",version="{v}",status="{st}"}} {n}'
                    for r, v, st, n in c["roles"]]
            out += ["# HELP modelshelf_canary_seconds Latency of the answers beside a canary, by role, in seconds.",
                    "# TYPE modelshelf_canary_seconds histogram"]
            for role, h in sorted(c["role_latency"].items()):
                out += _histogram("modelshelf_canary_seconds", f'role="{role}"', h["buckets"], h["sum"], h["count"])
        return "\n".join(out) + "\n"


def _histogram(name: str, labels: str, buckets: list[int], total: float, count: int) -> list[str]:
    """A histogram's sample lines: cumulative buckets, then ``_sum`` and ``_count``."""
    out, cumulative = [], 0
    for bound, n in zip((*BUCKETS, float("inf")), buckets, strict=True):
        cumulative += n
        le = "+Inf" if bound == float("inf") else repr(bound)
        out.append(f'{name}_bucket{{{labels + "," if labels else ""}le="{le}"}} {cumulative}')
    braces = f"{{{labels}}}" if labels else ""
    return [*out, f"{name}_sum{braces} {total}", f"{name}_count{braces} {count}"]


def add(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Two :meth:`Metrics.snapshot` results summed (either may be empty: ``{}``)."""
    if not a or not b:
        return dict(a or b)
    requests: Counter[tuple[str, int]] = Counter()
    for p, s, n in (*a["requests"], *b["requests"]):
        requests[(p, s)] += n
    out: dict[str, Any] = {"requests": [[p, s, n] for (p, s), n in sorted(requests.items())],
                           "buckets": [x + y for x, y in zip(a["buckets"], b["buckets"], strict=True)]}
    for key in ("rows", "latency_sum", "latency_count", *CONNECTION_COUNTERS):
        out[key] = a[key] + b[key]
    roles: Counter[tuple[str, str, int]] = Counter()
    for r, v, st, n in (*a["roles"], *b["roles"]):
        roles[(r, v, st)] += n
    out["roles"] = [[r, v, st, n] for (r, v, st), n in sorted(roles.items())]
    latency: dict[str, dict[str, Any]] = {}
    for h in (a["role_latency"], b["role_latency"]):
        for role, x in h.items():
            y = latency.get(role)
            latency[role] = dict(x) if y is None else {
                "buckets": [i + j for i, j in zip(x["buckets"], y["buckets"], strict=True)],
                "sum": x["sum"] + y["sum"], "count": x["count"] + y["count"]}
    out["role_latency"] = latency
    return out
