"""The subcommands of ``shelf``, grouped by what they act on; each module registers its own
arguments through :data:`Add` and calls one library function per command."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pathlib import Path

Handler = Callable[[argparse.Namespace], int]
Add = Callable[[str, Handler, str], argparse.ArgumentParser]

# The modules here, in the order of ``shelf --help``.
GROUPS = ("pipeline", "serving", "registry", "provenance", "shell")
# Which module registers each subcommand, so ``shelf COMMAND`` imports only that one (``shelf
# serve`` is timed to its first answer); tests/test_cli.py checks it against the registrations.
GROUP_OF = {
    **dict.fromkeys(("init", "prepare", "train", "evaluate", "gate", "serialise", "verify", "show", "report"),
                    "pipeline"),
    **dict.fromkeys(("serve", "predict", "drift", "canary"), "serving"),
    **dict.fromkeys(("release", "versions", "diff", "promote", "deprecate", "rollback", "get", "gc", "site"), "registry"),
    **dict.fromkeys(("bom", "env", "keygen"), "provenance"),
    "completion": "shell",
}


def path(value: str) -> Path:
    """An argparse type: a path.  pathlib is imported when one is parsed, not when the parser is
    built (``shelf serve`` takes none, and its start is timed)."""
    from pathlib import Path

    return Path(value)


def positive_seconds(value: str) -> float:
    """An argparse type: a positive, finite number of seconds."""
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {value!r}") from None
    if not number > 0 or number == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {value}")
    return number


def pushable(p: argparse.ArgumentParser) -> None:
    """``--push`` and ``--git-remote`` for commands that write tags."""
    p.add_argument("--push", action="store_true", help="push the tag to the git remote (atomically)")
    p.add_argument("--git-remote", default="origin", help="git remote for --push (default: origin)")


def number(v: Any) -> str:
    """A metric for a table: 4 significant digits, or ``none`` when absent."""
    return "none" if v is None else f"{v:.4g}"
