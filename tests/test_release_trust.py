"""Releases you can trust (issue 13): the gate bound to the bytes, and release, promote and
renumber that complete or leave nothing behind, whenever they are killed.

Real git, DVC and GTO in temporary directories (conftest's fixtures); nothing is mocked.  The
kill points that need no timing are reproduced exactly (the tag `shelf release` makes without
``--push`` is the tag ``--push`` makes before pushing; the renumber's first step is called as
the release calls it); the kill -9 loop at the end covers the rest at spread delays.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from conftest import Project
from test_registry import assert_refused, clone, local_tags, object_path, origin_tags, retrained, store_of, take

CARD = "models/card.json"
MODEL = "models/model.joblib"
GATE = "metrics/gate.json"
CANDIDATE_INFO = "build/candidate/candidate.json"


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()  # noqa: S324 - DVC's content address


def write_json(path: Path, data: Any) -> None:
    path.chmod(0o644)
    path.write_text(json.dumps(data, indent=2) + "\n")


def head(p: Project) -> str:
    return p.git("rev-parse", "HEAD").stdout.strip()


def prod_tags(tags: set[str] | dict[str, str]) -> set[str]:
    return {t for t in tags if t.startswith("model#prod#")}


# --- the gate binds the bytes -------------------------------------------------------------------


def test_the_gate_records_the_candidate_it_judged_and_depends_on_it(built: Project) -> None:
    judged = built.json(CANDIDATE_INFO)["sha256"]
    assert judged == sha(built.root / "build/candidate/model.joblib")
    assert built.json(GATE)["candidate_sha256"] == judged
    card = built.json(CARD)
    assert card["gate"]["candidate_sha256"] == judged == card["artefacts"]["model"]["sha256"]
    lock = (built.root / "dvc.lock").read_text()
    gate_deps = lock.split("  gate:", 1)[1].split("  serialise:", 1)[0]
    assert "path: build/candidate/candidate.json" in gate_deps


def test_serialise_refuses_a_candidate_the_gate_did_not_judge(built: Project) -> None:
    p = built
    serialise = ("serialise", "--params", "params.yaml", "--prepared", "data/prepared",
                 "--candidate", "build/candidate", "--metrics", "metrics/eval.json", "--gate", GATE,
                 "--out", "models")
    before = {path: (p.root / path).read_bytes() for path in (CARD, MODEL)}

    # A report from a gate that did not record its candidate (an older gate) is not enough.
    report = p.json(GATE)
    report.pop("candidate_sha256")
    write_json(p.root / GATE, report)
    assert_refused(p.shelf(*serialise, check=False), 3, "records no candidate sha256")
    p.git("checkout", "--", GATE)

    # Another candidate trained after the gate ran: same metrics file, other bytes.
    p.set_params(train={"hyperparams": {"n_estimators": 7, "max_depth": 3}})
    p.shelf("train", "--params", "params.yaml", "--prepared", "data/prepared", "--out", "build/candidate")
    assert p.json(CANDIDATE_INFO)["sha256"] != p.json(GATE)["candidate_sha256"]
    assert_refused(p.shelf(*serialise, check=False), 3, "not the one the gate judged")
    assert {path: (p.root / path).read_bytes() for path in before} == before


def _legacy_card(card: dict[str, Any]) -> dict[str, Any]:
    """``card`` as serialise wrote it before the gate recorded its candidate."""
    card["gate"].pop("candidate_sha256")
    return card


def _swap_model(p: Project, also_gate: bool, legacy: bool = False) -> str:
    """Replace the workspace model by other bytes and make the card (and, ``also_gate``, the
    gate report and the card's gate) agree, re-lock with `dvc commit`, commit.  The new sha256.
    ``legacy``: the card has no ``gate.candidate_sha256`` (made before it was recorded)."""
    from sklearn.dummy import DummyClassifier

    from modelshelf import artefacts

    model = p.root / MODEL
    model.chmod(0o644)
    artefacts.dump_joblib(DummyClassifier().fit([[0.0]], [1]), model)
    new = sha(model)
    card = p.json(CARD)
    card["artefacts"]["model"].update(sha256=new, bytes=model.stat().st_size)
    if also_gate:
        card["gate"]["candidate_sha256"] = new
        report = p.json(GATE)
        report["candidate_sha256"] = new
        write_json(p.root / GATE, report)
    write_json(p.root / CARD, _legacy_card(card) if legacy else card)
    p.dvc("commit", "-f", "-q")
    assert json.loads(p.dvc("status", "--json").stdout or "{}") == {}
    p.commit("a swapped model whose card matches")
    return new


@pytest.mark.slow
@pytest.mark.parametrize("also_gate", [False, True], ids=["card", "card-and-gate-report"])
def test_a_swapped_model_with_a_matching_card_is_not_released(remote_project: Project, also_gate: bool) -> None:
    p = remote_project
    new = _swap_model(p, also_gate)
    line = assert_refused(p.shelf("release", "--push", check=False), 3, MODEL, new[:12])
    assert ("train stage's candidate" in line) if also_gate else ("the candidate the gate judged" in line)
    assert local_tags(p) == set() and origin_tags(p) == {}


def _tag_by_hand(p: Project, version: str) -> None:
    """Tag HEAD as `shelf release` tagged before it checked the gate's candidate."""
    from modelshelf.registry.core import Workspace
    from modelshelf.registry.release import _tag_message
    from modelshelf.tags import SemVer

    message = _tag_message(Workspace.open(p.root), SemVer.parse(version), p.json(CARD))
    assert f"model-sha256: {sha(p.root / MODEL)}" in message
    p.git("tag", "-a", f"model@v{version}", "-m", message, "HEAD")


@pytest.mark.slow
@pytest.mark.parametrize("legacy", [False, True], ids=["card", "legacy-card"])
def test_a_release_made_with_a_swapped_model_is_not_promoted_to_prod(remote_project: Project,
                                                                    legacy: bool) -> None:
    p = remote_project
    _swap_model(p, also_gate=False, legacy=legacy)
    _tag_by_hand(p, "1.0.0")
    p.dvc("push", "-q")
    p.git("push", "-q", "origin", "main", "refs/tags/model@v1.0.0")
    for push in ((), ("--push",)):
        line = assert_refused(p.shelf("promote", "v1.0.0", "--to", "prod", *push, check=False), 3,
                              "model@v1.0.0", "'prod'")
        assert ("not the train stage's candidate" if legacy else "not the candidate its gate judged") in line
    assert not prod_tags(local_tags(p)) and not prod_tags(origin_tags(p))
    assert "model#staging#1" in p.shelf("promote", "v1.0.0", "--to", "staging").stdout  # not protected
    if legacy:
        # An honest release from before the gate recorded its candidate still goes to prod:
        # its model is the train stage's candidate, byte for byte.
        p.git("checkout", "HEAD~1", "--", CARD, "dvc.lock")
        p.dvc("checkout", "-q", MODEL)
        write_json(p.root / CARD, {**_legacy_card(p.json(CARD)), "version": "1.1.0"})
        p.dvc("commit", "-f", "-q")
        p.commit("an honest model from before")
        _tag_by_hand(p, "1.1.0")
        assert "model#prod#2" in p.shelf("promote", "v1.1.0", "--to", "prod").stdout


@pytest.mark.slow
def test_a_release_is_refused_when_main_got_a_better_model_after_its_gate_ran(remote_project: Project) -> None:
    p = remote_project
    p.git("checkout", "-q", "-b", "feat")
    p.set_params(train={"hyperparams": {"n_estimators": 60, "max_depth": 6}})
    assert "gate: PASSED" in p.dvc("repro").stdout      # judged against main as it was then
    feat_gate = p.json(GATE)
    p.commit("feat: 60 trees")

    p.git("checkout", "-q", "main")
    p.set_params(train={"estimator": "sklearn.linear_model.LogisticRegression",
                        "hyperparams": {"max_iter": 1000}})
    p.dvc("repro")
    better = p.json("metrics/eval.json")
    main_commit = p.commit("main: a better model")
    p.git("checkout", "-q", "feat")
    p.dvc("checkout", "-q")
    assert better["accuracy"] > p.json("metrics/eval.json")["accuracy"]
    assert feat_gate["passed"] is True and feat_gate["baseline"]["commit"] != main_commit

    line = assert_refused(p.shelf("release", check=False), 3, "gate.baseline main", main_commit[:12],
                          "accuracy", "regressed")
    assert "dvc repro" in line
    assert local_tags(p) == set()
    # (main itself releases, judged against the model it held before: test_registry's stories.)


# --- a release tag that never reached the git remote ---------------------------------------------


def test_a_release_tagged_but_not_pushed_is_completed_by_the_next_push(remote_project: Project) -> None:
    p = remote_project
    # `shelf release` without --push leaves exactly what a kill after `git tag` leaves.
    p.shelf("release")
    assert local_tags(p) == {"model@v1.0.0"} and origin_tags(p) == {}
    model_object = object_path(store_of(p), md5(p.root / MODEL))
    model_object.unlink()   # the completion must prove the DVC remote, not trust the first run

    done = p.shelf("release", "--push", "--skip-released")   # what CI on main runs
    assert "completed the interrupted release model@v1.0.0" in done.stdout
    assert origin_tags(p) == {"model@v1.0.0": head(p)}
    assert model_object.is_file()
    assert p.git("rev-parse", "model@v1.0.0").stdout.strip() == \
        p.git("ls-remote", "origin", "refs/tags/model@v1.0.0").stdout.split()[0]

    for args in (("--push", "--skip-released"), ("--push",), ()):
        again = p.shelf("release", *args)
        assert "already released as model@v1.0.0" in again.stdout, args
    assert local_tags(p) == {"model@v1.0.0"} and set(origin_tags(p)) == {"model@v1.0.0"}


def test_a_local_release_whose_version_the_remote_took_is_deleted_and_said(remote_project: Project,
                                                                          tmp_path: Path) -> None:
    p = remote_project
    p.shelf("release")
    mine = p.git("rev-parse", "model@v1.0.0").stdout.strip()
    other = clone(p, tmp_path / "other")
    (other.root / "NOTES.md").write_text("another commit, the same model\n")
    theirs = other.commit("notes")
    other.shelf("release", "--push")
    assert origin_tags(p) == {"model@v1.0.0": theirs}

    # The same bytes are already released (as origin's v1.0.0): the clobbered local tag is
    # deleted and said, and nothing is tagged again, with or without --skip-released.
    done = p.shelf("release", "--push")
    assert "deleted the local tag model@v1.0.0" in done.stdout and "origin holds model@v1.0.0" in done.stdout
    assert "already released as model@v1.0.0" in done.stdout
    assert p.git("rev-parse", "model@v1.0.0").stdout.strip() != mine
    assert p.git("rev-parse", "model@v1.0.0^{commit}").stdout.strip() == theirs
    again = p.shelf("release", "--push", "--skip-released")
    assert "already released as model@v1.0.0" in again.stdout and "deleted" not in again.stdout
    assert origin_tags(p) == {"model@v1.0.0": theirs}


# --- an interrupted renumber ------------------------------------------------------------------------


def test_an_interrupted_renumber_is_finished_by_the_next_renumber(released: Project) -> None:
    from modelshelf.registry.core import Workspace
    from modelshelf.registry.release import begin_renumber
    from modelshelf.tags import SemVer

    p = released
    first = head(p)
    before = retrained(p)                            # a new model whose card claims v1.1.0 ...
    take(p, "1.1.0", first)                          # ... which another release took
    # The renumber's first step, exactly as `release --renumber` runs it; a kill stops it here.
    begin_renumber(Workspace.open(p.root), p.json(CARD), SemVer(1, 1, 0))
    changed = set(p.git("diff", "--name-only").stdout.split())
    assert changed == {CARD, "dvc.lock"} and p.json(CARD)["version"] == "1.2.0"

    assert_refused(p.shelf("release", check=False), 7, "interrupted renumber v1.1.0 → v1.2.0",
                   "shelf release --renumber", "git checkout --")
    with (p.root / "params.yaml").open("a") as fh:   # any other change is not the renumber's
        fh.write("# an unrelated edit\n")
    assert_refused(p.shelf("release", "--renumber", check=False), 7, "uncommitted changes")
    p.git("checkout", "--", "params.yaml")
    assert head(p) == before

    done = p.shelf("release", "--renumber", "--push")
    assert "finished the interrupted renumber v1.1.0 → v1.2.0" in done.stdout
    assert "released model@v1.2.0" in done.stdout
    assert p.git("rev-parse", "HEAD~1").stdout.strip() == before
    assert p.git("log", "-1", "--format=%s").stdout.strip() == "Renumber model v1.1.0 → v1.2.0"
    assert origin_tags(p)["model@v1.2.0"] == head(p)
    assert p.git("status", "--porcelain", "--untracked-files=no").stdout == ""
    assert json.loads(p.dvc("status", "--json").stdout or "{}") == {}


# --- promote --push ----------------------------------------------------------------------------------


def test_promote_push_needs_the_release_on_both_remotes_and_resumes_its_own_tag(remote_project: Project) -> None:
    p = remote_project
    p.shelf("release")   # a local-only release
    for stage in ("prod", "staging"):
        assert_refused(p.shelf("promote", "v1.0.0", "--to", stage, "--push", check=False), 7,
                       "model@v1.0.0", "not on origin", "shelf release --push")
    assert local_tags(p) == {"model@v1.0.0"} and origin_tags(p) == {}

    # On the git remote, but the DVC remote lost the model: refused, read-only (not re-uploaded).
    p.shelf("release", "--push")
    model_object = object_path(store_of(p), md5(p.root / MODEL))
    saved = model_object.read_bytes()
    model_object.unlink()
    assert_refused(p.shelf("promote", "v1.0.0", "--to", "prod", "--push", check=False), 8,
                   "model@v1.0.0", "lacks 1", MODEL)
    assert not model_object.exists()
    assert local_tags(p) == {"model@v1.0.0"} and set(origin_tags(p)) == {"model@v1.0.0"}
    model_object.write_bytes(saved)
    assert "model#prod#1" in p.shelf("promote", "v1.0.0", "--to", "prod", "--push").stdout
    assert prod_tags(origin_tags(p)) == {"model#prod#1"}

    # A promote killed between its tag and its push (`promote` without --push leaves exactly
    # that tag): the same promote with --push pushes it, and makes no second one.
    assert "model#staging#2" in p.shelf("promote", "v1.0.0", "--to", "staging").stdout
    done = p.shelf("promote", "v1.0.0", "--to", "staging", "--push")
    assert "model#staging#2" in done.stdout and "interrupted" in done.stdout
    assert {t for t in local_tags(p) if "#" in t} == {"model#prod#1", "model#staging#2"}
    assert {t for t in origin_tags(p) if "#" in t} == {"model#prod#1", "model#staging#2"}
    again = p.shelf("promote", "v1.0.0", "--to", "staging", "--push")
    assert "already holds v1.0.0" in again.stdout
    assert {t for t in local_tags(p) if "#" in t} == {"model#prod#1", "model#staging#2"}


# --- kill -9 at spread moments -------------------------------------------------------------------------


def _kill_at(p: Project, args: list[str], delay: float) -> tuple[str, float | None]:
    """Run ``shelf ARGS`` and SIGKILL its process group at ``delay`` seconds.  What happened,
    and how long the run took when it finished first."""
    start = time.monotonic()
    proc = subprocess.Popen(["shelf", *args], cwd=p.root, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        proc.wait(timeout=delay)
        return f"finished ({proc.returncode}) before {delay:.2f}s", time.monotonic() - start
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the CLI and its dvc/git children, all at once
        proc.wait()
        return f"killed at {delay:.2f}s", None


KILLS = 6
FRACTIONS = (0.1, 0.3, 0.5, 0.65, 0.8, 0.92, 0.2, 0.4, 0.6, 0.75)   # of an uninterrupted run


def _delete_tags(p: Project, names: set[str]) -> None:
    if names:
        p.git("tag", "-d", *names)
        p.git("push", "-q", "origin", *(f":refs/tags/{n}" for n in names))


@pytest.mark.slow
def test_kill_9_at_any_moment_of_release_push_and_promote_push(remote_project: Project) -> None:
    """After every kill the git remote holds no release tag whose objects the DVC remote
    lacks, and one rerun of the same command completes; the state is then reset (tags
    deleted on both sides, the DVC remote emptied) for the next kill point.  The delays spread
    the kills over the measured duration of an uninterrupted run; they order nothing."""
    p = remote_project
    store = store_of(p)
    card = p.json(CARD)
    objects = [object_path(store, md5(p.root / "models" / rec["file"])) for rec in card["artefacts"].values()]

    def no_tag_without_bytes(log: list[str]) -> None:
        if any(t.startswith("model@v") for t in origin_tags(p)):
            lacking = [o for o in objects if not o.is_file()]
            assert lacking == [], log

    def timed(args: list[str]) -> float:
        start = time.monotonic()
        p.shelf(*args)
        return time.monotonic() - start

    release = ["release", "--push"]
    full = timed(release)
    log: list[str] = []
    kills = 0
    for fraction in FRACTIONS:   # bounded: at most len(FRACTIONS) attempts
        if kills == KILLS:
            break
        _delete_tags(p, {t for t in local_tags(p) if t.startswith("model@")})
        shutil.rmtree(store)
        entry, took = _kill_at(p, release, full * fraction)
        log.append(entry)
        kills += took is None
        full = min(full, took or full)   # the machine got faster: aim inside the run again
        no_tag_without_bytes(log)
        done = p.shelf(*release, check=False)
        assert done.returncode == 0, (log, done.stdout, done.stderr)
        assert set(origin_tags(p)) == {"model@v1.0.0"} == local_tags(p), log
        no_tag_without_bytes(log)
    assert kills == KILLS, log

    promote = ["promote", "v1.0.0", "--to", "prod", "--push"]
    full = timed(promote)
    release_commit = p.git("rev-parse", "model@v1.0.0^{commit}").stdout.strip()
    kills = 0
    for fraction in FRACTIONS:
        if kills == KILLS:
            break
        _delete_tags(p, prod_tags(local_tags(p)))
        entry, took = _kill_at(p, promote, full * fraction)
        log.append(entry)
        kills += took is None
        full = min(full, took or full)
        no_tag_without_bytes(log)
        assert len(prod_tags(origin_tags(p))) <= 1, log
        done = p.shelf(*promote, check=False)
        assert done.returncode == 0, (log, done.stdout, done.stderr)
        remote = origin_tags(p)
        assert len(prod_tags(local_tags(p))) == 1 and prod_tags(remote) == prod_tags(local_tags(p)), log
        tag = next(iter(prod_tags(remote)))
        assert p.git("rev-parse", f"{tag}^{{commit}}").stdout.strip() == release_commit, log
    assert kills == KILLS, log


def test_the_same_bytes_are_never_released_as_a_second_version(released: Project) -> None:
    # A change that reruns serialise but not train (the bump rule) gives the same model a new
    # card version; a plain release and CI's --skip-released agree: already released, no tag.
    p = released
    assert p.json(CARD)["version"] == "1.0.0"
    p.set_params(release={**p.params()["release"], "bump": "minor"})
    p.dvc("repro")
    assert p.json(CARD)["version"] == "1.1.0"
    p.commit("bump rule: minor")
    for args in ((), ("--push",), ("--push", "--skip-released")):
        done = p.shelf("release", *args)
        assert "already released as model@v1.0.0" in done.stdout, args
    assert local_tags(p) == {"model@v1.0.0"} and set(origin_tags(p)) == {"model@v1.0.0"}
