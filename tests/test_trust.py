"""One anchor of trust for every load path, and a rollback that never half-applies (issue 13).

The card committed at a release tag, read from git, is the only card a release's bytes are
checked against.  A local copy under ``.dvc/tmp/modelshelf/`` (what ``modelshelf.load("vX")``,
``shelf serve --model vX`` and ``shelf predict --model vX`` use) is a cache: tampering with
its files *and* its card.json, or with the DVC cache object behind it, never gets a pickle
loaded; the true bytes are fetched again (cache, else remote) or the load is refused (exit 4).

Rollback fetches and verifies every object before writing a file: a corrupt cache object
and a corrupt remote leave the workspace byte-identical and no bad object in the cache; a
kill -9 at any moment is finished by one rerun of the same command.

Real git, DVC and ``shelf`` throughout, over the session templates of ``test_serve``
(v1.0.0 and v1.1.0 released and pushed, each copy with its own git and DVC remote).
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import joblib
import pandas as pd
import pytest
import yaml

import modelshelf
from modelshelf.errors import IntegrityError

from conftest import BIN, Project, copy_tree
from test_serve import set_origin, start_server, template_v1, template_v11  # noqa: F401 - fixtures

pytestmark = pytest.mark.slow

CARD = "models/card.json"
MODEL = "models/model.joblib"


class Payload:
    """A pickle that, when loaded, creates ``marker`` (what an attacker's code would do)."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (self.marker, "w"))


@pytest.fixture
def one_release(template_v1: Path, tmp_path: Path) -> Project:  # noqa: F811
    """A private copy: model@v1.0.0 released and pushed (HEAD is its commit)."""
    return set_origin(copy_tree(template_v1, tmp_path / "t"))


@pytest.fixture
def two_releases(template_v11: Path, tmp_path: Path) -> Project:  # noqa: F811
    """A private copy: v1.0.0 and v1.1.0 released and pushed; HEAD is v1.1.0's commit."""
    return set_origin(copy_tree(template_v11, tmp_path / "t"))


# --- helpers ------------------------------------------------------------------------------------


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()  # noqa: S324 - DVC's content address


def card_at(p: Project, rev: str) -> dict[str, Any]:
    return json.loads(p.git("show", f"{rev}:{CARD}").stdout)


def store(p: Project) -> Path:
    return p.root.parent / "proj-dvcstore"


def obj(base: Path, md5sum: str) -> Path:
    return base / "files" / "md5" / md5sum[:2] / md5sum[2:]


def locked(p: Project, rev: str, out: str) -> str:
    lock = yaml.safe_load(p.git("show", f"{rev}:dvc.lock").stdout)
    return next(o["md5"] for s in lock["stages"].values() for o in s.get("outs") or [] if o["path"] == out)


def onnx_md5(p: Project, rev: str) -> str:
    manifest = json.loads(obj(p.root / ".dvc" / "cache", locked(p, rev, "models/onnx")).read_text())
    return next(e["md5"] for e in manifest if e["relpath"] == "model.onnx")


def overwrite(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        path.chmod(0o644)
    path.write_bytes(data)


def evil_bytes(tmp: Path, marker: Path) -> bytes:
    joblib.dump(Payload(marker), tmp / "evil.joblib")
    return (tmp / "evil.joblib").read_bytes()


def copy_of(p: Project, version: str) -> Path:
    return p.root / ".dvc" / "tmp" / "modelshelf" / "model" / f"v{version}"


def tamper_copy(copy: Path, evil: bytes, version: str | None = None) -> None:
    """Replace the copy's joblib with ``evil`` and make its card.json agree: the sha256 of the
    evil bytes, no ONNX record (so a loader trusting this card unpickles the joblib), and
    optionally another version."""
    overwrite(copy / "model.joblib", evil)
    card = json.loads((copy / "card.json").read_text())
    card["artefacts"]["model"].update(sha256=hashlib.sha256(evil).hexdigest(), bytes=len(evil))
    card["artefacts"].pop("onnx", None)
    if version is not None:
        card["version"] = version
    (copy / "card.json").write_text(json.dumps(card))


def one_line(proc: subprocess.CompletedProcess[str], code: int) -> str:
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    return lines[0]


def tree(root: Path) -> dict[str, bytes]:
    """Every workspace file's bytes: the tree minus .git, the DVC cache and .dvc/tmp."""
    skip = (root / ".git", root / ".dvc" / "cache", root / ".dvc" / "tmp")
    out = {}
    for path in sorted(root.rglob("*")):
        if any(path == s or s in path.parents for s in skip) or not path.is_file():
            continue
        out[str(path.relative_to(root))] = path.read_bytes()
    return out


def bad_objects(cache: Path) -> list[str]:
    """Cache objects whose bytes do not hash to their name."""
    return [str(f) for f in (cache / "files" / "md5").rglob("*")
            if f.is_file() and md5(f) != f.parent.name + f.name.removesuffix(".dir")]


def features(p: Project) -> pd.DataFrame:
    card = json.loads((p.root / CARD).read_text())
    return pd.read_csv(p.root / "data" / "prepared" / "test.csv")[[f["name"] for f in card["input_schema"]["features"]]]


# --- 1. the tampered local copy -------------------------------------------------------------------


def test_a_tampered_copy_is_never_unpickled_by_load_predict_or_serve(one_release: Project, tmp_path: Path) -> None:
    """The copy's joblib replaced by a pickle that creates a marker, its card.json rewritten to
    match (and to record no ONNX copy): load, predict and serve each fetch the true bytes again
    (verified against the card at the tag, read from git) and use the released model."""
    p = one_release
    marker = tmp_path / "pwned"
    evil = evil_bytes(tmp_path, marker)
    released = card_at(p, "model@v1.0.0")
    truth = modelshelf.load("v1.0.0", repo=p.root)
    X = features(p)
    expected = truth.predict_proba(X)
    copy = copy_of(p, "1.0.0")

    tamper_copy(copy, evil)
    model = modelshelf.load("v1.0.0", repo=p.root)
    assert not marker.exists()
    assert model.card == released and (model.predict_proba(X) == expected).all()
    assert sha(copy / "model.joblib") == released["artefacts"]["model"]["sha256"]
    assert json.loads((copy / "card.json").read_text()) == released  # rewritten from git

    tamper_copy(copy, evil)
    scored = p.shelf("predict", "data/prepared/test.csv", "--model", "v1.0.0", "-o", str(tmp_path / "out.csv"))
    assert "with v1.0.0" in scored.stdout and not marker.exists()
    out = pd.read_csv(tmp_path / "out.csv")
    assert (out["model_version"] == "1.0.0").all() and (out["prediction"] == model.predict(X)).all()

    tamper_copy(copy, evil)
    server = start_server(p.root, "--model", "v1.0.0", "--poll", "0", env=dict(os.environ), logdir=tmp_path / "logs")
    try:
        assert server.health()["version"] == "1.0.0"
        assert server.get("/model").json() == released   # the card at the tag, served
        rows = {"rows": [{k: float(v) for k, v in r.items()} for r in X.iloc[:5].to_dict("records")]}
        answer = server.post("/predict", rows)
        assert answer.status == 200 and answer.json()["version"] == "1.0.0", answer
        assert answer.json()["predictions"] == model.predict(X.iloc[:5]).tolist()
    finally:
        server.stop()
    assert not marker.exists()
    assert sha(copy / "model.joblib") == released["artefacts"]["model"]["sha256"]


def test_a_copy_whose_card_claims_another_version_gets_the_released_bytes(two_releases: Project,
                                                                         tmp_path: Path) -> None:
    """v1.1.0's copy replaced by v1.0.0's genuine files, its card saying 1.1.0 (a downgrade to
    an older model), then by an evil pickle whose card claims 1.1.0: load and predict use
    v1.1.0's released bytes each time."""
    p = two_releases
    marker = tmp_path / "pwned"
    v11 = card_at(p, "model@v1.1.0")
    modelshelf.load("v1.0.0", repo=p.root)
    modelshelf.load("v1.1.0", repo=p.root)
    old, copy = copy_of(p, "1.0.0"), copy_of(p, "1.1.0")
    for name in ("model.joblib", "onnx/model.onnx"):
        overwrite(copy / name, (old / name).read_bytes())
    downgraded = json.loads((old / "card.json").read_text())
    downgraded["version"] = "1.1.0"
    (copy / "card.json").write_text(json.dumps(downgraded))

    model = modelshelf.load("v1.1.0", repo=p.root)
    assert model.card == v11 and model.estimator.named_steps["model"].n_estimators == 60
    assert sha(copy / "onnx" / "model.onnx") == v11["artefacts"]["onnx"]["sha256"]

    tamper_copy(copy, evil_bytes(tmp_path, marker), version="1.1.0")
    scored = p.shelf("predict", "data/prepared/test.csv", "--model", "v1.1.0", "-o", str(tmp_path / "out.csv"))
    assert "with v1.1.0" in scored.stdout and not marker.exists()
    assert (pd.read_csv(tmp_path / "out.csv")["prediction"] == model.predict(features(p))).all()


def test_an_evil_cache_object_is_not_trusted_either(one_release: Project, tmp_path: Path) -> None:
    """The copy tampered as above *and* the DVC cache object of the model replaced by the evil
    bytes: the bytes come from the remote (the bad object leaves the cache); with the remote's
    copy evil too, load, predict and serve refuse with exit 4 and one line."""
    p = one_release
    marker = tmp_path / "pwned"
    evil = evil_bytes(tmp_path, marker)
    released = card_at(p, "model@v1.0.0")
    modelshelf.load("v1.0.0", repo=p.root)
    copy = copy_of(p, "1.0.0")
    cached = obj(p.root / ".dvc" / "cache", locked(p, "model@v1.0.0", MODEL))
    remote = obj(store(p), locked(p, "model@v1.0.0", MODEL))
    good = cached.read_bytes()

    tamper_copy(copy, evil)
    overwrite(cached, evil)
    model = modelshelf.load("v1.0.0", repo=p.root)
    assert not marker.exists() and model.card == released
    assert sha(copy / "model.joblib") == released["artefacts"]["model"]["sha256"]
    assert not cached.exists() or cached.read_bytes() == good

    tamper_copy(copy, evil)
    overwrite(cached, evil)
    overwrite(remote, evil)
    with pytest.raises(IntegrityError):
        modelshelf.load("v1.0.0", repo=p.root)
    refused = p.shelf("predict", "data/prepared/test.csv", "--model", "v1.0.0", "-o", str(tmp_path / "out.csv"),
                      check=False)
    assert "v1.0.0" in one_line(refused, 4) and not (tmp_path / "out.csv").exists()
    serve = subprocess.run([str(BIN / "shelf"), "serve", "--model", "v1.0.0", "--poll", "0", "--port", "0"],
                           cwd=p.root, capture_output=True, text=True, timeout=120)
    assert "sha256" in one_line(serve, 4)
    assert not marker.exists()
    assert not cached.exists() or cached.read_bytes() == good


# --- 2. get: all or nothing --------------------------------------------------------------------------


def test_get_writes_nothing_into_the_directory_when_an_artefact_is_bad(one_release: Project,
                                                                       tmp_path: Path) -> None:
    """The ONNX copy corrupt in the cache and the remote: `shelf get` exits 4 and the target
    directory keeps exactly what it held (no model.joblib written before the failure, no temp
    files); with the bytes repaired it fetches every file, verified against the tag's card."""
    p = one_release
    released = card_at(p, "model@v1.0.0")
    oid = onnx_md5(p, "model@v1.0.0")
    cached, remote = obj(p.root / ".dvc" / "cache", oid), obj(store(p), oid)
    good = cached.read_bytes()
    for path in (cached, remote):
        overwrite(path, good[:-10] + b"0123456789")

    out = tmp_path / "got"
    refused = p.shelf("get", "v1.0.0", "-o", str(out), check=False)
    assert "model.onnx" in one_line(refused, 4)
    assert not out.exists() and [f for f in os.listdir(tmp_path) if f.startswith(".got")] == []
    out.mkdir()
    (out / "model.joblib").write_bytes(b"what was here")
    assert p.shelf("get", "v1.0.0", "-o", str(out), check=False).returncode == 4
    assert {f.name: f.read_bytes() for f in out.rglob("*")} == {"model.joblib": b"what was here"}

    overwrite(remote, good)
    assert "fetched v1.0.0" in p.shelf("get", "v1.0.0", "-o", str(out)).stdout
    assert json.loads((out / "card.json").read_text()) == released
    for rec in released["artefacts"].values():
        assert sha(out / rec["file"]) == rec["sha256"]


# --- 3. rollback: verify every object, then write ---------------------------------------------------


def test_rollback_from_a_corrupt_cache_and_a_corrupt_remote_changes_nothing(two_releases: Project) -> None:
    """v1.0.0's model object corrupt in the cache and in the remote: exit 4, one line, every
    workspace file byte-identical, and no object in the cache that does not hash to its name
    (the corrupt local one is gone; the remote's is hashed before it lands, and refused)."""
    p = two_releases
    oid = locked(p, "model@v1.0.0", MODEL)
    cache = p.root / ".dvc" / "cache"
    for path in (obj(cache, oid), obj(store(p), oid)):
        overwrite(path, path.read_bytes()[:-7] + b"corrupt")
    before, status = tree(p.root), p.git("status", "--porcelain").stdout

    refused = p.shelf("rollback", "v1.0.0", check=False)
    assert tree(p.root) == before and p.git("status", "--porcelain").stdout == status
    line = one_line(refused, 4)
    assert MODEL in line and "no file was changed" in line, line
    assert bad_objects(cache) == [] and not obj(cache, oid).exists()
    assert json.loads(p.dvc("status", "--json").stdout or "{}") == {}


def test_rollback_from_a_corrupt_cache_object_with_a_good_remote_repairs_the_cache(two_releases: Project) -> None:
    """v1.0.0's model and ONNX objects corrupt in the cache only: the rollback removes them,
    fetches good ones from the remote, and completes; the cache holds good bytes."""
    p = two_releases
    cache = p.root / ".dvc" / "cache"
    released = card_at(p, "model@v1.0.0")
    corrupted = [obj(cache, locked(p, "model@v1.0.0", MODEL)), obj(cache, onnx_md5(p, "model@v1.0.0"))]
    for path in corrupted:
        overwrite(path, b"not the model")
    done = p.shelf("rollback", "v1.0.0")
    assert "workspace at v1.0.0" in done.stdout and "from the remote" in done.stdout
    assert bad_objects(cache) == [] and all(path.is_file() for path in corrupted)
    for rec in released["artefacts"].values():
        assert sha(p.root / "models" / rec["file"]) == rec["sha256"]
    assert json.loads((p.root / CARD).read_text()) == released
    assert json.loads(p.dvc("status", "--json").stdout or "{}") == {}


def test_a_rollback_after_a_dvc_killed_mid_write_completes(two_releases: Project) -> None:
    """A DVC killed while rewriting its .dvc/tmp/rwlock leaves it empty, and every DVC command
    then fails: the rollback (whose own DVC steps can be killed there) repairs it and completes."""
    p = two_releases
    rwlock = p.root / ".dvc" / "tmp" / "rwlock"
    rwlock.parent.mkdir(parents=True, exist_ok=True)
    rwlock.write_text("")
    done = p.shelf("rollback", "v1.0.0")
    assert "workspace at v1.0.0" in done.stdout
    assert json.loads(p.dvc("status", "--json").stdout or "{}") == {}


def test_a_rollback_killed_at_any_moment_is_finished_by_one_rerun(two_releases: Project) -> None:
    """SIGKILL `shelf rollback` (its whole process group) at delays spread over one
    uninterrupted run's duration; after each kill one rerun of the same command, without
    --force, completes: `dvc status` is clean and the model matches the card at the tag.
    Each completed rollback is committed and the next one goes the other way (v1.0.0 ⇄ v1.1.0)."""
    p = two_releases
    cards = {v: card_at(p, f"model@v{v}") for v in ("1.0.0", "1.1.0")}

    took: list[float] = []   # every uninterrupted run's duration: the fastest spreads the kill points

    def rollback(version: str) -> None:
        started = time.monotonic()
        done = p.shelf("rollback", f"v{version}")
        took.append(time.monotonic() - started)
        assert f"workspace at v{version}" in done.stdout, done
        assert json.loads(p.dvc("status", "--json").stdout or "{}") == {}
        for rec in cards[version]["artefacts"].values():
            assert sha(p.root / "models" / rec["file"]) == rec["sha256"]
        assert json.loads((p.root / CARD).read_text()) == cards[version]
        p.git("commit", "-qam", f"roll back to v{version}")

    rollback("1.0.0")
    rollback("1.1.0")
    journal = p.root / ".dvc" / "tmp" / "modelshelf" / "rollback.json"

    def entry() -> dict[str, Any]:
        try:
            return json.loads(journal.read_text())
        except (OSError, ValueError):
            return {}

    outcomes = []
    version = "1.0.0"
    # The first kill lands inside the write phase (once the journal says so); the others at
    # delays spread over the fastest uninterrupted run.
    for fraction in (None, 0.3, 0.45, 0.55, 0.65, 0.75, 0.85, 0.95):
        proc = subprocess.Popen([str(BIN / "shelf"), "rollback", f"v{version}"], cwd=p.root,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
        if fraction is None:
            deadline = time.monotonic() + 60
            while proc.poll() is None and time.monotonic() < deadline:
                if entry().get("state") == "writing" and entry().get("tag") == f"model@v{version}":
                    break
                time.sleep(0.002)  # the poll interval of a bounded wait
            delay = "the write phase"
        else:
            delay = f"{min(took) * fraction:.2f}s"
            try:
                proc.wait(timeout=min(took) * fraction)
            except subprocess.TimeoutExpired:
                pass
        if proc.poll() is not None:
            outcomes.append(f"finished ({proc.returncode}) {proc.stderr.read().decode()[:300] if proc.stderr else ''}")
        else:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            found = entry()
            state = f"{found.get('state')} for {found.get('tag')}" if found else "none"
            changed = len(p.git("status", "--porcelain", "--untracked-files=no").stdout.splitlines())
            outcomes.append(f"killed at {delay} (journal {state}, {changed} files changed)")
        rollback(version)
        version = "1.0.0" if version == "1.1.0" else "1.1.0"
    assert outcomes[0].startswith("killed at the write phase (journal writing"), outcomes
    assert any(o.startswith("killed") for o in outcomes), outcomes
    assert all(o.startswith(("finished (0)", "killed")) for o in outcomes), outcomes
    print(f"uninterrupted rollbacks: {', '.join(f'{t:.2f}' for t in took)} s;", "; ".join(outcomes))
