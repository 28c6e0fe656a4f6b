"""Request payloads checked against the card's input schema, and the OpenAPI document.

Every problem becomes a :class:`BadRequest` naming the field; nothing here raises anything else.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any


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


def parse(body: bytes, schema: Mapping[str, Any], max_rows: int) -> tuple[dict[str, list[Any]], int]:
    """``(columns, n_rows)`` from ``{"rows": [{…}, …]}`` or ``{"columns": {name: […]}}``."""
    try:
        # NaN and Infinity are not JSON; missing values are null.
        data = json.loads(body, parse_constant=_reject_constant)
    except ValueError as exc:
        if exc.args and exc.args[0] in ("NaN", "Infinity", "-Infinity"):
            raise BadRequest(422, f"{exc.args[0]} is not accepted: send null for a missing value") from None
        raise BadRequest(400, "the body is not valid JSON") from None
    except RecursionError:
        raise BadRequest(400, "the body is nested too deeply") from None
    if not isinstance(data, dict) or set(data) not in ({"rows"}, {"columns"}):
        raise BadRequest(400, 'send {"rows": [{feature: value, …}, …]} or {"columns": {feature: [values]}}, '
                         "and nothing else")
    names = [f["name"] for f in schema["features"]]
    kinds = {f["name"]: f["kind"] for f in schema["features"]}
    if "rows" in data:
        rows = data["rows"]
        if not isinstance(rows, list) or not rows:
            raise BadRequest(422, "rows must be a non-empty list of objects", "rows")
        if len(rows) > max_rows:
            raise BadRequest(413, f"{len(rows)} rows is more than the limit of {max_rows}", "rows")
        columns: dict[str, list[Any]] = {n: [] for n in names}
        wanted = set(names)
        numeric = [(n, columns[n]) for n in names if kinds[n] == "numeric"]
        categorical = [(n, columns[n]) for n in names if kinds[n] != "numeric"]
        for i, row in enumerate(rows):
            if not isinstance(row, dict):
                raise BadRequest(422, "each row must be an object", f"rows[{i}]")
            if row.keys() != wanted:
                _check_keys(row.keys(), names, f"rows[{i}]")
            # Fast paths for well-formed values; anything else gets the full check and its field name.
            for n, col in numeric:
                v = row[n]
                if (type(v) is float or type(v) is int) and -FLOAT32_MAX <= v <= FLOAT32_MAX:
                    col.append(v)
                else:
                    col.append(_value(v, "numeric", f"rows[{i}].{n}"))
            for n, col in categorical:
                v = row[n]
                col.append(v if type(v) is str else _value(v, "categorical", f"rows[{i}].{n}"))
        return columns, len(rows)
    cols = data["columns"]
    if not isinstance(cols, dict):
        raise BadRequest(422, "columns must be an object of lists", "columns")
    _check_keys(cols.keys(), names, "columns")
    lengths = {len(v) if isinstance(v, list) else -1 for v in cols.values()}
    if -1 in lengths:
        bad = next(k for k, v in cols.items() if not isinstance(v, list))
        raise BadRequest(422, "each column must be a list", f"columns.{bad}")
    if len(lengths) != 1 or 0 in lengths:
        raise BadRequest(422, "columns must be non-empty lists of one length", "columns")
    n = lengths.pop()
    if n > max_rows:
        raise BadRequest(413, f"{n} rows is more than the limit of {max_rows}", "columns")
    out = {name: [_value(v, kinds[name], f"columns.{name}[{i}]") for i, v in enumerate(cols[name])]
           for name in names}
    return out, n


def _check_keys(keys: Any, names: list[str], where: str) -> None:
    given = set(keys)
    missing = [n for n in names if n not in given]
    if missing:
        raise BadRequest(422, f"missing feature '{missing[0]}'", f"{where}.{missing[0]}")
    unknown = sorted(given - set(names))
    if unknown:
        raise BadRequest(422, f"unknown feature '{unknown[0]}'", f"{where}.{unknown[0]}")


def _value(v: Any, kind: str, field: str) -> Any:
    if v is None:
        return None if kind == "categorical" else math.nan  # the pipeline imputes it
    if kind == "numeric":
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise BadRequest(422, f"expected a number or null, got {type(v).__name__}", field)
        if not -FLOAT32_MAX <= v <= FLOAT32_MAX:  # beyond float32, where the graph computes
            raise BadRequest(422, "number out of range", field)
        return v
    if not isinstance(v, str):
        raise BadRequest(422, f"expected a string or null, got {type(v).__name__}", field)
    return v


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
