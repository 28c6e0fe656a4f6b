"""End to end against a real S3-compatible server: SeaweedFS (``weed mini``) on loopback.

release --push → objects in the bucket; a second release; with the local DVC cache gone,
rollback and get fetch from S3 and verify sha256 against the release's card; with the
endpoint unreachable, release fails with exit code 8 and leaves no tag.  No mocks.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

import seaweed
from conftest import Project, run

pytestmark = pytest.mark.slow

BUCKET = "modelshelf"
REGION = "us-east-1"
KEY_ID, SECRET = "modelshelf-test", "modelshelf-test-secret"  # any values: the server runs without IAM


@pytest.fixture(scope="session")
def seaweed_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[seaweed.SeaweedServer]:
    """One SeaweedFS per session (so per xdist worker), stopped in the finaliser."""
    server = seaweed.start(tmp_path_factory.mktemp("seaweed"), BUCKET)
    print(f"seaweedfs: S3 {server.endpoint} ready in {server.started_in:.2f} s "
          f"(attempt {server.attempts}, ports {server.ports})")
    try:
        yield server
    finally:
        server.stop()


@dataclass(frozen=True)
class S3Remote:
    server: seaweed.SeaweedServer
    prefix: str     # unique per test: tests never see each other's objects

    @property
    def url(self) -> str:
        return f"s3://{self.server.bucket}/{self.prefix}/store"

    @property
    def endpoint(self) -> str:
        return self.server.endpoint

    def client(self) -> Any:
        import botocore.session
        from botocore.config import Config

        return botocore.session.get_session().create_client(
            "s3", endpoint_url=self.endpoint, region_name=REGION, aws_access_key_id=KEY_ID,
            aws_secret_access_key=SECRET,
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 2},
                          connect_timeout=5, read_timeout=10))

    def keys(self) -> set[str]:
        """Every object key under this test's prefix."""
        pages = self.client().get_paginator("list_objects_v2").paginate(
            Bucket=self.server.bucket, Prefix=f"{self.prefix}/")
        return {obj["Key"] for page in pages for obj in page.get("Contents", [])}

    def object_key(self, md5: str) -> str:
        return f"{self.prefix}/store/files/md5/{md5[:2]}/{md5[2:]}"


@pytest.fixture
def s3_remote(seaweed_server: seaweed.SeaweedServer, monkeypatch: pytest.MonkeyPatch,
              request: pytest.FixtureRequest) -> S3Remote:
    """Credentials and region for boto in the environment, no metadata lookups, no proxy for loopback."""
    assert seaweed_server.running(), f"seaweedfs died; log:\n{seaweed_server.log()}"
    for key in list(os.environ):
        if key.startswith("AWS_"):
            monkeypatch.delenv(key)
    home = Path(os.environ["HOME"])
    for key, value in {
        "AWS_ACCESS_KEY_ID": KEY_ID,
        "AWS_SECRET_ACCESS_KEY": SECRET,
        "AWS_DEFAULT_REGION": REGION,
        "AWS_REGION": REGION,
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_CONFIG_FILE": str(home / ".aws-config-none"),
        "AWS_SHARED_CREDENTIALS_FILE": str(home / ".aws-credentials-none"),
    }.items():
        monkeypatch.setenv(key, value)
    for key in ("NO_PROXY", "no_proxy"):
        monkeypatch.setenv(key, ",".join(filter(None, [os.environ.get(key), "127.0.0.1", "localhost"])))
    request.node.user_properties.append(("seaweed_start_s", round(seaweed_server.started_in, 3)))
    name = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:40]
    return S3Remote(seaweed_server, f"{name}-{uuid.uuid4().hex[:8]}")


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def card_at(p: Project, version: str) -> dict[str, Any]:
    return json.loads(p.git("show", f"model@v{version}:models/card.json").stdout)


def model_md5(p: Project) -> str:
    """The md5 dvc.lock records for the model (the object's key in the remote)."""
    lock = yaml.safe_load((p.root / "dvc.lock").read_text())
    return next(out["md5"] for stage in lock["stages"].values() for out in stage.get("outs", [])
                if out["path"] == "models/model.joblib")


def release_tags(p: Project) -> set[str]:
    return set(p.git("tag", "-l", "model@v*").stdout.split())


def origin_tags(p: Project) -> set[str]:
    return {line.split("refs/tags/")[1] for line in p.git("ls-remote", "--tags", "origin").stdout.splitlines()
            if "refs/tags/model@v" in line and not line.endswith("^{}")}


@contextmanager
def no_local_cache(p: Project, aside: Path) -> Iterator[Callable[[], None]]:
    """No ``.dvc/cache`` inside the block (moved to ``aside``, put back after).

    Yields ``clear()``, which removes whatever DVC cached meanwhile.  Putting the original
    back spares the later ``dvc repro`` from re-running stages whose outputs it cannot find.
    """
    cache = p.root / ".dvc" / "cache"

    def clear() -> None:
        shutil.rmtree(cache, ignore_errors=True)
        assert not cache.exists()

    cache.rename(aside)
    try:
        yield clear
    finally:
        clear()
        aside.rename(cache)


def use_s3(p: Project, s3: S3Remote) -> None:
    """A bare git remote ``origin`` (as conftest.add_remotes) and the S3 remote as DVC default."""
    origin = p.root.parent / f"{p.root.name}-origin.git"
    run(["git", "init", "-q", "--bare", str(origin)], p.root.parent)
    p.git("remote", "add", "origin", str(origin))
    p.dvc("remote", "add", "-d", "s3", s3.url)
    p.dvc("remote", "modify", "s3", "endpointurl", s3.endpoint)
    p.commit("S3 remote")
    p.git("push", "-q", "origin", "main")


def test_release_rollback_and_get_through_s3(built: Project, s3_remote: S3Remote, tmp_path: Path) -> None:
    p, s3 = built, s3_remote
    use_s3(p, s3)
    assert s3.keys() == set()

    # v1.0.0: pushed to S3, proven there, tag pushed to origin.
    out = p.shelf("release", "--push").stdout
    assert "released model@v1.0.0" in out and "tag pushed" in out, out
    v1_md5 = model_md5(p)
    keys = s3.keys()
    assert s3.object_key(v1_md5) in keys, sorted(keys)
    head = s3.client().head_object(Bucket=BUCKET, Key=s3.object_key(v1_md5))
    assert head["ContentLength"] == (p.root / "models/model.joblib").stat().st_size
    assert origin_tags(p) == {"model@v1.0.0"}

    # v1.1.0 after a parameter change.
    p.set_params(train={"hyperparams": {"n_estimators": 60}}, gate={"tolerance": 0.05})
    assert "Running stage 'train'" in p.dvc("repro").stdout
    p.commit("fewer trees")
    out = p.shelf("release", "--push").stdout
    assert "released model@v1.1.0" in out and "tag pushed" in out, out
    v11_md5 = model_md5(p)
    assert v11_md5 != v1_md5
    assert {s3.object_key(v1_md5), s3.object_key(v11_md5)} <= s3.keys()
    assert origin_tags(p) == {"model@v1.0.0", "model@v1.1.0"}

    # No local cache: rollback and get must fetch the bytes from S3 and verify them.
    v1_card = card_at(p, "1.0.0")
    v11_card = card_at(p, "1.1.0")
    assert v1_card["artefacts"]["model"]["sha256"] != v11_card["artefacts"]["model"]["sha256"]
    dest = tmp_path / "fetched"
    with no_local_cache(p, tmp_path / "cache-aside") as clear_cache:
        out = p.shelf("rollback", "v1.0.0").stdout
        assert "workspace at v1.0.0" in out and "from the remote" in out, out
        assert sha(p.root / "models/model.joblib") == v1_card["artefacts"]["model"]["sha256"]
        assert p.json("models/card.json") == v1_card

        clear_cache()
        out = p.shelf("get", "v1.1.0", "-o", str(dest)).stdout
        assert "fetched v1.1.0" in out and "from the remote" in out, out
        assert sha(dest / "model.joblib") == v11_card["artefacts"]["model"]["sha256"]
        assert json.loads((dest / "card.json").read_text()) == v11_card

    # A new candidate while S3 is unreachable: exit 8 (RemoteError), no new tag anywhere.
    p.set_params(train={"hyperparams": {"n_estimators": 70}})
    p.dvc("repro")
    p.commit("70 trees")
    assert p.json("models/card.json")["version"] == "1.2.0"
    with seaweed.closed_port() as closed:
        port = closed.getsockname()[1]
        p.dvc("remote", "modify", "--local", "s3", "endpointurl", f"http://127.0.0.1:{port}")
        assert p.git("status", "--porcelain").stdout == ""   # config.local is not tracked
        failed = p.shelf("release", "--push", check=False)
    assert failed.returncode == 8, failed.stdout + failed.stderr
    assert failed.stderr.startswith("shelf: error: dvc push:"), failed.stderr
    assert "Traceback" not in failed.stderr and len(failed.stderr.strip().splitlines()) == 1
    assert release_tags(p) == {"model@v1.0.0", "model@v1.1.0"}
    assert origin_tags(p) == {"model@v1.0.0", "model@v1.1.0"}

    # Reachable again: the same commit releases, so the failure left nothing half-done.
    p.dvc("remote", "modify", "--local", "--unset", "s3", "endpointurl")
    out = p.shelf("release", "--push").stdout
    assert "released model@v1.2.0" in out, out
    assert s3.object_key(model_md5(p)) in s3.keys()
    assert origin_tags(p) == {"model@v1.0.0", "model@v1.1.0", "model@v1.2.0"}
