"""The one-row lane: for every single all-numeric row it answers exactly what the general path
answers, and it declines (the general path then answers or refuses) for everything else."""

from __future__ import annotations

import json
import random
import threading
from typing import Any

import numpy as np
import orjson
import pandas as pd
import pytest

from modelshelf import onnxcopy
from modelshelf.pipeline.data import schema_of
from modelshelf.params import TrainParams
from modelshelf.serve import onerow
from modelshelf.serve.app import App
from modelshelf.serve.holder import Holder
from modelshelf.serve.payload import FLOAT32_MAX, BadRequest, Parser, loads
from modelshelf.serve.runner import Loaded, OnnxRunner
from modelshelf.pipeline.train import train


def _frame(task: str, n: int = 300, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({"a": rng.normal(size=n), "b b": rng.normal(scale=50, size=n),
                          "c": rng.integers(-9, 9, n)})
    logit = frame["a"] - frame["b b"] / 50 + frame["c"] / 9
    if task == "regression":
        frame["y"] = logit * 3 + rng.normal(scale=0.1, size=n)
    elif task == "multiclass":
        frame["y"] = np.digitize(logit + rng.normal(scale=0.3, size=n), [-0.7, 0.7])
    else:
        frame["y"] = (logit + rng.normal(scale=0.3, size=n) > 0).astype(int)
    return frame


def _model(task: str, estimator: str, labels: str = "int") -> tuple[dict[str, Any], OnnxRunner, list[dict[str, Any]]]:
    frame = _frame(task)
    if labels == "str":
        frame["y"] = frame["y"].map({0: "no", 1: "yes"})
    schema = schema_of(frame, "y", task)
    X, y = frame.drop(columns=["y"]), frame["y"]
    hyper = {"n_estimators": 15, "max_depth": 6} if "Forest" in estimator else {}
    pipeline = train(X[:200], y[:200], TrainParams(estimator, hyper), schema, 0)
    exp = onnxcopy.export(pipeline, schema, X[200:], y[200:], regression_tolerance=1e-3)
    assert exp.data is not None, exp.reason
    return schema, OnnxRunner(exp.data, schema), X[200:].to_dict("records")


def _lane(schema: dict[str, Any], runner: OnnxRunner) -> onerow.OneRow | None:
    return onerow.build(runner)


def _general(schema: dict[str, Any], runner: OnnxRunner, doc: Any) -> dict[str, Any]:
    return runner.predict(Parser(schema, 100).batch(doc))


# Values where float32 rounding, int conversion and the range bound could go astray.
EDGES = [0, -0.0, 1, -1, 2**24 + 1, -(2**31) - 3, 2**63 - 1, 1e-45, 3.4e-39, 0.1, 1 / 3, 16777217.0,
         FLOAT32_MAX, -FLOAT32_MAX, 3.3999999e38, 1e30, -123456.789, None, None]

CASES = [("binary", "sklearn.ensemble.RandomForestClassifier"), ("binary", "sklearn.linear_model.LogisticRegression"),
         ("multiclass", "sklearn.ensemble.RandomForestClassifier"),
         ("regression", "sklearn.ensemble.RandomForestRegressor"), ("regression", "sklearn.linear_model.Ridge")]


@pytest.mark.parametrize(("task", "estimator"), CASES, ids=[f"{t}-{e.rsplit('.', 1)[1]}" for t, e in CASES])
def test_the_lane_answers_exactly_as_the_general_path(task: str, estimator: str) -> None:
    schema, runner, rows = _model(task, estimator)
    lane = _lane(schema, runner)
    assert lane is not None
    rng = random.Random(1)
    edge_rows = [{"a": rng.choice(EDGES), "b b": rng.choice(EDGES), "c": rng.choice(EDGES)} for _ in range(60)]
    edge_rows.append({"a": None, "b b": None, "c": None})
    for row in rows + edge_rows:
        doc = loads(orjson.dumps({"rows": [row]}))  # as a request arrives: ints stay ints
        got = lane.predict(doc)
        assert got is not None, row
        assert got == _general(schema, runner, doc), row
    assert set(got) == ({"predictions"} if task == "regression" else {"predictions", "classes", "probabilities"})
    # Integers beyond 64 bits: orjson refuses them and the standard library reads them
    doc = loads(json.dumps({"rows": [{"a": 10**30, "b b": -(2**70), "c": 2**64 + 1}]}).encode())
    assert lane.predict(doc) == _general(schema, runner, doc) is not None


DECLINED: list[Any] = [
    {"rows": [{"a": 1.0, "b b": 2.0, "c": 3}, {"a": 1.0, "b b": 2.0, "c": 3}]},  # two rows
    {"columns": {"a": [1.0], "b b": [2.0], "c": [3]}},
    {"rows": [{"a": None, "b b": True, "c": 3}]},
    {"rows": [{"a": None, "b b": 3.5e38, "c": 3}]},
    {"rows": [{"a": True, "b b": 2.0, "c": 3}]},
    {"rows": [{"a": "1.0", "b b": 2.0, "c": 3}]},
    {"rows": [{"a": 1.0, "b b": 2.0}]},
    {"rows": [{"a": 1.0, "b b": 2.0, "c": 3, "d": 4}]},
    {"rows": [{"a": 1.0, "b b": 2.0, "d": 3}]},  # as many keys as features, one of them unknown
    {"rows": [{"a": 3.5e38, "b b": 2.0, "c": 3}]},
    {"rows": [{"a": 1.0, "b b": -(10**39), "c": 3}]},
    {"rows": [[1.0, 2.0, 3]]},
    {"rows": []},
    {"rows": [{"a": 1.0, "b b": 2.0, "c": 3}], "extra": 1},
    [{"a": 1.0, "b b": 2.0, "c": 3}],
]


@pytest.mark.parametrize("doc", DECLINED, ids=range(len(DECLINED)))
def test_the_lane_declines_what_it_does_not_take_and_the_general_path_decides(doc: Any) -> None:
    schema, runner, _ = _model("binary", "sklearn.linear_model.LogisticRegression")
    lane = _lane(schema, runner)
    assert lane is not None
    assert lane.predict(doc) is None
    try:
        general = _general(schema, runner, doc)
    except BadRequest as exc:
        assert exc.status in (400, 413, 422)
    else:
        assert len(general["predictions"]) in (1, 2)


def test_the_lane_declines_while_another_thread_holds_its_buffers() -> None:
    schema, runner, rows = _model("binary", "sklearn.linear_model.LogisticRegression")
    lane = _lane(schema, runner)
    assert lane is not None
    doc = {"rows": [rows[0]]}
    lane._lock.acquire()
    try:
        done: list[Any] = []
        t = threading.Thread(target=lambda: done.append(lane.predict(doc)))
        t.start()
        t.join(10)
        assert done == [None]
    finally:
        lane._lock.release()
    assert lane.predict(doc) == _general(schema, runner, doc)


def test_no_lane_for_categorical_features_or_string_labels() -> None:
    schema, runner, _ = _model("binary", "sklearn.linear_model.LogisticRegression", labels="str")
    assert _lane(schema, runner) is None  # the label output is a string tensor
    frame = _frame("binary")
    frame["colour"] = np.where(frame["a"] > 0, "red", "blue")
    schema = schema_of(frame, "y", "binary")
    X, y = frame.drop(columns=["y"]), frame["y"]
    pipeline = train(X[:200], y[:200], TrainParams("sklearn.linear_model.LogisticRegression", {}), schema, 0)
    exp = onnxcopy.export(pipeline, schema, X[200:], y[200:], regression_tolerance=1e-3)
    assert exp.data is not None, exp.reason
    runner = OnnxRunner(exp.data, schema)
    assert onerow.build(runner) is None


def test_app_answers_the_same_with_and_without_the_lane() -> None:
    schema, runner, rows = _model("binary", "sklearn.ensemble.RandomForestClassifier")
    lane = _lane(schema, runner)
    card = {"name": "m", "version": "1.2.3", "input_schema": schema}
    apps = []
    for one_row in (lane, None):
        holder = Holder("m")
        holder.current = Loaded("m", "1.2.3", card, runner, Parser(schema, 100), b"{}", b"{}", one_row)
        apps.append(App(holder, admin_token=None))
    for row in rows[:20] + [{"a": True, "b b": 1.0, "c": 2}, {"a": 1.0, "b b": None, "c": 2}]:
        body = orjson.dumps({"rows": [row]})
        with_lane, without = (app.handle("POST", "/predict", body) for app in apps)
        assert with_lane == without
        assert with_lane[0] in (200, 422)
        if with_lane[0] == 200:
            assert orjson.loads(with_lane[2])["version"] == "1.2.3"
