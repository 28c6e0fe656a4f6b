"""``shelf``: parse arguments, call one library function, print its result, map errors.

Exit codes: 0 success, 1 internal error, 2 bad configuration or data, 3 gate failed,
4 integrity (hash) failure, 5 library version mismatch, 6 git/DVC state,
7 release refused, 8 DVC remote error, 9 drift detected, 10 schema break.

Conventions: an unknown command or flag is named with the closest one (difflib) and exits 2,
with the usage of the (sub)command it was given to; a bare ``shelf`` prints the help on stdout
and exits 2 (a usage error: git exits 1, dvc 254, neither 0); ``--traceback`` prints the
traceback and keeps the error's exit code; a closed stdout (``shelf versions | head -1``) ends
quietly with status 141 (128 + SIGPIPE, what a shell reports for git); a stream that cannot
encode ✓ → … (``PYTHONIOENCODING=ascii``, a Latin-1 locale) gets ASCII stand-ins (+ -> ...).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence
from typing import Any

from modelshelf import __version__
from modelshelf.commands import GROUP_OF, GROUPS, Handler
from modelshelf.errors import ConfigError, ShelfError


class _Formatter(argparse.HelpFormatter):
    """argparse's formatter, but sized without importing shutil (and with it bz2, lzma and
    zlib): every ``add_argument`` makes a formatter, and ``shelf serve`` is timed to its
    first answer."""

    def __init__(self, prog: str, indent_increment: int = 2, max_help_position: int = 24,
                 width: int | None = None) -> None:
        if width is None:
            width = _columns() - 2
        super().__init__(prog, indent_increment, max_help_position, width)

    def _get_help_string(self, action: argparse.Action) -> str | None:
        """The help, with ``(default: X)`` appended where a default means something (not None,
        not a flag's False, not suppressed) and the help does not already say it."""
        text = action.help
        default = action.default
        if (text and "default" not in text and action.option_strings and default not in (None, False, True, [], "")
                and default is not argparse.SUPPRESS and action.nargs != 0):
            return f"{text} (default: %(default)s)"
        return text


class _Parser(argparse.ArgumentParser):
    """argparse, with did-you-mean suggestions for commands and flags, and an unknown flag
    reported with the usage of the subcommand it was given to."""

    def parse_args(self, args: Sequence[str] | None = None,  # type: ignore[override]
                   namespace: argparse.Namespace | None = None) -> argparse.Namespace:
        ns, extras = self.parse_known_args(args, namespace)
        if extras:
            target = _subparser(self, getattr(ns, "command", None)) or self
            target.error(_unrecognized(extras, target, self))
        return ns

    def _check_value(self, action: argparse.Action, value: Any) -> None:
        if isinstance(action, argparse._SubParsersAction) and value not in action.choices:
            raise argparse.ArgumentError(None, f"unknown command {value!r}" + _did_you_mean(value, list(action.choices)))
        super()._check_value(action, value)


def _did_you_mean(word: str, choices: Sequence[str]) -> str:
    """``; did you mean 'x'?`` for the closest of ``choices`` (difflib), or a pointer to --help."""
    import difflib  # only on this error path

    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else "; see `shelf --help`"


def _subparser(parser: argparse.ArgumentParser, command: str | None) -> argparse.ArgumentParser | None:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction) and command in action.choices:
            return action.choices[command]  # type: ignore[no-any-return]
    return None


def _unrecognized(extras: Sequence[str], target: argparse.ArgumentParser, top: argparse.ArgumentParser) -> str:
    """The first unknown argument, with the closest flag ``target`` (or the top level) knows."""
    first = extras[0]
    if not first.startswith("-"):
        return f"unexpected argument {first!r}"
    flags = [o for p in {id(target): target, id(top): top}.values() for a in p._actions for o in a.option_strings]
    return f"unknown option {first.split('=', 1)[0]!r}" + _did_you_mean(first.split("=", 1)[0], flags)


def _columns() -> int:
    """The terminal's width as ``shutil.get_terminal_size`` finds it: $COLUMNS, the terminal, or 80."""
    try:
        return int(os.environ["COLUMNS"])
    except (KeyError, ValueError):
        pass
    try:
        return os.get_terminal_size(sys.__stdout__.fileno()).columns or 80
    except (AttributeError, ValueError, OSError):
        return 80


class _Ignored:
    """Stands in for the parser of a subcommand that is not being run: takes its arguments
    and forgets them."""

    def __getattr__(self, _name: str) -> Any:
        return self._ignore

    def _ignore(self, *_args: Any, **_kwargs: Any) -> _Ignored:
        return self


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The whole parser; with ``only``, one that knows just that subcommand (when it exists),
    for a quicker start (``shelf serve`` is timed to its first answer)."""
    common = argparse.ArgumentParser(add_help=False, formatter_class=_Formatter)
    common.add_argument("--traceback", action="store_true", default=argparse.SUPPRESS,
                        help="show the Python traceback on errors")
    parser = _Parser(prog="shelf", parents=[common], formatter_class=_Formatter,
                     description="Gated, versioned scikit-learn models on Git + DVC.")
    parser.add_argument("--version", action="version", version=f"modelshelf {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    added: list[str] = []

    def add(name: str, handler: Handler, help: str) -> argparse.ArgumentParser:
        if only is not None and name != only:
            return _Ignored()  # type: ignore[return-value]
        p = sub.add_parser(name, parents=[common], help=help, description=help, formatter_class=_Formatter)
        p.set_defaults(handler=handler)
        added.append(name)
        return p

    for name in GROUPS if only not in GROUP_OF else (GROUP_OF[only],):
        importlib.import_module(f"modelshelf.commands.{name}").register(add)
    return parser if added or only is None else build_parser()


# Stage commands that a warm host (modelshelf.pipeline.warm) runs with its imports done.
_WARM_STAGES = frozenset(("prepare", "train", "evaluate", "gate", "serialise"))


def main(argv: Sequence[str] | None = None) -> int:
    from_command_line = argv is None
    argv = sys.argv[1:] if argv is None else list(argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    if from_command_line and command in _WARM_STAGES and "--traceback" not in argv:
        from modelshelf.pipeline import warm  # standard library only: no heavy import here

        status = warm.run(argv) if warm.enabled() else None
        if status is not None:
            return status
    _tolerate_encoding(sys.stdout)
    _tolerate_encoding(sys.stderr)
    if command is None and not any(a in ("-h", "--help", "--version") for a in argv):
        build_parser().print_help()  # bare `shelf`: the help, as a usage error (exit 2)
        return ConfigError.exit_code
    args = build_parser(command).parse_args(argv)
    traceback = getattr(args, "traceback", False)
    try:
        status = args.handler(args)
        sys.stdout.flush()  # a closed pipe shows here, not at exit
        return status
    except BrokenPipeError:
        if not _stdout_closed():
            raise
        # `shelf versions | head -1`: end quietly, as git does (killed by SIGPIPE: status 141).
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 128 + 13
    except ShelfError as exc:
        if traceback:
            _print_traceback()
        print(f"shelf: error: {exc.message}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("shelf: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - one line instead of a traceback
        if traceback:
            _print_traceback()
        print(f"shelf: internal error: {type(exc).__name__}: {exc} (rerun with --traceback)",
              file=sys.stderr)
        return 1


def _print_traceback() -> None:
    import traceback  # only with --traceback

    traceback.print_exc()


def _stdout_closed() -> bool:
    """Whether standard output's reader is gone (a pipe or socket reporting an error or hang-up)."""
    import select

    try:
        poll = select.poll()
        poll.register(sys.stdout.fileno(), select.POLLOUT)
        events = poll.poll(0)
    except (AttributeError, OSError, ValueError):
        return True
    return any(ev & (select.POLLERR | select.POLLHUP) for _, ev in events)


# What a stream that cannot encode them (PYTHONIOENCODING=ascii, a Latin-1 locale) shows instead.
_ASCII = {"✓": "+", "✗": "x", "→": "->", "←": "<-", "…": "...", "—": "--", "–": "-", "≥": ">=", "≤": "<=",
          "±": "+/-", "×": "x", "·": "*", "‘": "'", "’": "'", "“": '"', "”": '"', "Δ": "d"}


def _ascii_fallback(exc: UnicodeError) -> tuple[str, int]:
    if not isinstance(exc, UnicodeEncodeError):
        raise exc
    text = exc.object[exc.start:exc.end]
    return "".join(_ASCII.get(ch, "?") for ch in text), exc.end


def _tolerate_encoding(stream: Any) -> None:
    """Let a stream whose encoding is not UTF write ✓ → … as ASCII instead of raising."""
    encoding = (getattr(stream, "encoding", None) or "").lower().replace("-", "").replace("_", "")
    if encoding.startswith("utf") or getattr(stream, "errors", "strict") != "strict":
        return
    import codecs

    codecs.register_error("modelshelf-ascii", _ascii_fallback)
    try:
        stream.reconfigure(errors="modelshelf-ascii")
    except (AttributeError, ValueError):
        pass

if __name__ == "__main__":
    raise SystemExit(main())
