"""params.yaml parsing: defaults, typo suggestions, types, ranges, choices and YAML errors."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from modelshelf.errors import ConfigError
from modelshelf.params import (
    DataParams,
    GateParams,
    Params,
    ReleaseParams,
    SerialiseParams,
    TrainParams,
    load_params,
    parse_params,
)


def config_error(raw: Any, file: str = "params.yaml") -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse_params(raw, file)
    assert info.value.exit_code == 2
    return info.value


# --------------------------------------------------------------------------- defaults


@pytest.mark.parametrize("raw", [None, {}, {"data": None, "train": None, "gate": None,
                                            "serialise": None, "release": None}])
def test_defaults(raw: Any) -> None:
    p = parse_params(raw)
    assert p == Params()
    assert p.data == DataParams(source="builtin:breast_cancer", target="target", task="auto",
                                test_size=0.2, random_state=42)
    assert p.train.estimator == "sklearn.ensemble.RandomForestClassifier"
    assert dict(p.train.hyperparams) == {}
    assert dict(p.gate.thresholds) == {} and dict(p.gate.tolerance) == {}
    assert p.gate.default_tolerance == 0.0
    assert p.gate.baseline == "main"
    assert p.serialise.compress == 3
    assert p.release.bump == "auto"


def test_full_params_are_read() -> None:
    raw = {
        "data": {"source": "data/raw/iris.csv", "target": "species", "task": "classification",
                 "test_size": 0.25, "random_state": 7},
        "train": {"estimator": "sklearn.linear_model.LogisticRegression",
                  "hyperparams": {"C": 0.5, "max_iter": 200}},
        "gate": {"thresholds": {"accuracy": 0.9, "f1_macro": 0.85}, "tolerance": 0.01,
                 "baseline": "origin/main"},
        "serialise": {"compress": 0},
        "release": {"bump": "patch"},
    }
    p = parse_params(raw)
    assert p.data == DataParams("data/raw/iris.csv", "species", "classification", 0.25, 7)
    assert p.train.estimator == "sklearn.linear_model.LogisticRegression"
    assert dict(p.train.hyperparams) == {"C": 0.5, "max_iter": 200}
    assert dict(p.gate.thresholds) == {"accuracy": 0.9, "f1_macro": 0.85}
    assert p.gate.baseline == "origin/main"
    assert p.serialise == SerialiseParams(0)
    assert p.release == ReleaseParams("patch")


def test_integer_test_size_and_threshold_become_float() -> None:
    p = parse_params({"gate": {"thresholds": {"accuracy": 1}}})
    assert p.gate.thresholds["accuracy"] == 1.0
    assert isinstance(p.gate.thresholds["accuracy"], float)


# --------------------------------------------------------------------------- unknown keys


@pytest.mark.parametrize(
    ("raw", "where", "suggestion"),
    [
        ({"dat": {}}, "params.yaml: dat", "did you mean 'data'?"),
        ({"serialize": {}}, "params.yaml: serialize", "did you mean 'serialise'?"),
        ({"gate": {"treshold": {"accuracy": 0.9}}}, "params.yaml: gate.treshold",
         "did you mean 'thresholds'?"),
        ({"gate": {"tolerence": 0.1}}, "params.yaml: gate.tolerence", "did you mean 'tolerance'?"),
        ({"data": {"test_szie": 0.2}}, "params.yaml: data.test_szie", "did you mean 'test_size'?"),
        ({"train": {"hyperparameters": {}}}, "params.yaml: train.hyperparameters",
         "did you mean 'hyperparams'?"),
        ({"release": {"bmup": "minor"}}, "params.yaml: release.bmup", "did you mean 'bump'?"),
        ({"gate": {"thresholds": {"acuracy": 0.9}}}, "params.yaml: gate.thresholds.acuracy",
         "did you mean 'accuracy'?"),
        ({"gate": {"tolerance": {"rmes": 0.1}}}, "params.yaml: gate.tolerance.rmes", "did you mean 'rmse'?"),
    ],
)
def test_unknown_key_names_file_path_and_suggests(raw: Any, where: str, suggestion: str) -> None:
    err = config_error(raw)
    assert err.where == where
    assert suggestion in err.remedy
    assert str(err).startswith(where + ": ")
    assert suggestion in str(err)


def test_unknown_key_uses_the_given_file_name() -> None:
    err = config_error({"gate": {"treshold": 1}}, file="conf/params.yaml")
    assert err.where == "conf/params.yaml: gate.treshold"
    assert "unknown key" in err.problem


def test_unknown_key_without_close_match_lists_valid_keys() -> None:
    err = config_error({"gate": {"zzzzzz": 1}})
    assert err.where == "params.yaml: gate.zzzzzz"
    assert err.remedy == "valid keys: baseline, confidence, regression, resamples, thresholds, tolerance"


def test_unknown_metric_message() -> None:
    err = config_error({"gate": {"thresholds": {"acuracy": 0.9}}})
    assert err.problem == "unknown metric"
    assert str(err) == "params.yaml: gate.thresholds.acuracy: unknown metric; did you mean 'accuracy'?"


# --------------------------------------------------------------------------- types


@pytest.mark.parametrize(
    ("raw", "where", "problem"),
    [
        ({"data": {"test_size": "0.2"}}, "data.test_size", "expected a number, got '0.2'"),
        ({"data": {"test_size": True}}, "data.test_size", "expected a number, got True"),
        ({"data": {"test_size": None}}, "data.test_size", "expected a number, got None"),
        ({"data": {"test_size": float("nan")}}, "data.test_size", "expected a number, got nan"),
        ({"data": {"random_state": True}}, "data.random_state", "expected an integer, got True"),
        ({"data": {"random_state": False}}, "data.random_state", "expected an integer, got False"),
        ({"data": {"random_state": 4.0}}, "data.random_state", "expected an integer, got 4.0"),
        ({"data": {"random_state": "42"}}, "data.random_state", "expected an integer, got '42'"),
        ({"serialise": {"compress": True}}, "serialise.compress", "expected an integer, got True"),
        ({"serialise": {"compress": 3.5}}, "serialise.compress", "expected an integer, got 3.5"),
        ({"gate": {"thresholds": {"accuracy": "high"}}}, "gate.thresholds.accuracy",
         "expected a number, got 'high'"),
        ({"gate": {"thresholds": {"accuracy": float("nan")}}}, "gate.thresholds.accuracy",
         "expected a number, got nan"),
        ({"gate": {"thresholds": {"accuracy": False}}}, "gate.thresholds.accuracy",
         "expected a number, got False"),
        ({"gate": {"tolerance": "0.1"}}, "gate.tolerance", "expected a number, got '0.1'"),
        ({"gate": {"tolerance": [0.1]}}, "gate.tolerance", "expected a number, got [0.1]"),
        ({"gate": {"tolerance": {"accuracy": float("nan")}}}, "gate.tolerance.accuracy",
         "expected a number, got nan"),
        ({"data": {"source": ""}}, "data.source", "expected a non-empty string, got ''"),
        ({"data": {"target": 3}}, "data.target", "expected a non-empty string, got 3"),
        ({"train": {"estimator": None}}, "train.estimator", "expected a non-empty string, got None"),
        ({"gate": {"baseline": 1}}, "gate.baseline", "expected a non-empty string, got 1"),
    ],
)
def test_wrong_types(raw: Any, where: str, problem: str) -> None:
    err = config_error(raw)
    assert err.where == f"params.yaml: {where}"
    assert err.problem == problem


@pytest.mark.parametrize(
    ("raw", "where"),
    [
        ({"data": [1, 2]}, "data"),
        ({"data": "builtin:iris"}, "data"),
        ({"gate": {"thresholds": [0.9]}}, "gate.thresholds"),
        ({"gate": {"thresholds": 0.9}}, "gate.thresholds"),
        ({"train": {"hyperparams": "n_estimators=10"}}, "train.hyperparams"),
    ],
)
def test_a_section_must_be_a_mapping(raw: Any, where: str) -> None:
    err = config_error(raw)
    assert err.where == f"params.yaml: {where}"
    assert err.problem.startswith("expected a mapping, got ")


def test_top_level_must_be_a_mapping() -> None:
    err = config_error(["data"])
    assert err.problem == "expected a mapping, got list"
    assert err.where.startswith("params.yaml")


def test_top_level_error_message_has_no_empty_key_path() -> None:
    err = config_error(["data"])
    assert ": :" not in str(err)


# --------------------------------------------------------------------------- ranges


@pytest.mark.parametrize(
    ("raw", "where", "value"),
    [
        ({"data": {"test_size": 0.95}}, "data.test_size", "0.95"),
        ({"data": {"test_size": 0.0}}, "data.test_size", "0.0"),
        ({"data": {"test_size": 1}}, "data.test_size", "1"),
        ({"data": {"random_state": -1}}, "data.random_state", "-1"),
        ({"data": {"random_state": 2**32}}, "data.random_state", str(2**32)),
        ({"serialise": {"compress": 10}}, "serialise.compress", "10"),
        ({"serialise": {"compress": -1}}, "serialise.compress", "-1"),
        ({"gate": {"tolerance": -0.01}}, "gate.tolerance", "-0.01"),
        ({"gate": {"tolerance": {"accuracy": -0.5}}}, "gate.tolerance.accuracy", "-0.5"),
    ],
)
def test_out_of_range(raw: Any, where: str, value: str) -> None:
    err = config_error(raw)
    assert err.where == f"params.yaml: {where}"
    assert err.problem == f"{value} is out of range"
    assert err.remedy.startswith("use a value in [")


def test_range_message_gives_the_bounds() -> None:
    assert config_error({"data": {"test_size": 0.95}}).remedy == "use a value in [0.01, 0.9]"
    assert config_error({"serialise": {"compress": 10}}).remedy == "use a value in [0, 9]"


@pytest.mark.parametrize(("key", "value"), [("test_size", 0.01), ("test_size", 0.9),
                                            ("random_state", 0), ("random_state", 2**32 - 1)])
def test_range_bounds_are_inclusive(key: str, value: Any) -> None:
    assert getattr(parse_params({"data": {key: value}}).data, key) == value


@pytest.mark.parametrize("compress", [0, 9])
def test_compress_bounds_are_inclusive(compress: int) -> None:
    assert parse_params({"serialise": {"compress": compress}}).serialise.compress == compress


# --------------------------------------------------------------------------- choices


@pytest.mark.parametrize(
    ("raw", "where", "bad", "suggestion"),
    [
        ({"data": {"task": "clasification"}}, "data.task", "clasification", "did you mean 'classification'?"),
        ({"data": {"task": "regresion"}}, "data.task", "regresion", "did you mean 'regression'?"),
        ({"release": {"bump": "mayor"}}, "release.bump", "mayor", "did you mean 'major'?"),
    ],
)
def test_bad_choice_suggests(raw: Any, where: str, bad: str, suggestion: str) -> None:
    err = config_error(raw)
    assert err.where == f"params.yaml: {where}"
    assert err.problem.startswith(f"'{bad}' is not one of ")
    assert err.remedy == suggestion


def test_bad_choice_without_close_match_lists_choices() -> None:
    err = config_error({"data": {"task": "xyz"}})
    assert err.problem == "'xyz' is not one of auto, classification, regression"
    assert err.remedy == "valid keys: auto, classification, regression"


@pytest.mark.parametrize("task", ["auto", "classification", "regression"])
def test_every_task_choice_is_accepted(task: str) -> None:
    assert parse_params({"data": {"task": task}}).data.task == task


@pytest.mark.parametrize("bump", ["auto", "major", "minor", "patch"])
def test_every_bump_choice_is_accepted(bump: str) -> None:
    assert parse_params({"release": {"bump": bump}}).release.bump == bump


# --------------------------------------------------------------------------- tolerance


def test_tolerance_as_a_number_is_the_default_for_every_metric() -> None:
    g = parse_params({"gate": {"thresholds": {"accuracy": 0.9}, "tolerance": 0.02}}).gate
    assert g.default_tolerance == 0.02
    assert dict(g.tolerance) == {}
    assert g.tolerance_for("accuracy") == 0.02
    assert g.tolerance_for("rmse") == 0.02


def test_tolerance_as_an_integer_becomes_float() -> None:
    g = parse_params({"gate": {"tolerance": 0}}).gate
    assert g.default_tolerance == 0.0 and isinstance(g.default_tolerance, float)


def test_tolerance_as_a_map_is_per_metric_with_zero_default() -> None:
    g = parse_params({"gate": {"tolerance": {"accuracy": 0.01, "rmse": 2}}}).gate
    assert dict(g.tolerance) == {"accuracy": 0.01, "rmse": 2.0}
    assert isinstance(g.tolerance["rmse"], float)
    assert g.default_tolerance == 0.0
    assert g.tolerance_for("accuracy") == 0.01
    assert g.tolerance_for("rmse") == 2.0
    assert g.tolerance_for("f1") == 0.0


def test_empty_tolerance_map_and_null_thresholds() -> None:
    g = parse_params({"gate": {"tolerance": {}, "thresholds": None}}).gate
    assert dict(g.tolerance) == {} and dict(g.thresholds) == {}
    assert g.default_tolerance == 0.0


# --------------------------------------------------------------------------- load_params


def test_load_params_reads_a_file(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text("data:\n  task: regression\n  test_size: 0.3\n"
                    "gate:\n  thresholds:\n    r2: 0.5\n  tolerance:\n    rmse: 0.1\n", encoding="utf-8")
    p = load_params(path)
    assert p.data.task == "regression" and p.data.test_size == 0.3
    assert dict(p.gate.thresholds) == {"r2": 0.5}
    assert p.gate.tolerance_for("rmse") == 0.1


def test_load_params_accepts_a_str_path(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text("release:\n  bump: major\n", encoding="utf-8")
    assert load_params(str(path)).release.bump == "major"


def test_load_params_empty_file_gives_defaults(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text("", encoding="utf-8")
    assert load_params(path) == Params()


def test_load_params_errors_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text("gate:\n  treshold:\n    accuracy: 0.9\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_params(path)
    assert info.value.where == f"{path}: gate.treshold"
    assert "did you mean 'thresholds'?" in str(info.value)


def test_load_params_yaml_nan_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text("data:\n  test_size: .nan\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_params(path)
    assert info.value.where == f"{path}: data.test_size"
    assert "expected a number" in info.value.problem


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("data:\n  task: classification\n  source: [unclosed\n", 4),
        ("data:\n  task: classification\ngate:\n  thresholds:\n    accuracy: 0.9\n   bad: 1\n", 6),
        ("data:\n\ttask: regression\n", 2),
    ],
)
def test_invalid_yaml_gives_line_number(tmp_path: Path, text: str, line: int) -> None:
    path = tmp_path / "params.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_params(path)
    err = info.value
    assert err.exit_code == 2
    assert err.where == str(path)
    assert err.problem == f"not valid YAML at line {line}"
    assert err.remedy == "fix the syntax"
    assert err.__cause__ is None and err.__suppress_context__


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope" / "params.yaml"
    with pytest.raises(ConfigError) as info:
        load_params(path)
    assert info.value.where == str(path)
    assert info.value.problem == "file not found"
    assert "--params" in info.value.remedy
    assert info.value.exit_code == 2


def test_non_utf8_file_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_bytes(b"data:\n  task: \xff\n")
    with pytest.raises(ConfigError):
        load_params(path)


def test_directory_path_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        load_params(tmp_path)


# --------------------------------------------------------------------------- immutability


@pytest.mark.parametrize(
    ("obj", "attr", "value"),
    [
        (Params(), "data", DataParams()),
        (DataParams(), "test_size", 0.5),
        (TrainParams(), "estimator", "x"),
        (GateParams(), "baseline", "dev"),
        (SerialiseParams(), "compress", 1),
        (ReleaseParams(), "bump", "major"),
    ],
)
def test_frozen_dataclasses_cannot_be_mutated(obj: Any, attr: str, value: Any) -> None:
    before = getattr(obj, attr)
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(obj, attr, value)
    assert getattr(obj, attr) == before


def test_parsed_mappings_are_read_only() -> None:
    p = parse_params({"gate": {"thresholds": {"accuracy": 0.9}, "tolerance": {"accuracy": 0.1}},
                      "train": {"hyperparams": {"n_estimators": 10}}})
    with pytest.raises(TypeError):
        p.gate.thresholds["accuracy"] = 0.0  # type: ignore[index]
    with pytest.raises(TypeError):
        p.gate.tolerance["accuracy"] = 1.0  # type: ignore[index]
    with pytest.raises(TypeError):
        p.train.hyperparams["n_estimators"] = 1  # type: ignore[index]
    assert p.gate.thresholds["accuracy"] == 0.9


def test_parsed_hyperparams_do_not_alias_the_input() -> None:
    hyper = {"n_estimators": 10}
    p = parse_params({"train": {"hyperparams": hyper}})
    hyper["n_estimators"] = 99
    assert p.train.hyperparams["n_estimators"] == 10



# --------------------------------------------------------------------------- release.trust, require_signature


def test_trust_policy_is_read() -> None:
    from modelshelf.params import TrustedIdentity, TrustParams

    p = parse_params({"release": {
        "stages": ["dev", "prod"],
        "trust": {"keys": ["keys/release.pub", "keys/ci.pub"], "certificates": ["pki/ca.pem"],
                  "identities": [{"identity": "ci@example.com", "issuer": "https://token.example"}],
                  "tag_signers": "keys/allowed_signers"},
        "require_signature": ["prod"]}})
    assert p.release.trust == TrustParams(keys=("keys/release.pub", "keys/ci.pub"), certificates=("pki/ca.pem",),
                                          identities=(TrustedIdentity("ci@example.com", "https://token.example"),),
                                          tag_signers="keys/allowed_signers")
    assert p.release.require_signature == ("prod",)
    assert parse_params({"release": {"trust": {"keys": ["k.pub"]}, "require_signature": True}}
                        ).release.require_signature is True
    assert ReleaseParams().require_signature is False and ReleaseParams().trust.empty


@pytest.mark.parametrize(("release", "where", "words"), [
    ({"trust": {"key": ["k.pub"]}}, "release.trust.key", "did you mean 'keys'?"),
    ({"trust": {"keys": "k.pub"}}, "release.trust.keys", "expected a list of file paths"),
    ({"trust": {"keys": ["../outside.pub"]}}, "release.trust.keys[0]", "not a path inside the project"),
    ({"trust": {"keys": ["/etc/ssl/k.pub"]}}, "release.trust.keys[0]", "not a path inside the project"),
    ({"trust": {"certificates": [""]}}, "release.trust.certificates[0]", "non-empty string"),
    ({"trust": {"identities": [{"identity": "a@b"}]}}, "release.trust.identities[0].issuer", "missing"),
    ({"trust": {"identities": [{"identity": "a@b", "isuer": "x"}]}}, "release.trust.identities[0].isuer",
     "did you mean 'issuer'?"),
    ({"trust": {"identities": {"identity": "a@b"}}}, "release.trust.identities", "expected a list"),
    ({"require_signature": "yes"}, "release.require_signature", "expected true, false or a list of stages"),
    ({"require_signature": ["prd"], "trust": {"keys": ["k.pub"]}}, "release.require_signature[0]",
     "did you mean 'prod'?"),
    ({"require_signature": True}, "release.require_signature", "release.trust lists no signer"),
    ({"require_signature": ["prod"], "trust": {"tag_signers": "allowed"}}, "release.require_signature",
     "release.trust lists no signer"),
    ({"require_signatures": True}, "release.require_signatures", "did you mean 'require_signature'?"),
])
def test_bad_trust_policy_names_the_key(release: dict[str, Any], where: str, words: str) -> None:
    err = config_error({"release": release})
    assert err.where == f"params.yaml: {where}", err.message
    assert words in err.message, err.message
