"""The /predict body parser, in-process: the vectorised path agrees with a value-by-value reading,
and every refusal names the first bad field in row order."""

from __future__ import annotations

import json
import math
import random
from typing import Any

import numpy as np
import pytest

from modelshelf.pipeline.features import Batch
from modelshelf.serve import payload
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


# --- the body is UTF-8 JSON, and no object holds a key twice -------------------------------------

ROW = {"age": 1, "colour": "red", "mean radius": 2.0, "size": 3, "shape": None}


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-16-be", "utf-32", "utf-32-le"])
def test_a_body_in_another_encoding_is_refused(encoding: str) -> None:
    err = _refusal(json.dumps({"rows": [ROW]}).encode(encoding))
    assert (err.status, err.message) == (400, "the body must be UTF-8 JSON")


@pytest.mark.parametrize("text", [b'"\xff"', b'"\xed\xa0\x80"', b'"\xc0\xae"', b'"bl\xe5"'],
                         ids=["invalid-byte", "encoded-surrogate", "overlong", "latin-1"])
def test_invalid_utf8_is_refused_even_where_the_standard_library_would_read_it(text: bytes) -> None:
    body = json.dumps({"rows": [{**ROW, "colour": "@@"}]}).encode().replace(b'"@@"', text)
    err = _refusal(body)
    assert (err.status, err.message) == (400, "the body must be UTF-8 JSON")


def test_a_utf8_byte_order_mark_is_ignored() -> None:
    """RFC 8259 lets a parser ignore it; here it is, for the whole body as for one that needs the
    standard library (an integer beyond 64 bits)."""
    for row in (ROW, {**ROW, "size": 10**30}):
        body = json.dumps({"rows": [row]}).encode()
        _same(Parser(SCHEMA, 100).parse(b"\xef\xbb\xbf" + body), [row])


@pytest.mark.parametrize("where", ["key", "value"])
def test_an_unpaired_surrogate_escape_is_a_400_that_can_be_encoded(where: str) -> None:
    row = {**ROW, "@@": 1} if where == "key" else {**ROW, "colour": "@@"}
    err = _refusal(json.dumps({"rows": [row]}).encode().replace(b'"@@"', b'"\\udc00"'))
    assert err.status == 400 and "surrogate" in err.message
    json.dumps(err.body()).encode()  # the answer is encodable
    paired = json.dumps({"rows": [{**ROW, "colour": "\U0001f600"}]}).encode()  # an escaped pair is fine
    assert b"\\ud83d\\ude00" in paired and Parser(SCHEMA, 100).parse(paired).categorical["colour"] == ["\U0001f600"]


def _twice(body: bytes, after: bytes, member: bytes) -> bytes:
    """``body`` with ``member`` inserted after the first ``after``."""
    assert after in body
    return body.replace(after, after + member, 1)


@pytest.mark.parametrize(("body", "field"), [
    (_twice(json.dumps({"rows": [ROW]}).encode(), b"[{", b'"size": 9, '), "rows[0].size"),
    (_twice(json.dumps({"rows": [ROW, ROW]}).encode(), b'}, {', b'"shape": "round", '), "rows[1].shape"),
    (_twice(json.dumps({"rows": [ROW]}).encode(), b'"shape": null', b', "shape": null'), "rows[0].shape"),
    (json.dumps({"rows": [ROW]}).encode()[:-1] + b', "rows": [' + json.dumps(ROW).encode() + b"]}", "rows"),
    (_twice(json.dumps({"columns": {k: [v] for k, v in ROW.items()}}).encode(), b'"columns": {', b'"age": [7], '),
     "columns.age"),
], ids=["first-row", "second-row", "same-value", "top-level", "columns"])
def test_a_duplicate_key_is_refused_and_named(body: bytes, field: str) -> None:
    err = _refusal(body)
    assert (err.status, err.field, err.message) == (422, field, f"duplicate key '{field.rsplit('.', 1)[-1]}'"
                                                    if "." in field else "duplicate key 'rows'")


COLONS = {"task": "binary", "features": [{"name": "a:b", "kind": "numeric"}, {"name": "c", "kind": "categorical"}]}


def test_escaped_colons_are_not_duplicates_and_cannot_hide_one() -> None:
    """The colon count has its exact check: ``\\u003a`` in a key or value is one colon fewer
    in the text, which a duplicate elsewhere would make up for."""
    parser = Parser(COLONS, 100)
    plain = b'{"rows": [{"a:b": 1, "c": "x:y"}, {"a:b": 2, "c": null}]}'
    escaped = b'{"rows": [{"a\\u003ab": 1, "c": "x\\u003ay"}, {"a:b": 2, "c": null}]}'
    for body in (plain, escaped, b'{"columns": {"a\\u003ab": [1, 2], "c": ["x:y", null]}}'):
        batch = parser.parse(body)
        assert batch.categorical == {"c": ["x:y", None]} and batch.numeric.tolist() == [[1.0], [2.0]]
    # one escaped colon, and one duplicate without a colon: the count alone would match
    hidden = b'{"rows": [{"a:b": 1, "c": "x\\u003ay", "c": "x:y"}, {"a:b": 2, "c": null}]}'
    hidden_too = b'{"rows": [{"a\\u003ab": 1, "c": "x", "c": "y"}]}'
    for body in (hidden, hidden_too):
        with pytest.raises(BadRequest) as info:
            parser.parse(body)
        assert (info.value.status, info.value.field) == (422, "rows[0].c")


@pytest.mark.parametrize("seed", range(20))
def test_duplicates_are_found_wherever_they_are_and_only_then(seed: int) -> None:
    """Random rows with colons in values; a duplicate member planted in some of them, as the
    first or the last of its object."""
    rng = random.Random(500 + seed)
    rows = [{**_random_row(rng), "colour": rng.choice(["a:b", "::", "plain", None])} for _ in range(rng.randint(1, 30))]
    texts = [json.dumps(r, separators=rng.choice([(",", ":"), (", ", ": ")])) for r in rows]
    plant = rng.random() < 0.7
    if plant:
        i = rng.randrange(len(rows))
        name = rng.choice(list(ROW))
        member = f"{json.dumps(name)}: {json.dumps(rng.choice([1, 'x:y', None]))}"
        texts[i] = ("{" + member + ", " + texts[i][1:]) if rng.random() < 0.5 else (texts[i][:-1] + ", " + member + "}")
    body = ('{"rows": [' + ", ".join(texts) + "]}").encode()
    if plant:
        err = _refusal(body)
        assert (err.status, err.field) == (422, f"rows[{i}].{name}")
    else:
        _same(Parser(SCHEMA, 100).parse(body), rows)


# --- large bodies: decoded in pieces, converted in steps -----------------------------------------

def _large(rows: list[dict[str, Any]], form: str, separators: tuple[str, str]) -> bytes:
    doc: Any = {"rows": rows} if form == "rows" else {"columns": {n: [r[n] for r in rows] for n in ROW}}
    return json.dumps(doc, separators=separators).encode()


@pytest.mark.parametrize("form", ["rows", "columns"])
@pytest.mark.parametrize("separators", [(",", ":"), (", ", ": ")], ids=["compact", "spaced"])
@pytest.mark.parametrize("joints", [0, 50], ids=["plain", "joints-in-strings"])
def test_a_large_body_decodes_in_pieces_as_at_once(form: str, separators: tuple[str, str], joints: int) -> None:
    rng = random.Random(3)
    rows = [_random_row(rng) for _ in range(9000)]
    for row in rows[::joints or len(rows) + 1]:
        row["colour"] = "}, {\"x\": 1}, {\"shape\": \"], \""  # what joins two rows or columns, in a string
    body = _large(rows, form, separators) + b"\n"
    assert len(body) > 2 * payload.PIECE and len(rows) > 2 * payload.STEP
    assert payload.loads_large(body) == json.loads(body)
    _same(Parser(SCHEMA, 10_000).batch(payload.loads_large(body), body), rows)
    # the first bad value is named as in a small batch, past the first step too
    rows[2 * payload.STEP + 1]["size"] = "3"
    err = _refusal(_large(rows, form, separators), max_rows=10_000)
    i = 2 * payload.STEP + 1
    assert err.field == (f"rows[{i}].size" if form == "rows" else f"columns.size[{i}]")


@pytest.mark.parametrize("body", [
    b'{"rows": [' + b'{"age": 1}, ' * 30_000 + b'{"age": NaN}]}',
    b'{"rows": [' + b'{"age": 1}, ' * 30_000 + b'{"age": 1}], "x": 1}',
    b'{"rows": [' + b'{"age": 1}, ' * 30_000 + b'{"age": 1}]} ]',
    b'{"rows": [' + b'{"age": 1}, ' * 30_000 + b'{"age": "\\udc00"}]}',
    b'{"columns": {"age": [' + b"1, " * 60_000 + b'1], "age": [1]}}',
    '{"rows": [{"age": 1}]}'.encode("utf-16"),
], ids=["nan", "extra-key", "trailing", "surrogate", "columns-twice", "utf-16"])
def test_a_large_body_gets_the_verdict_of_a_small_one(body: bytes) -> None:
    try:
        whole: Any = ("ok", payload.loads(body))
    except BadRequest as exc:
        whole = (exc.status, exc.message)
    try:
        pieces: Any = ("ok", payload.loads_large(body))
    except BadRequest as exc:
        pieces = (exc.status, exc.message)
    assert pieces == whole
