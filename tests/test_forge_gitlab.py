"""The .gitlab-ci.yml jobs' own scripts, run as a GitLab runner runs them (tests/forge.py).

Merge request pipelines are detached at the merge request's head with `origin/*`; the API is
a recording `curl` stub holding notes, merge requests and the users behind the two tokens.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import Project, run
from forge import NOTES_TOKEN, RELEASE_TOKEN, GitLab, Step, push_checkout, run_gitlab_job
from modelshelf.report import MARKER
from test_forge_github import (NUMBER, assert_refused_renumber, drifted_origin, land_new_data, main_checkout,
                               open_pr, protect_main_with_a_renumber_pending, pushed_checkout)

PERSON = {"id": 1, "username": "alice"}


def mr_variables(checkout: Path) -> dict[str, str]:
    base = run(["git", "rev-parse", "refs/remotes/origin/main"], checkout).stdout.strip()
    return {"CI_PIPELINE_SOURCE": "merge_request_event", "CI_MERGE_REQUEST_IID": str(NUMBER),
            "CI_MERGE_REQUEST_TARGET_BRANCH_NAME": "main", "CI_MERGE_REQUEST_DIFF_BASE_SHA": base,
            "MODELSHELF_NOTES_TOKEN": NOTES_TOKEN}


def ours(gitlab: GitLab) -> list[dict[str, Any]]:
    return [n for n in gitlab.notes if n["author"]["id"] == 31 and n["body"].startswith(MARKER)]


def test_a_merge_request_keeps_one_note_found_past_the_first_page(built: Project, tmp_path: Path) -> None:
    """Our note is on the third page, among a person's note quoting the marker: it is the one
    updated, on every run; nothing else is touched and no second note appears."""
    checkout = open_pr(built, tmp_path)
    others = [{"id": i, "author": PERSON, "body": f"{MARKER} a person quoting it" if i == 2 else f"comment {i}"}
              for i in range(1, 5)]
    mine = {"id": 9, "author": {"id": 31, "username": "project_1_bot_notes"}, "body": f"{MARKER}\nold report"}
    gitlab = GitLab(tmp_path / "gitlab", notes=[*others, mine], page_size=2)
    for _ in range(2):
        job = run_gitlab_job("model-report", checkout, gitlab, mr_variables(checkout))
        assert job.code == 0, job.stdout + job.stderr
    assert gitlab.notes[:4] == others and len(gitlab.notes) == 5
    [note] = ours(gitlab)
    assert note["id"] == 9 and "passes the gate" in note["body"], note["body"]
    assert {c["token"] for c in gitlab.calls} == {NOTES_TOKEN}  # never the release token
    assert any("page=3" in c["url"] for c in gitlab.calls)


def test_a_failing_gate_posts_its_note_and_fails_the_job(built: Project, tmp_path: Path) -> None:
    checkout = open_pr(built, tmp_path, {"gate": {"thresholds": {"accuracy": 0.9999}}})
    gitlab = GitLab(tmp_path / "gitlab")
    job = run_gitlab_job("model-report", checkout, gitlab, mr_variables(checkout))
    assert job.code != 0
    [note] = ours(gitlab)
    assert "fails the gate" in note["body"], note["body"]


def test_an_error_posts_an_error_line_naming_the_job(built: Project, tmp_path: Path) -> None:
    params = yaml.safe_load((built.root / "params.yaml").read_text())
    params["train"]["estimatr"] = params["train"].pop("estimator")
    checkout = open_pr(built, tmp_path, raw=yaml.safe_dump(params, sort_keys=False))
    gitlab = GitLab(tmp_path / "gitlab")
    job = run_gitlab_job("model-report", checkout, gitlab, mr_variables(checkout))
    assert job.code != 0
    [note] = ours(gitlab)
    assert "no report (error)" in note["body"] and "exited" in note["body"], note["body"]
    assert "estimatr" in note["body"] and "https://gitlab.example/acme/models/-/jobs/7" in note["body"], note["body"]


def test_a_reporter_token_that_cannot_write_leaves_a_notice_and_the_gates_verdict(built: Project,
                                                                                   tmp_path: Path) -> None:
    checkout = open_pr(built, tmp_path)
    gitlab = GitLab(tmp_path / "gitlab", read_only=True)
    job = run_gitlab_job("model-report", checkout, gitlab, mr_variables(checkout))
    assert job.code == 0, job.stdout + job.stderr
    assert "notice: cannot write the merge request note (HTTP 403" in job.stdout
    assert gitlab.notes == []


def branch_variables(origin: Path) -> dict[str, str]:
    """A pipeline on main: the release token, and git's own insteadOf sending the job's
    https://oauth2:TOKEN@host/project.git pushes to the bare origin."""
    return {"CI_COMMIT_BRANCH": "main", "CI_DEFAULT_BRANCH": "main", "CI_SERVER_HOST": "gitlab.example",
            "CI_PROJECT_PATH": "acme/models", "CI_PIPELINE_ID": "77", "MODELSHELF_RELEASE_TOKEN": RELEASE_TOKEN,
            "GIT_CONFIG_COUNT": "1", "GIT_CONFIG_KEY_0": f"url.{origin}.insteadOf",
            "GIT_CONFIG_VALUE_0": f"https://oauth2:{RELEASE_TOKEN}@gitlab.example/acme/models.git"}


def test_the_release_job_without_a_dvc_remote_is_a_green_no_op(built: Project, tmp_path: Path) -> None:
    origin, checkout = main_checkout(built, tmp_path)
    variables = {**branch_variables(origin),
                 "CI_COMMIT_SHA": run(["git", "rev-parse", "HEAD"], checkout).stdout.strip()}
    job = run_gitlab_job("release", checkout, GitLab(tmp_path / "gitlab"), variables)
    assert job.code == 0 and "no DVC remote is configured" in job.stdout, job.stdout + job.stderr
    assert run(["git", "tag", "-l"], origin).stdout == ""


def release_job(p: Project, tmp_path: Path) -> tuple[Step, Path]:
    """The release job on ``p``'s main as pushed, GitLab's way: (job, origin)."""
    origin, checkout = pushed_checkout(p, tmp_path)
    run(["git", "checkout", "-q", "--detach"], checkout)  # GitLab runs branch pipelines detached
    variables = {**branch_variables(origin),
                 "CI_COMMIT_SHA": run(["git", "rev-parse", "HEAD"], checkout).stdout.strip()}
    return run_gitlab_job("release", checkout, GitLab(tmp_path / "gitlab"), variables), origin


def test_a_new_model_on_main_is_released_and_tagged_on_the_origin(remote_project: Project, tmp_path: Path) -> None:
    remote_project.dvc("push", "-q")  # as the merge request's author pushed it
    job, origin = release_job(remote_project, tmp_path)
    assert job.code == 0, job.stdout + job.stderr
    assert run(["git", "tag", "-l"], origin).stdout.split() == ["model@v1.0.0"]
    again, _ = release_job(remote_project, tmp_path / "again")  # the next pipeline on main
    assert again.code == 0 and "already released as model@v1.0.0" in again.stdout, again.stdout + again.stderr


@pytest.mark.slow  # the same `shelf release` as the GitHub scenario; CI runs it
def test_new_data_landed_on_main_is_a_green_no_op(released: Project, tmp_path: Path) -> None:
    land_new_data(released)
    job, origin = release_job(released, tmp_path)
    assert job.code == 0, job.stdout + job.stderr
    assert "already released as model@v1.0.0" in job.stdout and "the pipeline is not up to date" in job.stdout
    assert run(["git", "tag", "-l"], origin).stdout.split() == ["model@v1.0.0"]


@pytest.mark.slow  # the same `shelf release` as the GitHub scenario; CI runs it
def test_a_protected_main_refusing_the_renumber_says_so(released: Project, tmp_path: Path) -> None:
    protect_main_with_a_renumber_pending(released)
    job, origin = release_job(released, tmp_path)
    assert job.code == 7, job.stdout + job.stderr
    assert_refused_renumber(job.stderr, origin)


def test_the_pages_job_publishes_the_registry_page(released: Project, tmp_path: Path) -> None:
    origin, checkout = pushed_checkout(released, tmp_path)
    run(["git", "checkout", "-q", "--detach"], checkout)
    job = run_gitlab_job("pages", checkout, GitLab(tmp_path / "gitlab"),
                         {**branch_variables(origin), "CI_PIPELINE_SOURCE": "push"})
    assert job.code == 0, job.stdout + job.stderr
    page = (checkout / "public" / "index.html").read_text(encoding="utf-8")
    assert "v1.0.0" in page and (checkout / "public" / "assets" / "vega.js").is_file()


def test_drift_found_twice_updates_one_branch_and_one_merge_request(new_project: Any, tmp_path: Path) -> None:
    origin = drifted_origin(new_project)
    gitlab = GitLab(tmp_path / "gitlab")
    for pipeline in ("77", "78"):
        checkout = tmp_path / f"runner-{pipeline}" / "work"
        checkout.parent.mkdir()
        push_checkout(origin, checkout)
        run(["git", "checkout", "-q", "--detach"], checkout)  # GitLab runs branch pipelines detached
        job = run_gitlab_job("drift", checkout, gitlab, {**branch_variables(origin), "CI_PIPELINE_ID": pipeline})
        assert job.code == 0, job.stdout + job.stderr
        tip = run(["git", "rev-parse", "refs/heads/modelshelf/drift-retrain"], origin).stdout.strip()
        changed = run(["git", "show", "--name-only", "--format=", tip], origin).stdout.split()
        assert "dvc.lock" in changed and not {"drift.md", "report.md", "body.md"} & set(changed), changed
    branches = run(["git", "for-each-ref", "--format=%(refname)", "refs/heads/"], origin).stdout.split()
    assert branches == ["refs/heads/main", "refs/heads/modelshelf/drift-retrain"]
    [mr] = gitlab.mrs
    assert mr["source_branch"] == "modelshelf/drift-retrain" and mr["target_branch"] == "main"
    assert "x0" in mr["description"]
    assert "updated merge request !1" in job.stdout, job.stdout
    assert {c["token"] for c in gitlab.calls} == {RELEASE_TOKEN}
