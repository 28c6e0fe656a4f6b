"""``shelf serve --log-predictions DIR``: a sample of the requests ``/predict`` answered, with
the answer, the version that gave it, when and how fast, as rotating JSON Lines files.

The server's loop makes the line (a few microseconds) and appends it to a bounded queue; a
thread of its own writes the lines, rotates the files at ``max_bytes`` and keeps the newest ``keep``. When the
writer falls behind, records are dropped and counted, never waited for. Off (no
``--log-predictions``) this module is not imported.

Standard library only, and no pathlib: it starts with the server, whose start-up is timed.
"""

from __future__ import annotations

import collections
import logging
import os
import random
import threading
import time
from typing import Any

import orjson

log = logging.getLogger("modelshelf.serve")
PREFIX, SUFFIX = "predictions-", ".jsonl"
CHUNK = 256  # lines written at once


class PredictionLog:
    """A sampled, bounded, rotating log of predictions in ``directory``.

    Args:
        directory: created if missing; holds only this log's ``predictions-*.jsonl`` files.
        sample: the share of answered requests recorded (0 < sample <= 1).
        max_bytes: a file is closed and a new one started past this size.
        keep: how many files are kept; older ones are deleted (per process: one worker never
            deletes the files of another that is alive).
        queue: records waiting for the writer at most; more are dropped and counted.
    """

    def __init__(self, directory: str, *, sample: float = 1.0, max_bytes: int = 64 << 20, keep: int = 10,
                 queue: int = 10_000) -> None:
        if not 0 < sample <= 1:
            raise ValueError("sample must be in (0, 1]")
        try:  # here, before the model loads: a log that cannot be written is a bad flag
            os.makedirs(directory, exist_ok=True)
            probe = os.path.join(directory, f".probe-{os.getpid()}")
            with open(probe, "wb"):
                pass
            os.unlink(probe)
        except OSError as exc:
            from modelshelf.errors import ConfigError

            raise ConfigError(f"--log-predictions {directory}", f"cannot write there ({exc.strerror})",
                              "give a writable directory") from None
        self.directory = directory
        self.sample = sample
        self.max_bytes = max_bytes
        self.keep = keep
        self.limit = queue
        self.written = 0
        self.dropped = 0
        self._queue: collections.deque[bytes] = collections.deque()  # whole lines
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._file: Any = None
        self._size = 0
        self._seq = 0
        self._random = random.Random()

    def record(self, model: str, version: str, request: bytes, response: bytes, seconds: float,
               extra: bytes = b"", sampled: bool = False) -> None:
        """Queue one answered request (called on the server's loop: no I/O here); ``extra`` is
        more of the record's object, already JSON (``,"role":"canary"``); ``sampled``: the caller
        already drew it (:meth:`take`)."""
        if not sampled and self.sample < 1 and self._random.random() >= self.sample:
            return
        if len(self._queue) >= self.limit:
            self.dropped += 1
            return
        # Formatted here (a few µs): a writer thread formatting thousands of records at once
        # would hold the GIL while the loop waits for it, which showed in the p99.
        self._queue.append(_line(time.time(), model, version, request, response, seconds, extra))

    def take(self) -> bool:
        """Whether the next request is in the sample (for work done only to be logged)."""
        return self.sample >= 1 or self._random.random() < self.sample

    def start(self) -> None:
        """Start the writer thread."""
        self._thread = threading.Thread(target=self._run, name="shelf-predlog", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Write what is queued, close the file and stop the writer."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._drain()
        if self._file is not None:
            self._file.close()
            self._file = None
        if self.dropped:
            log.warning("the prediction log dropped %d records: the writer fell behind", self.dropped,
                        extra={"dropped": self.dropped})

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            try:
                self._drain()
            except OSError:  # a full disk must not stop serving: say so, drop, retry later
                log.exception("writing the prediction log in %s failed", self.directory)
                self.dropped += len(self._queue)
                self._queue.clear()
                self._close()

    def _drain(self) -> None:
        wrote = False
        while self._queue:
            if self._file is None or self._size >= self.max_bytes:
                self._rotate()
            room = self.max_bytes - self._size  # a file ends past max_bytes by one line at most
            lines, size = [], 0
            while self._queue and len(lines) < CHUNK and size < room:
                lines.append(line := self._queue.popleft())
                size += len(line)
            self._file.write(b"".join(lines))
            self._size += size
            self.written += len(lines)
            wrote = True
        if wrote:
            self._file.flush()

    def _rotate(self) -> None:
        self._close()
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        self._seq += 1  # orders the files one process opens within one second
        name = f"{PREFIX}{stamp}-{os.getpid()}-{self._seq:06d}{SUFFIX}"
        self._file = open(os.path.join(self.directory, name), "ab")  # noqa: SIM115 - kept open across writes
        self._size = 0
        # Only this process's files and those of processes gone (a restarted worker's): another
        # live worker's open file, once deleted, would swallow what it writes.
        files = sorted(f for f in os.listdir(self.directory)
                       if f.startswith(PREFIX) and f.endswith(SUFFIX) and _deletable(f))
        for old in files[:-self.keep]:
            try:
                os.unlink(os.path.join(self.directory, old))
            except FileNotFoundError:
                pass

    def _close(self) -> None:
        if self._file is not None:
            try:
                self._file.close()
            except OSError:
                pass
            self._file = None


def _deletable(name: str) -> bool:
    """Whether the log file ``name`` is this process's or a gone process's."""
    try:
        pid = int(name[len(PREFIX):-len(SUFFIX)].split("-")[1])
    except (IndexError, ValueError):
        return False
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # alive, someone else's
        return False
    return False


_stamp: tuple[int, bytes] = (-1, b"")  # the whole second last formatted, and its text (one object: threads share it)
_heads: dict[tuple[str, str], bytes] = {}  # (model, version) → their JSON members


def _line(at: float, model: str, version: str, request: bytes, response: bytes, seconds: float,
          extra: bytes = b"") -> bytes:
    """One JSON line (a few µs: the server's loop makes it); the request and answer are
    embedded as they were sent (both valid JSON: the request was parsed, the answer made by
    orjson), re-encoded only when they span lines."""
    if b"\n" in request or b"\r" in request:
        request = orjson.dumps(orjson.loads(request))
    global _stamp
    whole, stamp = _stamp
    if int(at) != whole:
        whole = int(at)
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)).encode()
        _stamp = whole, stamp
    head = _heads.get((model, version))
    if head is None:
        head = _heads[(model, version)] = orjson.dumps({"model": model, "version": version})[1:-1]
    return b"".join((b'{"time":"', stamp, b".%03dZ\"," % int(at % 1 * 1000), head, b',"latency_ms":',
                     b"%.3f" % (seconds * 1000), extra, b',"request":', request, b',"response":', response,
                     b"}\n"))


def read(directory: str) -> list[dict[str, Any]]:
    """Every record in ``directory``'s log files, oldest file first, as
    :func:`modelshelf.serve.logread.read_log` reads them: a line cut short by a kill (the last of
    a file) is skipped, any other malformed line is a ``DataError``."""
    from modelshelf.serve.logread import read_log  # not at start-up: only readers need it

    return [entry.record for entry in read_log(directory).entries]
