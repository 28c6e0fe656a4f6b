"""``shelf``: parse arguments, call one library function, print its result, map errors.

Exit codes: 0 success, 1 internal error, 2 bad configuration or data, 3 gate failed,
4 integrity (hash) failure, 5 library version mismatch, 6 git/DVC state,
7 release refused, 8 DVC remote error, 9 drift detected, 10 schema break.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from modelshelf import __version__
from modelshelf.commands import Handler, pipeline, registry, serving
from modelshelf.errors import ShelfError


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--traceback", action="store_true", default=argparse.SUPPRESS,
                        help="show the Python traceback on errors")
    parser = argparse.ArgumentParser(prog="shelf", parents=[common],
                                     description="Gated, versioned scikit-learn models on Git + DVC.")
    parser.add_argument("--version", action="version", version=f"modelshelf {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, handler: Handler, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, parents=[common], help=help, description=help)
        p.set_defaults(handler=handler)
        return p

    for group in (pipeline, serving, registry):
        group.register(add)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
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
