"""``shelf``: parse arguments, call one library function, print its result, map errors.

Exit codes: 0 success, 1 internal error, 2 bad configuration or data, 3 gate failed,
4 integrity (hash) failure, 5 library version mismatch, 6 git/DVC state,
7 release refused, 8 DVC remote error, 9 drift detected, 10 schema break.
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
from modelshelf.errors import ShelfError


class _Formatter(argparse.HelpFormatter):
    """argparse's formatter, but sized without importing shutil (and with it bz2, lzma and
    zlib): every ``add_argument`` makes a formatter, and ``shelf serve`` is timed to its
    first answer."""

    def __init__(self, prog: str, indent_increment: int = 2, max_help_position: int = 24,
                 width: int | None = None) -> None:
        if width is None:
            width = _columns() - 2
        super().__init__(prog, indent_increment, max_help_position, width)


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
    parser = argparse.ArgumentParser(prog="shelf", parents=[common], formatter_class=_Formatter,
                                     description="Gated, versioned scikit-learn models on Git + DVC.")
    parser.add_argument("--version", action="version", version=f"modelshelf {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

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
    args = build_parser(command).parse_args(argv)
    traceback = getattr(args, "traceback", False)
    try:
        return args.handler(args)
    except ShelfError as exc:
        if traceback:
            raise
        print(f"shelf: error: {exc.message}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("shelf: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - one line instead of a traceback
        if traceback:
            raise
        print(f"shelf: internal error: {type(exc).__name__}: {exc} (rerun with --traceback)",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
