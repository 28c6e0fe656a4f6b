"""The CI definitions, checked offline: schemas, zizmor, pinned actions, least privilege."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from modelshelf.cli import build_parser

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = sorted((ROOT / ".github/workflows").glob("*.yml"))


def _run(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)


def test_there_are_the_two_workflows() -> None:
    assert {p.name for p in WORKFLOWS} == {"drift.yml", "model-report.yml", "release.yml"}


def test_workflows_match_the_github_schema() -> None:
    proc = _run(str(BIN / "check-jsonschema"), "--builtin-schema", "vendor.github-workflows",
                *map(str, WORKFLOWS))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_gitlab_ci_matches_its_schema() -> None:
    proc = _run(str(BIN / "check-jsonschema"), "--builtin-schema", "vendor.gitlab-ci", ".gitlab-ci.yml")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_zizmor_finds_nothing_offline() -> None:
    proc = _run(str(BIN / "zizmor"), "--offline", "--persona", "pedantic", ".github/workflows/")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "No findings" in proc.stdout + proc.stderr


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_actions_pinned_and_permissions_explicit(path: Path) -> None:
    flow = yaml.safe_load(path.read_text())
    assert flow["permissions"] == {}, "top-level permissions must be empty"
    for name, job in flow["jobs"].items():
        assert "permissions" in job, f"job {name} has no explicit permissions"
        for step in job["steps"]:
            if "uses" in step:
                assert re.fullmatch(r"[\w.-]+/[\w.-]+@[0-9a-f]{40}", step["uses"]), step["uses"]
            if step.get("uses", "").startswith("actions/checkout@"):
                assert step["with"]["fetch-depth"] == 0  # the baseline and releases need history


def _shelf_calls(text: str) -> list[list[str]]:
    calls = []
    for line in text.splitlines():
        m = re.search(r"\.venv/bin/shelf ([^>|;&]+)", line)
        if m:
            calls.append([w for w in m.group(1).split() if w])
    return calls


@pytest.mark.parametrize("path", [*WORKFLOWS, ROOT / ".gitlab-ci.yml"], ids=lambda p: p.name)
def test_ci_runs_ordinary_shelf_commands(path: Path) -> None:
    """Every `shelf …` the CI runs parses with our own CLI: a user can run it locally."""
    calls = _shelf_calls(path.read_text())
    assert calls, f"{path.name} runs no shelf command"
    parser = build_parser()
    for words in calls:
        words = [w.strip('"') for w in words]
        args = parser.parse_args(words)
        assert callable(args.handler)


def test_the_report_workflow_updates_one_sticky_comment() -> None:
    text = (ROOT / ".github/workflows/model-report.yml").read_text()
    assert "<!-- modelshelf-report -->" in text and "--method PATCH" in text
    assert "concurrency" in yaml.safe_load(text)
    release = yaml.safe_load((ROOT / ".github/workflows/release.yml").read_text())
    assert release["concurrency"]["cancel-in-progress"] is False
    on = release.get("on", release.get(True))  # YAML 1.1 reads a bare `on` as true
    assert on["push"]["branches"] == ["main"]
