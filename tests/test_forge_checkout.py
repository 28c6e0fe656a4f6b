"""The gate on a forge's real checkout: detached, no local ``main``, or only the base SHA.

A pull request's checkout (``actions/checkout`` on ``pull_request``, GitLab's merge request
pipelines) is a detached HEAD at the merge commit with ``origin/main`` and no local ``main``;
a shallow or single-branch one may not even have ``origin/main``, only the base commit named
by the forge's environment. ``gate.baseline: main`` must find the baseline in all of them.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import Project, run
from modelshelf.errors import ConfigError
from modelshelf.gitrepo import GitRepo
from modelshelf.pipeline.gate import read_baseline

METRICS = "metrics/eval.json"


def pr_checkout(origin_of: Project, dest: Path) -> Project:
    """A clone prepared as ``actions/checkout`` prepares a pull request: detached, no ``main``."""
    run(["git", "clone", "-q", str(origin_of.root), str(dest)], origin_of.root.parent)
    p = Project(dest)
    p.git("checkout", "-q", "-b", "pr")
    (dest / "PR.md").write_text("a change\n")
    p.commit("the pull request")
    p.git("checkout", "-q", "--detach")
    p.git("branch", "-q", "-D", "main", "pr")
    return p


@pytest.fixture
def baseline_repo(tmp_path: Path) -> Project:
    root = tmp_path / "base"
    run(["git", "init", "-q", "-b", "main", str(root)], tmp_path)
    p = Project(root)
    (root / "metrics").mkdir()
    (root / METRICS).write_text(json.dumps({"accuracy": 0.9}))
    p.commit("baseline")
    return p


def test_detached_pr_checkout_takes_main_from_origin(baseline_repo: Project, tmp_path: Path) -> None:
    p = pr_checkout(baseline_repo, tmp_path / "pr")
    assert p.git("rev-parse", "--verify", "--quiet", "main", check=False).returncode != 0
    base = read_baseline(GitRepo(p.root), "main", METRICS)
    assert base.metrics == {"accuracy": 0.9}
    assert base.commit == baseline_repo.git("rev-parse", "HEAD").stdout.strip()
    assert base.note == "main as origin/main (no local branch main)"


def test_only_the_base_sha_github(baseline_repo: Project, tmp_path: Path,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    p = pr_checkout(baseline_repo, tmp_path / "pr")
    p.git("update-ref", "-d", "refs/remotes/origin/main")
    p.git("update-ref", "-d", "refs/remotes/origin/HEAD", check=False)
    sha = baseline_repo.git("rev-parse", "HEAD").stdout.strip()
    with pytest.raises(ConfigError, match="nor origin/main"):
        read_baseline(GitRepo(p.root), "main", METRICS)
    event = tmp_path / "event.json"
    event.write_text(json.dumps({"pull_request": {"number": 7, "base": {"sha": sha, "ref": "main"}}}))
    monkeypatch.setenv("GITHUB_EVENT_PATH", str(event))
    monkeypatch.setenv("GITHUB_BASE_REF", "develop")  # another target branch: not main's stand-in
    with pytest.raises(ConfigError):
        read_baseline(GitRepo(p.root), "main", METRICS)
    monkeypatch.setenv("GITHUB_BASE_REF", "main")
    base = read_baseline(GitRepo(p.root), "main", METRICS)
    assert base.commit == sha and base.metrics == {"accuracy": 0.9}
    assert base.note == f"main as {sha[:12]}, the pull request's base"


def test_only_the_base_sha_gitlab(baseline_repo: Project, tmp_path: Path,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    p = pr_checkout(baseline_repo, tmp_path / "pr")
    p.git("remote", "remove", "origin")
    sha = baseline_repo.git("rev-parse", "HEAD").stdout.strip()
    monkeypatch.setenv("CI_MERGE_REQUEST_TARGET_BRANCH_NAME", "main")
    monkeypatch.setenv("CI_MERGE_REQUEST_DIFF_BASE_SHA", sha)
    base = read_baseline(GitRepo(p.root), "main", METRICS)
    assert base.commit == sha and base.note.endswith("the merge request's base")


def test_a_local_main_wins_over_origin(baseline_repo: Project, tmp_path: Path) -> None:
    p = pr_checkout(baseline_repo, tmp_path / "pr")
    p.git("branch", "main", "HEAD")  # a local main (here: the PR's own commit, no metrics change)
    base = read_baseline(GitRepo(p.root), "main", METRICS)
    assert base.note == "" and base.commit == p.git("rev-parse", "HEAD").stdout.strip()


def test_the_gate_stage_passes_on_a_detached_pr_checkout(remote_project: Project, tmp_path: Path) -> None:
    """`shelf gate` as `dvc repro` runs it on a pull request: no local main, baseline from origin."""
    remote_project.git("push", "-q", "origin", "main")
    pr = tmp_path / "pr"
    run(["git", "clone", "-q", str(remote_project.root.parent / "proj-origin.git"), str(pr)], tmp_path)
    p = Project(pr)
    p.git("checkout", "-q", "--detach")
    p.git("branch", "-q", "-D", "main")
    p.dvc("pull", "-q", check=False)
    run(["cp", "-a", str(remote_project.root / "data"), str(remote_project.root / "build"), str(pr)], tmp_path,
        check=False)
    proc = p.shelf("gate", "--params", "params.yaml", "--prepared", "data/prepared", "--metrics",
                   "metrics/eval.json", "--out", "metrics/gate.json", "--verdict", "metrics/verdict.json",
                   check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "at main as origin/main (no local branch main)" in proc.stdout
    assert p.json("metrics/gate.json")["baseline"]["found"] is True
