"""Flow control of modelshelf's HTTP server on a real socket pair and its real loop: a client
that pipelines requests but reads no answer stops being read once its answers back up, and
is read again when it drains them.  No model is needed: /ping answers without one."""

from __future__ import annotations

import socket
import threading

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
