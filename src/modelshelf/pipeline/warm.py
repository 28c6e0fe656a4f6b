"""A warm host for the pipeline's stage commands: a fork server with the heavy imports done.

Every ``shelf prepare|train|evaluate|gate|serialise`` of ``dvc repro`` is its own process, and
most of its time goes to importing scikit-learn, pandas and skl2onnx.  The first stage command
spawns a detached host that imports them once; later commands (``run``) connect to it over a
Unix socket and send their argv, cwd, environment, umask and fds 0/1/2.  The host forks a child
that takes them over and runs :func:`modelshelf.cli.main` with the imports already done; the
client relays signals to it and exits with its status, or dies of the signal that killed it.

The socket is named by a key over everything that shapes the imports (interpreter, flags,
``sys.path``, the mtimes of ``sys.path`` entries and modelshelf's sources, import-time
environment variables), so a changed install gets a new host.  It lives in a private
directory: ``$SHELF_WARM_DIR``, else ``$XDG_RUNTIME_DIR/modelshelf``, else
``$TMPDIR/modelshelf-<uid>``.  ``SHELF_WARM=0`` disables all this; ``SHELF_WARM_IDLE``
(seconds, default 30) is how long an idle host lives.  ``python -m modelshelf.pipeline.warm
status|stop`` lists or stops the hosts.

Only the standard library is imported here at module level: the client side must stay cheap.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import select
import signal
import socket
import stat
import struct
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

PROTOCOL = 1
IDLE_DEFAULT = 30.0
START_TIMEOUT = 60.0  # seconds a client waits for a child to start (the host may still be importing)
FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
KEY_ENV_PREFIXES = ("PYTHON", "OMP_", "OPENBLAS_", "MKL_", "KMP_", "SKLEARN_", "SCIPY_", "NUMPY_",
                    "JOBLIB_", "LOKY_", "LC_", "LD_")
KEY_ENV_NAMES = ("LANG", "TZ")
# Not onnxruntime: its import starts native threads, which a forked child does not have, and the
# child's exit then hangs in their destructors.  Imported in the child it takes 0.04 s.
PRELOAD = (
    "numpy", "pandas", "scipy.stats", "sklearn", "sklearn.base", "sklearn.pipeline", "sklearn.compose",
    "sklearn.preprocessing", "sklearn.impute", "sklearn.metrics", "sklearn.model_selection",
    "sklearn.ensemble", "sklearn.linear_model", "sklearn.tree", "joblib", "yaml", "onnx",
    "skl2onnx", "sklearn.datasets", "scipy.io", "pandas.io.formats.csvs", "narwhals._pandas_like.dataframe",
    "narwhals._pandas_like.namespace", "narwhals._interchange.dataframe", "narwhals._duration", "_sha256",
    "urllib.request", "importlib.resources.readers", "modelshelf.tags", "modelshelf.cli", "modelshelf.commands.pipeline", "modelshelf.params", "modelshelf.card",
    "modelshelf.artefacts", "modelshelf.model", "modelshelf.onnxcopy", "modelshelf.drift.profile",
    "modelshelf.project", "modelshelf.gitrepo", "modelshelf.dvcrepo", "modelshelf.pipeline.stages",
    "modelshelf.pipeline.data", "modelshelf.pipeline.train", "modelshelf.pipeline.evaluate",
    "modelshelf.pipeline.gate", "modelshelf.pipeline.baseline", "modelshelf.pipeline.metrics",
    "modelshelf.pipeline.plots", "modelshelf.pipeline.features", "modelshelf.pipeline.experiments",
    "modelshelf.pipeline.significance",
)

# Frames are a type byte and a length; client → host: R(equest) with fds, G(o), S(ignal);
# host/child → client: A(ccepted, child waits for G), F(ailed to start), X(exit status),
# K(illed by signal), P(ing answer).
_HEADER = struct.Struct("!cI")
_in_child = False


class Unavailable(Exception):
    """The warm host cannot be used here (an unsafe or unusable socket directory)."""


# -- where, and under which key ---------------------------------------------------------------------

def enabled(env: Mapping[str, str] = os.environ) -> bool:
    """Whether stage commands use warm hosts: on POSIX unless ``SHELF_WARM`` is 0/false/no/off."""
    return os.name == "posix" and env.get("SHELF_WARM", "1").strip().lower() not in ("0", "false", "no", "off")


def socket_dir(env: Mapping[str, str] = os.environ) -> str:
    """The directory for this user's sockets (not created)."""
    if env.get("SHELF_WARM_DIR"):
        return env["SHELF_WARM_DIR"]
    runtime = env.get("XDG_RUNTIME_DIR", "")
    if os.path.isabs(runtime) and os.path.isdir(runtime):
        return os.path.join(runtime, "modelshelf")
    return os.path.join(env.get("TMPDIR") or "/tmp", f"modelshelf-{os.getuid()}")


def private_dir(path: str) -> str:
    """Make ``path`` (mode 0700) if missing and check it is a directory only we own and can enter.

    Raises:
        Unavailable: a symlink, not a directory, another owner, or open to group or others.
    """
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except OSError as exc:
        raise Unavailable(f"cannot create {path}: {exc.strerror}") from None
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise Unavailable(f"{path} is not a directory")
    if st.st_uid != os.getuid():
        raise Unavailable(f"{path} is owned by uid {st.st_uid}, not {os.getuid()}")
    if st.st_mode & 0o077:
        raise Unavailable(f"{path} is not private (mode {stat.S_IMODE(st.st_mode):04o}, want 0700)")
    return path


def _mtime(path: str) -> int | None:
    try:
        return os.stat(path).st_mtime_ns
    except OSError:
        return None


def _sources() -> Iterator[tuple[str, int]]:
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for top, dirs, files in os.walk(package):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        for name in sorted(files):
            if not name.endswith((".pyc", ".pyo")):
                path = os.path.join(top, name)
                yield os.path.relpath(path, package), _mtime(path) or 0


def compute_key(env: Mapping[str, str] = os.environ) -> str:
    """A hash of everything that shapes what the host's imports would be: one host per key."""
    flags = {name: getattr(sys.flags, name) for name in dir(sys.flags)
             if not name.startswith("_") and name not in ("count", "index")}
    state = {
        "protocol": PROTOCOL,
        "executable": os.path.realpath(sys.executable),
        "version": sys.version,
        "flags": flags,
        "warnoptions": sys.warnoptions,
        "options": interpreter_options(),
        "path": [(p, _mtime(p)) for p in sys.path if p],
        "sources": list(_sources()),
        "env": sorted((k, v) for k, v in env.items() if k.startswith(KEY_ENV_PREFIXES) or k in KEY_ENV_NAMES),
    }
    return hashlib.sha256(json.dumps(state, sort_keys=True).encode("utf-8", "surrogateescape")).hexdigest()[:24]


def interpreter_options(argv: Sequence[str] | None = None) -> list[str]:
    """The interpreter's own options in ``argv`` (default ``sys.orig_argv``): ``-O``, ``-X dev``,
    ``-W error``..., everything before the script, ``-m`` or ``-c``; a host starts with them."""
    args = list(sys.orig_argv if argv is None else argv)[1:]
    options: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        if arg in ("-", "--") or not arg.startswith("-") or arg.startswith(("-c", "-m")):
            break
        width = 2 if arg in ("-W", "-X", "--check-hash-based-pycs") else 1
        options.extend(args[i:i + width])
        i += width
    return options


def _paths(directory: str, key: str) -> tuple[str, str, str]:
    base = os.path.join(directory, key)
    return base + ".sock", base + ".lock", base + ".log"


# -- frames ---------------------------------------------------------------------------------------

def _send(sock: socket.socket, kind: bytes, payload: bytes = b"") -> None:
    sock.sendall(_HEADER.pack(kind, len(payload)) + payload)


class _Frames:
    """Reads frames off a stream socket; ``next()`` is None at EOF (or a reset connection).

    ``patient``: wait in ``poll`` and retry a read that would block or time out.  A forked child
    shares its connection's open file description, and so its ``O_NONBLOCK`` flag, with the
    host; a read that trusted the socket's own timeout setting could see EAGAIN and take it
    for a lost client.
    """

    def __init__(self, sock: socket.socket, data: bytes = b"", patient: bool = False) -> None:
        self.sock = sock
        self.data = data
        self.patient = patient

    def _recv(self) -> bytes:
        while True:
            if self.patient:
                poller = select.poll()
                poller.register(self.sock.fileno(), select.POLLIN)
                poller.poll()
            try:
                return self.sock.recv(65536)
            except (ConnectionResetError, BrokenPipeError):
                return b""
            except (BlockingIOError, InterruptedError, TimeoutError):
                if not self.patient:
                    raise

    def next(self) -> tuple[bytes, bytes] | None:
        while True:
            if len(self.data) >= _HEADER.size:
                kind, size = _HEADER.unpack_from(self.data)
                if len(self.data) >= _HEADER.size + size:
                    payload = self.data[_HEADER.size:_HEADER.size + size]
                    self.data = self.data[_HEADER.size + size:]
                    return kind, payload
            chunk = self._recv()
            if not chunk:
                return None
            self.data += chunk


# -- client -----------------------------------------------------------------------------------------

def run(argv: Sequence[str]) -> int | None:
    """Run the stage command ``argv`` (without the program name) in a warm child.

    Returns:
        Its exit status, or None when it must run in this process: no host yet (one is being
        started), a host that went away before the child started, or warm hosts unusable here.
        When the child dies of a signal, this process dies of the same signal.
    """
    if _in_child or os.name != "posix":
        return None
    try:
        for fd in (0, 1, 2):
            os.fstat(fd)  # a closed stdio fd: run here, as Python would
        cwd = os.getcwd()
        directory = private_dir(socket_dir())
        key = compute_key()
        sock_path, _, _ = _paths(directory, key)
        if len(os.fsencode(sock_path)) > 100:
            raise Unavailable(f"the socket path {sock_path} is too long; set SHELF_WARM_DIR to a shorter directory")
        sock = _connect(sock_path)
        if sock is None:
            _spawn(directory, key)
            return None
    except Unavailable as exc:
        print(f"shelf: warning: not using a warm stage host: {exc} (SHELF_WARM=0 turns it off)", file=sys.stderr)
        return None
    except OSError:
        return None
    client = _Client(sock, cwd)
    try:
        client.install()
    except ValueError:  # signal handlers can only be set from the main thread: run here
        client.close()
        return None
    return client.run(argv)


def _connect(path: str) -> socket.socket | None:
    """A connection to the host at ``path``, or None when there is none (a stale socket is the
    next host's to remove: it does so holding the key's lock)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(path)
    except (FileNotFoundError, ConnectionRefusedError):
        sock.close()
        return None
    except OSError:
        sock.close()
        raise
    return sock


def _spawn(directory: str, key: str) -> None:
    """Start a host for ``key``, detached (double fork, new session, stdio /dev/null, cwd /)."""
    code = ("import sys, json; sys.path[:] = json.loads(sys.argv[1]); "
            "from modelshelf.pipeline.warm import host_main; host_main(sys.argv[2], sys.argv[3])")
    args = [sys.executable, *interpreter_options(), "-c", code, json.dumps(sys.path), directory, key]
    pid = os.fork()
    if pid == 0:
        try:
            os.setsid()
            if os.fork() == 0:
                os.chdir("/")
                null = os.open(os.devnull, os.O_RDWR)
                for fd in (0, 1, 2):
                    os.dup2(null, fd)
                os.closerange(3, 65536)
                os.execv(sys.executable, args)
        finally:
            os._exit(0)
    os.waitpid(pid, 0)


class _Client:
    """One command's side of a connection: send the request, relay signals, wait for the result."""

    def __init__(self, sock: socket.socket, cwd: str) -> None:
        self.sock, self.cwd = sock, cwd
        self.running = False
        self.pending: list[int] = []

    def _on_signal(self, signum: int, _frame: Any) -> None:
        if not self.running:
            self.pending.append(signum)
            return
        try:
            _send(self.sock, b"S", bytes([signum]))
        except OSError:
            pass

    def install(self) -> None:
        """Relay the signals a stage command acts on (from the main thread only: ValueError)."""
        self.old: dict[int, Any] = {}
        for s in FORWARDED:
            self.old[s] = signal.signal(s, self._on_signal)

    def close(self) -> None:
        for s, handler in getattr(self, "old", {}).items():
            signal.signal(s, handler)
        self.sock.close()

    def run(self, argv: Sequence[str]) -> int | None:
        try:
            return self._run(argv)
        finally:
            self.close()

    def _run(self, argv: Sequence[str]) -> int | None:
        umask = os.umask(0o077)
        os.umask(umask)
        request = {"op": "run", "argv": [sys.argv[0], *argv], "cwd": self.cwd, "env": dict(os.environ),
                   "umask": umask}
        payload = json.dumps(request).encode("utf-8", "surrogateescape")
        try:
            self.sock.settimeout(START_TIMEOUT)
            data = _HEADER.pack(b"R", len(payload)) + payload
            sent = socket.send_fds(self.sock, [data], [0, 1, 2])
            self.sock.sendall(data[sent:])
            frames = _Frames(self.sock)
            while True:
                frame = frames.next()
                if frame is None:  # the host went away
                    return _lost() if self.running else self._cold()
                kind, data = frame
                if not self.running:
                    if kind != b"A":  # F, or the host's report on a child that never started
                        return self._cold()
                    if self.pending:
                        return self._interrupted()
                    self._go()
                elif kind == b"X":
                    return struct.unpack("!i", data)[0]
                elif kind == b"K":
                    return _die_of(data[0])
        except TimeoutError:
            print(f"shelf: warning: the warm stage host did not start this command in {START_TIMEOUT:g} s; "
                  "running it here (SHELF_WARM=0 turns it off)", file=sys.stderr)
            return self._cold()
        except OSError:
            if self.running:
                return _lost()
            return self._cold()

    def _go(self) -> None:
        # Signals are blocked while switching to "running", so each one is either reported on
        # A (pending) or forwarded after G, never lost in between.
        signal.pthread_sigmask(signal.SIG_BLOCK, FORWARDED)
        try:
            _send(self.sock, b"G")
            self.running = True
            self.sock.settimeout(None)
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, FORWARDED)

    def _cold(self) -> int | None:
        return self._interrupted() if self.pending else None

    def _interrupted(self) -> int:
        """A signal came before the command started: act on it as the command would have."""
        signum = self.pending[0]
        if signum == signal.SIGINT:
            print("shelf: interrupted", file=sys.stderr)
            return 130
        return _die_of(signum)


def _lost() -> int:
    print("shelf: error: the warm stage host lost this command (its process ended without an exit "
          "status); rerun it (SHELF_WARM=0 runs stages without a host)", file=sys.stderr)
    return 1


def _die_of(signum: int) -> int:
    """Exit as signal ``signum`` would: re-raise it on this process with its default action."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    if signum not in (signal.SIGKILL, signal.SIGSTOP):
        signal.signal(signum, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, [signum])
    os.kill(os.getpid(), signum)
    return 128 + signum  # a signal whose default action is not to terminate


# -- queries --------------------------------------------------------------------------------------

def ping(sock_path: str, timeout: float = 5.0) -> dict[str, Any] | None:
    """The host at ``sock_path``: ``{"pid", "key", "children", "imports_s"}``, or None if there is none."""
    try:
        sock = _connect(sock_path)
    except OSError:
        return None
    if sock is None:
        return None
    with sock:
        sock.settimeout(timeout)
        try:
            payload = json.dumps({"op": "ping"}).encode()
            _send(sock, b"R", payload)
            frame = _Frames(sock).next()
        except OSError:
            return None
    return json.loads(frame[1]) if frame is not None and frame[0] == b"P" else None


def hosts(directory: str | None = None) -> list[dict[str, Any]]:
    """Every host answering in ``directory`` (default: :func:`socket_dir`), with its ``socket``."""
    directory = directory or socket_dir()
    try:
        names = sorted(n for n in os.listdir(directory) if n.endswith(".sock"))
    except OSError:
        return []
    found = []
    for name in names:
        info = ping(os.path.join(directory, name))
        if info is not None:
            found.append({**info, "socket": os.path.join(directory, name)})
    return found


def stop(directory: str | None = None) -> list[int]:
    """Ask every host in ``directory`` to exit (SIGTERM; running children finish); their pids."""
    pids = []
    for info in hosts(directory):
        try:
            os.kill(info["pid"], signal.SIGTERM)
            pids.append(info["pid"])
        except ProcessLookupError:
            pass
    return pids


# -- host ---------------------------------------------------------------------------------------------

def host_main(directory: str, key: str) -> None:
    """Entry point of a spawned host process: serve ``key`` from ``directory`` until idle."""
    os.chdir("/")
    os.umask(0o077)
    try:
        status = _Host(directory, key).serve()
    except _ChildExit as done:  # a forked child, unwound out of the host's loop
        status = done.status
    # A child ends as a process of its own would: the interpreter joins its threads, runs the
    # atexit functions and flushes stdio (exit 120 if that fails).
    raise SystemExit(status)


class _ChildExit(BaseException):
    """Raised in a forked child once its command has run, to leave the host's stack."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


class _Host:
    """The accept loop: one listening socket, one forked child per request."""

    def __init__(self, directory: str, key: str) -> None:
        import logging

        self.directory, self.key = directory, key
        self.sock_path, self.lock_path, self.log_path = _paths(directory, key)
        self.log = logging.getLogger("modelshelf.warm")
        self.handler: logging.Handler | None = None
        self.children: dict[int, tuple[socket.socket, float]] = {}
        self.stopping = False
        self.imports_s = 0.0
        try:
            self.idle = float(os.environ.get("SHELF_WARM_IDLE", IDLE_DEFAULT))
        except ValueError:
            self.idle = IDLE_DEFAULT
        if not self.idle > 0:
            self.idle = IDLE_DEFAULT

    def _open_log(self) -> None:
        import logging

        if _mtime(self.log_path) is not None and os.path.getsize(self.log_path) > 1 << 20:
            os.truncate(self.log_path, 0)
        self.handler = logging.FileHandler(self.log_path, encoding="utf-8")
        self.handler.setFormatter(logging.Formatter("%(asctime)s %(process)d %(levelname)s %(message)s"))
        self.log.addHandler(self.handler)
        self.log.setLevel(logging.INFO)
        self.log.propagate = False

    def serve(self) -> int:
        import fcntl

        private_dir(self.directory)
        self.lock_fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(self.lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return 0  # another host serves this key (or is starting to)
        self._open_log()
        try:
            self._bind()
            self.log.info("host for key %s listening on %s (idle timeout %g s)", self.key, self.sock_path, self.idle)
            self._preload()
            self._loop()
        except Exception:
            self.log.exception("host failed")
            return 1
        finally:
            if not _in_child:
                self._shutdown()
        return 0

    def _bind(self) -> None:
        # Bound and listening before the heavy imports: clients that come meanwhile wait in the
        # backlog.  Bound under a temporary name and renamed, so the path never names a socket
        # nobody listens on; whatever was there is stale (we hold the key's lock).
        tmp = os.path.join(self.directory, f".{self.key}.{os.getpid()}.tmp")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(tmp)
        self.listener.listen(128)
        os.rename(tmp, self.sock_path)
        st = os.stat(self.sock_path)
        self.identity = (st.st_dev, st.st_ino)

    def _preload(self) -> None:
        import gc
        import importlib
        import time

        start = time.monotonic()
        for name in PRELOAD:
            try:
                importlib.import_module(name)
            except Exception:  # noqa: BLE001 - a stage that needs it will report it
                self.log.warning("cannot preload %s", name, exc_info=True)
        self.imports_s = time.monotonic() - start
        gc.freeze()  # the children's collections skip (and so never copy) what the imports made
        self.log.info("preloaded %d modules in %.2f s", len(PRELOAD), self.imports_s)

    def _socket_is_ours(self) -> bool:
        try:
            st = os.stat(self.sock_path)
        except FileNotFoundError:
            return False
        return (st.st_dev, st.st_ino) == self.identity

    def _loop(self) -> None:
        import select
        import time

        self.wake_r, self.wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(self.wake_w)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGHUP, self._on_stop)
        last = time.monotonic()
        while not self.stopping:
            wait = 1.0 if self.children else max(0.0, min(1.0, self.idle - (time.monotonic() - last)))
            ready, _, _ = select.select([self.listener, self.wake_r], [], [], wait)
            if self.wake_r in ready:
                with contextlib.suppress(BlockingIOError):
                    os.read(self.wake_r, 4096)
            self._reap()
            if self.listener in ready:
                self._accept()
            if self.children or self.listener in ready:
                last = time.monotonic()
            if not self._socket_is_ours():
                self.log.info("socket %s is gone or replaced: exiting", self.sock_path)
                break
            if not self.children and time.monotonic() - last >= self.idle:
                self.log.info("idle for %g s: exiting", self.idle)
                break

    def _on_stop(self, signum: int, _frame: Any) -> None:
        self.log.info("got signal %d: exiting", signum)
        self.stopping = True

    def _accept(self) -> None:
        try:
            conn, _ = self.listener.accept()
        except OSError:
            return
        try:
            conn.settimeout(5.0)
            _pid, uid, _gid = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                                   struct.calcsize("3i")))
            if uid != os.getuid():
                self.log.warning("refused a connection from uid %d", uid)
                conn.close()
                return
            request, fds = _recv_request(conn)
        except Exception:  # noqa: BLE001 - a broken client must not take the host down
            self.log.warning("bad request", exc_info=True)
            conn.close()
            return
        if request.get("op") == "ping":
            with contextlib.suppress(OSError):
                _send(conn, b"P", json.dumps({"pid": os.getpid(), "key": self.key, "imports_s": self.imports_s,
                                              "children": sorted(self.children)}).encode())
            conn.close()
        elif request.get("op") == "run" and len(fds) == 3:
            self._fork(conn, request, fds)
        else:
            self.log.warning("bad request: op %r with %d fds", request.get("op"), len(fds))
            for fd in fds:
                os.close(fd)
            conn.close()

    def _fork(self, conn: socket.socket, request: dict[str, Any], fds: list[int]) -> None:
        import time

        # Set before the fork: a timeout is the fd's O_NONBLOCK flag, shared with the child, and
        # changed after the fork it would race the child's own setting.
        conn.settimeout(1.0)
        pid = os.fork()
        if pid == 0:
            raise _ChildExit(_Child(self, conn, request, fds).run())
        for fd in fds:
            os.close(fd)
        self.children[pid] = (conn, time.monotonic())
        self.log.info("child %d: %s (in %s)", pid, " ".join(request["argv"][1:]), request["cwd"])

    def _reap(self, block: bool = False) -> None:
        import time

        while self.children:
            try:
                pid, status = os.waitpid(-1, 0 if block else os.WNOHANG)
            except ChildProcessError:
                self.children.clear()
                return
            if pid == 0:
                return
            if pid not in self.children:
                continue
            conn, started = self.children.pop(pid)
            took = time.monotonic() - started
            # The child reports its own exit status; a signal it cannot report, so the host does.
            if os.WIFSIGNALED(status):
                sig = os.WTERMSIG(status)
                self.log.info("child %d: killed by signal %d after %.2f s", pid, sig, took)
                frame = (b"K", bytes([sig]))
            else:
                code = os.waitstatus_to_exitcode(status)
                self.log.info("child %d: exit %d after %.2f s", pid, code, took)
                frame = (b"X", struct.pack("!i", code))
            with contextlib.suppress(OSError):
                _send(conn, *frame)
            conn.close()

    def _shutdown(self) -> None:
        if getattr(self, "identity", None) and self._socket_is_ours():
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.sock_path)
        if getattr(self, "listener", None) is not None:
            self.listener.close()
        os.close(self.lock_fd)  # the next host may start now; our running children finish below
        self._reap(block=True)
        self.log.info("host exits")


def _recv_request(conn: socket.socket) -> tuple[dict[str, Any], list[int]]:
    data, fds, _flags, _addr = socket.recv_fds(conn, 1 << 16, 3)
    try:
        frames = _Frames(conn, data)
        frame = frames.next()
        if frame is None or frame[0] != b"R":
            raise ValueError("no request frame")
        return json.loads(frame[1].decode("utf-8", "surrogateescape")), fds
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise


class _Child:
    """A forked child: become the client's process (fds, cwd, environment, umask, argv) and run."""

    def __init__(self, host: _Host, conn: socket.socket, request: dict[str, Any], fds: list[int]) -> None:
        self.host, self.conn, self.request, self.fds = host, conn, request, fds

    def run(self) -> int:
        """Run the command; its exit status (the host reports it, or the signal that killed us)."""
        global _in_child
        _in_child = True
        try:
            self._become()
            conn = self.conn
            conn.settimeout(30.0)
            _send(conn, b"A", str(os.getpid()).encode())
            frames = _Frames(conn)
            frame = frames.next()
            if frame is None or frame[0] != b"G":
                os._exit(0)  # the client ran it itself or went away: nothing ran here
            self._watch(frames.data)
        except BaseException:  # noqa: BLE001 - never return into the host's loop
            with contextlib.suppress(Exception):
                self.host.log.exception("child %d failed to start", os.getpid())
            with contextlib.suppress(OSError):
                _send(self.conn, b"F")
            os._exit(1)
        return _run_cli(self.request["argv"][1:])

    def _become(self) -> None:
        host = self.host
        os.setpgid(0, 0)  # its own group: the watchdog can take out what the stage started
        host.listener.close()
        os.close(host.lock_fd)
        signal.set_wakeup_fd(-1)
        os.close(host.wake_r)
        os.close(host.wake_w)
        for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD):
            signal.signal(sig, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        for conn, _ in host.children.values():
            conn.close()
        if host.handler is not None:  # the stage's logging is as in a process of its own
            host.log.removeHandler(host.handler)
            host.handler.close()
        _take_stdio(self.fds)
        req = self.request
        os.chdir(req["cwd"])
        os.environ.clear()
        os.environ.update(req["env"])
        os.umask(req["umask"])
        sys.argv = list(req["argv"])
        if "tempfile" in sys.modules:  # found again from this command's TMPDIR, not the host's
            sys.modules["tempfile"].tempdir = None

    def _watch(self, data: bytes) -> None:
        import threading

        def watch() -> None:
            _await_client(self.conn, data, lambda signum: os.kill(os.getpid(), signum))
            os.killpg(0, signal.SIGKILL)  # the client is gone (kill -9): so are we, and our group

        threading.Thread(target=watch, name="shelf-warm-watchdog", daemon=True).start()


def _await_client(sock: socket.socket, data: bytes, on_signal: Callable[[int], object]) -> None:
    """Return once the client's end of ``sock`` is closed or reset (``data``: what was read past
    the last frame), calling ``on_signal(signum)`` for every signal it relays meanwhile."""
    frames = _Frames(sock, data, patient=True)
    while True:
        try:
            frame = frames.next()
        except OSError:
            frame = None
        if frame is None:
            return
        if frame[0] == b"S" and frame[1]:
            on_signal(frame[1][0])


def _take_stdio(fds: Sequence[int]) -> None:
    """Make the client's fds our 0/1/2 and rebuild sys.std* as Python's start-up builds them
    (isatty and line buffering follow the new fds; encoding and errors follow the locale and
    PYTHONIOENCODING, which are part of the key)."""
    import io

    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    for target, fd in enumerate(fds):
        if fd != target:
            os.dup2(fd, target)
            os.close(fd)
    unbuffered = isinstance(getattr(sys.__stdout__, "buffer", None), io.RawIOBase)
    for fd, name in enumerate(("stdin", "stdout", "stderr")):
        model = getattr(sys, f"__{name}__")
        write = fd > 0
        buffering = 0 if write and unbuffered else -1
        buf = io.open(fd, "wb" if write else "rb", buffering=buffering, closefd=False)
        raw = buf if buffering == 0 else buf.raw
        raw.name = f"<{name}>"
        text = io.TextIOWrapper(buf, encoding=model.encoding if model else None,
                                errors=model.errors if model else None, newline="\n",
                                line_buffering=not unbuffered and (raw.isatty() or fd == 2),
                                write_through=unbuffered)
        text.mode = "w" if write else "r"
        setattr(sys, name, text)
        setattr(sys, f"__{name}__", text)


def _run_cli(args: list[str]) -> int:
    """``modelshelf.cli.main(args)``, its exceptions handled as the interpreter handles them."""
    import traceback

    from modelshelf import cli

    try:
        return cli.main(args)
    except SystemExit as exc:
        return _exit_status(exc.code)
    except KeyboardInterrupt:
        traceback.print_exc()
        _flush_stdio()
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)  # as Python exits on an uncaught KeyboardInterrupt
        return 130
    except BaseException:  # noqa: BLE001
        traceback.print_exc()
        return 1


def _exit_status(code: Any) -> int:
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    print(code, file=sys.stderr)
    return 1


def _flush_stdio() -> bool:
    ok = True
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # noqa: BLE001 - as the interpreter's shutdown: exit 120
            ok = False
    return ok


def _main(argv: Sequence[str]) -> int:
    """``python -m modelshelf.pipeline.warm status|stop``."""
    command = argv[0] if argv else "status"
    if command == "status":
        for info in hosts():
            print(f"{info['socket']}: pid {info['pid']}, {len(info['children'])} running, "
                  f"imports {info['imports_s']:.1f} s")
        return 0
    if command == "stop":
        for pid in stop():
            print(f"stopped host {pid}")
        return 0
    print("usage: python -m modelshelf.pipeline.warm [status|stop]", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(_main(sys.argv[1:]))


__all__ = ["Unavailable", "compute_key", "enabled", "hosts", "ping", "private_dir", "run", "socket_dir", "stop"]
