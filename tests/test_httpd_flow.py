"""Flow control of modelshelf's HTTP protocol on a real socket pair and event loop: a client
that pipelines requests but reads no answer stops being read once its answers back up, and
is read again when it drains them.  No model is needed: /ping answers without one."""

from __future__ import annotations

import asyncio
import socket

from modelshelf.serve.app import App
from modelshelf.serve.holder import Holder
from modelshelf.serve.httpd import HttpProtocol

PING = b"GET /ping HTTP/1.1\r\nHost: t\r\n\r\n"
ANSWER_END = b'{"ok":true}'
HIGH_WATER = 64 * 1024


async def _scenario() -> None:
    server_end, client_end = socket.socketpair()
    client_end.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    server_end.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    loop = asyncio.get_running_loop()
    transport, proto = await loop.connect_accepted_socket(
        lambda: HttpProtocol(App(Holder("unused"), admin_token=None), set()), server_end)
    transport.set_write_buffer_limits(high=HIGH_WATER)
    burst = PING * 100
    fed = 0
    while not proto.write_paused:
        assert fed < 100_000, "answers kept being buffered: no back-pressure"
        proto.data_received(burst)  # as if read off the socket
        fed += 100
        await asyncio.sleep(0)  # the loop tries to write
    assert not transport.is_reading()
    # Bounded: the high-water mark plus the answers to the last burst.
    assert transport.get_write_buffer_size() <= HIGH_WATER + 100 * 200
    # The client drains its answers: the server writes the rest and reads again.
    client_end.setblocking(False)
    answers, received = 0, b""
    while answers < fed:
        try:
            chunk = client_end.recv(1 << 16)
        except BlockingIOError:
            await asyncio.sleep(0.001)  # let the loop write more (a poll, not an ordering)
            continue
        received += chunk
        answers += chunk.count(ANSWER_END)
    assert answers == fed
    assert not proto.write_paused and transport.is_reading()
    transport.close()
    client_end.close()


def test_a_client_that_never_reads_stops_being_read_until_it_drains() -> None:
    asyncio.run(asyncio.wait_for(_scenario(), timeout=60))
