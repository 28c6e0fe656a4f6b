"""What ``shelf`` writes to the terminal, in one place: results, chatter (silenced by ``-q``),
JSON, colour (a terminal only, as https://no-color.org and FORCE_COLOR say) and a spinner on
stderr for slow commands.

Standard library only at import: ``rich`` is imported by :func:`progress` when stderr is a
terminal, so neither ``shelf serve`` nor a stage pays for it.  Off a terminal (a pipe, a file,
CI) nothing here adds a byte: no colour, no spinner.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TextIO

_ANSI = {"ok": "32", "fail": "31;1", "warn": "33", "bold": "1", "dim": "2"}


class _Settings:
    quiet: bool = False
    verbose: int = 0
    color: bool | None = None  # None: decide per stream (auto)


settings = _Settings()


def configure(*, quiet: bool = False, verbose: int = 0, color: bool | None = None) -> None:
    """Set the output mode for this process: ``-q``, the ``-v`` count, and ``--color``
    (True: always, False: never, None: auto)."""
    settings.quiet, settings.verbose, settings.color = quiet, verbose, color


def color_enabled(stream: TextIO | None = None) -> bool:
    """Whether to colour ``stream`` (stdout by default): ``--color always|never`` first, then
    ``NO_COLOR`` (set and non-empty: never), ``FORCE_COLOR`` (set and non-empty: always), then
    a terminal that is not ``TERM=dumb``."""
    if settings.color is not None:
        return settings.color
    if os.environ.get("NO_COLOR"):
        return False
    if os.environ.get("FORCE_COLOR"):
        return True
    return _isatty(stream if stream is not None else sys.stdout) and os.environ.get("TERM") != "dumb"


def style(text: str, kind: str, stream: TextIO | None = None) -> str:
    """``text`` in the colour of ``kind`` (ok, fail, warn, bold, dim) when ``stream`` (stdout by
    default) is coloured; ``text`` unchanged otherwise."""
    if not text or not color_enabled(stream):
        return text
    return f"\x1b[{_ANSI[kind]}m{text}\x1b[0m"


def result(text: str = "") -> None:
    """A command's result on stdout: printed even with ``-q``."""
    print(text)


def say(text: str = "", *, err: bool = False) -> None:
    """A message about what was done (stdout, or stderr with ``err``); ``-q`` silences it."""
    if not settings.quiet:
        print(text, file=sys.stderr if err else sys.stdout)


def warn(text: str) -> None:
    """A warning on stderr, printed even with ``-q``."""
    print(style(f"warning: {text}", "warn", sys.stderr), file=sys.stderr)


def emit_json(obj: Any) -> None:
    """``obj`` as indented JSON on stdout (the ``--json`` output of every command)."""
    print(json.dumps(obj, indent=2, default=str))


# The spinner on screen, if any: a nested progress() relabels it instead of starting another.
_active: list[Any] = []


@contextmanager
def progress(label: str) -> Iterator[None]:
    """A spinner with ``label`` on stderr while the block runs: on a terminal that is not
    ``TERM=dumb`` only, never with ``-q``; coloured as :func:`color_enabled` says for stderr.

    While it spins, lines written to ``sys.stderr`` (and to ``sys.stdout`` when it is the same
    terminal) are printed above it; it is erased when the block ends, before any error line.
    Inside another ``progress`` block it only changes the label.
    """
    if _active:
        spinner = _active[-1]
        before = spinner.text
        spinner.update(text=_text(label))
        try:
            yield
        finally:
            spinner.update(text=before)
        return
    stderr = sys.stderr
    if settings.quiet or not _isatty(stderr) or os.environ.get("TERM") == "dumb":
        yield
        return
    from rich.console import Console  # a terminal is waiting: the import is worth it
    from rich.live import Live
    from rich.spinner import Spinner

    color = color_enabled(stderr)
    console = Console(file=stderr, force_terminal=True, color_system="auto" if color else None,
                      no_color=not color, highlight=False, markup=False, emoji=False)
    unicode = (getattr(stderr, "encoding", None) or "").lower().replace("-", "").startswith("utf")
    spinner = Spinner("dots" if unicode else "line", text=_text(label), style="cyan")
    stdout = sys.stdout
    through = [_Through(console, stderr)]
    if _same_terminal(stdout, stderr):
        through.append(_Through(console, stdout))
    live = Live(spinner, console=console, transient=True, refresh_per_second=12.5,
                redirect_stdout=False, redirect_stderr=False)
    try:
        live.start(refresh=True)
        started = True
    except Exception:  # noqa: BLE001 - a terminal rich cannot drive: no spinner, the command still runs
        started = False
    if not started:
        yield
        return
    sys.stderr = through[0]  # type: ignore[assignment]
    if len(through) > 1:
        sys.stdout = through[1]  # type: ignore[assignment]
    _active.append(spinner)
    try:
        yield
    finally:
        _active.pop()
        sys.stderr, sys.stdout = stderr, stdout
        live.stop()  # erases the spinner (transient) and shows the cursor again
        for proxy in through:
            proxy.close_through()


def _text(label: str) -> Any:
    from rich.text import Text

    return Text(label)


class _Through:
    """A text stream that prints whole lines above the spinner (through the rich console that
    draws it) and hands everything else to the real stream."""

    def __init__(self, console: Any, stream: TextIO) -> None:
        self._console, self._stream, self._pending = console, stream, ""

    def write(self, text: str) -> int:
        from rich.text import Text

        head, newline, tail = (self._pending + text).rpartition("\n")
        if newline:
            self._console.print(Text.from_ansi(head), soft_wrap=True)
            self._pending = tail
        else:
            self._pending = tail
        return len(text)

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        """Whole lines are written at once; a partial line waits for its end (or the spinner's)."""
        self._stream.flush()

    def close_through(self) -> None:
        """The spinner is gone: the partial line, if any, goes straight to the real stream."""
        if self._pending:
            self._stream.write(self._pending)
            self._pending = ""
        self._stream.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):
        return False


def _same_terminal(a: Any, b: Any) -> bool:
    """Whether two streams are the same terminal (stdout and stderr on one screen)."""
    if not (_isatty(a) and _isatty(b)):
        return False
    try:
        return os.path.samestat(os.fstat(a.fileno()), os.fstat(b.fileno()))
    except (AttributeError, ValueError, OSError):
        return False
