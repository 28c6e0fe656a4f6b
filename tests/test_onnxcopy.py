"""The ONNX copy in-process: parity on numeric-only and mixed pipelines, the one-input graph,
and the serving runner agreeing with scikit-learn through a :class:`Batch`."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
import pandas as pd
import pytest

from modelshelf import onnxcopy
from modelshelf.pipeline.data import schema_of
from modelshelf.pipeline.features import Batch
from modelshelf.params import TrainParams
from modelshelf.serve.runner import OnnxRunner
from modelshelf.pipeline.train import train


def _frame(mixed: bool, n: int = 400, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({"a": rng.normal(size=n), "b b": rng.normal(size=n), "c": rng.integers(0, 9, n)})
    logit = frame["a"] - frame["b b"]
    if mixed:
        frame["colour"] = rng.choice(["red", "green", "blue"], size=n).astype(object)
        frame.loc[frame.index[::17], "colour"] = None
        frame.loc[frame.index[::23], "a"] = np.nan
        logit = logit + (frame["colour"] == "red") * 1.5
    frame["y"] = (logit + rng.normal(scale=0.3, size=n) > 0).astype(int)
    return frame


def _exported(mixed: bool, estimator: str) -> tuple[Any, dict[str, Any], pd.DataFrame, onnxcopy.Export]:
    frame = _frame(mixed)
    schema = schema_of(frame, "y", "binary")
    X, y = frame.drop(columns=["y"]), frame["y"]
    pipeline = train(X[:300], y[:300], TrainParams(estimator, {"n_estimators": 20, "max_depth": 5}
                                                   if "Forest" in estimator else {}), schema, 0)
    exp = onnxcopy.export(pipeline, schema, X[300:], y[300:], regression_tolerance=1e-4)
    return pipeline, schema, X[300:], exp


@pytest.mark.parametrize("estimator", ["sklearn.ensemble.RandomForestClassifier",
                                       "sklearn.linear_model.LogisticRegression"])
@pytest.mark.parametrize("mixed", [False, True], ids=["numeric", "mixed"])
def test_export_passes_parity_and_the_runner_agrees(mixed: bool, estimator: str) -> None:
    pipeline, schema, X, exp = _exported(mixed, estimator)
    assert exp.data is not None and exp.parity["passed"], exp.reason
    graph = onnx.load_from_string(exp.data).graph
    assert graph.input[0].name == onnxcopy.NUMERIC_INPUT
    ops = [n.op_type for n in graph.node]
    # The numeric columns reach the model as one matrix, with no Split/Concat round trip.
    assert "Split" not in ops and ops.count("Concat") == (1 if mixed else 0)
    runner = OnnxRunner(exp.data, schema)
    columns = {f["name"]: X[f["name"]].to_numpy() for f in schema["features"]}
    got = runner.predict(Batch.from_columns(columns, schema))
    assert got["predictions"] == pipeline.predict(X).tolist()
    np.testing.assert_allclose(got["probabilities"], pipeline.predict_proba(X), atol=1e-5)


def test_export_is_reproducible() -> None:
    """The same fitted pipeline exports to the same bytes (dvc repro must not see a change)."""
    pipeline, schema, X, first = _exported(True, "sklearn.ensemble.RandomForestClassifier")
    again = onnxcopy.export(pipeline, schema, X, None, regression_tolerance=1e-4)
    assert first.data is not None and again.data == first.data
