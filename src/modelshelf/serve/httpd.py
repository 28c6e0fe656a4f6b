"""A small HTTP/1.1 server for :class:`App`: asyncio (uvloop when installed) and httptools.

Why not a general ASGI server: a one-row prediction costs tens of microseconds, and a
general server spends more than that per request on a task, ASGI messages and two writes,
and ~50 ms importing itself at start-up.  Here a request is parsed by httptools, answered
synchronously in the protocol callback when the app can, and written in one ``write``.

HTTP/1.1 keep-alive and pipelining (answers in request order), chunked request bodies,
``Expect: 100-continue``, limits on the request head and body, an idle timeout, and a
graceful stop on SIGTERM/SIGINT that lets requests in progress finish.
"""

from __future__ import annotations

import asyncio
import signal
from collections import deque
from collections.abc import Coroutine
from http import HTTPStatus
from typing import Any

import httptools
import orjson

from modelshelf.errors import ConfigError
from modelshelf.serve.app import JSON, App, Reply

MAX_HEAD = 64 * 1024  # request line + headers
IDLE_TIMEOUT = 5.0  # seconds a keep-alive connection may wait for its next request
REQUEST_TIMEOUT = 60.0  # seconds from a request's first byte to its last
STOP_GRACE = 5.0  # seconds requests in progress get to finish on SIGTERM
# A reload verifies and builds the next version in a worker thread; with Python's default
# 5 ms switch interval the event loop can wait that long for the GIL, which is what the
# slowest requests during a hot swap would pay.
SWITCH_INTERVAL = 0.0005

_REASONS = {s.value: s.phrase.encode() for s in HTTPStatus}


def _head(status: int, ctype: bytes, length: int, close: bool) -> bytes:
    return (b"HTTP/1.1 %d %s\r\ncontent-type: %s\r\ncontent-length: %d\r\n%s\r\n"
            % (status, _REASONS.get(status, b""), ctype, length, b"connection: close\r\n" if close else b""))


def _error(status: int, message: str) -> bytes:
    body = orjson.dumps({"error": message})
    return _head(status, JSON, len(body), True) + body


class HttpProtocol(asyncio.Protocol):
    """One client connection."""

    def __init__(self, app: App, connections: set[HttpProtocol], idle_timeout: float = IDLE_TIMEOUT) -> None:
        self.app = app
        self.connections = connections
        self.idle_timeout = idle_timeout
        self.loop = asyncio.get_running_loop()
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        # answers not yet written, in request order: bytes, or a task making them
        self.queue: deque[bytes | asyncio.Task[bytes]] = deque()
        self.closing = False
        self.stopping = False
        self.receiving = False  # between a request's first byte and its last
        self.write_paused = False  # the client is not reading its answers fast enough
        self.timer: asyncio.TimerHandle | None = None
        self._reset()

    def _reset(self) -> None:
        self.url = b""
        self.head_size = 0
        self.authorization = b""
        self.expect_continue = False
        self.body: list[bytes] = []
        self.body_size = 0

    # -- connection ------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.connections.add(self)
        self._arm(self.idle_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self.connections.discard(self)
        self.closing = True
        self._disarm()
        for item in self.queue:
            if isinstance(item, asyncio.Task):
                item.cancel()
        self.queue.clear()

    def pause_writing(self) -> None:
        # A client that pipelines requests but does not read the answers: stop reading its
        # requests until the answers drain, so the buffer of answers stays bounded.
        self.write_paused = True
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.transport is not None and not self.queue:
            self.transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(400, "protocol upgrades are not supported")
        except httptools.HttpParserError as exc:
            # a callback's exception arrives wrapped, as the context of a callback error
            refused = exc.__context__ if isinstance(exc.__context__, _Refused) else None
            self._fail(*(refused.status, refused.message) if refused else (400, "malformed HTTP request"))

    def _fail(self, status: int, message: str) -> None:
        """Answer an unreadable request (after any answers still owed) and close."""
        self.parser = httptools.HttpRequestParser(self)  # stop reading this stream
        self._enqueue(_error(status, message), close=True)

    def shutdown(self) -> None:
        """Stop: close now when idle, else once the request being read is answered."""
        self.stopping = True
        if not self.queue and not self.receiving and self.transport is not None:
            self.transport.close()

    def _arm(self, seconds: float) -> None:
        self._disarm()
        self.timer = self.loop.call_later(seconds, self._timeout)

    def _disarm(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _timeout(self) -> None:
        self.timer = None
        if self.transport is not None and not self.queue:
            self.transport.close()  # idle too long, or a request that takes too long to arrive

    # -- httptools callbacks ---------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._reset()
        self.receiving = True
        self._arm(REQUEST_TIMEOUT)

    def on_url(self, url: bytes) -> None:
        self.url += url
        self.head_size += len(url)
        if self.head_size > MAX_HEAD:
            raise _Refused(431, "the request head is too large")

    def on_header(self, name: bytes, value: bytes) -> None:
        self.head_size += len(name) + len(value)
        if self.head_size > MAX_HEAD:
            raise _Refused(431, "the request head is too large")
        lower = name.lower()
        if lower == b"authorization":
            self.authorization = value
        elif lower == b"expect" and value.lower() == b"100-continue":
            self.expect_continue = True
        elif lower == b"content-length" and value.strip().isdigit() and int(value) > self.app.max_body:
            raise _Refused(413, f"the body is larger than {self.app.max_body} bytes")  # before it arrives

    def on_headers_complete(self) -> None:
        if self.parser.should_upgrade():
            raise _Refused(400, "protocol upgrades are not supported")
        if self.expect_continue and not self.queue and self.transport is not None:
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        self.body_size += len(body)
        if self.body_size > self.app.max_body:
            raise _Refused(413, f"the body is larger than {self.app.max_body} bytes")
        self.body.append(body)

    def on_message_complete(self) -> None:
        self._disarm()
        self.receiving = False
        method = self.parser.get_method().decode("latin-1")
        # HEAD answers carry no body here: closing keeps the client from misreading the stream
        close = not self.parser.should_keep_alive() or self.stopping or method == "HEAD"
        try:
            path = httptools.parse_url(self.url).path.decode("latin-1")
        except httptools.HttpParserInvalidURLError:
            raise _Refused(400, "malformed request target") from None
        body = self.body[0] if len(self.body) == 1 else b"".join(self.body)
        result = self.app.handle(method, path, body, self.authorization)
        if isinstance(result, tuple):
            self._enqueue(_render(result, close), close)
        else:
            self._enqueue(self.loop.create_task(_rendered(result, close)), close)

    # -- answers ---------------------------------------------------------------------------------

    def _enqueue(self, item: bytes | asyncio.Task[bytes], close: bool) -> None:
        if close:
            self.closing = True
        if isinstance(item, asyncio.Task):
            item.add_done_callback(lambda _t: self._flush())
            if self.transport is not None:
                self.transport.pause_reading()  # no unbounded pipelining behind a slow answer
        self.queue.append(item)
        self._flush()

    def _flush(self) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        while self.queue:
            head = self.queue[0]
            if isinstance(head, asyncio.Task):
                if not head.done():
                    return
                data = head.result() if not head.cancelled() else _error(500, "cancelled")
            else:
                data = head
            self.queue.popleft()
            transport.write(data)
        if self.closing or self.stopping:
            transport.close()
            return
        if not self.write_paused:
            transport.resume_reading()
        self._arm(self.idle_timeout)


class _Refused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _render(reply: Reply, close: bool) -> bytes:
    status, ctype, body = reply
    return _head(status, ctype, len(body), close) + body


async def _rendered(work: Coroutine[Any, Any, Reply], close: bool) -> bytes:
    return _render(await work, close)


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop's loop when installed, else asyncio's."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()  # type: ignore[no-any-return]


async def serve(app: App, host: str, port: int, *, keep_alive: float = IDLE_TIMEOUT,
                ready: asyncio.Future[int] | None = None) -> None:
    """Serve until SIGTERM or SIGINT (or cancellation), then stop gracefully: idle connections
    close at once, requests being read or answered get :data:`STOP_GRACE` seconds to finish."""
    loop = asyncio.get_running_loop()
    connections: set[HttpProtocol] = set()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):  # not the main thread
            pass
    try:
        server = await loop.create_server(lambda: HttpProtocol(app, connections, keep_alive), host, port,
                                          reuse_address=True, backlog=1024)
    except OSError as exc:
        raise ConfigError(f"{host}:{port}", f"cannot listen: {exc.strerror or exc}",
                          "pick another --port or --host") from None
    await app.startup()
    if ready is not None:
        ready.set_result(server.sockets[0].getsockname()[1])
    try:
        await stop.wait()
    finally:
        server.close()
        for conn in list(connections):
            conn.shutdown()
        deadline = loop.time() + STOP_GRACE
        while connections and loop.time() < deadline:
            await asyncio.sleep(0.05)
        for conn in list(connections):
            if conn.transport is not None:
                conn.transport.abort()
        await app.shutdown()


def run(app: App, host: str, port: int, *, keep_alive: float = IDLE_TIMEOUT) -> None:
    """Serve ``app`` on ``host:port`` until SIGTERM or SIGINT."""
    import sys

    sys.setswitchinterval(SWITCH_INTERVAL)
    loop = new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        loop.run_until_complete(serve(app, host, port, keep_alive=keep_alive))
    finally:
        loop.close()
