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

Output (:mod:`modelshelf.commands.console`): every command takes ``-q/--quiet`` (chatter
silenced; results, ``--json``, warnings and errors kept), ``-v/--verbose`` (the ``modelshelf``
loggers' records on stderr, ``-v`` INFO, ``-vv`` DEBUG; ``shelf serve`` keeps its own
``--log-level``) and ``--color {auto,always,never}``, before or after the command name.  Colour
is for a terminal only (auto: a tty, ``TERM`` not ``dumb``, ``NO_COLOR`` unset or empty;
``FORCE_COLOR`` forces it; ``--color`` overrides both), so output to a pipe or file is the same
bytes with or without a terminal around.  Slow commands (:data:`PROGRESS`) show a spinner on
stderr when it is a terminal and ``-q`` is not given; it is erased before the error line.
``shelf completion bash|zsh|fish`` prints a completion script made from this parser.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence
from typing import Any

from modelshelf import __version__
from modelshelf.commands import GROUP_OF, GROUPS, Handler, console
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
    # SUPPRESS: a flag given before the command is not reset by the subcommand's defaults.
    common.add_argument("--traceback", action="store_true", default=argparse.SUPPRESS,
                        help="show the Python traceback on errors")
    common.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS,
                        help="print results, warnings and errors only")
    common.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS,
                        help="log what is done on stderr (-v info, -vv debug)")
    common.add_argument("--color", choices=_COLOR, default=argparse.SUPPRESS,
                        help="colour the output: auto (a terminal only, NO_COLOR and FORCE_COLOR respected), "
                             "always or never (default: auto)")
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

_COLOR = {"auto": None, "always": True, "never": False}  # --color → console.configure(color=...)
_VALUED = frozenset(("--color",))  # global flags that take the next word as their value

# What the spinner says while each slow command runs (stderr a terminal, no -q).
PROGRESS = {
    "init": "setting up the project…", "verify": "verifying…", "report": "building the report…",
    "gate": "judging the candidate…", "predict": "scoring…", "drift": "checking for drift…",
    "release": "releasing…", "rollback": "rolling back…", "get": "fetching…",
    "gc": "collecting garbage…", "site": "writing the registry page…", "bom": "writing the bill of materials…",
}

_OWN_LOGGING = frozenset(("serve",))  # commands whose --log-level -v leaves alone
_HANDLER_MARK = "_modelshelf_cli"  # on the stderr handler -v adds, so a second main() replaces it


def _command(argv: Sequence[str]) -> str | None:
    """The subcommand's name: the first word that is neither a flag nor a global flag's value."""
    skip = False
    for word in argv:
        if skip:
            skip = False
        elif word in _VALUED:
            skip = True
        elif not word.startswith("-"):
            return word
    return None


def _log_to_stderr(verbose: int, command: str | None = None) -> None:
    """With ``-v``/``-vv``: the ``modelshelf`` loggers' INFO/DEBUG records on stderr (one
    handler however often this runs).  Not for a command that sets up logging itself
    (``shelf serve --log-level``): its records would show twice."""
    if command in _OWN_LOGGING:
        verbose = 0
    if not verbose and "logging" not in sys.modules:
        return  # nothing to undo, and logging is not imported for nothing
    import logging

    class Handler(logging.StreamHandler):  # type: ignore[type-arg]
        """A stream handler writing to whatever ``sys.stderr`` is when a record comes (the
        spinner's stream while it spins)."""

        @property  # type: ignore[override]
        def stream(self) -> Any:
            return sys.stderr

        @stream.setter
        def stream(self, _value: Any) -> None:
            pass

    logger = logging.getLogger("modelshelf")
    for old in [h for h in logger.handlers if getattr(h, _HANDLER_MARK, False)]:
        logger.removeHandler(old)
    if not verbose:
        return
    handler = Handler()
    handler.setFormatter(logging.Formatter("%(name)s: %(levelname)s: %(message)s"))
    setattr(handler, _HANDLER_MARK, True)
    logger.addHandler(handler)
    logger.setLevel(logging.INFO if verbose == 1 else logging.DEBUG)


def main(argv: Sequence[str] | None = None) -> int:
    from_command_line = argv is None
    argv = sys.argv[1:] if argv is None else list(argv)
    command = _command(argv)
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
    if not hasattr(args, "handler"):  # only global flags: as a bare `shelf`
        build_parser().print_help()
        return ConfigError.exit_code
    traceback = getattr(args, "traceback", False)
    verbose = getattr(args, "verbose", 0)
    console.configure(quiet=getattr(args, "quiet", False), verbose=verbose,
                      color=_COLOR[getattr(args, "color", "auto")])
    _log_to_stderr(verbose, args.command)
    try:
        if verbose:
            _log_run(args, argv)
        label = PROGRESS.get(args.command)
        if label is None:
            status = args.handler(args)
        else:
            with console.progress(label):  # stopped (and erased) before any error line below
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
        print(f"{console.style('shelf: error:', 'fail', sys.stderr)} {exc.message}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("shelf: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - one line instead of a traceback
        if traceback:
            _print_traceback()
        print(f"{console.style('shelf: internal error:', 'fail', sys.stderr)} {type(exc).__name__}: {exc} "
              "(rerun with --traceback)", file=sys.stderr)
        return 1


def _log_run(args: argparse.Namespace, argv: Sequence[str]) -> None:
    """With ``-v``: which command runs, and (``-vv``) the arguments it was given."""
    import logging

    log = logging.getLogger("modelshelf.cli")
    log.info("running %s (modelshelf %s, Python %s)", args.command, __version__, sys.version.split()[0])
    log.debug("arguments: %s", " ".join(argv))


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
