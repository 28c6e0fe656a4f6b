"""The ML bill of materials (``shelf bom``) and the environment (``shelf env``) of a release, both
generated from the card at the release tag: the card records the full environment, the BOM is
valid CycloneDX 1.6 (strictly) and the same bytes on every run, the workspace's card cannot
change it, and old cards without an ``environment`` still give both (the env file says partial)."""

from __future__ import annotations

import hashlib
import json
import platform
import sys
import uuid
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest
from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator
from packaging.requirements import Requirement

from modelshelf.card import normalise_name, onnx_opsets
from modelshelf.errors import IntegrityError
from modelshelf.registry import bom, environment
from modelshelf.registry.bom import SERIAL_NAMESPACE
from modelshelf.registry.core import Release
from modelshelf.tags import SemVer

from conftest import Project

CARD = "models/card.json"
PINNED = ("scikit-learn", "numpy", "onnxruntime", "skl2onnx")


def validate(text: str) -> None:
    """Strict CycloneDX 1.6 schema validation, plus what the schema cannot say: unique bom-refs and
    a dependency graph that names only components in the document."""
    error = JsonStrictValidator(SchemaVersion.V1_6).validate_str(text)
    assert error is None, str(error)
    doc = json.loads(text)
    refs: list[str] = []

    def walk(comp: dict[str, Any]) -> None:
        refs.append(comp["bom-ref"])
        for sub in comp.get("components", []):
            walk(sub)

    walk(doc["metadata"]["component"])
    for comp in doc["components"]:
        walk(comp)
    assert len(refs) == len(set(refs)), "duplicate bom-refs"
    for dep in doc["dependencies"]:
        assert {dep["ref"], *dep["dependsOn"]} <= set(refs)


def files(doc: dict[str, Any]) -> dict[str, str]:
    """The model's nested file components: path -> SHA-256."""
    return {c["name"]: c["hashes"][0]["content"] for c in doc["metadata"]["component"]["components"]}


def props(comp: dict[str, Any]) -> dict[str, str]:
    return {p["name"]: p["value"] for p in comp.get("properties", [])}


def tag_date(p: Project, tag: str) -> str:
    return p.git("for-each-ref", "--format=%(taggerdate:unix)", f"refs/tags/{tag}").stdout.strip()


def requirement_lines(text: str) -> dict[str, Requirement]:
    reqs = [Requirement(line) for line in text.splitlines() if line and not line.startswith("#")]
    return {normalise_name(r.name): r for r in reqs}


@pytest.mark.slow
def test_the_bom_of_a_release_is_strict_cyclonedx_the_same_bytes_and_from_the_tags_card(
        released: Project, tmp_path: Path) -> None:
    first = released.shelf("bom", "v1.0.0").stdout
    released.shelf("bom", "v1.0.0", "-o", str(tmp_path / "out" / "bom.json"))
    assert (tmp_path / "out" / "bom.json").read_bytes() == first.encode()  # same bytes, both ways
    validate(first)

    doc = json.loads(first)
    card = json.loads(released.git("show", f"model@v1.0.0:{CARD}").stdout)
    commit = released.git("rev-list", "-n1", "model@v1.0.0").stdout.strip()
    model = doc["metadata"]["component"]
    assert model["type"] == "machine-learning-model" and model["version"] == "1.0.0"
    assert doc["serialNumber"] == f"urn:uuid:{uuid.uuid5(SERIAL_NAMESPACE, f'model@v1.0.0:{commit}')}"
    when = int(tag_date(released, "model@v1.0.0"))
    assert doc["metadata"]["timestamp"] == datetime.fromtimestamp(when, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    # every artefact's sha256 exactly as the card at the tag, and the card's own
    want = {f"models/{rec['file']}": rec["sha256"] for rec in card["artefacts"].values()}
    assert want.keys() >= {"models/model.joblib", "models/onnx/model.onnx"}
    got = files(doc)
    assert {k: got[k] for k in want} == want
    assert model["hashes"] == [{"alg": "SHA-256", "content": card["artefacts"]["model"]["sha256"]}]
    assert got[CARD] == hashlib.sha256(released.git("show", f"model@v1.0.0:{CARD}").stdout.encode()).hexdigest()
    # the model card: dataset by hash, inputs from the schema, metrics, hyperparameters
    mc = model["modelCard"]
    dataset = next(c for c in doc["components"] if c["type"] == "data")
    assert dataset["hashes"][0]["content"] == card["dataset"]["sha256"]
    assert mc["modelParameters"]["datasets"] == [{"ref": dataset["bom-ref"]}]
    assert len(mc["modelParameters"]["inputs"]) == len(card["input_schema"]["features"])
    assert {m["type"]: m["value"] for m in mc["quantitativeAnalysis"]["performanceMetrics"]} == \
        {k: json.dumps(v) for k, v in card["metrics"].items()}
    assert props(mc)["modelshelf:hyperparameter:n_estimators"] == str(card["hyperparams"]["n_estimators"])
    # every installed distribution, at this venv's exact version, and the model depends on each
    libs = {c["name"]: c for c in doc["components"] if c["type"] == "library"}
    here = {normalise_name(d.metadata["Name"]): d.version for d in reversed(list(metadata.distributions()))}
    assert {n: c["version"] for n, c in libs.items()} == card["environment"]["distributions"]
    assert set(libs) == set(here)
    for name in PINNED:
        assert libs[name]["purl"] == f"pkg:pypi/{name}@{metadata.version(name)}"
    assert "purl" not in libs["modelshelf"]  # editable here: not what PyPI has
    (graph,) = doc["dependencies"]
    assert graph["ref"] == model["bom-ref"]
    assert set(graph["dependsOn"]) >= {dataset["bom-ref"], *(c["bom-ref"] for c in libs.values())}
    assert doc["compositions"] == [{"aggregate": "complete", "dependencies": [model["bom-ref"]]}]
    # the ONNX copy's opsets, read from its verified bytes (the card has none yet)
    onnx = next(c for c in model["components"] if c["name"] == "models/onnx/model.onnx")
    opsets = onnx_opsets((released.root / "models/onnx/model.onnx").read_bytes())
    assert {k: v for k, v in props(onnx).items() if ":opset:" in k} == \
        {f"modelshelf:onnx:opset:{d}": str(v) for d, v in opsets.items()} != {}
    # a fresh clone (no DVC cache: the bytes come from the remote) gives the same bytes
    clone = Project(tmp_path / "clone")
    released.git("clone", "-q", str(released.root.parent / f"{released.root.name}-origin.git"), str(clone.root))
    assert clone.shelf("bom", "v1.0.0").stdout == first

    # the workspace's card, forged and even committed on main, changes neither the BOM nor the env
    env = released.shelf("env", "v1.0.0").stdout
    forged = released.json(CARD)
    forged["artefacts"]["model"]["sha256"] = "0" * 64
    forged["metrics"]["accuracy"] = 1.0
    forged["environment"]["distributions"]["numpy"] = "0.0.1"
    (released.root / CARD).write_text(json.dumps(forged))
    assert released.shelf("bom", "v1.0.0").stdout == first
    released.commit("a forged card on main")
    assert released.shelf("bom", "latest").stdout == first
    assert released.shelf("env", "latest").stdout == env
    assert "0" * 64 not in first and "numpy==0.0.1" not in env


@pytest.mark.slow
def test_env_of_a_release_made_here_pins_this_venvs_exact_versions_and_bad_input_is_exit_2(
        released: Project, tmp_path: Path) -> None:
    text = released.shelf("env", "v1.0.0").stdout
    reqs = requirement_lines(text)  # every line parses as a PEP 508 requirement
    for name in PINNED:
        assert str(reqs[name].specifier) == f"=={metadata.version(name)}", name
    card = json.loads(released.git("show", f"model@v1.0.0:{CARD}").stdout)
    assert {n: str(r.specifier)[2:] for n, r in reqs.items()} == \
        {n: v for n, v in card["environment"]["distributions"].items() if n not in ("modelshelf", "pip")}
    header = [line for line in text.splitlines() if line.startswith("#")]
    assert any("model@v1.0.0" in line for line in header)
    assert any(f"Python {card['environment']['python']['version']}" in line
               and card["environment"]["platform"]["platform"] in line for line in header)
    assert any("modelshelf" in line and "editable" in line for line in header)
    released.shelf("env", "latest", "-o", str(tmp_path / "req.txt"))
    assert (tmp_path / "req.txt").read_text() == text

    # an unknown version, a stage nobody holds, an output that is a directory: exit 2, one line
    for command in ("bom", "env"):
        out = tmp_path / f"{command}.txt"
        proc = released.shelf(command, "v9.9.9", "-o", str(out), check=False)
        assert proc.returncode == 2, proc.stderr
        assert proc.stdout == "" and len(proc.stderr.strip().splitlines()) == 1
        assert "v9.9.9" in proc.stderr and "Traceback" not in proc.stderr
        assert not out.exists()
        proc = released.shelf(command, "prod", check=False)  # a stage nobody holds
        assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
        proc = released.shelf(command, "v1.0.0", "-o", str(tmp_path), check=False)  # a directory
        assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
        assert str(tmp_path) in proc.stderr


@pytest.mark.slow
def test_an_old_card_without_environment_gives_a_bom_and_a_partial_env(released: Project) -> None:
    card = released.json(CARD)
    del card["environment"]
    card["version"] = "1.1.0"
    (released.root / CARD).write_text(json.dumps(card, indent=2))
    released.commit("a card from before the environment record")
    released.git("tag", "-a", "model@v1.1.0", "-m", "Registering artifact model version v1.1.0")

    text = released.shelf("bom", "v1.1.0").stdout
    validate(text)
    doc = json.loads(text)
    libs = {c["name"]: c["version"] for c in doc["components"] if c["type"] == "library"}
    assert libs == {k: v for k, v in card["dependencies"].items() if k != "python"}
    assert doc["compositions"][0]["aggregate"] == "incomplete"
    python = next(c for c in doc["components"] if c["type"] == "platform")
    assert python["version"] == card["dependencies"]["python"]

    env = released.shelf("env", "v1.1.0").stdout
    assert "PARTIAL" in env
    reqs = requirement_lines(env)
    assert {n: str(r.specifier) for n, r in reqs.items()} == \
        {k: f"=={v}" for k, v in card["dependencies"].items() if k != "python"}


@pytest.mark.slow
def test_a_card_at_a_tag_that_is_not_the_tags_or_smuggles_pip_options_is_refused(released: Project) -> None:
    evil = "\n--index-url https://evil.example/simple"
    card = released.json(CARD)
    card["version"] = "1.1.0"
    card["environment"]["python"]["version"] = "3.11" + evil  # only ever in a comment: defused
    (released.root / CARD).write_text(json.dumps(card, indent=2))
    released.commit("a card with a hostile header")
    released.git("tag", "-a", "model@v1.1.0", "-m", "Registering artifact model version v1.1.0")
    env = released.shelf("env", "v1.1.0").stdout
    assert [line for line in env.splitlines() if not line.startswith("#")] == \
        [str(r) for r in requirement_lines(env).values()]
    validate(released.shelf("bom", "v1.1.0").stdout)

    card["version"] = "1.2.0"
    card["environment"]["distributions"]["numpy"] = "2.0" + evil
    (released.root / CARD).write_text(json.dumps(card, indent=2))
    released.commit("a card that smuggles a pip option")
    released.git("tag", "-a", "model@v1.2.0", "-m", "Registering artifact model version v1.2.0")
    released.git("tag", "-a", "model@v1.3.0", "-m", "Registering artifact model version v1.3.0")  # card: 1.2.0
    for version in ("v1.2.0", "v1.3.0"):
        for command in ("bom", "env"):
            proc = released.shelf(command, version, check=False)
            assert proc.returncode == 4, (command, version, proc.stdout, proc.stderr)
            assert proc.stdout == "" and len(proc.stderr.strip().splitlines()) == 1
            assert f"model@{version}" in proc.stderr and "Traceback" not in proc.stderr


def test_the_card_records_the_full_environment(built: Project) -> None:
    env = built.json(CARD)["environment"]
    here: dict[str, str] = {}
    for dist in metadata.distributions():
        here.setdefault(normalise_name(dist.metadata["Name"]), dist.version)
    assert env["distributions"] == dict(sorted(here.items()))
    assert env["direct"]["modelshelf"] == {"kind": "editable"}  # no local path recorded
    assert env["onnx"]["onnxruntime"] == metadata.version("onnxruntime")
    assert env["onnx"]["skl2onnx"] == metadata.version("skl2onnx")
    assert env["python"] == {"version": platform.python_version(),
                             "implementation": platform.python_implementation(),
                             "cache_tag": sys.implementation.cache_tag}
    assert env["platform"]["platform"] == platform.platform()
    assert built.json(CARD)["dependencies"]["scikit-learn"] == metadata.version("scikit-learn")


def synthetic(**environment_overrides: Any) -> tuple[dict[str, Any], Release]:
    """A card with an environment of every install kind, and its release (no project needed)."""
    sha = "ab" * 32
    card = {
        "name": "model", "version": "2.0.0", "algorithm": "sklearn.linear_model.Ridge", "pipeline": ["model: Ridge"],
        "dataset": {"source": "data/raw/houses.csv", "path": "data/raw/houses.csv", "sha256": "cd" * 32,
                    "rows": 10, "train_rows": 8, "test_rows": 2},
        "hyperparams": {"alpha": 1.0, "solver": "auto"}, "metrics": {"rmse": 0.5, "r2": float("nan")},
        "gate": {"passed": True, "baseline": {"found": False, "rev": "main"}, "checks": {}},
        "input_schema": {"features": [{"name": "rooms", "kind": "numeric", "dtype": "int64"},
                                      {"name": "town", "kind": "categorical", "dtype": "object"}],
                         "target": {"name": "price", "dtype": "float64"}, "task": "regression"},
        "artefacts": {"model": {"file": "model.joblib", "sha256": sha, "bytes": 3, "format": "joblib"}},
        "dependencies": {"python": "3.12.1", "scikit-learn": "1.5.0"},
        "environment": {
            "python": {"version": "3.12.1", "implementation": "CPython", "cache_tag": "cpython-312"},
            "platform": {"system": "Linux", "machine": "aarch64", "platform": "Linux-6.1-aarch64-with-glibc2.36"},
            "onnx": {"onnxruntime": None, "skl2onnx": None, "onnx": None, "opsets": {}},
            "distributions": {"scikit-learn": "1.5.0", "torch": "2.3.0+cpu", "pip": "24.0", "oldthing": "r2009b",
                              "mylib": "0.3.0", "fromgit": "1.0.0", "fromweb": "2.0.0", "local": "0.1.0"},
            "direct": {"mylib": {"kind": "editable"}, "local": {"kind": "directory"},
                       "fromgit": {"kind": "vcs", "vcs": "git", "commit": "0123456789abcdef" * 2 + "01234567",
                                   "url": "https://example.org/fromgit.git"},
                       "fromweb": {"kind": "archive", "sha256": "ef" * 32,
                                   "url": "https://example.org/fromweb-2.0.0.tar.gz"}},
            **environment_overrides,
        },
    }
    rel = Release(name="model", version=SemVer.parse("2.0.0"), tag="model@v2.0.0", commit="f" * 40,
                  date="", timestamp=1_700_000_000, author="Test", card=card)
    return card, rel


def test_env_pins_every_kind_of_install_and_says_what_it_leaves_out() -> None:
    card, rel = synthetic()
    text = environment.render(card, rel)
    lines = [line for line in text.splitlines() if not line.startswith("#")]
    assert lines == [
        "fromgit @ git+https://example.org/fromgit.git@" + "0123456789abcdef" * 2 + "01234567",
        "fromweb @ https://example.org/fromweb-2.0.0.tar.gz#sha256=" + "ef" * 32,
        "oldthing===r2009b", "scikit-learn==1.5.0", "torch==2.3.0+cpu"]
    assert {normalise_name(Requirement(line).name) for line in lines} == {"fromgit", "fromweb", "oldthing",
                                                                         "scikit-learn", "torch"}
    notes = "\n".join(line for line in text.splitlines() if line.startswith("# Not listed"))
    assert "mylib 0.3.0 (installed editable" in notes and "local 0.1.0 (installed directory" in notes
    assert "pip 24.0 (the installer itself)" in notes
    assert "# Recreate: python3.12 -m venv v" in text and "Linux-6.1-aarch64-with-glibc2.36" in text
    # a URL that would carry a second requirement or an option is not written as one
    card, rel = synthetic(direct={"fromweb": {"kind": "archive", "url": "https://x.org/a.tgz --index-url https://e"}})
    assert "--index-url" not in "".join(line for line in environment.render(card, rel).splitlines()
                                        if not line.startswith("#"))


def test_the_bom_of_any_card_is_strict_cyclonedx_and_claims_pypi_only_for_index_installs() -> None:
    card, rel = synthetic()
    text = bom.render(bom.document(card, rel, card_path="models/card.json", card_sha256="12" * 32))
    validate(text)
    doc = json.loads(text)
    libs = {c["name"]: c for c in doc["components"] if c["type"] == "library"}
    assert libs["torch"]["purl"] == "pkg:pypi/torch@2.3.0%2Bcpu"
    assert all("purl" not in libs[n] for n in ("mylib", "local", "fromgit", "fromweb"))
    assert libs["scikit-learn"]["properties"] == [{"name": "modelshelf:role", "value": "runtime"}]
    model = doc["metadata"]["component"]
    assert model["modelCard"]["modelParameters"]["task"] == "regression"
    assert {m["type"]: m["value"] for m in model["modelCard"]["quantitativeAnalysis"]["performanceMetrics"]} == \
        {"rmse": "0.5", "r2": "NaN"}
    assert doc["metadata"]["timestamp"] == "2023-11-14T22:13:20Z"
    assert text == bom.render(bom.document(card, rel, card_path="models/card.json", card_sha256="12" * 32))
    bad = dict(card, artefacts={"model": {"file": "model.joblib", "sha256": "not-a-digest"}})
    with pytest.raises(IntegrityError, match="model@v2.0.0:models/card.json"):
        bom.document(bad, rel, card_path="models/card.json", card_sha256="12" * 32)
