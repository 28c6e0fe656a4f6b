"""Run the app: load a verified version, follow the registry, reload on SIGHUP or request."""

from __future__ import annotations

import signal
import socket
import threading
from typing import TYPE_CHECKING

from modelshelf.serve.app import App
from modelshelf.serve.holder import Holder

if TYPE_CHECKING:
    from pathlib import Path


def build(spec: str, *, repo: str | Path = ".", admin_token: str | None = None, poll: float = 10.0,
          max_rows: int = 10_000, max_body: int = 8 << 20, allow_version_mismatch: bool = False) -> App:
    """An app serving ``spec`` (a path, ``vX.Y.Z``, ``latest`` or a stage), loaded and verified now.

    Once started it re-resolves ``spec`` every ``poll`` seconds (0: never) and on SIGHUP, each
    time in a thread of its own; :meth:`Holder.reload` lets one reload run at a time."""
    holder = Holder(spec, repo, allow_version_mismatch=allow_version_mismatch, max_rows=max_rows)
    holder.reload()  # raises when the first version cannot be served: nothing to fall back to
    app = App(holder, admin_token=admin_token, max_rows=max_rows, max_body=max_body, reload_hook=holder.reload)
    stop = threading.Event()

    def follow() -> None:
        while not stop.wait(poll):
            holder.reload()  # never raises once a version is served: a refusal is kept in holder.error

    def on_hangup(_signum: int, _frame: object) -> None:
        threading.Thread(target=holder.reload, name="shelf-reload", daemon=True).start()

    def startup() -> None:
        try:
            signal.signal(signal.SIGHUP, on_hangup)
        except (ValueError, AttributeError):  # not the main thread, or no SIGHUP here
            pass
        if poll > 0:
            threading.Thread(target=follow, name="shelf-follow", daemon=True).start()

    app.lifespan_startup.append(startup)
    app.lifespan_shutdown.append(stop.set)
    return app


def listen(host: str = "127.0.0.1", port: int = 8080) -> list[socket.socket]:
    """Listening sockets for ``host:port``, one per address it resolves to (port 0: any free port)."""
    from modelshelf.serve import httpd

    return httpd.listen(host, port)


def run(app: App, listeners: list[socket.socket], *, keep_alive: float = 5.0) -> None:
    """Serve ``app`` on ``listeners`` until SIGTERM or SIGINT; idle keep-alive connections close
    after ``keep_alive`` s."""
    from modelshelf.serve import httpd

    httpd.run(app, listeners, keep_alive=keep_alive)
