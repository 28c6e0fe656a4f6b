"""A loaded, verified model ready to answer: ONNX (no pickle) or, failing that, the joblib copy."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import orjson

from modelshelf import artefacts
from modelshelf.card import CARD_FILE, parse_card
from modelshelf.errors import IntegrityError
from modelshelf.features import Batch
from modelshelf.serve.payload import Parser, openapi

if TYPE_CHECKING:
    from pathlib import Path

    from modelshelf.serve.onerow import OneRow


class OnnxRunner:
    """onnxruntime over a graph whose bytes were verified in memory before use."""

    format = "onnx"

    def __init__(self, data: bytes, schema: Mapping[str, Any]) -> None:
        from modelshelf.onnxcopy import Session

        self.session = Session(data)
        self.schema = schema

    def predict(self, batch: Batch) -> dict[str, Any]:
        from modelshelf.onnxcopy import feeds

        return answer(self.session.run(feeds(batch)), self.schema)


def answer(outputs: Sequence[Any], schema: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON answer from a graph's outputs: the predictions, and for a classifier whose
    graph gives them, the classes and their probabilities."""
    result: dict[str, Any] = {"predictions": outputs[0].reshape(-1).tolist()}
    if schema["task"] != "regression" and len(outputs) > 1:
        result["classes"] = schema.get("classes")
        result["probabilities"] = outputs[1].tolist()
    return result


class JoblibRunner:
    """The verified joblib pipeline: the fallback when the card records no ONNX copy."""

    format = "joblib"

    def __init__(self, model: Any, schema: Mapping[str, Any]) -> None:
        self.model = model
        self.schema = schema

    def predict(self, batch: Batch) -> dict[str, Any]:
        import numpy as np
        import pandas as pd

        numeric = iter(batch.numeric.T)
        frame = pd.DataFrame({
            f["name"]: next(numeric) if f["kind"] == "numeric"
            else pd.Series(batch.categorical[f["name"]], dtype=object).fillna(np.nan)
            for f in self.schema["features"]})
        result: dict[str, Any] = {"predictions": np.asarray(self.model.predict(frame)).tolist()}
        if self.schema["task"] != "regression" and hasattr(self.model, "predict_proba"):
            result["classes"] = self.schema.get("classes")
            result["probabilities"] = np.asarray(self.model.predict_proba(frame)).tolist()
        return result


class Loaded(NamedTuple):
    """One servable version: its card, runner and pre-rendered documents.

    A NamedTuple rather than a frozen dataclass: as immutable, and ~1 ms less of the server's
    timed start-up to create."""

    name: str
    version: str
    card: dict[str, Any]
    runner: OnnxRunner | JoblibRunner
    parser: Parser
    card_json: bytes
    openapi_json: bytes
    one_row: OneRow | None = None  # the lane for single all-numeric rows (ONNX only)

    @property
    def format(self) -> str:
        return self.runner.format


def load(directory: str | Path, *, allow_version_mismatch: bool = False, max_rows: int = 10_000) -> Loaded:
    """Load the version in ``directory``: verify every byte against its card, build, warm up."""
    # os.path, not pathlib: see artefacts.py
    with open(os.path.join(directory, CARD_FILE), "rb") as fh:
        raw = fh.read()
    card = parse_card(raw, os.path.join(directory, CARD_FILE))
    schema = card["input_schema"]
    onnx = card["artefacts"].get("onnx")
    if onnx is not None:
        with open(os.path.join(directory, onnx["file"]), "rb") as fh:
            data = fh.read()
        if artefacts.sha256_bytes(data) != onnx["sha256"]:  # checked on the very bytes we load
            raise IntegrityError(os.path.join(directory, onnx["file"]), "sha256 does not match the card",
                                 "refusing it; restore the release with `shelf get`")
        runner: OnnxRunner | JoblibRunner = OnnxRunner(data, schema)
    else:
        rec = card["artefacts"]["model"]
        model = artefacts.load_verified(os.path.join(directory, rec["file"]), rec["sha256"],
                                        sklearn_version=card["dependencies"].get("scikit-learn"),
                                        allow_version_mismatch=allow_version_mismatch, label="the card's")
        runner = JoblibRunner(model, schema)
    parser = Parser(schema, max_rows)
    lane = None
    if isinstance(runner, OnnxRunner):
        from modelshelf.serve import onerow

        lane = onerow.build(runner)  # runs the graph both ways: a warm-up too
    if lane is None:
        runner.predict(Batch.from_columns(example_columns(schema), schema))  # warm up before anyone depends on it
    return Loaded(card["name"], str(card["version"]), card, runner, parser, orjson.dumps(card),
                  orjson.dumps(openapi(card, max_rows)), lane)


def example_columns(schema: Mapping[str, Any]) -> dict[str, list[Any]]:
    """One plausible row: zeros, and each categorical's first known category."""
    out: dict[str, list[Any]] = {}
    for f in schema["features"]:
        if f["kind"] == "numeric":
            out[f["name"]] = [0.0]
        else:
            cats = f.get("categories") or [None]
            out[f["name"]] = [cats[0]]
    return out
