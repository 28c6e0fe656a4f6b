"""The model-report workflow's own steps, run as GitHub runs them on a pull request.

The pull request's checkout is detached at ``refs/pull/N/merge`` with only ``origin/*``, no
DVC remote (as shipped), and the forge's API is a recording stub (``tests/forge.py``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import Project, add_remotes, customers, run
from forge import Forge, JobRun, Step, pr_checkout, push_checkout, run_job
from modelshelf.report import MARKER

NUMBER = 7
BOT = {"login": "github-actions[bot]"}


def open_pr(p: Project, tmp_path: Path, change: dict[str, Any] | None = None, raw: str | None = None) -> Path:
    """Push main and pull request NUMBER (``change`` merged into params.yaml, or ``raw`` as
    params.yaml) to a bare origin, as the forge holds them; check the PR out as Actions does."""
    origin = tmp_path / "origin.git"
    run(["git", "init", "-q", "--bare", str(origin)], tmp_path)
    p.git("push", "-q", str(origin), "main")
    p.git("checkout", "-q", "-b", "feature")
    if raw is not None:
        (p.root / "params.yaml").write_text(raw)
    else:
        p.set_params(**(change or {}))
    (p.root / "NOTES.md").write_text("a pull request\n")
    p.commit("the pull request")
    p.git("checkout", "-q", "--detach", "main")
    p.git("merge", "-q", "--no-ff", "-m", "Merge feature into main", "feature")
    p.git("push", "-q", str(origin), f"HEAD:refs/pull/{NUMBER}/merge")
    p.git("checkout", "-q", "main")
    dest = tmp_path / "runner" / "work"
    dest.parent.mkdir()
    pr_checkout(origin, dest, NUMBER)
    return dest


def context(base: str = "main") -> dict[str, Any]:
    return {"github": {"token": "ghs_stub", "repository": "acme/models", "run_id": "42",
                       "server_url": "https://github.example", "base_ref": base,
                       "event": {"pull_request": {"number": NUMBER, "base": {"ref": base}}}},
            "secrets": {}}


def report_job(checkout: Path, forge: Forge) -> JobRun:
    return run_job("model-report.yml", "report", checkout, forge, context())


def ours(forge: Forge) -> list[dict[str, Any]]:
    return [c for c in forge.comments if c["user"] == BOT and c["body"].startswith(MARKER)]


def test_a_passing_pr_gets_one_comment_and_a_green_check(built: Project, tmp_path: Path) -> None:
    checkout = open_pr(built, tmp_path)
    forge = Forge(tmp_path / "forge")
    job = report_job(checkout, forge)
    assert not job.failed, job.log()
    [comment] = ours(forge)
    assert "PASSED" in comment["body"] or "✓" in comment["body"], comment["body"]
    assert job.step("Fail the check when the gate fails").ran is False
    again = report_job(checkout, forge)  # a re-run updates the same comment
    assert not again.failed, again.log()
    assert len(forge.comments) == 1
    assert any("PATCH" in call for call in forge.calls)


def test_a_failing_gate_still_posts_its_comment_and_turns_the_check_red(built: Project, tmp_path: Path) -> None:
    checkout = open_pr(built, tmp_path, {"gate": {"thresholds": {"accuracy": 0.9999}}})
    forge = Forge(tmp_path / "forge")
    job = report_job(checkout, forge)
    assert job.step("Obtain the candidate (dvc pull, or dvc repro without a remote)").code == 0, job.log()
    assert job.step("Fail the check when the gate fails").code == 1, job.log()
    [comment] = ours(forge)
    assert "fails the gate" in comment["body"] and "accuracy: below threshold" in comment["body"], comment["body"]


def test_an_error_posts_an_error_line_not_an_empty_body(built: Project, tmp_path: Path) -> None:
    params = yaml.safe_load((built.root / "params.yaml").read_text())
    params["train"]["estimatr"] = params["train"].pop("estimator")
    checkout = open_pr(built, tmp_path, raw=yaml.safe_dump(params, sort_keys=False))
    forge = Forge(tmp_path / "forge")
    job = report_job(checkout, forge)
    assert job.failed
    [comment] = ours(forge)
    assert "no report (error)" in comment["body"] and "exited" in comment["body"], comment["body"]
    assert "https://github.example/acme/models/actions/runs/42" in comment["body"]
    assert all(len(c["body"].strip()) > len(MARKER) for c in forge.comments)


def test_a_persons_comment_quoting_the_marker_is_never_overwritten(built: Project, tmp_path: Path) -> None:
    checkout = open_pr(built, tmp_path)
    person = {"id": 5, "user": {"login": "alice"}, "body": f"{MARKER} why does the bot say this?"}
    quoted = {"id": 6, "user": BOT, "body": f"an older bot note that mentions {MARKER}"}
    forge = Forge(tmp_path / "forge", comments=[person, quoted])
    job = report_job(checkout, forge)
    assert not job.failed, job.log()
    assert forge.comments[0] == person and forge.comments[1] == quoted
    assert len(ours(forge)) == 1


def test_a_read_only_token_leaves_a_notice_and_the_checks_verdict(built: Project, tmp_path: Path) -> None:
    """A fork's or Dependabot's pull request: 403 on every write; the gate decides the check."""
    checkout = open_pr(built, tmp_path)
    forge = Forge(tmp_path / "forge", deny="write")
    job = report_job(checkout, forge)
    assert not job.failed, job.log()
    post = job.step("Post or update the sticky comment")
    assert "::notice::cannot write the comment" in post.stdout and "modelshelf-deferred-report " in post.stdout
    assert forge.comments == []
    summary = (checkout.parent / "work-runner" / "summary.md").read_text()
    assert summary.startswith(MARKER)


def workflow_run(head_sha: str, owner: str = "someone") -> dict[str, Any]:
    """The context of model-report-comment.yml after run 42 of pull request NUMBER from a fork."""
    return {"github": {"token": "ghs_stub_write", "repository": "acme/models",
                       "event": {"workflow_run": {"id": 42, "event": "pull_request", "head_sha": head_sha,
                                                  "head_branch": "feature",
                                                  "head_repository": {"owner": {"login": owner}}}}},
            "secrets": {}}


def test_a_fork_pr_gets_its_comment_from_the_second_workflow(built: Project, tmp_path: Path) -> None:
    """The fork's run cannot write: it defers the report into its log. The workflow_run job,
    which has no checkout at all, posts it on the open pull request whose head is the run's."""
    checkout = open_pr(built, tmp_path)
    head = built.git("rev-parse", "feature").stdout.strip()
    forge = Forge(tmp_path / "forge", deny="write")
    report = report_job(checkout, forge)
    assert not report.failed and forge.comments == [], report.log()
    forge.keep_logs("42", "report", report)
    forge.update(deny=None, pulls=[{"number": NUMBER, "state": "open",
                                    "head": {"sha": head, "label": "someone:feature"}}])
    empty = tmp_path / "no-checkout" / "work"
    empty.mkdir(parents=True)
    job = run_job("model-report-comment.yml", "comment", empty, forge, workflow_run(head))
    assert not job.failed, job.log()
    [comment] = ours(forge)
    summary = (checkout.parent / "work-runner" / "summary.md").read_text()
    assert comment["body"] == summary and "passes the gate" in comment["body"], comment["body"]
    assert sorted(p.name for p in empty.iterdir()) == ["logs.zip", "report.md"]  # nothing of the fork's ran
    again = run_job("model-report-comment.yml", "comment", empty, forge, workflow_run(head))
    assert not again.failed and len(forge.comments) == 1, again.log()  # a re-run updates it

    # A pull request pushed again since (another head), or one with another owner: not posted.
    for stale in (workflow_run("0" * 40), workflow_run(head, owner="mallory")):
        quiet = Forge(tmp_path / f"forge-{len(list(tmp_path.iterdir()))}")
        quiet.keep_logs("42", "report", report)
        quiet.update(pulls=[{"number": NUMBER, "state": "open", "head": {"sha": head, "label": "someone:feature"}}])
        job = run_job("model-report-comment.yml", "comment", empty, quiet, stale)
        assert not job.failed and quiet.comments == [], job.log()
        assert "nothing posted" in job.steps[0].stdout


def test_a_deferred_report_is_data_checked_before_it_is_posted(built: Project, tmp_path: Path) -> None:
    """The fork controls its run's log: a line that is not base64 of a report starting with
    the marker is refused, and a job of a push (not a pull request) does not run at all."""
    import base64

    head = "a" * 40
    for body, why in ((b"@everyone free models", "does not start with the marker"),
                      (b"\xff\xfe", "not base64 of UTF-8")):
        forge = Forge(tmp_path / f"forge-{why[:8]}")
        fake = JobRun([Step("Post or update the sticky comment", True, 0,
                            f"modelshelf-deferred-report {base64.b64encode(body).decode()}\n")])
        forge.keep_logs("42", "report", fake)
        forge.update(pulls=[{"number": NUMBER, "state": "open", "head": {"sha": head, "label": "someone:feature"}}])
        work = tmp_path / f"w-{why[:8]}" / "work"
        work.mkdir(parents=True)
        job = run_job("model-report-comment.yml", "comment", work, forge, workflow_run(head))
        assert job.failed and why in job.steps[0].stderr, job.log()
        assert forge.comments == []
    push = workflow_run(head)
    push["github"]["event"]["workflow_run"]["event"] = "push"
    assert run_job("model-report-comment.yml", "comment", work, Forge(tmp_path / "f-push"), push).steps == []


@pytest.mark.parametrize("workflow", ["model-report.yml", "model-report-comment.yml", "release.yml", "drift.yml"])
def test_the_simulator_reads_every_step(workflow: str) -> None:
    """Every step is one the simulator can run: a ``run:`` script or a known action."""
    flow = yaml.safe_load((Path(__file__).resolve().parents[1] / ".github/workflows" / workflow).read_text())
    for job in flow["jobs"].values():
        for step in job["steps"]:
            assert "run" in step or step["uses"].split("@")[0] in {"actions/checkout", "actions/setup-python"}
    assert json.dumps(flow)  # plain data


def drifted_origin(new_project: Any) -> Path:
    """A CSV project whose v1.0.0 is in prod, then new data shifted in x0 landed on main (under
    the same data.source, as the README's cycle lands it), pushed with its tags and DVC objects:
    the bare origin."""
    import pandas as pd

    p: Project = new_project("driftproj")
    p.commit("scaffold")
    p.add_csv("customers.csv", customers(400, seed=1))
    p.set_params(data={"target": "churn"}, gate={"tolerance": 0.05})
    p.dvc("repro", "-q")
    p.commit("first model")
    add_remotes(p)
    p.shelf("release", "--push")
    p.shelf("promote", "v1.0.0", "--to", "prod")
    p.add_csv("customers.csv", pd.concat([customers(400, seed=1), customers(400, seed=2, shift=1.5)]))
    p.commit("newest data")
    p.dvc("push", "-q")
    p.git("push", "-q", "--tags", "origin", "main")
    return Path(p.git("remote", "get-url", "origin").stdout.strip())


def main_checkout(p: Project, tmp_path: Path) -> tuple[Path, Path]:
    """``p``'s main pushed to a new bare origin, checked out as a push's checkout: (origin, checkout)."""
    origin = tmp_path / "origin.git"
    run(["git", "init", "-q", "--bare", str(origin)], tmp_path)
    p.git("push", "-q", str(origin), "main")
    checkout = tmp_path / "runner" / "work"
    checkout.parent.mkdir()
    push_checkout(origin, checkout)
    return origin, checkout


def test_a_push_to_main_without_a_dvc_remote_is_a_green_no_op(built: Project, tmp_path: Path) -> None:
    """As shipped there is no DVC remote: the release job says so and stays green, no tag."""
    origin, checkout = main_checkout(built, tmp_path)
    forge = Forge(tmp_path / "forge")
    job = run_job("release.yml", "release", checkout, forge,
                  {"github": {"token": "ghs_stub", "ref": "refs/heads/main"}, "secrets": {}})
    assert not job.failed, job.log()
    assert "::notice::no DVC remote is configured" in job.step("Release").stdout
    assert run(["git", "tag", "-l"], origin).stdout == ""


def test_a_drift_error_is_a_red_job_not_no_drift(released: Project, tmp_path: Path) -> None:
    """`shelf drift` failing (here: no version holds `prod`) must not pass as "no drift"."""
    origin = tmp_path / "gh-origin.git"
    run(["git", "init", "-q", "--bare", str(origin)], tmp_path)
    released.git("push", "-q", "--tags", str(origin), "main")
    checkout = tmp_path / "runner" / "work"
    checkout.parent.mkdir()
    push_checkout(origin, checkout)
    forge = Forge(tmp_path / "forge")
    job = run_job("drift.yml", "drift", checkout, forge,
                  {"github": {"token": "ghs_stub", "repository": "acme/models", "run_id": "42"},
                   "secrets": {}})
    check = job.step("Drift check against prod")
    assert check.code == 0, job.log()
    assert job.step("An error is not \"no drift\"").code == 1, job.log()
    assert job.step("Retrain on the drift branch and open or update its pull request").ran is False
    assert forge.calls == []


def pushed_checkout(p: Project, tmp_path: Path) -> tuple[Path, Path]:
    """Push ``p``'s main and tags to its bare origin as the forge holds them, and check main
    out as a push's checkout (``p``'s DVC remote is a local directory): (origin, checkout)."""
    origin = Path(p.git("remote", "get-url", "origin").stdout.strip())
    p.git("push", "-q", "--tags", "origin", "main")
    checkout = tmp_path / "runner" / "work"
    checkout.parent.mkdir(parents=True, exist_ok=True)
    push_checkout(origin, checkout)
    return origin, checkout


def release_job(p: Project, tmp_path: Path) -> tuple[JobRun, Path]:
    """The release job on ``p``'s main as pushed (pushed_checkout): (job, origin)."""
    origin, checkout = pushed_checkout(p, tmp_path)
    job = run_job("release.yml", "release", checkout, Forge(tmp_path / "forge"),
                  {"github": {"token": "ghs_stub", "ref": "refs/heads/main"}, "secrets": {}})
    return job, origin


def land_new_data(p: Project) -> None:
    """New data landed on main as the README's cycle lands it (`dvc add`, commit), no repro."""
    p.add_csv("customers.csv", customers(300, seed=3))
    p.commit("new data")
    p.dvc("push", "-q")


def test_new_data_landed_on_main_is_a_green_no_op_naming_the_release(released: Project, tmp_path: Path) -> None:
    """The README's cycle lands data first (`dvc add`, commit): main's model is still the
    released one, so the release job says so and stays green; it neither refuses nor tags."""
    land_new_data(released)
    job, origin = release_job(released, tmp_path)
    assert not job.failed, job.log()
    out = job.step("Release").stdout
    assert "already released as model@v1.0.0" in out and "the pipeline is not up to date" in out, out
    assert "dvc repro" in out
    assert run(["git", "tag", "-l"], origin).stdout.split() == ["model@v1.0.0"]


def test_a_model_never_released_on_stale_inputs_is_still_refused(remote_project: Project) -> None:
    remote_project.add_csv("customers.csv", customers(300, seed=3))
    remote_project.commit("new data")
    done = remote_project.shelf("release", check=False)
    assert done.returncode == 7 and "the pipeline is not up to date" in done.stderr, done.stderr


def test_a_protected_main_refusing_the_renumber_says_so(released: Project, tmp_path: Path) -> None:
    """Another release took the card's version, so the job renumbers: a commit on main. A
    protected main refuses that push; the job's one line says it was the protection (not "the
    branch moved"), undoes the commit and tag, and names the two ways out."""
    protect_main_with_a_renumber_pending(released)
    job, origin = release_job(released, tmp_path)
    step = job.step("Release")
    assert step.code == 7, job.log()
    assert_refused_renumber(step.stderr, origin)


def protect_main_with_a_renumber_pending(released: Project) -> None:
    """A retrained model on main whose card says v1.1.0, while another release took
    model@v1.1.0 (so the release must renumber, a commit on main), all pushed to an origin
    whose pre-receive hook then refuses every update of main, as a protected branch does."""
    first = released.git("rev-parse", "HEAD").stdout.strip()
    hyper = released.params()["train"]["hyperparams"]
    hyper["n_estimators"] = 120
    released.set_params(train={"hyperparams": hyper}, gate={"tolerance": 0.05})
    released.dvc("repro", "-q")
    released.commit("retrain: 120 trees")
    released.git("tag", "-a", "model@v1.1.0", "-m", "Registering artifact model version v1.1.0", first)
    released.dvc("push", "-q")
    origin = Path(released.git("remote", "get-url", "origin").stdout.strip())
    released.git("push", "-q", "--tags", "origin", "main")
    hook = origin / "hooks" / "pre-receive"
    hook.write_text("#!/bin/sh\nwhile read old new ref; do\n  if [ \"$ref\" = refs/heads/main ]; then\n"
                    "    echo 'error: GH006: Protected branch update failed for refs/heads/main.' >&2; exit 1\n"
                    "  fi\ndone\n")
    hook.chmod(0o755)


def assert_refused_renumber(stderr: str, origin: Path) -> None:
    [line] = [ln for ln in stderr.splitlines() if ln.startswith("shelf: error")]
    assert "refused the push to main" in line and "GH006: Protected branch update failed" in line, line
    assert "git pull --rebase" not in line and "moved" not in line
    assert "renumber commit and its tag were undone" in line and "docs/setup.md" in line, line
    assert run(["git", "tag", "-l"], origin).stdout.split() == ["model@v1.0.0", "model@v1.1.0"]


def test_drift_found_twice_updates_one_branch_and_one_pull_request(new_project: Any, tmp_path: Path) -> None:
    """Two weekly runs that both find drift: one branch, force-updated; one pull request,
    updated; each commit holds only what the pipeline changed (no drift.md, report or body)."""
    origin = drifted_origin(new_project)
    forge = Forge(tmp_path / "forge")
    tips = []
    for run_id in ("42", "43"):
        checkout = tmp_path / f"runner-{run_id}" / "work"
        checkout.parent.mkdir()
        push_checkout(origin, checkout)
        job = run_job("drift.yml", "drift", checkout, forge,
                      {"github": {"token": "ghs_stub", "repository": "acme/models", "run_id": run_id}, "secrets": {}})
        assert job.step("Drift check against prod").ran, job.log()
        retrain = job.step("Retrain on the drift branch and open or update its pull request")
        assert retrain.code == 0, job.log()
        tip = run(["git", "rev-parse", "refs/heads/modelshelf/drift-retrain"], origin).stdout.strip()
        changed = run(["git", "show", "--name-only", "--format=", tip], origin).stdout.split()
        assert "dvc.lock" in changed and not {"drift.md", "report.md", "body.md"} & set(changed), changed
        assert run(["git", "rev-parse", f"{tip}~1"], origin).stdout.strip() == \
            run(["git", "rev-parse", "refs/heads/main"], origin).stdout.strip()  # rebuilt on main
        tips.append(tip)
    branches = run(["git", "for-each-ref", "--format=%(refname)", "refs/heads/"], origin).stdout.split()
    assert branches == ["refs/heads/main", "refs/heads/modelshelf/drift-retrain"]
    [pr] = forge.pulls
    assert pr["head"]["ref"] == "modelshelf/drift-retrain" and pr["base"]["ref"] == "main"
    assert "x0" in pr["body"] and pr["body"].count("<!-- modelshelf-report -->") == 1, pr["body"]
    assert "updated pull request #100" in retrain.stdout, job.log()
    assert tips[0] != tips[1]


def test_the_registry_page_is_published_to_gh_pages_as_one_commit(released: Project, tmp_path: Path) -> None:
    """registry-site.yml builds `shelf site` on main's checkout and force-pushes it to
    gh-pages: a rerun replaces the page (one commit, no history of old pages)."""
    origin, checkout = pushed_checkout(released, tmp_path)
    gitconfig = tmp_path / "gitconfig"  # the job's https://github.example push lands on the bare origin
    gitconfig.write_text(f'[url "{origin}"]\n\tinsteadOf = https://github.example/acme/models.git\n')
    env = {"GITHUB_SERVER_URL": "https://github.example", "GITHUB_REPOSITORY": "acme/models",
           "GITHUB_SHA": run(["git", "rev-parse", "HEAD"], checkout).stdout.strip(), "GIT_CONFIG_GLOBAL": str(gitconfig)}
    for _ in range(2):
        job = run_job("registry-site.yml", "site", checkout, Forge(tmp_path / "forge"),
                      {"github": {"token": "ghs_stub"}, "secrets": {}}, env)
        assert not job.failed, job.log()
    assert run(["git", "rev-list", "--count", "gh-pages"], origin).stdout.strip() == "1"
    files = run(["git", "ls-tree", "-r", "--name-only", "gh-pages"], origin).stdout.split()
    assert {"index.html", "assets/vega.js", ".nojekyll", "cards/v1.0.0.json"} <= set(files), files
    page = run(["git", "show", "gh-pages:index.html"], origin).stdout
    assert "v1.0.0" in page and "Metrics across releases" in page
