"""One client connection of :mod:`modelshelf.serve.httpd`: parsing with httptools, answers in
request order, and back-pressure.

A request is answered inside the parser's ``on_message_complete`` callback when the app can
answer at once; otherwise a :class:`Pending` answer is made by one of the server's worker
threads while later pipelined requests wait behind it (their connection is not read
meanwhile).  Answers go out with one ``send`` each; what the socket does not take waits in
``out``, and past :data:`HIGH_WATER` unsent bytes the client's requests stop being read.
"""

from __future__ import annotations

import select
import socket
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

import httptools
import orjson

from modelshelf.serve.app import JSON, Reply

if TYPE_CHECKING:
    from modelshelf.serve.httpd import Server

MAX_HEAD = 64 * 1024  # request line + headers
REQUEST_TIMEOUT = 60.0  # seconds from a request's first byte to its last
HIGH_WATER = 64 * 1024  # unsent answer bytes past which a connection's requests stop being read
RECV_SIZE = 256 * 1024

READ = select.POLLIN
WRITE = select.POLLOUT
# the statuses App and this server answer with (others go without a reason phrase)
_REASONS = {100: b"Continue", 200: b"OK", 400: b"Bad Request", 401: b"Unauthorized", 403: b"Forbidden",
            404: b"Not Found", 405: b"Method Not Allowed", 413: b"Content Too Large",
            422: b"Unprocessable Content", 431: b"Request Header Fields Too Large",
            500: b"Internal Server Error", 503: b"Service Unavailable"}


def _head(status: int, ctype: bytes, length: int, close: bool) -> bytes:
    return (b"HTTP/1.1 %d %s\r\ncontent-type: %s\r\ncontent-length: %d\r\n%s\r\n"
            % (status, _REASONS.get(status, b""), ctype, length, b"connection: close\r\n" if close else b""))


def _error(status: int, message: str) -> bytes:
    body = orjson.dumps({"error": message})
    return _head(status, JSON, len(body), True) + body


def _render(reply: Reply, close: bool) -> bytes:
    status, ctype, body = reply
    return _head(status, ctype, len(body), close) + body


class _Refused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class Pending:
    """An answer a worker thread is making; ``data`` is set when it is done."""

    __slots__ = ("conn", "work", "close", "data")

    def __init__(self, conn: Connection, work: Callable[[], Reply], close: bool) -> None:
        self.conn = conn
        self.work = work
        self.close = close
        self.data: bytes | None = None

    def run(self) -> None:
        try:
            reply = self.work()
        except Exception as exc:  # noqa: BLE001 - the app maps its errors; this is a last resort
            reply = 500, JSON, orjson.dumps({"error": f"internal error: {type(exc).__name__}"})
        self.data = _render(reply, self.close)


class Connection:
    """One client connection: its parser, the answers it is owed, and what is not yet sent."""

    def __init__(self, server: Server, sock: socket.socket) -> None:
        self.server = server
        self.app = server.app
        self.sock: socket.socket | None = sock
        self.fd = sock.fileno()
        self.parser = httptools.HttpRequestParser(self)
        # answers not yet sent, in request order: bytes, or a Pending being made
        self.queue: deque[bytes | Pending] = deque()
        self.out = bytearray()  # bytes of answers the socket has not taken yet
        self.mask = 0  # what the poller watches for
        self.reading = True
        self.closing = False  # close once the answers owed are sent
        self.receiving = False  # between a request's first byte and its last
        self.deadline = server.now + server.idle_timeout
        self._reset()

    def _reset(self) -> None:
        self.url = b""
        self.head_size = 0
        self.authorization = b""
        self.expect_continue = False
        self.body: list[bytes] = []
        self.body_size = 0

    # -- events ----------------------------------------------------------------------------------

    def on_event(self, events: int) -> None:
        if events & WRITE and self.out:
            self._send_out()
        if self.sock is None:
            return
        if events & READ:
            self._receive()  # an error or hang-up shows there too, as a failed or empty read
        elif events & (select.POLLERR | select.POLLHUP):
            self.abort()  # while its requests are not being read

    def _receive(self) -> None:
        assert self.sock is not None
        try:
            # Into the server's one buffer: recv() would map and unmap a fresh RECV_SIZE block
            # for every read, and each unmap flushes the TLB (an IPI to the other CPUs).
            n = self.sock.recv_into(self.server.recv_buffer)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self.abort()
            return
        if not n:
            self.abort()  # the client went away; its unanswered requests go with it
            return
        self.feed(self.server.recv_view[:n])  # httptools hands callbacks copies, not the buffer

    def feed(self, data: bytes | memoryview) -> None:
        """Parse ``data`` as if read off the socket."""
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
        if self.reading and self.sock is not None:
            self._receive()  # a request that has arrived but not been read yet is in progress too
        if self.sock is not None and not self.queue and not self.out and not self.receiving:
            self.abort()

    def expire(self) -> None:
        """The deadline passed: an idle connection, or a request too slow to arrive or be read."""
        if self.receiving or not (self.queue or self.out):
            self.abort()
        elif not self.queue:  # answered, but the client is not reading: one more period, then go
            if self.closing:
                self.abort()
            else:
                self.closing = True
                self.deadline = self.server.now + self.server.idle_timeout
        else:
            self.deadline = self.server.now + self.server.idle_timeout  # a worker is making an answer

    def abort(self) -> None:
        if self.sock is None:
            return
        self.server.forget(self)
        try:
            self.sock.close()
        finally:
            self.sock = None
            self.closing = True
            self.queue.clear()

    # -- httptools callbacks ---------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._reset()
        self.receiving = True
        self.deadline = self.server.now + REQUEST_TIMEOUT

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
        if self.expect_continue and not self.queue and not self.out:
            self._write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        self.body_size += len(body)
        if self.body_size > self.app.max_body:
            raise _Refused(413, f"the body is larger than {self.app.max_body} bytes")
        self.body.append(body)

    def on_message_complete(self) -> None:
        self.receiving = False
        method = self.parser.get_method().decode("latin-1")
        # HEAD answers carry no body here: closing keeps the client from misreading the stream
        close = not self.parser.should_keep_alive() or self.server.stopping or method == "HEAD"
        try:
            path = httptools.parse_url(self.url).path.decode("latin-1")
        except httptools.HttpParserInvalidURLError:
            raise _Refused(400, "malformed request target") from None
        body = self.body[0] if len(self.body) == 1 else b"".join(self.body)
        result = self.app.handle(method, path, body, self.authorization)
        if type(result) is tuple:
            self._enqueue(_render(result, close), close)
        else:
            pending = Pending(self, result, close)  # type: ignore[arg-type]
            self._enqueue(pending, close)
            self.server.submit(pending)

    # -- answers ---------------------------------------------------------------------------------

    def _enqueue(self, item: bytes | Pending, close: bool) -> None:
        if close:
            self.closing = True
        self.queue.append(item)
        self.flush()

    def flush(self) -> None:
        """Send the answers that are ready, in order; then read on, or close."""
        q = self.queue
        while q:
            head = q[0]
            if type(head) is not bytes:
                data = head.data  # type: ignore[union-attr]
                if data is None:
                    break
            else:
                data = head
            q.popleft()
            self._write(data)
            if self.sock is None:
                return
        if self.sock is None:
            return
        if q:  # a slow answer holds up the rest: no unbounded pipelining behind it
            self._watch(False)
            self.deadline = self.server.now + REQUEST_TIMEOUT
        elif self.out:
            self._watch(len(self.out) <= HIGH_WATER and not self.closing)
        elif self.closing or self.server.stopping:
            self.abort()
        else:
            self._watch(True)
            self.deadline = self.server.now + self.server.idle_timeout

    def _write(self, data: bytes) -> None:
        assert self.sock is not None
        if self.out:
            self.out += data
            return
        try:
            sent = self.sock.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            self.abort()
            return
        if sent < len(data):
            self.out += memoryview(data)[sent:]

    def _send_out(self) -> None:
        assert self.sock is not None
        try:
            sent = self.sock.send(self.out)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self.abort()
            return
        del self.out[:sent]
        self.flush()

    def _watch(self, read: bool) -> None:
        self.reading = read
        mask = (READ if read else 0) | (WRITE if self.out else 0)
        if mask != self.mask:
            self.server.watch(self, mask)
