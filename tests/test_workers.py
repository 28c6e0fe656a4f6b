"""``shelf serve --workers N``: one port, N supervised processes, one version in all of them.

Real ``shelf serve`` subprocesses on 127.0.0.1 over the templates of test_serve.py; workers are
found through ``/health`` (each worker answers with its own pid and the supervisor's table).
Nothing sleeps for ordering: every wait polls with a deadline."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from modelshelf.cli import build_parser
from modelshelf.serve.app import App
from modelshelf.serve.canary import Split
from modelshelf.serve.holder import Holder
from modelshelf.serve.predlog import PREFIX, SUFFIX, read
from modelshelf.serve.server import build
from modelshelf.serve.workers import Tallies, WorkerApp

from conftest import Project
from test_serve import (  # noqa: F401 - fixtures
    TOKEN,
    Server,
    corrupt,
    held_out,
    one,
    parse_metrics,
    module_project,
    rows_body,
    serve,
    template_v1,
    template_v11,
    two_releases,
    wait_for,
)

slow = pytest.mark.slow
RESTART_DEADLINE = 60.0  # seconds for a killed worker's replacement to serve (a loaded 2-core box)


# --- helpers ------------------------------------------------------------------------------------


def health(s: Server) -> dict[str, Any] | None:
    """One /health on a fresh connection (so the kernel picks a worker); None if it failed."""
    try:
        r = s.get("/health", timeout=10)
    except OSError:
        return None  # e.g. accepted by a worker that was just killed
    return r.json() if r.status == 200 else None


def workers_on(s: Server, n: int, version: str, deadline: float = RESTART_DEADLINE) -> dict[int, dict[str, Any]]:
    """Wait until the table lists ``n`` workers all on ``version`` and each of them answered
    /health itself saying so; returns each worker's own /health by pid."""
    seen: dict[int, dict[str, Any]] = {}

    def check() -> dict[int, dict[str, Any]] | None:
        doc = health(s)
        if doc is None:
            return None
        table = doc["workers"]
        if len(table) != n or {w["version"] for w in table} != {version} or doc["version"] != version:
            seen.clear()  # the table changed: ask every worker again
            return None
        pids = {w["pid"] for w in table}
        assert doc["pid"] in pids, doc
        seen[doc["pid"]] = doc
        for pid in list(seen):
            if pid not in pids:
                del seen[pid]
        return dict(seen) if set(seen) == pids else None

    return wait_for(f"{n} workers all on v{version}", check, deadline=deadline, every=0.05)


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie does not)."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            return not any(line.startswith("State:") and "Z" in line.split()[1] for line in fh)
    except FileNotFoundError:
        return False


class Load:
    """``clients`` threads POSTing /predict on keep-alive connections until stopped or bounded
    (``max_requests`` in all, ``max_seconds``); a failed request is counted and reconnects.
    Each connection asks /health first: ``on[i]`` is the pid of the worker serving client i's
    connection, and ``failed_on`` the worker of each failed request's connection."""

    def __init__(self, port: int, body: bytes, clients: int = 4, max_requests: int = 3000,
                 max_seconds: float = 20.0) -> None:
        self.port, self.body = port, body
        self.lock = threading.Lock()
        self.ok = self.failed = self.sent = 0
        self.failures_per_client = [0] * clients
        self.on: list[int | None] = [None] * clients
        self.failed_on: list[int | None] = []
        self.bad: list[str] = []
        self.max_requests = max_requests
        self.deadline = time.monotonic() + max_seconds
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._client, args=(i,), daemon=True) for i in range(clients)]

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=60)

    def done(self) -> int:
        with self.lock:
            return self.ok

    def _take(self) -> bool:
        with self.lock:
            if self.stop.is_set() or self.sent >= self.max_requests or time.monotonic() > self.deadline:
                return False
            self.sent += 1
            return True

    def _client(self, me: int) -> None:
        conn: http.client.HTTPConnection | None = None
        while self._take():
            try:
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
                    conn.request("GET", "/health")
                    pid = json.loads(conn.getresponse().read())["pid"]
                    with self.lock:
                        self.on[me] = pid
                conn.request("POST", "/predict", body=self.body, headers={"Content-Type": "application/json"})
                resp = conn.getresponse()
                data = resp.read()
                with self.lock:
                    if resp.status == 200:
                        self.ok += 1
                    else:
                        self.failed += 1
                        self.failures_per_client[me] += 1
                        self.failed_on.append(self.on[me])
                        self.bad.append(f"{resp.status} {data[:200]!r}")
            except (OSError, http.client.HTTPException, ValueError) as exc:
                with self.lock:
                    self.failed += 1
                    self.failures_per_client[me] += 1
                    self.failed_on.append(self.on[me])
                    self.on[me] = None
                    self.bad.append(f"{type(exc).__name__}: {exc}")
                if conn is not None:
                    conn.close()
                conn = None
        if conn is not None:
            conn.close()


def publish(source: Path, served: Path) -> None:
    """Copy the card and artefacts of ``source`` over those of ``served`` (a directory served)."""
    for f in source.rglob("*"):
        if f.is_file():
            dest = served / f.relative_to(source)
            dest.parent.mkdir(parents=True, exist_ok=True)
            if dest.exists():
                dest.chmod(0o644)
            shutil.copyfile(f, dest)


def reload(s: Server) -> dict[str, Any]:
    r = s.post("/admin/reload", b"", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=120)
    assert r.status == 200, r
    return r.json()


# --- 1. the flag --------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["0", "-1", "x", "1.5", ""])
def test_workers_must_be_a_positive_whole_number_or_auto(value: str, capsys: pytest.CaptureFixture[str]) -> None:
    parser = build_parser("serve")
    with pytest.raises(SystemExit) as exc:
        parser.parse_args(["serve", "--workers", value])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "argument --workers" in err and "auto" in err, err
    assert "Traceback" not in err


def test_workers_auto_is_the_cpu_count_and_the_default_is_one() -> None:
    parser = build_parser("serve")
    assert parser.parse_args(["serve"]).workers == 1
    assert parser.parse_args(["serve", "--workers", "auto"]).workers == (os.cpu_count() or 1)
    assert parser.parse_args(["serve", "--workers", "3"]).workers == 3


# --- 2. a worker's app does not follow the registry ---------------------------------------------


@slow
@pytest.mark.parametrize("follow", [True, False])
def test_only_a_following_app_polls_and_takes_sighup(follow: bool,
                                                    module_project: tuple[Project, dict[str, str]]) -> None:
    """``build(follow=False)`` (what workers run): no poll thread, no SIGHUP handler; the parent
    alone follows.  ``follow=True`` (one process) shows the check sees both when they exist."""
    p, _ = module_project
    before = signal.getsignal(signal.SIGHUP)
    app = build(str(p.root / "models"), poll=30, follow=follow, app_class=App if follow else WorkerApp)
    app.startup()
    try:
        polling = [t for t in threading.enumerate() if t.name == "shelf-follow" and t.is_alive()]
        assert bool(polling) is follow, polling
        assert (signal.getsignal(signal.SIGHUP) is not before) is follow
    finally:
        app.shutdown()
    assert signal.getsignal(signal.SIGHUP) is before


# --- 3. end to end ------------------------------------------------------------------------------


@slow
def test_two_workers_serve_one_version_and_report_their_memory(two_releases: Project,
                                                               serve: Callable[..., Server]) -> None:
    p = two_releases
    s = serve(p.root, "--model", "prod", "--poll", "0", "--workers", "2")
    docs = workers_on(s, 2, "1.0.0")
    assert len(docs) == 2 and s.proc.pid not in docs, docs
    for pid, doc in docs.items():
        assert doc["status"] == "ok" and doc["supervisor"] == s.proc.pid, doc
        row = next(w for w in doc["workers"] if w["pid"] == pid)
        assert (row.get("pss_bytes") or row.get("rss_bytes") or 0) > 1 << 20, row  # a model's worth at least
        if "pss_bytes" in row:  # copy-on-write: a worker shares much of what it maps with its siblings
            assert 0 < row["private_bytes"] < row["pss_bytes"], row
        assert row["started"], row
    body = rows_body(held_out(p.root).iloc[:3])
    for _ in range(20):
        r = s.post("/predict", body)
        assert r.status == 200 and r.json()["version"] == "1.0.0", r
    assert "Traceback" not in s.output()


@slow
def test_a_killed_worker_is_restarted_and_only_its_requests_fail(two_releases: Project,
                                                                 serve: Callable[..., Server]) -> None:
    p = two_releases
    s = serve(p.root, "--model", "prod", "--poll", "0", "--workers", "2")
    before = set(workers_on(s, 2, "1.0.0"))
    body = json.dumps(rows_body(held_out(p.root).iloc[:1])).encode()
    clients = 4
    with Load(s.port, body, clients=clients, max_requests=2500) as load:
        wait_for("200 answers", lambda: load.done() >= 200, deadline=30, every=0.02)
        with load.lock:  # the worker holding the most client connections, and how many
            held = {pid: load.on.count(pid) for pid in before}
            victim = max(held, key=lambda pid: held[pid])
            os.kill(victim, signal.SIGKILL)
        after = workers_on(s, 2, "1.0.0")
    assert victim not in after and len(set(after) - before) == 1, (before, after)
    # Once replaced, both workers answer everything (fresh connections, spread over both).
    with Load(s.port, body, clients=clients, max_requests=400) as again:
        wait_for("400 more answers", lambda: again.done() + again.failed >= 400, deadline=30, every=0.02)
    assert again.failed == 0 and again.ok == 400, again.bad
    assert {pid for pid in again.on if pid is not None} <= set(after), (again.on, after)
    print(f"kill -9 under load: {load.ok} answered, {load.failed} failed {load.failed_on} "
          f"(victim {victim} held {held[victim]} of {clients} connections): {load.bad}")
    assert held[victim] >= 1, held  # the kill met load
    # Only requests on the killed worker's connections fail, at most one per connection (a
    # client reconnects after a failure, to the worker left or the new one).
    assert set(load.failed_on) <= {victim}, (victim, load.failed_on, load.bad)
    assert load.failed <= held[victim] and max(load.failures_per_client) <= 1, (held, load.failed_on, load.bad)
    assert not [b for b in load.bad if b[:1].isdigit()], load.bad  # no HTTP error status at all
    out = s.output()
    assert f"worker {victim} died (killed by SIGKILL)" in out and f"restarted worker {victim} as" in out, out


@slow
def test_sighup_swaps_every_worker_and_a_restart_keeps_the_supervisors_version(
        two_releases: Project, serve: Callable[..., Server]) -> None:
    p = two_releases
    s = serve(p.root, "--model", "prod", "--poll", "0", "--workers", "2")
    first = workers_on(s, 2, "1.0.0")
    p.shelf("promote", "v1.1.0", "--to", "prod")
    # SIGHUP to a worker is not a reload: the parent alone decides (a worker reloading by itself
    # would serve v1.1.0 within a second, its sibling v1.0.0).
    os.kill(min(first), signal.SIGHUP)
    end = time.monotonic() + 3.0
    while time.monotonic() < end:  # a bounded check that nothing changes, asking /health all along
        doc = health(s)
        assert doc is None or doc["version"] == "1.0.0", doc
    assert alive(min(first)), s.output()
    s.proc.send_signal(signal.SIGHUP)
    docs = workers_on(s, 2, "1.1.0")
    assert all(d["status"] == "ok" and d["error"] is None for d in docs.values()), docs
    r = s.post("/predict", rows_body(held_out(p.root).iloc[:2]))
    assert r.status == 200 and r.json()["version"] == "1.1.0", r
    # The registry moves back, unannounced: a restarted worker serves what the others serve.
    p.shelf("promote", "v1.0.0", "--to", "prod")
    victim = min(docs)
    os.kill(victim, signal.SIGKILL)
    after = workers_on(s, 2, "1.1.0")
    assert victim not in after, after
    out = s.output()
    assert "swap to v1.1.0 committed on 2 workers" in out, out
    assert s.proc.poll() is None


@slow
def test_a_version_failing_verification_is_aborted_in_every_worker(
        two_releases: Project, serve: Callable[..., Server], tmp_path: Path) -> None:
    """Serving a directory: the parent reads its card once, every worker verifies the bytes."""
    p = two_releases
    served, v11 = tmp_path / "served", tmp_path / "v11"
    p.shelf("get", "v1.0.0", "-o", str(served))
    p.shelf("get", "v1.1.0", "-o", str(v11))
    s = serve(p.root, "--model", str(served), "--poll", "0", "--workers", "2",
              env={**os.environ, "SHELF_ADMIN_TOKEN": TOKEN})
    workers_on(s, 2, "1.0.0")
    publish(v11, served)
    corrupt(served / "onnx" / "model.onnx")
    s.proc.send_signal(signal.SIGHUP)
    wait_for("the swap to be aborted", lambda: "swap to v1.1.0 aborted" in s.output())
    docs = workers_on(s, 2, "1.0.0")
    for doc in docs.values():
        assert doc["status"] == "degraded" and "sha256" in doc["error"], doc
    outcome = reload(s)  # again, through the admin endpoint of whichever worker answers
    assert outcome["version"] == "1.0.0" and "refused" in outcome["result"], outcome
    for _ in range(10):
        r = s.post("/predict", rows_body(held_out(p.root).iloc[:2]))
        assert r.status == 200 and r.json()["version"] == "1.0.0", r

    publish(v11, served)  # the good bytes: now every worker switches
    outcome = reload(s)
    assert outcome["version"] == "1.1.0" and outcome["error"] is None, outcome
    assert "was v1.0.0" in outcome["result"], outcome
    docs = workers_on(s, 2, "1.1.0", deadline=5)  # already switched when the reload answered
    assert all(d["status"] == "ok" for d in docs.values()), docs
    assert "Traceback" not in s.output()


@slow
def test_workers_that_cannot_start_make_the_supervisor_give_up(
        two_releases: Project, serve: Callable[..., Server], tmp_path: Path) -> None:
    """After a swap, replacements load the supervisor's version: when its bytes are gone they
    die at start-up, again and again, and the supervisor exits 1 rather than loop forever."""
    p = two_releases
    served, v11 = tmp_path / "served", tmp_path / "v11"
    p.shelf("get", "v1.0.0", "-o", str(served))
    p.shelf("get", "v1.1.0", "-o", str(v11))
    s = serve(p.root, "--model", str(served), "--poll", "0", "--workers", "2")
    workers_on(s, 2, "1.0.0")
    publish(v11, served)
    s.proc.send_signal(signal.SIGHUP)
    docs = workers_on(s, 2, "1.1.0")
    (served / "onnx" / "model.onnx").unlink()
    for pid in docs:
        os.kill(pid, signal.SIGKILL)
    code = s.proc.wait(timeout=90)
    out = s.output()
    assert code == 1, out
    assert "workers keep dying at start-up" in out and "cannot load v1.1.0" in out, out
    assert [ln for ln in out.splitlines() if ln.startswith("shelf: error: ")], out


@slow
def test_sigterm_drains_every_worker_and_exits_0(two_releases: Project, serve: Callable[..., Server]) -> None:
    p = two_releases
    s = serve(p.root, "--model", "prod", "--poll", "0", "--workers", "2")
    pids = set(workers_on(s, 2, "1.0.0"))
    conn = http.client.HTTPConnection("127.0.0.1", s.port, timeout=30)  # an idle keep-alive connection
    conn.request("GET", "/ping")
    assert conn.getresponse().read() == b'{"ok":true}'
    s.proc.send_signal(signal.SIGTERM)
    assert s.proc.wait(timeout=60) == 0, s.output()
    conn.close()
    assert not [pid for pid in pids if alive(pid)], s.output()
    out = s.output()
    assert "received SIGTERM: stopping 2 workers" in out and "Traceback" not in out, out


@slow
def test_workers_stop_when_their_supervisor_is_killed(two_releases: Project, serve: Callable[..., Server]) -> None:
    """A worker whose pipe to the parent closes stops by itself: no orphans left serving."""
    p = two_releases
    s = serve(p.root, "--model", "prod", "--poll", "0", "--workers", "2")
    pids = set(workers_on(s, 2, "1.0.0"))
    s.proc.kill()
    s.proc.wait(timeout=30)
    wait_for("every orphaned worker to exit", lambda: not [pid for pid in pids if alive(pid)], deadline=30)
    assert "lost its supervisor" in s.output(), s.output()


@slow
def test_one_worker_is_the_server_as_before(two_releases: Project, serve: Callable[..., Server]) -> None:
    """``--workers 1`` (the default) is today's single process: the same /health, and it follows
    the registry itself (SIGHUP reloads it)."""
    p = two_releases
    s = serve(p.root, "--model", "prod", "--poll", "0", "--workers", "1")
    assert s.health() == {"status": "ok", "version": "1.0.0", "format": "onnx", "following": "prod",
                          "error": None}
    p.shelf("promote", "v1.1.0", "--to", "prod")
    s.proc.send_signal(signal.SIGHUP)
    wait_for("v1.1.0 after SIGHUP", lambda: s.health()["version"] == "1.1.0")
    assert "started worker" not in s.output() and "supervisor" not in s.output()


@slow
def test_the_supervisors_poll_moves_every_worker(two_releases: Project, serve: Callable[..., Server]) -> None:
    p = two_releases
    s = serve(p.root, "--model", "prod", "--poll", "0.5", "--workers", "2")
    workers_on(s, 2, "1.0.0")
    p.shelf("promote", "v1.1.0", "--to", "prod")
    workers_on(s, 2, "1.1.0")
    out = s.output()
    assert "swap to v1.1.0 (poll): 2 workers preparing" in out and "committed on 2 workers" in out, out
    assert out.count("swapped v1.0.0 → v1.1.0 (onnx, poll)") == 2, out  # once per worker, never twice


# --- 4. a canary and a shadow with workers ------------------------------------------------------


def pinned(s: Server, n: int = 2) -> dict[int, http.client.HTTPConnection]:
    """Keep-alive connections, one served by each of ``n`` workers (opened until the kernel has
    handed one to each); by pid."""
    conns: dict[int, http.client.HTTPConnection] = {}

    def another() -> bool:
        conn = http.client.HTTPConnection("127.0.0.1", s.port, timeout=30)
        conn.request("GET", "/health")
        pid = json.loads(conn.getresponse().read())["pid"]
        if pid in conns:
            conn.close()
        else:
            conns[pid] = conn
        return len(conns) == n

    wait_for(f"a connection to each of {n} workers", another, deadline=30, every=0.0)
    return conns


def answer(conn: http.client.HTTPConnection, body: bytes, key: str | None = None) -> bytes:
    conn.request("POST", "/predict", body=body, headers={"Content-Type": "application/json",
                                                         **({"X-Canary-Key": key} if key else {})})
    resp = conn.getresponse()
    data = resp.read()
    assert resp.status == 200, data
    return data


def get(conn: http.client.HTTPConnection, path: str) -> Any:
    """GET ``path`` on a kept-alive connection: its JSON, or its text for /metrics."""
    conn.request("GET", path)
    resp = conn.getresponse()
    data = resp.read()
    assert resp.status == 200, data
    return data.decode() if path == "/metrics" else json.loads(data)


def candidates_on(s: Server, version: str) -> dict[int, dict[str, Any]]:
    """Wait until every row of the workers' table holds candidate ``version`` and some worker's
    own /health says so; that worker's /health."""
    def check() -> dict[str, Any] | None:
        doc = health(s)
        if doc is None or {w.get("candidate") for w in doc["workers"]} != {version}:
            return None
        return doc if doc["candidate"]["version"] == version else None

    return wait_for(f"every worker on candidate v{version}", check, deadline=RESTART_DEADLINE, every=0.05)


@slow
def test_a_canary_with_workers_sends_each_key_to_one_model_in_every_worker(
        two_releases: Project, serve: Callable[..., Server]) -> None:
    p = two_releases
    p.shelf("promote", "v1.1.0", "--to", "staging")
    s = serve(p.root, "--model", "prod", "--poll", "0", "--workers", "2", "--canary", "staging",
              "--canary-share", "0.3")
    assert "canary v1.1.0 for 30% of keys" in s.output() and "2 workers" in s.output()
    workers_on(s, 2, "1.0.0")
    assert candidates_on(s, "1.1.0")["candidate"]["mode"] == "canary"
    body = json.dumps(rows_body(held_out(p.root).iloc[:1])).encode()
    # What the hash decides, computed here: the server must agree in every worker.
    split = Split(Holder("unused"), share=0.3)
    keys = [f"user-{i}" for i in range(600)]
    takes = {k: split.takes(k.encode()) for k in keys}
    conns = pinned(s)
    for key in keys:
        versions = {json.loads(answer(c, body, key))["version"] for c in conns.values()}
        assert versions == {"1.1.0" if takes[key] else "1.0.0"}, (key, versions)
    # /health counts the candidate's answers of every worker, whichever answers it.
    expected = 2 * sum(takes.values())
    for c in conns.values():
        wait_for("the candidate's answers of both workers", lambda c=c: get(c, "/health")["candidate"]["answered"]
                 == expected, deadline=10, every=0.05)
        answers = metric(c, "modelshelf_canary_answers_total", role="canary", version="1.1.0", status="200")
        assert answers == expected, (answers, expected)  # /metrics by role, over both workers too
    # The candidate's spec moves: every worker swaps it, in two phases of its own.
    p.shelf("promote", "v1.0.0", "--to", "staging")
    s.proc.send_signal(signal.SIGHUP)
    candidates_on(s, "1.0.0")
    # The stable spec reaches the old candidate's version: every worker answers with it alone.
    p.shelf("promote", "v1.1.0", "--to", "prod")
    p.shelf("promote", "v1.1.0", "--to", "staging")
    s.proc.send_signal(signal.SIGHUP)
    docs = workers_on(s, 2, "1.1.0")
    candidates_on(s, "1.1.0")
    for c in conns.values():
        c.close()
    conns = pinned(s)
    for key in keys[:100]:
        assert {json.loads(answer(c, body, key))["version"] for c in conns.values()} == {"1.1.0"}
    # A restarted worker comes back on the supervisor's pair, whatever the registry says by now.
    p.shelf("promote", "v1.0.0", "--to", "staging")
    victim = min(docs)
    os.kill(victim, signal.SIGKILL)
    after = workers_on(s, 2, "1.1.0")
    assert victim not in after
    assert {w["candidate"] for w in next(iter(after.values()))["workers"]} == {"1.1.0"}
    out = s.output()
    assert "candidate swap to v1.0.0 committed on 2 workers" in out, out
    assert "swap to v1.1.0 committed on 2 workers" in out and "Traceback" not in out, out
    for c in conns.values():
        c.close()


@slow
def test_a_shadow_with_workers_logs_both_answers_from_every_worker(
        two_releases: Project, serve: Callable[..., Server], tmp_path: Path) -> None:
    p = two_releases
    logdir = tmp_path / "served"
    alone = serve(p.root, "--model", "prod", "--poll", "0")
    s = serve(p.root, "--model", "prod", "--poll", "0", "--workers", "2", "--shadow", "v1.1.0",
              "--log-predictions", str(logdir))
    workers_on(s, 2, "1.0.0")
    frame = held_out(p.root)
    bodies = [json.dumps(rows_body(frame.iloc[i:i + n])).encode() for i, n in ((0, 1), (1, 5), (6, 50))]
    conns = pinned(s)
    ref = http.client.HTTPConnection("127.0.0.1", alone.port, timeout=30)
    for body in bodies * 10:
        expected = answer(ref, body)
        for c in conns.values():
            assert answer(c, body) == expected  # the shadow changes no byte, in any worker
    for c in [ref, *conns.values()]:
        c.close()
    s.stop()  # SIGTERM: each worker's shadow scores what is queued, then its log drains
    records = read(str(logdir))
    assert len(records) == len(bodies) * 10 * 2, len(records)
    assert all(r["role"] == "shadow" and r["version"] == "1.0.0" and r["shadow"]["response"]["version"] == "1.1.0"
               for r in records)
    writers = {int(f.name[len(PREFIX):-len(SUFFIX)].split("-")[1]) for f in logdir.glob(f"{PREFIX}*{SUFFIX}")}
    assert writers == set(conns), writers  # each worker logged its own shadow's records


@slow
def test_connections_opened_at_once_are_shared_out_evenly(two_releases: Project,
                                                          serve: Callable[..., Server]) -> None:
    """A client opening 16 connections at once (wrk, a pool) gets 8 ± 2 per worker, whichever
    worker the kernel wakes first: one worker holding most of them doubles their latency."""
    p = two_releases
    s = serve(p.root, "--model", "prod", "--poll", "0", "--workers", "2")
    workers_on(s, 2, "1.0.0")
    spreads = []
    for _ in range(8):
        conns = [http.client.HTTPConnection("127.0.0.1", s.port, timeout=30) for _ in range(16)]
        start = threading.Barrier(len(conns))

        def connect(c: http.client.HTTPConnection) -> None:
            start.wait()
            c.connect()

        threads = [threading.Thread(target=connect, args=(c,)) for c in conns]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        held: dict[int, int] = {}
        for c in conns:
            c.request("GET", "/health")
            pid = json.loads(c.getresponse().read())["pid"]
            held[pid] = held.get(pid, 0) + 1
        for c in conns:
            c.close()
        spreads.append(sorted(held.values()))
        # Closed on the servers' side too before the next round (the table counts each worker's
        # open connections; the asking one is the only one left).
        wait_for("the connections closed", lambda: (d := health(s)) is not None
                 and sum(w["connections"] for w in d["workers"]) == 1, deadline=10, every=0.01)
    assert all(len(h) == 2 and h[1] - h[0] <= 4 for h in spreads), spreads


@slow
def test_a_stuck_worker_holding_fewer_connections_does_not_starve_new_ones(
        two_releases: Project, serve: Callable[..., Server]) -> None:
    """A worker leaves new connections to a sibling holding fewer, but only for a while: with
    that sibling stopped (SIGSTOP), every new connection is still answered by the other."""
    p = two_releases
    # --keep-alive 60: the live worker keeps its connection, so it holds more than the stuck one
    s = serve(p.root, "--model", "prod", "--poll", "0", "--workers", "2", "--keep-alive", "60")
    workers_on(s, 2, "1.0.0")
    conns = pinned(s)
    live, stuck = sorted(conns)
    conns.pop(stuck).close()
    held = conns[live]  # kept open: the live worker holds more connections than the stuck one

    def stuck_holds() -> int | None:
        held.request("GET", "/health")
        table = json.loads(held.getresponse().read())["workers"]
        return next(w["connections"] for w in table if w["pid"] == stuck)

    wait_for("the other worker to hold no connection", lambda: stuck_holds() == 0, deadline=10, every=0.01)
    os.kill(stuck, signal.SIGSTOP)
    try:
        answered = []
        for _ in range(20):
            conn = http.client.HTTPConnection("127.0.0.1", s.port, timeout=10)
            conn.request("GET", "/health")
            answered.append(json.loads(conn.getresponse().read())["pid"])
            conn.close()
        assert answered == [live] * 20, answered
    finally:
        os.kill(stuck, signal.SIGCONT)
        held.close()


# --- 5. counts over every worker ----------------------------------------------------------------


def metric(conn: http.client.HTTPConnection, name: str, **labels: str) -> float:
    """One sample of the /metrics that ``conn``'s worker answers (0 when not counted yet)."""
    return one(parse_metrics(get(conn, "/metrics")), name, **labels)


def predicts(conn: http.client.HTTPConnection) -> float:
    return metric(conn, "modelshelf_requests_total", path="/predict", status="200")


def predicts_everywhere(conns: dict[int, http.client.HTTPConnection], n: int) -> None:
    """Until every worker's /metrics counts ``n`` answered /predict (a sibling's tally lags
    :data:`workers.TALLY_EVERY`), its histogram too."""
    for c in conns.values():
        wait_for(f"/predict counted {n} times", lambda c=c: predicts(c) == n, deadline=10, every=0.05)
        assert metric(c, "modelshelf_predict_seconds_count") == n


def answered_by_two(p: Project, serve: Callable[..., Server], counts: tuple[int, int], rows: int = 1,
                    ) -> tuple[Server, dict[int, http.client.HTTPConnection], bytes]:
    """``shelf serve --workers 2``, a connection to each worker, and ``counts[i]`` /predict
    answers of ``rows`` rows from worker i; the server, the connections and the body."""
    s = serve(p.root, "--model", "prod", "--poll", "0", "--workers", "2")
    workers_on(s, 2, "1.0.0")
    body = json.dumps(rows_body(held_out(p.root).iloc[:rows])).encode()
    conns = pinned(s)
    for c, n in zip(conns.values(), counts, strict=True):
        for _ in range(n):
            answer(c, body)
    return s, conns, body


def test_metrics_count_what_every_worker_answered(two_releases: Project, serve: Callable[..., Server]) -> None:
    _, conns, _ = answered_by_two(two_releases, serve, (7, 5), rows=2)
    # Answered by either worker, a scrape says 12: one worker's count would be 7 or 5, and a
    # Prometheus counter moving between the two would read as a reset on every other scrape.
    predicts_everywhere(conns, 12)
    for c in conns.values():
        samples = parse_metrics(get(c, "/metrics"))
        assert one(samples, "modelshelf_prediction_rows_total") == 24, samples
        assert one(samples, "modelshelf_connections") >= 2, samples  # every worker's open ones
    for c in conns.values():
        c.close()


def test_scrapes_under_load_never_go_down_whichever_worker_answers(two_releases: Project,
                                                                   serve: Callable[..., Server]) -> None:
    s, conns, body = answered_by_two(two_releases, serve, (0, 0))
    seen: list[float] = []
    with Load(s.port, body, clients=2, max_requests=3000) as load:
        for i in range(200):  # the two workers in turn, as Prometheus meets them behind a Service
            seen.append(predicts(list(conns.values())[i % 2]))
        load.stop.set()
    assert load.failed == 0 and load.ok > 0, load.bad
    assert all(b >= a for a, b in zip(seen, seen[1:])), seen  # a fall reads as a counter reset
    assert seen[-1] > seen[0], seen  # the load was counted while it ran
    predicts_everywhere(conns, load.ok)
    for c in conns.values():
        c.close()


@slow
def test_metrics_never_go_down_when_a_worker_is_killed(two_releases: Project,
                                                        serve: Callable[..., Server]) -> None:
    s, conns, body = answered_by_two(two_releases, serve, (6, 9))
    predicts_everywhere(conns, 15)  # both tallies published
    victim = max(conns)
    os.kill(victim, signal.SIGKILL)
    for c in conns.values():
        c.close()
    after = workers_on(s, 2, "1.0.0")
    assert victim not in after
    # Its replacement counts on from the dead one's last tally: the sum stays 15, not 6 or 9.
    conns = pinned(s)
    assert victim not in conns
    predicts_everywhere(conns, 15)
    for c in conns.values():
        answer(c, body)
    predicts_everywhere(conns, 17)
    for c in conns.values():
        c.close()


def test_a_tally_torn_by_a_killed_writer_leaves_the_one_before_it() -> None:
    def tally(n: int) -> dict[str, Any]:
        return {"metrics": {}, "prediction_log": {"written": n, "dropped": 0}}

    t = Tallies(2)
    t.me = 1
    assert t.read(1) is None and t.read(0) is None
    t.publish(tally(1))
    t.publish(tally(2))
    assert t.read(1) == (2, tally(2))
    # A writer killed halfway through its third tally: that buffer's number is odd, its bytes junk.
    off = (2 * 1 + 3 % 2) * Tallies.BUFFER
    seq, length = Tallies._HEAD.unpack_from(t._mem, off)
    Tallies._HEAD.pack_into(t._mem, off, seq + 1, length)
    t._mem[off + Tallies._HEAD.size:off + Tallies._HEAD.size + 8] = b"\xff" * 8
    assert t.read(1) == (2, tally(2))
    # Its replacement in that slot counts on from there, and its tallies are the newer ones.
    new = Tallies.__new__(Tallies)
    new.__dict__.update(t.__dict__, me=1, base={}, _n=0)
    new.take_over()
    assert new.base == tally(2)
    new.publish(tally(5))
    assert new.read(1) == (3, tally(7)) and new.total(tally(5))["prediction_log"]["written"] == 7
