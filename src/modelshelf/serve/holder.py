"""The holder: which verified version answers now, and the swap to the next one.

A request reads ``holder.current`` once and finishes on that object, so a swap (one
attribute assignment, after the new version is fetched, verified and warmed up) never
interrupts it.  A version that fails to load is refused; the old one keeps serving.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import TYPE_CHECKING, Any

from modelshelf.errors import ConfigError, ShelfError
from modelshelf.serve.runner import Loaded, load

if TYPE_CHECKING:
    from pathlib import Path

log = logging.getLogger("modelshelf.serve")
POLL = "poll"  # the reason of a reload by the registry poll: logged only when something happens


class Holder:
    """What ``spec`` resolves to, loaded: ``current`` (None until the first load), the last
    refusal in ``error``, and counts of swaps and refused versions.  ``poll`` is how often the
    server re-resolves ``spec`` (0: never), for reports."""

    # A plain class, not a dataclass: creating one costs ~1 ms of the server's timed start-up.
    def __init__(self, spec: str, repo: str | Path = ".", *, allow_version_mismatch: bool = False,
                 max_rows: int = 10_000, poll: float = 0.0) -> None:
        self.spec = spec
        self.repo = repo
        self.allow_version_mismatch = allow_version_mismatch
        self.max_rows = max_rows
        self.poll = poll
        self.current: Loaded | None = None
        self.error = ""
        self.swaps = 0
        self.failures = 0
        self.checked_at = 0.0
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        version = self.current.version if self.current else None
        return f"Holder(spec={self.spec!r}, version={version!r}, error={self.error!r})"

    def reload(self, reason: str = POLL) -> str:
        """Resolve the spec again; swap if it names another version. Returns what happened.

        Args:
            reason: what asked for it (``poll``, ``SIGHUP``, ``POST /admin/reload``), for the log.

        Returns:
            One line: unchanged, serving (and what it was), or refused and why.

        Raises:
            ShelfError: only on the first load (nothing is served yet, so nothing falls back):
                the cause's own class, hence the CLI's exit code (ConfigError for an unknown
                version or stage, IntegrityError, VersionMismatchError, RemoteError, GitError).
                Once a version is served a refusal is kept in ``error`` and the old one serves on.
        """
        with self._lock:  # one reload at a time; requests never wait on this lock
            self.checked_at = time.time()
            first = self.current is None
            started = time.perf_counter()
            try:
                directory, card = self._resolve()
                if self.current is not None and self._same(directory, card):
                    return self._unchanged(reason)
                new = load(directory, card=card, allow_version_mismatch=self.allow_version_mismatch,
                           max_rows=self.max_rows)
            except ShelfError as exc:
                if first:
                    raise
                return self._refuse(exc.message, reason)
            except OSError as exc:
                if first:  # e.g. the fetched copy cannot be written under .dvc/tmp
                    raise _os_error(exc, self.spec) from exc
                return self._refuse(f"{type(exc).__name__}: {exc}", reason, exc)
            except Exception as exc:  # noqa: BLE001 - any failure to load must leave the old model serving
                if first:
                    raise  # a bug: the CLI says "internal error"
                return self._refuse(f"{type(exc).__name__}: {exc}", reason, exc)
            _log_loaded(new, directory, started, reason)
            return self._install(new, reason)

    def prepare(self, directory: str | Path, card: dict[str, Any] | None) -> Loaded:
        """Load and verify the version in ``directory`` without serving it (the first phase of a
        swap that several processes make together; :meth:`install` is the second).

        Raises:
            ShelfError, OSError or any error of :func:`load`: the version cannot be served.
        """
        started = time.perf_counter()
        new = load(directory, card=card, allow_version_mismatch=self.allow_version_mismatch, max_rows=self.max_rows)
        _log_loaded(new, directory, started, "prepare")
        return new

    def install(self, new: Loaded, reason: str) -> str:
        """Serve ``new`` (from :meth:`prepare`) from now on; returns what happened, as :meth:`reload`."""
        with self._lock:
            return self._install(new, reason)

    def _install(self, new: Loaded, reason: str) -> str:
        old = self.current
        self.current = new
        self.error = ""
        if old is None:
            return f"serving v{new.version} ({new.format})"
        self.swaps += 1
        log.info("swapped v%s → v%s (%s, %s)", old.version, new.version, new.format, reason,
                 extra={"model": new.name, "version": new.version, "previous": old.version,
                        "format": new.format, "reason": reason})
        return f"serving v{new.version} ({new.format}), was v{old.version}"

    def _unchanged(self, reason: str) -> str:
        assert self.current is not None
        outcome = f"unchanged: v{self.current.version}"
        if self.error:
            log.info("%s: %s no longer refused; v%s serves on", reason, self.spec, self.current.version)
        else:
            log.log(logging.DEBUG if reason == POLL else logging.INFO, "%s: %s", reason, outcome)
        self.error = ""
        return outcome

    def _refuse(self, message: str, reason: str, exc: BaseException | None = None) -> str:
        assert self.current is not None
        error = f"refused {self.spec}: {message}"
        new = error != self.error
        if new:  # count a refused version once, not once per poll
            self.failures += 1
        self.error = error
        if new or reason != POLL:  # a poll repeating the same refusal says nothing new
            log.log(logging.WARNING if exc is None else logging.ERROR, "%s (%s); still serving v%s",
                    error, reason, self.current.version, exc_info=exc,
                    extra={"version": self.current.version, "reason": reason})
        return error

    def resolve(self) -> tuple[str | Path, dict[str, Any]]:
        """What ``spec`` names now: the directory to load and the card to verify it against
        (for a directory, its card as read now, so every process verifies against the same one).

        Raises:
            ShelfError or OSError: as :meth:`reload` on the first load.
        """
        directory, card = self._resolve()
        if card is None:
            from modelshelf.card import read_card

            card = read_card(directory)
        return directory, card

    def _resolve(self) -> tuple[str | Path, dict[str, Any] | None]:
        """The directory to load and, for a release, the card at its tag (read from git): the
        only card its bytes are verified against.  A directory brings its own card (None here)."""
        if os.path.exists(self.spec):  # a directory on disk: what resolve() would return, without importing it
            return self.spec, None  # (nor pathlib: see artefacts.py)
        from modelshelf.model import locate

        where = locate(self.spec, self.repo)
        return where.directory, where.card

    def _same(self, directory: str | Path, card: dict[str, Any] | None) -> bool:
        if card is None:
            from modelshelf.card import read_card

            card = read_card(directory)
        assert self.current is not None
        return (str(card["version"]) == self.current.version
                and card["artefacts"] == self.current.card["artefacts"])


def _log_loaded(new: Loaded, directory: str | Path, started: float, reason: str) -> None:
    ms = (time.perf_counter() - started) * 1000
    log.info("loaded %s v%s (%s; verified %s) from %s in %.0f ms", new.name, new.version, new.format,
             ", ".join(r["file"] for r in new.card["artefacts"].values()), directory, ms,
             extra={"model": new.name, "version": new.version, "format": new.format,
                    "directory": str(directory), "load_ms": round(ms, 1), "reason": reason})


def _os_error(exc: OSError, spec: str) -> ShelfError:
    """A file-system failure while resolving ``spec`` at start-up, as the one-line error it is."""
    where = exc.filename if exc.filename is not None else spec
    return ConfigError(str(where), f"cannot serve {spec}: {exc.strerror or exc}",
                       "check the path exists and that this user may read and write it (under systemd: "
                       "ReadWritePaths= for the project's .dvc/tmp)")
