"""A small HTTP/1.1 server for :class:`App`: one thread polling non-blocking sockets, and httptools.

Why not asyncio or a general ASGI server: a one-row prediction costs tens of microseconds,
and a general server spends more than that per request (a task, ASGI messages, two writes);
importing asyncio alone takes 25-40 ms of a ~0.2 s cold start.  Here a request is parsed by
httptools, answered synchronously in the parser's callback, and written with one ``send``.
Answers that take longer (large batches, reloads) are made by worker threads and handed back
through a wake-up socket, so the loop keeps answering meanwhile.

HTTP/1.1 keep-alive and pipelining (answers in request order), chunked request bodies,
``Expect: 100-continue``, limits on the request head and body, back-pressure on clients that
do not read their answers, an idle timeout, and a graceful stop on SIGTERM/SIGINT that lets
requests in progress finish.

Busy polling: after it has answered, the loop polls without blocking for up to ``busy_poll``
seconds before it sleeps.  A CPU that has just gone idle (a virtual CPU halted by its host)
runs the next request's work two to four times slower than a busy one; a short spin keeps it
busy across the gap between a client's requests.  It costs CPU only while requests come in
faster than the spin is long (``--busy-poll 0`` turns it off).
"""

from __future__ import annotations

import errno
import select
import signal
import socket
import sys
import threading
import time
from collections import deque
from collections.abc import Callable

import httptools
import orjson

from modelshelf.errors import ConfigError
from modelshelf.serve.app import JSON, App, Reply

MAX_HEAD = 64 * 1024  # request line + headers
IDLE_TIMEOUT = 5.0  # seconds a keep-alive connection may wait for its next request
REQUEST_TIMEOUT = 60.0  # seconds from a request's first byte to its last
STOP_GRACE = 5.0  # seconds requests in progress get to finish on SIGTERM
BUSY_POLL = 0.0002  # seconds of polling without sleeping after an answer
HIGH_WATER = 64 * 1024  # unsent answer bytes past which a connection's requests stop being read
RECV_SIZE = 256 * 1024
WORKERS = 4  # threads for slow answers
SWEEP = 0.05  # seconds between checks of the connections' deadlines
# A reload verifies and builds the next version in a worker thread; with Python's default
# 5 ms switch interval the loop can wait that long for the GIL, which is what the slowest
# requests during a hot swap would pay.
SWITCH_INTERVAL = 0.0005

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
            data = self.sock.recv(RECV_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self.abort()
            return
        if not data:
            self.abort()  # the client went away; its unanswered requests go with it
            return
        self.feed(data)

    def feed(self, data: bytes) -> None:
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


class Server:
    """The loop: listeners, connections, worker threads and the stop."""

    def __init__(self, app: App, listeners: list[socket.socket] | None = None, *,
                 keep_alive: float = IDLE_TIMEOUT, busy_poll: float = BUSY_POLL, workers: int = WORKERS) -> None:
        self.app = app
        self.idle_timeout = keep_alive
        self.busy_poll = busy_poll
        self.now = time.monotonic()
        self.poller = select.epoll() if hasattr(select, "epoll") else select.poll()  # type: ignore[attr-defined]
        self._ms = not hasattr(select, "epoll")  # poll() takes milliseconds, epoll seconds
        self.connections: dict[int, Connection] = {}
        self.listeners: dict[int, socket.socket] = {}
        self.stopping = False
        self.stop_requested = False
        self._wake_r, self._wake_w = socket.socketpair()
        for s in (self._wake_r, self._wake_w):
            s.setblocking(False)
        self.poller.register(self._wake_r.fileno(), READ)
        self._done: deque[Pending] = deque()  # answers workers have finished
        self._jobs: deque[Pending | None] = deque()
        self._job_ready = threading.Semaphore(0)
        self._threads: list[threading.Thread] = []
        self._workers = workers
        for sock in listeners or []:
            sock.setblocking(False)
            self.listeners[sock.fileno()] = sock
            self.poller.register(sock.fileno(), READ)

    @property
    def wake_fd(self) -> int:
        """A file descriptor whose writes wake the loop (for ``signal.set_wakeup_fd``)."""
        return self._wake_w.fileno()

    @property
    def port(self) -> int:
        """The port of the first listener (useful after binding port 0)."""
        return int(next(iter(self.listeners.values())).getsockname()[1])

    # -- connections -----------------------------------------------------------------------------

    def adopt(self, sock: socket.socket) -> Connection:
        """Serve an accepted (or otherwise connected) socket."""
        sock.setblocking(False)
        if sock.family != socket.AF_UNIX:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn = Connection(self, sock)
        self.connections[conn.fd] = conn
        self.watch(conn, READ)
        return conn

    def watch(self, conn: Connection, mask: int) -> None:
        if conn.mask == 0:
            self.poller.register(conn.fd, mask)
        elif mask == 0:
            self.poller.unregister(conn.fd)
        else:
            self.poller.modify(conn.fd, mask)
        conn.mask = mask

    def forget(self, conn: Connection) -> None:
        if conn.mask:
            self.poller.unregister(conn.fd)
            conn.mask = 0
        self.connections.pop(conn.fd, None)

    def _accept(self, listener: socket.socket) -> None:
        for _ in range(64):  # a burst of connections, but not forever
            try:
                sock, _addr = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM, errno.ECONNABORTED):
                    return  # try again on the next event
                raise
            self.adopt(sock)

    # -- worker threads --------------------------------------------------------------------------

    def submit(self, pending: Pending) -> None:
        self._jobs.append(pending)
        self._job_ready.release()
        if len(self._threads) < self._workers:
            t = threading.Thread(target=self._work, name=f"shelf-worker-{len(self._threads)}", daemon=True)
            t.start()
            self._threads.append(t)

    def _work(self) -> None:
        while True:
            self._job_ready.acquire()
            job = self._jobs.popleft()
            if job is None:
                return
            job.run()
            self._done.append(job)
            self.wake()

    def wake(self) -> None:
        """Make the loop look at its queues now (from any thread)."""
        try:
            self._wake_w.send(b"\0")
        except (BlockingIOError, InterruptedError):
            pass  # the loop has a wake-up pending already

    def _woken(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except (BlockingIOError, InterruptedError):
            pass
        while self._done:
            job = self._done.popleft()
            if job.conn.sock is not None:
                job.conn.flush()

    # -- the loop --------------------------------------------------------------------------------

    def poll_once(self, timeout: float) -> int:
        """Wait up to ``timeout`` seconds (-1: no limit) for events and handle them; how many."""
        try:
            events = self.poller.poll(timeout * 1000 if self._ms and timeout > 0 else timeout)
        except InterruptedError:
            events = []
        self.now = time.monotonic()
        conns = self.connections
        wake = self._wake_r.fileno()
        for fd, ev in events:
            conn = conns.get(fd)
            if conn is not None:
                conn.on_event(ev)
            elif fd == wake:
                self._woken()
            elif fd in self.listeners:
                self._accept(self.listeners[fd])
        return len(events)

    def request_stop(self) -> None:
        """Begin a graceful stop (from a signal handler or another thread)."""
        self.stop_requested = True
        self.wake()

    def serve_forever(self) -> None:
        """Serve until :meth:`request_stop`; then close idle connections at once and give
        requests in progress :data:`STOP_GRACE` seconds to finish."""
        spin_until = 0.0
        next_sweep = self.now + SWEEP
        stop_deadline = 0.0
        while True:
            if self.stop_requested and not self.stopping:
                self._begin_stop()
                stop_deadline = self.now + STOP_GRACE
            if self.stopping and (not self.connections or self.now > stop_deadline):
                break
            if self.now < spin_until:
                handled = self.poll_once(0)
            else:
                handled = self.poll_once(max(0.0, next_sweep - self.now) if self.connections or self.stopping
                                         else -1)
            if handled and self.busy_poll > 0:
                spin_until = self.now + self.busy_poll
            if self.now >= next_sweep:
                next_sweep = self.now + SWEEP
                for conn in [c for c in self.connections.values() if c.deadline <= self.now]:
                    conn.expire()
        for conn in list(self.connections.values()):
            conn.abort()

    def _begin_stop(self) -> None:
        self.stopping = True
        for fd, sock in self.listeners.items():
            self._accept(sock)  # connections in the backlog are closed cleanly, not reset
            self.poller.unregister(fd)
            sock.close()
        self.listeners.clear()
        for conn in list(self.connections.values()):
            conn.shutdown()

    def close(self) -> None:
        """Release the sockets, the poller and the worker threads."""
        for _ in self._threads:
            self._jobs.append(None)
            self._job_ready.release()
        for sock in (*self.listeners.values(), self._wake_r, self._wake_w):
            sock.close()
        self.listeners.clear()
        self.poller.close()


def listen(host: str, port: int, backlog: int = 1024) -> list[socket.socket]:
    """Listening sockets for ``host:port`` (every address the host resolves to)."""
    try:
        # an ASCII host as bytes: getaddrinfo need not load the IDNA codec
        name = (host.encode() if host.isascii() else host) or None
        infos = socket.getaddrinfo(name, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError as exc:
        raise ConfigError(f"{host}:{port}", f"cannot listen: {exc.strerror or exc}",
                          "pick another --port or --host") from None
    out: list[socket.socket] = []
    try:
        for family, kind, proto, _name, addr in dict.fromkeys(infos):
            if out:  # the port the first address got, when asked for any (port 0)
                addr = (addr[0], port, *addr[2:])
            sock = socket.socket(family, kind, proto)
            out.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(addr)
            sock.listen(backlog)
            port = sock.getsockname()[1]
    except OSError as exc:
        for sock in out:
            sock.close()
        raise ConfigError(f"{host}:{port}", f"cannot listen: {exc.strerror or exc}",
                          "pick another --port or --host") from None
    return out


def run(app: App, host: str, port: int, *, keep_alive: float = IDLE_TIMEOUT, busy_poll: float = BUSY_POLL) -> None:
    """Serve ``app`` on ``host:port`` until SIGTERM or SIGINT."""
    server = Server(app, listen(host, port), keep_alive=keep_alive, busy_poll=busy_poll)
    sys.setswitchinterval(SWITCH_INTERVAL)
    # A signal may land on any thread: its byte on the wake-up socket gets the loop out of poll,
    # and the handler then runs on this (the main) thread.
    wakeup = signal.set_wakeup_fd(server.wake_fd)
    previous = {sig: signal.signal(sig, lambda _s, _f: server.request_stop()) for sig in (signal.SIGTERM,
                                                                                          signal.SIGINT)}
    app.startup()
    try:
        server.serve_forever()
    finally:
        app.shutdown()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        signal.set_wakeup_fd(wakeup)
        server.close()
