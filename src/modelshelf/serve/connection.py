"""One client connection of :mod:`modelshelf.serve.httpd`: parsing with httptools, answers in
request order, back-pressure, and a bounded amount of memory whatever the client sends.

A request is answered inside the parser's ``on_message_complete`` callback when the app can
answer at once; otherwise a :class:`Pending` answer is made by one of the server's worker
threads.  Answers go out with one ``send`` each; what the socket does not take waits in
``out``.

What one connection may hold, whatever the client does (the numbers are the constants below):

* unsent answers: up to :data:`HIGH_WATER` bytes plus the one answer that crossed it;
* requests parsed but not yet answered (pipelined behind a slow answer, or behind a client
  that does not read): at most those that began within one :data:`SLICE` of input, kept as
  the request itself, never as a rendered answer;
* input read but not yet parsed: less than :data:`RECV_SIZE` bytes; the socket is not read
  again until it is parsed;
* the request being received: its head (:data:`MAX_HEAD`) and body (the app's ``max_body``);
* at most one answer being made by a worker thread.

Once a connection is closing nothing more is parsed on it, and nothing is written after its
last answer; a closing connection sends its last answer, half-closes and discards what the
client still sends for up to :data:`LINGER` seconds, so that the answer is not lost to a reset.
"""

from __future__ import annotations

import logging
import select
import socket
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

import httptools
import orjson

from modelshelf.serve.app import JSON, Reply, allowed

if TYPE_CHECKING:
    from modelshelf.serve.httpd import Server

MAX_HEAD = 64 * 1024  # every byte of a request head: request line, headers, whitespace
REQUEST_TIMEOUT = 60.0  # seconds from a request's first byte to its last
HIGH_WATER = 64 * 1024  # unsent answer bytes past which requests are kept unanswered and unread
RECV_SIZE = 256 * 1024  # one read
SLICE = 4 * 1024  # input parsed between checks of the connection's budget (and head-size steps)
LINGER = 2.0  # seconds a closed connection discards late input before it is closed for good
SLOW_REQUEST = 1.0  # a request still arriving after this long may be evicted when the server is full

READ = select.POLLIN
WRITE = select.POLLOUT
HANGUP = select.POLLERR | select.POLLHUP
# the statuses App and this server answer with (others go without a reason phrase)
_REASONS = {100: b"Continue", 200: b"OK", 400: b"Bad Request", 401: b"Unauthorized", 403: b"Forbidden",
            404: b"Not Found", 405: b"Method Not Allowed", 408: b"Request Timeout",
            413: b"Content Too Large", 422: b"Unprocessable Content", 431: b"Request Header Fields Too Large",
            500: b"Internal Server Error", 503: b"Service Unavailable"}
_REQUEST_LINE = 16  # what a request line has beside its target: method, spaces, version, CRLF
_HEADER_LINE = 4  # what a header line has beside its name and value: ": " and CRLF
_access = logging.getLogger("modelshelf.serve.access")


def _head(status: int, ctype: bytes, length: int, close: bool) -> bytes:
    return (b"HTTP/1.1 %d %s\r\ncontent-type: %s\r\ncontent-length: %d\r\n%s\r\n"
            % (status, _REASONS.get(status, b""), ctype, length, b"connection: close\r\n" if close else b""))


def _render(reply: Reply, close: bool, head_only: bool = False, path: str = "") -> bytes:
    status, ctype, body = reply
    if status == 405:  # RFC 9110: a 405 names the methods the target takes
        extra = b"allow: %s\r\n" % allowed(path)
        head = (b"HTTP/1.1 405 Method Not Allowed\r\ncontent-type: %s\r\ncontent-length: %d\r\n%s%s\r\n"
                % (ctype, len(body), extra, b"connection: close\r\n" if close else b""))
    else:
        head = _head(status, ctype, len(body), close)
    return head if head_only else head + body


def error_answer(status: int, message: str) -> bytes:
    """A whole ``connection: close`` answer with a JSON error body."""
    body = orjson.dumps({"error": message})
    return _head(status, JSON, len(body), True) + body


class _Refused(Exception):
    """Raised in a parser callback: answer ``status`` and close."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class _Stop(Exception):
    """Raised in a parser callback: the connection is closing, parse nothing more."""


class Request:
    """A parsed request whose answer waits for those ahead of it (or for the client to read)."""

    __slots__ = ("method", "path", "body", "authorization", "close", "head_only", "started", "key",
                 "inference_header")

    def __init__(self, method: str, path: str, body: bytes, authorization: bytes, close: bool,
                 head_only: bool, started: float, key: bytes = b"", inference_header: bytes = b"") -> None:
        self.method, self.path, self.body, self.authorization = method, path, body, authorization
        self.close, self.head_only, self.started, self.key = close, head_only, started, key
        self.inference_header = inference_header


class Pending:
    """An answer a worker thread is making; ``data`` is set when it is done."""

    __slots__ = ("conn", "work", "request", "data", "status", "length")

    def __init__(self, conn: Connection, work: Callable[[], Reply], request: Request) -> None:
        self.conn = conn
        self.work = work
        self.request = request
        self.data: bytes | None = None
        self.status = 0
        self.length = 0

    def run(self) -> None:
        try:
            reply = self.work()
        except Exception as exc:  # noqa: BLE001 - the app maps its errors; this is a last resort
            logging.getLogger("modelshelf.serve").exception("answer to %s %s failed", self.request.method,
                                                            self.request.path)
            reply = 500, JSON, orjson.dumps({"error": f"internal error: {type(exc).__name__}"})
        r = self.request
        self.status, self.length = reply[0], len(reply[2])
        self.data = _render(reply, r.close, r.head_only, r.path)


class Connection:
    """One client connection: its parser, the answers it is owed, and what is not yet sent."""

    def __init__(self, server: Server, sock: socket.socket) -> None:
        self.server = server
        self.app = server.app
        self.sock: socket.socket | None = sock
        self.fd = sock.fileno()
        self.parser = httptools.HttpRequestParser(self)
        # owed, in request order: rendered answers (bytes), answers being made (Pending) and
        # requests not yet answered (Request)
        self.queue: deque[bytes | Pending | Request] = deque()
        self.out = bytearray()  # bytes of answers the socket has not taken yet
        self.rest = b""  # input read but not parsed yet (the connection was over its budget)
        self.mask = 0  # what the poller watches for
        self.reading = True  # the socket is being read
        self.closing = False  # nothing more is parsed; close once the answers owed are sent
        self.eof = False  # the client has sent all it will (a half-close or a close)
        self.draining = False  # closed for writing; late input is read and discarded
        self.receiving = False  # between a request's first byte and its last
        self.in_head = False  # between a request's first byte and the end of its head
        self.started = server.now  # when the request being received began
        self.deadline = server.now + server.idle_timeout
        self.peer = ""
        self._reset()

    def _reset(self) -> None:
        self.url = b""
        self.head_size = 0  # head bytes the callbacks saw (canonical spacing)
        self.head_raw = 0  # head bytes fed while the head was incomplete (all spacing, per SLICE)
        self.authorization = b""
        self.key = b""  # the canary's routing header (App.key_header), when it has one
        self.inference_header = b""  # Inference-Header-Content-Length (a binary v2 inference), when it has one
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
        elif events & HANGUP:
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
        if self.draining:
            if not n:
                self.abort()
            return
        if not n:
            self.eof = True  # answer what has arrived, then close
            if self.receiving or not (self.queue or self.out or self.rest):
                self.abort()  # nothing owed, or a request that can no longer be completed
            else:
                self.flush()
            return
        self.feed(self.server.recv_view[:n])  # httptools hands callbacks copies, not the buffer

    def feed(self, data: bytes | memoryview) -> None:
        """Parse ``data`` as if read off the socket, then send what is ready."""
        self._parse(data)
        self._settle()

    def _parse(self, data: bytes | memoryview) -> None:
        """Parse ``data`` in slices; stop, keeping the remainder in ``rest``, once the answers
        owed reach the connection's budget or the connection is closing."""
        n = len(data)
        pos = 0
        while pos < n and not self.closing:
            if self.queue or len(self.out) > HIGH_WATER:
                self.rest = bytes(data[pos:])  # one copy, at most a read's worth
                return
            end = pos + SLICE
            chunk = data[pos:end] if pos or end < n else data
            try:
                self.parser.feed_data(chunk)
            except httptools.HttpParserUpgrade:
                if not self.closing:
                    self._fail(400, "protocol upgrades are not supported")
            except httptools.HttpParserError as exc:
                # a callback's exception arrives wrapped, as the context of a callback error
                cause = exc.__context__
                if self.closing:
                    return  # input after the last request (llhttp refuses data after a close)
                if isinstance(cause, _Refused):
                    self._fail(cause.status, cause.message)
                elif isinstance(cause, _Stop):
                    return
                elif isinstance(exc, httptools.HttpParserCallbackError) and cause is not None:
                    raise cause  # a bug: the server logs it and closes this connection
                else:
                    self._fail(400, "malformed HTTP request")
                return
            if self.in_head:  # a head still arriving: count every byte, spacing too, to within a slice
                self.head_raw += len(chunk)
                if self.head_raw > MAX_HEAD:
                    self._fail(431, "the request head is too large")
                    return
            pos = end

    def _fail(self, status: int, message: str) -> None:
        """Answer an unreadable request (after any answers still owed) and close."""
        self.closing = True
        self.rest = b""
        self.receiving = False
        data = error_answer(status, message)
        if self.sock is None:
            return
        if self.queue:
            self.queue.append(data)
        else:
            self._write(data)
        if self.server.access is not None:
            self._log("-", "-", status, len(data) - data.index(b"\r\n\r\n") - 4, self.started)

    def shutdown(self) -> None:
        """Stop: close now when idle, else once the request being read is answered."""
        if self.reading and self.sock is not None and not self.draining:
            self._receive()  # a request that has arrived but not been read yet is in progress too
        if self.sock is not None and (self.draining or not (self.queue or self.out or self.rest
                                                              or self.receiving)):
            self.abort()

    def expire(self) -> None:
        """The deadline passed: an idle connection, a request too slow to arrive or be read, a
        client that does not read its answers, or the end of a lingering close."""
        now = self.server.now
        if self.draining or self.receiving or not (self.queue or self.out or self.rest):
            self.abort()
        elif self.queue and type(self.queue[0]) is Pending and self.queue[0].data is None:
            self.deadline = now + REQUEST_TIMEOUT  # a worker is making an answer
        elif self.closing:
            self.abort()  # a second period without reading its answers
        else:  # answered, but the client is not reading: one more period, then go
            self.closing = True
            self.deadline = now + self.server.idle_timeout

    def abort(self) -> None:
        """Close now, dropping whatever is owed."""
        if self.sock is None:
            return
        sock = self.sock
        self.sock = None
        self.closing = True
        self.queue.clear()
        self.rest = b""
        self.out.clear()
        self.server.forget(self)
        sock.close()

    def _close(self) -> None:
        """Every answer is sent: half-close, and discard what the client still sends a while
        (closing with unread input would reset the connection and could lose the answer)."""
        assert self.sock is not None
        if self.eof:
            self.abort()
            return
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self.abort()
            return
        self.draining = True
        self.reading = True
        self.deadline = self.server.now + LINGER
        if self.mask != READ:
            self.server.watch(self, READ)

    def evictable(self, now: float) -> int:
        """How readily this connection can be closed to make room: 3 lingering, 2 idle,
        1 a request still arriving after :data:`SLOW_REQUEST` seconds, 0 not."""
        if self.sock is None or self.draining:
            return 3
        if self.queue or self.out or self.rest:
            return 0
        if not self.receiving:
            return 2
        return 1 if now - self.started > SLOW_REQUEST else 0

    # -- httptools callbacks ---------------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self.closing:
            raise _Stop
        self._reset()
        self.receiving = True
        self.in_head = True
        self.started = self.server.now
        self.deadline = self.started + REQUEST_TIMEOUT

    def on_url(self, url: bytes) -> None:
        self.url += url
        self.head_size += len(url) if self.head_size else len(url) + _REQUEST_LINE
        if self.head_size > MAX_HEAD:
            raise _Refused(431, "the request head is too large")

    def on_header(self, name: bytes, value: bytes) -> None:
        self.head_size += len(name) + len(value) + _HEADER_LINE
        if self.head_size > MAX_HEAD:
            raise _Refused(431, "the request head is too large")
        lower = name.lower()
        if lower == b"authorization":
            self.authorization = value
        elif lower == self.app.key_header:
            self.key = value
        elif lower == b"inference-header-content-length":  # given twice: a list, refused by the app
            self.inference_header = value if not self.inference_header else self.inference_header + b", " + value
        elif lower == b"expect" and value.lower() == b"100-continue":
            self.expect_continue = True
        elif lower == b"content-length" and value.strip().isdigit() and int(value) > self.app.max_body:
            raise _Refused(413, f"the body is larger than {self.app.max_body} bytes")  # before it arrives

    def on_headers_complete(self) -> None:
        self.in_head = False
        if self.parser.should_upgrade():
            raise _Refused(400, "protocol upgrades are not supported")
        if self.expect_continue and not self.queue and not self.out and self.sock is not None:
            self._write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        self.body_size += len(body)
        if self.body_size > self.app.max_body:
            raise _Refused(413, f"the body is larger than {self.app.max_body} bytes")
        self.body.append(body)

    def on_message_complete(self) -> None:
        if self.sock is None:
            raise _Stop
        self.receiving = False
        method = self.parser.get_method()
        close = not self.parser.should_keep_alive() or self.server.stopping
        try:
            path = httptools.parse_url(self.url).path.decode("latin-1")
        except httptools.HttpParserInvalidURLError:
            raise _Refused(400, "malformed request target") from None
        body = self.body[0] if len(self.body) == 1 else b"".join(self.body)
        if close:
            self.closing = True  # nothing after this request is parsed
        head_only = method == b"HEAD"  # answered as GET, without the body
        name = "GET" if head_only else method.decode("latin-1")
        if self.queue or len(self.out) > HIGH_WATER:  # answered when those ahead are sent
            self.queue.append(Request(name, path, body, self.authorization, close, head_only, self.started,
                                      self.key, self.inference_header))
            return
        result = self._handle(name, path, body, self.authorization, self.key, self.inference_header)
        if type(result) is tuple and not head_only:  # the common case, inline
            status, ctype, data = result  # type: ignore[misc]
            self._write((_head(status, ctype, len(data), close) if status != 405
                         else _render(result, close, True, path)) + data)  # type: ignore[arg-type]
            if self.server.access is not None:
                self._log(name, path, status, len(data), self.started)
        else:
            self._answered(Request(name, path, body, self.authorization, close, head_only, self.started, self.key,
                                   self.inference_header), result)

    # -- answers ---------------------------------------------------------------------------------

    def _handle(self, method: str, path: str, body: bytes, authorization: bytes, key: bytes,
                inference_header: bytes) -> Reply | Callable[[], Reply]:
        """``App.handle``, given ``inference_header`` only when the request has one (so an app
        overriding ``handle`` with the arguments it had before still serves everything else)."""
        if inference_header:
            return self.app.handle(method, path, body, authorization, key, inference_header=inference_header)
        return self.app.handle(method, path, body, authorization, key)

    def _answer(self, r: Request) -> None:
        self._answered(r, self._handle(r.method, r.path, r.body, r.authorization, r.key, r.inference_header))

    def _answered(self, r: Request, result: Reply | Callable[[], Reply]) -> None:
        if type(result) is tuple:
            data = _render(result, r.close, r.head_only, r.path)  # type: ignore[arg-type]
            self._write(data)
            if self.server.access is not None:
                self._log("HEAD" if r.head_only else r.method, r.path, result[0], len(result[2]),  # type: ignore[index]
                          r.started)
        else:
            pending = Pending(self, result, r)  # type: ignore[arg-type]
            self.queue.appendleft(pending)  # the oldest answer owed
            self.server.submit(pending)

    def flush(self) -> None:
        """Send the answers that are ready, in order, answer the requests waiting behind them
        while there is room, parse held input; then read on, or close."""
        q = self.queue
        while True:
            while q and self.sock is not None:
                head = q[0]
                kind = type(head)
                if kind is Pending:
                    data = head.data  # type: ignore[union-attr]
                    if data is None:
                        break
                    q.popleft()
                    self._write(data)
                    if self.server.access is not None:
                        r = head.request  # type: ignore[union-attr]
                        self._log("HEAD" if r.head_only else r.method, r.path, head.status,  # type: ignore[union-attr]
                                  head.length, r.started)  # type: ignore[union-attr]
                elif kind is bytes:
                    q.popleft()
                    self._write(head)  # type: ignore[arg-type]
                elif len(self.out) > HIGH_WATER:
                    break
                else:
                    q.popleft()
                    self._answer(head)  # type: ignore[arg-type]
            if not self.rest or q or len(self.out) > HIGH_WATER or self.closing or self.sock is None:
                break
            rest, self.rest = self.rest, b""
            self._parse(rest)
        self._settle()

    def _settle(self) -> None:
        """Watch the socket for what comes next, or close."""
        if self.sock is None:
            return
        if self.queue and type(self.queue[0]) is not Request:
            self._watch(False)  # a slow answer holds up the rest
            self.deadline = self.server.now + REQUEST_TIMEOUT
        elif self.queue or self.rest or len(self.out) > HIGH_WATER:
            self._watch(False)  # the client is not reading its answers
            if not self.receiving:
                self.deadline = self.server.now + self.server.idle_timeout
        elif self.out:
            self._watch(not (self.closing or self.eof))
            if not self.receiving:
                self.deadline = self.server.now + self.server.idle_timeout
        elif self.closing or self.eof or self.server.stopping:
            if self.draining:
                return
            if self.receiving and not self.closing and not self.eof:
                self._watch(True)  # stopping: the request being read finishes first
                return
            self._close()
        else:
            if not self.reading or self.mask != READ:
                self._watch(True)
            if not self.receiving:
                self.deadline = self.server.now + self.server.idle_timeout

    def _write(self, data: bytes) -> None:
        sock = self.sock
        if sock is None:
            return
        if self.out:
            self.out += data
            return
        try:
            sent = sock.send(data)
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
        if self.sock is None:
            return
        read = read and not self.eof
        self.reading = read
        mask = (READ if read else 0) | (WRITE if self.out else 0)
        if mask != self.mask:
            self.server.watch(self, mask)

    def _log(self, method: str, path: str, status: int, size: int, started: float) -> None:
        if not self.peer:
            self.peer = self.server.peer_of(self)
        cur = self.app.holder.current
        ms = (time.monotonic() - started) * 1000
        _access.info('%s - "%s %s" %d %d %.2fms', self.peer, method, path, status, size, ms,
                     extra={"client": self.peer, "method": method, "path": path, "status": status,
                            "bytes": size, "duration_ms": round(ms, 3),
                            "version": cur.version if cur is not None else None})
