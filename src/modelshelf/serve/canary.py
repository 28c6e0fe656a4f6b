"""A candidate beside the stable model on one server: ``--canary SPEC --canary-share F`` or
``--shadow SPEC``.

Canary: a stable share of ``/predict`` requests is answered by the candidate.  Which requests
is decided by a hash of the request's key (the ``--canary-key-header`` header when the client
sends one, else the body), so one key always lands on the same side: a user, a session or a
retried request sees one model.  The answer's ``version`` says which model gave it.

Shadow: every request is answered by the stable model alone (the bytes it would send without
a shadow); the candidate scores the same body in a thread of its own, and the prediction log
gets one record with both answers and both latencies.  A shadow that falls behind drops
records (counted), never delays an answer.

The canary ends by itself once the stable spec serves the candidate's version (``shelf
promote``): every request goes to the one model.  Imported only with ``--canary``/``--shadow``.
"""

from __future__ import annotations

import collections
import hashlib
import logging
import threading
import time
from typing import TYPE_CHECKING, Any

import orjson

from modelshelf.serve.payload import BadRequest, loads, loads_large

if TYPE_CHECKING:
    from modelshelf.serve.holder import Holder
    from modelshelf.serve.predlog import PredictionLog
    from modelshelf.serve.runner import Loaded

log = logging.getLogger("modelshelf.serve")
KEY_HEADER = "X-Canary-Key"
_SCALE = float(1 << 64)


class Split:
    """The candidate ``holder`` and how traffic reaches it.

    Args:
        candidate: the candidate's holder (loaded and verified like the stable one).
        share: with a canary, the share of keys the candidate answers (0 < share <= 1).
        shadow: mirror every request to the candidate instead; answers stay the stable model's.
        key_header: the request header whose value is the canary's routing key.
        queue: mirrored requests waiting for the shadow thread at most; more are dropped.
    """

    def __init__(self, candidate: Holder, *, share: float = 0.0, shadow: bool = False,
                 key_header: str = KEY_HEADER, queue: int = 1000) -> None:
        self.candidate = candidate
        self.key_header = key_header.lower().encode("latin-1")
        self.share = share
        self.shadow = shadow
        self.limit = queue
        self.answered = 0  # requests the canary answered
        self.mirrored = 0  # requests the shadow scored
        self.dropped = 0
        self.errors = 0  # requests the shadow could not score (a 4xx or 5xx of its own)
        self.predictions: PredictionLog | None = None
        self._threshold = int(share * _SCALE)
        self._queue: collections.deque[tuple[Any, ...]] = collections.deque()
        self._ready = threading.Event()
        self._stop = False
        self._thread: threading.Thread | None = None
        self._roles: dict[str, bytes] = {}

    def takes(self, key: bytes) -> bool:
        """Whether the canary answers the request whose key is ``key`` (stable per key)."""
        digest = hashlib.blake2b(key, digest_size=8).digest()
        return int.from_bytes(digest, "big") < self._threshold

    def choose(self, stable: Loaded, key: bytes) -> Loaded:
        """The model that answers: the candidate for its share of keys, else ``stable``.  Once
        both are one version (promoted) or the candidate is not loaded, always ``stable``."""
        cand = self.candidate.current
        if cand is None or cand.version == stable.version or not self.takes(key):
            return stable
        self.answered += 1
        return cand

    def which(self, loaded: Loaded) -> str:
        """Who ``loaded`` is here: ``canary`` (the candidate's version now) or ``stable``."""
        cand = self.candidate.current
        return "canary" if cand is not None and loaded is cand else "stable"

    def role(self, loaded: Loaded) -> bytes:
        """The prediction log's ``role`` for an answer by ``loaded``: stable or canary."""
        which = self.which(loaded)
        if which not in self._roles:
            self._roles[which] = b',"role":"' + which.encode() + b'"'
        return self._roles[which]

    def mirror(self, stable: Loaded, body: bytes, answer: bytes, seconds: float) -> None:
        """Queue ``body`` for the shadow with the stable model's ``answer`` (on the server's loop)."""
        if self.predictions is None or not self.predictions.take():
            return
        if len(self._queue) >= self.limit:
            self.dropped += 1
            return
        self._queue.append((stable, body, answer, seconds))
        self._ready.set()

    def start(self) -> None:
        """Start the shadow's thread (nothing to start for a canary)."""
        if self.shadow:
            self._thread = threading.Thread(target=self._run, name="shelf-shadow", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Score what is queued, then stop the shadow's thread (before the log stops)."""
        self._stop = True
        self._ready.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        self._score_queued()
        if self.dropped:
            log.warning("the shadow dropped %d requests: it fell behind", self.dropped,
                        extra={"dropped": self.dropped})

    def health(self) -> dict[str, Any]:
        """What ``/health`` says about the candidate."""
        cur = self.candidate.current
        return {"mode": "shadow" if self.shadow else "canary", "following": self.candidate.spec,
                "version": cur.version if cur else None, "share": None if self.shadow else self.share,
                "answered": self.answered, "mirrored": self.mirrored, "dropped": self.dropped,
                "errors": self.errors, "error": self.candidate.error or None}

    def _run(self) -> None:
        while not self._stop:
            self._ready.wait(0.5)
            self._ready.clear()
            self._score_queued()

    def _score_queued(self) -> None:
        while self._queue:
            stable, body, answer, seconds = self._queue.popleft()
            cand = self.candidate.current
            if cand is None:
                continue
            started = time.perf_counter()
            try:
                shadow = orjson.dumps({"model": cand.name, "version": cand.version, **score(cand, body)})
                part = b'"response":' + shadow
            except BadRequest as exc:
                self.errors += 1
                part = b'"status":' + str(exc.status).encode() + b',"error":' + orjson.dumps(exc.body())
            except Exception as exc:  # noqa: BLE001 - the shadow's bug must not reach the stable answers
                log.exception("the shadow v%s failed to score a request", cand.version)
                self.errors += 1
                part = b'"status":500,"error":' + orjson.dumps(f"internal error: {type(exc).__name__}")
            ms = round((time.perf_counter() - started) * 1000, 3)
            extra = (b',"role":"shadow","shadow":{"version":' + orjson.dumps(cand.version)
                     + b',"latency_ms":' + orjson.dumps(ms) + b"," + part + b"}")
            assert self.predictions is not None
            self.predictions.record(stable.name, stable.version, body, answer, seconds, extra, sampled=True)
            self.mirrored += 1
            time.sleep(0)  # let the server's loop have the GIL between two scorings


def score(loaded: Loaded, body: bytes) -> dict[str, Any]:
    """What ``/predict`` answers for ``body`` with ``loaded`` (its checks included), as a dict.

    Raises:
        BadRequest: the body is not a request this model takes.
    """
    data = loads_large(body) if len(body) > 64 * 1024 else loads(body)  # as App.handle decides
    out = loaded.one_row.predict(data, body) if loaded.one_row is not None else None
    if out is None:
        out = loaded.runner.predict(loaded.parser.batch(data, body))
    return out
