"""The HTTP app over a :class:`Holder`: routing, validation and answers, independent of the transport.

:meth:`App.handle` answers a whole request: small requests at once; large bodies, large
batches and reloads with a function for a worker thread to call.  :mod:`modelshelf.serve.httpd`
serves it; ``App`` is also a plain ASGI callable, to mount in any ASGI server.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from modelshelf.serve import oip
from modelshelf.serve.holder import Holder
from modelshelf.serve.metrics import Metrics
from modelshelf.serve.payload import BadRequest, loads, loads_large, release

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
# status, content type, body; the content type may be followed by more header lines, each after
# a CRLF (an Open Inference Protocol answer with binary outputs: oip.binary_type), which go out as they are
Reply = tuple[int, bytes, bytes]
Later = Callable[[], Reply]  # makes a reply, off the server's loop

JSON = b"application/json"
TEXT = b"text/plain; version=0.0.4"
PONG = b'{"ok":true}'
NO_MODEL = b'{"error":"no model loaded yet"}'
INLINE_ROWS = 64  # larger batches run in a worker thread so the loop keeps answering
# Larger bodies are decoded and checked in a worker thread too.  64 KiB is about 85 rows of 30
# numbers, 0.3-0.4 ms of decoding and checks: about what the loop spends on 64 rows, and far
# below a 9,000-row body (7 MB, 70 ms of work while holding the GIL).
INLINE_BODY = 64 * 1024
# The methods each route takes (for 405's Allow header): HEAD wherever GET is.
ALLOW: dict[str, bytes] = {"/predict": b"POST", "/health": b"GET, HEAD", "/ready": b"GET, HEAD",
                           "/model": b"GET, HEAD", "/metrics": b"GET, HEAD", "/openapi.json": b"GET, HEAD",
                           "/ping": b"GET, HEAD", "/admin/reload": b"POST"}
ROUTES = frozenset(ALLOW)
# The Open Inference Protocol's routes (modelshelf.serve.oip), by what they are, for metrics.
V2_LABELS = frozenset(f"/v2/{what}" for what in ("server", "live", "ready", "model", "model_ready", "infer"))
_NOT_ALLOWED = {path: orjson.dumps({"error": f"method not allowed: {path} takes {methods.decode()}"})
                for path, methods in ALLOW.items()}
log = logging.getLogger("modelshelf.serve")


class App:
    """``reload_hook`` re-resolves and maybe swaps the model (called in a worker thread);
    ``lifespan_startup``/``lifespan_shutdown`` run when the server starts and stops."""

    def __init__(self, holder: Holder, *, admin_token: str | None, max_rows: int = 10_000,
                 max_body: int = 8 << 20, reload_hook: Callable[[], str] | None = None) -> None:
        self.holder = holder
        self.admin_token = admin_token
        self.max_rows = max_rows
        self.max_body = max_body
        self.metrics = Metrics()
        self.reload_hook = reload_hook
        self.predictions: Any = None  # a serve.predlog.PredictionLog with --log-predictions
        self.split: Any = None  # a serve.canary.Split with --canary or --shadow
        self.key_header = b""  # the lower-case header whose value routes a canary (connection.py reads it)
        self.lifespan_startup: list[Callable[[], None]] = []
        self.lifespan_shutdown: list[Callable[[], None]] = []
        # One large body decoded and checked at a time: that work holds the GIL in steps of
        # about a millisecond, and two threads taking turns at it keep the loop waiting longer.
        self._decoding = threading.Lock()

    def handle(self, method: str, path: str, body: bytes, authorization: bytes = b"", key: bytes = b"", *,
               inference_header: bytes = b"") -> Reply | Later:
        """The answer to one request: a reply (a tuple) now, or a function that makes it, to
        call outside the server's loop.  HEAD is answered as GET (the transport drops the body).
        ``key``: the value of the canary's routing header, if the request has it;
        ``inference_header``: its ``Inference-Header-Content-Length`` (a binary v2 inference)."""
        start = time.perf_counter()
        loaded = None  # the version answering a /predict: by role in the metrics beside a canary
        try:
            if path == "/predict" and method == "POST":
                loaded = self.holder.current  # read once: this request finishes on this version
                if loaded is None:
                    return self._done(path, start, (503, JSON, NO_MODEL))
                if self.split is not None and not self.split.shadow:
                    loaded = self.split.choose(loaded, key or body)
                if len(body) > INLINE_BODY:
                    return self._later(path, start, lambda: self._predict_large(loaded, body), (loaded, body),
                                       loaded)
                data = loads(body)
                out = loaded.one_row.predict(data, body) if loaded.one_row is not None else None
                rows = 1
                if out is None:
                    batch = loaded.parser.batch(data, body)
                    if batch.n > INLINE_ROWS:
                        return self._later(path, start, lambda: self._predict(loaded, batch), (loaded, body),
                                           loaded)
                    out, rows = loaded.runner.predict(batch), batch.n
                reply = 200, JSON, orjson.dumps({"model": loaded.name, "version": loaded.version, **out})
                if self.predictions is not None:
                    self._logged(loaded, body, reply[2], time.perf_counter() - start)
                return self._done(path, start, reply, rows, loaded=loaded)
            if path == "/admin/reload" and method == "POST":
                refused = self._refuse(authorization)  # here: no worker thread for a stranger
                if refused is not None:
                    return self._done(path, start, refused)
                return self._later(path, start, self._reload)
            if path.startswith("/v2"):
                return self._v2(method, path, body, start, key, inference_header)
            return self._done(path, start, self._other(path, method), method=method)
        except BadRequest as exc:
            label = f"/v2/{r[0]}" if path.startswith("/v2") and (r := oip.route(path)) else path
            return self._done(label, start, (exc.status, JSON, orjson.dumps(exc.body())), loaded=loaded)
        except Exception as exc:  # noqa: BLE001 - a bug answers 500 and the server keeps serving
            log.exception("%s %s failed", method, path)
            return self._done(path, start, _internal(exc), loaded=loaded)

    def _v2(self, method: str, path: str, body: bytes, start: float, key: bytes = b"",
            inference_header: bytes = b"") -> Reply | Later:
        """The Open Inference Protocol's routes (:mod:`modelshelf.serve.oip`).  Beside a canary,
        an inference naming the candidate's version gets the candidate, one naming none is
        routed by its key as ``/predict`` is."""
        r = oip.route(path)
        if r is None:
            return self._done(path, start, (404, JSON, b'{"error":"not found"}'))
        what, name, version = r
        label = f"/v2/{what}"
        if what == "infer" and method == "POST":
            loaded = self.holder.current  # read once: this request finishes on this version
            if self.split is not None and not self.split.shadow and loaded is not None:
                cand = self.split.candidate.current
                if version is None:
                    loaded = self.split.choose(loaded, key or body)
                elif cand is not None and version == cand.version:
                    loaded = cand
            if len(body) > INLINE_BODY:
                return self._later(label, start, lambda: self._infer_large(name, version, loaded, body,
                                                                           inference_header), loaded=loaded)
            try:
                reply, rows = oip.infer(name, version, loaded, body, False,
                                        loaded.runner.predict if loaded else _none, inference_header)
            except BadRequest as exc:
                reply, rows = (exc.status, JSON, orjson.dumps(exc.body())), 0
            return self._done(label, start, reply, rows, loaded=loaded)
        if method == "GET" and what != "infer":
            return self._done(label, start, oip.get(what, name, version, self.holder.current))
        return self._done(label, start, (405, JSON, orjson.dumps(
            {"error": f"method not allowed: {path} takes {oip.allowed(what).decode()}"})))

    def _infer_large(self, name: str | None, version: str | None, loaded: Any, body: bytes,
                     inference_header: bytes) -> tuple[Reply, int]:
        with self._decoding:  # as /predict's large bodies: one decoded at a time
            return oip.infer(name, version, loaded, body, True, loaded.runner.predict if loaded else _none,
                             inference_header)

    def _done(self, path: str, start: float, reply: Reply, rows: int = 0, method: str = "POST",
              loaded: Any = None) -> Reply:
        known = path if (path in ROUTES or path in V2_LABELS) and (path != "/predict" or method == "POST") \
            else "other"
        seconds = time.perf_counter() - start
        self.metrics.observe(known, reply[0], seconds, rows)
        split = self.split
        if loaded is not None and split is not None and not split.shadow:
            self.metrics.observe_role(split.which(loaded), loaded.version, reply[0], seconds)
        return reply

    def _later(self, path: str, start: float, work: Callable[[], tuple[Reply, int]],
               logged: tuple[Any, bytes] | None = None, loaded: Any = None) -> Later:
        """``work`` as a function for a worker thread; ``logged`` (the version and the request's
        body) goes to the prediction log when the answer is a 200; ``loaded`` is the version
        answering (for the metrics by role beside a canary)."""
        def later() -> Reply:
            try:
                reply, rows = work()
            except BadRequest as exc:
                reply, rows = (exc.status, JSON, orjson.dumps(exc.body())), 0
            except Exception as exc:  # noqa: BLE001
                log.exception("POST %s failed", path)
                reply, rows = _internal(exc), 0
            if logged is not None and self.predictions is not None and reply[0] == 200:
                self._logged(*logged, reply[2], time.perf_counter() - start)
            return self._done(path, start, reply, rows, loaded=loaded)

        return later

    def _logged(self, loaded: Any, body: bytes, answer: bytes, seconds: float) -> None:
        """An answered /predict to the prediction log: through the shadow (which adds its own
        answer), with its role beside a canary, or as it is."""
        split = self.split
        if split is None:
            self.predictions.record(loaded.name, loaded.version, body, answer, seconds)
        elif split.shadow:
            split.mirror(loaded, body, answer, seconds)
        else:
            self.predictions.record(loaded.name, loaded.version, body, answer, seconds, split.role(loaded))

    @staticmethod
    def _predict(loaded: Any, batch: Any) -> tuple[Reply, int]:
        out = loaded.runner.predict(batch)
        return (200, JSON, orjson.dumps({"model": loaded.name, "version": loaded.version, **out})), batch.n

    def _predict_large(self, loaded: Any, body: bytes) -> tuple[Reply, int]:
        """A large body, from its bytes to its answer, in a worker thread."""
        with self._decoding:
            data = loads_large(body)
            out = loaded.one_row.predict(data, body) if loaded.one_row is not None else None
            if out is None:
                batch = loaded.parser.batch(data, body)
            release(data)
        if out is not None:
            return (200, JSON, orjson.dumps({"model": loaded.name, "version": loaded.version, **out})), 1
        return self._predict(loaded, batch)

    def _refuse(self, authorization: bytes) -> Reply | None:
        """403 without an admin token, 401 without its bearer credentials (RFC 7235: the scheme
        is case-insensitive), else None."""
        if not self.admin_token:
            return 403, JSON, b'{"error":"admin endpoint disabled: start with an admin token"}'
        import hmac  # not at module level: it loads OpenSSL, and start-up is timed

        scheme, _, token = authorization.strip().partition(b" ")
        # compare_digest takes bytes whatever they hold; the time taken does not tell the token
        if not (hmac.compare_digest(token.lstrip(b" "), self.admin_token.encode()) and scheme.lower() == b"bearer"):
            return 401, JSON, b'{"error":"missing or wrong bearer token"}'
        return None

    def _reload(self) -> tuple[Reply, int]:
        outcome = self.reload_hook() if self.reload_hook else "no reload hook"
        h = self.holder
        return (200, JSON, orjson.dumps({"result": outcome, "version": h.current.version if h.current else None,
                                         "error": h.error or None})), 0

    def _other(self, path: str, method: str) -> Reply:
        h = self.holder
        cur = h.current
        if method == "GET" or method == "HEAD":
            if path == "/ping":
                return 200, JSON, PONG
            if path == "/health":
                state = "ok" if not h.error else "degraded"
                health = {"status": state, "version": cur.version if cur else None,
                          "format": cur.format if cur else None, "following": h.spec, "error": h.error or None}
                if self.predictions is not None:
                    pl = self.predictions
                    health["prediction_log"] = {"directory": pl.directory, "sample": pl.sample,
                                                "written": pl.written, "dropped": pl.dropped}
                if self.split is not None:
                    health["candidate"] = self.split.health()
                return 200, JSON, orjson.dumps(health)
            if path == "/ready":
                if cur is None:
                    return 503, JSON, b'{"ready":false}'
                return 200, JSON, orjson.dumps({"ready": True, "version": cur.version})
            if path == "/model":
                return (200, JSON, cur.card_json) if cur is not None else (503, JSON, NO_MODEL)
            if path == "/openapi.json":
                return (200, JSON, cur.openapi_json) if cur is not None else (503, JSON, NO_MODEL)
            if path == "/metrics":
                return 200, TEXT, self.metrics_text().encode()
        if path in ROUTES:
            return 405, JSON, _NOT_ALLOWED[path]
        return 404, JSON, b'{"error":"not found"}'

    def metrics_text(self, counts: dict[str, Any] | None = None, connections: int | None = None) -> str:
        """``/metrics``: this process's counters, or ``counts`` and ``connections`` when given
        (see :meth:`Metrics.render`)."""
        h = self.holder
        cur = h.current
        return self.metrics.render(cur.name if cur else "", cur.version if cur else "", cur.format if cur else "",
                                   h.swaps, h.failures, not h.error, counts=counts, connections=connections)

    def startup(self) -> None:
        for hook in self.lifespan_startup:
            hook()

    def shutdown(self) -> None:
        for hook in self.lifespan_shutdown:
            hook()

    # -- ASGI ------------------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        path, method = scope["path"], scope["method"]
        try:
            body = await self._read(receive) if method == "POST" and (path in ROUTES or path.startswith("/v2/")) \
                else b""
        except BadRequest as exc:
            reply: Reply = self._done(path, time.perf_counter(), (exc.status, JSON, orjson.dumps(exc.body())))
        else:
            headers = dict(scope.get("headers") or [])
            binary = headers.get(b"inference-header-content-length")  # passed only when given, as httpd does
            result = self.handle("GET" if method == "HEAD" else method, path, body,
                                 headers.get(b"authorization", b""), headers.get(self.key_header, b""),
                                 **({"inference_header": binary} if binary else {}))
            if isinstance(result, tuple):
                reply = result
            else:
                import asyncio

                reply = await asyncio.to_thread(result)
        status, ctype, data = reply
        ctype, *more = ctype.split(b"\r\n")  # header lines after the content type (see Reply)
        headers = [(b"content-type", ctype), (b"content-length", str(len(data)).encode())]
        headers += [(name.lower(), value) for name, _, value in (line.partition(b": ") for line in more)]
        if status == 405:
            headers.append((b"allow", allowed(path)))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": b"" if method == "HEAD" else data})

    async def _read(self, receive: Receive) -> bytes:
        chunks, size = [], 0
        while True:
            message = await receive()
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                raise BadRequest(413, f"the body is larger than {self.max_body} bytes")
            chunks.append(chunk)
            if not message.get("more_body"):
                return b"".join(chunks)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self.startup()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return


def allowed(path: str) -> bytes:
    """The methods ``path`` takes, for a 405's Allow header."""
    if path in ALLOW:
        return ALLOW[path]
    r = oip.route(path) if path.startswith("/v2") else None
    return oip.allowed(r[0]) if r else b""


def _none(_batch: Any) -> dict[str, Any]:
    raise AssertionError("no model: oip.infer answers 503 before predicting")


def _internal(exc: Exception) -> Reply:
    return 500, JSON, orjson.dumps({"error": f"internal error: {type(exc).__name__}"})
