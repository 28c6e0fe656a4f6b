"""Data controls (params.yaml ``data``): drop, id, missing_target, sep, format, max_categories.

Real projects, real DVC and the real ``shelf`` stages; the served input schema is checked with
the real request parser.
"""

from __future__ import annotations

import importlib.util

import json
from typing import Any

import numpy as np
import pandas as pd
import pytest

from modelshelf.errors import ConfigError
from modelshelf.params import parse_params
from modelshelf.serve.payload import BadRequest, Parser, openapi

from conftest import Project

STAGES = (("prepare", "--params", "params.yaml", "--raw", "data/raw", "--out", "data/prepared",
           "--profile", "data/profile.json"),
          ("train", "--params", "params.yaml", "--prepared", "data/prepared", "--out", "build/candidate"),
          ("evaluate", "--prepared", "data/prepared", "--candidate", "build/candidate",
           "--metrics", "metrics/eval.json", "--plots", "metrics/plots"))


def accounts(n: int = 400, seed: int = 3, missing: int = 0) -> pd.DataFrame:
    """Accounts with a zero-padded ID, a free-text note (mostly unique), two useful numbers, a
    region, a noise column to drop, and a label; ``missing`` labels blanked."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3))
    region = rng.choice(["north", "south", "east"], size=n)
    label = (x[:, 0] + 0.8 * x[:, 1] + np.where(region == "east", 0.7, 0.0) > 0).astype(int)
    frame = pd.DataFrame({"account": [f"{i:06d}" for i in range(n)], "x0": x[:, 0], "x1": x[:, 1],
                          "noise": x[:, 2], "note": [f"called on day {i * 7 % n}" for i in range(n)],
                          "region": region, "churn": label.astype(float)})
    if missing:
        frame.loc[rng.choice(n, missing, replace=False), "churn"] = np.nan
    return frame


def write_raw(p: Project, name: str, frame: pd.DataFrame, **to_csv: Any) -> str:
    """Write ``data/raw/NAME`` (CSV or Parquet by extension) and track it with ``dvc add``."""
    rel = f"data/raw/{name}"
    if name.endswith(".parquet"):
        frame.to_parquet(p.root / rel, index=False)
    else:
        frame.to_csv(p.root / rel, index=False, **to_csv)
    p.dvc("add", "-q", rel)
    return rel


def stages(p: Project, upto: int = 3) -> list[str]:
    return [p.shelf(*stage).stdout for stage in STAGES[:upto]]


def one_line_exit_2(proc: Any) -> str:
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    return lines[0]


@pytest.mark.slow
def test_id_drop_missing_targets_and_semicolons_through_repro_and_predict(project: Project) -> None:
    rel = write_raw(project, "accounts.csv", accounts(missing=7), sep=";")
    project.set_params(data={"source": rel, "target": "churn", "sep": ";", "id": "account",
                             "drop": ["noise", "note"], "missing_target": "drop"},
                       gate={"thresholds": {"accuracy": 0.8, "f1": 0.8}})
    out = project.dvc("repro").stdout
    assert "gate: PASSED" in out and "393 rows" in out

    card = project.json("models/card.json")
    schema = card["input_schema"]
    names = [f["name"] for f in schema["features"]]
    assert names == ["x0", "x1", "region"]  # the ID is not a feature, the dropped columns are gone
    assert schema["id"]["name"] == "account" and schema["id"]["dtype"] in ("object", "str", "string")
    ds = card["dataset"]
    assert ds["missing_target_dropped"] == 7 and ds["rows"] == 393 and ds["id"] == "account"
    assert ds["dropped_columns"] == ["noise", "note"] and ds["format"] == "csv"
    assert project.json("data/profile.json")["missing_target_dropped"] == 7
    assert "account" not in project.json("data/profile.json")["features"]

    # shelf predict: the ID comes first, as written (leading zeros kept); extra columns are ignored.
    new = accounts(n=5, seed=9).drop(columns=["churn"])
    new.to_csv(project.root / "new.csv", index=False)
    project.shelf("predict", "new.csv", "--model", "models", "-o", "scored.csv")
    scored = pd.read_csv(project.root / "scored.csv", dtype={"account": str})
    assert list(scored.columns[:3]) == ["account", "model_version", "prediction"]
    assert scored["account"].tolist() == ["000000", "000001", "000002", "000003", "000004"]
    # without the ID column the output is as before
    new.drop(columns=["account"]).to_csv(project.root / "anon.csv", index=False)
    project.shelf("predict", "anon.csv", "--model", "models", "-o", "anon-scored.csv")
    assert pd.read_csv(project.root / "anon-scored.csv").columns[0] == "model_version"

    # shelf drift reads new data as the training data was read (data.sep).
    accounts(n=400, seed=11).drop(columns=["churn"]).to_csv(project.root / "week.csv", index=False, sep=";")
    drift = project.shelf("drift", "week.csv", check=False)
    assert drift.returncode == 0, drift.stdout + drift.stderr

    # Serving the same card: a request may carry the ID; it is accepted and ignored.
    parser = Parser(schema, 100)
    row = {"x0": 0.1, "x1": -0.2, "region": "east"}
    plain = parser.parse(json.dumps({"rows": [row]}).encode())
    with_id = parser.parse(json.dumps({"rows": [{"account": "000042", **row}, row]}).encode())
    assert with_id.numeric[0].tolist() == plain.numeric[0].tolist() and with_id.n == 2
    assert "the row's ID (data.id)" in json.dumps(openapi(card, 100))


def test_missing_targets_are_an_error_by_default_naming_count_and_rows(project: Project) -> None:
    frame = accounts(n=60, missing=0)
    frame.loc[[4, 9, 20, 30, 41, 50, 55], "churn"] = np.nan
    rel = write_raw(project, "accounts.csv", frame)
    project.set_params(data={"source": rel, "target": "churn", "id": "account", "drop": ["noise", "note"]})
    line = one_line_exit_2(project.shelf(*STAGES[0], check=False))
    assert "target column 'churn' has 7 missing values (data rows 5, 10, 21, 31, 42, …" in line
    assert "data.missing_target: drop" in line and rel in line


def test_a_parquet_source_trains_and_evaluates(project: Project) -> None:
    pytest.importorskip("pyarrow", reason="Parquet needs pyarrow, an optional dependency")
    frame = accounts(n=300).drop(columns=["note"])
    frame["region"] = frame["region"].astype("category")  # a Parquet dtype a CSV cannot hold
    rel = write_raw(project, "accounts.parquet", frame)
    project.set_params(data={"source": rel, "target": "churn", "id": "account", "drop": ["noise"]})
    prepare, train, evaluate = stages(project)
    assert "300 rows" in prepare and "task binary" in prepare
    assert "accuracy" in evaluate
    schema = project.json("data/prepared/schema.json")
    region = next(f for f in schema["features"] if f["name"] == "region")
    assert region["kind"] == "categorical" and region["categories"] == ["east", "north", "south"]
    info = project.json("data/prepared/dataset.json")
    assert info["format"] == "parquet" and len(info["sha256"]) == 64
    assert project.json("metrics/eval.json")["accuracy"] > 0.8


def test_format_csv_overrides_the_extension(project: Project) -> None:
    frame = accounts(n=120).drop(columns=["note"])
    (project.root / "data/raw/accounts.parquet").write_text(frame.to_csv(index=False, sep="|"))
    project.set_params(data={"source": "data/raw/accounts.parquet", "target": "churn", "format": "csv",
                             "sep": "|", "id": "account"})
    assert "120 rows" in project.shelf(*STAGES[0]).stdout


@pytest.mark.parametrize(("data", "needle"), [
    ({"drop": ["noize", "note"]}, "column 'noize' (data.drop in params.yaml) not found; did you mean 'noise'?"),
    ({"id": "acount", "drop": ["note"]}, "column 'acount' (data.id in params.yaml) not found; did you mean 'account'?"),
    ({"id": "account"}, "column 'note' has 400 distinct values in 400 rows: mostly unique, like an ID"),
    ({"drop": ["account"], "max_categories": 1000}, "column 'note' has 400 distinct values in 400 rows: "
     "mostly unique, like an ID, so nothing can be learnt from it; add it to data.drop, or name it data.id"),
    ({"drop": ["note", "account"], "max_categories": 2}, "column 'region' has 3 distinct values, more than "
     "data.max_categories (2) to one-hot encode; add it to data.drop, name it data.id if it identifies rows, "
     "or raise data.max_categories to at least 3"),
    ({"sep": ";"}, "target column 'churn' (data.target in params.yaml) not found"),
    pytest.param({"format": "parquet"}, "not a readable Parquet file",
                 marks=pytest.mark.skipif(importlib.util.find_spec("pyarrow") is None,
                                          reason="Parquet needs pyarrow, an optional dependency")),
])
def test_bad_data_is_one_line_and_exit_2(project: Project, data: dict[str, Any], needle: str) -> None:
    rel = write_raw(project, "accounts.csv", accounts())
    project.set_params(data={"source": rel, "target": "churn", **data})
    (project.root / "data/prepared").mkdir(parents=True)
    (project.root / "data/prepared/keep.txt").write_text("old")
    line = one_line_exit_2(project.shelf(*STAGES[0], check=False))
    assert needle in line and rel in line
    assert (project.root / "data/prepared/keep.txt").read_text() == "old"
    assert not (project.root / "data/profile.json").exists()


def test_a_semicolon_csv_read_with_commas_says_to_set_sep(project: Project) -> None:
    rel = write_raw(project, "accounts.csv", accounts(n=50), sep=";")
    project.set_params(data={"source": rel, "target": "churn"})
    line = one_line_exit_2(project.shelf(*STAGES[0], check=False))
    assert "the header reads as one column: set data.sep: ';'" in line


@pytest.mark.parametrize(("data", "needle"), [
    ({"dorp": ["x"]}, "params.yaml: data.dorp: unknown key; did you mean 'drop'?"),
    ({"idd": "x"}, "data.idd: unknown key; did you mean 'id'?"),
    ({"missing_target": "skip"}, "data.missing_target: 'skip' is not one of error, drop"),
    ({"format": "xlsx"}, "data.format: 'xlsx' is not one of auto, csv, parquet"),
    ({"sep": ";;"}, "data.sep: ';;' is not a single character"),
    ({"drop": "noise"}, "data.drop: expected a list of column names"),
    ({"drop": ["noise", "noise"]}, "data.drop[1]: 'noise' is listed twice"),
    ({"drop": ["churn"]}, "data.drop: 'churn' is the target"),
    ({"id": "churn"}, "data.id: 'churn' is the target"),
    ({"id": "account", "drop": ["account"]}, "data.drop: 'account' is the ID column"),
    ({"max_categories": 1}, "data.max_categories: 1 is out of range"),
])
def test_bad_data_params_name_the_key(data: dict[str, Any], needle: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_params({"data": {"target": "churn", **data}})
    assert needle in str(err.value) and err.value.exit_code == 2


def test_a_bad_data_param_stops_prepare_with_one_line(project: Project) -> None:
    project.set_params(data={"dorp": ["x"]})
    assert "data.dorp: unknown key; did you mean 'drop'?" in one_line_exit_2(project.shelf(*STAGES[0], check=False))


def test_params_parse_the_data_controls() -> None:
    p = parse_params({"data": {"source": "data/raw/a.parquet", "target": "y", "drop": ["a", "b"], "id": "key",
                               "missing_target": "drop", "sep": "\t", "max_categories": 80}}).data
    assert (p.drop, p.id, p.missing_target, p.sep, p.format, p.max_categories) == \
        (("a", "b"), "key", "drop", "\t", "auto", 80)
    d = parse_params({}).data
    assert (d.drop, d.id, d.missing_target, d.sep, d.format, d.max_categories) == ((), None, "error", ",", "auto", 50)


SCHEMA = {"features": [{"name": "a", "kind": "numeric", "dtype": "float64"},
                       {"name": "c", "kind": "categorical", "dtype": "string"}],
          "target": {"name": "y", "dtype": "int64"}, "task": "binary", "classes": [0, 1],
          "id": {"name": "key", "dtype": "object"}}


def test_the_parser_accepts_and_ignores_the_id_and_still_refuses_the_rest() -> None:
    parser = Parser(SCHEMA, 10)
    rows = parser.parse(b'{"rows": [{"key": "k:1", "a": 1.5, "c": "x"}, {"a": 2, "c": null}]}')
    assert rows.numeric.tolist() == [[1.5], [2.0]] and rows.categorical == {"c": ["x", None]}
    cols = parser.parse(b'{"columns": {"a": [1, 2], "c": ["x", "y"], "key": [7, 8]}}')
    assert cols.n == 2 and cols.categorical == {"c": ["x", "y"]}
    for body, message, field in [
        (b'{"rows": [{"key": 1, "key": 2, "a": 1, "c": "x"}]}', "duplicate key 'key'", "rows[0].key"),
        (b'{"rows": [{"key": 1, "a": 1, "c": "x", "b": 2}]}', "unknown feature 'b'", "rows[0].b"),
        (b'{"rows": [{"key": 1, "c": "x"}]}', "missing feature 'a'", "rows[0].a"),
    ]:
        with pytest.raises(BadRequest) as err:
            parser.parse(body)
        assert (err.value.message, err.value.field) == (message, field)
    # a model without an ID column still refuses the key as unknown
    with pytest.raises(BadRequest, match="unknown feature 'key'"):
        Parser({k: v for k, v in SCHEMA.items() if k != "id"}, 10).parse(b'{"rows": [{"key": 1, "a": 1, "c": "x"}]}')
    doc = json.dumps(openapi({"name": "m", "version": "1.0.0", "input_schema": SCHEMA}, 10))
    assert '"key": {"description": "the row\'s ID (data.id), ignored by the model"' in doc


def test_ids_survive_the_prepared_splits(project: Project) -> None:
    rel = write_raw(project, "accounts.csv", accounts(n=80).drop(columns=["note"]))
    project.set_params(data={"source": rel, "target": "churn", "id": "account"})
    project.shelf(*STAGES[0])
    train = pd.read_csv(project.root / "data/prepared/train.csv", dtype={"account": str})
    test = pd.read_csv(project.root / "data/prepared/test.csv", dtype={"account": str})
    assert sorted(train["account"].tolist() + test["account"].tolist()) == [f"{i:06d}" for i in range(80)]
