"""An ML bill of materials per release: a CycloneDX 1.6 JSON document generated from the card
at the release tag's commit (never from the workspace's card).

The document holds the model (``machine-learning-model``, with its model card: approach, task,
dataset, inputs and outputs, metrics, hyperparameters, the gate's verdict), the SHA-256 of every
file the card records (nested ``file`` components, the card itself included), the dataset
(``data``) with its hash, Python and every installed distribution (``library``,
``pkg:pypi/name@version``) from the card's ``environment`` (``dependencies`` for cards made before
it existed, declared ``incomplete``), and the dependency graph.  It is a function of the release:
the timestamp is the tag's date and the serial number is derived from the tag's commit and
version, so the same release gives the same bytes on every run.
"""

from __future__ import annotations

import json
import re
import tempfile
import uuid
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import quote

from modelshelf import __version__, artefacts
from modelshelf.card import DEPENDENCIES, normalise_name, onnx_opsets
from modelshelf.errors import IntegrityError, ShelfError
from modelshelf.registry.core import Release, Workspace, open_registry
from modelshelf.registry.restore import card_bytes, restore_artefact, trusted_card

SPEC_VERSION = "1.6"
# Fixed: serial numbers are uuid5(this, "<name>@v<version>:<commit>"), the same on every run.
SERIAL_NAMESPACE = uuid.UUID("6f1c4a3e-9b0d-5e7a-8c21-4d3b2a1f0e9c")
PROPERTY_PREFIX = "modelshelf"
# The libraries loading and running the model need (the rest of the environment is context).
RUNTIME = (*DEPENDENCIES, "onnxruntime")
NAME = re.compile(r"[A-Za-z0-9]|[A-Za-z0-9][A-Za-z0-9._-]*[A-Za-z0-9]")   # PEP 508
VERSION = re.compile(r"[A-Za-z0-9][A-Za-z0-9.+!_-]{0,99}")   # PEP 440 and legacy versions; no spaces
DAMAGED = "the card at the tag is damaged: rebuild it with `dvc repro` and release the result"


def bom(start: str | Path, spec: str) -> str:
    """The CycloneDX 1.6 JSON document of a release, as text (ASCII, ends with a newline).

    Args:
        start: a path inside the project.
        spec: ``vX.Y.Z``, ``latest`` or a stage name.

    Returns:
        The document; the same bytes for the same release on every run.

    Raises:
        ConfigError: no such version, no release yet, or a stage that holds none.
        ReleaseRefused: the tag's commit has no card (not a modelshelf release).
        IntegrityError: the card at the tag is unreadable, damaged or names another version.
    """
    ws = Workspace.open(start)
    rel = open_registry(ws).find(spec)
    card, raw = trusted_card(ws, rel), card_bytes(ws, rel)
    return render(document(card, rel, card_path=ws.card, card_sha256=artefacts.sha256_bytes(raw),
                           opsets=_released_opsets(ws, rel, card)))


def render(doc: Mapping[str, Any]) -> str:
    """``doc`` as the JSON text ``shelf bom`` writes: indented, ASCII, in the order built."""
    return json.dumps(doc, indent=2, ensure_ascii=True) + "\n"


def document(card: Mapping[str, Any], rel: Release, *, card_path: str, card_sha256: str,
             opsets: Mapping[str, int] | None = None) -> dict[str, Any]:
    """The CycloneDX 1.6 document of release ``rel`` whose card (at the tag) is ``card``.

    Args:
        card: the card at the tag's commit.
        rel: the release (its tag, commit and date).
        card_path: the card's repo-relative path.
        card_sha256: the SHA-256 of the card's bytes at the tag.
        opsets: the ONNX copy's opsets when the card does not record them.

    Returns:
        The document as a JSON-safe dict.
    """
    where = f"{rel.tag}:{card_path}"
    try:
        return _document(card, rel, card_path=card_path, card_sha256=card_sha256, opsets=opsets)
    except IntegrityError as exc:
        if exc.where != "card":
            raise
        raise IntegrityError(where, exc.problem, exc.remedy) from None
    except (AttributeError, TypeError, ValueError):  # a section is not the shape build_card writes
        raise IntegrityError(where, "the card's sections are not the shape modelshelf writes",
                             DAMAGED) from None


def _document(card: Mapping[str, Any], rel: Release, *, card_path: str, card_sha256: str,
              opsets: Mapping[str, int] | None) -> dict[str, Any]:
    model_ref = rel.tag
    env = card.get("environment")
    if env is not None and not isinstance(env, Mapping):
        raise IntegrityError("card", "its 'environment' is not an object", DAMAGED)
    dataset = _dataset(card.get("dataset") or {})
    python, libraries, complete = _environment(card, env)
    model = _model(card, rel, model_ref, card_path, card_sha256, dataset["bom-ref"],
                   _opsets(env, card, opsets))
    refs = [dataset["bom-ref"], *([python["bom-ref"]] if python else []), *(c["bom-ref"] for c in libraries)]
    when = datetime.fromtimestamp(rel.timestamp, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {
        "$schema": "http://cyclonedx.org/schema/bom-1.6.schema.json",
        "bomFormat": "CycloneDX",
        "specVersion": SPEC_VERSION,
        "serialNumber": serial_number(rel.name, str(rel.version), rel.commit),
        "version": 1,
        "metadata": {
            "timestamp": when,
            "lifecycles": [{"phase": "build"}],
            "tools": {"components": [{"type": "application", "name": "modelshelf", "version": __version__}]},
            "component": model,
            "properties": _props({"tag": rel.tag, "commit": rel.commit, "card": f"{card_path} at {rel.tag}",
                                  "environment": "complete" if complete else
                                  "partial: the card predates the full environment record"}),
        },
        "components": [dataset, *([python] if python else []), *libraries],
        "dependencies": [{"ref": model_ref, "dependsOn": refs}],
        "compositions": [{"aggregate": "complete" if complete else "incomplete", "dependencies": [model_ref]}],
    }


def serial_number(name: str, version: str, commit: str) -> str:
    """``urn:uuid:...`` derived from the release alone (RFC 4122 version 5)."""
    return f"urn:uuid:{uuid.uuid5(SERIAL_NAMESPACE, f'{name}@v{version}:{commit}')}"


def purl(name: str, version: str) -> str:
    """``pkg:pypi/name@version``, the name normalised and the version percent-encoded."""
    return f"pkg:pypi/{quote(normalise_name(name), safe='-.')}@{quote(version, safe='.-_~')}"


def _model(card: Mapping[str, Any], rel: Release, ref: str, card_path: str, card_sha256: str,
           dataset_ref: str, opsets: Mapping[str, int]) -> dict[str, Any]:
    schema = card.get("input_schema") or {}
    task = str(schema.get("task", ""))
    arts = card.get("artefacts") or {}
    model_file = arts.get("model") or {}
    base = PurePosixPath(card_path).parent
    files = [_file(ref, base / str(rec.get("file")), str(rec.get("sha256")),
                   {"artefact": key, "bytes": rec.get("bytes"), "format": rec.get("format"),
                    **({f"onnx:opset:{d}": v for d, v in opsets.items()} if key == "onnx" else {}),
                    **({"onnx:parity:passed": (rec.get("parity") or {}).get("passed")} if key == "onnx" else {})})
             for key, rec in sorted(arts.items()) if isinstance(rec, Mapping)]
    files.append(_file(ref, PurePosixPath(card_path), card_sha256, {"artefact": "card", "format": "json"}))
    profile = card.get("profile") or {}
    if profile.get("file") and profile.get("sha256"):
        files.append(_file(ref, PurePosixPath(str(profile["file"])), str(profile["sha256"]),
                           {"artefact": "training profile", "format": "json"}))
    metrics = card.get("metrics") or {}
    rows = (card.get("dataset") or {}).get("test_rows")
    gate = card.get("gate") or {}
    checks = gate.get("checks") or {}
    return {
        "type": "machine-learning-model",
        "bom-ref": ref,
        "name": str(card.get("name")),
        "version": str(card.get("version")),
        "description": f"{card.get('algorithm')} ({task or 'unknown task'}) trained on "
                       f"{(card.get('dataset') or {}).get('source')}",
        "hashes": [_sha256(str(model_file.get("sha256")))],
        "modelCard": {
            "modelParameters": {
                "approach": {"type": "supervised"},  # every task modelshelf trains has a target
                "task": "regression" if task == "regression" else "classification",
                "modelArchitecture": str(card.get("algorithm")),
                "datasets": [{"ref": dataset_ref}],
                "inputs": [{"format": f"{f.get('name')}: {f.get('kind')} ({f.get('dtype')})"}
                           for f in schema.get("features") or []],
                "outputs": _outputs(schema),
            },
            "quantitativeAnalysis": {"performanceMetrics": [
                {"type": str(k), "value": _text(v),
                 "slice": f"held-out test split ({rows} rows)" if rows is not None else "held-out test split"}
                for k, v in metrics.items()]},
            "properties": _props({
                **{f"hyperparameter:{k}": v for k, v in sorted((card.get("hyperparams") or {}).items())},
                "pipeline": "; ".join(map(str, card.get("pipeline") or [])),
                "gate:passed": gate.get("passed"),
                **{f"gate:{m}": _check(c) for m, c in sorted(checks.items()) if isinstance(c, Mapping)},
                "gate:baseline": _baseline(gate.get("baseline") or {}),
            }),
        },
        "components": files,
        "properties": _props({"tag": rel.tag, "commit": rel.commit, "task": task,
                              "version-bump": card.get("version_bump"), "trained-at": card.get("trained_at"),
                              "serialised-at": card.get("serialised_at"),
                              "git:commit-at-serialise": (card.get("git") or {}).get("commit"),
                              "git:dirty-at-serialise": (card.get("git") or {}).get("dirty")}),
    }


def _outputs(schema: Mapping[str, Any]) -> list[dict[str, str]]:
    target = schema.get("target") or {}
    name, dtype = target.get("name", "target"), target.get("dtype", "unknown")
    if schema.get("task") == "regression":
        return [{"format": f"{name}: numeric ({dtype})"}]
    classes = ", ".join(map(str, schema.get("classes") or []))
    return [{"format": f"{name}: label ({dtype}), one of {classes}"},
            {"format": f"{name}: probability per class (float), classes {classes}"}]


def _dataset(ds: Mapping[str, Any]) -> dict[str, Any]:
    source = str(ds.get("source"))
    sha = str(ds.get("sha256"))
    how = ("the SHA-256 of scikit-learn's built-in frame written as CSV" if source.startswith("builtin:")
           else "the SHA-256 of the file's bytes")
    facts = {k: ds.get(k) for k in ("path", "rows", "train_rows", "test_rows") if ds.get(k) is not None}
    return {
        "type": "data",
        "bom-ref": f"dataset:sha256:{sha}",
        "name": source,
        "description": f"the training data ({how})",
        "hashes": [_sha256(sha)],
        "data": [{"type": "dataset", "name": source,
                  "description": f"split into {ds.get('train_rows')} training and {ds.get('test_rows')} test rows"}],
        "properties": _props(facts),
    }


def _environment(card: Mapping[str, Any], env: Mapping[str, Any] | None
                 ) -> tuple[dict[str, Any] | None, list[dict[str, Any]], bool]:
    """Python's component, one ``library`` per distribution, and whether the list is complete."""
    if env is not None:
        dists, direct = environment_lists(env)
        py = env.get("python") or {}
        plat = env.get("platform") or {}
        version, facts = py.get("version"), {"implementation": py.get("implementation"),
                                              "platform": plat.get("platform"), "machine": plat.get("machine")}
    else:
        deps = dict(card.get("dependencies") or {})
        version, facts, direct = deps.pop("python", None), {}, {}
        dists = checked_versions({normalise_name(k): v for k, v in deps.items() if v and v != "not installed"},
                                 "dependencies")
    python = None if not version else {
        "type": "platform", "bom-ref": f"python@{version}", "name": "python", "version": str(version),
        "properties": _props(facts)}
    libraries = []
    for name, ver in sorted(dists.items()):
        how = direct.get(name)
        comp: dict[str, Any] = {"type": "library", "name": name, "version": str(ver)}
        if how is None:
            comp = {**comp, "bom-ref": purl(name, str(ver)), "purl": purl(name, str(ver))}
        else:  # not from an index: a pkg:pypi purl would claim a provenance it does not have
            comp = {**comp, "bom-ref": f"python-library:{name}@{ver}"}
        roles = {"role": "runtime" if name in RUNTIME else "environment",
                 **({f"install:{k}": v for k, v in sorted(how.items())} if isinstance(how, Mapping) else {})}
        libraries.append({**comp, "properties": _props(roles)})
    return python, libraries, env is not None


def environment_lists(env: Mapping[str, Any]) -> tuple[dict[str, str], dict[str, Mapping[str, str]]]:
    """The card environment's distributions (name -> version) and direct installs, checked.

    Raises:
        IntegrityError: (``where`` = ``"card"``) they are not the mappings ``card.environment`` writes.
    """
    dists, direct = env.get("distributions") or {}, env.get("direct") or {}
    if not (isinstance(dists, Mapping) and isinstance(direct, Mapping)
            and all(isinstance(v, Mapping) for v in direct.values())):
        raise IntegrityError("card", "its 'environment' is malformed", DAMAGED)
    return checked_versions(dists, "environment.distributions"), dict(direct)


def checked_versions(dists: Mapping[str, Any], what: str) -> dict[str, str]:
    """``dists`` (name -> version) when every name is a PEP 508 name and every version a plain
    version string: they end up in requirements files, where a newline or a space would let a
    card smuggle in pip options (``--index-url``) or other packages.

    Raises:
        IntegrityError: (``where`` = ``"card"``) a name or version that is neither.
    """
    for name, version in dists.items():
        if not (isinstance(name, str) and NAME.fullmatch(name)):
            raise IntegrityError("card", f"{what} names {str(name)[:60]!r}, not a distribution name", DAMAGED)
        if not (isinstance(version, str) and VERSION.fullmatch(version)):
            raise IntegrityError("card", f"{what} gives {name} version {str(version)[:60]!r}, not a version",
                                 DAMAGED)
    return dict(dists)


def _opsets(env: Mapping[str, Any] | None, card: Mapping[str, Any], found: Mapping[str, int] | None
            ) -> dict[str, int]:
    recorded = ((env or {}).get("onnx") or {}).get("opsets") or (card.get("onnx") or {}).get("opsets")
    return dict(recorded) if isinstance(recorded, Mapping) and recorded else dict(found or {})


def _released_opsets(ws: Workspace, rel: Release, card: Mapping[str, Any]) -> dict[str, int]:
    """The ONNX copy's opsets, read from its bytes (the DVC cache, else the remote, verified
    against the card at the tag) when the card does not record them; empty when the bytes
    cannot be had."""
    rec = (card.get("artefacts") or {}).get("onnx")
    if not isinstance(rec, Mapping) or _opsets(card.get("environment"), card, None):
        return {}
    with tempfile.TemporaryDirectory(prefix="shelf-bom-") as tmp:
        target = Path(tmp) / "model.onnx"
        try:
            restore_artefact(ws, rel.commit, dict(rec), target)
            return onnx_opsets(target.read_bytes())
        except ShelfError:
            return {}  # neither the cache nor the remote has the released bytes: say nothing unproven
        except Exception:  # noqa: BLE001 - verified bytes onnx cannot parse have no opset to report
            return {}


def _file(owner: str, path: PurePosixPath, sha256: str, facts: Mapping[str, Any]) -> dict[str, Any]:
    return {"type": "file", "bom-ref": f"{owner}:{path}", "name": str(path), "hashes": [_sha256(sha256)],
            "properties": _props(facts)}


def _check(c: Mapping[str, Any]) -> str:
    verdict = "passed" if c.get("passed") else "failed"
    return f"{verdict}: {_text(c.get('value'))} (threshold {_text(c.get('threshold'))}, " \
           f"baseline {_text(c.get('baseline'))})"


def _baseline(b: Mapping[str, Any]) -> str:
    if not b.get("found"):
        return f"{b.get('rev', 'none')}: no baseline found"
    return f"{b.get('rev')} at {b.get('commit')} ({b.get('label') or b.get('used')})"


def _sha256(content: str) -> dict[str, str]:
    if not re.fullmatch(r"[0-9a-f]{64}", content):
        raise IntegrityError("card", f"'{content[:80]}' is not a SHA-256 digest",
                             DAMAGED)
    return {"alg": "SHA-256", "content": content}


def _text(value: Any) -> str:
    """A property value: strings as they are, anything else as JSON (``null``, ``true``, ``0.5``)."""
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


def _props(facts: Mapping[str, Any]) -> list[dict[str, str]]:
    """CycloneDX properties ``modelshelf:KEY``, in the order given; absent (None) facts left out."""
    return [{"name": f"{PROPERTY_PREFIX}:{k}", "value": _text(v)} for k, v in facts.items() if v is not None]
