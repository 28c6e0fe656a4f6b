"""Run the app: load a verified version, follow the registry, reload on SIGHUP or request."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

from modelshelf.serve.app import App
from modelshelf.serve.holder import Holder


def build(spec: str, *, repo: Path = Path("."), admin_token: str | None = None, poll: float = 10.0,
          max_rows: int = 10_000, max_body: int = 8 << 20, allow_version_mismatch: bool = False) -> App:
    """An app serving ``spec`` (a path, ``vX.Y.Z``, ``latest`` or a stage), loaded and verified now."""
    holder = Holder(spec, repo, allow_version_mismatch=allow_version_mismatch, max_rows=max_rows)
    holder.reload()  # raises when the first version cannot be served: nothing to fall back to
    busy = asyncio.Lock()

    async def reload() -> str:
        async with busy:
            return await asyncio.to_thread(holder.reload)

    app = App(holder, admin_token=admin_token, max_rows=max_rows, max_body=max_body, reload_hook=reload)
    tasks: list[asyncio.Task[None]] = []

    async def follow() -> None:
        while True:
            await asyncio.sleep(poll)
            await reload()

    async def startup() -> None:
        loop = asyncio.get_running_loop()
        try:
            loop.add_signal_handler(signal.SIGHUP, lambda: tasks.append(loop.create_task(_quiet(reload()))))
        except (NotImplementedError, RuntimeError):  # not on the main thread / no signals here
            pass
        if poll > 0:
            tasks.append(loop.create_task(follow()))

    async def shutdown() -> None:
        for task in tasks:
            task.cancel()

    app.lifespan_startup.append(startup)
    app.lifespan_shutdown.append(shutdown)
    return app


async def _quiet(coro: object) -> None:
    await coro  # type: ignore[misc]


def run(app: App, host: str = "127.0.0.1", port: int = 8080, *, keep_alive: float = 5.0) -> None:
    """Serve ``app`` until SIGTERM or SIGINT; idle keep-alive connections close after ``keep_alive`` s."""
    from modelshelf.serve import httpd

    httpd.run(app, host, port, keep_alive=keep_alive)
