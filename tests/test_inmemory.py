"""The public API for a model fitted in a script or notebook (issue 14): ``api.assess`` and
``api.save`` run the pipeline's own evaluate, gate and serialise on a fitted estimator."""

from __future__ import annotations

import json
from pathlib import Path

import joblib
import pytest
from sklearn.dummy import DummyClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from modelshelf import api
from modelshelf.pipeline import data

from conftest import Project


def splits(p: Project) -> tuple:
    schema = p.json("data/prepared/schema.json")
    return (*data.read_split(p.root / "data/prepared/train.csv", schema),
            *data.read_split(p.root / "data/prepared/test.csv", schema))


def test_assess_is_the_pipeline_s_own_evaluation_and_gate(built: Project) -> None:
    p = built
    _, _, X, y = splits(p)
    candidate = joblib.load(p.root / "build/candidate/model.joblib")   # what dvc repro trained
    result = api.assess(candidate, X, y, project=p.root)
    assert result.metrics == p.json("metrics/eval.json")               # the same numbers, exactly
    assert result.passed is True and result.gate.baseline.rescored    # main's model re-scored ...
    assert {c.metric: c.baseline for c in result.gate.checks} == {       # ... is this very model
        m: v for m, v in result.metrics.items() if m in p.params()["gate"]["thresholds"]}
    assert "gate: PASSED" in result.table()


def test_save_writes_a_gated_model_with_its_card_that_loads_and_verifies(built: Project) -> None:
    p = built
    X_train, y_train, X, y = splits(p)
    mine = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)).fit(X_train, y_train)
    p.set_params(gate={"tolerance": 0.05})
    saved = api.save(mine, X, y, p.root / "models/notebook", project=p.root, X_train=X_train, y_train=y_train)

    card = saved.card
    assert card["gate"]["passed"] is True and card["metrics"] == saved.assessment.metrics
    assert card["algorithm"] == "sklearn.linear_model._logistic.LogisticRegression"
    assert card["pipeline"][0] == "in memory: modelshelf.api.save"
    assert card["onnx"]["produced"] is True and card["dataset"]["test_rows"] == len(X)
    assert card["version"] == "1.0.0" and card["git"]["commit"] == p.git("rev-parse", "HEAD").stdout.strip()
    assert card["profile"]["file"] == "models/notebook/profile.json"
    checked = api.verify(saved.card_path.parent)
    assert {kind for kind, _ in checked.files} == {"model", "onnx"} and checked.version == "1.0.0"
    loaded = api.load(saved.card_path.parent)
    assert (loaded.predict(X) == mine.predict(X)).all()
    # nothing left behind but the saved directory; the pipeline's own outputs untouched
    assert list((p.root / ".dvc/tmp").glob("shelf-inmemory-*")) == []
    assert p.git("status", "--porcelain").stdout.split("\n")[:-1] == [" M params.yaml", "?? models/notebook/"]
    assert json.loads(p.dvc("status", "--json").stdout or "{}").keys() <= {"prepare", "gate", "serialise"}


def test_a_model_that_fails_the_gate_is_assessed_but_never_saved(built: Project) -> None:
    p = built
    X_train, y_train, X, y = splits(p)
    dummy = DummyClassifier(strategy="most_frequent").fit(X_train, y_train)
    result = api.assess(dummy, X, y, project=p.root)
    assert result.passed is False and "gate: FAILED" in result.table()
    with pytest.raises(api.GateFailed, match="nothing saved"):
        api.save(dummy, X, y, p.root / "models/notebook", project=p.root)
    assert not (p.root / "models/notebook").exists()


def test_a_saved_model_whose_bytes_were_altered_does_not_load(built: Project) -> None:
    p = built
    X_train, y_train, X, y = splits(p)
    model = joblib.load(p.root / "build/candidate/model.joblib")
    saved = api.save(model, X, y, p.root / "models/notebook", project=p.root)
    with saved.model_path.open("ab") as fh:
        fh.write(b"tampered")
    with pytest.raises(api.IntegrityError):
        api.load(saved.card_path.parent)


def test_bad_input_is_one_clear_error(built: Project) -> None:
    p = built
    X_train, y_train, X, y = splits(p)
    model = joblib.load(p.root / "build/candidate/model.joblib")
    with pytest.raises(api.DataError) as info:
        api.assess(model, X.to_numpy(), y, project=p.root)
    assert info.value.where == "X, y" and "not a pandas DataFrame" in info.value.problem
    with pytest.raises(api.DataError, match="values for"):
        api.assess(model, X, y[:-1], project=p.root)
    with pytest.raises(api.ConfigError, match="pipeline's own model directory"):
        api.save(model, X, y, p.root / "models", project=p.root)
    with pytest.raises(api.ConfigError, match="outside the project"):
        api.save(model, X, y, p.root.parent / "elsewhere", project=p.root)
    assert not Path(p.root.parent / "elsewhere").exists()
