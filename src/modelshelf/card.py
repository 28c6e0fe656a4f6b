"""The metadata card: what a model is, how it was made, and the hashes that prove it."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from modelshelf.errors import IntegrityError

if TYPE_CHECKING:
    from pathlib import Path

SCHEMA_VERSION = 1
CARD_FILE = "card.json"
MODEL_FILE = "model.joblib"
DEPENDENCIES = ("scikit-learn", "joblib", "numpy", "scipy", "pandas")
REQUIRED = ("schema_version", "name", "version", "trained_at", "dataset", "algorithm",
            "hyperparams", "metrics", "gate", "dependencies", "input_schema", "artefacts", "git")


def dependency_versions() -> dict[str, str]:
    """Python and the versions of the libraries a pickled model depends on."""
    import platform
    from importlib import metadata  # not at module level: the server's start-up reads cards

    out = {"python": platform.python_version()}
    for dist in DEPENDENCIES:
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out


# What the ``environment`` section records of the ONNX toolchain, besides every distribution.
ONNX_TOOLS = ("onnxruntime", "skl2onnx", "onnx")


def normalise_name(name: str) -> str:
    """A distribution name as PEP 503 normalises it (``Scikit_Learn`` -> ``scikit-learn``)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def environment(onnx_opsets: Mapping[str, int] | None = None) -> dict[str, Any]:
    """The full environment a model is serialised in: Python, the platform, every installed
    distribution (normalised name -> version, sorted) and the ONNX toolchain.

    Distributions installed from a directory, a VCS or an archive rather than an index (PEP 610's
    ``direct_url.json``) are listed under ``direct`` with their kind (``editable``, ``directory``,
    ``vcs``, ``archive``); remote URLs are kept, local paths are not (they name someone's disk).

    Args:
        onnx_opsets: the exported ONNX copy's opset per domain (see :func:`onnx_opsets`), if known.

    Returns:
        A JSON-safe mapping for the card's ``environment`` section.
    """
    import platform
    import sys
    from importlib import metadata  # not at module level: the server's start-up reads cards

    dists: dict[str, str] = {}
    direct: dict[str, dict[str, str]] = {}
    for dist in metadata.distributions():
        # The header lines only: email-parsing every METADATA file costs ~8x more (0.08 s here).
        name, version = _name_version(dist.read_text("METADATA") or dist.read_text("PKG-INFO") or "")
        if not name or not version:
            continue
        key = normalise_name(name)
        dists.setdefault(key, version)  # the first on sys.path is the one Python imports
        if key not in direct and (how := _direct_url(dist.read_text("direct_url.json"))) is not None:
            direct[key] = how  # any copy of a name installed from outside an index taints it
    return {
        "python": {"version": platform.python_version(), "implementation": platform.python_implementation(),
                   "cache_tag": sys.implementation.cache_tag or ""},
        "platform": {"system": platform.system(), "machine": platform.machine(), "platform": platform.platform()},
        "onnx": {**{tool: dists.get(tool) for tool in ONNX_TOOLS}, "opsets": dict(sorted((onnx_opsets or {}).items()))},
        "distributions": dict(sorted(dists.items())),
        "direct": dict(sorted(direct.items())),
    }


def _name_version(text: str) -> tuple[str | None, str | None]:
    name = version = None
    for line in text.splitlines():
        if not line.strip():
            break  # the end of the headers
        if line.startswith("Name:"):
            name = line[5:].strip()
        elif line.startswith("Version:"):
            version = line[8:].strip()
        if name and version:
            break
    return name, version


def _direct_url(raw: str | None) -> dict[str, str] | None:
    """PEP 610's record of a distribution not installed from an index: its kind, and its URL when remote."""
    if raw is None:
        return None
    try:
        info = json.loads(raw)
    except ValueError:
        return {"kind": "unknown"}
    if not isinstance(info, dict):
        return {"kind": "unknown"}
    url = str(info.get("url", ""))
    out: dict[str, str] = {}
    if isinstance(info.get("dir_info"), dict):
        out["kind"] = "editable" if info["dir_info"].get("editable") else "directory"
    elif isinstance(info.get("vcs_info"), dict):
        vcs = info["vcs_info"]
        out |= {"kind": "vcs", "vcs": str(vcs.get("vcs", "")), "commit": str(vcs.get("commit_id", ""))}
    elif isinstance(info.get("archive_info"), dict):
        out["kind"] = "archive"
        hashes = info["archive_info"].get("hashes")
        if isinstance(hashes, dict) and isinstance(hashes.get("sha256"), str):
            out["sha256"] = hashes["sha256"]
    else:
        out["kind"] = "unknown"
    if url and not url.startswith("file:"):
        out["url"] = url
    return out


def onnx_opsets(data: bytes) -> dict[str, int]:
    """The opset per domain (``ai.onnx``, ``ai.onnx.ml``, ...) an ONNX model imports."""
    import onnx  # heavy, and only needed where an ONNX copy is at hand

    model = onnx.load_from_string(data)
    return dict(sorted((o.domain or "ai.onnx", int(o.version)) for o in model.opset_import))


def utc_now() -> str:
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def build_card(*, name: str, version: str, bump: str, trained_at: str, dataset: Mapping[str, Any], algorithm: str,
               pipeline: list[str], hyperparams: Mapping[str, Any], metrics: Mapping[str, Any],
               gate: Mapping[str, Any], input_schema: Mapping[str, Any],
               artefacts: Mapping[str, Any], git: Mapping[str, Any],
               onnx: Mapping[str, Any] | None = None,
               profile: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Assemble a card; every field is JSON-safe.

    The ``environment`` section records every installed distribution (see :func:`environment`);
    the opsets of the ONNX copy come from ``onnx["opsets"]`` when the caller records them there.
    """
    onnx = dict(onnx or {"produced": False, "reason": "not attempted"})
    opsets = onnx.get("opsets")
    return {
        "schema_version": SCHEMA_VERSION,
        "name": name,
        "version": version,
        "version_bump": bump,
        "trained_at": trained_at,
        "serialised_at": utc_now(),
        "dataset": dict(dataset),
        "algorithm": algorithm,
        "pipeline": list(pipeline),
        "hyperparams": dict(hyperparams),
        "metrics": dict(metrics),
        "gate": dict(gate),
        "dependencies": dependency_versions(),
        "environment": environment(opsets if isinstance(opsets, Mapping) else None),
        "input_schema": dict(input_schema),
        "artefacts": dict(artefacts),
        "onnx": onnx,
        "profile": dict(profile or {}),
        "git": dict(git),
    }


def parse_card(raw: bytes | str, where: str) -> dict[str, Any]:
    """Parse and check a card's JSON; IntegrityError names what is wrong."""
    try:
        card = json.loads(raw)
    except ValueError:
        raise IntegrityError(where, "the card is not valid JSON",
                             "restore it with `git checkout` or rerun `dvc repro`") from None
    if not isinstance(card, dict):
        raise IntegrityError(where, "the card is not a JSON object", "restore it with `git checkout`")
    missing = [k for k in REQUIRED if k not in card]
    if missing:
        raise IntegrityError(where, f"the card lacks '{missing[0]}'",
                             "rerun `dvc repro` to rebuild it")
    if card["schema_version"] != SCHEMA_VERSION:
        raise IntegrityError(where, f"card schema_version {card['schema_version']} is not supported",
                             f"upgrade modelshelf (this one reads version {SCHEMA_VERSION})")
    model = card["artefacts"].get("model") if isinstance(card["artefacts"], dict) else None
    if not isinstance(model, dict) or not {"file", "sha256"} <= set(model):
        raise IntegrityError(where, "the card records no model artefact hash",
                             "rerun `dvc repro` to rebuild it")
    return card


def read_card(path: str | Path) -> dict[str, Any]:
    """Read ``card.json`` (or the card in directory ``path``)."""
    from pathlib import Path  # not at the top: see artefacts.py

    path = Path(path)
    if path.is_dir():
        path = path / CARD_FILE
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise IntegrityError(str(path), "no model card here",
                             "run `dvc repro` (or `git checkout` a release) first") from None
    return parse_card(raw, str(path))


def schema_changed(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> bool:
    """True when the input contract differs: feature names and kinds, the task or the classes.

    A new category value is not a change: unseen categories are accepted and ignored.
    """
    if old is None:
        return False

    def contract(schema: Mapping[str, Any]) -> Any:
        feats = [(f.get("name"), f.get("kind")) for f in schema.get("features", [])]
        return feats, schema.get("task"), tuple(schema.get("classes") or ())

    return contract(old) != contract(new)


def diff_cards(old: dict[str, Any], new: dict[str, Any]) -> dict[str, dict[str, tuple[Any, Any]]]:
    """Changed metrics, hyperparameters and card facts between two cards."""
    def changed(x: dict[str, Any], y: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
        return {k: (x.get(k), y.get(k)) for k in sorted(set(x) | set(y)) if x.get(k) != y.get(k)}

    def facts(c: dict[str, Any]) -> dict[str, Any]:
        return {"algorithm": c.get("algorithm"), "dataset.sha256": c.get("dataset", {}).get("sha256"),
                "dataset.rows": c.get("dataset", {}).get("rows"),
                "model.sha256": c.get("artefacts", {}).get("model", {}).get("sha256"),
                "model.bytes": c.get("artefacts", {}).get("model", {}).get("bytes"),
                "features": len(c.get("input_schema", {}).get("features", [])),
                "scikit-learn": c.get("dependencies", {}).get("scikit-learn")}

    return {"metrics": changed(old.get("metrics", {}), new.get("metrics", {})),
            "hyperparams": changed(old.get("hyperparams", {}), new.get("hyperparams", {})),
            "card": changed(facts(old), facts(new))}


def feature_changes(old: dict[str, Any], new: dict[str, Any]) -> dict[str, list[str]]:
    """The input features ``new`` has and ``old`` lacks (``added``) and the reverse (``dropped``),
    each in its card's order."""
    def names(c: dict[str, Any]) -> list[str]:
        return [str(f.get("name")) for f in c.get("input_schema", {}).get("features", [])]

    a, b = names(old), names(new)
    return {"added": [n for n in b if n not in a], "dropped": [n for n in a if n not in b]}


def is_number(value: Any) -> bool:
    """A real number (an int or a finite-or-not float), not a bool."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def numeric_changes(diff: dict[str, dict[str, tuple[Any, Any]]]) -> dict[str, dict[str, dict[str, float | None]]]:
    """For each pair of numbers in a :func:`diff_cards` result, the signed ``change`` (new - old)
    and the ``relative`` change (the change over ``|old|``; None when old is zero)."""
    out: dict[str, dict[str, dict[str, float | None]]] = {}
    for section, rows in diff.items():
        out[section] = {key: {"change": y - x, "relative": (y - x) / abs(x) if x else None}
                        for key, (x, y) in rows.items() if is_number(x) and is_number(y)}
    return out
