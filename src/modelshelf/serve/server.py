"""Run the app: load a verified version, follow the registry, reload on SIGHUP or request.

Everything here logs on ``modelshelf.serve`` and configures nothing (see
:mod:`modelshelf.serve.logs` for what the ``shelf`` command sets up).
"""

from __future__ import annotations

import logging
import signal
import socket
import threading
import time
from typing import TYPE_CHECKING, Any

from modelshelf import __version__
from modelshelf.serve.app import App
from modelshelf.serve.holder import POLL, Holder

if TYPE_CHECKING:
    from pathlib import Path

    from modelshelf.serve.canary import Split
    from modelshelf.serve.predlog import PredictionLog

log = logging.getLogger("modelshelf.serve")
ADMIN = "POST /admin/reload"


def build(spec: str, *, repo: str | Path = ".", admin_token: str | None = None, poll: float = 10.0,
          max_rows: int = 10_000, max_body: int = 8 << 20, allow_version_mismatch: bool = False,
          predictions: PredictionLog | None = None, follow: bool = True, app_class: type[App] = App,
          split: Split | None = None) -> App:
    """An app serving ``spec`` (a path, ``vX.Y.Z``, ``latest`` or a stage), loaded and verified now.

    With ``predictions``, every answered ``/predict`` is offered to that log, which starts and
    stops with the server.  With ``split`` (its candidate already loaded), a canary or a shadow
    answers beside ``spec``; its candidate is re-resolved whenever ``spec`` is.

    Once started it re-resolves ``spec`` every ``poll`` seconds (0: never) and on SIGHUP, each
    time in a thread of its own; :meth:`Holder.reload` lets one reload run at a time.  The
    SIGHUP handler it installs on start-up is replaced by the previous one on shutdown.
    Without ``follow`` it does neither: something else (the supervisor of ``--workers``, see
    :mod:`modelshelf.serve.workers`) decides what it serves.  ``app_class``: an :class:`App` subclass.

    Raises:
        ShelfError: the first version cannot be served (see :meth:`Holder.reload`).
    """
    holder = Holder(spec, repo, allow_version_mismatch=allow_version_mismatch, max_rows=max_rows, poll=poll)
    holder.reload("start-up")  # raises when the first version cannot be served: nothing to fall back to

    def admin_reload() -> str:
        log.info("reload of %s requested through %s", spec, ADMIN, extra={"reason": ADMIN})
        if split is not None:
            split.candidate.reload(ADMIN)
        return holder.reload(ADMIN)

    app = app_class(holder, admin_token=admin_token, max_rows=max_rows, max_body=max_body, reload_hook=admin_reload)
    stop = threading.Event()
    previous: list[Any] = []  # the SIGHUP handler before start-up, once ours is installed

    def poll_registry() -> None:
        while not stop.wait(poll):
            try:
                holder.reload(POLL)  # never raises once a version is served: a refusal is kept in holder.error
                if split is not None:
                    split.candidate.reload(POLL)
            except Exception:  # noqa: BLE001 - the poll must outlive a bug
                log.exception("checking %s failed; polling goes on", spec)

    def hangup_reload() -> None:
        # Logged here, not in the handler: a handler interrupting the main thread mid-log would re-enter it.
        log.info("received SIGHUP: reloading %s", spec, extra={"reason": "SIGHUP"})
        holder.reload("SIGHUP")
        if split is not None:
            split.candidate.reload("SIGHUP")

    def on_hangup(_signum: int, _frame: object) -> None:
        threading.Thread(target=hangup_reload, name="shelf-reload", daemon=True).start()

    def startup() -> None:
        try:
            previous.append(signal.signal(signal.SIGHUP, on_hangup))
        except (ValueError, AttributeError):  # not the main thread, or no SIGHUP here
            pass
        if poll > 0:
            threading.Thread(target=poll_registry, name="shelf-follow", daemon=True).start()

    def shutdown() -> None:
        stop.set()
        if previous:
            old = previous.pop()
            try:  # None: set outside Python, which cannot be put back; the default is closest
                signal.signal(signal.SIGHUP, signal.SIG_DFL if old is None else old)
            except ValueError:  # not the main thread: leave it to whoever stops the process
                previous.append(old)

    if follow:
        app.lifespan_startup.append(startup)
        app.lifespan_shutdown.append(shutdown)
    if split is not None:
        app.split = split
        app.key_header = split.key_header if not split.shadow else b""
        split.predictions = predictions
        app.lifespan_startup.append(split.start)
        app.lifespan_shutdown.append(split.stop)  # before the log stops: the shadow's last records go in
    if predictions is not None:
        app.predictions = predictions
        app.lifespan_startup.append(predictions.start)
        app.lifespan_shutdown.append(predictions.stop)
    return app


def listen(host: str = "127.0.0.1", port: int = 8080) -> list[socket.socket]:
    """Listening sockets for ``host:port``, one per address it resolves to (port 0: any free port).

    Raises:
        ConfigError: the address cannot be bound (a port in use, an unknown host).
    """
    from modelshelf.serve import httpd

    return httpd.listen(host, port)


def urls(listeners: list[socket.socket]) -> list[str]:
    """``http://host:port`` for each listener (IPv6 hosts bracketed)."""
    out = []
    for sock in listeners:
        host, port = sock.getsockname()[:2]
        out.append(f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}")
    return out


def run(app: App, listeners: list[socket.socket], *, keep_alive: float = 5.0, max_connections: int = 1000,
        access_log: bool = False) -> None:
    """Serve ``app`` on ``listeners`` until SIGTERM or SIGINT; log start-up and shutdown.

    Args:
        app: from :func:`build`.
        listeners: from :func:`listen`.
        keep_alive: seconds an idle keep-alive connection stays open.
        max_connections: open connections at most (see :func:`modelshelf.serve.httpd.run`).
        access_log: log one record per answer on ``modelshelf.serve.access``.
    """
    from modelshelf.serve import httpd

    h = app.holder
    cur = h.current
    assert cur is not None, "build() loads the first version"
    where = urls(listeners)
    follows = f"following '{h.spec}'" + (f", polling every {h.poll:g}s" if h.poll > 0 else ", not polling")
    log.info("modelshelf %s serving %s v%s (%s) on %s %s", __version__, cur.name, cur.version, cur.format,
             " and ".join(where), follows,
             extra={"modelshelf": __version__, "model": cur.name, "version": cur.version, "format": cur.format,
                    "formats": [r.get("format", kind) for kind, r in cur.card["artefacts"].items()],
                    "urls": where, "host": listeners[0].getsockname()[0], "port": listeners[0].getsockname()[1],
                    "following": h.spec, "poll": h.poll, "keep_alive": keep_alive,
                    "max_connections": max_connections, "access_log": access_log,
                    "admin_reload": bool(app.admin_token)})
    started = time.monotonic()
    httpd.run(app, listeners, keep_alive=keep_alive, max_connections=max_connections, access_log=access_log)
    log.info("shut down after %.0f s serving %s v%s (swaps: %d, refused versions: %d)", time.monotonic() - started,
             cur.name, h.current.version if h.current else cur.version, h.swaps, h.failures,
             extra={"version": h.current.version if h.current else None, "swaps": h.swaps,
                    "refused": h.failures})
