"""Request payloads checked against the card's input schema, and the OpenAPI document.

Every problem becomes a :class:`BadRequest` naming the field; nothing here raises anything else.
"""

from __future__ import annotations

import itertools
import json
import operator
from collections.abc import Iterable, Mapping
from typing import Any, NoReturn

import numpy as np
import orjson

from modelshelf.features import Batch


FLOAT32_MAX = 3.4e38  # a little below float32's largest finite value


class BadRequest(Exception):
    """A 4xx answer: ``status`` and a JSON body ``{"error": message, "field": field}``."""

    def __init__(self, status: int, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.field = field

    def body(self) -> dict[str, Any]:
        out: dict[str, Any] = {"error": self.message}
        if self.field is not None:
            out["field"] = self.field
        return out


def _reject_constant(name: str) -> float:
    raise ValueError(name)


_NONE = type(None)
_NUMBER = frozenset({float, int, _NONE})
_TEXT = frozenset({str, type(None)})


def loads(body: bytes) -> Any:
    """The JSON in a request body; a :class:`BadRequest` when it is not JSON or holds NaN."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        pass  # orjson is stricter than the standard library (big numbers): ask it, for the verdict
    try:
        # NaN and Infinity are not JSON; missing values are null.
        return json.loads(body, parse_constant=_reject_constant)
    except ValueError as exc:
        if exc.args and exc.args[0] in ("NaN", "Infinity", "-Infinity"):
            raise BadRequest(422, f"{exc.args[0]} is not accepted: send null for a missing value") from None
        raise BadRequest(400, "the body is not valid JSON") from None
    except RecursionError:
        raise BadRequest(400, "the body is nested too deeply") from None


class Parser:
    """Parses ``/predict`` bodies for one input schema into a :class:`Batch`.

    Well-formed payloads take a vectorised path (type checks over whole rows, one matrix
    conversion); anything else is re-checked value by value so the error names its field.
    """

    def __init__(self, schema: Mapping[str, Any], max_rows: int) -> None:
        self.schema = schema
        self.max_rows = max_rows
        self.names = [f["name"] for f in schema["features"]]
        self.kinds = {f["name"]: f["kind"] for f in schema["features"]}
        self.numeric = [n for n in self.names if self.kinds[n] == "numeric"]
        self.categorical = [n for n in self.names if self.kinds[n] != "numeric"]
        self.wanted = frozenset(self.names)
        get = operator.itemgetter(*self.numeric) if self.numeric else None
        # itemgetter of one key returns the value, not a 1-tuple
        self._numeric_of = (lambda row: (get(row),)) if len(self.numeric) == 1 else get

    def parse(self, body: bytes) -> Batch:
        """The rows of ``{"rows": [{…}, …]}`` or ``{"columns": {name: […]}}``, checked."""
        return self.batch(loads(body))

    def batch(self, data: Any) -> Batch:
        """:meth:`parse` for a body already decoded by :func:`loads`."""
        if type(data) is not dict or data.keys() not in ({"rows"}, {"columns"}):
            raise BadRequest(400, 'send {"rows": [{feature: value, …}, …]} or {"columns": {feature: [values]}}, '
                             "and nothing else")
        return self._rows(data["rows"]) if "rows" in data else self._columns(data["columns"])

    def _rows(self, rows: Any) -> Batch:
        if not isinstance(rows, list) or not rows:
            raise BadRequest(422, "rows must be a non-empty list of objects", "rows")
        if len(rows) > self.max_rows:
            raise BadRequest(413, f"{len(rows)} rows is more than the limit of {self.max_rows}", "rows")
        wanted = self.wanted
        for i, row in enumerate(rows):
            if type(row) is not dict:
                raise BadRequest(422, "each row must be an object", f"rows[{i}]")
            if row.keys() != wanted:
                _check_keys(row.keys(), self.names, f"rows[{i}]")
        matrix = self._matrix(list(map(self._numeric_of, rows)) if self.numeric else None, len(rows))
        categorical = {n: [row[n] for row in rows] for n in self.categorical}
        if matrix is None or not _all_text(categorical):  # name the first refused value, in row order
            _explain((row[n], self.kinds[n], f"rows[{i}].{n}")
                     for i, row in enumerate(rows) for n in (*self.numeric, *self.categorical))
        return Batch(matrix, categorical, len(rows))

    def _columns(self, cols: Any) -> Batch:
        if not isinstance(cols, dict):
            raise BadRequest(422, "columns must be an object of lists", "columns")
        _check_keys(cols.keys(), self.names, "columns")
        lengths = {len(v) if type(v) is list else -1 for v in cols.values()}
        if -1 in lengths:
            bad = next(k for k, v in cols.items() if type(v) is not list)
            raise BadRequest(422, "each column must be a list", f"columns.{bad}")
        if len(lengths) != 1 or 0 in lengths:
            raise BadRequest(422, "columns must be non-empty lists of one length", "columns")
        n = lengths.pop()
        if n > self.max_rows:
            raise BadRequest(413, f"{n} rows is more than the limit of {self.max_rows}", "columns")
        matrix = self._matrix([cols[name] for name in self.numeric] if self.numeric else None, n, transposed=True)
        categorical = {name: cols[name] for name in self.categorical}
        if matrix is None or not _all_text(categorical):  # name the first refused value, column by column
            _explain((v, self.kinds[name], f"columns.{name}[{i}]")
                     for name in (*self.numeric, *self.categorical) for i, v in enumerate(cols[name]))
        return Batch(matrix, categorical, n)

    def _matrix(self, values: list[Any] | None, n: int, transposed: bool = False) -> np.ndarray | None:
        """The numeric features as ``[n, k]`` float64 (null → NaN), or None when some value is
        not a number in float32's range (the caller then finds and names it)."""
        if values is None:
            return np.empty((n, 0), dtype=np.float64)
        flat = list(itertools.chain.from_iterable(values))
        types = set(map(type, flat))
        if not _NUMBER.issuperset(types):
            return None
        present = flat if _NONE not in types else [v for v in flat if v is not None]
        # beyond float32 is refused (the graph computes in float32); min/max compare ints exactly
        if present and not (-FLOAT32_MAX <= min(present) and max(present) <= FLOAT32_MAX):
            return None
        matrix = np.array(values, dtype=np.float64)
        return np.ascontiguousarray(matrix.T) if transposed else matrix


def _all_text(categorical: Mapping[str, list[Any]]) -> bool:
    return all(_TEXT.issuperset(map(type, v)) for v in categorical.values())


def _explain(values: Iterable[tuple[Any, str, str]]) -> NoReturn:
    """Raise for the first ``(value, kind, field)`` the model cannot take (the fast path refused one)."""
    for v, kind, field in values:
        _check_value(v, kind, field)
    raise AssertionError("a value failed the fast check but passed the full one")


def _check_keys(keys: Any, names: list[str], where: str) -> None:
    given = set(keys)
    missing = [n for n in names if n not in given]
    if missing:
        raise BadRequest(422, f"missing feature '{missing[0]}'", f"{where}.{missing[0]}")
    unknown = sorted(given - set(names))
    if unknown:
        raise BadRequest(422, f"unknown feature '{unknown[0]}'", f"{where}.{unknown[0]}")


def _check_value(v: Any, kind: str, field: str) -> None:
    """Raise for a value the model cannot take; null is a missing value (the pipeline imputes it)."""
    if v is None:
        return
    if kind == "numeric":
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise BadRequest(422, f"expected a number or null, got {type(v).__name__}", field)
        if not -FLOAT32_MAX <= v <= FLOAT32_MAX:  # beyond float32, where the graph computes
            raise BadRequest(422, "number out of range", field)
    elif not isinstance(v, str):
        raise BadRequest(422, f"expected a string or null, got {type(v).__name__}", field)


def openapi(card: Mapping[str, Any], max_rows: int) -> dict[str, Any]:
    """An OpenAPI 3.0 document for this model's endpoints, typed by its input schema."""
    schema = card["input_schema"]
    props: dict[str, Any] = {}
    for f in schema["features"]:
        if f["kind"] == "numeric":
            props[f["name"]] = {"type": "number", "nullable": True, "minimum": -FLOAT32_MAX,
                                "maximum": FLOAT32_MAX}
        else:
            props[f["name"]] = {"type": "string", "nullable": True}
    names = [f["name"] for f in schema["features"]]
    row = {"type": "object", "properties": props, "required": names, "additionalProperties": False}
    columns = {"type": "object", "required": names, "additionalProperties": False,
               "properties": {n: {"type": "array", "minItems": 1, "maxItems": max_rows, "items": p}
                              for n, p in props.items()}}
    error = {"type": "object", "properties": {"error": {"type": "string"}, "field": {"type": "string"}},
             "required": ["error"]}
    label = ({"type": "number"} if schema["task"] == "regression"
             else {"oneOf": [{"type": "string"}, {"type": "number"}, {"type": "boolean"}]})
    prediction = {"type": "object", "required": ["version", "predictions"], "properties": {
        "version": {"type": "string"}, "model": {"type": "string"},
        "predictions": {"type": "array", "items": label},
        "classes": {"type": "array", "items": label},
        "probabilities": {"type": "array", "items": {"type": "array", "items": {"type": "number"}}}}}
    json_of = lambda s: {"application/json": {"schema": s}}  # noqa: E731
    errors = {str(code): {"description": text, "content": json_of(error)} for code, text in (
        (400, "malformed body"), (413, "too many rows or too large a body"), (422, "invalid features"))}
    simple = {"200": {"description": "ok", "content": json_of({"type": "object"})}}
    return {
        "openapi": "3.0.3",
        "info": {"title": f"modelshelf: {card['name']}", "version": str(card["version"])},
        "paths": {
            "/predict": {"post": {
                "summary": "predict for rows or columns",
                "requestBody": {"required": True, "content": json_of({"oneOf": [
                    {"type": "object", "required": ["rows"], "additionalProperties": False,
                     "properties": {"rows": {"type": "array", "minItems": 1, "maxItems": max_rows, "items": row}}},
                    {"type": "object", "required": ["columns"], "additionalProperties": False,
                     "properties": {"columns": columns}}]})},
                "responses": {"200": {"description": "predictions, with the version that made them",
                                      "content": json_of(prediction)}, **errors}}},
            "/health": {"get": {"summary": "liveness and the last load error", "responses": simple}},
            "/ready": {"get": {"summary": "200 once a verified model is loaded", "responses": {
                **simple, "503": {"description": "no model yet", "content": json_of({"type": "object"})}}}},
            "/model": {"get": {"summary": "the served model's card", "responses": simple}},
            "/metrics": {"get": {"summary": "Prometheus metrics", "responses": {
                "200": {"description": "text exposition", "content": {"text/plain": {"schema": {"type": "string"}}}}}}},
        },
    }
