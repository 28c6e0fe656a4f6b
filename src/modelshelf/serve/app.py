"""The HTTP app: a plain ASGI callable (no framework on the hot path) over a :class:`Holder`."""

from __future__ import annotations

import asyncio
import hmac
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from modelshelf.serve.holder import Holder
from modelshelf.serve.metrics import Metrics
from modelshelf.serve.payload import BadRequest

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

JSON = [(b"content-type", b"application/json")]
PONG = b'{"ok":true}'
INLINE_ROWS = 64  # larger batches run in a worker thread so the loop keeps answering


class App:
    """ASGI app. ``reload_hook`` asks the server to re-resolve and maybe swap the model."""

    def __init__(self, holder: Holder, *, admin_token: str | None, max_rows: int = 10_000,
                 max_body: int = 8 << 20, reload_hook: Callable[[], Awaitable[str]] | None = None) -> None:
        self.holder = holder
        self.admin_token = admin_token
        self.max_rows = max_rows
        self.max_body = max_body
        self.metrics = Metrics()
        self.reload_hook = reload_hook
        self.lifespan_startup: list[Callable[[], Awaitable[None]]] = []
        self.lifespan_shutdown: list[Callable[[], Awaitable[None]]] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        start = time.perf_counter()
        path, method = scope["path"], scope["method"]
        rows = 0
        try:
            if path == "/predict" and method == "POST":
                status, body, rows = await self._predict(receive)
                headers = JSON
            else:
                status, body, headers = await self._other(path, method, scope, receive)
        except BadRequest as exc:
            status, body, headers = exc.status, orjson.dumps(exc.body()), JSON
        except Exception as exc:  # noqa: BLE001 - a bug answers 500 and the server keeps serving
            status, body, headers = 500, orjson.dumps({"error": f"internal error: {type(exc).__name__}"}), JSON
        await send({"type": "http.response.start", "status": status,
                    "headers": [*headers, (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
        known = path if path in ("/predict", "/health", "/ready", "/model", "/metrics", "/openapi.json",
                                 "/admin/reload", "/ping") else "other"
        if known == "/predict" and method != "POST":
            known = "other"
        self.metrics.observe(known, status, time.perf_counter() - start, rows)

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

    async def _predict(self, receive: Receive) -> tuple[int, bytes, int]:
        loaded = self.holder.current  # read once: this request finishes on this version
        body = await self._read(receive)
        if loaded is None:
            return 503, b'{"error":"no model loaded yet"}', 0
        batch = loaded.parser.parse(body)
        if batch.n <= INLINE_ROWS:
            result = loaded.runner.predict(batch)
        else:
            result = await asyncio.to_thread(loaded.runner.predict, batch)
        return 200, orjson.dumps({"model": loaded.name, "version": loaded.version, **result}), batch.n

    async def _other(self, path: str, method: str, scope: Scope,
                     receive: Receive) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
        h = self.holder
        cur = h.current
        if method == "GET":
            if path == "/ping":
                return 200, PONG, JSON
            if path == "/health":
                state = "ok" if not h.error else "degraded"
                body = {"status": state, "version": cur.version if cur else None,
                        "format": cur.format if cur else None, "following": h.spec, "error": h.error or None}
                return 200, orjson.dumps(body), JSON
            if path == "/ready":
                if cur is None:
                    return 503, b'{"ready":false}', JSON
                return 200, orjson.dumps({"ready": True, "version": cur.version}), JSON
            if path == "/model" and cur is not None:
                return 200, cur.card_json, JSON
            if path == "/openapi.json" and cur is not None:
                return 200, cur.openapi_json, JSON
            if path == "/metrics":
                text = self.metrics.render(cur.name if cur else "", cur.version if cur else "",
                                           cur.format if cur else "", h.swaps, h.failures, not h.error)
                return 200, text.encode(), [(b"content-type", b"text/plain; version=0.0.4")]
        if path == "/admin/reload" and method == "POST":
            await self._read(receive)
            if not self.admin_token:
                return 403, b'{"error":"admin endpoint disabled: start with an admin token"}', JSON
            given = dict(scope.get("headers") or []).get(b"authorization", b"")
            if not hmac.compare_digest(given, b"Bearer " + self.admin_token.encode()):
                return 401, b'{"error":"missing or wrong bearer token"}', JSON
            outcome = await self.reload_hook() if self.reload_hook else "no reload hook"
            return 200, orjson.dumps({"result": outcome, "version": h.current.version if h.current else None,
                                      "error": h.error or None}), JSON
        if path in ("/predict", "/health", "/ready", "/model", "/metrics", "/openapi.json", "/ping",
                    "/admin/reload"):
            return 405, b'{"error":"method not allowed"}', JSON
        return 404, b'{"error":"not found"}', JSON

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                for hook in self.lifespan_startup:
                    await hook()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                for hook in self.lifespan_shutdown:
                    await hook()
                await send({"type": "lifespan.shutdown.complete"})
                return
