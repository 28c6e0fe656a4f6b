"""The HTTP app over a :class:`Holder`: routing, validation and answers, independent of the transport.

:meth:`App.handle` answers a whole request: small requests at once, large batches and reloads
with a function for a worker thread to call.  :mod:`modelshelf.serve.httpd` serves it; ``App``
is also a plain ASGI callable, to mount in any ASGI server.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from modelshelf.serve.holder import Holder
from modelshelf.serve.metrics import Metrics
from modelshelf.serve.payload import BadRequest, loads

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
Reply = tuple[int, bytes, bytes]  # status, content type, body
Later = Callable[[], Reply]  # makes a reply, off the server's loop

JSON = b"application/json"
TEXT = b"text/plain; version=0.0.4"
PONG = b'{"ok":true}'
INLINE_ROWS = 64  # larger batches run in a worker thread so the loop keeps answering
ROUTES = frozenset({"/predict", "/health", "/ready", "/model", "/metrics", "/openapi.json", "/admin/reload",
                    "/ping"})


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
        self.lifespan_startup: list[Callable[[], None]] = []
        self.lifespan_shutdown: list[Callable[[], None]] = []

    def handle(self, method: str, path: str, body: bytes, authorization: bytes = b"") -> Reply | Later:
        """The answer to one request: a reply (a tuple) now, or a function that makes it, to
        call outside the server's loop."""
        start = time.perf_counter()
        try:
            if path == "/predict" and method == "POST":
                loaded = self.holder.current  # read once: this request finishes on this version
                if loaded is None:
                    return self._done(path, start, (503, JSON, b'{"error":"no model loaded yet"}'))
                data = loads(body)
                out = loaded.one_row.predict(data) if loaded.one_row is not None else None
                rows = 1
                if out is None:
                    batch = loaded.parser.batch(data)
                    if batch.n > INLINE_ROWS:
                        return self._later(path, start, lambda: self._predict(loaded, batch))
                    out, rows = loaded.runner.predict(batch), batch.n
                reply = 200, JSON, orjson.dumps({"model": loaded.name, "version": loaded.version, **out})
                return self._done(path, start, reply, rows)
            if path == "/admin/reload" and method == "POST":
                return self._later(path, start, lambda: self._reload(authorization))
            return self._done(path, start, self._other(path, method), method=method)
        except BadRequest as exc:
            return self._done(path, start, (exc.status, JSON, orjson.dumps(exc.body())))
        except Exception as exc:  # noqa: BLE001 - a bug answers 500 and the server keeps serving
            return self._done(path, start, _internal(exc))

    def _done(self, path: str, start: float, reply: Reply, rows: int = 0, method: str = "POST") -> Reply:
        known = path if path in ROUTES and (path != "/predict" or method == "POST") else "other"
        self.metrics.observe(known, reply[0], time.perf_counter() - start, rows)
        return reply

    def _later(self, path: str, start: float, work: Callable[[], tuple[Reply, int]]) -> Later:
        def later() -> Reply:
            try:
                reply, rows = work()
            except BadRequest as exc:
                reply, rows = (exc.status, JSON, orjson.dumps(exc.body())), 0
            except Exception as exc:  # noqa: BLE001
                reply, rows = _internal(exc), 0
            return self._done(path, start, reply, rows)

        return later

    @staticmethod
    def _predict(loaded: Any, batch: Any) -> tuple[Reply, int]:
        out = loaded.runner.predict(batch)
        return (200, JSON, orjson.dumps({"model": loaded.name, "version": loaded.version, **out})), batch.n

    def _reload(self, authorization: bytes) -> tuple[Reply, int]:
        if not self.admin_token:
            return (403, JSON, b'{"error":"admin endpoint disabled: start with an admin token"}'), 0
        import hmac  # not at module level: it loads OpenSSL, and start-up is timed

        if not hmac.compare_digest(authorization, b"Bearer " + self.admin_token.encode()):
            return (401, JSON, b'{"error":"missing or wrong bearer token"}'), 0
        outcome = self.reload_hook() if self.reload_hook else "no reload hook"
        h = self.holder
        return (200, JSON, orjson.dumps({"result": outcome, "version": h.current.version if h.current else None,
                                         "error": h.error or None})), 0

    def _other(self, path: str, method: str) -> Reply:
        h = self.holder
        cur = h.current
        if method == "GET":
            if path == "/ping":
                return 200, JSON, PONG
            if path == "/health":
                state = "ok" if not h.error else "degraded"
                return 200, JSON, orjson.dumps({"status": state, "version": cur.version if cur else None,
                                                "format": cur.format if cur else None, "following": h.spec,
                                                "error": h.error or None})
            if path == "/ready":
                if cur is None:
                    return 503, JSON, b'{"ready":false}'
                return 200, JSON, orjson.dumps({"ready": True, "version": cur.version})
            if path == "/model" and cur is not None:
                return 200, JSON, cur.card_json
            if path == "/openapi.json" and cur is not None:
                return 200, JSON, cur.openapi_json
            if path == "/metrics":
                text = self.metrics.render(cur.name if cur else "", cur.version if cur else "",
                                           cur.format if cur else "", h.swaps, h.failures, not h.error)
                return 200, TEXT, text.encode()
        if path in ROUTES:
            return 405, JSON, b'{"error":"method not allowed"}'
        return 404, JSON, b'{"error":"not found"}'

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
            body = await self._read(receive) if method == "POST" and path in ROUTES else b""
        except BadRequest as exc:
            reply: Reply = self._done(path, time.perf_counter(), (exc.status, JSON, orjson.dumps(exc.body())))
        else:
            auth = dict(scope.get("headers") or []).get(b"authorization", b"")
            result = self.handle(method, path, body, auth)
            if isinstance(result, tuple):
                reply = result
            else:
                import asyncio

                reply = await asyncio.to_thread(result)
        status, ctype, data = reply
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", ctype), (b"content-length", str(len(data)).encode())]})
        await send({"type": "http.response.body", "body": data})

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


def _internal(exc: Exception) -> Reply:
    return 500, JSON, orjson.dumps({"error": f"internal error: {type(exc).__name__}"})
