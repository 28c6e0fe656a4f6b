"""The CLI's parser: the one-subcommand parser ``main`` builds for a quick start parses exactly
as the whole parser does, and anything else (typos, no command) gets the whole parser's errors."""

from __future__ import annotations

import argparse

import pytest

from modelshelf.cli import _columns, build_parser, main
from modelshelf.errors import ConfigError

SAMPLES = [
    ["serve", "--model", "prod", "--port", "9000", "--poll", "0", "--keep-alive", "2"],
    ["serve"],
    ["--traceback", "serve", "--host", "0.0.0.0"],
    ["predict", "in.csv", "-o", "out.csv", "--model", "v1.2.0"],
    ["drift", "new.csv", "--json", "--no-predictions"],
    ["gate", "--prepared", "data/prepared", "--metrics", "m.json", "--out", "g.json"],
    ["release", "--push", "--git-remote", "up", "-r", "s3", "--skip-released"],
    ["versions", "--json"],
    ["rollback", "v1.0.0", "--force"],
]


def _subcommands() -> list[str]:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sorted(sub.choices)


@pytest.mark.parametrize("argv", SAMPLES, ids=lambda a: " ".join(a))
def test_the_one_command_parser_parses_as_the_whole_one(argv: list[str]) -> None:
    whole = build_parser().parse_args(argv)
    command = next(a for a in argv if not a.startswith("-"))
    assert vars(build_parser(command).parse_args(argv)) == vars(whole)


def test_every_subcommand_has_a_one_command_parser_that_knows_only_it() -> None:
    names = _subcommands()
    assert {"serve", "predict", "release", "rollback"} <= set(names)
    for name in names:
        sub = next(a for a in build_parser(name)._actions if isinstance(a, argparse._SubParsersAction))
        assert list(sub.choices) == [name]


def test_each_subcommand_is_registered_by_the_module_the_cli_imports_for_it() -> None:
    import importlib

    from modelshelf.commands import GROUP_OF, GROUPS

    registered: dict[str, str] = {}
    for group in GROUPS:
        def add(name: str, *_args: object, _group: str = group) -> argparse.ArgumentParser:
            registered[name] = _group
            return argparse.ArgumentParser()

        importlib.import_module(f"modelshelf.commands.{group}").register(add)
    assert registered == GROUP_OF
    assert sorted(registered) == _subcommands()


def test_a_mistyped_command_gets_the_whole_list(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["serv", "--port", "1"])
    assert exc.value.code == ConfigError.exit_code
    err = capsys.readouterr().err
    assert "usage: shelf [-h]" in err and "shelf: error: unknown command 'serv'; did you mean 'serve'?" in err


def test_help_is_as_wide_as_columns_says(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "60")
    assert _columns() == 60
    text = build_parser("serve")._subparsers._group_actions[0].choices["serve"].format_help()  # type: ignore[union-attr]
    assert max(len(line) for line in text.splitlines()) <= 58
    monkeypatch.setenv("COLUMNS", "not a number")
    assert _columns() > 0
