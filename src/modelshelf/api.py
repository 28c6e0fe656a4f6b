"""modelshelf's public Python API: everything ``shelf`` does, for scripts and notebooks.

The ``shelf`` command is a thin layer over these functions: it parses arguments, calls one of
them, prints the result and maps :class:`ShelfError` to its exit code.  Nothing here prints.

    from modelshelf import api

    api.release(".", push=True)                 # gate re-judged, bytes proven in the DVC remote, tagged
    api.promote(".", "v1.3.0", "prod", push=True)
    model = api.load("prod")                    # verified against the card at the release's tag
    model.predict(frame)
    for rel in api.versions(".").releases:
        print(rel.version, rel.card["metrics"])
    api.assess(fitted, X_test, y_test).table()  # a notebook's model: the pipeline's metrics and gate
    api.save(fitted, X_test, y_test, "models/notebook")  # gated, then written with its card

Names resolve when first used (PEP 562), so ``import modelshelf.api`` costs nothing and a
command imports only the modules it needs (``shelf serve`` and ``shelf versions`` are timed).
The reference, generated from the docstrings, is docs/api.md.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pathlib too: the serving path, which imports this module, does without it
    from pathlib import Path

    from modelshelf.drift.core import check as drift
    from modelshelf.drift.core import check_log as drift_log
    from modelshelf.errors import (ConfigError, DataError, DriftDetected, GateFailed, GitError, IntegrityError,
                                   ReleaseRefused, RemoteError, SchemaBreak, ShelfError, VersionMismatchError)
    from modelshelf.model import load, locate, verify
    from modelshelf.pipeline.inmemory import assess, save
    from modelshelf.pipeline.stages import evaluate, gate, prepare, serialise, train
    from modelshelf.project import init
    from modelshelf.registry.audit import audit
    from modelshelf.registry.bom import bom
    from modelshelf.registry.core import Registry
    from modelshelf.registry.environment import requirements
    from modelshelf.registry.gc import gc
    from modelshelf.registry.promotion import deprecate, promote, rollback_stage
    from modelshelf.registry.release import release
    from modelshelf.registry.restore import fetch, get, rollback
    from modelshelf.registry.signing import generate_keypair
    from modelshelf.registry.site import build as site
    from modelshelf.report import build as report
    from modelshelf.serve.batch import predict_csv as predict
    from modelshelf.serve.compare import compare as canary_report

# name → "module:attribute", in the order of the reference (docs/api.md), by concern.
_EXPORTS: dict[str, str] = {
    # the project and its pipeline (the stages dvc.yaml runs: files in, files out)
    "init": "modelshelf.project:init",
    "prepare": "modelshelf.pipeline.stages:prepare",
    "train": "modelshelf.pipeline.stages:train",
    "evaluate": "modelshelf.pipeline.stages:evaluate",
    "gate": "modelshelf.pipeline.stages:gate",
    "serialise": "modelshelf.pipeline.stages:serialise",
    "report": "modelshelf.report:build",
    # a model fitted in a script or notebook: the same metrics, gate and card, no dvc repro
    "assess": "modelshelf.pipeline.inmemory:assess",
    "save": "modelshelf.pipeline.inmemory:save",
    # the registry (git tags in GTO's format, bytes in the DVC remote)
    "release": "modelshelf.registry.release:release",
    "promote": "modelshelf.registry.promotion:promote",
    "deprecate": "modelshelf.registry.promotion:deprecate",
    "rollback": "modelshelf.registry.restore:rollback",
    "rollback_stage": "modelshelf.registry.promotion:rollback_stage",
    "get": "modelshelf.registry.restore:get",
    "fetch": "modelshelf.registry.restore:fetch",
    "audit": "modelshelf.registry.audit:audit",
    "gc": "modelshelf.registry.gc:gc",
    "bom": "modelshelf.registry.bom:bom",
    "requirements": "modelshelf.registry.environment:requirements",
    "generate_keypair": "modelshelf.registry.signing:generate_keypair",
    "site": "modelshelf.registry.site:build",
    # models: load and verify (a release, or a directory with its card)
    "load": "modelshelf.model:load",
    "verify": "modelshelf.model:verify",
    "locate": "modelshelf.model:locate",
    "predict": "modelshelf.serve.batch:predict_csv",
    # drift
    "drift": "modelshelf.drift.core:check",
    "drift_log": "modelshelf.drift.core:check_log",
    "canary_report": "modelshelf.serve.compare:compare",
    # the exception tree (one exit code per class)
    **{name: f"modelshelf.errors:{name}" for name in (
        "ShelfError", "ConfigError", "DataError", "GateFailed", "IntegrityError", "VersionMismatchError",
        "GitError", "ReleaseRefused", "RemoteError", "DriftDetected", "SchemaBreak")},
}

__all__ = ["versions", *_EXPORTS]


def versions(start: str | Path = ".") -> Registry:
    """The model's registry as GTO reads it: every release (with its card at the tag), every
    stage event, and which release holds each stage.

    Args:
        start: a directory inside the project.

    Returns:
        The :class:`~modelshelf.registry.core.Registry`: ``releases`` (ascending versions),
        ``assignments``, ``holders``; ``find("prod")`` resolves a version, ``latest`` or a stage.

    Raises:
        GitError: not a git repository, or a clone that lacks the model's tags.
        ConfigError: no dvc.yaml or params.yaml to say which model.
    """
    from modelshelf.registry.core import Workspace, open_registry

    return open_registry(Workspace.open(start))


def __getattr__(name: str) -> Any:
    target = _EXPORTS.get(name)
    if target is None:
        raise AttributeError(f"module 'modelshelf.api' has no attribute {name!r}")
    module, _, attribute = target.partition(":")
    value = getattr(importlib.import_module(module), attribute)
    globals()[name] = value   # resolved once
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
