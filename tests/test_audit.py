"""``shelf gc`` keeps what pushed branches reference; ``shelf verify --all`` audits every release.

Real git, DVC and local-directory remotes (``released``: a bare git ``origin`` and a DVC
remote ``store`` holding model@v1.0.0).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml

from conftest import Project, run

pytestmark = pytest.mark.slow

MODEL = "models/model.joblib"


def store_of(p: Project) -> Path:
    return p.root.parent / f"{p.root.name}-dvcstore"


def object_path(base: Path, md5: str) -> Path:
    return base / "files" / "md5" / md5[:2] / md5[2:]


def dvc_md5(p: Project, dvcfile: str) -> str:
    return yaml.safe_load((p.root / dvcfile).read_text())["outs"][0]["md5"]


def locked_md5(p: Project, out: str, rev: str) -> str:
    lock = yaml.safe_load(p.git("show", f"{rev}:dvc.lock").stdout)
    return next(o["md5"] for s in lock["stages"].values() for o in s.get("outs") or [] if o["path"] == out)


def one_line(proc: subprocess.CompletedProcess[str], code: int) -> str:
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == code and len(lines) == 1 and "Traceback" not in proc.stderr, \
        (proc.returncode, proc.stdout, proc.stderr)
    return lines[0]


def clone(p: Project, dest: Path) -> Project:
    run(["git", "clone", "-q", p.git("remote", "get-url", "origin").stdout.strip(), str(dest)], dest.parent)
    return Project(dest)


# --- gc ------------------------------------------------------------------------------------------


def test_gc_cloud_keeps_the_objects_of_a_pushed_unreleased_branch(released: Project, tmp_path: Path) -> None:
    p = released
    store, cache = store_of(p), p.root / ".dvc" / "cache"
    # A colleague's open pull request: a branch with a new DVC-tracked file, pushed to both remotes.
    dev = clone(p, tmp_path / "dev")
    dev.git("checkout", "-q", "-b", "feature")
    (dev.root / "data" / "extra.csv").write_text("a,b\n1,2\n3,4\n")
    dev.dvc("add", "-q", "data/extra.csv")
    dev.commit("extra data")
    dev.dvc("push", "-q")
    dev.git("push", "-q", "origin", "feature")
    branch_obj = object_path(store, dvc_md5(dev, "data/extra.csv.dvc"))
    assert branch_obj.is_file()

    # Garbage: pushed, then abandoned (no commit anywhere references it).
    (p.root / "data" / "scratch.csv").write_text("x\n1\n")
    p.dvc("add", "-q", "data/scratch.csv")
    garbage_md5 = dvc_md5(p, "data/scratch.csv.dvc")
    p.dvc("push", "-q", "data/scratch.csv")
    (p.root / "data" / "scratch.csv.dvc").unlink()
    (p.root / "data" / "scratch.csv").unlink()
    garbage = [object_path(store, garbage_md5), object_path(cache, garbage_md5)]
    assert all(g.is_file() for g in garbage)
    release_obj = object_path(store, locked_md5(p, MODEL, "model@v1.0.0"))

    # --dry-run (and its alias --dry) says what would go, per location, and deletes nothing.
    before = sorted(str(x) for x in store.rglob("*") if x.is_file())
    for flag in ("--dry-run", "--dry"):
        out = p.shelf("gc", "-c", flag).stdout
        assert "would delete 1 objects, 4 B" in out and "remote store" in out and "cache (" in out, out
        assert "nothing was deleted" in out
    assert sorted(str(x) for x in store.rglob("*") if x.is_file()) == before
    assert all(g.is_file() for g in garbage)

    out = p.shelf("gc", "-c").stdout
    assert "remote store" in out and "deleted 1 objects" in out, out
    assert not any(g.exists() for g in garbage)
    assert branch_obj.is_file(), "the pushed branch's object was deleted from the shared remote"
    assert release_obj.is_file()

    # The pull request can still be pulled by anyone.
    other = clone(p, tmp_path / "reviewer")
    other.git("checkout", "-q", "feature")
    other.dvc("pull", "-q", "data/extra.csv")
    assert (other.root / "data" / "extra.csv").read_text() == "a,b\n1,2\n3,4\n"


def test_gc_cloud_refuses_when_a_git_remote_cannot_be_fetched(released: Project) -> None:
    p = released
    p.git("remote", "add", "gone", str(p.root.parent / "no-such-repo.git"))
    line = one_line(p.shelf("gc", "-c", check=False), 6)
    assert "git fetch gone" in line and "every pushed branch" in line
    assert object_path(store_of(p), locked_md5(p, MODEL, "model@v1.0.0")).is_file()
    # The local cache is this clone's own: collected, with a warning about what was not seen.
    out = p.shelf("gc", "--dry-run").stdout
    assert "warning: could not fetch gone" in out and "remote store" not in out, out


# --- verify --all ---------------------------------------------------------------------------------


def test_verify_all_catches_a_corrupt_cache_object_and_objects_dvc_gc_deleted(
        released: Project, tmp_path: Path) -> None:
    p = released
    store, cache = store_of(p), p.root / ".dvc" / "cache"
    out = p.shelf("verify", "--all", "--remote").stdout
    assert "model: 1 releases" in out and "all good" in out, out
    report = json.loads(p.shelf("verify", "--all", "--remote", "--json").stdout)
    assert report["ok"] is True and report["objects"] >= 3 and report["remote"] == "store"

    # A corrupt cache object (one flipped byte) is caught; the remote's copy is fine.
    md5 = locked_md5(p, MODEL, "model@v1.0.0")
    obj = object_path(cache, md5)
    os.chmod(obj, 0o644)
    data = bytearray(obj.read_bytes())
    data[100] ^= 1
    obj.write_bytes(bytes(data))
    proc = p.shelf("verify", "--all", check=False)
    assert one_line(proc, 4).startswith("shelf: error: shelf verify --all: 1 problems")
    assert f"model@v1.0.0: cache: {MODEL}: object {md5} corrupt" in proc.stdout, proc.stdout
    report = json.loads(p.shelf("verify", "--all", "--remote", "--json", check=False).stdout)
    assert [(x["where"], x["tag"]) for x in report["problems"]] == [("cache", "model@v1.0.0")]
    data[100] ^= 1
    obj.write_bytes(bytes(data))

    # A tag whose card names another version, and whose message names another model.
    p.git("tag", "-a", "model@v1.5.0", "-m", "Registering artifact model version v1.5.0\n\nmodel-sha256: " + "0" * 64)
    report = json.loads(p.shelf("verify", "--all", "--json", check=False).stdout)
    assert {(x["tag"], x["where"]) for x in report["problems"]} == {("model@v1.5.0", "card"),
                                                                     ("model@v1.5.0", "message")}
    p.git("tag", "-d", "model@v1.5.0")

    # The user moves on without releasing, and runs DVC's own gc keeping the workspace only:
    # v1.0.0's objects go from the cache and the remote.
    hyper = p.params()["train"]["hyperparams"]
    hyper["n_estimators"] = 60
    p.set_params(train={"hyperparams": hyper}, gate={"tolerance": 0.05})
    p.dvc("repro")
    p.commit("fewer trees, not released")
    p.dvc("push", "-q")
    p.dvc("gc", "-w", "-c", "-f", "-q")
    assert not object_path(store, md5).exists()
    proc = p.shelf("verify", "--all", "--remote", check=False)
    one_line(proc, 4)
    assert f"model@v1.0.0: remote: {MODEL}: object {md5} missing" in proc.stdout, proc.stdout
    assert f"model@v1.0.0: cache: {MODEL}" not in proc.stdout   # said once, where it matters
    proc = p.shelf("verify", "--all", check=False)
    one_line(proc, 4)
    assert f"model@v1.0.0: cache: {MODEL}: object {md5} missing" in proc.stdout

    # An unreachable DVC remote is exit 8, one line.
    p.dvc("remote", "add", "gone", str(tmp_path / "no-such-store"))
    assert "gone" in one_line(p.shelf("verify", "--all", "--remote", "gone", check=False), 8)


def test_verify_all_of_a_project_without_releases(remote_project: Project) -> None:
    out = remote_project.shelf("verify", "--all").stdout
    assert "0 releases" in out and "all good" in out
    assert json.loads(remote_project.shelf("verify", "--all", "--json").stdout)["releases"] == 0
