"""End to end: ``shelf serve`` and ``shelf predict`` as a user runs them, over real HTTP.

Every server is a real ``shelf serve`` subprocess on 127.0.0.1 (a free port found by binding
port 0), waited for through ``GET /ready`` with a deadline and terminated in a finaliser.
Nothing is mocked: the projects are built with real git, DVC and ``shelf``.

Building a project is the slow part, so two templates are built once per test session and
shared between xdist workers (a file lock makes one worker build while the others wait):

* ``v1``: ``built`` + a bare git ``origin`` + a local DVC remote + ``shelf release --push``
  (model@v1.0.0), i.e. what conftest's ``released`` fixture makes;
* ``v11``: ``v1`` + ``shelf promote v1.0.0 --to prod`` + a retrain (60 trees, gate tolerance
  0.05, ``dvc repro``, commit) released as model@v1.1.0 (prod still holds v1.0.0).

Tests copy a template into their own directory before changing anything.  The validation,
parity and metrics tests share module-scoped servers that run in an explicitly isolated
environment of their own (the autouse ``isolated`` fixture is function-scoped).
"""

from __future__ import annotations

import hashlib
import http.client
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml

import modelshelf

from conftest import BIN, Project, build_built, built_once, copy_tree, environ, isolated_env, run, shared_dir

pytestmark = pytest.mark.slow

HERE = Path(__file__).resolve().parent
TOKEN = "s3cret-token-for-tests"
STARTUP_DEADLINE = 90.0   # seconds for `shelf serve` to answer /ready (a loaded 2-core CI box)
SWAP_DEADLINE = 60.0      # seconds for a promoted version to be served


# --- environment and templates ------------------------------------------------------------------


def set_origin(base: Path) -> Project:
    """The project in ``base`` (a template or a copy of one), its git origin pointed at ``base``."""
    p = Project(base / "proj")
    p.git("remote", "set-url", "origin", str(base / "proj-origin.git"))
    return p


def build_v1(dest: Path) -> None:
    """``released``: pipeline built and committed, remotes added, model@v1.0.0 released and pushed."""
    build_built(dest)
    with environ(isolated_env(dest / "home")):
        p = Project(dest / "proj")
        run(["git", "init", "-q", "--bare", str(dest / "proj-origin.git")], dest)
        p.git("remote", "add", "origin", str(dest / "proj-origin.git"))
        # Relative: DVC stores it relative to .dvc/config, so a copied tree uses its own store.
        p.dvc("remote", "add", "-d", "store", "../proj-dvcstore")
        p.commit("remotes")
        p.git("push", "-q", "origin", "main")
        p.shelf("release", "--push")


def retrain(p: Project, n_estimators: int, message: str) -> str:
    hyper = p.params()["train"]["hyperparams"]
    hyper["n_estimators"] = n_estimators
    p.set_params(train={"hyperparams": hyper}, gate={"tolerance": 0.05})
    p.dvc("repro")
    return p.commit(message)


def make_v11(v1: Path) -> Callable[[Path], None]:
    def build(dest: Path) -> None:
        shutil.rmtree(dest)
        copy_tree(v1, dest)
        with environ(isolated_env(dest / "home")):
            p = set_origin(dest)
            p.shelf("promote", "v1.0.0", "--to", "prod", "--push")
            retrain(p, 60, "fewer trees")
            out = p.shelf("release", "--push").stdout
            assert "released model@v1.1.0" in out, out

    return build


@pytest.fixture(scope="session")
def template_v1(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return built_once(shared_dir(tmp_path_factory), "v1", build_v1)


@pytest.fixture(scope="session")
def template_v11(tmp_path_factory: pytest.TempPathFactory, template_v1: Path) -> Path:
    return built_once(shared_dir(tmp_path_factory), "v11", make_v11(template_v1))


@pytest.fixture
def two_releases(template_v11: Path, tmp_path: Path) -> Project:
    """A private copy: v1.0.0 and v1.1.0 released and pushed, prod → v1.0.0."""
    return set_origin(copy_tree(template_v11, tmp_path / "t"))


# --- HTTP ---------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Reply:
    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status, self.headers, self.body = status, headers, body

    def json(self) -> Any:
        return json.loads(self.body)

    def __repr__(self) -> str:
        return f"<{self.status} {self.body[:300]!r}>"


def call(port: int, method: str, path: str, body: bytes | None = None,
         headers: dict[str, str] | None = None, conn: http.client.HTTPConnection | None = None,
         timeout: float = 30.0) -> Reply:
    """One request (on ``conn`` when given, for keep-alive; else on a fresh connection)."""
    own = conn is None
    c = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        hdrs = {"Content-Type": "application/json"} if body is not None else {}
        hdrs.update(headers or {})
        c.request(method, path, body=body, headers=hdrs)
        resp = c.getresponse()
        return Reply(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read())
    finally:
        if own:
            c.close()


class Server:
    """A running ``shelf serve`` subprocess."""

    def __init__(self, proc: subprocess.Popen[bytes], port: int, log: Path) -> None:
        self.proc, self.port, self.log = proc, port, log

    def get(self, path: str, **kw: Any) -> Reply:
        return call(self.port, "GET", path, **kw)

    def post(self, path: str, body: Any = None, **kw: Any) -> Reply:
        raw = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
        return call(self.port, "POST", path, raw, **kw)

    def health(self) -> dict[str, Any]:
        r = self.get("/health")
        assert r.status == 200, r
        return r.json()

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=15)


def start_server(cwd: Path, *args: str, env: dict[str, str] | None = None, logdir: Path,
                 command: Sequence[str] = (str(BIN / "shelf"),)) -> Server:
    """``shelf serve ARGS --host 127.0.0.1 --port P`` in ``cwd`` (``command`` runs ``shelf``);
    returns once /ready is 200."""
    port = free_port()
    logdir.mkdir(parents=True, exist_ok=True)
    log = logdir / f"serve-{port}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([*command, "serve", *args, "--host", "127.0.0.1", "--port", str(port)],
                                cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
    server = Server(proc, port, log)
    deadline = time.monotonic() + STARTUP_DEADLINE
    try:
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"shelf serve exited {proc.returncode}:\n{server.output()}")
            try:
                if server.get("/ready", timeout=5).status == 200:
                    return server
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"shelf serve not ready in {STARTUP_DEADLINE}s:\n{server.output()}")
            time.sleep(0.1)  # poll interval of a bounded wait, not an ordering sleep
    except BaseException:
        server.stop()   # never leak a server the caller will not get to stop
        raise


@pytest.fixture
def serve(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[..., Server]:
    """Factory for function-scoped servers, each stopped in a finaliser."""

    def start(cwd: Path, *args: str, env: dict[str, str] | None = None) -> Server:
        server = start_server(cwd, *args, env=env if env is not None else dict(os.environ),
                              logdir=tmp_path / "logs")
        request.addfinalizer(server.stop)
        return server

    return start


def wait_for(what: str, check: Callable[[], Any], deadline: float = SWAP_DEADLINE, every: float = 0.1) -> Any:
    """Poll ``check`` until it returns something truthy; fail after ``deadline`` seconds."""
    end = time.monotonic() + deadline
    last: Any = None
    while time.monotonic() < end:
        last = check()
        if last:
            return last
        time.sleep(every)
    raise AssertionError(f"timed out after {deadline}s waiting for {what} (last: {last!r})")


# --- the held-out set and request bodies --------------------------------------------------------


def feature_names(root: Path) -> list[str]:
    card = json.loads((root / "models" / "card.json").read_text())
    return [f["name"] for f in card["input_schema"]["features"]]


def held_out(root: Path) -> pd.DataFrame:
    """data/prepared/test.csv's features, in the card's order."""
    return pd.read_csv(root / "data" / "prepared" / "test.csv")[feature_names(root)]


def rows_body(frame: pd.DataFrame) -> dict[str, Any]:
    return {"rows": [{k: float(v) for k, v in rec.items()} for rec in frame.to_dict("records")]}


def columns_body(frame: pd.DataFrame) -> dict[str, Any]:
    return {"columns": {name: [float(v) for v in frame[name]] for name in frame.columns}}


# --- module-scoped servers over one copy of the v1 template -------------------------------------


@pytest.fixture(scope="module")
def module_project(template_v1: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Project, dict[str, str]]:
    base = tmp_path_factory.mktemp("serve-module")
    copy_tree(template_v1, base / "t")
    env = isolated_env(base / "home")
    with environ(env):
        p = set_origin(base / "t")
    return p, env


@pytest.fixture(scope="module")
def server(module_project: tuple[Project, dict[str, str]],
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """Default limits, an admin token set, no polling; serving the workspace's models/ (v1.0.0)."""
    p, env = module_project
    s = start_server(p.root, "--model", "models", "--poll", "0", env={**env, "SHELF_ADMIN_TOKEN": TOKEN},
                     logdir=tmp_path_factory.mktemp("logs"))
    yield s
    s.stop()


@pytest.fixture(scope="module")
def strict_server(module_project: tuple[Project, dict[str, str]],
                  tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """--max-rows 5, --max-body 65536, no admin token."""
    p, env = module_project
    s = start_server(p.root, "--model", "models", "--poll", "0", "--max-rows", "5", "--max-body", "65536",
                     env=env, logdir=tmp_path_factory.mktemp("logs"))
    yield s
    s.stop()


# --- 1. parity ----------------------------------------------------------------------------------


def test_http_predictions_match_the_joblib_model(server: Server,
                                                 module_project: tuple[Project, dict[str, str]]) -> None:
    p, _ = module_project
    X = held_out(p.root)
    model = modelshelf.load(p.root / "models")
    assert model.version == "1.0.0"
    want = np.asarray(model.predict(X)).tolist()
    want_proba = np.asarray(model.predict_proba(X))
    assert server.health()["format"] == "onnx"

    def check(doc: dict[str, Any], lo: int, hi: int) -> None:
        assert doc["version"] == "1.0.0" and doc["model"] == "model"
        assert doc["predictions"] == want[lo:hi]
        assert doc["classes"] == [0, 1]
        got = np.asarray(doc["probabilities"], dtype=float)
        assert got.shape == (hi - lo, 2)
        assert float(np.max(np.abs(got - want_proba[lo:hi]))) <= 1e-5

    # One batch of all 114 rows, in each form.
    for body in (rows_body(X), columns_body(X)):
        r = server.post("/predict", body)
        assert r.status == 200, r
        assert r.headers["content-type"] == "application/json"
        check(r.json(), 0, len(X))

    # One request per row, in each form, on one keep-alive connection.
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        for i in range(len(X)):
            one = X.iloc[i:i + 1]
            for body in (rows_body(one), columns_body(one)):
                r = call(server.port, "POST", "/predict", json.dumps(body).encode(), conn=conn)
                assert r.status == 200, (i, r)
                check(r.json(), i, i + 1)
    finally:
        conn.close()

    # Missing values (null) are accepted and imputed, still naming the version.
    r = server.post("/predict", {"rows": [{n: None for n in X.columns}]})
    assert r.status == 200, r
    assert r.json()["version"] == "1.0.0" and len(r.json()["predictions"]) == 1


# --- 2. validation ------------------------------------------------------------------------------


def _row(root: Path) -> dict[str, float]:
    return rows_body(held_out(root).iloc[:1])["rows"][0]


def _cases(row: dict[str, float]) -> list[tuple[str, str, str, bytes | None, int, str | None]]:
    """(id, method, path, body, status, field) — field None: the body may omit it."""
    names = list(row)
    first, second = names[0], names[1]
    cols1 = {n: [v] for n, v in row.items()}
    j = lambda doc: json.dumps(doc).encode()  # noqa: E731
    literal = lambda text: j({"rows": [{**row, second: "@@"}]}).replace(b'"@@"', text)  # noqa: E731
    without = {k: v for k, v in row.items() if k != first}
    pad = j({"rows": [row]})
    twice = lambda text, after, key: text.replace(after, after + key, 1)  # noqa: E731
    return [
        ("malformed-json", "POST", "/predict", b'{"rows": [', 400, None),
        ("not-json-text", "POST", "/predict", b"hello", 400, None),
        ("not-an-object", "POST", "/predict", b"[1, 2, 3]", 400, None),
        ("a-string", "POST", "/predict", b'"rows"', 400, None),
        ("both-rows-and-columns", "POST", "/predict", j({"rows": [row], "columns": cols1}), 400, None),
        ("neither-rows-nor-columns", "POST", "/predict", j({"data": [row]}), 400, None),
        ("missing-feature-rows", "POST", "/predict", j({"rows": [row, without]}), 422, f"rows[1].{first}"),
        ("missing-feature-columns", "POST", "/predict",
         j({"columns": {k: v for k, v in cols1.items() if k != first}}), 422, f"columns.{first}"),
        ("unknown-feature-rows", "POST", "/predict", j({"rows": [{**row, "colour": 1.0}]}), 422, "rows[0].colour"),
        ("unknown-feature-columns", "POST", "/predict", j({"columns": {**cols1, "colour": [1.0]}}), 422,
         "columns.colour"),
        ("string-for-number", "POST", "/predict", j({"rows": [{**row, second: "12.5"}]}), 422, f"rows[0].{second}"),
        ("string-for-number-columns", "POST", "/predict", j({"columns": {**cols1, second: ["x"]}}), 422,
         f"columns.{second}[0]"),
        ("boolean-for-number", "POST", "/predict", j({"rows": [{**row, second: True}]}), 422, f"rows[0].{second}"),
        ("list-for-number", "POST", "/predict", j({"rows": [{**row, second: [1.0]}]}), 422, f"rows[0].{second}"),
        ("nan-literal", "POST", "/predict", literal(b"NaN"), 422, None),
        ("infinity-literal", "POST", "/predict", literal(b"Infinity"), 422, None),
        ("minus-infinity-literal", "POST", "/predict", literal(b"-Infinity"), 422, None),
        ("huge-number-overflows-to-inf", "POST", "/predict", literal(b"1e400"), 422, f"rows[0].{second}"),
        ("huge-number-beyond-float32", "POST", "/predict", literal(b"-1e39"), 422, f"rows[0].{second}"),
        ("huge-integer", "POST", "/predict", literal(b"1" + b"0" * 400), 422, f"rows[0].{second}"),
        ("too-many-rows", "POST", "/predict", j({"rows": [row] * 6}), 413, "rows"),
        ("too-many-rows-columns", "POST", "/predict", j({"columns": {n: [v] * 6 for n, v in row.items()}}), 413,
         "columns"),
        ("body-over-max-body", "POST", "/predict", pad[:-1] + b" " * 70_000 + pad[-1:], 413, None),
        ("columns-of-unequal-length", "POST", "/predict", j({"columns": {**cols1, second: [1.0, 2.0]}}), 422,
         "columns"),
        ("column-not-a-list", "POST", "/predict", j({"columns": {**cols1, second: 1.0}}), 422, f"columns.{second}"),
        ("columns-not-an-object", "POST", "/predict", j({"columns": [1.0]}), 422, "columns"),
        ("empty-rows", "POST", "/predict", j({"rows": []}), 422, "rows"),
        ("rows-not-a-list", "POST", "/predict", j({"rows": row}), 422, "rows"),
        ("row-not-an-object", "POST", "/predict", j({"rows": [row, 1]}), 422, "rows[1]"),
        ("empty-columns", "POST", "/predict", j({"columns": {n: [] for n in names}}), 422, "columns"),
        ("utf-16-body", "POST", "/predict", pad.decode().encode("utf-16"), 400, None),
        ("utf-16-body-without-bom", "POST", "/predict", pad.decode().encode("utf-16-le"), 400, None),
        ("invalid-utf-8", "POST", "/predict", literal(b'"\xed\xa0\x80"'), 400, None),
        ("unpaired-surrogate-escape-in-a-key", "POST", "/predict",
         j({"rows": [{**row, "@@": 1.0}]}).replace(b'"@@"', b'"\\ud800"'), 400, None),
        ("duplicate-feature-rows", "POST", "/predict", twice(pad, b"[{", j(first) + b": 1.0, "), 422,
         f"rows[0].{first}"),
        ("duplicate-feature-columns", "POST", "/predict",
         twice(j({"columns": cols1}), b'"columns": {', j(first) + b": [1.0], "), 422, f"columns.{first}"),
        ("duplicate-rows-key", "POST", "/predict", pad[:-1] + b', "rows": ' + j([row]) + b"}", 422, "rows"),
        ("get-predict", "GET", "/predict", None, 405, None),
        ("put-predict", "PUT", "/predict", j({"rows": [row]}), 405, None),
        ("post-health", "POST", "/health", b"{}", 405, None),
        ("get-admin-reload", "GET", "/admin/reload", None, 405, None),
        ("delete-ping", "DELETE", "/ping", None, 405, None),
        ("unknown-path", "GET", "/nope", None, 404, None),
        ("unknown-path-post", "POST", "/v1/predict", j({"rows": [row]}), 404, None),
    ]


CASE_IDS = [c[0] for c in _cases({"a": 1.0, "b": 2.0})]


@pytest.mark.parametrize("case_id", CASE_IDS)
def test_bad_requests_get_a_4xx_naming_the_field_and_serving_goes_on(
        case_id: str, strict_server: Server, module_project: tuple[Project, dict[str, str]]) -> None:
    p, _ = module_project
    row = _row(p.root)
    _, method, path, body, status, field = next(c for c in _cases(row) if c[0] == case_id)
    r = call(strict_server.port, method, path, body)
    assert r.status == status, r
    assert r.headers["content-type"] == "application/json"
    doc = r.json()
    assert isinstance(doc, dict) and isinstance(doc.get("error"), str) and doc["error"], doc
    if field is not None:
        assert doc.get("field") == field, doc
    if status == 405:  # RFC 9110: the methods the route takes, in the header and said in the error
        allowed = "POST" if path in ("/predict", "/admin/reload") else "GET, HEAD"
        assert r.headers.get("allow") == allowed and allowed in doc["error"], (r.headers, doc)
    # ... and the server keeps serving.
    good = strict_server.post("/predict", {"rows": [row] * 5})
    assert good.status == 200, good
    assert good.json()["version"] == "1.0.0" and len(good.json()["predictions"]) == 5


def test_limits_are_inclusive(strict_server: Server, module_project: tuple[Project, dict[str, str]]) -> None:
    """Exactly --max-rows rows and exactly --max-body bytes are accepted."""
    row = _row(module_project[0].root)
    body = json.dumps({"rows": [row] * 5}).encode()
    body = body[:-1] + b" " * (65536 - len(body)) + body[-1:]
    assert len(body) == 65536
    r = call(strict_server.port, "POST", "/predict", body)
    assert r.status == 200, r
    assert len(r.json()["predictions"]) == 5


def test_deeply_nested_json_is_a_400_not_a_500(strict_server: Server,
                                               module_project: tuple[Project, dict[str, str]]) -> None:
    body = b'{"rows": ' + b"[" * 5000 + b"]" * 5000 + b"}"   # 10 kB, well under --max-body
    r = strict_server.post("/predict", body)
    assert strict_server.post("/predict", {"rows": [_row(module_project[0].root)]}).status == 200
    assert r.status == 400, r


def test_admin_reload_is_disabled_without_a_token(strict_server: Server) -> None:
    for headers in ({}, {"Authorization": "Bearer anything"}):
        r = strict_server.post("/admin/reload", b"", headers=headers)
        assert r.status == 403, r
        assert "error" in r.json()
    assert strict_server.health()["version"] == "1.0.0"


def test_admin_reload_needs_the_right_bearer_token(server: Server) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN},
                    {"Authorization": f"Bearer {TOKEN}x"}, {"Authorization": f"Basic {TOKEN}"}):
        r = server.post("/admin/reload", b"", headers=headers)
        assert r.status == 401, (headers, r)
        assert "error" in r.json()
    r = server.post("/admin/reload", b"", headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status == 200, r
    doc = r.json()
    assert doc["version"] == "1.0.0" and doc["error"] is None
    assert doc["result"].startswith("unchanged"), doc


def test_non_ascii_bearer_token_is_a_401_not_a_500(server: Server) -> None:
    c = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        c.putrequest("POST", "/admin/reload")
        c.putheader("Authorization", b"Bearer \xe9t\xe9")
        c.putheader("Content-Length", "0")
        c.endheaders()
        resp = c.getresponse()
        status, _ = resp.status, resp.read()
    finally:
        c.close()
    assert server.get("/ping").status == 200
    assert status == 401, status


# --- 3. metrics ---------------------------------------------------------------------------------

SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{((?:[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\.)*",?)*)\})? '
                    r'(-?[0-9.eE+-]+|\+Inf|-Inf|NaN)$')


def parse_metrics(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Prometheus text format 0.0.4, strictly: every sample in a declared family, values numeric."""
    types: dict[str, str] = {}
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    assert text.endswith("\n")
    for line in text.splitlines():
        assert line.strip(), "blank line in the exposition"
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            assert kind in ("counter", "gauge", "histogram", "summary", "untyped"), line
            assert name not in types, f"family {name} declared twice"
            types[name] = kind
            continue
        if line.startswith("# HELP "):
            continue
        m = SAMPLE.match(line)
        assert m, f"not a sample line: {line!r}"
        name, labels = m.group(1), tuple(re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"', m.group(3) or ""))
        family = next((f for f in (name, re.sub(r"_(bucket|sum|count)$", "", name)) if f in types), None)
        assert family is not None, f"{name} has no # TYPE"
        if types[family] == "counter":
            assert name.endswith("_total"), name
        key = (name, labels)
        assert key not in samples, f"duplicate sample {line!r}"
        samples[key] = float(m.group(4))
    return samples


def one(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], metric: str, **labels: str) -> float:
    """The value of ``metric`` with exactly ``labels`` (0 when absent, as a counter not yet moved)."""
    want = tuple(sorted(labels.items()))
    hits = [v for (n, ls), v in samples.items() if n == metric and tuple(sorted(ls)) == want]
    return hits[0] if hits else 0.0


def buckets(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float]) -> list[tuple[float, float]]:
    out = [(math.inf if dict(ls)["le"] == "+Inf" else float(dict(ls)["le"]), v)
           for (n, ls), v in samples.items() if n == "modelshelf_predict_seconds_bucket"]
    return sorted(out)


def test_metrics_is_prometheus_text_and_counts_requests(server: Server,
                                                        module_project: tuple[Project, dict[str, str]]) -> None:
    row = _row(module_project[0].root)
    r0 = server.get("/metrics")
    assert r0.status == 200
    assert r0.headers["content-type"].startswith("text/plain; version=0.0.4")
    before = parse_metrics(r0.body.decode())

    sent_rows = 0
    for n in (1, 3, 70):   # 70 > 64 rows runs in a worker thread
        r = server.post("/predict", {"rows": [row] * n})
        assert r.status == 200, r
        sent_rows += n
    assert server.post("/predict", {"rows": [{**row, "colour": 1}]}).status == 422
    assert server.post("/predict", b"{").status == 400
    assert server.get("/nope").status == 404

    after_text = server.get("/metrics").body.decode()
    after = parse_metrics(after_text)

    def delta(metric: str, **labels: str) -> float:
        return one(after, metric, **labels) - one(before, metric, **labels)

    assert delta("modelshelf_requests_total", path="/predict", status="200") == 3
    assert delta("modelshelf_requests_total", path="/predict", status="422") == 1
    assert delta("modelshelf_requests_total", path="/predict", status="400") == 1
    assert delta("modelshelf_requests_total", path="other", status="404") == 1
    assert delta("modelshelf_requests_total", path="/metrics", status="200") == 1   # the first scrape
    assert delta("modelshelf_errors_total") == 3
    assert delta("modelshelf_prediction_rows_total") == sent_rows
    assert delta("modelshelf_predict_seconds_count") == 5
    assert delta("modelshelf_predict_seconds_sum") > 0

    for samples in (before, after):
        bs = buckets(samples)
        assert len(bs) >= 2 and bs[-1][0] == math.inf
        counts = [v for _, v in bs]
        assert counts == sorted(counts), f"buckets not cumulative: {bs}"
        assert bs[-1][1] == one(samples, "modelshelf_predict_seconds_count")
    # Each bucket can only grow.
    assert all(a[1] >= b[1] for a, b in zip(buckets(after), buckets(before), strict=True))

    assert re.search(r'^modelshelf_model_info\{[^}]*version="1\.0\.0"[^}]*\} 1$', after_text, re.M), after_text
    assert one(after, "modelshelf_model_info", name="model", version="1.0.0", format="onnx") == 1
    assert one(after, "modelshelf_model_swaps_total") == 0
    assert one(after, "modelshelf_model_load_failures_total") == 0
    assert one(after, "modelshelf_healthy") == 1


# --- 7. property-based: the OpenAPI schema, no 5xx ----------------------------------------------


def test_openapi_document_describes_the_model(server: Server, module_project: tuple[Project, dict[str, str]]) -> None:
    doc = server.get("/openapi.json").json()
    assert doc["openapi"].startswith("3.") and doc["info"]["version"] == "1.0.0"
    body = doc["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    row = body["oneOf"][0]["properties"]["rows"]["items"]
    assert row["required"] == feature_names(module_project[0].root)
    assert server.get("/model").json()["version"] == "1.0.0"
    # Every route, with the methods the server takes (HEAD wherever GET is), and its refusals.
    paths = doc["paths"]
    assert {p: sorted(ops) for p, ops in paths.items()} == {
        "/predict": ["post"], "/admin/reload": ["post"],
        **{p: ["get", "head"] for p in ("/ping", "/health", "/ready", "/model", "/metrics", "/openapi.json")}}
    for p, ops in paths.items():
        r = call(server.port, "DELETE", p)
        assert r.status == 405, (p, r)
        assert sorted(r.headers["allow"].lower().split(", ")) == sorted(ops), (p, r.headers)
    predict = paths["/predict"]["post"]
    assert {"200", "400", "413", "422"} <= set(predict["responses"])
    columns = body["oneOf"][1]["properties"]["columns"]
    assert "same length" in columns["description"] and "lengths" in predict["responses"]["422"]["description"]
    reload = paths["/admin/reload"]["post"]
    assert {"200", "401", "403", "413"} <= set(reload["responses"])
    assert reload["security"] == [{"bearer": []}]
    assert doc["components"]["securitySchemes"]["bearer"] == {**doc["components"]["securitySchemes"]["bearer"],
                                                              "type": "http", "scheme": "bearer"}


def _json_schema(node: Any) -> Any:
    """OpenAPI 3.0 ``nullable`` → JSON Schema's ``type: [T, "null"]``."""
    if isinstance(node, dict):
        out = {k: _json_schema(v) for k, v in node.items() if k != "nullable"}
        if node.get("nullable"):
            out["type"] = [node["type"], "null"]
        return out
    if isinstance(node, list):
        return [_json_schema(v) for v in node]
    return node


AGREEMENT = [
    pytest.param("valid", {}, id="a-valid-row"),
    pytest.param("null", {"mean texture": None}, id="null-for-a-number"),
    pytest.param("unknown", {"colour": 1.0}, id="unknown-feature"),
    pytest.param("string", {"mean texture": "1"}, id="string-for-a-number"),
    pytest.param("huge", {"mean texture": 1e39}, id="number-beyond-float32"),
    pytest.param("extra", "extra-top-level-key", id="extra-top-level-key"),
]


@pytest.mark.parametrize(("kind", "change"), AGREEMENT)
def test_openapi_document_and_validation_agree(kind: str, change: Any, server: Server,
                                               module_project: tuple[Project, dict[str, str]]) -> None:
    """A body the published schema accepts is answered 200, one it rejects is a 4xx."""
    jsonschema = pytest.importorskip("jsonschema")
    doc = server.get("/openapi.json").json()
    schema = _json_schema(doc["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"]["schema"])
    row = _row(module_project[0].root)
    body: dict[str, Any] = ({"rows": [row], "x": 1} if change == "extra-top-level-key"
                            else {"rows": [{**row, **change}]})
    valid = jsonschema.Draft7Validator(schema).is_valid(body)
    r = server.post("/predict", body)
    assert r.status < 500, r
    assert (r.status == 200) == valid, (kind, "schema-valid" if valid else "schema-invalid", r)


def _agrees(doc: dict[str, Any], case: Any, status: int) -> str | None:
    """Why a /predict answer disagrees with the document (None: it agrees): a body the request
    schema accepts is answered 200 (columns of one length: the document says so in words),
    one it refuses gets a 4xx."""
    import jsonschema

    if case.path != "/predict" or case.method.upper() != "POST" or (case.media_type or "").split(";")[0] \
            not in ("application/json", ""):
        return None
    schema = _json_schema(doc["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"]["schema"])
    try:
        valid = jsonschema.Draft7Validator(schema).is_valid(case.body)
    except TypeError:  # not a JSON value
        return None
    columns = case.body.get("columns") if valid and isinstance(case.body, dict) else None
    if isinstance(columns, dict) and len({len(v) for v in columns.values()}) > 1:
        return None if status == 422 else f"columns of different lengths answered {status}"
    if valid and status != 200:
        return f"a body the document accepts answered {status}"
    if not valid and not 400 <= status < 500:
        return f"a body the document refuses answered {status}"
    return None


def test_schemathesis_finds_no_server_error(server: Server) -> None:
    """Schemathesis (positive and negative cases) from the live /openapi.json: never a 5xx, every
    answer as the document describes it (status, content type, schema), and /predict accepts
    what the document allows and refuses what it does not.  1000 examples in CI, 200 here."""
    schemathesis = pytest.importorskip("schemathesis")
    pytest.importorskip("jsonschema")
    import requests
    from hypothesis import HealthCheck, given, settings
    from schemathesis.checks import (content_type_conformance, not_a_server_error, response_headers_conformance,
                                     response_schema_conformance, status_code_conformance)

    base = f"http://127.0.0.1:{server.port}"
    doc = server.get("/openapi.json").json()
    schema = schemathesis.openapi.from_dict(doc)
    session = requests.Session()
    session.trust_env = False   # no proxy: loopback only
    seen: dict[int, int] = {}
    methods: set[str] = set()
    strategy = (schema.as_strategy(schemathesis.GenerationMode.POSITIVE)
                | schema.as_strategy(schemathesis.GenerationMode.NEGATIVE))
    checks = [not_a_server_error, status_code_conformance, content_type_conformance, response_headers_conformance,
              response_schema_conformance]

    @settings(max_examples=1000 if os.environ.get("CI") else 200, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(case=strategy)
    def fuzz(case: Any) -> None:
        response = case.call(base_url=base, session=session, timeout=30)
        seen[response.status_code] = seen.get(response.status_code, 0) + 1
        methods.add(case.method.upper())
        assert response.status_code < 500, (case.method, case.path, case.body, response.text[:300])
        case.validate_response(response, checks=checks)
        disagreement = _agrees(doc, case, response.status_code)
        assert disagreement is None, (disagreement, case.body, response.text[:300])

    try:
        fuzz()
    finally:
        session.close()
    assert sum(seen.values()) >= 100, seen
    assert seen.get(200, 0) > 0 and any(400 <= s < 500 for s in seen), seen
    assert {"GET", "HEAD", "POST"} <= methods, methods
    assert server.get("/ping").status == 200


# --- 6. shelf predict ---------------------------------------------------------------------------


def check_scored(out: Path, root: Path, version: str) -> None:
    got = pd.read_csv(out, dtype={"model_version": str})
    X = held_out(root)
    model = modelshelf.load(root / "models")
    assert list(got.columns) == ["model_version", "prediction", "proba_0", "proba_1"]
    assert len(got) == len(X)
    assert set(got["model_version"]) == {version}
    assert got["prediction"].tolist() == np.asarray(model.predict(X)).tolist()
    diff = np.abs(got[["proba_0", "proba_1"]].to_numpy() - model.predict_proba(X))
    assert float(diff.max()) <= 1e-5


def test_shelf_predict_writes_the_models_predictions(module_project: tuple[Project, dict[str, str]],
                                                     tmp_path: Path) -> None:
    p, _ = module_project
    out = tmp_path / "out.csv"
    done = p.shelf("predict", "data/prepared/test.csv", "--model", "models", "-o", str(out))
    assert "scored 114 rows with v1.0.0" in done.stdout, done.stdout
    check_scored(out, p.root, "1.0.0")

    # The same through the registry: a verified copy of the release.
    out2 = tmp_path / "out-v1.csv"
    done = p.shelf("predict", "data/prepared/test.csv", "--model", "v1.0.0", "-o", str(out2))
    assert "with v1.0.0" in done.stdout, done.stdout
    check_scored(out2, p.root, "1.0.0")
    assert out.read_bytes() == out2.read_bytes()


def test_shelf_predict_refuses_a_csv_missing_a_feature(module_project: tuple[Project, dict[str, str]],
                                                       tmp_path: Path) -> None:
    p, _ = module_project
    X = held_out(p.root)
    bad = tmp_path / "bad.csv"
    X.drop(columns=["mean texture"]).to_csv(bad, index=False)
    out = tmp_path / "out.csv"
    proc = p.shelf("predict", str(bad), "--model", "models", "-o", str(out), check=False)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert len(lines) == 1 and lines[0].startswith("shelf: error: "), proc.stderr
    assert "'mean texture'" in lines[0], lines[0]
    assert "Traceback" not in proc.stderr + proc.stdout
    assert not out.exists()
    assert not [f for f in tmp_path.iterdir() if f.name != "bad.csv"], list(tmp_path.iterdir())


# --- 4. hot swap under load ---------------------------------------------------------------------


def metric_value(server: Server, name: str) -> float:
    return one(parse_metrics(server.get("/metrics").body.decode()), name)


def test_hot_swap_under_load_drops_no_request(two_releases: Project, serve: Callable[..., Server],
                                              tmp_path: Path) -> None:
    p = two_releases
    s = serve(p.root, "--model", "prod", "--poll", "0.5")
    assert s.health() == {"status": "ok", "version": "1.0.0", "format": "onnx", "following": "prod",
                          "error": None}
    X = held_out(p.root)
    bodies = []
    for name, body in (("one-row", rows_body(X.iloc[:1])), ("batch", columns_body(X.iloc[:100])),
                       ("three-rows", rows_body(X.iloc[1:4]))):
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(body))
        bodies += ["--body", str(path)]
    result, started = tmp_path / "load.json", tmp_path / "load.started"
    gen = subprocess.Popen([sys.executable, str(HERE / "loadgen.py"), "--port", str(s.port), *bodies,
                            "--connections", "3", "--max-requests", "20000", "--max-seconds", "90",
                            "--started", str(started), "--warmup", "20",
                            "--stop-on-version", "1.1.0", "--tail", "40",
                            "--out", str(result)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        wait_for("20 answers on every load connection", started.exists, deadline=90)
        # Load is flowing; now move prod, as a release manager would.
        assert "assigned prod to v1.1.0" in p.shelf("promote", "v1.1.0", "--to", "prod").stdout
        out, _ = gen.communicate(timeout=180)
    finally:
        if gen.poll() is None:
            gen.kill()
            gen.wait(timeout=15)
    assert gen.returncode == 0, out
    summary = json.loads(result.read_text())
    assert summary["statuses"] == {"200": summary["requests"]}, summary   # zero non-200 responses
    assert summary["alive_threads"] == 0, summary
    assert summary["errors"] == {} and summary["bad_bodies"] == [], summary
    assert summary["stopped_on_version"], summary   # the deadline did not cut it short
    assert set(summary["versions"]) == {"1.0.0", "1.1.0"}, summary["versions"]
    for runs in summary["runs"]:
        # Per connection: 1.0.0 until the swap, then 1.1.0 for good (one attribute assignment).
        assert [label for label, _ in runs] == ["1.0.0", "1.1.0"], runs
    health = s.health()
    assert health["status"] == "ok" and health["version"] == "1.1.0" and health["error"] is None
    assert metric_value(s, "modelshelf_model_swaps_total") == 1
    assert metric_value(s, "modelshelf_model_load_failures_total") == 0
    assert "Traceback" not in s.output()


def test_sighup_reloads_at_once(two_releases: Project, serve: Callable[..., Server]) -> None:
    p = two_releases
    s = serve(p.root, "--model", "prod", "--poll", "0")
    assert s.health()["version"] == "1.0.0"
    p.shelf("promote", "v1.1.0", "--to", "prod")
    # No polling: the promotion alone changes nothing.
    for _ in range(3):
        assert s.health()["version"] == "1.0.0"
    s.proc.send_signal(signal.SIGHUP)
    health = wait_for("v1.1.0 after SIGHUP", lambda: (h := s.health())["version"] == "1.1.0" and h)
    assert health["status"] == "ok" and health["error"] is None
    assert s.proc.poll() is None, "SIGHUP must not stop the server"
    r = s.post("/predict", rows_body(held_out(p.root).iloc[:2]))
    assert r.status == 200 and r.json()["version"] == "1.1.0", r
    assert metric_value(s, "modelshelf_model_swaps_total") == 1


# --- 5. a corrupted version is refused ----------------------------------------------------------


def dvc_object(base: Path, md5: str) -> Path:
    return base / "files" / "md5" / md5[:2] / md5[2:]


def onnx_md5_at(p: Project, rev: str) -> str:
    """The md5 of models/onnx/model.onnx at ``rev``: dvc.lock's .dir entry, then its manifest."""
    lock = yaml.safe_load(p.git("show", f"{rev}:dvc.lock").stdout)
    out = next(o for o in lock["stages"]["serialise"]["outs"] if o["path"] == "models/onnx")
    assert out["md5"].endswith(".dir")
    manifest = json.loads(dvc_object(p.root / ".dvc" / "cache", out["md5"]).read_text())
    return next(e["md5"] for e in manifest if e["relpath"] == "model.onnx")


def corrupt(path: Path) -> None:
    assert path.is_file(), path
    path.chmod(0o644)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_corrupted_version_is_refused_and_the_old_one_keeps_serving(
        two_releases: Project, serve: Callable[..., Server]) -> None:
    p = two_releases
    md5 = onnx_md5_at(p, "model@v1.1.0")
    assert md5 != onnx_md5_at(p, "model@v1.0.0")
    card = json.loads(p.git("show", "model@v1.1.0:models/card.json").stdout)
    good_sha = card["artefacts"]["onnx"]["sha256"]
    cached, stored = dvc_object(p.root / ".dvc" / "cache", md5), dvc_object(p.root.parent / "proj-dvcstore", md5)
    assert hashlib.sha256(stored.read_bytes()).hexdigest() == good_sha
    corrupt(cached)
    corrupt(stored)
    assert hashlib.sha256(cached.read_bytes()).hexdigest() != good_sha

    s = serve(p.root, "--model", "prod", "--poll", "0", env={**os.environ, "SHELF_ADMIN_TOKEN": TOKEN})
    assert s.health()["version"] == "1.0.0"
    p.shelf("promote", "v1.1.0", "--to", "prod")
    r = s.post("/admin/reload", b"", headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status == 200, r
    assert r.json()["version"] == "1.0.0" and "refused" in r.json()["result"], r

    health = s.health()
    assert health["status"] == "degraded" and health["version"] == "1.0.0", health
    assert "refused" in health["error"] and "prod" in health["error"], health
    assert "sha256" in health["error"] or "fetch" in health["error"], health
    ready = s.get("/ready")
    assert ready.status == 200 and ready.json()["version"] == "1.0.0", ready
    row = held_out(p.root).iloc[:3]
    for body in (rows_body(row), columns_body(row)):
        r = s.post("/predict", body)
        assert r.status == 200 and r.json()["version"] == "1.0.0", r
    # Asking again refuses again, but the same refused version is counted once.
    assert "refused" in s.post("/admin/reload", b"", headers={"Authorization": f"Bearer {TOKEN}"}).json()["result"]
    samples = parse_metrics(s.get("/metrics").body.decode())
    assert one(samples, "modelshelf_model_load_failures_total") == 1
    assert one(samples, "modelshelf_model_swaps_total") == 0
    assert one(samples, "modelshelf_healthy") == 0
    assert one(samples, "modelshelf_model_info", name="model", version="1.0.0", format="onnx") == 1
    # No bad bytes were left where the next fetch would trust them.
    fetched = p.root / ".dvc" / "tmp" / "modelshelf" / "model" / "v1.1.0"
    assert not (fetched / "card.json").exists()
    assert not (fetched / "onnx" / "model.onnx").exists()


def test_a_corrupted_cache_object_is_healed_from_the_remote(two_releases: Project,
                                                            serve: Callable[..., Server]) -> None:
    p = two_releases
    md5 = onnx_md5_at(p, "model@v1.1.0")
    good_sha = json.loads(p.git("show", "model@v1.1.0:models/card.json").stdout)["artefacts"]["onnx"]["sha256"]
    stored = dvc_object(p.root.parent / "proj-dvcstore", md5)
    assert hashlib.sha256(stored.read_bytes()).hexdigest() == good_sha   # the remote is intact
    corrupt(dvc_object(p.root / ".dvc" / "cache", md5))                    # only the local cache is bad

    s = serve(p.root, "--model", "prod", "--poll", "0", env={**os.environ, "SHELF_ADMIN_TOKEN": TOKEN})
    p.shelf("promote", "v1.1.0", "--to", "prod")
    r = s.post("/admin/reload", b"", headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status == 200, r
    health = s.health()
    assert health["version"] == "1.1.0" and health["status"] == "ok", health
