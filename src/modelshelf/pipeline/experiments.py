"""DVC experiments (``dvc exp run``, ``--queue``): a failed gate is a result, not a crash.

Under ``dvc exp run`` (DVC sets ``DVC_EXP_NAME`` for every stage it runs) a failed gate is
recorded (``metrics/gate.json``, and the verdict as a metric ``dvc exp show`` lists) and the
stage exits 0, so DVC saves the experiment and its metrics can be compared with the others.
``serialise`` then writes nothing: ``models/`` keeps the model the experiment started from
(its outputs are ``persist: true``), which is not the candidate the gate judged, so neither
``shelf release`` nor a protected stage can ever take it.  Outside an experiment a failed
gate stops ``dvc repro`` as before.

A queued (``--queue``, ``--temp``) experiment runs in a scratch clone that holds only its own
commits: :func:`borrow_refs` fetches the project's branches and tags into it, so that
``gate.baseline`` and the release tags resolve as they do in the project.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

from modelshelf import artefacts
from modelshelf.errors import GitError
from modelshelf.gitrepo import GitRepo

EXPERIMENT_ENV = "DVC_EXP_NAME"
PROJECT_ENV = "DVC_ROOT"   # the project's DVC root, also in a queued (scratch clone) experiment


def current(environ: Mapping[str, str] = os.environ) -> str | None:
    """The name of the DVC experiment being run, or None outside ``dvc exp run``."""
    return environ.get(EXPERIMENT_ENV) or None


def verdict(passed: bool, failed: list[str]) -> dict[str, str]:
    """The verdict as DVC metrics: one column each in ``dvc exp show`` (``gate``, ``failed``)."""
    return {"gate": "passed" if passed else "failed", "failed": ",".join(failed) or "-"}


def write_verdict(path: Path, passed: bool, failed: list[str]) -> None:
    """Write :func:`verdict` to ``path`` atomically."""
    artefacts.write_json(path, verdict(passed, failed))


def gate_failed(gate_report: Path) -> bool:
    """True when ``gate_report`` (metrics/gate.json) records a verdict and it is a failure;
    False when it passed or cannot be read (then the caller's own checks speak)."""
    try:
        report = json.loads(gate_report.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(report, dict) and report.get("passed") is False


def borrow_refs(start: Path, environ: Mapping[str, str] = os.environ) -> bool:
    """In a scratch-clone experiment, fetch the project's branches and tags into the clone
    (its HEAD is detached, so no checked-out branch moves).  True when it fetched.

    Raises:
        GitError: the project's repository cannot be read.
    """
    parent = environ.get(PROJECT_ENV)
    if current(environ) is None or not parent:
        return False
    repo = GitRepo.discover(start)
    top = GitRepo.discover(Path(parent))   # DVC_ROOT may be a subdirectory of the git repository
    if top.root.resolve() == repo.root.resolve():
        return False   # `dvc exp run` in the workspace: the project's own refs are here
    proc = repo.run("fetch", "-q", "--no-write-fetch-head", str(top.root),
                    "+refs/heads/*:refs/heads/*", "+refs/tags/*:refs/tags/*", check=False)
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines()
        raise GitError(f"git fetch {top.root}", lines[-1] if lines else "failed",
                       "the experiment cannot see the project's branches and tags; run it in the workspace "
                       "(`dvc exp run` without --queue/--temp)")
    return True
