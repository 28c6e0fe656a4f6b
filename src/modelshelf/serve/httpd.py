"""A small HTTP/1.1 server for :class:`App`: one thread polling non-blocking sockets, and httptools.

Why not asyncio or a general ASGI server: a one-row prediction costs tens of microseconds,
and a general server spends more than that per request (a task, ASGI messages, two writes);
importing asyncio alone takes 25-40 ms of a ~0.2 s cold start.  Here a request is parsed by
httptools, answered synchronously in the parser's callback, and written with one ``send``
(:mod:`modelshelf.serve.connection`).  Answers that take longer (large batches, reloads) are
made by worker threads and handed back through a wake-up socket, so the loop keeps answering
meanwhile.

HTTP/1.1 keep-alive and pipelining (answers in request order), chunked request bodies,
``Expect: 100-continue``, limits on the request head and body, back-pressure on clients that
do not read their answers, an idle timeout, and a graceful stop on SIGTERM/SIGINT that lets
requests in progress finish.
"""

from __future__ import annotations

import errno
import logging
import select
import signal
import socket
import sys
import threading
import time
from collections import deque
from typing import Any

from modelshelf.errors import ConfigError
from modelshelf.serve.app import App
from modelshelf.serve.connection import READ, RECV_SIZE, Connection, Pending

log = logging.getLogger("modelshelf.serve")

IDLE_TIMEOUT = 5.0  # seconds a keep-alive connection may wait for its next request
STOP_GRACE = 5.0  # seconds requests in progress get to finish on SIGTERM
WORKERS = 4  # threads for slow answers
SWEEP = 0.05  # seconds between checks of the connections' deadlines
# Connections taken per wake-up of a listener.  Workers sharing one listening socket take one
# each: a worker accepting a burst would take every connection a client opens at once.
ACCEPT_BURST = 64
ACCEPT_PAUSE = 0.25  # seconds a listener rests when the process is out of file descriptors
DEFER = 0.002  # seconds a worker holding more connections than a sibling leaves new ones to it
MAX_DEFERS = 5  # times in a row at most: a sibling that is stuck delays a connection 10 ms at most
MAX_CONNECTIONS = 1000  # open client connections; past it the least useful one makes room
FULL_WARNING = 10.0  # seconds between two warnings that the server is full
# A reload verifies and builds the next version in a worker thread; with Python's default
# 5 ms switch interval the loop can wait that long for the GIL, which is what the slowest
# requests during a hot swap would pay.
SWITCH_INTERVAL = 0.0005


class Server:
    """The loop: listeners, connections, worker threads and the stop."""

    def __init__(self, app: App, listeners: list[socket.socket] | None = None, *,
                 keep_alive: float = IDLE_TIMEOUT, workers: int = WORKERS,
                 max_connections: int = MAX_CONNECTIONS, access_log: bool = False,
                 accept_burst: int = ACCEPT_BURST, balance: Any = None) -> None:
        self.app = app
        self.accept_burst = accept_burst
        self.balance = balance  # with --workers: the siblings' connection counts (workers.Shares)
        self._defers = 0  # in a row, since this worker last accepted
        self.idle_timeout = keep_alive
        self.max_connections = _descriptor_bound(max_connections)
        self.access = logging.getLogger("modelshelf.serve.access") if access_log else None
        self._warned_full = -FULL_WARNING
        self.now = time.monotonic()
        self.poller = select.epoll() if hasattr(select, "epoll") else select.poll()  # type: ignore[attr-defined]
        self._ms = not hasattr(select, "epoll")  # poll() takes milliseconds, epoll seconds
        self.connections: dict[int, Connection] = {}
        app.metrics.open_connections = self.connections.__len__
        self.listeners: dict[int, socket.socket] = {}
        self.paused: dict[int, float] = {}  # listeners not being polled, and until when
        self.stopping = False
        self.stop_requested = False
        self.stop_reason = "stop requested"
        self.recv_buffer = bytearray(RECV_SIZE)  # every connection reads into it (one thread reads)
        self.recv_view = memoryview(self.recv_buffer)
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
        self.app.metrics.connections_opened += 1
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
        if self.connections.get(conn.fd) is not conn:
            return
        if conn.mask:
            try:
                self.poller.unregister(conn.fd)
            except OSError:
                pass  # already gone from the poller with its descriptor
            conn.mask = 0
        del self.connections[conn.fd]

    def peer_of(self, conn: Connection) -> str:
        """``host:port`` of a connection's client (for the access log)."""
        try:
            addr = conn.sock.getpeername() if conn.sock is not None else None
        except OSError:
            return "-"
        if isinstance(addr, tuple):
            return f"[{addr[0]}]:{addr[1]}" if ":" in addr[0] else f"{addr[0]}:{addr[1]}"
        return str(addr or "-")

    def _fault(self, conn: Connection | None, exc: BaseException) -> None:
        """A bug met while handling one connection: log it, count it, close that connection."""
        self.app.metrics.connection_errors += 1
        who = self.peer_of(conn) if conn is not None else "the server loop"
        log.error("error handling %s; closed the connection: %s: %s", who, type(exc).__name__, exc,
                  exc_info=exc)
        if conn is not None:
            try:
                conn.abort()
            except Exception:  # noqa: BLE001 - its socket is beyond use; forget it all the same
                conn.sock = None
                self.connections.pop(conn.fd, None)

    def _accept(self, listener: socket.socket) -> None:
        bal = self.balance
        if bal is not None and not self.stopping and self._defers < MAX_DEFERS \
                and bal.busier(len(self.connections)):
            # A sibling holding fewer connections was woken too: leave this one to it for a
            # while, but not for long, should that sibling be stuck.
            self._defers += 1
            fd = listener.fileno()
            if fd not in self.paused:
                self.poller.unregister(fd)
                self.paused[fd] = self.now + DEFER
            return
        self._defers = 0
        for _ in range(self.accept_burst):  # a burst of connections, but not forever
            try:
                sock, _addr = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue  # the client gave up before we got to it
            except OSError as exc:
                if exc.errno not in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    log.error("accept failed on %s: %s; retrying shortly", listener.getsockname(), exc)
                # Out of descriptors or memory: the listener stays readable, so polling it would
                # spin.  Rest it a while; the connections wait in the backlog meanwhile.
                fd = listener.fileno()
                if fd not in self.paused:
                    self.poller.unregister(fd)
                    self.paused[fd] = self.now + ACCEPT_PAUSE
                return
            if len(self.connections) >= self.max_connections and not self._make_room():
                self._refuse(sock)
                continue
            self.adopt(sock)

    def _make_room(self) -> bool:
        """Close the connection least worth keeping (lingering, idle, then a request still
        arriving after a second); False when every one is busy."""
        best, rank = None, 0
        for conn in self.connections.values():
            r = conn.evictable(self.now)
            if r > rank or (r == rank and r and best is not None and conn.deadline < best.deadline):
                best, rank = conn, r
                if r == 3:
                    break
        if best is None:
            return False
        self.app.metrics.connections_evicted += 1
        best.abort()
        return True

    def _refuse(self, sock: socket.socket) -> None:
        """Full, and every connection busy: answer 503 at once rather than leave the client waiting."""
        self.app.metrics.connections_refused += 1
        if self.now - self._warned_full >= FULL_WARNING:
            self._warned_full = self.now
            log.warning("%d connections open, all busy: refusing new ones with 503 (see --max-connections)",
                        len(self.connections))
        conn = self.adopt(sock)
        conn._fail(503, "the server is at its connection limit; retry shortly")
        conn.flush()

    def _resume_accepting(self) -> None:
        for fd in [fd for fd, until in self.paused.items() if until <= self.now]:
            del self.paused[fd]
            self.poller.register(fd, READ)

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
            conn = self._done.popleft().conn
            if conn.sock is not None:
                try:
                    conn.flush()
                except Exception as exc:  # noqa: BLE001 - one connection's fault is not the server's
                    self._fault(conn, exc)

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
                try:
                    conn.on_event(ev)
                except Exception as exc:  # noqa: BLE001 - one connection's fault is not the server's
                    self._fault(conn, exc)
            elif fd == wake:
                self._woken()
            elif fd in self.listeners:
                self._accept(self.listeners[fd])
        if self.paused:
            self._resume_accepting()
        if self.balance is not None and not self.stopping:  # stopping, it has left (see _begin_stop)
            self.balance.publish(len(conns))
        return len(events)

    def request_stop(self) -> None:
        """Begin a graceful stop (from a signal handler or another thread)."""
        self.stop_requested = True
        self.wake()

    def serve_forever(self) -> None:
        """Serve until :meth:`request_stop`; then close idle connections at once and give
        requests in progress :data:`STOP_GRACE` seconds to finish."""
        next_sweep = self.now + SWEEP
        stop_deadline = 0.0
        if self.balance is not None:  # here from now on: the siblings may leave connections to it
            self.balance.publish(0)
        while True:
            if self.stop_requested and not self.stopping:
                log.info("%s: stopping; no new connections, %d open, requests in progress get %gs",
                         self.stop_reason, len(self.connections), STOP_GRACE)
                self._begin_stop()
                stop_deadline = self.now + STOP_GRACE
            if self.stopping and (self.now > stop_deadline
                                  or all(c.draining for c in self.connections.values())):
                break
            timed = self.connections or self.stopping or self.paused
            wait = max(0.0, next_sweep - self.now) if timed else -1
            if self.paused:  # a listener resting DEFER seconds must not rest until the sweep
                wait = max(0.0, min(wait, min(self.paused.values()) - self.now))
            try:
                self.poll_once(wait)
                if self.now >= next_sweep:
                    next_sweep = self.now + SWEEP
                    self._sweep()
            except Exception as exc:  # noqa: BLE001 - the loop itself must outlive a bug
                self._fault(None, exc)
        left = len(self.connections)
        for conn in list(self.connections.values()):
            conn.abort()
        log.info("stopped" + (f" ({left} connections closed at the deadline)" if left else ""))

    def _sweep(self) -> None:
        now = self.now
        for conn in [c for c in self.connections.values() if c.deadline <= now]:
            try:
                conn.expire()
            except Exception as exc:  # noqa: BLE001
                self._fault(conn, exc)

    def _begin_stop(self) -> None:
        self.stopping = True
        if self.balance is not None:  # draining: its siblings take every new connection
            self.balance.leave()
        for fd, sock in self.listeners.items():
            self._accept(sock)  # connections in the backlog are closed cleanly, not reset
            if fd not in self.paused:
                self.poller.unregister(fd)
            sock.close()
        self.listeners.clear()
        self.paused.clear()
        for conn in list(self.connections.values()):
            try:
                conn.shutdown()
            except Exception as exc:  # noqa: BLE001
                self._fault(conn, exc)

    def close(self) -> None:
        """Release the sockets, the poller and the worker threads."""
        for _ in self._threads:
            self._jobs.append(None)
            self._job_ready.release()
        for sock in (*self.listeners.values(), self._wake_r, self._wake_w):
            sock.close()
        self.listeners.clear()
        self.poller.close()


def _descriptor_bound(wanted: int) -> int:
    """``wanted`` connections, or fewer when the process may not open that many descriptors
    (a few are kept for the listeners, the model's files and the registry's git and DVC)."""
    try:
        import resource
    except ImportError:  # not on POSIX
        return wanted
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return wanted
    return max(1, min(wanted, soft - 64))


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


def run(app: App, listeners: list[socket.socket], *, keep_alive: float = IDLE_TIMEOUT,
        max_connections: int = MAX_CONNECTIONS, access_log: bool = False, accept_burst: int = ACCEPT_BURST,
        balance: Any = None) -> None:
    """Serve ``app`` on ``listeners`` (from :func:`listen`) until SIGTERM or SIGINT.

    Args:
        app: what answers.
        listeners: listening sockets.
        keep_alive: seconds an idle keep-alive connection stays open.
        max_connections: open connections at most; a new one past it takes the place of a
            lingering, idle or slow one, or is answered 503.
        access_log: log every answer on the ``modelshelf.serve.access`` logger.
        accept_burst: connections accepted per wake-up of a listener (1 for workers sharing it).
        balance: for workers sharing the listeners, their connection counts
            (:class:`modelshelf.serve.workers.Shares`): a worker holding more than a sibling
            leaves new connections to it.

    The process-wide settings it changes (the switch interval, the SIGTERM/SIGINT handlers
    and the signal wake-up descriptor) are restored when it returns.
    """
    server = Server(app, listeners, keep_alive=keep_alive, max_connections=max_connections,
                    access_log=access_log, accept_burst=accept_burst, balance=balance)
    interval = sys.getswitchinterval()
    sys.setswitchinterval(SWITCH_INTERVAL)
    # A signal may land on any thread: its byte on the wake-up socket gets the loop out of poll,
    # and the handler then runs on this (the main) thread.
    wakeup = signal.set_wakeup_fd(server.wake_fd)

    def on_stop(signum: int, _frame: object) -> None:
        server.stop_reason = f"received {signal.Signals(signum).name}"  # logged by the loop, not here
        server.request_stop()

    previous = {sig: signal.signal(sig, on_stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        app.startup()
        server.serve_forever()
    finally:
        try:
            app.shutdown()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            signal.set_wakeup_fd(wakeup)
            sys.setswitchinterval(interval)
            server.close()
