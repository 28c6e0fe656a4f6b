"""A loaded, verified model ready to answer: ONNX (no pickle) or, failing that, the joblib copy."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import orjson

from modelshelf import artefacts
from modelshelf.card import CARD_FILE, parse_card
from modelshelf.errors import IntegrityError, ShelfError
from modelshelf.pipeline.features import Batch
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


def load(directory: str | Path, *, card: dict[str, Any] | None = None, allow_version_mismatch: bool = False,
         max_rows: int = 10_000) -> Loaded:
    """Load the version in ``directory``: verify every artefact its card lists, then build and warm up.

    Every artefact's sha256 is checked before anything is deserialised, the ones not served
    too (a tampered joblib file next to a good ONNX copy is refused, as ``shelf verify``
    refuses it; it is hashed, never unpickled).  ONNX is served when the card records a
    copy, and then the running scikit-learn does not matter: no scikit-learn code runs, and
    the copy's parity with scikit-learn was checked when it was made.  The joblib fallback
    refuses a scikit-learn other than the card's unless ``allow_version_mismatch``.

    Args:
        directory: holds the artefacts the card names (and, without ``card``, ``card.json``).
        card: the card to verify against, when the caller holds a trusted one (a release's
            card read from git at its tag); then ``directory/card.json`` is never read.
        allow_version_mismatch: serve the joblib copy under another scikit-learn.
        max_rows: the most rows one request may carry.

    Returns:
        The loaded version, warmed up.

    Raises:
        IntegrityError: the card or an artefact is missing, unreadable, differs from the
            card's sha256, or matches it but cannot be loaded.
        VersionMismatchError: the joblib copy is served and scikit-learn differs from the card's.
    """
    # os.path, not pathlib: see artefacts.py
    card_path = os.path.join(directory, CARD_FILE)
    if card is None:
        card = parse_card(_read(card_path, "no model card here", "serve a directory holding a card.json, or a "
                                     "release: vX.Y.Z, latest or a stage"), card_path)
    schema = card["input_schema"]
    records = card["artefacts"]
    served = "onnx" if records.get("onnx") is not None else "model"
    data = b""
    for kind, rec in records.items():
        if not isinstance(rec, dict) or not isinstance(rec.get("file"), str) or "sha256" not in rec:
            raise IntegrityError(card_path, f"artefacts.{kind} lacks a file or a sha256",
                                 "rebuild the card with `dvc repro`")
        path = os.path.join(directory, rec["file"])
        if kind == served == "model":
            continue  # hashed by load_verified, just before it is unpickled and after all the others
        if kind == served:
            data = _read(path, "artefact is missing")
            digest = artefacts.sha256_bytes(data)  # checked on the very bytes we load
        else:
            try:
                digest = artefacts.sha256_file(path)
            except OSError as exc:
                raise _unreadable(path, exc, "artefact is missing") from None
        if digest != rec["sha256"]:
            raise IntegrityError(path, f"sha256 {digest[:12]}… does not match the card's {rec['sha256'][:12]}…",
                                 "refusing to serve it; restore it with `dvc pull` (or `shelf get VERSION`)")
    path = os.path.join(directory, records[served]["file"])
    try:
        if served == "onnx":
            runner: OnnxRunner | JoblibRunner = OnnxRunner(data, schema)
        else:
            try:
                model = artefacts.load_verified(path, records["model"]["sha256"],
                                                sklearn_version=card["dependencies"].get("scikit-learn"),
                                                allow_version_mismatch=allow_version_mismatch, label="the card's")
            except OSError as exc:
                raise _unreadable(path, exc, "artefact is missing") from None
            runner = JoblibRunner(model, schema)
        parser = Parser(schema, max_rows)
        lane = None
        if isinstance(runner, OnnxRunner):
            from modelshelf.serve import onerow

            lane = onerow.build(runner)  # runs the graph both ways: a warm-up too
        if lane is None:
            runner.predict(Batch.from_columns(example_columns(schema), schema))  # warm up before anyone depends on it
    except ShelfError:
        raise
    except Exception as exc:  # noqa: BLE001 - bytes that match the card but do not load: a broken release
        raise IntegrityError(path, f"matches the card's sha256 but cannot be served ({type(exc).__name__}: "
                             f"{_one_line(exc)})", "the release is broken: rebuild it (`dvc repro`) and "
                             "release it again") from exc
    return Loaded(card["name"], str(card["version"]), card, runner, parser, orjson.dumps(card),
                  orjson.dumps(openapi(card, max_rows)), lane)


_RESTORE = "restore it with `dvc pull` in the project, or fetch the release with `shelf get VERSION -o DIR`"


def _read(path: str, missing: str, remedy: str = _RESTORE) -> bytes:
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except OSError as exc:
        raise _unreadable(path, exc, missing, remedy) from None


def _unreadable(path: str, exc: OSError, missing: str, remedy: str = _RESTORE) -> IntegrityError:
    what = missing if isinstance(exc, FileNotFoundError) else f"cannot be read ({exc.strerror or exc})"
    return IntegrityError(path, what, remedy)


def _one_line(exc: BaseException, limit: int = 300) -> str:
    """An exception's message on one line (the CLI prints errors as one line), shortened."""
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[:limit - 1] + "…"


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
