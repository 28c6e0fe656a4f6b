"""Artefact bytes: sha256, atomic writes, verify-before-deserialise, version checks, and schema_changed."""

from __future__ import annotations

import hashlib
import os
import json
import pathlib
import pickle
from pathlib import Path
from typing import Any

import joblib
import pytest
import sklearn

from modelshelf.artefacts import (
    atomic_output,
    copy_verified,
    dump_joblib,
    file_record,
    load_verified,
    sha256_bytes,
    sha256_file,
    verify,
    write_json,
    write_text,
)
from modelshelf.card import schema_changed
from modelshelf.errors import IntegrityError, VersionMismatchError

EMPTY_SHA = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
ABC_SHA = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


class Boom(Exception):
    pass


# --------------------------------------------------------------------------- sha256


def test_sha256_known_vectors(tmp_path: Path) -> None:
    empty, abc = tmp_path / "empty", tmp_path / "abc"
    empty.write_bytes(b"")
    abc.write_bytes(b"abc")
    assert sha256_file(empty) == EMPTY_SHA
    assert sha256_file(str(abc)) == ABC_SHA
    assert sha256_bytes(b"abc") == ABC_SHA
    assert sha256_bytes(b"") == EMPTY_SHA


def test_sha256_file_spanning_several_chunks(tmp_path: Path) -> None:
    data = bytes(range(256)) * (10 * 1024 + 3)  # ~2.5 MiB, not a multiple of the 1 MiB chunk
    path = tmp_path / "big.bin"
    path.write_bytes(data)
    assert sha256_file(path) == hashlib.sha256(data).hexdigest()
    path.write_bytes(data[:-1] + b"\x00")
    assert sha256_file(path) != hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("size", [0, 1, 63, 64, 65, (4 << 20) - 1, 4 << 20, (4 << 20) + 1, 5 << 20])
def test_sha256_is_the_same_either_side_of_the_builtin_hash_threshold(tmp_path: Path, size: int) -> None:
    """Small inputs go through Python's built-in SHA-256, large ones through OpenSSL's: one digest."""
    from modelshelf.artefacts import _sha256

    data = os.urandom(size)
    path = tmp_path / "blob"
    path.write_bytes(data)
    expected = hashlib.sha256(data).hexdigest()
    assert sha256_bytes(data) == sha256_file(path) == expected
    kind = type(_sha256(size)).__module__ + "." + type(_sha256(size)).__name__
    assert kind.startswith("_hashlib.") == (size > 4 << 20), kind  # _hashlib: OpenSSL's
    copy = tmp_path / "copy"
    copy_verified(path, copy, expected)
    assert copy.read_bytes() == data


def test_sha256_file_missing_raises(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        sha256_file(tmp_path / "nope")


def test_file_record(tmp_path: Path) -> None:
    path = tmp_path / "models" / "model.joblib"
    path.parent.mkdir()
    path.write_bytes(b"abc")
    assert file_record(path) == {"file": "model.joblib", "sha256": ABC_SHA, "bytes": 3}
    assert file_record(path, tmp_path) == {"file": "models/model.joblib", "sha256": ABC_SHA, "bytes": 3}


# --------------------------------------------------------------------------- atomic writes


def test_atomic_output_writes_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "out" / "file.bin"  # parent does not exist yet
    with atomic_output(target) as fh:
        fh.write(b"new bytes")
    assert target.read_bytes() == b"new bytes"
    assert sorted(p.name for p in target.parent.iterdir()) == ["file.bin"]


def test_atomic_output_text_mode(tmp_path: Path) -> None:
    target = tmp_path / "file.txt"
    with atomic_output(target, "w") as fh:
        fh.write("héllo\n")
    assert target.read_text(encoding="utf-8") == "héllo\n"


def test_atomic_output_content_is_invisible_until_success(tmp_path: Path) -> None:
    target = tmp_path / "file.bin"
    target.write_bytes(b"old")
    with atomic_output(target) as fh:
        fh.write(b"new")
        fh.flush()
        assert target.read_bytes() == b"old"
    assert target.read_bytes() == b"new"


def test_atomic_output_error_midway_keeps_old_file_and_removes_temp(tmp_path: Path) -> None:
    target = tmp_path / "model.joblib"
    target.write_bytes(b"old contents")
    with pytest.raises(Boom):
        with atomic_output(target) as fh:
            fh.write(b"half of the new")
            fh.flush()
            # the temp file really exists beside the target at this point
            assert len(list(tmp_path.iterdir())) == 2
            raise Boom("disk full")
    assert target.read_bytes() == b"old contents"
    assert [p.name for p in tmp_path.iterdir()] == ["model.joblib"]


def test_atomic_output_error_without_old_file_creates_nothing(tmp_path: Path) -> None:
    target = tmp_path / "metrics.json"
    with pytest.raises(Boom):
        with atomic_output(target, "w") as fh:
            fh.write("{")
            raise Boom()
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []


def test_atomic_output_cleans_up_on_keyboard_interrupt(tmp_path: Path) -> None:
    target = tmp_path / "card.json"
    target.write_text("{}")
    with pytest.raises(KeyboardInterrupt):
        with atomic_output(target, "w") as fh:
            fh.write("partial")
            raise KeyboardInterrupt
    assert target.read_text() == "{}"
    assert [p.name for p in tmp_path.iterdir()] == ["card.json"]


def test_dump_joblib_failure_keeps_old_model(tmp_path: Path) -> None:
    target = tmp_path / "model.joblib"
    dump_joblib({"version": 1}, target)
    before = sha256_file(target)
    with pytest.raises(pickle.PicklingError):
        dump_joblib({"version": 2, "bad": lambda: None}, target)  # lambdas cannot be pickled
    assert sha256_file(target) == before
    assert joblib.load(target) == {"version": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["model.joblib"]


@pytest.mark.parametrize("compress", [0, 3, 9])
def test_dump_joblib_round_trip(tmp_path: Path, compress: int) -> None:
    target = tmp_path / "m.joblib"
    dump_joblib({"a": [1, 2, 3]}, target, compress=compress)
    assert load_verified(target, sha256_file(target)) == {"a": [1, 2, 3]}


def test_write_json_and_write_text(tmp_path: Path) -> None:
    write_json(tmp_path / "m" / "eval.json", {"accuracy": 0.9, "rmse": float("nan")})
    text = (tmp_path / "m" / "eval.json").read_text()
    assert text.endswith("\n")
    assert json.loads(text)["accuracy"] == 0.9
    assert "NaN" in text  # NaN is kept so the gate can fail on it
    write_text(tmp_path / "t.txt", "abc")
    assert sha256_file(tmp_path / "t.txt") == ABC_SHA
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["eval.json"]


# --------------------------------------------------------------------------- verify


def test_verify_accepts_matching_file(tmp_path: Path) -> None:
    path = tmp_path / "a.bin"
    path.write_bytes(b"abc")
    assert verify(path, ABC_SHA) is None
    assert verify(str(path), ABC_SHA) is None


def test_verify_rejects_tampered_file(tmp_path: Path) -> None:
    path = tmp_path / "a.bin"
    path.write_bytes(b"abd")
    with pytest.raises(IntegrityError) as info:
        verify(path, ABC_SHA, label="card")
    err = info.value
    assert err.exit_code == 4
    assert err.where == str(path)
    assert "does not match card ba7816bf8f01" in err.problem
    assert "refusing to deserialise" in err.problem
    assert "dvc checkout" in err.remedy


def test_verify_rejects_single_byte_append(tmp_path: Path) -> None:
    path = tmp_path / "a.bin"
    path.write_bytes(b"abc\n")
    with pytest.raises(IntegrityError):
        verify(path, ABC_SHA)


@pytest.mark.parametrize("make_dir", [False, True])
def test_verify_rejects_missing_file(tmp_path: Path, make_dir: bool) -> None:
    path = tmp_path / "model.joblib"
    if make_dir:
        path.mkdir()
    with pytest.raises(IntegrityError) as info:
        verify(path, ABC_SHA)
    assert info.value.exit_code == 4
    assert info.value.problem == "artefact is missing"
    assert "dvc pull" in info.value.remedy


# --------------------------------------------------------------------------- load_verified


class TouchOnLoad:
    """Unpickling this creates ``marker``: a stand-in for arbitrary code in a tampered pickle."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (pathlib.Path.touch, (self.marker,))


@pytest.fixture
def payload(tmp_path: Path) -> tuple[Path, Path]:
    """``(malicious.joblib, marker)``: loading the file would create ``marker``."""
    marker = tmp_path / "pwned.marker"
    malicious = tmp_path / "malicious.joblib"
    joblib.dump(TouchOnLoad(marker), malicious)
    assert not marker.exists()
    return malicious, marker


def test_payload_really_runs_when_loaded(payload: tuple[Path, Path]) -> None:
    """Control: with its own (correct) sha the crafted file IS deserialised and creates the marker."""
    malicious, marker = payload
    load_verified(malicious, sha256_file(malicious))
    assert marker.exists()


def test_load_verified_refuses_tampered_file_before_deserialising(tmp_path: Path,
                                                                  payload: tuple[Path, Path]) -> None:
    malicious, marker = payload
    benign = tmp_path / "benign.joblib"
    joblib.dump({"coef": [1.0, 2.0]}, benign)
    recorded = sha256_file(benign)
    with pytest.raises(IntegrityError) as info:
        load_verified(malicious, recorded, label="card")
    assert not marker.exists()
    assert info.value.exit_code == 4
    assert "refusing to deserialise" in info.value.problem


def test_load_verified_refuses_file_swapped_in_place(tmp_path: Path, payload: tuple[Path, Path]) -> None:
    malicious, marker = payload
    model = tmp_path / "model.joblib"
    dump_joblib({"coef": [1.0]}, model)
    recorded = sha256_file(model)
    model.write_bytes(malicious.read_bytes())  # tampered after the card recorded its hash
    with pytest.raises(IntegrityError):
        load_verified(model, recorded, sklearn_version=sklearn.__version__)
    assert not marker.exists()


def test_load_verified_checks_integrity_before_version(tmp_path: Path, payload: tuple[Path, Path]) -> None:
    malicious, marker = payload
    with pytest.raises(IntegrityError):
        load_verified(malicious, EMPTY_SHA, sklearn_version="0.0.1", allow_version_mismatch=True)
    assert not marker.exists()


def test_load_verified_missing_file(tmp_path: Path) -> None:
    with pytest.raises(IntegrityError) as info:
        load_verified(tmp_path / "model.joblib", EMPTY_SHA)
    assert info.value.problem == "artefact is missing"


@pytest.fixture
def model_file(tmp_path: Path) -> tuple[Path, str]:
    path = tmp_path / "model.joblib"
    dump_joblib({"weights": [0.5, 0.25]}, path)
    return path, sha256_file(path)


@pytest.mark.parametrize("version", [None, "", sklearn.__version__])
def test_load_verified_loads_with_matching_or_no_version(model_file: tuple[Path, str],
                                                          version: str | None) -> None:
    path, sha = model_file
    assert load_verified(path, sha, sklearn_version=version) == {"weights": [0.5, 0.25]}


def test_load_verified_version_mismatch(model_file: tuple[Path, str]) -> None:
    path, sha = model_file
    other = "0.0.1"
    assert other != sklearn.__version__
    with pytest.raises(VersionMismatchError) as info:
        load_verified(path, sha, sklearn_version=other)
    err = info.value
    message = str(err)
    assert err.exit_code == 5
    assert err.where == str(path)
    assert f"scikit-learn {other}" in message
    assert sklearn.__version__ in message
    assert f"pip install scikit-learn=={other}" in message
    assert "allow_version_mismatch=True" in message and "--allow-version-mismatch" in message


def test_load_verified_version_mismatch_allowed(model_file: tuple[Path, str]) -> None:
    path, sha = model_file
    loaded = load_verified(path, sha, sklearn_version="0.0.1", allow_version_mismatch=True)
    assert loaded == {"weights": [0.5, 0.25]}


@pytest.fixture
def old_sklearn_pickle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, str]:
    """A fitted estimator whose pickle claims it was made by scikit-learn 0.0.1."""
    import sklearn.base
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit([[0.0], [2.0]])
    path = tmp_path / "old.joblib"
    with monkeypatch.context() as m:
        m.setattr(sklearn.base, "__version__", "0.0.1")
        dump_joblib(scaler, path)
    return path, sha256_file(path)


def test_load_verified_inconsistent_pickle_version_is_an_error(old_sklearn_pickle: tuple[Path, str]) -> None:
    path, sha = old_sklearn_pickle
    with pytest.raises(VersionMismatchError) as info:
        load_verified(path, sha)  # no recorded version: sklearn's own warning must still stop it
    assert "pickled by scikit-learn 0.0.1" in info.value.problem
    assert sklearn.__version__ in info.value.problem
    assert info.value.remedy == "install scikit-learn==0.0.1"


def test_load_verified_inconsistent_pickle_version_allowed(old_sklearn_pickle: tuple[Path, str]) -> None:
    path, sha = old_sklearn_pickle
    scaler = load_verified(path, sha, allow_version_mismatch=True)
    assert list(scaler.mean_) == [1.0]


# --------------------------------------------------------------------------- card.schema_changed


def schema(features: list[dict[str, Any]] | None = None, task: str = "binary",
           classes: list[Any] | None = None) -> dict[str, Any]:
    feats = features if features is not None else [
        {"name": "age", "kind": "numeric", "dtype": "float64"},
        {"name": "colour", "kind": "categorical", "dtype": "string", "categories": ["blue", "red"]},
    ]
    return {"features": feats, "target": "target", "task": task,
            "classes": classes if classes is not None else [0, 1]}


def test_schema_identical_is_unchanged() -> None:
    assert schema_changed(schema(), schema()) is False


def test_schema_old_none_is_unchanged() -> None:
    assert schema_changed(None, schema()) is False


def test_schema_feature_renamed() -> None:
    new = schema()
    new["features"][0]["name"] = "age_years"
    assert schema_changed(schema(), new) is True


def test_schema_feature_kind_changed() -> None:
    new = schema()
    new["features"][0] = {"name": "age", "kind": "categorical", "dtype": "string", "categories": ["1"]}
    assert schema_changed(schema(), new) is True


def test_schema_feature_added_or_removed() -> None:
    more = schema()
    more["features"].append({"name": "height", "kind": "numeric", "dtype": "float64"})
    assert schema_changed(schema(), more) is True
    fewer = schema()
    fewer["features"].pop()
    assert schema_changed(schema(), fewer) is True


def test_schema_classes_changed() -> None:
    assert schema_changed(schema(classes=[0, 1]), schema(classes=[0, 1, 2])) is True
    assert schema_changed(schema(classes=["no", "yes"]), schema(classes=["no", "maybe"])) is True


def test_schema_task_changed() -> None:
    assert schema_changed(schema(task="binary"), schema(task="multiclass")) is True


def test_schema_new_category_value_is_not_a_change() -> None:
    new = schema()
    new["features"][1]["categories"] = ["blue", "green", "red"]
    assert schema_changed(schema(), new) is False
    new["features"][1]["categories"] = None  # too many categories to record
    assert schema_changed(schema(), new) is False


def test_schema_dtype_width_is_not_a_change() -> None:
    new = schema()
    new["features"][0]["dtype"] = "int64"
    assert schema_changed(schema(), new) is False


def test_schema_regression_without_classes() -> None:
    old = {"features": [{"name": "x", "kind": "numeric"}], "task": "regression"}
    new = {"features": [{"name": "x", "kind": "numeric"}], "task": "regression", "classes": None}
    assert schema_changed(old, new) is False
