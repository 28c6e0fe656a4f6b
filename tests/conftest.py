"""Hermetic fixtures: isolated HOME and git identity, temp projects built through our own API.

Layers: ``isolated`` (autouse) → ``project`` (git + DVC + dvc.yaml + params.yaml, committed)
→ ``built`` (the pipeline has run once and its outputs are committed on main; a private copy
of a tree built once per session) → ``remote_project`` → ``released``.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from modelshelf.sandbox import hermetic_env

BIN = Path(sys.executable).parent


@pytest.fixture(scope="session")
def session_warm_dir() -> Iterator[Path]:
    """This worker's own socket directory for warm stage hosts, stopped at the end of the session.

    Short and under /tmp, since a socket path holds about 100 bytes.
    """
    from modelshelf.pipeline import warm

    d = Path(tempfile.mkdtemp(prefix="shelfs-", dir="/tmp"))
    yield d
    warm.stop(str(d))
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(autouse=True)
def isolated(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch,
             session_warm_dir: Path) -> Path:
    """A private HOME, no system/global git config, a fixed git identity, no analytics,
    and this session's own warm stage hosts."""
    home = tmp_path_factory.mktemp("home")
    env = hermetic_env(home, name="Test")
    env["SHELF_WARM_DIR"] = str(session_warm_dir)
    for key in list(os.environ):
        if key not in env:  # GIT_*/DVC_*
            monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        if os.environ.get(key) != value:
            monkeypatch.setenv(key, value)
    return home


def run(cmd: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a real command; on an unexpected failure show its output."""
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


class Project:
    """A temporary modelshelf project: helpers to edit params and run real git/DVC/shelf."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def run(self, *cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return run(list(cmd), self.root, check=check)

    def git(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.run("git", *args, check=check)

    def dvc(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.run("dvc", *args, check=check)

    def shelf(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.run("shelf", *args, check=check)

    def params(self) -> dict[str, Any]:
        return yaml.safe_load((self.root / "params.yaml").read_text())

    def set_params(self, **sections: dict[str, Any]) -> None:
        """Merge ``section={key: value}`` into params.yaml (a value None deletes the key)."""
        data = self.params()
        for section, values in sections.items():
            target = data.setdefault(section, {})
            for key, value in values.items():
                if value is None:
                    target.pop(key, None)
                else:
                    target[key] = value
        (self.root / "params.yaml").write_text(yaml.safe_dump(data, sort_keys=False))

    def json(self, rel: str) -> Any:
        return json.loads((self.root / rel).read_text())

    def commit(self, message: str) -> str:
        self.git("add", "-A")
        self.git("commit", "-q", "-m", message)
        return self.git("rev-parse", "HEAD").stdout.strip()

    def add_csv(self, name: str, frame: Any) -> str:
        """Write ``data/raw/NAME``, track it with ``dvc add``, point data.source at it."""
        rel = f"data/raw/{name}"
        frame.to_csv(self.root / rel, index=False)
        self.dvc("add", "-q", rel)
        self.set_params(data={"source": rel})
        return rel


@pytest.fixture
def new_project(tmp_path: Path) -> Callable[..., Project]:
    """Factory: ``new_project(name)`` scaffolds through ``modelshelf.project.init``."""
    from modelshelf.project import init

    def make(name: str = "proj") -> Project:
        root = tmp_path / name
        init(root)
        return Project(root)

    return make


@pytest.fixture
def project(new_project: Callable[..., Project]) -> Project:
    """A scaffolded project whose files are committed on main (no outputs yet)."""
    p = new_project()
    p.commit("scaffold")
    return p


def build_built(dest: Path) -> None:
    """What ``built`` holds: ``project`` after one ``dvc repro``, the outputs committed."""
    from modelshelf.project import init

    with environ(isolated_env(dest / "home")):
        init(dest / "proj")
        p = Project(dest / "proj")
        p.commit("scaffold")
        p.dvc("repro")
        p.commit("first model")


@pytest.fixture(scope="session")
def built_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The ``built`` project, made once for the whole session (all xdist workers)."""
    return built_once(shared_dir(tmp_path_factory), "built", build_built) / "proj"


@pytest.fixture
def built(built_template: Path, tmp_path: Path) -> Project:
    """A scaffolded project after one ``dvc repro`` with the outputs committed on main (the
    baseline): a private copy of a tree built once per session (a repro takes ~10 s)."""
    return Project(copy_tree(built_template, tmp_path / "proj"))


def add_remotes(p: Project) -> Project:
    """Give ``p`` a bare git remote ``origin`` and a default local DVC remote ``store``."""
    origin = p.root.parent / f"{p.root.name}-origin.git"
    run(["git", "init", "-q", "--bare", str(origin)], p.root.parent)
    p.git("remote", "add", "origin", str(origin))
    p.dvc("remote", "add", "-d", "store", str(p.root.parent / f"{p.root.name}-dvcstore"))
    p.commit("remotes")
    p.git("push", "-q", "origin", "main")
    return p


@pytest.fixture
def remote_project(built: Project) -> Project:
    """``built`` with a bare git remote ``origin`` and a local DVC remote ``store``; nothing released."""
    return add_remotes(built)


@pytest.fixture
def released(remote_project: Project) -> Project:
    """``remote_project`` after ``shelf release --push``: model@v1.0.0 in git and DVC remotes."""
    remote_project.shelf("release", "--push")
    return remote_project


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return Path(__file__).resolve().parents[1]


def isolated_env(home: Path) -> dict[str, str]:
    """What the ``isolated`` fixture sets, as an explicit environment (for wider scopes)."""
    env = hermetic_env(home, name="Test")
    env.pop("SHELF_ADMIN_TOKEN", None)
    return env


@contextlib.contextmanager
def environ(env: dict[str, str]) -> Iterator[None]:
    """Make ``env`` the process environment for the block (the helpers here inherit it)."""
    with pytest.MonkeyPatch.context() as mp:
        for key in list(os.environ):
            if key not in env:
                mp.delenv(key)
        for key, value in env.items():
            mp.setenv(key, value)
        yield


def shared_dir(factory: pytest.TempPathFactory) -> Path:
    """A directory every xdist worker of this session sees (the workers' common parent)."""
    base = factory.getbasetemp()
    return (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "templates"


def built_once(root: Path, name: str, build: Callable[[Path], None]) -> Path:
    """``root/name`` built by ``build`` exactly once across workers (flock + a done marker)."""
    root.mkdir(parents=True, exist_ok=True)
    dest, done = root / name, root / f"{name}.done"
    with open(root / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, even on failure
        try:
            if not done.exists():
                shutil.rmtree(dest, ignore_errors=True)  # a half-built copy from a failed attempt
                dest.mkdir()
                build(dest)
                done.write_text("ok\n")
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return dest


def copy_tree(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, symlinks=True)
    return dst


def customers(n: int, seed: int, shift: float = 0.0) -> Any:
    """``n`` customers with four numeric features and a region; ``shift`` moves x0's mean.
    The label depends on the features' deviation, not on their means: shifted rows are
    still learnable (drift without a change of concept)."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4))
    x[:, 0] += shift
    region = rng.choice(["north", "south", "east"], size=n)
    score = x[:, 0] - shift + 0.8 * x[:, 1] - 0.5 * x[:, 2] + np.where(region == "east", 0.7, 0.0)
    label = (score + rng.normal(scale=0.15, size=n) > 0).astype(int)
    return pd.DataFrame({"x0": x[:, 0], "x1": x[:, 1], "x2": x[:, 2], "x3": x[:, 3],
                         "region": region, "churn": label})
