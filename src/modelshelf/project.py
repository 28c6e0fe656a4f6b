"""The project on disk: ``dvc.yaml`` (its artefacts and stage commands) and scaffolding."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

from modelshelf.errors import ConfigError, GitError

DVC_YAML = "dvc.yaml"
TEMPLATE_FILES = ("dvc.yaml", "params.yaml")
GITIGNORE_LINES = ("/build/", "/.venv/", "__pycache__/")
_VAR = re.compile(r"\$\{\s*([\w.]+)\s*\}")


def find_root(start: str | Path = ".") -> Path:
    """The nearest directory at or above ``start`` that holds ``dvc.yaml``."""
    here = Path(start).resolve()
    for cand in (here, *here.parents):
        if (cand / DVC_YAML).is_file():
            return cand
    raise ConfigError(str(here), "no dvc.yaml here or above", "run `shelf init` or cd into the project")


def read_dvc_yaml(root: Path) -> Mapping[str, Any]:
    import yaml

    path = root / DVC_YAML
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise ConfigError(str(path), "file not found", "run `shelf init`") from None
    except yaml.YAMLError:
        raise ConfigError(str(path), "not valid YAML", "fix its syntax") from None
    if not isinstance(data, Mapping):
        raise ConfigError(str(path), "expected a mapping at the top", "see `shelf init`'s dvc.yaml")
    return data


def model_artifact(root: Path, model_path: str | None = None) -> tuple[str, str]:
    """``(name, path)`` of the ``type: model`` artefact in dvc.yaml (matching ``model_path``)."""
    arts = read_dvc_yaml(root).get("artifacts") or {}
    models = [(str(n), str(a.get("path"))) for n, a in arts.items()
              if isinstance(a, Mapping) and a.get("type") == "model"]
    if model_path is not None:
        want = Path(model_path).as_posix()
        models = [m for m in models if Path(m[1]).as_posix() == want]
    if len(models) != 1:
        what = f" with path {model_path}" if model_path else ""
        found = "none" if not models else "several"
        raise ConfigError(f"{root / DVC_YAML}: artifacts", f"{found} of type model{what}",
                          "declare exactly one: artifacts: {model: {path: models/model.joblib, type: model}}")
    return models[0]


def _variables(root: Path, dvc: Mapping[str, Any]) -> dict[str, Any]:
    import yaml

    scope: dict[str, Any] = {}
    params = root / "params.yaml"
    if params.is_file():
        scope.update(yaml.safe_load(params.read_text(encoding="utf-8")) or {})
    for entry in dvc.get("vars") or []:
        if isinstance(entry, Mapping):
            scope.update(entry)
    return scope


def _lookup(scope: Mapping[str, Any], dotted: str) -> Any:
    value: Any = scope
    for part in dotted.split("."):
        if not isinstance(value, Mapping) or part not in value:
            raise KeyError(dotted)
        value = value[part]
    return value


def stage_options(root: Path, stage: str) -> dict[str, str]:
    """The ``--option value`` pairs of ``stage``'s command in dvc.yaml, variables resolved."""
    dvc = read_dvc_yaml(root)
    spec = (dvc.get("stages") or {}).get(stage)
    if not isinstance(spec, Mapping) or "cmd" not in spec:
        raise ConfigError(f"{root / DVC_YAML}: stages.{stage}", "stage not found",
                          f"add a '{stage}' stage or pass the paths as options")
    scope = _variables(root, dvc)
    try:
        cmd = _VAR.sub(lambda m: str(_lookup(scope, m.group(1))), str(spec["cmd"]))
    except KeyError as exc:
        raise ConfigError(f"{root / DVC_YAML}: stages.{stage}.cmd", f"unknown variable ${{{exc.args[0]}}}",
                          "define it under vars:") from None
    words = shlex.split(cmd)
    return {w[2:]: words[i + 1] for i, w in enumerate(words[:-1])
            if w.startswith("--") and not words[i + 1].startswith("--")}


def init(path: str | Path, *, force: bool = False) -> list[Path]:
    """Scaffold the reference workflow in ``path``: git, DVC, dvc.yaml, params.yaml.

    Existing files are kept unless ``force``.  Returns the files written.
    """
    root = Path(path).resolve()
    root.mkdir(parents=True, exist_ok=True)
    if not (root / ".git").exists():
        _run(["git", "init", "-q", "-b", "main"], root)
    if not (root / ".dvc").is_dir():
        dvc = [sys.executable, "-m", "dvc"]
        _run([*dvc, "init", "-q"], root)
        _run([*dvc, "config", "core.analytics", "false"], root)
    written = []
    templates = resources.files("modelshelf") / "templates"
    for name in TEMPLATE_FILES:
        target = root / name
        if force or not target.exists():
            target.write_text(templates.joinpath(name + ".template").read_text(encoding="utf-8"), encoding="utf-8")
            written.append(target)
    keep = root / "data" / "raw" / ".gitkeep"
    if not keep.exists():
        keep.parent.mkdir(parents=True, exist_ok=True)
        keep.touch()
        written.append(keep)
    ignore = root / ".gitignore"
    lines = ignore.read_text(encoding="utf-8").splitlines() if ignore.exists() else []
    missing = [line for line in GITIGNORE_LINES if line not in lines]
    if missing:
        ignore.write_text("\n".join([*lines, *missing]) + "\n", encoding="utf-8")
        written.append(ignore)
    return written


def _run(cmd: list[str], cwd: Path) -> None:
    try:
        proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False)
    except FileNotFoundError:
        raise GitError(cmd[0], "command not found", f"install {cmd[0]}") from None
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines()
        raise GitError(" ".join(cmd[:2]), lines[-1] if lines else "failed", "check the directory")
