"""``shelf`` follows its ecosystem's conventions (issue 16): did-you-mean for commands and flags,
help on a bare ``shelf``, a subcommand's own usage on its errors, defaults in ``--help``, the
exit code kept under ``--traceback``, a closed pipe ending quietly, no crash on an ASCII stream,
and the README's exit code outside a project.  Real ``shelf`` processes where it matters."""

from __future__ import annotations

import argparse
import os
import subprocess
from pathlib import Path

import pytest

from conftest import BIN, Project
from modelshelf.cli import _Formatter, main
from modelshelf.errors import ConfigError, GitError

SHELF = str(BIN / "shelf")


def test_a_mistyped_command_is_named_with_the_closest_one(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["relase"])
    assert exc.value.code == ConfigError.exit_code
    assert "shelf: error: unknown command 'relase'; did you mean 'release'?" in capsys.readouterr().err


def test_a_subcommand_s_bad_flag_shows_its_usage_and_the_closest_flag(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["versions", "--jsn"])
    assert exc.value.code == ConfigError.exit_code
    err = capsys.readouterr().err
    assert err.startswith("usage: shelf versions ")
    assert "shelf versions: error: unknown option '--jsn'; did you mean '--json'?" in err


def test_bare_shelf_prints_the_help_as_a_usage_error(tmp_path: Path) -> None:
    done = subprocess.run([SHELF], cwd=tmp_path, capture_output=True, text=True, check=False)
    assert done.returncode == ConfigError.exit_code
    assert done.stdout.startswith("usage: shelf ") and "release" in done.stdout and not done.stderr


def test_help_shows_meaningful_defaults_only() -> None:
    p = argparse.ArgumentParser(prog="x", formatter_class=_Formatter)
    p.add_argument("--base", default="main", help="baseline revision")
    p.add_argument("--said", default="a", help="already says it (default: a)")
    p.add_argument("--flag", action="store_true", help="a flag")
    p.add_argument("--none", help="no default")
    text = " ".join(p.format_help().split())
    assert "baseline revision (default: main)" in text
    assert text.count("default: a") == 1 and "a flag (default" not in text and "no default (default" not in text


def test_outside_a_project_the_exit_code_is_the_readme_s_and_traceback_keeps_it(tmp_path: Path) -> None:
    for extra in ([], ["--traceback"]):
        done = subprocess.run([SHELF, *extra, "versions"], cwd=tmp_path, capture_output=True, text=True, check=False)
        assert done.returncode == GitError.exit_code, done.stderr
        assert done.stderr.strip().splitlines()[-1].startswith(f"shelf: error: {tmp_path}: not a git repository")
        assert ("Traceback (most recent call last)" in done.stderr) == bool(extra)


def test_a_closed_pipe_ends_quietly_with_sigpipe_s_status(built: Project) -> None:
    read, write = os.pipe()
    os.close(read)  # the reader is gone before shelf writes, as `| head -1` leaves it
    try:
        done = subprocess.run([SHELF, "show", "--json"], cwd=built.root, stdout=write, stderr=subprocess.PIPE,
                              text=True, check=False)
    finally:
        os.close(write)
    assert done.returncode == 128 + 13 and done.stderr == ""


@pytest.mark.parametrize("encoding", ["ascii", "latin-1"])
def test_a_stream_that_cannot_encode_the_symbols_gets_ascii(built: Project, encoding: str) -> None:
    done = subprocess.run([SHELF, "show"], cwd=built.root, capture_output=True, text=True, check=False,
                          env={**os.environ, "PYTHONIOENCODING": encoding})
    assert done.returncode == 0, done.stderr
    assert "    + accuracy: " in done.stdout and "✓" not in done.stdout


def test_verify_takes_a_version_as_show_and_get_do(released: Project) -> None:
    done = released.shelf("verify", "v1.0.0")
    assert done.stdout.startswith("verified model v1.0.0: sha256 matches the card for "), done.stdout
    missing = released.shelf("verify", "v9.9.9", check=False)
    assert missing.returncode == ConfigError.exit_code and "v9.9.9" in missing.stderr
