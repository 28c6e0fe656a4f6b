"""Flow control of modelshelf's HTTP server on a real socket pair and its real loop: a client
that pipelines requests but reads no answer stops being read once its answers back up, and
is read again when it drains them.  No model is needed: /ping answers without one."""

from __future__ import annotations

import socket

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
