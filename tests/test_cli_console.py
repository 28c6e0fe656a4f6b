"""``shelf``'s terminal manners (issue 16): ``-q``/``-v``/``--color`` on every command, colour on
a terminal only, a spinner on a terminal's stderr for slow commands, no rich or vl_convert on
the paths that are timed, and shell completion made from the real parser.  Real ``shelf``
processes, a real pseudo-terminal, real bash, zsh and fish."""

from __future__ import annotations

import fcntl
import json
import os
import select
import shutil
import struct
import subprocess
import sys
import termios
from pathlib import Path

import pytest

from conftest import BIN, Project
from modelshelf.errors import GitError

SHELF = str(BIN / "shelf")
ESC = b"\x1b["
RED_PREFIX = "\x1b[31;1mshelf: error:\x1b[0m "


def _env(**changes: str | None) -> dict[str, str]:
    """This process's environment without colour variables, with ``changes`` (None: unset)."""
    env = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "FORCE_COLOR", "TERM", "CLICOLOR_FORCE")}
    env["TERM"] = "xterm-256color"
    for key, value in changes.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


def _piped(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([SHELF, *args], cwd=cwd, env=env or _env(), capture_output=True, check=False,
                          stdin=subprocess.DEVNULL, timeout=300)


def _on_terminal(*args: str, cwd: Path, env: dict[str, str] | None = None,
                 stdout_too: bool = False) -> tuple[int, bytes, bytes]:
    """Run ``shelf ARGS`` with stderr (and with ``stdout_too`` stdout) on a real pseudo-terminal
    of 24×100: the exit status, what the terminal received, and stdout when it is a pipe."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    proc = subprocess.Popen([SHELF, *args], cwd=cwd, env=env or _env(), stdin=subprocess.DEVNULL,
                            stdout=slave if stdout_too else subprocess.PIPE, stderr=slave)
    os.close(slave)
    out_fd = proc.stdout.fileno() if proc.stdout is not None else -1
    got: dict[int, list[bytes]] = {master: [], out_fd: []}
    reading = {fd for fd in got if fd >= 0}
    try:
        while reading:
            ready, _, _ = select.select(list(reading), [], [], 120)
            assert ready, "shelf wrote nothing for 120 s"
            for fd in ready:
                try:
                    data = os.read(fd, 65536)
                except OSError:  # EIO: every holder of the terminal's other side is gone
                    data = b""
                if data:
                    got[fd].append(data)
                else:
                    reading.discard(fd)
        status = proc.wait(timeout=120)
    finally:
        os.close(master)
        if proc.stdout is not None:
            proc.stdout.close()
    return status, b"".join(got[master]), b"".join(got[out_fd])


# --- the flags -------------------------------------------------------------------------------------

@pytest.mark.parametrize("argv", [
    ["-q", "-vv", "--color", "never", "versions"],
    ["versions", "-q", "-vv", "--color=never"],
    ["--color", "never", "-q", "versions", "-vv"],
], ids=lambda a: " ".join(a))
def test_the_global_flags_go_before_or_after_the_command(argv: list[str]) -> None:
    from modelshelf.cli import _command, build_parser

    assert _command(argv) == "versions"
    for parser in (build_parser(), build_parser("versions")):
        args = parser.parse_args(argv)
        assert (args.command, args.quiet, args.verbose, args.color) == ("versions", True, 2, "never")
    args = build_parser().parse_args(["--color", "always", "serve", "--log-level", "debug"])
    assert (args.color, args.log_level, getattr(args, "quiet", False)) == ("always", "debug", False)


def test_quiet_drops_chatter_and_keeps_results_and_errors(tmp_path: Path) -> None:
    loud = _piped("init", "--dry-run", str(tmp_path / "new"), cwd=tmp_path)
    quiet = _piped("-q", "init", "--dry-run", str(tmp_path / "new"), cwd=tmp_path)
    assert loud.returncode == quiet.returncode == 0, quiet.stderr
    assert b"dry run: nothing written" in loud.stdout and b"dry run: nothing written" not in quiet.stdout
    assert b"+++ b/dvc.yaml" in quiet.stdout  # a dry run's plan is its result
    failed = _piped("versions", "--quiet", cwd=tmp_path)
    assert failed.returncode == GitError.exit_code
    assert failed.stderr.startswith(b"shelf: error: ") and b"not a git repository" in failed.stderr


def test_verbose_logs_info_then_debug_on_stderr_only(tmp_path: Path) -> None:
    plain, one, two = (_piped(*extra, "versions", cwd=tmp_path) for extra in ([], ["-v"], ["-vv"]))
    assert plain.stderr.count(b"\n") == 1 and b"INFO" not in plain.stderr
    assert b"modelshelf.cli: INFO: running versions" in one.stderr and b"DEBUG" not in one.stderr
    assert b"modelshelf.cli: DEBUG: arguments: -vv versions" in two.stderr
    assert plain.stdout == one.stdout == two.stdout == b""
    assert one.stderr.splitlines()[-1] == plain.stderr.splitlines()[-1]  # the error line is the same


def test_verbose_adds_one_stderr_handler_and_leaves_serve_s_logging_alone() -> None:
    """Each ``main`` replaces the handler of the one before; ``shelf serve`` has its own
    ``--log-level`` (a second handler would show its records twice)."""
    import logging

    from modelshelf.cli import _HANDLER_MARK, _log_to_stderr

    logger = logging.getLogger("modelshelf")
    level = logger.level

    def ours() -> list[logging.Handler]:
        return [h for h in logger.handlers if getattr(h, _HANDLER_MARK, False)]

    try:
        _log_to_stderr(2, "versions")
        _log_to_stderr(1, "versions")
        assert len(ours()) == 1 and logger.level == logging.INFO
        assert ours()[0].stream is sys.stderr  # type: ignore[attr-defined]
        _log_to_stderr(1, "serve")
        assert ours() == []
    finally:
        _log_to_stderr(0)
        logger.setLevel(level)
    assert ours() == []


# --- colour --------------------------------------------------------------------------------------

def test_off_a_terminal_colour_is_what_the_flag_and_the_environment_say(tmp_path: Path) -> None:
    plain = _piped("versions", cwd=tmp_path)
    assert plain.stderr.startswith(b"shelf: error: ") and ESC not in plain.stderr  # TERM=xterm, but a pipe
    coloured = {
        "always": _piped("--color", "always", "versions", cwd=tmp_path),
        "FORCE_COLOR": _piped("versions", cwd=tmp_path, env=_env(FORCE_COLOR="1")),
    }
    for name, done in coloured.items():
        assert done.stderr.decode() == RED_PREFIX + plain.stderr.decode().removeprefix("shelf: error: "), name
    for env, extra in ((_env(FORCE_COLOR="1", NO_COLOR="1"), []), (_env(FORCE_COLOR="1"), ["--color", "never"]),
                       (_env(FORCE_COLOR=""), [])):
        assert _piped(*extra, "versions", cwd=tmp_path, env=env).stderr == plain.stderr


def test_on_a_terminal_the_error_prefix_is_red_unless_no_color_or_a_dumb_terminal(tmp_path: Path) -> None:
    status, screen, _ = _on_terminal("versions", cwd=tmp_path)
    assert status == GitError.exit_code
    assert screen.startswith(RED_PREFIX.encode()) and screen.count(ESC) == 2  # the prefix only
    for env in (_env(NO_COLOR="1"), _env(TERM="dumb")):
        _, screen, _ = _on_terminal("versions", cwd=tmp_path, env=env)
        assert screen.startswith(b"shelf: error: ") and ESC not in screen
    _, screen, _ = _on_terminal("--color", "never", "versions", cwd=tmp_path)
    assert ESC not in screen


# --- the spinner ---------------------------------------------------------------------------------

def test_slow_commands_have_a_spinner_label_and_are_real_commands() -> None:
    from modelshelf.cli import PROGRESS
    from modelshelf.commands import GROUP_OF

    slow = {"release", "report", "drift", "gate", "get", "gc", "site", "verify", "rollback", "bom", "init", "predict"}
    assert set(PROGRESS) == slow and slow <= set(GROUP_OF)
    assert all(label.endswith("…") for label in PROGRESS.values())


def test_the_spinner_shows_on_a_terminal_and_is_gone_before_the_error_line(tmp_path: Path) -> None:
    status, screen, out = _on_terminal("release", cwd=tmp_path)
    assert status == GitError.exit_code and out == b""
    label = "releasing…".encode()
    assert label in screen and b"\x1b[?25l" in screen  # rich hid the cursor to spin
    error = screen.index(b"shelf: error:")
    assert screen.rindex(label) < error
    assert b"\x1b[2K" in screen[screen.rindex(label):error]  # the spinner's line erased first
    assert b"\x1b[?25h" in screen[:error]  # and the cursor shown again


@pytest.mark.parametrize("how", ["-q", "pipe", "dumb"])
def test_no_spinner_with_quiet_a_pipe_or_a_dumb_terminal(tmp_path: Path, how: str) -> None:
    """No spinner, and (asked for by --color or FORCE_COLOR) colour still on the prefix."""
    label = "releasing…".encode()
    if how == "pipe":
        done = _piped("release", cwd=tmp_path, env=_env(FORCE_COLOR="1"))
        status, err = done.returncode, done.stderr
    else:
        status, err, _ = _on_terminal("--color", "always", *(["-q"] if how == "-q" else []), "release",
                                      cwd=tmp_path, env=_env(TERM="dumb") if how == "dumb" else None)
    assert status == GitError.exit_code
    assert err.startswith(RED_PREFIX.encode()) and err.count(ESC) == 2
    assert label not in err and b"\x1b[?25l" not in err


def test_results_print_above_the_spinner_when_stdout_is_the_same_terminal(built: Project) -> None:
    status, screen, _ = _on_terminal("verify", cwd=built.root, stdout_too=True)
    assert status == 0, screen
    assert "verifying…".encode() in screen
    assert screen.count(b"verified model v1.0.0: sha256 matches the card for ") == 1
    assert b"\x1b[?25h" in screen  # the spinner is gone and the cursor back


def test_a_warm_stage_spins_on_the_terminal_and_keeps_stdout_plain(built: Project) -> None:
    """``gate`` runs in a warm host's child (the terminal passed to it): the spinner is on the
    terminal, the table on stdout (a pipe) is the same bytes as with no terminal at all."""
    status, screen, out = _on_terminal("gate", "--no-write", cwd=built.root)
    assert status == 0, screen
    assert "judging the candidate…".encode() in screen and b"\x1b[?25h" in screen
    assert out.endswith(b"gate: PASSED\n") and ESC not in out
    piped = _piped("gate", "--no-write", cwd=built.root)
    assert piped.stdout == out and ESC not in piped.stderr


# --- what is imported off a terminal ---------------------------------------------------------------

OBSERVE = r"""
import json, sys, traceback

first = {}

class Observer:
    "Records which file first imports rich or vl_convert; finds nothing itself."

    def find_spec(self, name, path=None, target=None):
        top = name.partition(".")[0]
        if top in ("rich", "vl_convert") and top not in first:
            frames = [f.filename for f in traceback.extract_stack()[:-1] if "importlib" not in f.filename]
            first[top] = frames[-1]
        return None

sys.meta_path.insert(0, Observer())
from modelshelf.cli import main

code = main(sys.argv[1:])
print(json.dumps({"code": code, "first": first}))
"""


def _observed(root: Path, *argv: str) -> dict[str, object]:
    done = subprocess.run([sys.executable, "-c", OBSERVE, *argv], cwd=root, env=_env(FORCE_COLOR="1"),
                          capture_output=True, text=True, check=False, timeout=300)
    assert done.stdout.strip(), done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def test_off_a_terminal_modelshelf_imports_neither_rich_nor_vl_convert(built: Project) -> None:
    """Registry commands and the stages (``-v``, coloured): rich is imported only by
    scikit-learn itself (1.9's callbacks load rich.progress when it is installed), never by
    modelshelf, and vl_convert not at all."""
    seen = _observed(built.root, "-v", "--color", "always", "versions")
    assert seen == {"code": 0, "first": {}}
    seen = _observed(built.root, "-q", "verify")
    assert seen == {"code": 0, "first": {}}
    for stage in (["evaluate", "--prepared", "data/prepared", "--candidate", "build/candidate",
                   "--metrics", "metrics/eval.json", "--plots", "metrics/plots"],
                  ["gate", "--no-write"]):
        seen = _observed(built.root, "-v", *stage)
        assert seen["code"] == 0, seen
        first = seen["first"]
        assert isinstance(first, dict) and "vl_convert" not in first
        assert "/modelshelf/" not in first.get("rich", ""), f"{stage[0]}: {first}"
    # The warm host that runs stages preloads neither (scikit-learn may still bring rich).
    from modelshelf.pipeline import warm

    assert not [m for m in warm.PRELOAD if m.partition(".")[0] in ("rich", "vl_convert")]


# --- completion ----------------------------------------------------------------------------------

def _script(shell: str, cwd: Path) -> str:
    done = subprocess.run([SHELF, "completion", shell], cwd=cwd, capture_output=True, text=True, check=False)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    assert done.stdout.strip()
    return done.stdout


BASH_DRIVER = r"""
source "$1"
cd "$2"
complete_words() {
    COMP_WORDS=("$@"); COMP_CWORD=$((${#COMP_WORDS[@]} - 1)); COMPREPLY=()
    _shelf
    printf '%s\n' "${COMPREPLY[*]}"
}
complete_words shelf rel
complete_words shelf versions --j
complete_words shelf --color al
complete_words shelf -q --color never rel
complete_words shelf serve --log-level ''
complete_words shelf predict ne
complete_words shelf predict new.csv -o ''
complete_words shelf completion ''
complete_words shelf versions --color = n
complete -p shelf
"""


def test_bash_completes_commands_flags_choices_and_files(tmp_path: Path) -> None:
    script = tmp_path / "shelf.bash"
    script.write_text(_script("bash", tmp_path))
    (tmp_path / "files").mkdir()
    (tmp_path / "files" / "new.csv").write_text("x\n")
    done = subprocess.run(["bash", "--norc", "--noprofile", "-c", BASH_DRIVER, "driver", str(script),
                           str(tmp_path / "files")], capture_output=True, text=True, check=False)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    assert done.stdout.splitlines() == [
        "release", "--json", "always", "release", "debug info warning error", "new.csv", "new.csv",
        "bash zsh fish", "never", "complete -F _shelf shelf"]


def test_the_bash_script_follows_the_parser() -> None:
    """Every command and every flag of the real parser is in the script."""
    import argparse

    from modelshelf.cli import build_parser
    from modelshelf.completion import script

    parser = build_parser()
    text = script(parser, "bash")
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, p in sub.choices.items():
        line = next(line for line in text.splitlines() if line.strip().startswith(f'"{name}") echo'))
        assert set(line.split('"')[3].split()) == {o for a in p._actions for o in a.option_strings}, name


@pytest.mark.skipif(shutil.which("zsh") is None, reason="zsh is not installed")
def test_zsh_parses_and_loads_the_script(tmp_path: Path) -> None:
    script = tmp_path / "_shelf"
    script.write_text(_script("zsh", tmp_path))
    assert script.read_text().startswith("#compdef shelf\n")
    check = subprocess.run(["zsh", "-n", str(script)], capture_output=True, text=True, check=False)
    assert check.returncode == 0, check.stderr
    load = subprocess.run(["zsh", "-f", "-c", f"autoload -U compinit && compinit -u -D && source {script} && "
                           "print -r -- $_comps[shelf] && whence -w _shelf_cmd_release _shelf_cmd_completion"],
                          capture_output=True, text=True, check=False, env={**os.environ, "HOME": str(tmp_path)})
    assert load.returncode == 0, load.stderr
    assert load.stdout.split() == ["_shelf", "_shelf_cmd_release:", "function", "_shelf_cmd_completion:", "function"]


# Types LINE and a tab into an interactive zsh on a zpty (a pseudo-terminal of zsh's own) with
# the script loaded, and records every match completion adds: the compadd builtin, wrapped.
ZSH_DRIVER = r"""
zmodload zsh/zpty
script=$1 out=$2 line=$3
wait_for() { local i; for i in {1..600}; do grep -q -- "$1" $out 2>/dev/null && return; sleep 0.05; done; }
zpty z zsh -f -i
zpty -w z "PROMPT=''; autoload -U compinit; compinit -u -D; source ${(q)script}"
zpty -w z 'compadd() { local -a hits; builtin compadd -O hits "$@"; (( $#hits )) && print -rl -- "<hit>"${^hits} >&2; builtin compadd "$@"; }'
zpty -w z "exec 2>${(q)out}; print -r -- '<ready>' >&2"
wait_for '<ready>'
zpty -w -n z "$line"$'\t'
wait_for '<hit>'
zpty -w z $'\C-uprint -r -- "<done>" >&2'
wait_for '<done>'
zpty -d z
"""


@pytest.mark.skipif(shutil.which("zsh") is None, reason="zsh is not installed")
@pytest.mark.parametrize(("line", "matches"), [
    ("shelf rel", ["release"]), ("shelf versions --j", ["--json"]), ("shelf --color ", ["auto", "always", "never"]),
    ("shelf completion ", ["bash", "zsh", "fish"]), ("shelf predict ne", ["new.csv"]),
])
def test_zsh_completes_with_the_script(tmp_path: Path, line: str, matches: list[str]) -> None:
    script = tmp_path / "_shelf"
    script.write_text(_script("zsh", tmp_path))
    (tmp_path / "new.csv").write_text("x\n")
    out = tmp_path / "matches.txt"
    done = subprocess.run(["zsh", "-f", "-c", ZSH_DRIVER, "driver", str(script), str(out), line], cwd=tmp_path,
                          capture_output=True, text=True, check=False, timeout=120,
                          env={**os.environ, "HOME": str(tmp_path)})
    assert done.returncode == 0, done.stderr
    hits = [x.removeprefix("<hit>") for x in out.read_text().splitlines() if x.startswith("<hit>")]
    assert list(dict.fromkeys(hits)) == matches  # _files may add a file twice (two patterns)


@pytest.mark.skipif(shutil.which("fish") is None, reason="fish is not installed")
def test_fish_parses_the_script_and_completes_with_it(tmp_path: Path) -> None:
    script = tmp_path / "shelf.fish"
    script.write_text(_script("fish", tmp_path))
    check = subprocess.run(["fish", "-n", str(script)], capture_output=True, text=True, check=False)
    assert check.returncode == 0, check.stderr
    (tmp_path / "new.csv").write_text("x\n")
    asks = ["shelf rel", "shelf versions --j", "shelf --color n", "shelf completion z", "shelf predict ne"]
    cmd = "; ".join([f"source {script}", *(f"complete -C '{ask}'; echo ." for ask in asks)])
    done = subprocess.run(["fish", "--no-config", "-c", cmd], cwd=tmp_path, capture_output=True, text=True,
                          check=False, env={**os.environ, "HOME": str(tmp_path)})
    assert done.returncode == 0, done.stderr
    answers = [[line.split("\t")[0] for line in block.strip().splitlines()]
               for block in done.stdout.split(".\n")[:-1]]
    assert answers == [["release"], ["--json"], ["never"], ["zsh"], ["new.csv"]]


def test_an_unknown_shell_is_a_usage_error(tmp_path: Path) -> None:
    done = _piped("completion", "tcsh", cwd=tmp_path)
    assert done.returncode == 2 and b"invalid choice: 'tcsh'" in done.stderr
