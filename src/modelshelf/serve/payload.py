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

from modelshelf.pipeline.features import Batch


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
UTF8_BOM = b"\xef\xbb\xbf"
NOT_UTF8 = "the body must be UTF-8 JSON"
# A large body is decoded PIECE bytes at a time and converted STEP rows at a time: each step
# holds the GIL for about half a millisecond (30 numeric features), the loop may take it between.
PIECE = 128 * 1024
STEP = 256
_SPACE = b" \t\r\n"


def loads(body: bytes) -> Any:
    """The JSON in a request body; a :class:`BadRequest` when it is not UTF-8 JSON or holds NaN.

    A UTF-8 byte order mark is ignored (RFC 8259 allows it).  Duplicate keys are not seen
    here (the last one wins): :meth:`Parser.batch` refuses them, given the body."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        pass  # orjson is stricter than the standard library (big numbers): ask it, for the verdict
    if body[:3] == UTF8_BOM:
        body = body[3:]
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError:
            pass
    try:
        # strictly: json.loads(bytes) would take UTF-16 or UTF-32, and encoded surrogates
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest(400, NOT_UTF8) from None
    if "\0" in text:  # never in JSON text (escaped in strings): UTF-16 or UTF-32 without a BOM
        raise BadRequest(400, NOT_UTF8)
    try:
        # NaN and Infinity are not JSON; missing values are null.
        data = json.loads(text, parse_constant=_reject_constant, object_pairs_hook=_object)
    except ValueError as exc:
        if exc.args and exc.args[0] in ("NaN", "Infinity", "-Infinity"):
            raise BadRequest(422, f"{exc.args[0]} is not accepted: send null for a missing value") from None
        raise BadRequest(400, "the body is not valid JSON") from None
    except RecursionError:
        raise BadRequest(400, "the body is nested too deeply") from None
    if ("\\ud" in text or "\\uD" in text) and not _encodable(data):
        # a lone surrogate escape: orjson refuses it, and no answer naming it could be encoded
        raise BadRequest(400, "the body holds an unpaired UTF-16 surrogate escape")
    return data


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # A Python function, not dict itself: between two objects another thread may take the GIL,
    # which json.loads otherwise holds throughout.  The last of two equal keys wins, as in orjson.
    return dict(pairs)


def _encodable(data: Any) -> bool:
    try:
        json.dumps(data, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


# (the body's start up to its list or object of items, the end that closes them, what joins
# two items, and the brackets that make a piece of items a JSON text)
_SPLITS = ((rb'[ \t\r\n]*\{[ \t\r\n]*"rows"[ \t\r\n]*:[ \t\r\n]*\[', b"]", rb"\}[ \t\r\n]*,[ \t\r\n]*\{", b"[]"),
           (rb'[ \t\r\n]*\{[ \t\r\n]*"columns"[ \t\r\n]*:[ \t\r\n]*\{', b"}",
            rb'\][ \t\r\n]*,[ \t\r\n]*"', b"{}"))


def loads_large(body: bytes) -> Any:
    """:func:`loads`, decoding ``{"rows": [{…}, …]}`` a few rows at a time and ``{"columns":
    {…}}`` a few columns at a time, so that other threads get the GIL in between (one
    ``orjson.loads`` of a large body holds it for tens of milliseconds).

    Each piece is decoded as a JSON text of its own; since JSON values compose, the pieces
    all decode exactly when the whole does, to the same items.  A cut inside a string leaves
    a piece with an unclosed string: then, as for any error, the whole body is decoded at once."""
    import re  # large bodies only

    view = memoryview(body)  # pieces are copied from it, never the whole body
    tail = body[-64:]  # the end: a closing bracket and a brace, and little space (else: at once)
    base = len(body) - len(tail)
    for head, close, joint, brackets in _SPLITS:
        m = re.match(head, body)
        if m is None:
            continue
        tail = tail.rstrip(_SPACE)
        if not tail.endswith(b"}"):
            break
        tail = tail[:-1].rstrip(_SPACE)
        if not tail.endswith(close):
            break
        stop = base + len(tail) - 1  # where the items' closing bracket is
        join = re.compile(joint)
        pos = m.end()
        parts: list[Any] = []
        while True:
            cut = join.search(body, pos + PIECE, stop) if pos + PIECE < stop else None
            upto = cut.start() + 1 if cut else stop  # the joint's first byte ends this piece
            try:
                parts.append(orjson.loads(brackets[:1] + view[pos:upto] + brackets[1:]))
            except orjson.JSONDecodeError:
                break
            if cut is None:
                if brackets == b"[]":
                    return {"rows": [item for part in parts for item in part]}
                columns: dict[str, Any] = {}
                for part in parts:
                    columns.update(part)  # a key in two pieces: the last wins, as in one (then refused)
                return {"columns": columns}
            pos = cut.end() - 1  # and its last byte begins the next
        break
    return loads(body)


def release(data: Any) -> None:
    """Free a decoded large body a few rows (or one column) at a time: freeing it at once is
    one C call that holds the GIL for milliseconds (8 ms for 9,000 rows of 30 numbers)."""
    if type(data) is not dict:
        return
    rows, columns = data.get("rows"), data.get("columns")
    if type(rows) is list:
        while rows:
            del rows[-STEP:]
    elif type(columns) is dict:
        while columns:
            columns.popitem()


def _colons(body: bytes) -> int:
    """``body.count(b":")``, a megabyte at a time for a large body (see :data:`STEP`)."""
    if len(body) <= 1 << 20:
        return body.count(b":")
    return sum(body.count(b":", i, i + (1 << 20)) for i in range(0, len(body), 1 << 20))


class _Pairs(list):  # type: ignore[type-arg]
    """An object's members in order, duplicates kept (``object_pairs_hook``)."""


def _pairs(pairs: list[tuple[str, Any]]) -> _Pairs:
    return _Pairs(pairs)  # a Python function: see _object


def check_unique(body: bytes, expected: int, colons_in_strings: bool) -> None:
    """Raise naming the first duplicate key in ``body``, which decoded to objects with ``expected``
    members and colons inside strings in all (keys and values).

    Every member has exactly one ``:`` outside strings, so without duplicates the body holds
    ``expected`` colons, unless an escaped colon (``\\u003a``) stands for one: only when a
    string holds a colon, and the body a backslash, or the count is off, is the body decoded
    again keeping every member."""
    if _colons(body) == expected and not (colons_in_strings and b"\\" in body):
        return
    text = body[3:] if body[:3] == UTF8_BOM else body
    try:
        doc = json.loads(text.decode("utf-8"), object_pairs_hook=_pairs)
    except (ValueError, RecursionError):  # decoded once already: not expected
        raise BadRequest(400, "the body is not valid JSON") from None
    _no_duplicate(doc, "")


def _no_duplicate(node: Any, where: str) -> None:
    if type(node) is _Pairs:
        seen = set()
        for key, value in node:
            field = f"{where}.{key}" if where else key
            if key in seen:
                raise BadRequest(422, f"duplicate key '{key}'", field)
            seen.add(key)
            _no_duplicate(value, field)
    elif type(node) is list:
        for i, value in enumerate(node):
            _no_duplicate(value, f"{where}[{i}]")


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
        # The ID column (data.id) may come along with the features: accepted and ignored.
        self.id: str | None = (schema.get("id") or {}).get("name")
        self.wanted_with_id = self.wanted | {self.id} if self.id is not None else self.wanted
        self.name_colons = sum(n.count(":") for n in self.wanted)
        self.row_colons = len(self.wanted) + self.name_colons  # in one row's text, without duplicates
        get = operator.itemgetter(*self.numeric) if self.numeric else None
        # itemgetter of one key returns the value, not a 1-tuple
        self._numeric_of = (lambda row: (get(row),)) if len(self.numeric) == 1 else get

    def parse(self, body: bytes) -> Batch:
        """The rows of ``{"rows": [{…}, …]}`` or ``{"columns": {name: […]}}``, checked."""
        return self.batch(loads(body), body)

    def batch(self, data: Any, body: bytes | None = None) -> Batch:
        """:meth:`parse` for a body already decoded by :func:`loads`; with the ``body`` it was
        decoded from, duplicate keys are refused too."""
        if type(data) is not dict or data.keys() not in ({"rows"}, {"columns"}):
            raise BadRequest(400, 'send {"rows": [{feature: value, …}, …]} or {"columns": {feature: [values]}}, '
                             "and nothing else")
        batch = self._rows(data["rows"]) if "rows" in data else self._columns(data["columns"])
        if body is not None:
            strings = sum("".join(filter(None, v)).count(":") for v in batch.categorical.values())
            members = batch.n * self.row_colons if "rows" in data else self.row_colons
            if self.id is not None:  # one member (and its name's colons) per object holding the ID
                holders = sum(self.id in row for row in data["rows"]) if "rows" in data else self.id in data["columns"]
                members += holders * (1 + self.id.count(":"))
            check_unique(body, 1 + members + strings, bool(self.name_colons or strings))
        return batch

    def _rows(self, rows: Any) -> Batch:
        if not isinstance(rows, list) or not rows:
            raise BadRequest(422, "rows must be a non-empty list of objects", "rows")
        if len(rows) > self.max_rows:
            raise BadRequest(413, f"{len(rows)} rows is more than the limit of {self.max_rows}", "rows")
        wanted = self.wanted
        for i, row in enumerate(rows):
            if type(row) is not dict:
                raise BadRequest(422, "each row must be an object", f"rows[{i}]")
            if row.keys() != wanted and row.keys() != self.wanted_with_id:
                _check_keys(row.keys(), self.names, f"rows[{i}]", self.id)
        matrix = self._row_matrix(rows)
        categorical = {n: [row[n] for row in rows] for n in self.categorical}
        if matrix is None or not _all_text(categorical):  # name the first refused value, in row order
            _explain((row[n], self.kinds[n], f"rows[{i}].{n}")
                     for i, row in enumerate(rows) for n in (*self.numeric, *self.categorical))
        return Batch(matrix, categorical, len(rows))

    def _columns(self, cols: Any) -> Batch:
        if not isinstance(cols, dict):
            raise BadRequest(422, "columns must be an object of lists", "columns")
        _check_keys(cols.keys(), self.names, "columns", self.id)
        lengths = {len(v) if type(v) is list else -1 for v in cols.values()}
        if -1 in lengths:
            bad = next(k for k, v in cols.items() if type(v) is not list)
            raise BadRequest(422, "each column must be a list", f"columns.{bad}")
        if len(lengths) != 1 or 0 in lengths:
            raise BadRequest(422, "columns must be non-empty lists of one length", "columns")
        n = lengths.pop()
        if n > self.max_rows:
            raise BadRequest(413, f"{n} rows is more than the limit of {self.max_rows}", "columns")
        matrix = self._column_matrix(cols, n)
        categorical = {name: cols[name] for name in self.categorical}
        if matrix is None or not _all_text(categorical):  # name the first refused value, column by column
            _explain((v, self.kinds[name], f"columns.{name}[{i}]")
                     for name in (*self.numeric, *self.categorical) for i, v in enumerate(cols[name]))
        return Batch(matrix, categorical, n)

    # The matrices are built STEP rows at a time: each step is a few C calls, and another
    # thread (the server's loop) may take the GIL only between them.
    def _row_matrix(self, rows: list[dict[str, Any]]) -> np.ndarray | None:
        """The numeric features as ``[n, k]`` float64 (null → NaN), or None when some value is
        not a number in float32's range (the caller then finds and names it)."""
        n = len(rows)
        if n <= STEP:
            values = list(map(self._numeric_of, rows)) if self.numeric else []
            return np.array(values, dtype=np.float64).reshape(n, len(self.numeric)) \
                if _fit(list(itertools.chain.from_iterable(values))) else None
        matrix = np.empty((n, len(self.numeric)), dtype=np.float64)
        if self.numeric:
            for lo in range(0, n, STEP):
                values = list(map(self._numeric_of, rows[lo:lo + STEP]))
                if not _fit(list(itertools.chain.from_iterable(values))):
                    return None
                matrix[lo:lo + STEP] = values
        return matrix

    def _column_matrix(self, cols: Mapping[str, list[Any]], n: int) -> np.ndarray | None:
        """:meth:`_row_matrix` for columns."""
        matrix = np.empty((n, len(self.numeric)), dtype=np.float64)
        step = STEP * max(1, len(self.numeric))
        for j, name in enumerate(self.numeric):
            column = cols[name]
            for lo in range(0, n, step):
                part = column[lo:lo + step] if n > step else column
                if not _fit(part):
                    return None
                matrix[lo:lo + step, j] = part
        return matrix


def _fit(values: list[Any]) -> bool:
    """Whether every value is a number within float32's range, or null."""
    types = set(map(type, values))
    if not _NUMBER.issuperset(types):
        return False
    present = values if _NONE not in types else [v for v in values if v is not None]
    # beyond float32 is refused (the graph computes in float32); min/max compare ints exactly
    return not present or (-FLOAT32_MAX <= min(present) and max(present) <= FLOAT32_MAX)


def _all_text(categorical: Mapping[str, list[Any]]) -> bool:
    return all(_TEXT.issuperset(map(type, v)) for v in categorical.values())


def _explain(values: Iterable[tuple[Any, str, str]]) -> NoReturn:
    """Raise for the first ``(value, kind, field)`` the model cannot take (the fast path refused one)."""
    for v, kind, field in values:
        _check_value(v, kind, field)
    raise AssertionError("a value failed the fast check but passed the full one")


def _check_keys(keys: Any, names: list[str], where: str, id_name: str | None = None) -> None:
    given = set(keys) - {id_name}
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
    """An OpenAPI 3.0 document for this model's endpoints, typed by its input schema.

    What JSON Schema cannot say is said in descriptions: columns of one length, unique keys,
    UTF-8, and the byte limit on bodies (``--max-body``)."""
    schema = card["input_schema"]
    props: dict[str, Any] = {}
    for f in schema["features"]:
        if f["kind"] == "numeric":
            props[f["name"]] = {"type": "number", "nullable": True, "minimum": -FLOAT32_MAX,
                                "maximum": FLOAT32_MAX}
        else:
            props[f["name"]] = {"type": "string", "nullable": True}
    names = [f["name"] for f in schema["features"]]
    if schema.get("id"):  # optional, accepted and ignored
        props = {**props, schema["id"]["name"]: {"description": "the row's ID (data.id), ignored by the model",
                                                 "nullable": True, "oneOf": [{"type": "string"}, {"type": "number"}]}}
    row = {"type": "object", "properties": props, "required": names, "additionalProperties": False}
    columns = {"type": "object", "required": names, "additionalProperties": False,
               "description": "one list per feature, all of the same length (a row per index); "
                              "lists of different lengths are refused with 422",
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
    maybe = {"type": "string", "nullable": True}
    health = {"type": "object", "required": ["status", "version", "format", "following", "error"], "properties": {
        "status": {"type": "string", "enum": ["ok", "degraded"]}, "version": maybe, "format": maybe,
        "following": {"type": "string"}, "error": maybe}}
    ready = {"type": "object", "required": ["ready"], "properties": {"ready": {"type": "boolean"},
                                                                     "version": {"type": "string"}}}
    reloaded = {"type": "object", "required": ["result", "version", "error"], "properties": {
        "result": {"type": "string"}, "version": maybe, "error": maybe}}

    def json_of(s: Mapping[str, Any]) -> dict[str, Any]:
        return {"application/json": {"schema": s}}

    def answer(description: str, s: Mapping[str, Any] = error) -> dict[str, Any]:
        return {"description": description, "content": json_of(s)}

    too_large = "a body larger than the server's limit (--max-body bytes)"
    no_model = answer("no model loaded yet")

    def get(summary: str, responses: dict[str, Any]) -> dict[str, Any]:
        """GET, and HEAD: the same answers without their bodies."""
        return {"get": {"summary": summary, "responses": responses},
                "head": {"summary": f"{summary}: the headers of GET, without its body",
                         "responses": {code: {"description": r["description"]} for code, r in responses.items()}}}

    return {
        "openapi": "3.0.3",
        "info": {"title": f"modelshelf: {card['name']}", "version": str(card["version"])},
        "paths": {
            "/predict": {"post": {
                "summary": "predict for rows or columns",
                "description": "The body is UTF-8 JSON (a UTF-8 byte order mark is ignored) with no key twice "
                               "in an object; null is a missing value.",
                "requestBody": {"required": True, "content": json_of({"oneOf": [
                    {"type": "object", "required": ["rows"], "additionalProperties": False,
                     "properties": {"rows": {"type": "array", "minItems": 1, "maxItems": max_rows, "items": row}}},
                    {"type": "object", "required": ["columns"], "additionalProperties": False,
                     "properties": {"columns": columns}}]})},
                "responses": {
                    "200": answer("predictions, with the version that made them", prediction),
                    "400": answer("not UTF-8 JSON, or neither rows nor columns"),
                    "413": answer(f"more than {max_rows} rows, or {too_large}"),
                    "422": answer("invalid features: missing, unknown or repeated, values of the wrong type or "
                                  "beyond float32, or columns of different lengths"),
                    "503": no_model}}},
            "/ping": get("liveness, nothing else", {"200": answer("alive", {
                "type": "object", "required": ["ok"], "properties": {"ok": {"type": "boolean"}}})}),
            "/health": get("liveness, the version served and the last load error", {
                "200": answer("ok, or degraded: a newer version was refused", health)}),
            "/ready": get("200 once a verified model is loaded", {
                "200": answer("ready", {**ready, "required": ["ready", "version"]}),
                "503": answer("no model yet", ready)}),
            "/model": get("the served model's card", {
                "200": answer("the card", {"type": "object", "required": ["name", "version", "input_schema"]}),
                "503": no_model}),
            "/metrics": get("Prometheus metrics", {"200": {
                "description": "text exposition format 0.0.4",
                "content": {"text/plain": {"schema": {"type": "string"}}}}}),
            "/openapi.json": get("this document", {
                "200": answer("OpenAPI 3.0", {"type": "object", "required": ["openapi", "info", "paths"]}),
                "503": no_model}),
            "/admin/reload": {"post": {
                "summary": "resolve the followed version again and swap to it if it changed",
                "security": [{"bearer": []}],
                "responses": {
                    "200": answer("what happened: unchanged, serving a new version, or refused", reloaded),
                    "401": answer("missing or wrong bearer token (the scheme's case does not matter)"),
                    "403": answer("disabled: the server has no admin token"),
                    "413": answer(too_large)}}},
        },
        "components": {"securitySchemes": {"bearer": {
            "type": "http", "scheme": "bearer", "description": "the server's SHELF_ADMIN_TOKEN"}}},
    }
