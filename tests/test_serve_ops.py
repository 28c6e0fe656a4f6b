"""Operating ``shelf serve``: the exit code and one line when it refuses to start, every
artefact verified before any is served, the logs (text, JSON, access), the SIGHUP handler
given back on shutdown, and the systemd unit and flags docs/serving.md documents.

Servers are real ``shelf serve`` subprocesses over real git/DVC projects (the templates of
test_serve.py); the formatters and the handler are also checked in-process."""

from __future__ import annotations

import argparse
import configparser
import io
import json
import logging
import os
import re
import shutil
import signal
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import modelshelf
from modelshelf.errors import exit_code_table

from conftest import BIN, Project, copy_tree
from test_serve import (  # noqa: F401 - fixtures
    TOKEN,
    Server,
    corrupt,
    dvc_object,
    held_out,
    module_project,
    onnx_md5_at,
    rows_body,
    serve,
    set_origin,
    start_server,
    template_v1,
    template_v11,
    two_releases,
    wait_for,
)

slow = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "serving.md"
REFUSAL_DEADLINE = 120.0  # seconds for a refused start to exit (a loaded 2-core CI box)
JSON_KEYS = {"time", "level", "logger", "message", "exc"}
ACCESS_KEYS = {"client", "method", "path", "status", "bytes", "duration_ms", "version"}


# --- helpers ------------------------------------------------------------------------------------


def refuse(cwd: Path, *args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    """Run ``shelf serve ARGS`` expecting it to refuse: its exit code and stderr.  Fails at
    once if it starts serving instead (it prints its stdout line only once serving)."""
    proc = subprocess.Popen([str(BIN / "shelf"), "serve", *args, "--host", "127.0.0.1", "--port", "0",
                             "--poll", "0"], cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()  # "" once it exits
        if first:
            proc.terminate()
            _, err = proc.communicate(timeout=30)
            raise AssertionError(f"served instead of refusing: {first}{err}")
        _, err = proc.communicate(timeout=REFUSAL_DEADLINE)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=15)
    return proc.returncode, err


def assert_refused(result: tuple[int, str], code: int, *fragments: str) -> str:
    """Exit ``code``, and stderr is one ``shelf: error:`` line holding every fragment."""
    got, err = result
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert got == code, (got, err)
    assert len(lines) == 1 and lines[0].startswith("shelf: error: "), err
    assert "internal error" not in err and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def copy_models(root: Path, dest: Path) -> Path:
    """A writable copy of ``root/models`` (card, joblib and ONNX), outside the DVC cache's reach."""
    shutil.copytree(root / "models", dest)
    for f in dest.rglob("*"):
        if f.is_file():
            f.chmod(0o644)
    return dest


def edit_card(directory: Path, change: Callable[[dict[str, Any]], None]) -> None:
    card = json.loads((directory / "card.json").read_text())
    change(card)
    (directory / "card.json").write_text(json.dumps(card, indent=2))


def records(server: Server) -> tuple[list[str], list[dict[str, Any]]]:
    """The output's plain lines and its parsed JSON log records."""
    plain, parsed = [], []
    for line in server.output().splitlines():
        if line.startswith("{"):
            parsed.append(json.loads(line))
        elif line.strip():
            plain.append(line)
    return plain, parsed


def find(recs: list[dict[str, Any]], fragment: str) -> dict[str, Any]:
    hits = [r for r in recs if fragment in r["message"]]
    assert hits, (fragment, [r["message"] for r in recs])
    return hits[0]


# --- 1. refusing to start: the cause's exit code, one line --------------------------------------


def _flip_onnx(d: Path) -> None:
    corrupt(d / "onnx" / "model.onnx")


def _flip_joblib(d: Path) -> None:
    corrupt(d / "model.joblib")


def _drop_joblib(d: Path) -> None:
    (d / "model.joblib").unlink()


def _drop_onnx(d: Path) -> None:
    (d / "onnx" / "model.onnx").unlink()


def _drop_card(d: Path) -> None:
    (d / "card.json").unlink()


DAMAGE = {
    "tampered onnx": (_flip_onnx, ("onnx/model.onnx", "sha256")),
    "tampered joblib next to a good onnx": (_flip_joblib, ("model.joblib", "sha256")),
    "missing joblib next to a good onnx": (_drop_joblib, ("model.joblib", "missing", "dvc pull", "shelf get")),
    "missing onnx": (_drop_onnx, ("onnx/model.onnx", "missing", "dvc pull")),
    "no card": (_drop_card, ("card.json", "no model card")),
}


@slow
@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_directory_is_refused_at_start_with_exit_4(
        damage: str, module_project: tuple[Project, dict[str, str]], tmp_path: Path) -> None:
    p, env = module_project
    served = copy_models(p.root, tmp_path / "served")
    assert "onnx" in json.loads((served / "card.json").read_text())["artefacts"]
    spoil, fragments = DAMAGE[damage]
    spoil(served)
    assert_refused(refuse(p.root, "--model", str(served), env=env), 4, *fragments)
    if damage.startswith("tampered joblib"):  # as `shelf verify` refuses it
        verify = p.shelf("verify", str(served), check=False)
        assert verify.returncode == 4, (verify.stdout, verify.stderr)


@slow
def test_another_scikit_learn_refuses_the_joblib_copy_with_exit_5_and_not_onnx(
        module_project: tuple[Project, dict[str, str]], tmp_path: Path,
        serve: Callable[..., Server]) -> None:
    """The card's artefacts are untouched: only its record of scikit-learn changes.  The joblib
    copy is refused before it is unpickled; ONNX runs no scikit-learn code, so it serves."""
    p, env = module_project

    def older(card: dict[str, Any]) -> None:
        card["dependencies"]["scikit-learn"] = "0.0.1"

    onnx = copy_models(p.root, tmp_path / "onnx")
    edit_card(onnx, older)
    joblib_only = copy_models(p.root, tmp_path / "joblib")
    edit_card(joblib_only, older)
    edit_card(joblib_only, lambda card: card["artefacts"].pop("onnx"))

    assert_refused(refuse(p.root, "--model", str(joblib_only), env=env), 5,
                   "model.joblib", "scikit-learn 0.0.1", "--allow-version-mismatch")
    s = serve(p.root, "--model", str(onnx), "--poll", "0", env=env)
    assert s.health()["format"] == "onnx"


@slow
@pytest.mark.parametrize("spec", ["v9.9.9", "canary"])
def test_an_unknown_version_or_stage_is_exit_2(spec: str, module_project: tuple[Project, dict[str, str]]) -> None:
    p, env = module_project
    assert_refused(refuse(p.root, "--model", spec, env=env), 2, spec, "shelf versions")


@slow
def test_a_release_whose_bytes_are_nowhere_is_exit_8(template_v1: Path, tmp_path: Path) -> None:
    p = set_origin(copy_tree(template_v1, tmp_path / "t"))
    md5 = onnx_md5_at(p, "model@v1.0.0")
    for store in (p.root / ".dvc" / "cache", p.root.parent / "proj-dvcstore"):
        dvc_object(store, md5).unlink()
    shutil.rmtree(p.root / ".dvc" / "tmp" / "modelshelf", ignore_errors=True)
    assert_refused(refuse(p.root, "--model", "v1.0.0", env=dict(os.environ)), 8,
                   "model.onnx", "cannot fetch", "dvc remote list")


@slow
def test_outside_a_git_repository_is_exit_6(module_project: tuple[Project, dict[str, str]], tmp_path: Path) -> None:
    p, env = module_project
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy(p.root / name, tmp_path / name)
    assert_refused(refuse(tmp_path, "--model", "latest", env=env), 6, "git")


# --- 2. logs ------------------------------------------------------------------------------------


@slow
def test_json_logs_tell_start_up_loads_sighup_swap_admin_reload_and_shutdown(
        two_releases: Project, serve: Callable[..., Server]) -> None:
    p = two_releases
    s = serve(p.root, "--model", "prod", "--poll", "0", "--log-format", "json",
              env={**os.environ, "SHELF_ADMIN_TOKEN": TOKEN})
    assert s.health()["version"] == "1.0.0"
    p.shelf("promote", "v1.1.0", "--to", "prod")
    s.proc.send_signal(signal.SIGHUP)
    wait_for("v1.1.0 after SIGHUP", lambda: s.health()["version"] == "1.1.0")
    r = s.post("/admin/reload", b"", headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status == 200 and r.json()["result"].startswith("unchanged"), r
    s.stop()
    assert s.proc.returncode == 0, s.output()

    plain, recs = records(s)
    # stdout's one line, unchanged: benchmarks and tests parse it
    assert len(plain) == 1 and plain[0].startswith(f"serving model v1.0.0 (onnx) on http://127.0.0.1:{s.port} "
                                                   "following 'prod'"), plain
    for rec in recs:
        assert JSON_KEYS <= set(rec), rec
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", rec["time"]), rec
        assert rec["level"] in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}, rec
        assert rec["logger"].startswith("modelshelf.serve"), rec
        assert rec["logger"] != "modelshelf.serve.access", rec  # no --access-log
        assert rec["exc"] is None, rec
    start = find(recs, "serving model v1.0.0 (onnx)")
    assert {k: start[k] for k in ("modelshelf", "model", "version", "format", "host", "port", "following",
                                  "poll")} == {"modelshelf": modelshelf.__version__, "model": "model",
                                               "version": "1.0.0", "format": "onnx", "host": "127.0.0.1",
                                               "port": s.port, "following": "prod", "poll": 0.0}
    assert start["formats"] == ["joblib", "onnx"]
    assert find(recs, "loaded model v1.0.0 (onnx")["reason"] == "start-up"
    assert find(recs, "loaded model v1.1.0 (onnx")["reason"] == "SIGHUP"
    assert find(recs, "received SIGHUP")["level"] == "INFO"
    swap = find(recs, "swapped v1.0.0 → v1.1.0")
    assert (swap["previous"], swap["version"], swap["level"]) == ("1.0.0", "1.1.0", "INFO")
    assert find(recs, "requested through POST /admin/reload")
    assert find(recs, "SIGTERM")  # the stop begins
    done = find(recs, "shut down after")
    assert (done["version"], done["swaps"], done["refused"]) == ("1.1.0", 1, 0)
    messages = [r["message"] for r in recs]
    assert messages.index(start["message"]) < messages.index(swap["message"]) < messages.index(done["message"])


@slow
def test_a_refused_reload_is_logged_with_its_reason_and_the_old_version_serves_on(
        two_releases: Project, serve: Callable[..., Server]) -> None:
    p = two_releases
    md5 = onnx_md5_at(p, "model@v1.1.0")
    for store in (p.root / ".dvc" / "cache", p.root.parent / "proj-dvcstore"):
        corrupt(dvc_object(store, md5))
    s = serve(p.root, "--model", "prod", "--poll", "0", env={**os.environ, "SHELF_ADMIN_TOKEN": TOKEN})
    p.shelf("promote", "v1.1.0", "--to", "prod")
    r = s.post("/admin/reload", b"", headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status == 200 and "refused" in r.json()["result"], r
    assert s.health()["version"] == "1.0.0"
    s.stop()
    warnings = [ln for ln in s.output().splitlines() if ln.startswith("WARNING:  refused prod: ")]
    assert len(warnings) == 1, s.output()
    assert "sha256" in warnings[0] and "still serving v1.0.0" in warnings[0], warnings
    assert "Traceback" not in s.output()


@slow
def test_text_logs_and_no_access_lines_without_the_flag(module_project: tuple[Project, dict[str, str]],
                                                        tmp_path: Path) -> None:
    p, env = module_project
    s = start_server(p.root, "--model", "models", "--poll", "0", env=env, logdir=tmp_path)
    try:
        for _ in range(3):
            assert s.get("/ping").status == 200
    finally:
        s.stop()
    lines = s.output().splitlines()  # stdout and stderr, interleaved
    stdout = [ln for ln in lines if ln.startswith("serving ")]
    assert len(stdout) == 1 and stdout[0].startswith(f"serving model v1.0.0 (onnx) on http://127.0.0.1:{s.port} "
                                                       "following 'models'"), lines
    logged = [ln for ln in lines if ln not in stdout]
    assert all(re.match(r"(DEBUG|INFO|WARNING|ERROR|CRITICAL):\s+\S", ln) for ln in logged), logged
    assert any(ln.startswith(f"INFO:     modelshelf {modelshelf.__version__} serving model v1.0.0 (onnx) on "
                             f"http://127.0.0.1:{s.port} following 'models', not polling") for ln in logged), logged
    assert any(ln.startswith("INFO:     loaded model v1.0.0 (onnx; verified model.joblib, onnx/model.onnx)")
               for ln in logged), logged
    assert any(ln.startswith("INFO:     shut down after") for ln in logged), logged
    assert not [ln for ln in logged if '"GET /' in ln], logged


@slow
def test_access_log_writes_one_json_record_per_answer(module_project: tuple[Project, dict[str, str]],
                                                      tmp_path: Path) -> None:
    p, env = module_project
    s = start_server(p.root, "--model", "models", "--poll", "0", "--access-log", "--log-format", "json",
                     env=env, logdir=tmp_path)
    try:
        for _ in range(3):
            assert s.get("/ping").status == 200
        assert s.post("/predict", rows_body(held_out(p.root).iloc[:2])).status == 200
        assert s.get("/nowhere").status == 404
    finally:
        s.stop()
    _, recs = records(s)
    access = [r for r in recs if r["logger"] == "modelshelf.serve.access"]
    for rec in access:
        assert JSON_KEYS | ACCESS_KEYS <= set(rec), rec
    by_path = {path: [r for r in access if r["path"] == path] for path in ("/ping", "/predict", "/nowhere")}
    assert [len(v) for v in by_path.values()] == [3, 1, 1], [r["message"] for r in access]
    predict = by_path["/predict"][0]
    assert (predict["method"], predict["status"], predict["version"]) == ("POST", 200, "1.0.0"), predict
    assert predict["bytes"] > 0 and predict["duration_ms"] >= 0 and predict["client"].startswith("127.0.0.1:")
    assert by_path["/nowhere"][0]["status"] == 404


# --- 3. in-process: the SIGHUP handler, the formatters ------------------------------------------


@slow
def test_sighup_is_logged_and_the_previous_handler_is_back_after_shutdown(
        module_project: tuple[Project, dict[str, str]], caplog: pytest.LogCaptureFixture) -> None:
    from modelshelf.serve.server import build

    def embedders_own(_signum: int, _frame: object) -> None:
        pass

    caplog.set_level(logging.INFO, logger="modelshelf")
    before = signal.signal(signal.SIGHUP, embedders_own)
    try:
        app = build(str(module_project[0].root / "models"), poll=0)
        app.startup()
        assert signal.getsignal(signal.SIGHUP) is not embedders_own
        os.kill(os.getpid(), signal.SIGHUP)
        wait_for("the SIGHUP reload's outcome", lambda: any(
            r.getMessage() == "SIGHUP: unchanged: v1.0.0" for r in caplog.records))
        assert any(r.getMessage().startswith("received SIGHUP") for r in caplog.records)
        app.shutdown()
        assert signal.getsignal(signal.SIGHUP) is embedders_own
    finally:
        signal.signal(signal.SIGHUP, before)


@pytest.fixture
def logging_state() -> Iterator[None]:
    """Put the logging configuration back as it was after a test calls ``logs.configure``."""
    root, shelf, access = logging.getLogger(), logging.getLogger("modelshelf"), logging.getLogger(
        "modelshelf.serve.access")
    saved = (list(root.handlers), root.level, shelf.level, access.level)
    yield
    for h in root.handlers[:]:
        if h not in saved[0]:
            root.removeHandler(h)
    root.setLevel(saved[1])
    shelf.setLevel(saved[2])
    access.setLevel(saved[3])
    logging.captureWarnings(False)


def test_json_format_has_the_required_keys_extras_and_the_traceback(logging_state: None) -> None:
    from modelshelf.serve import logs

    out = io.StringIO()
    logs.configure("json", access_log=True, stream=out)
    log = logging.getLogger("modelshelf.serve")
    log.info("hello %s", "world", extra={"version": "1.0.0", "big": 1 << 70})
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("it broke")
    logging.getLogger("modelshelf.serve.access").info("a request", extra={"client": "127.0.0.1:1", "status": 200})
    logging.getLogger("modelshelf.serve").debug("not at info")
    logging.getLogger("somebody.else").info("not theirs at info")
    lines = out.getvalue().splitlines()
    recs = [json.loads(ln) for ln in lines]
    assert [r["message"] for r in recs] == ["hello world", "it broke", "a request"]
    assert all(JSON_KEYS <= set(r) for r in recs)
    assert recs[0]["version"] == "1.0.0" and recs[0]["big"] == str(1 << 70) and recs[0]["exc"] is None
    assert recs[0]["time"].endswith("Z") and recs[0]["logger"] == "modelshelf.serve"
    assert recs[1]["level"] == "ERROR" and "Traceback" in recs[1]["exc"] and "ValueError: boom" in recs[1]["exc"]
    assert recs[2]["client"] == "127.0.0.1:1" and recs[2]["status"] == 200


def test_text_format_is_uvicorns_and_the_access_log_is_silent_unless_asked(logging_state: None) -> None:
    from modelshelf.serve import logs

    out = io.StringIO()
    logs.configure("text", stream=out)
    logs.configure("text", stream=out)  # again: replaces its handler, never a second line per record
    logging.getLogger("modelshelf.serve").info("started")
    logging.getLogger("modelshelf.serve").warning("careful")
    logging.getLogger("modelshelf.serve.access").info('127.0.0.1:1 - "GET /ping" 200 11 0.05ms')
    try:
        raise KeyError("x")
    except KeyError:
        logging.getLogger("modelshelf.serve").exception("failed")
    text = out.getvalue()
    assert text.startswith("INFO:     started\nWARNING:  careful\nERROR:    failed\nTraceback"), text
    assert "GET /ping" not in text
    with pytest.raises(ValueError, match="log format"):
        logs.configure("xml")
    with pytest.raises(ValueError, match="log level"):
        logs.configure("text", level="loud")


# --- 4. docs/serving.md: the unit and the flags --------------------------------------------------


def unit_text() -> str:
    m = re.search(r"```ini\n(# /etc/systemd/system/\S+\.service\n.*?)```", DOC.read_text(), re.S)
    assert m, "docs/serving.md has no systemd unit"
    return m.group(1)


def test_the_documented_systemd_unit_has_what_an_operator_needs(tmp_path: Path) -> None:
    unit = configparser.ConfigParser(strict=True, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign] - systemd keys are case-sensitive
    unit.read_string(unit_text())
    svc = unit["Service"]
    assert "shelf serve --model prod --host 127.0.0.1 --port 8080 --log-format json" in svc["ExecStart"]
    assert svc["Restart"] == "on-failure"
    assert set(svc["RestartPreventExitStatus"].split()) == {"2", "4", "5", "6", "7"}  # what a restart cannot cure
    assert svc["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert svc["KillSignal"] == "SIGTERM" and int(svc["TimeoutStopSec"]) > 5  # above the 5 s grace
    ready = svc["ExecStartPost"]
    assert "curl -fsS" in ready and "http://127.0.0.1:8080/ready" in ready and "timeout" in ready
    assert svc["NoNewPrivileges"] == "yes" and svc["ProtectSystem"] == "strict"
    assert ".dvc/tmp" in svc["ReadWritePaths"]
    assert svc["EnvironmentFile"].startswith("/etc/")
    assert unit["Install"]["WantedBy"] == "multi-user.target"
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    path = tmp_path / "shelf-serve.service"
    path.write_text(unit_text().replace("/srv/modelshelf/venv/bin/shelf", str(BIN / "shelf")))
    proc = subprocess.run([analyze, "verify", str(path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and not proc.stderr.strip(), proc.stderr


def test_the_documented_flags_are_the_real_ones_with_their_defaults() -> None:
    from modelshelf.cli import build_parser

    doc = DOC.read_text()
    table = doc[doc.index("## Flags"):]
    documented = set(re.findall(r"`(--[a-z-]+)`", table))
    parser = build_parser("serve")
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    serve = sub.choices["serve"]
    # The global flags every command takes are in docs/cli.md.
    real = {o for a in serve._actions for o in a.option_strings if o.startswith("--")} - {
        "--help", "--traceback", "--quiet", "--verbose", "--color"}
    assert documented == real
    defaults = vars(serve.parse_args([]))
    assert (defaults["max_connections"], defaults["log_format"], defaults["log_level"],
            defaults["access_log"]) == (1000, "text", "info", False)
    help_text = serve.format_help()
    assert "(default: 1000)" in help_text and "(default: text)" in help_text and "503" in help_text
    for code in re.findall(r"^\| (\d+) \| ", doc[doc.index("## Exit codes"):doc.index("## Logs")], re.M):
        assert f"| {code} |" in exit_code_table()  # the documented table (docs/errors.md) has every code
