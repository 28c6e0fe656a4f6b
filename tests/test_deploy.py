"""The container recipe and the Kubernetes manifests (deploy/): linted and validated offline
against the Kubernetes schemas, consistent with what ``shelf serve`` takes and answers, and the
replicas' registry sync run for real against a git remote."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import Project, run
from modelshelf.cli import build_parser
from modelshelf.serve.app import ALLOW

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
K8S = DEPLOY / "kubernetes"
BIN = Path(sys.executable).parent
MANIFESTS = sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")


def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d]


def _deployment() -> dict[str, Any]:
    (doc,) = _docs(K8S / "deployment.yaml")
    return doc


def _container(name: str) -> dict[str, Any]:
    pod = _deployment()["spec"]["template"]["spec"]
    return next(c for c in pod["initContainers"] + pod["containers"] if c["name"] == name)


def test_the_dockerfile_passes_hadolint() -> None:
    done = subprocess.run([str(BIN / "hadolint"), "--failure-threshold", "info", str(DEPLOY / "Dockerfile")],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_registry_sync_script_passes_shellcheck() -> None:
    done = subprocess.run([str(BIN / "shellcheck"), "--severity", "style", str(DEPLOY / "registry-sync.sh")],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_manifests_validate_against_the_kubernetes_schemas() -> None:
    done = subprocess.run([str(BIN / "kubernetes-validate"), "--strict", "--no-warn", *map(str, MANIFESTS)],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    kinds = {d["kind"] for p in MANIFESTS for d in _docs(p)}
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget", "ConfigMap", "Secret"} <= kinds
    listed = set(_docs(K8S / "kustomization.yaml")[0]["resources"])
    assert listed == {p.name for p in MANIFESTS} - {"secrets.example.yaml"}  # real Secrets come out of band


def test_the_image_installs_from_the_lock_file_and_copies_what_exists() -> None:
    text = (DEPLOY / "Dockerfile").read_text(encoding="utf-8")
    assert re.search(r"pip install .*-c requirements\.lock", text)
    allowed = [line[1:].rstrip("/") for line in (REPO / ".dockerignore").read_text(encoding="utf-8").splitlines()
               if line.startswith("!")]
    for line in text.splitlines():
        if line.startswith("COPY "):
            for src in line.split()[1:-1]:
                assert (REPO / src).exists(), f"COPY {src}: not in the repository"
                assert src.rstrip("/") in allowed, f"COPY {src}: excluded by .dockerignore"


def test_every_replica_serves_prod_with_the_flags_shelf_serve_takes() -> None:
    dockerfile = (DEPLOY / "Dockerfile").read_text(encoding="utf-8")
    cmd = json.loads(re.search(r"^CMD (\[.*\])$", dockerfile, re.M).group(1))  # type: ignore[union-attr]
    serve = _container("serve")
    for args in (cmd, serve["args"]):
        ns = build_parser().parse_args(args)
        assert (ns.command, ns.model, ns.host, ns.port) == ("serve", "prod", "0.0.0.0", 8080), args
    ns = build_parser().parse_args(serve["args"])
    assert ns.poll > 0  # follows the stage as the sync moves its tags
    tokens = {e["name"]: e["valueFrom"]["secretKeyRef"]["name"] for e in serve["env"] if "valueFrom" in e}
    assert tokens == {ns.admin_token_env: "modelshelf-admin"}
    assert {"secretRef": {"name": "modelshelf-dvc-remote"}} in serve["envFrom"]


def test_the_probes_ask_what_the_server_answers() -> None:
    serve = _container("serve")
    port = serve["ports"][0]
    assert (port["name"], port["containerPort"]) == ("http", 8080)
    assert serve["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert serve["livenessProbe"]["httpGet"]["path"] == "/health"
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        get = serve[probe]["httpGet"]
        assert get["port"] == "http" and b"GET" in ALLOW[get["path"]], probe
    pod = _deployment()["spec"]["template"]["spec"]
    # The server drains for 5 s after SIGTERM; the pod must be given that and the preStop pause.
    assert pod["terminationGracePeriodSeconds"] > 5 + serve["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    for c in pod["initContainers"] + pod["containers"]:
        assert c["securityContext"]["readOnlyRootFilesystem"] is True, c["name"]
        assert {m["mountPath"] for m in c["volumeMounts"]} == {"/srv/project", "/home/modelshelf", "/tmp"}


def _sync(mode: str, origin: Path, replica: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MODELSHELF_REPO": str(origin), "MODELSHELF_DIR": str(replica)}
    return subprocess.run(["sh", str(DEPLOY / "registry-sync.sh"), mode], env=env, capture_output=True,
                          text=True, check=False, timeout=120)


def _stages(replica: Path) -> dict[str, Any]:
    out = run(["shelf", "versions", "--json"], replica).stdout
    return json.loads(out)  # type: ignore[no-any-return]


@pytest.mark.slow
def test_a_replica_follows_the_stages_pushed_to_the_remote(released: Project, tmp_path: Path) -> None:
    """The init container's clone and the sidecar's fetch, for real: a promotion, a deprecation
    and a deleted tag pushed to the origin reach the replica, which fetches and verifies prod."""
    origin = Path(released.git("remote", "get-url", "origin").stdout.strip())
    released.shelf("promote", "v1.0.0", "--to", "prod", "--push")
    replica = tmp_path / "replica"
    done = _sync("clone", origin, replica)
    assert done.returncode == 0, done.stderr
    assert _stages(replica)["stages"] == {"prod": "v1.0.0"}
    got = run(["shelf", "get", "prod", "-o", str(tmp_path / "got")], replica)
    assert "v1.0.0" in got.stdout + got.stderr
    assert (tmp_path / "got" / "card.json").is_file()

    released.git("tag", "stray")
    released.git("push", "-q", "origin", "stray")
    assert _sync("once", origin, replica).returncode == 0
    assert "stray" in run(["git", "tag"], replica).stdout.split()
    released.git("push", "-q", "origin", ":refs/tags/stray")
    released.shelf("deprecate", "v1.0.0", "--push")
    done = _sync("once", origin, replica)
    assert done.returncode == 0, done.stderr
    assert "stray" not in run(["git", "tag"], replica).stdout.split()
    after = _stages(replica)
    assert after["versions"][0]["deprecated"] is True and after["stages"] == {}


def test_the_sync_script_refuses_an_unknown_mode(tmp_path: Path) -> None:
    done = _sync("sideways", tmp_path / "origin", tmp_path / "replica")
    assert done.returncode == 2 and done.stderr.startswith("usage: registry-sync ")
