"""The holder: which verified version answers now, and the swap to the next one.

A request reads ``holder.current`` once and finishes on that object, so a swap (one
attribute assignment, after the new version is fetched, verified and warmed up) never
interrupts it.  A version that fails to load is refused; the old one keeps serving.
"""

from __future__ import annotations

import os
import threading
import time
from typing import TYPE_CHECKING

from modelshelf.errors import ShelfError
from modelshelf.serve.runner import Loaded, load

if TYPE_CHECKING:
    from pathlib import Path


class Holder:
    """What ``spec`` resolves to, loaded: ``current`` (None until the first load), the last
    refusal in ``error``, and counts of swaps and refused versions."""

    # A plain class, not a dataclass: creating one costs ~1 ms of the server's timed start-up.
    def __init__(self, spec: str, repo: str | Path = ".", *, allow_version_mismatch: bool = False,
                 max_rows: int = 10_000) -> None:
        self.spec = spec
        self.repo = repo
        self.allow_version_mismatch = allow_version_mismatch
        self.max_rows = max_rows
        self.current: Loaded | None = None
        self.error = ""
        self.swaps = 0
        self.failures = 0
        self.checked_at = 0.0
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        version = self.current.version if self.current else None
        return f"Holder(spec={self.spec!r}, version={version!r}, error={self.error!r})"

    def reload(self) -> str:
        """Resolve the spec again; swap if it names another version. Returns what happened."""
        with self._lock:  # one reload at a time; requests never wait on this lock
            self.checked_at = time.time()
            try:
                directory = self._resolve()
                if self.current is not None and self._same(directory):
                    self.error = ""
                    return f"unchanged: v{self.current.version}"
                new = load(directory, allow_version_mismatch=self.allow_version_mismatch,
                           max_rows=self.max_rows)
            except ShelfError as exc:
                return self._refuse(exc.message)
            except Exception as exc:  # noqa: BLE001 - any failure to load must leave the old model serving
                return self._refuse(f"{type(exc).__name__}: {exc}")
            old = self.current
            self.current = new
            self.error = ""
            if old is not None:
                self.swaps += 1
            return f"serving v{new.version} ({new.format})" + (f", was v{old.version}" if old else "")

    def _refuse(self, message: str) -> str:
        error = f"refused {self.spec}: {message}"
        if error != self.error:  # count a refused version once, not once per poll
            self.failures += 1
        self.error = error
        if self.current is None:
            raise RuntimeError(self.error)
        return self.error

    def _resolve(self) -> str | Path:
        if os.path.exists(self.spec):  # a directory on disk: what resolve() would return, without importing it
            return self.spec  # (nor pathlib: see artefacts.py)
        from modelshelf.model import resolve

        return resolve(self.spec, self.repo)

    def _same(self, directory: str | Path) -> bool:
        from modelshelf.card import read_card

        card = read_card(directory)
        assert self.current is not None
        return (str(card["version"]) == self.current.version
                and card["artefacts"] == self.current.card["artefacts"])
