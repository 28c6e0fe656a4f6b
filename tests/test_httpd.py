"""The HTTP/1.1 layer of ``shelf serve``, spoken to over raw sockets: keep-alive, pipelining in
order, chunked bodies, ``Expect: 100-continue``, limits, malformed requests, the idle timeout
and a graceful stop.  Real ``shelf serve`` subprocesses on 127.0.0.1, as in test_serve.py."""

from __future__ import annotations

import json
import re
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
import pytest

from conftest import Project
from test_serve import (  # noqa: F401 - fixtures
    Server,
    call,
    held_out,
    module_project,
    rows_body,
    server,
    start_server,
    strict_server,
    template_v1,
)

pytestmark = pytest.mark.slow
DEADLINE = 30.0


def connect(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=DEADLINE)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


class Stream:
    """Reads HTTP/1.1 responses off one socket, one at a time."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock, self.buf = sock, b""

    def _fill(self) -> bool:
        data = self.sock.recv(65536)
        self.buf += data
        return bool(data)

    def response(self) -> tuple[int, dict[str, str], bytes]:
        while b"\r\n\r\n" not in self.buf:
            assert self._fill(), f"connection closed mid-response: {self.buf!r}"
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
        length = int(headers.get("content-length", "0"))
        while len(self.buf) < length:
            assert self._fill(), "connection closed mid-body"
        body, self.buf = self.buf[:length], self.buf[length:]
        return status, headers, body

    def closed(self) -> bool:
        """True once the server has closed the connection (reads until EOF or the deadline)."""
        try:
            while self._fill():
                pass
        except TimeoutError:
            return False
        return True


def request(method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None) -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nHost: test\r\n"
    if body:
        head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    for k, v in (headers or {}).items():
        head += f"{k}: {v}\r\n"
    return head.encode() + b"\r\n" + body


@pytest.fixture(scope="module")
def bodies(module_project: tuple[Project, dict[str, str]]) -> dict[str, bytes]:
    X = held_out(module_project[0].root)
    return {"one": json.dumps(rows_body(X.iloc[:1])).encode(),
            "batch": json.dumps(rows_body(X.iloc[:100])).encode()}  # > 64 rows: answered from a thread


def test_pipelined_requests_are_answered_in_order(server: Server, bodies: dict[str, bytes]) -> None:
    with connect(server.port) as s:
        # a slow answer (a batch, predicted in a worker thread) first, then quick ones behind it
        s.sendall(request("POST", "/predict", bodies["batch"]) + request("GET", "/ping")
                  + request("POST", "/predict", bodies["one"]) + request("GET", "/nowhere"))
        stream = Stream(s)
        answers = [stream.response() for _ in range(4)]
    assert [a[0] for a in answers] == [200, 200, 200, 404]
    assert len(json.loads(answers[0][2])["predictions"]) == 100
    assert json.loads(answers[1][2]) == {"ok": True}
    assert len(json.loads(answers[2][2])["predictions"]) == 1
    assert all("connection" not in a[1] for a in answers)  # kept alive throughout


def test_chunked_body_is_read_like_a_plain_one(server: Server, bodies: dict[str, bytes]) -> None:
    plain = call(server.port, "POST", "/predict", bodies["batch"])
    data = bodies["batch"]
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(data[i:i + 700]), data[i:i + 700]) for i in range(0, len(data), 700))
    with connect(server.port) as s:
        s.sendall(b"POST /predict HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n" + chunks + b"0\r\n\r\n")
        status, _, body = Stream(s).response()
    assert (status, json.loads(body)) == (200, plain.json())


def test_expect_100_continue_is_answered_before_the_body(server: Server, bodies: dict[str, bytes]) -> None:
    data = bodies["one"]
    with connect(server.port) as s:
        s.sendall(f"POST /predict HTTP/1.1\r\nHost: t\r\nContent-Length: {len(data)}\r\n"
                  "Expect: 100-continue\r\n\r\n".encode())
        stream = Stream(s)
        interim = stream.response()  # arrives although no body byte was sent
        assert interim[0] == 100
        s.sendall(data)
        status, _, body = stream.response()
    assert status == 200 and len(json.loads(body)["predictions"]) == 1


def test_a_declared_body_over_the_limit_is_refused_before_it_is_sent(strict_server: Server) -> None:
    with connect(strict_server.port) as s:
        s.sendall(b"POST /predict HTTP/1.1\r\nHost: t\r\nContent-Length: 65537\r\n\r\n")
        stream = Stream(s)
        status, headers, body = stream.response()
        assert (status, headers.get("connection")) == (413, "close")
        assert "65536" in json.loads(body)["error"]
        assert stream.closed()


def test_a_chunked_body_over_the_limit_is_refused(strict_server: Server) -> None:
    with connect(strict_server.port) as s:
        s.sendall(b"POST /predict HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n")
        chunk = b"a" * 4096
        try:
            for _ in range(20):  # 80 KiB in all: past the limit, which stops the reading
                s.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        except (BrokenPipeError, ConnectionResetError):
            pass
        stream = Stream(s)
        status, headers, _ = stream.response()
    assert (status, headers.get("connection")) == (413, "close")


@pytest.mark.parametrize(("raw", "status"), [
    (b"GARBAGE\r\n\r\n", 400),
    (b"GET /ping HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n", 431),
    (b"GET /ping HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n", 400),
    (b"POST /predict HTTP/1.1\r\nHost: t\r\nContent-Length: -1\r\n\r\n", 400),
], ids=["not-http", "head-too-large", "upgrade", "negative-length"])
def test_unreadable_requests_get_an_error_and_the_connection_closes(server: Server, raw: bytes,
                                                                   status: int) -> None:
    with connect(server.port) as s:
        s.sendall(raw)
        stream = Stream(s)
        got, headers, body = stream.response()
        assert (got, headers.get("connection")) == (status, "close")
        assert json.loads(body)["error"]
        assert stream.closed()
    assert server.get("/ping").status == 200  # and the server goes on


def test_http_1_0_gets_one_answer_then_close(server: Server) -> None:
    with connect(server.port) as s:
        s.sendall(b"GET /ready HTTP/1.0\r\n\r\n")
        stream = Stream(s)
        status, _, body = stream.response()
        assert status == 200 and json.loads(body)["ready"] is True
        assert stream.closed()


@pytest.fixture
def short_keep_alive(module_project: tuple[Project, dict[str, str]], tmp_path: Path) -> Iterator[Server]:
    p, env = module_project
    s = start_server(p.root, "--model", "models", "--poll", "0", "--keep-alive", "0.3", env=env,
                     logdir=tmp_path / "logs")
    yield s
    s.stop()


def test_idle_keep_alive_connections_are_closed(short_keep_alive: Server) -> None:
    with connect(short_keep_alive.port) as s:
        s.sendall(request("GET", "/ping"))
        stream = Stream(s)
        assert stream.response()[0] == 200
        start = time.monotonic()
        assert stream.closed()
        assert time.monotonic() - start < DEADLINE / 2


def test_stop_finishes_the_request_being_read_then_exits(short_keep_alive: Server,
                                                        bodies: dict[str, bytes]) -> None:
    srv = short_keep_alive
    data = bodies["one"]
    with connect(srv.port) as s:
        head = f"POST /predict HTTP/1.1\r\nHost: t\r\nContent-Length: {len(data)}\r\n\r\n".encode()
        s.sendall(head + data[:10])  # a request in progress
        # An idle connection too: it closes at once on stop.
        with connect(srv.port) as idle:
            srv.proc.send_signal(signal.SIGTERM)
            assert Stream(idle).closed()
        _wait_refused(srv.port)  # the listener is gone: the stop is under way
        s.sendall(data[10:])
        stream = Stream(s)
        status, headers, body = stream.response()
        assert (status, headers.get("connection")) == (200, "close")
        assert len(json.loads(body)["predictions"]) == 1
        assert stream.closed()
    assert srv.proc.wait(timeout=DEADLINE) == 0


def _wait_refused(port: int) -> None:
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        except OSError:
            return
        time.sleep(0.02)  # poll interval of a bounded wait
    raise AssertionError(f"port {port} still accepts connections")


def test_a_port_in_use_is_one_line_and_exit_2(server: Server, module_project: tuple[Project, dict[str, str]],
                                              tmp_path: Path) -> None:
    import subprocess

    from conftest import BIN

    p, env = module_project
    proc = subprocess.run([str(BIN / "shelf"), "serve", "--model", "models", "--poll", "0",
                           "--port", str(server.port)], cwd=p.root, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2
    assert re.search(rf"127\.0\.0\.1:{server.port}: cannot listen: .*; pick another --port", proc.stderr)
    assert "Traceback" not in proc.stderr


def test_port_0_serves_on_a_free_port_and_says_which(module_project: tuple[Project, dict[str, str]]) -> None:
    import subprocess

    from conftest import BIN

    p, env = module_project
    proc = subprocess.Popen([str(BIN / "shelf"), "serve", "--model", "models", "--poll", "0", "--port", "0"],
                            cwd=p.root, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # printed once the model is loaded and the socket bound
        m = re.search(r" on http://127\.0\.0\.1:(\d+) ", line)
        assert m and int(m.group(1)) > 0, line
        with connect(int(m.group(1))) as s:
            s.sendall(request("GET", "/ready"))
            status, _, body = Stream(s).response()
        assert status == 200 and json.loads(body)["ready"] is True
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=DEADLINE) == 0


GC_PROBE = r"""
import gc, json, os, signal, socket, sys, threading, time
from modelshelf.cli import main

port = int(sys.argv[1])
seen = {}

def ready():
    try:  # a raw socket: an HTTP client library would import modules the server does not
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(b"GET /ready HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            return s.recv(100).startswith(b"HTTP/1.1 200")
    except OSError:
        return False

def probe():
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not ready():
        time.sleep(0.01)  # poll interval of a bounded wait
    seen.update(enabled=gc.isenabled(), frozen=gc.get_freeze_count(),
                imported=sorted(m for m in sys.argv[2].split(",") if m in sys.modules))
    os.kill(os.getpid(), signal.SIGTERM)

threading.Thread(target=probe, daemon=True).start()
code = main(["serve", "--model", "models", "--poll", "0", "--port", str(port)])
print(json.dumps({**seen, "code": code}))
"""
# Not on the serving path: pickle and its libraries (ONNX is served), the registry and DVC (a
# directory is served), and modules that only cost start-up time.
NOT_IMPORTED = ("joblib", "sklearn", "pandas", "scipy", "dvc", "modelshelf.model", "modelshelf.registry",
                "asyncio", "pathlib", "tempfile", "shutil", "hashlib", "uvloop", "rich", "vl_convert",
                "modelshelf.serve.predlog", "modelshelf.serve.canary", "modelshelf.serve.compare",
                "modelshelf.serve.workers")


def test_start_up_collects_nothing_and_imports_only_what_serving_needs(
        module_project: tuple[Project, dict[str, str]]) -> None:
    """Start-up runs without the cyclic collector, which is back on, with start-up frozen, once
    serving; and serving ONNX imports no pickle library and nothing it does not use."""
    import subprocess
    import sys

    from test_serve import free_port

    p, env = module_project
    proc = subprocess.run([sys.executable, "-c", GC_PROBE, str(free_port()), ",".join(NOT_IMPORTED)],
                          cwd=p.root, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    seen = json.loads(proc.stdout.strip().splitlines()[-1])
    assert seen == {"enabled": True, "frozen": seen["frozen"], "imported": [], "code": 0}
    assert seen["frozen"] > 10_000  # numpy, onnxruntime and the model's objects


def test_the_app_is_also_an_asgi_app(server: Server, module_project: tuple[Project, dict[str, str]],
                                     bodies: dict[str, bytes]) -> None:
    """Mounted in another ASGI server, the app answers as ``shelf serve`` does."""
    import asyncio

    from modelshelf.serve.server import build

    app = build(str(module_project[0].root / "models"), poll=0, max_body=1000)

    async def ask(method: str, path: str, body: bytes) -> tuple[int, dict[bytes, bytes], bytes]:
        chunks = [body[i:i + 300] for i in range(0, len(body), 300)] or [b""]
        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            chunk = chunks.pop(0)
            return {"type": "http.request", "body": chunk, "more_body": bool(chunks)}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        await app({"type": "http", "method": method, "path": path, "headers": []}, receive, send)
        return sent[0]["status"], dict(sent[0]["headers"]), b"".join(m.get("body", b"") for m in sent[1:])

    status, headers, body = asyncio.run(ask("POST", "/predict", bodies["one"]))
    over_http = call(server.port, "POST", "/predict", bodies["one"])
    assert (status, json.loads(body)) == (200, over_http.json())
    assert headers[b"content-length"] == str(len(body)).encode()
    assert asyncio.run(ask("POST", "/predict", bodies["batch"]))[0] == 413  # over this app's max_body
    assert asyncio.run(ask("GET", "/ping", b""))[0] == 200
    assert asyncio.run(ask("DELETE", "/ping", b""))[0] == 405
