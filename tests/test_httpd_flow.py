"""Flow control of modelshelf's HTTP server on a real socket pair and its real loop: a client
that pipelines requests but reads no answer stops being read once its answers back up, and
is read again when it drains them.  No model is needed: /ping answers without one."""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable
from typing import Any

import pytest

from modelshelf.serve.app import App
from modelshelf.serve.holder import Holder
from modelshelf.serve.connection import HIGH_WATER, RECV_SIZE
from modelshelf.serve.httpd import Server

PING = b"GET /ping HTTP/1.1\r\nHost: t\r\n\r\n"
ANSWER_END = b'{"ok":true}'


def test_a_client_that_never_reads_stops_being_read_until_it_drains() -> None:
    server_end, client_end = socket.socketpair()
    client_end.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    server_end.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    server = Server(App(Holder("unused"), admin_token=None))
    try:
        conn = server.adopt(server_end)
        burst = PING * 100
        fed = 0
        while conn.reading:
            assert fed < 100_000, "answers kept being buffered: no back-pressure"
            client_end.sendall(burst)
            fed += 100
            server.poll_once(0.1)
        # Bounded: the high-water mark plus the answers to one read's worth of requests.
        assert len(conn.out) <= HIGH_WATER + (RECV_SIZE // len(PING) + 1) * 200
        for _ in range(20):  # the loop no longer reads the requests that keep arriving
            server.poll_once(0)
        assert not conn.reading
        # The client drains its answers: the server writes the rest and reads again.
        client_end.setblocking(False)
        received = bytearray()
        while received.count(ANSWER_END) < fed:
            server.poll_once(0.01)
            try:
                received += client_end.recv(1 << 16)
            except BlockingIOError:
                continue
        assert received.count(ANSWER_END) == fed
        server.poll_once(0)
        assert conn.reading and not conn.out and not conn.queue
    finally:
        client_end.close()
        server.close()


class _Blocked:
    """A reload hook that waits until the test lets it finish."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.started = threading.Event()

    def __call__(self) -> str:
        self.started.set()
        assert self.release.wait(60), "the test never released the reload"
        return "released"


def _response(sock: socket.socket, buf: bytearray) -> bytes:
    """One whole response off ``sock`` (content-length framed); what follows stays in ``buf``."""
    while True:
        head_end = buf.find(b"\r\n\r\n")
        if head_end >= 0:
            length = int(next(line.split(b":")[1] for line in bytes(buf[:head_end]).split(b"\r\n")
                              if line.lower().startswith(b"content-length")))
            end = head_end + 4 + length
            if len(buf) >= end:
                out = bytes(buf[:end])
                del buf[:end]
                return out
        chunk = sock.recv(65536)
        assert chunk, f"closed mid-response: {bytes(buf)!r}"
        buf += chunk


def test_a_slow_answer_holds_up_only_its_own_connection() -> None:
    """An answer made in a worker thread (here a reload that waits for the test) does not stop
    the loop: another connection is answered meanwhile, and a request pipelined behind the slow
    one on the same connection is answered after it, in order."""
    hook = _Blocked()
    app = App(Holder("unused"), admin_token="t", reload_hook=hook)
    listener = socket.create_server(("127.0.0.1", 0))
    server = Server(app, [listener])
    loop = threading.Thread(target=server.serve_forever, daemon=True)
    loop.start()
    port = server.port
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=60) as slow, \
                socket.create_connection(("127.0.0.1", port), timeout=60) as other:
            slow.sendall(b"POST /admin/reload HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer t\r\n"
                         b"Content-Length: 0\r\n\r\n" + PING)
            assert hook.started.wait(60)
            other.sendall(PING)
            assert _response(other, bytearray()).endswith(ANSWER_END)  # while the reload still waits
            assert not hook.release.is_set()
            slow.setblocking(False)
            try:
                early = slow.recv(65536)
            except BlockingIOError:
                early = b""
            assert early == b"", "the pipelined /ping was answered before the reload it follows"
            slow.setblocking(True)
            hook.release.set()
            buf = bytearray()
            first, second = _response(slow, buf), _response(slow, buf)
            assert b'"result":"released"' in first
            assert second.endswith(ANSWER_END)
    finally:
        server.request_stop()
        loop.join(30)
        server.close()
    assert not loop.is_alive()


def test_out_of_file_descriptors_the_listener_rests_then_accepts_again() -> None:
    """With no descriptor left, accept() fails on every poll; the listener is taken out of the
    poll for a while (no busy loop) and the waiting connection is served once it is back."""
    import os
    import resource

    listener = socket.create_server(("127.0.0.1", 0))
    server = Server(App(Holder("unused"), admin_token=None), [listener])
    client = socket.create_connection(("127.0.0.1", server.port), timeout=30)  # waits in the backlog
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        lowest_free = os.dup(0)
        os.close(lowest_free)
        resource.setrlimit(resource.RLIMIT_NOFILE, (lowest_free, hard))  # no new descriptor now
        server.poll_once(5.0)  # the listener is readable; accept() fails with EMFILE
        resting = listener.fileno() in server.paused
        spins = server.poll_once(0)  # a readable listener still polled would count here
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    try:
        assert resting and spins == 0 and not server.connections
        deadline = server.now + 30
        while not server.connections and server.now < deadline:
            server.poll_once(0.05)  # the rest ends, the listener is polled again, accept() works
        assert server.connections and not server.paused
        client.sendall(PING)
        client.setblocking(False)
        received = bytearray()
        while not received.endswith(ANSWER_END) and server.now < deadline:
            server.poll_once(0.05)
            try:
                received += client.recv(65536)
            except BlockingIOError:
                pass
        assert received.startswith(b"HTTP/1.1 200 OK") and received.endswith(ANSWER_END)
    finally:
        client.close()
        server.close()


# --- hostile clients, on the real loop: one connection's trouble stays its own -------------------


def _pair(server: Server) -> tuple[socket.socket, object]:
    server_end, client_end = socket.socketpair()
    client_end.settimeout(10)
    return client_end, server.adopt(server_end)


def _drain(server: Server, client: socket.socket, until: Callable[[bytes], bool], rounds: int = 200) -> bytes:
    """Run the loop and read ``client`` until ``until(received)`` or the connection closes."""
    client.setblocking(False)
    received = bytearray()
    for _ in range(rounds):
        server.poll_once(0.01)
        try:
            chunk = client.recv(1 << 16)
        except BlockingIOError:
            continue
        if not chunk:
            break
        received += chunk
        if until(bytes(received)):
            break
    return bytes(received)


def test_nothing_is_parsed_after_a_close_and_the_loop_goes_on() -> None:
    """A request pipelined after ``Connection: close`` (or after an HTTP/1.0 request) is not
    answered, the connection closes, and another connection is served (this exchange ended
    the whole process)."""
    server = Server(App(Holder("unused"), admin_token=None))
    try:
        for first in (b"GET /ping HTTP/1.1\r\nConnection: close\r\n\r\n", b"GET /ping HTTP/1.0\r\n\r\n"):
            client, conn = _pair(server)
            client.sendall(first + PING + PING)
            got = _drain(server, client, lambda r: False)
            assert got.count(ANSWER_END) == 1 and got.endswith(ANSWER_END), got
            assert conn.sock is None or conn.draining
            client.close()
        other, _ = _pair(server)
        other.sendall(PING)
        assert _drain(server, other, lambda r: r.endswith(ANSWER_END)).endswith(ANSWER_END)
    finally:
        server.close()


def test_pipelined_answers_are_bounded_inside_one_read() -> None:
    """One read holding a thousand pipelined requests renders answers only up to the
    high-water mark; the rest wait as requests (at most a slice's worth) and unparsed input."""
    from modelshelf.serve.connection import SLICE, Request

    server = Server(App(Holder("unused"), admin_token=None))
    server_end, client_end = socket.socketpair()
    client_end.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    server_end.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    server_end.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECV_SIZE)
    metrics = b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n"  # ~3 KB answers to 35-byte requests
    try:
        conn = server.adopt(server_end)
        client_end.sendall(metrics * 1000)
        for _ in range(20):
            server.poll_once(0.01)
        answer = len(server.app.metrics.render("", "", "", 0, 0, True)) + 200
        assert not conn.reading
        assert len(conn.out) <= HIGH_WATER + answer, len(conn.out)
        waiting = [item for item in conn.queue if type(item) is Request]
        assert len(waiting) <= SLICE // len(metrics) + 1, len(waiting)
        assert len(conn.rest) < RECV_SIZE
        rendered = len(conn.out) + sum(len(i) for i in conn.queue if type(i) is bytes)
        assert rendered < 4 * HIGH_WATER  # not the ~3 MB a whole read's answers would be
        # and every request is still answered, in order, once the client reads
        got = _drain(server, client_end, lambda r: r.count(b"\nmodelshelf_healthy 1\n") >= 1000, rounds=20_000)
        assert got.count(b"HTTP/1.1 200 OK") == got.count(b"\nmodelshelf_healthy 1\n") == 1000
    finally:
        client_end.close()
        server.close()


@pytest.mark.parametrize(("head", "status"), [
    pytest.param(b"X-Pad: " + b"a" * (60 * 1024) + b"\r\n", b"200", id="60-KiB-header"),
    pytest.param(b"X-Pad: " + b"a" * (65 * 1024) + b"\r\n", b"431", id="65-KiB-header"),
    pytest.param(b"X-Pad:" + b" " * (70 * 1024) + b"a\r\n", b"431", id="70-KiB-of-spaces"),
    pytest.param(b"".join(b"x%d: 1\r\n" % i for i in range(11_000)), b"431", id="11000-tiny-headers"),
])
def test_the_head_limit_counts_every_byte(head: bytes, status: bytes) -> None:
    server = Server(App(Holder("unused"), admin_token=None))
    try:
        client, _ = _pair(server)
        request = b"GET /ping HTTP/1.1\r\n" + head + b"\r\n"
        for i in range(0, len(request), 1000):  # as a client sends it: a piece at a time
            client.sendall(request[i:i + 1000])
            server.poll_once(0)
        got = _drain(server, client, lambda r: b"\r\n\r\n" in r)
        assert got.startswith(b"HTTP/1.1 " + status), got[:100]
    finally:
        server.close()


def test_head_answers_like_get_without_a_body_and_keeps_the_connection() -> None:
    server = Server(App(Holder("unused"), admin_token=None))
    try:
        client, _ = _pair(server)
        client.sendall(b"HEAD /ping HTTP/1.1\r\nHost: t\r\n\r\n" + PING)
        got = _drain(server, client, lambda r: r.endswith(ANSWER_END))
        head, _, rest = got.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200") and b"content-length: 11" in head
        assert b"connection: close" not in head
        assert rest.startswith(b"HTTP/1.1 200") and rest.endswith(ANSWER_END) and rest.count(ANSWER_END) == 1
    finally:
        server.close()


def test_a_half_closed_client_gets_its_answers() -> None:
    server = Server(App(Holder("unused"), admin_token=None))
    try:
        client, conn = _pair(server)
        client.sendall(PING * 3)
        client.shutdown(socket.SHUT_WR)
        got = _drain(server, client, lambda r: False)
        assert got.count(ANSWER_END) == 3
        assert conn.sock is None
    finally:
        server.close()


class _Buggy(App):
    """An app with a bug on one path (a real exception from our own code, not a stand-in)."""

    def handle(self, method: str, path: str, body: bytes, authorization: bytes = b"", key: bytes = b"") -> Any:
        if path == "/bug":
            raise ZeroDivisionError("a bug")
        return super().handle(method, path, body, authorization, key)


def test_a_fault_closes_its_connection_is_logged_and_counted(caplog: pytest.LogCaptureFixture) -> None:
    server = Server(_Buggy(Holder("unused"), admin_token=None))
    try:
        bad, bad_conn = _pair(server)
        good, _ = _pair(server)
        with caplog.at_level(logging.ERROR, logger="modelshelf.serve"):
            bad.sendall(b"GET /bug HTTP/1.1\r\n\r\n")
            good.sendall(PING)
            assert _drain(server, good, lambda r: r.endswith(ANSWER_END)).endswith(ANSWER_END)
            assert _drain(server, bad, lambda r: False) == b""  # closed, nothing half-written
        assert bad_conn.sock is None and server.app.metrics.connection_errors == 1
        [record] = [r for r in caplog.records if r.name == "modelshelf.serve"]
        assert record.exc_info and record.exc_info[0] is ZeroDivisionError
        assert "modelshelf_connection_errors_total 1" in server.app.metrics.render("", "", "", 0, 0, True)
    finally:
        server.close()


def test_at_the_connection_cap_the_least_useful_connection_makes_room() -> None:
    """Full: an idle connection is closed for a new one; with every connection receiving a
    request, a new one is answered 503 at once, until one of them has been slow for a second."""
    from modelshelf.serve.connection import SLOW_REQUEST

    listener = socket.create_server(("127.0.0.1", 0))
    server = Server(App(Holder("unused"), admin_token=None), [listener], max_connections=2)

    def connect() -> socket.socket:
        s = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        for _ in range(50):
            before = server.app.metrics.connections_opened
            server.poll_once(0.01)
            if server.app.metrics.connections_opened > before:
                break
        return s

    try:
        idle = connect()
        slow = connect()
        slow.sendall(b"GET /ping HTTP/1.1\r\nHost:")  # a head that never ends
        server.poll_once(0.01)
        third = connect()  # the idle one makes room
        assert _drain(server, idle, lambda r: False) == b"" and server.app.metrics.connections_evicted == 1
        third.sendall(b"GET /ping HTTP/1.1\r\nHost:")
        server.poll_once(0.01)
        fourth = connect()  # both receiving, neither slow yet: 503
        assert _drain(server, fourth, lambda r: False).startswith(b"HTTP/1.1 503")
        assert server.app.metrics.connections_refused == 1
        for conn in server.connections.values():  # as if a second had gone by (no sleep)
            conn.started -= SLOW_REQUEST + 0.1
        fifth = connect()
        fifth.sendall(PING)
        assert _drain(server, fifth, lambda r: r.endswith(ANSWER_END)).endswith(ANSWER_END)
        assert server.app.metrics.connections_evicted >= 2
        for s in (idle, slow, third, fourth, fifth):
            s.close()
    finally:
        server.close()
        listener.close()


RUN_AND_RESTORE = r"""
import json, os, signal, socket, sys, threading
from modelshelf.serve.app import App
from modelshelf.serve.holder import Holder
from modelshelf.serve import httpd

sys.setswitchinterval(0.004)
mine = lambda s, f: None
signal.signal(signal.SIGTERM, mine)
listener = socket.create_server(("127.0.0.1", 0))
app = App(Holder("unused"), admin_token=None)
seen = {}
def stop():
    with socket.create_connection(listener.getsockname(), timeout=30) as s:
        s.sendall(b"GET /ping HTTP/1.1\r\nConnection: close\r\n\r\n")
        seen["answer"] = s.recv(1000).endswith(b'{"ok":true}')
    seen["during"] = sys.getswitchinterval()
    os.kill(os.getpid(), signal.SIGTERM)
app.lifespan_startup.append(lambda: threading.Thread(target=stop).start())
httpd.run(app, [listener])
print(json.dumps({**seen, "after": sys.getswitchinterval(), "handler": signal.getsignal(signal.SIGTERM) is mine}))
"""


def test_run_restores_the_process_wide_settings_it_changed() -> None:
    import json
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", RUN_AND_RESTORE], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    seen = json.loads(proc.stdout.strip().splitlines()[-1])
    assert seen == {"answer": True, "during": seen["during"], "after": 0.004, "handler": True}
    assert seen["during"] < 0.004


def test_a_405_names_the_allowed_methods() -> None:
    server = Server(App(Holder("unused"), admin_token=None))
    try:
        client, _ = _pair(server)
        client.sendall(b"DELETE /ping HTTP/1.1\r\nHost: t\r\n\r\nPOST /health HTTP/1.1\r\nContent-Length: 0\r\n\r\n")
        got = _drain(server, client, lambda r: r.count(b"HTTP/1.1 405") == 2 and r.endswith(b"}"))
        first, second = got.split(b"HTTP/1.1 405")[1:]
        for answer in (first, second):
            head, _, body = answer.partition(b"\r\n\r\n")
            assert b"\r\nallow: GET, HEAD\r\n" in head + b"\r\n"
            assert len(body) == int(head.split(b"content-length: ")[1].split(b"\r\n")[0])  # framed once
    finally:
        server.close()
