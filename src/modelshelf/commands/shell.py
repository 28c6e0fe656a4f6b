"""``shelf completion``: the shell's side of the command line."""

from __future__ import annotations

import argparse
import sys

from modelshelf.commands import Add


def cmd_completion(a: argparse.Namespace) -> int:
    """Print the completion script for ``a.shell``, made from the whole parser."""
    from modelshelf.cli import build_parser
    from modelshelf.completion import script

    sys.stdout.write(script(build_parser(), a.shell))
    return 0


def register(add: Add) -> None:
    """Add these subcommands and their arguments."""
    p = add("completion", cmd_completion, "print a shell completion script: "
            "eval \"$(shelf completion bash)\", or see docs/setup.md")
    p.add_argument("shell", choices=("bash", "zsh", "fish"), help="the shell to complete in")
