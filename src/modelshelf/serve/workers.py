"""``shelf serve --workers N``: N forked copies of the server on one port, all serving one version.

The parent builds the app as ``shelf serve`` does (the first version is loaded and verified
before anything forks, so a refusal at start-up is the same one line and exit code), then
forks the workers: each inherits the listening sockets, the loaded model (shared copy-on-write)
and one end of a duplex pipe.  The parent (:class:`Supervisor`) serves nothing itself.  It:

* restarts a worker that dies, with a back-off, and gives up (exit 1) when workers keep dying
  at start-up;
* forwards SIGTERM/SIGINT (every worker drains and exits, then the parent returns 0);
* alone follows the registry (the poll, SIGHUP, and ``POST /admin/reload``, which the worker
  that receives it forwards over its pipe): a new version is swapped in two phases, *prepare*
  (every worker loads and verifies it) then *commit* once every worker said ok, else *abort*
  (everyone keeps the old one).  A restarted worker starts on the parent's version;
* keeps the table of workers (pid, version, start, memory) that each worker's ``/health`` shows.

With ``--canary`` or ``--shadow`` the parent follows two specs, each a *slot*: ``stable`` (what
``--model`` names) and ``candidate``.  Each is swapped in two phases of its own, so every worker
serves the same pair; a key's side is a hash of the key, the same in every worker.

Messages are tuples over :func:`multiprocessing.connection.Pipe`: parent to worker ``state``,
``prepare`` (naming its slot), ``commit``, ``abort``, ``reloaded``; worker to parent ``ready``
(with each slot's version), ``prepared``, ``committed``, ``reload``.  Logs go to ``modelshelf.serve``.
"""

from __future__ import annotations

import datetime
import logging
import mmap
import os
import selectors
import signal
import socket
import struct
import threading
import time
from multiprocessing.connection import Connection, Pipe
from typing import TYPE_CHECKING, Any, NamedTuple, NoReturn

import orjson

from modelshelf import __version__
from modelshelf.errors import ShelfError
from modelshelf.serve import metrics
from modelshelf.serve.app import App, Later, Reply
from modelshelf.serve.holder import POLL, Holder
from modelshelf.serve.server import ADMIN, urls

if TYPE_CHECKING:
    from modelshelf.serve.runner import Loaded

log = logging.getLogger("modelshelf.serve")

STARTUP_WINDOW = 10.0  # a worker dying this soon after it was started died "at start-up"
CRASH_LIMIT = 5  # that many start-up deaths in a row: give up
BACKOFF = 0.25  # seconds before restarting after the first start-up death; doubles each time
MAX_BACKOFF = 5.0
PREPARE_DEADLINE = 300.0  # seconds every worker gets to load and verify a version
COMMIT_DEADLINE = 10.0  # seconds every worker gets to acknowledge the switch
RELOAD_DEADLINE = PREPARE_DEADLINE + 60.0  # a worker waiting for the parent's answer to /admin/reload
STOP_DEADLINE = 20.0  # seconds workers get to drain on SIGTERM before they are killed
MEMORY_EVERY = 15.0  # seconds between two readings of the workers' memory
TALLY_EVERY = 0.25  # seconds between two of a worker's tallies (a scrape it answers publishes its own)
_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD)
STABLE, CANDIDATE = "stable", "candidate"


class Target(NamedTuple):
    """The version every worker serves: where its bytes are and the card they match."""

    version: str
    directory: str | None  # None: the one the parent loaded at start-up (workers inherit it)
    card: dict[str, Any]


def memory(pid: int) -> dict[str, int]:
    """What a worker costs, from /proc/PID/smaps_rollup: ``pss_bytes`` (its pages, each shared one
    divided among the processes sharing it: the workers' sum is what they cost together) and
    ``private_bytes`` (the pages it alone holds: what one more worker costs); else ``rss_bytes``
    from /proc/PID/status; else ``{}``."""
    try:
        with open(f"/proc/{pid}/smaps_rollup", "rb") as fh:
            fields = {k: int(v.split()[0]) * 1024 for k, _, v in (line.decode().partition(":") for line in fh)
                      if k in ("Pss", "Private_Clean", "Private_Dirty")}
        return {"pss_bytes": fields["Pss"], "private_bytes": fields["Private_Clean"] + fields["Private_Dirty"]}
    except (OSError, ValueError, KeyError, IndexError):
        pass
    try:
        with open(f"/proc/{pid}/status", "rb") as fh:
            for line in fh:
                if line.startswith(b"VmRSS:"):
                    return {"rss_bytes": int(line.split()[1]) * 1024}
    except (OSError, ValueError, IndexError):
        pass
    return {}


def same(card: dict[str, Any], other: dict[str, Any]) -> bool:
    """Whether two cards name the same version with the same bytes (as :class:`Holder` decides)."""
    return str(card["version"]) == str(other["version"]) and card["artefacts"] == other["artefacts"]


class Shares:
    """Every worker's open connections, in memory shared across fork, so that connections a
    client opens at once are shared out evenly whichever worker the kernel wakes first: a worker
    that holds more than a sibling leaves a new connection to it (``httpd.DEFER`` seconds at a
    time, ``httpd.MAX_DEFERS`` times in a row at most; see ``httpd.Server._accept``).  Slot
    ``me`` is this worker's."""

    ABSENT = 0xFFFFFFFF  # a slot with no live worker: never the less busy one

    def __init__(self, size: int) -> None:
        self._mem = mmap.mmap(-1, 4 * size)  # anonymous and MAP_SHARED: forked workers see one copy
        self.counts = memoryview(self._mem).cast("I")
        for i in range(size):
            self.counts[i] = self.ABSENT
        self.me = -1
        self._last = -1

    def publish(self, n: int) -> None:
        """This worker holds ``n`` connections (called once per turn of its loop)."""
        if n != self._last:
            self._last = n
            self.counts[self.me] = n

    def busier(self, n: int) -> bool:
        """Whether a live sibling holds fewer than ``n`` connections."""
        me = self.me
        return any(c < n for i, c in enumerate(self.counts) if i != me)

    def leave(self, index: int | None = None) -> None:
        """Mark slot ``index`` (default: this worker's) as having no live worker."""
        self.counts[self.me if index is None else index] = self.ABSENT
        self._last = -1

    def held(self, index: int) -> int | None:
        """The connections the worker in slot ``index`` holds (None: no live worker there)."""
        c = self.counts[index]
        return None if c == self.ABSENT else int(c)

    def total(self) -> int:
        """The connections every live worker holds."""
        return sum(int(c) for c in self.counts if c != self.ABSENT)


class Tallies:
    """Every worker's counters (what ``/metrics`` counts, and ``/health``'s counts of the
    candidate and the prediction log), in memory shared across fork, so that whichever worker
    answers says what all of them did: a Prometheus counter that rose and fell with the worker
    answering each scrape would read as a reset every time.

    Worker ``me`` publishes its own now and then (:data:`TALLY_EVERY`, and on every scrape it
    answers, before it reads the others) into two buffers in turn, each behind a sequence
    number that is odd while it is written: a reader takes the newer buffer it read whole, so
    a worker killed mid-write leaves its previous tally readable.  A worker that replaces a
    dead one in the same slot counts on from its last tally, so a sum never goes down (what the
    dead one did after its last tally is lost, but no scrape saw it)."""

    BUFFER = 1 << 16  # bytes per buffer: a tally is ~1 KB
    _HEAD = struct.Struct("QI")  # sequence number, length of the JSON that follows

    def __init__(self, size: int) -> None:
        self.size = size
        self._mem = mmap.mmap(-1, 2 * size * self.BUFFER)  # anonymous and MAP_SHARED, zeroed
        self.me = -1
        self.base: dict[str, Any] = {}  # the tally this slot's previous worker left
        self._n = 0  # tallies published in this slot
        self._lock = threading.Lock()  # the loop (scrapes) and the tally thread both publish

    def take_over(self) -> None:
        """In a new worker: count on from what this slot's previous worker published."""
        last = self.read(self.me)
        if last is not None:
            self._n, self.base = last

    def publish(self, own: dict[str, Any]) -> None:
        """This worker's tally now (its counts since it started; :attr:`base` is added)."""
        with self._lock:
            self._n += 1
            data = orjson.dumps({"n": self._n, "tally": add_tallies(self.base, own)})
            if len(data) > self.BUFFER - self._HEAD.size:
                log.warning("worker %d: its tally (%d bytes) does not fit the shared buffer; not shared",
                            os.getpid(), len(data))
                return
            off = (2 * self.me + self._n % 2) * self.BUFFER
            seq = self._HEAD.unpack_from(self._mem, off)[0]
            writing = seq + 1 if seq % 2 == 0 else seq + 2  # odd: being written (torn by a killed writer: odd too)
            self._HEAD.pack_into(self._mem, off, writing, 0)
            start = off + self._HEAD.size
            self._mem[start:start + len(data)] = data
            self._HEAD.pack_into(self._mem, off, writing + 1, len(data))

    def read(self, index: int) -> tuple[int, dict[str, Any]] | None:
        """The newest whole tally in slot ``index`` and its number; None if it has none."""
        best: tuple[int, dict[str, Any]] | None = None
        for buf in (0, 1):
            off = (2 * index + buf) * self.BUFFER
            for _ in range(8):  # a write takes microseconds; a writer killed mid-write never ends it
                seq, length = self._HEAD.unpack_from(self._mem, off)
                if seq == 0:
                    break  # never written
                if seq % 2:
                    continue
                start = off + self._HEAD.size
                data = self._mem[start:start + length]
                if self._HEAD.unpack_from(self._mem, off)[0] != seq:
                    continue
                doc = orjson.loads(data)
                if best is None or doc["n"] > best[0]:
                    best = doc["n"], doc["tally"]
                break
        return best

    def total(self, own: dict[str, Any]) -> dict[str, Any]:
        """Every worker's tally summed, this worker's (``own``) published first."""
        self.publish(own)
        out: dict[str, Any] = {}
        for i in range(self.size):
            got = self.read(i)
            if got is not None:
                out = add_tallies(out, got[1])
        return out


def add_tallies(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Two tallies summed: their metrics (:func:`metrics.add`), and every other count by key."""
    out: dict[str, Any] = {"metrics": metrics.add(a.get("metrics", {}), b.get("metrics", {}))}
    for part in ("candidate", "prediction_log"):
        x, y = a.get(part, {}), b.get(part, {})
        if x or y:
            out[part] = {k: x.get(k, 0) + y.get(k, 0) for k in {*x, *y}}
    return out


def holders(app: App) -> dict[str, Holder]:
    """The holders of ``app`` by slot: ``stable``, and ``candidate`` with a canary or shadow."""
    out = {STABLE: app.holder}
    if app.split is not None:
        out[CANDIDATE] = app.split.candidate
    return out


# --- the worker side ----------------------------------------------------------------------------


class WorkerApp(App):
    """An :class:`App` whose ``/health`` also shows the supervisor's table of workers and this
    worker's pid (set by :class:`Control` from the parent's ``state`` messages)."""

    state: dict[str, Any] | None = None
    shares: Shares | None = None
    tallies: Tallies | None = None

    def tally(self) -> dict[str, Any]:
        """What this worker counted since it started (see :class:`Tallies`)."""
        out: dict[str, Any] = {"metrics": self.metrics.snapshot()}
        if self.split is not None:
            sp = self.split
            out["candidate"] = {"answered": sp.answered, "mirrored": sp.mirrored, "dropped": sp.dropped,
                                "errors": sp.errors}
        if self.predictions is not None:
            out["prediction_log"] = {"written": self.predictions.written, "dropped": self.predictions.dropped}
        return out

    def metrics_text(self, counts: dict[str, Any] | None = None, connections: int | None = None) -> str:
        if self.tallies is None or counts is not None:
            return super().metrics_text(counts, connections)
        total = self.tallies.total(self.tally())["metrics"]
        return super().metrics_text(total, self.shares.total() if self.shares is not None else None)

    def handle(self, method: str, path: str, *rest: Any, **more: Any) -> Reply | Later:
        # The rest of App.handle's arguments pass through as they are, whatever they become.
        reply = super().handle(method, path, *rest, **more)
        if path == "/health" and self.state is not None and isinstance(reply, tuple) and reply[0] == 200:
            doc = orjson.loads(reply[2])
            if self.tallies is not None:  # the counts of every worker, not only this one's
                total = self.tallies.total(self.tally())
                for part in ("candidate", "prediction_log"):
                    if isinstance(doc.get(part), dict) and part in total:
                        doc[part].update(total[part])
            doc["pid"] = os.getpid()
            doc["supervisor"] = self.state["supervisor"]
            doc["workers"] = [dict(w) for w in self.state["workers"]]
            if self.shares is not None:  # read now: the parent's table would be seconds old
                for w in doc["workers"]:
                    w["connections"] = self.shares.held(w["worker"])
            return 200, reply[1], orjson.dumps(doc)
        return reply


class Control:
    """A worker's end of its pipe: a thread that applies the parent's messages, and the
    ``reload_hook`` that asks the parent (``POST /admin/reload`` arrives in any worker)."""

    def __init__(self, app: App, conn: Connection) -> None:
        self.app = app
        self.holders = holders(app)
        self.conn = conn
        self._send_lock = threading.Lock()  # HTTP threads and the control thread both send
        self._asked = 0
        self._answers: dict[int, list[Any]] = {}  # request id -> [Event, outcome]
        self._prepared: tuple[int, Holder, Loaded] | None = None

    def send(self, message: tuple[Any, ...]) -> None:
        with self._send_lock:
            self.conn.send(message)

    def apply(self, state: dict[str, Any]) -> None:
        """The parent's view: its table of workers and the counts and error every worker reports."""
        if isinstance(self.app, WorkerApp):
            self.app.state = state
        for slot, h in self.holders.items():
            seen = state["slots"][slot]
            h.error, h.swaps, h.failures = seen["error"], seen["swaps"], seen["failures"]

    def reload(self) -> str:
        """Ask the parent to re-resolve the spec; its outcome once every worker has followed."""
        event = threading.Event()
        with self._send_lock:
            self._asked += 1
            ask = self._asked
            self._answers[ask] = [event, None]
            self.conn.send(("reload", ask))
        if not event.wait(RELOAD_DEADLINE):
            self._answers.pop(ask, None)
            return f"no answer from the supervisor in {RELOAD_DEADLINE:g}s"
        return str(self._answers.pop(ask)[1])

    def start(self) -> None:
        threading.Thread(target=self._run, name="shelf-control", daemon=True).start()

    def _run(self) -> None:
        while True:
            try:
                message = self.conn.recv()
            except (EOFError, OSError):
                log.error("worker %d lost its supervisor: stopping", os.getpid())
                os.kill(os.getpid(), signal.SIGTERM)  # the server's own graceful stop
                return
            try:
                self._on(message)
            except Exception:  # noqa: BLE001 - the channel must outlive a bug
                log.exception("worker %d: handling %s failed", os.getpid(), message[0])

    def _on(self, message: tuple[Any, ...]) -> None:
        kind = message[0]
        if kind == "state":
            self.apply(message[1])
        elif kind == "prepare":
            _, seq, slot, directory, card = message
            self._prepared = None
            holder = self.holders[slot]
            try:
                new = holder.prepare(directory, card)
            except ShelfError as exc:
                self.send(("prepared", seq, False, exc.message))
            except Exception as exc:  # noqa: BLE001 - any failure to load is a "no"
                self.send(("prepared", seq, False, f"{type(exc).__name__}: {exc}"))
            else:
                self._prepared = seq, holder, new
                self.send(("prepared", seq, True, new.format))
        elif kind == "commit":
            _, seq, reason = message
            if self._prepared is not None and self._prepared[0] == seq:
                self._prepared[1].install(self._prepared[2], reason)
                self._prepared = None
                self.send(("committed", seq))
        elif kind == "abort":
            if self._prepared is not None and self._prepared[0] == message[1]:
                self._prepared = None
        elif kind == "reloaded":
            _, ask, outcome = message
            waiting = self._answers.get(ask)
            if waiting is not None:
                waiting[1] = outcome
                waiting[0].set()


def work(app: App, listeners: list[socket.socket], conn: Connection, targets: dict[str, Target],
         state: dict[str, Any], options: dict[str, Any], shares: Shares | None = None,
         tallies: Tallies | None = None) -> int:
    """A worker's life after fork: serve ``targets`` (each slot's, loaded unless inherited) until SIGTERM."""
    from modelshelf.serve import httpd

    control = Control(app, conn)
    for slot, h in control.holders.items():
        target, cur = targets[slot], h.current
        if target.directory is not None and (cur is None or not same(cur.card, target.card)):
            try:
                h.install(h.prepare(target.directory, target.card), "restart")
            except Exception as exc:  # noqa: BLE001 - whatever it is, this worker cannot serve
                message = exc.message if isinstance(exc, ShelfError) else f"{type(exc).__name__}: {exc}"
                log.error("worker %d cannot load v%s: %s", os.getpid(), target.version, message)
                return 3
    control.apply(state)
    app.reload_hook = control.reload
    control.start()
    versions = {slot: h.current.version for slot, h in control.holders.items() if h.current is not None}
    assert STABLE in versions
    if isinstance(app, WorkerApp):
        app.shares = shares
        if tallies is not None:
            tallies.take_over()
            app.tallies = tallies
            threading.Thread(target=_tally, args=(app, tallies), name="shelf-tally", daemon=True).start()
    control.send(("ready", versions))
    httpd.run(app, listeners, accept_burst=1, balance=shares, **options)  # share the connections out
    if isinstance(app, WorkerApp) and tallies is not None:
        tallies.publish(app.tally())  # the last word: its replacement counts on from here
    return 0


def _tally(app: WorkerApp, tallies: Tallies) -> None:
    """Publish ``app``'s tally every :data:`TALLY_EVERY` seconds while it changes."""
    last: dict[str, Any] | None = None
    tick = threading.Event()
    while not tick.wait(TALLY_EVERY):
        own = app.tally()
        if own != last:
            tallies.publish(own)
            last = own


# --- the parent ---------------------------------------------------------------------------------


class Child:
    """A worker as the parent sees it."""

    def __init__(self, pid: int, conn: Connection, index: int) -> None:
        self.pid = pid
        self.conn = conn
        self.index = index  # its slot in the shared connection counts, reused by its replacement
        self.started = time.monotonic()
        self.started_at = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        self.version: str | None = None  # the stable slot's, once it said it is ready
        self.candidate: str | None = None  # the candidate slot's, with a canary or shadow
        self.memory: dict[str, int] = {}
        self.watched = True  # its pipe is in the parent's selector

    def row(self) -> dict[str, Any]:
        row = {"worker": self.index, "pid": self.pid, "version": self.version, "started": self.started_at,
               **self.memory}
        if self.candidate is not None:
            row["candidate"] = self.candidate
        return row


class Slot:
    """One spec the parent follows for every worker: the version they serve and its refusals."""

    def __init__(self, name: str, holder: Holder) -> None:
        cur = holder.current
        assert cur is not None, "build() loads the first version"
        self.name = name
        self.holder = holder
        self.target = Target(cur.version, None, cur.card)
        self.format = cur.format
        self.label = "" if name == STABLE else "candidate "  # how the log names its swaps
        self.error = ""
        self.swaps = 0
        self.failures = 0

    def counts(self) -> dict[str, Any]:
        return {"error": self.error, "swaps": self.swaps, "failures": self.failures}


class Swap:
    """One two-phase swap in progress."""

    def __init__(self, seq: int, target: Target, pids: set[int]) -> None:
        self.seq = seq
        self.target = target
        self.waiting = set(pids)  # have not answered yet
        self.formats: dict[int, str] = {}
        self.refusal: tuple[int, str] | None = None  # the first worker that said no, and why


class Supervisor:
    """The parent of ``--workers N``: see the module's docstring."""

    def __init__(self, app: App, listeners: list[socket.socket], workers: int, *, keep_alive: float = 5.0,
                 max_connections: int = 1000, access_log: bool = False) -> None:
        self.app = app
        self.holder = app.holder
        self.listeners = listeners
        self.size = workers
        self.options: dict[str, Any] = {"keep_alive": keep_alive, "max_connections": max_connections,
                                        "access_log": access_log}
        self.slots = {name: Slot(name, h) for name, h in holders(app).items()}
        self.stable = self.slots[STABLE]
        self.children: dict[int, Child] = {}
        self.shares = Shares(workers)
        self.tallies = Tallies(workers)
        self.seq = 0
        self.swap: Swap | None = None
        self.asked: list[tuple[Child, int]] = []  # /admin/reload requests to answer
        self.stopping = False
        self.stop_reason = ""
        self.hangup = False
        self.start_deaths = 0  # in a row; back to 0 once a worker outlives STARTUP_WINDOW
        self.respawns: list[tuple[float, int]] = []  # when to replace which dead worker
        self.selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        for s in (self._wake_r, self._wake_w):
            s.setblocking(False)
        self.selector.register(self._wake_r, selectors.EVENT_READ, None)

    # -- signals ---------------------------------------------------------------------------------

    def _on_stop(self, signum: int, _frame: object) -> None:
        # Forwarded at once, even while the main loop waits on git or DVC.
        if not self.stopping:
            self.stopping = True
            self.stop_reason = f"received {signal.Signals(signum).name}: stopping {len(self.children)} workers"
        self._kill_all(signal.SIGTERM)

    def _on_hangup(self, _signum: int, _frame: object) -> None:
        self.hangup = True

    def _kill_all(self, sig: int) -> None:
        for pid in list(self.children):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass

    # -- workers ---------------------------------------------------------------------------------

    @property
    def target(self) -> Target:
        """The version every worker serves (the stable slot's)."""
        return self.stable.target

    def state(self) -> dict[str, Any]:
        return {"supervisor": os.getpid(), "slots": {name: slot.counts() for name, slot in self.slots.items()},
                "workers": [c.row() for c in self.children.values()]}

    def broadcast(self) -> None:
        state = self.state()
        for child in list(self.children.values()):
            self._send(child, ("state", state))

    def _send(self, child: Child, message: tuple[Any, ...]) -> None:
        try:
            child.conn.send(message)
        except OSError:
            pass  # it is dying: reaping will say so

    def spawn(self, replaces: int | None = None) -> None:
        parent_end, child_end = Pipe(duplex=True)
        index = min(set(range(self.size)) - {c.index for c in self.children.values()})
        state = self.state()
        # Blocked across fork: the child must not run the parent's handlers before it resets them.
        signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
        try:
            pid = os.fork()
            if pid == 0:
                parent_end.close()
                self._child(child_end, state, index)
            child_end.close()
            self.children[pid] = Child(pid, parent_end, index)
            self.selector.register(parent_end, selectors.EVENT_READ, self.children[pid])
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)
        if replaces is None:
            log.info("started worker %d", pid, extra={"pid": pid})
        else:
            log.info("restarted worker %d as %d on v%s", replaces, pid, self.target.version,
                     extra={"pid": pid, "replaces": replaces, "version": self.target.version})

    def _child(self, conn: Connection, state: dict[str, Any], index: int) -> NoReturn:
        code = 1
        try:
            signal.set_wakeup_fd(-1)
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
                signal.signal(sig, signal.SIG_DFL)
            signal.signal(signal.SIGHUP, signal.SIG_IGN)  # the parent alone reloads
            for child in self.children.values():
                child.conn.close()
            self.selector.close()
            self._wake_r.close()
            self._wake_w.close()
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)
            targets = {name: slot.target for name, slot in self.slots.items()}
            self.shares.me = self.tallies.me = index
            code = work(self.app, self.listeners, conn, targets, state, self.options, self.shares, self.tallies)
        except BaseException:  # noqa: BLE001 - nothing may escape into the parent's code
            log.exception("worker %d failed", os.getpid())
        finally:
            os._exit(code)

    def _reap(self) -> None:
        for pid, child in list(self.children.items()):
            try:
                done, status = os.waitpid(pid, os.WNOHANG)  # only ours: git and DVC children are not
            except ChildProcessError:
                done, status = pid, 0
            if not done:
                continue
            del self.children[pid]
            self.shares.leave(child.index)
            self._unwatch(child)
            child.conn.close()
            if self.swap is not None and pid in self.swap.waiting:
                self.swap.waiting.discard(pid)
                self.swap.refusal = self.swap.refusal or (pid, "the worker died while preparing")
            if self.stopping:
                continue
            lived = time.monotonic() - child.started
            code = os.waitstatus_to_exitcode(status)
            how = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
            if lived < STARTUP_WINDOW:
                self.start_deaths += 1
            delay = 0.0 if not self.start_deaths else min(MAX_BACKOFF, BACKOFF * 2 ** (self.start_deaths - 1))
            doing = f"serving v{child.version}" if child.version else "before it was ready"
            log.error("worker %d died (%s) after %.1f s %s; restarting it in %.2g s", pid, how, lived, doing, delay,
                      extra={"pid": pid, "status": code, "lived": round(lived, 3), "version": child.version,
                             "restart_in": delay})
            self.respawns.append((time.monotonic() + delay, pid))
            self.broadcast()

    def _unwatch(self, child: Child) -> None:
        if child.watched:
            child.watched = False
            self.selector.unregister(child.conn)

    def _on_message(self, child: Child, message: tuple[Any, ...]) -> None:
        kind = message[0]
        if kind == "ready":
            child.version = message[1][STABLE]
            child.candidate = message[1].get(CANDIDATE)
            child.memory = memory(child.pid)
            log.info("worker %d ready, serving v%s", child.pid, child.version,
                     extra={"pid": child.pid, "version": child.version})
            self.broadcast()
        elif kind == "reload":
            self.asked.append((child, message[1]))
        elif kind in ("prepared", "committed") and self.swap is not None and message[1] == self.swap.seq:
            sw = self.swap
            sw.waiting.discard(child.pid)
            if kind == "prepared":
                ok, detail = message[2], message[3]
                if ok:
                    sw.formats[child.pid] = detail
                elif sw.refusal is None:
                    sw.refusal = child.pid, detail

    def pump(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for messages and signals; handle them."""
        for key, _ in self.selector.select(max(0.0, timeout)):
            if key.data is None:
                try:
                    while self._wake_r.recv(512):
                        pass
                except (BlockingIOError, InterruptedError):
                    pass
                continue
            child: Child = key.data
            try:
                while child.conn.poll():
                    self._on_message(child, child.conn.recv())
            except (EOFError, OSError):
                self._unwatch(child)  # it is exiting: _reap does the rest
        self._reap()

    # -- following the registry ------------------------------------------------------------------

    def reload(self, reason: str) -> str:
        """Re-resolve every slot's spec; swap every worker to what each names, or none.

        Returns:
            What happened to the stable slot (as :meth:`Holder.reload` says it).
        """
        outcomes = {name: self._reload(slot, reason) for name, slot in self.slots.items()}
        return outcomes[STABLE]

    def _reload(self, slot: Slot, reason: str) -> str:
        try:
            directory, card = slot.holder.resolve()
        except ShelfError as exc:
            return self._refuse(slot, exc.message, reason)
        except Exception as exc:  # noqa: BLE001 - a failure to resolve must leave the old version serving
            return self._refuse(slot, f"{type(exc).__name__}: {exc}", reason, exc)
        if same(card, slot.target.card):
            outcome = f"unchanged: v{slot.target.version}"
            if slot.error:
                log.info("%s: %s no longer refused; v%s serves on", reason, slot.holder.spec, slot.target.version)
                slot.error = ""
                self.broadcast()
            else:
                log.log(logging.DEBUG if reason == POLL else logging.INFO, "%s: %s%s", reason, slot.label, outcome)
            return outcome
        return self._swap(slot, Target(str(card["version"]), str(directory), card), reason)

    def _swap(self, slot: Slot, target: Target, reason: str) -> str:
        old = slot.target.version
        what = f"{slot.label}swap to v{target.version}"
        self.seq += 1
        sw = self.swap = Swap(self.seq, target, set(self.children))
        # A poll meeting a version already refused tries it again, as one server does, but quietly.
        quiet = reason == POLL and bool(slot.error)
        log.log(logging.DEBUG if quiet else logging.INFO, "%s (%s): %d workers preparing", what, reason,
                len(sw.waiting), extra={"slot": slot.name, "version": target.version, "previous": old,
                                        "reason": reason, "workers": len(sw.waiting)})
        try:
            for child in list(self.children.values()):
                self._send(child, ("prepare", sw.seq, slot.name, target.directory, target.card))
            deadline = time.monotonic() + PREPARE_DEADLINE
            while sw.waiting and sw.refusal is None and not self.stopping and time.monotonic() < deadline:
                self.pump(deadline - time.monotonic())
            if self.stopping:
                for child in list(self.children.values()):
                    self._send(child, ("abort", sw.seq))
                log.info("%s abandoned: stopping", what)
                return f"unchanged: v{old} (stopping)"
            if sw.refusal is None and sw.waiting:
                sw.refusal = next(iter(sw.waiting)), f"no answer in {PREPARE_DEADLINE:g}s"
            if sw.refusal is not None or not self.children:
                pid, why = sw.refusal or (0, "no worker is running")
                for child in list(self.children.values()):
                    self._send(child, ("abort", sw.seq))
                again = quiet and slot.error == f"refused {slot.holder.spec}: {why}"
                log.log(logging.DEBUG if again else logging.ERROR, "%s aborted: worker %d: %s; every worker keeps "
                        "v%s", what, pid, why, old,
                        extra={"slot": slot.name, "version": target.version, "kept": old, "pid": pid,
                               "reason": reason})
                return self._refuse(slot, why, reason, logged=True)  # no pid: the same refusal counts once
            log.info("%s prepared by all %d workers: committing", what, len(sw.formats),
                     extra={"slot": slot.name, "version": target.version, "workers": len(sw.formats)})
            sw.waiting = set(self.children)
            for child in list(self.children.values()):
                self._send(child, ("commit", sw.seq, reason))
            slot.target = target
            slot.format = next(iter(sw.formats.values()), slot.format)
            deadline = time.monotonic() + COMMIT_DEADLINE
            while sw.waiting and time.monotonic() < deadline:
                self.pump(deadline - time.monotonic())
            for pid in sw.waiting:  # hung: killed, so that it comes back on the new version
                log.error("worker %d did not switch to v%s in %gs: killing it", pid, target.version, COMMIT_DEADLINE)
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        finally:
            self.swap = None
        slot.holder.current = None  # the start-up copy: restarted workers load the target instead
        for child in self.children.values():
            if child.pid not in sw.waiting:
                if slot.name == STABLE:
                    child.version = target.version
                else:
                    child.candidate = target.version
        slot.swaps += 1
        slot.error = ""
        log.info("%s committed on %d workers (was v%s, %s)", what, len(self.children) - len(sw.waiting), old, reason,
                 extra={"slot": slot.name, "version": target.version, "previous": old, "reason": reason})
        self.broadcast()
        return f"serving v{target.version} ({slot.format}), was v{old}"

    def _refuse(self, slot: Slot, message: str, reason: str, exc: BaseException | None = None,
                logged: bool = False) -> str:
        error = f"refused {slot.holder.spec}: {message}"
        new = error != slot.error
        if new:  # a refused version counts once, not once per poll
            slot.failures += 1
        slot.error = error
        if not logged and (new or reason != POLL):
            log.log(logging.WARNING if exc is None else logging.ERROR, "%s (%s); still serving v%s", error, reason,
                    slot.target.version, exc_info=exc,
                    extra={"slot": slot.name, "version": slot.target.version, "reason": reason})
        self.broadcast()
        return error

    # -- the loop --------------------------------------------------------------------------------

    def run(self) -> int:
        """Start the workers and supervise them until SIGTERM/SIGINT (returns 0).

        Raises:
            ShelfError: workers kept dying at start-up (exit code 1).
        """
        previous = {sig: signal.signal(sig, handler) for sig, handler in (
            (signal.SIGTERM, self._on_stop), (signal.SIGINT, self._on_stop), (signal.SIGHUP, self._on_hangup),
            (signal.SIGCHLD, lambda *_: None))}  # SIGCHLD: only to wake the loop (the wake-up fd)
        wakeup = signal.set_wakeup_fd(self._wake_w.fileno(), warn_on_full_buffer=False)
        h = self.holder
        where = urls(self.listeners)
        log.info("modelshelf %s serving %s v%s (%s) on %s following '%s' with %d workers (supervisor %d)",
                 __version__, self.target.card["name"], self.target.version, self.stable.format, " and ".join(where),
                 h.spec, self.size, os.getpid(),
                 extra={"modelshelf": __version__, "version": self.target.version, "urls": where,
                        "following": h.spec, "poll": h.poll, "workers": self.size, "supervisor": os.getpid()})
        if CANDIDATE in self.slots:
            cand = self.slots[CANDIDATE]
            log.info("every worker serves candidate v%s beside it, following '%s'", cand.target.version,
                     cand.holder.spec, extra={"candidate": cand.target.version, "following": cand.holder.spec})
        started = time.monotonic()
        try:
            for _ in range(self.size):
                self.spawn()
            self._loop()
        finally:
            self._stop_all()
            signal.set_wakeup_fd(wakeup)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self.selector.close()
            self._wake_r.close()
            self._wake_w.close()
        log.info("shut down after %.0f s serving v%s (swaps: %d, refused versions: %d)", time.monotonic() - started,
                 self.target.version, self.stable.swaps, self.stable.failures,
                 extra={"version": self.target.version, "swaps": self.stable.swaps, "refused": self.stable.failures})
        return 0

    def _loop(self) -> None:
        h = self.holder
        now = time.monotonic()
        next_poll = now + h.poll if h.poll > 0 else float("inf")
        next_memory = now + MEMORY_EVERY
        while not self.stopping:
            now = time.monotonic()
            soonest = min([next_poll, next_memory, *(t for t, _ in self.respawns)])
            self.pump(soonest - now)
            if self.stopping:
                break
            now = time.monotonic()
            if self.start_deaths >= CRASH_LIMIT:
                log.error("workers keep dying at start-up (%d in a row within %gs of starting): giving up",
                          self.start_deaths, STARTUP_WINDOW)
                self.stop_reason = f"giving up: stopping {len(self.children)} workers"
                raise ShelfError("shelf serve --workers", f"{self.start_deaths} workers in a row died within "
                                 f"{STARTUP_WINDOW:g}s of starting", "see the log above for why")
            if any(c.version is not None and now - c.started >= STARTUP_WINDOW for c in self.children.values()):
                self.start_deaths = 0
            if self.hangup:
                self.hangup = False
                log.info("received SIGHUP: reloading %s", h.spec, extra={"reason": "SIGHUP"})
                self.reload("SIGHUP")
            while self.asked and not self.stopping:
                child, ask = self.asked.pop(0)
                log.info("reload of %s requested through %s (worker %d)", h.spec, ADMIN, child.pid,
                         extra={"reason": ADMIN, "pid": child.pid})
                outcome = self.reload(ADMIN)
                if child.pid in self.children:
                    self._send(child, ("reloaded", ask, outcome))
            if now >= next_poll:
                try:
                    self.reload(POLL)
                except Exception:  # noqa: BLE001 - the poll must outlive a bug
                    log.exception("checking %s failed; polling goes on", h.spec)
                next_poll = time.monotonic() + h.poll
            due = [r for r in self.respawns if r[0] <= time.monotonic()]
            for r in due:
                self.respawns.remove(r)
                self.spawn(replaces=r[1])
            if now >= next_memory:
                for child in self.children.values():
                    child.memory = memory(child.pid)
                self.broadcast()
                next_memory = time.monotonic() + MEMORY_EVERY

    def _stop_all(self) -> None:
        """SIGTERM every worker, wait for all (killing those past :data:`STOP_DEADLINE`)."""
        self.stopping = True
        if self.stop_reason:
            log.info(self.stop_reason)
        if not self.children:
            return
        self._kill_all(signal.SIGTERM)
        deadline = time.monotonic() + STOP_DEADLINE
        while self.children and time.monotonic() < deadline:
            self.pump(min(0.2, deadline - time.monotonic()))
        if self.children:
            log.error("%d workers still running after %gs: killing them", len(self.children), STOP_DEADLINE)
            self._kill_all(signal.SIGKILL)
            while self.children:
                self.pump(0.1)


def supervise(app: App, listeners: list[socket.socket], workers: int, *, keep_alive: float = 5.0,
              max_connections: int = 1000, access_log: bool = False) -> int:
    """Serve ``app`` (from ``build(..., follow=False, app_class=WorkerApp)``) with ``workers``
    forked processes on ``listeners`` until SIGTERM or SIGINT; 0 once every worker stopped."""
    return Supervisor(app, listeners, workers, keep_alive=keep_alive, max_connections=max_connections,
                      access_log=access_log).run()
