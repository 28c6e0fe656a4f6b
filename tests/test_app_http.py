"""The app's HTTP manners: 405 with ``Allow``, HEAD as GET, the bearer scheme in any case,
duplicate keys refused on the one-row lane too, large bodies decoded off the loop, errors
logged.  In-process through ``App.handle`` (and the ASGI entry) over a small real model, then
over HTTP against a real ``shelf serve`` process."""

from __future__ import annotations

import asyncio
import http.client
import json
import logging
from typing import Any

import numpy as np
import orjson
import pandas as pd
import pytest

from modelshelf import onnxcopy
from modelshelf.pipeline.data import schema_of
from modelshelf.params import TrainParams
from modelshelf.serve import onerow
from modelshelf.serve.app import ALLOW, INLINE_BODY, ROUTES, App, Reply
from modelshelf.serve.holder import Holder
from modelshelf.serve.payload import Parser, openapi
from modelshelf.serve.runner import Loaded, OnnxRunner
from modelshelf.pipeline.train import train

from test_serve import (  # noqa: F401 - fixtures
    TOKEN,
    Server,
    held_out,
    module_project,
    rows_body,
    server,
    template_v1,
)

GETS = sorted(p for p, methods in ALLOW.items() if b"GET" in methods)
METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS")


# --- in-process ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model() -> tuple[dict[str, Any], OnnxRunner, list[dict[str, Any]]]:
    """A logistic regression over three numeric features, one with a colon in its name."""
    rng = np.random.default_rng(0)
    n = 300
    frame = pd.DataFrame({"a": rng.normal(size=n), "b b": rng.normal(scale=50, size=n),
                          "c:d": rng.integers(-9, 9, n)})
    frame["y"] = ((frame["a"] - frame["b b"] / 50 + frame["c:d"] / 9 + rng.normal(scale=0.3, size=n)) > 0).astype(int)
    schema = schema_of(frame, "y", "binary")
    X, y = frame.drop(columns=["y"]), frame["y"]
    pipeline = train(X[:200], y[:200], TrainParams("sklearn.linear_model.LogisticRegression", {}), schema, 0)
    exp = onnxcopy.export(pipeline, schema, X[200:], y[200:], regression_tolerance=1e-3)
    assert exp.data is not None, exp.reason
    return schema, OnnxRunner(exp.data, schema), X[200:].to_dict("records")


def _app(model: tuple[dict[str, Any], OnnxRunner, list[dict[str, Any]]], *, lane: bool = True,
         admin_token: str | None = "tok", parser_schema: dict[str, Any] | None = None) -> App:
    schema, runner, _ = model
    card = {"name": "m", "version": "1.2.3", "input_schema": schema}
    one_row = onerow.build(runner) if lane else None
    assert (one_row is not None) == lane
    holder = Holder("m")
    holder.current = Loaded("m", "1.2.3", card, runner, Parser(parser_schema or schema, 10_000), b'{"card":1}',
                            orjson.dumps(openapi(card, 10_000)), one_row)
    return App(holder, admin_token=admin_token, reload_hook=lambda: "reloaded")


def _now(result: Any) -> Reply:
    assert type(result) is tuple, "answered later, in a worker thread"
    return result


def _later(result: Any) -> Reply:
    assert callable(result), f"answered on the loop: {result!r}"
    return result()


def test_allow_names_each_routes_methods_as_the_document_does(model: Any) -> None:
    app = _app(model)
    assert set(ALLOW) == ROUTES
    doc = orjson.loads(app.holder.current.openapi_json)
    assert {p: {m.upper() for m in ops} for p, ops in doc["paths"].items()} == \
        {p: set(m.decode().split(", ")) for p, m in ALLOW.items()}
    for path, allowed in ALLOW.items():
        for method in METHODS:
            if method in allowed.decode().split(", "):
                continue
            status, ctype, body = _now(app.handle(method, path, b""))
            assert status == 405 and ctype == b"application/json", (method, path)
            assert allowed.decode() in orjson.loads(body)["error"], (method, path, body)


def test_head_is_answered_as_get(model: Any) -> None:
    app = _app(model)
    for path in GETS:
        head, get = _now(app.handle("HEAD", path, b"")), _now(app.handle("GET", path, b""))
        assert head[:2] == get[:2] and head[0] == 200, path
        if path != "/metrics":  # which counts the request before
            assert head == get, path


def _asgi(app: App, method: str, path: str, body: bytes = b"") -> tuple[int, dict[bytes, bytes], bytes]:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(app({"type": "http", "method": method, "path": path, "headers": []}, receive, send))
    return sent[0]["status"], dict(sent[0]["headers"]), b"".join(m.get("body", b"") for m in sent[1:])


def test_the_asgi_app_answers_head_and_says_allow(model: Any) -> None:
    app = _app(model)
    for path in GETS:
        status, headers, body = _asgi(app, "HEAD", path)
        _, _, got = _asgi(app, "GET", path)
        assert status == 200 and body == b"", path
        if path != "/metrics":
            assert int(headers[b"content-length"]) == len(got), path
    for method, path, allow in (("GET", "/predict", b"POST"), ("POST", "/health", b"GET, HEAD"),
                                ("HEAD", "/admin/reload", b"POST"), ("DELETE", "/ping", b"GET, HEAD")):
        status, headers, body = _asgi(app, method, path)
        assert (status, headers.get(b"allow")) == (405, allow), (method, path, headers)
        assert (body == b"") == (method == "HEAD")


@pytest.mark.parametrize("authorization", [b"Bearer tok", b"bearer tok", b"BEARER tok", b"bEaReR tok",
                                           b"Bearer   tok", b" Bearer tok "])
def test_the_bearer_scheme_is_case_insensitive(model: Any, authorization: bytes) -> None:
    status, _, body = _later(_app(model).handle("POST", "/admin/reload", b"", authorization))
    assert status == 200 and orjson.loads(body)["result"] == "reloaded"


@pytest.mark.parametrize("authorization", [b"", b"tok", b"Bearer", b"Bearer ", b"Bearertok", b"Bearer tokx",
                                           b"Bearer to", b"Basic tok", b"Bearer tok tok", b"Bearer \xe9t\xe9",
                                           b"\xff\xfe tok", "Bearer tök".encode()])
def test_wrong_credentials_are_a_401_answered_at_once(model: Any, authorization: bytes) -> None:
    """No worker thread for a stranger; bytes that are not ASCII are just wrong, never a 500."""
    status, _, body = _now(_app(model).handle("POST", "/admin/reload", b"", authorization))
    assert status == 401 and "bearer" in orjson.loads(body)["error"]
    status, _, _ = _now(_app(model, admin_token=None).handle("POST", "/admin/reload", b"", authorization))
    assert status == 403


def _one(row: dict[str, Any]) -> bytes:
    return json.dumps({"rows": [row]}).encode()


def test_duplicate_keys_are_refused_on_the_one_row_lane_as_elsewhere(model: Any) -> None:
    _, _, rows = model
    with_lane, without = _app(model), _app(model, lane=False)
    row = rows[0]
    plain = _one(row)
    escaped = plain.replace(b'"c:d"', b'"c\\u003ad"')  # one colon fewer in the text, none more parsed
    doubled = plain.replace(b'{"a": ', b'{"a": 0.5, "a": ')
    hidden = escaped.replace(b'{"a": ', b'{"a": 0.5, "a": ')  # one escape, one duplicate: the count matches
    assert hidden.count(b":") == plain.count(b":")
    for app in (with_lane, without):
        ok = _now(app.handle("POST", "/predict", plain))
        assert ok[0] == 200 and _now(app.handle("POST", "/predict", escaped)) == ok
        for body in (doubled, hidden):
            status, _, answer = _now(app.handle("POST", "/predict", body))
            assert (status, orjson.loads(answer)) == (422, {"error": "duplicate key 'a'", "field": "rows[0].a"})
    assert _now(with_lane.handle("POST", "/predict", plain)) == _now(without.handle("POST", "/predict", plain))


def test_a_large_body_is_decoded_and_checked_off_the_loop(model: Any) -> None:
    _, runner, rows = model
    app = _app(model)
    # undecoded: even a body that is not JSON is left to the worker thread
    status, _, body = _later(app.handle("POST", "/predict", b'{"rows": [' + b" " * INLINE_BODY + b"}"))
    assert (status, orjson.loads(body)["error"]) == (400, "the body is not valid JSON")
    many = [rows[i % len(rows)] for i in range(2000)]
    big = json.dumps({"rows": many}).encode()
    assert len(big) > INLINE_BODY
    status, _, body = _later(app.handle("POST", "/predict", big))
    assert status == 200
    want = runner.predict(Parser(model[0], 10_000).parse(big))
    assert orjson.loads(body) == {"model": "m", "version": "1.2.3", **want}
    # one row padded beyond the limit: the lane, in the worker thread
    one = _one(rows[0])
    padded = one[:-1] + b" " * INLINE_BODY + b"}"
    assert _later(app.handle("POST", "/predict", padded)) == _now(app.handle("POST", "/predict", one))
    # a duplicate in a large body, at the end
    doubled = big[:-3] + b', "a": 1}]}'
    status, _, body = _later(app.handle("POST", "/predict", doubled))
    assert (status, orjson.loads(body)["field"]) == (422, "rows[1999].a")
    # at the limit: at once
    exact = one[:-1] + b" " * (INLINE_BODY - len(one)) + b"}"
    assert len(exact) == INLINE_BODY and _now(app.handle("POST", "/predict", exact))[0] == 200


def test_an_unexpected_error_is_a_500_that_is_logged(model: Any, caplog: pytest.LogCaptureFixture) -> None:
    """A parser for two of the graph's three features: onnxruntime refuses the tensor."""
    schema, _, rows = model
    two = {**schema, "features": schema["features"][:2]}
    app = _app(model, lane=False, parser_schema=two)
    names = [f["name"] for f in two["features"]]
    for n, answer in ((1, _now), (100, _later)):  # on the loop, and in a worker thread
        body = json.dumps({"rows": [{k: rows[0][k] for k in names}] * n}).encode()
        caplog.clear()
        with caplog.at_level(logging.ERROR, logger="modelshelf.serve"):
            status, _, text = answer(app.handle("POST", "/predict", body))
        assert status == 500 and orjson.loads(text)["error"].startswith("internal error: "), text
        logged = [r for r in caplog.records if r.name == "modelshelf.serve" and r.levelno == logging.ERROR]
        assert len(logged) == 1 and logged[0].exc_info is not None and "/predict" in logged[0].getMessage()
    assert _now(app.handle("GET", "/ping", b""))[0] == 200


def test_model_and_document_without_a_model_are_a_503_not_a_405() -> None:
    app = App(Holder("unused"), admin_token=None)
    for path in ("/model", "/openapi.json", "/ready"):
        assert _now(app.handle("GET", path, b""))[0] == 503, path
    assert _now(app.handle("POST", "/predict", b"{}"))[0] == 503


# --- over HTTP, against shelf serve -------------------------------------------------------------

def _request(conn: http.client.HTTPConnection, method: str, path: str, body: bytes | None = None,
             headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    conn.request(method, path, body=body, headers=headers or {})
    resp = conn.getresponse()
    return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()


@pytest.mark.slow
def test_head_over_http_is_get_without_the_body(server: Server) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        for path in GETS:
            status, headers, body = _request(conn, "HEAD", path)
            g_status, g_headers, g_body = _request(conn, "GET", path)  # the same connection: still in step
            assert (status, body) == (200, b"") and g_status == 200, path
            assert headers["content-type"] == g_headers["content-type"], path
            if path != "/metrics":
                assert int(headers["content-length"]) == len(g_body), path
        status, headers, body = _request(conn, "HEAD", "/predict")
        assert (status, headers.get("allow"), body) == (405, "POST", b"")
        assert _request(conn, "GET", "/ping")[0] == 200
    finally:
        conn.close()


@pytest.mark.slow
@pytest.mark.parametrize("scheme", ["bearer", "BEARER", "Bearer"])
def test_admin_reload_takes_the_bearer_scheme_in_any_case(server: Server, scheme: str) -> None:
    r = server.post("/admin/reload", b"", headers={"Authorization": f"{scheme} {TOKEN}"})
    assert r.status == 200 and r.json()["result"].startswith("unchanged"), r
    assert server.post("/admin/reload", b"", headers={"Authorization": f"{scheme} {TOKEN[:-1]}"}).status == 401


@pytest.mark.slow
def test_a_9000_row_batch_is_answered_like_its_rows(server: Server, module_project: Any) -> None:
    X = held_out(module_project[0].root)
    small = server.post("/predict", rows_body(X))
    assert small.status == 200, small
    rows = rows_body(X)["rows"]
    big = json.dumps({"rows": [rows[i % len(rows)] for i in range(9000)]}, separators=(",", ":")).encode()
    r = server.post("/predict", big)
    assert r.status == 200, r
    got, want = r.json(), small.json()
    assert got["predictions"] == [want["predictions"][i % len(rows)] for i in range(9000)]
    np.testing.assert_allclose(got["probabilities"], [want["probabilities"][i % len(rows)] for i in range(9000)],
                               rtol=0, atol=1e-6)
    doubled = big[:-3] + b',"mean radius":1}]}'
    r = server.post("/predict", doubled)
    assert (r.status, r.json().get("field")) == (422, "rows[8999].mean radius"), r
