"""The /predict body parser, in-process: the vectorised path agrees with a value-by-value reading,
and every refusal names the first bad field in row order."""

from __future__ import annotations

import json
import math
import random
from typing import Any

import numpy as np
import pytest

from modelshelf.features import Batch
from modelshelf.serve.payload import FLOAT32_MAX, BadRequest, Parser

SCHEMA = {"task": "binary", "features": [
    {"name": "age", "kind": "numeric"}, {"name": "colour", "kind": "categorical"},
    {"name": "mean radius", "kind": "numeric"}, {"name": "size", "kind": "numeric"},
    {"name": "shape", "kind": "categorical"}]}
NUMERIC = ["age", "mean radius", "size"]
CATEGORICAL = ["colour", "shape"]


def _parse(doc: Any, schema: dict[str, Any] = SCHEMA, max_rows: int = 100) -> Batch:
    return Parser(schema, max_rows).parse(json.dumps(doc).encode())


def _refusal(body: bytes, max_rows: int = 100) -> BadRequest:
    with pytest.raises(BadRequest) as info:
        Parser(SCHEMA, max_rows).parse(body)
    return info.value


def _expected(rows: list[dict[str, Any]]) -> tuple[np.ndarray, dict[str, list[Any]]]:
    matrix = np.array([[math.nan if r[n] is None else float(r[n]) for n in NUMERIC] for r in rows])
    return matrix, {n: [r[n] for r in rows] for n in CATEGORICAL}


def _same(batch: Batch, rows: list[dict[str, Any]]) -> None:
    matrix, cats = _expected(rows)
    assert batch.n == len(rows)
    assert batch.numeric.dtype == np.float64 and batch.numeric.flags.c_contiguous
    np.testing.assert_array_equal(batch.numeric, matrix)  # NaN where NaN
    assert dict(batch.categorical) == cats


def _random_row(rng: random.Random) -> dict[str, Any]:
    def number() -> Any:
        return rng.choice([None, rng.randint(-10**6, 10**6), rng.uniform(-1e6, 1e6), 0, -0.0,
                           rng.choice([1, -1]) * FLOAT32_MAX])

    return {"age": number(), "colour": rng.choice([None, "red", "", "blå"]), "mean radius": number(),
            "size": number(), "shape": rng.choice([None, "round", "square"])}


@pytest.mark.parametrize("seed", range(20))
def test_rows_and_columns_read_like_value_by_value(seed: int) -> None:
    rng = random.Random(seed)
    rows = [_random_row(rng) for _ in range(rng.randint(1, 40))]
    _same(_parse({"rows": rows}), rows)
    _same(_parse({"columns": {n: [r[n] for r in rows] for n in rows[0]}}), rows)


BAD_VALUES: list[tuple[str, Any, str]] = [
    ("numeric", "12.5", "expected a number or null, got str"),
    ("numeric", True, "expected a number or null, got bool"),
    ("numeric", [1.0], "expected a number or null, got list"),
    ("numeric", {"v": 1}, "expected a number or null, got dict"),
    ("numeric", 1e39, "number out of range"),
    ("numeric", -(10**40), "number out of range"),
    ("numeric", 10**400, "number out of range"),
    ("categorical", 3, "expected a string or null, got int"),
    ("categorical", False, "expected a string or null, got bool"),
    ("categorical", ["red"], "expected a string or null, got list"),
]


@pytest.mark.parametrize("seed", range(30))
def test_the_first_bad_value_in_row_order_is_named(seed: int) -> None:
    rng = random.Random(1000 + seed)
    rows = [_random_row(rng) for _ in range(rng.randint(1, 12))]
    planted = []
    for _ in range(rng.randint(1, 3)):
        kind, value, message = rng.choice(BAD_VALUES)
        i = rng.randrange(len(rows))
        name = rng.choice(NUMERIC if kind == "numeric" else CATEGORICAL)
        rows[i][name] = value
        planted.append((i, name))
    # Row order, and within a row the numeric features before the categorical ones.
    order = {n: k for k, n in enumerate(NUMERIC + CATEGORICAL)}
    i, name = min(planted, key=lambda p: (p[0], order[p[1]]))
    expected_message = next(m for k, v, m in BAD_VALUES if k == ("numeric" if name in NUMERIC else "categorical")
                            and type(v) is type(rows[i][name]) and v == rows[i][name])
    err = _refusal(json.dumps({"rows": rows}).encode())
    assert (err.status, err.field, err.message) == (422, f"rows[{i}].{name}", expected_message)
    columns = {n: [r[n] for r in rows] for n in rows[0]}
    err = _refusal(json.dumps({"columns": columns}).encode())
    # Columns are read feature by feature: the first bad feature in schema-group order, then row.
    ci, cname = min(planted, key=lambda p: (order[p[1]], p[0]))
    assert (err.status, err.field) == (422, f"columns.{cname}[{ci}]")


@pytest.mark.parametrize(("body", "status", "field", "message"), [
    (b'{"rows": [', 400, None, "the body is not valid JSON"),
    (b"[1]", 400, None, None),
    (b'{"rows": [], "columns": {}}', 400, None, None),
    (b'{"rows": [{"age": NaN}]}', 422, None, "NaN is not accepted: send null for a missing value"),
    (b'{"rows": [{"age": -Infinity}]}', 422, None, "-Infinity is not accepted: send null for a missing value"),
    (b'{"rows": ' + b"[" * 5000 + b"]" * 5000 + b"}", 400, None, None),
    (b'{"rows": []}', 422, "rows", None),
    (b'{"rows": {}}', 422, "rows", None),
    (b'{"rows": [1]}', 422, "rows[0]", "each row must be an object"),
    (b'{"columns": {"age": [1]}}', 422, "columns.colour", "missing feature 'colour'"),
    (b'{"columns": []}', 422, "columns", None),
])
def test_malformed_bodies_are_refused_with_a_reason(body: bytes, status: int, field: str | None,
                                                     message: str | None) -> None:
    err = _refusal(body)
    assert err.status == status and err.field == field
    if message is not None:
        assert err.message == message


def test_missing_and_unknown_features_are_named() -> None:
    row = {"age": 1, "colour": "red", "mean radius": 2.0, "size": 3, "shape": None}
    err = _refusal(json.dumps({"rows": [row, {k: v for k, v in row.items() if k != "size"}]}).encode())
    assert (err.field, err.message) == ("rows[1].size", "missing feature 'size'")
    err = _refusal(json.dumps({"rows": [{**row, "weight": 1}]}).encode())
    assert (err.field, err.message) == ("rows[0].weight", "unknown feature 'weight'")
    cols = {k: [v] for k, v in row.items()}
    err = _refusal(json.dumps({"columns": {**cols, "size": [1, 2]}}).encode())
    assert (err.status, err.field) == (422, "columns")
    err = _refusal(json.dumps({"columns": {**cols, "size": 1}}).encode())
    assert (err.status, err.field) == (422, "columns.size")


def test_row_limits() -> None:
    row = {"age": 1, "colour": "red", "mean radius": 2.0, "size": 3, "shape": None}
    assert _parse({"rows": [row] * 5}, max_rows=5).n == 5
    err = _refusal(json.dumps({"rows": [row] * 6}).encode(), max_rows=5)
    assert (err.status, err.field) == (413, "rows")
    err = _refusal(json.dumps({"columns": {k: [v] * 6 for k, v in row.items()}}).encode(), max_rows=5)
    assert (err.status, err.field) == (413, "columns")


def test_one_numeric_feature_and_none() -> None:
    one = {"features": [{"name": "x", "kind": "numeric"}]}
    batch = _parse({"rows": [{"x": 1}, {"x": None}]}, one)
    np.testing.assert_array_equal(batch.numeric, [[1.0], [math.nan]])
    only_text = {"features": [{"name": "c", "kind": "categorical"}]}
    batch = _parse({"columns": {"c": ["a", None]}}, only_text)
    assert batch.numeric.shape == (2, 0) and batch.categorical == {"c": ["a", None]}


def test_batch_from_columns_matches_the_parser() -> None:
    rng = random.Random(7)
    rows = [_random_row(rng) for _ in range(25)]
    columns = {n: [r[n] for r in rows] for n in rows[0]}
    built = Batch.from_columns({**columns, "colour": [math.nan if v is None else v for v in columns["colour"]]},
                               SCHEMA)
    _same(built, rows)
