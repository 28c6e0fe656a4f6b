"""``shelf serve --log-predictions DIR`` and ``shelf drift --from-log DIR``: the log itself
(sampled, bounded, rotating, readable after a kill), then a real server's traffic recorded
and checked for drift against the training profile."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from conftest import Project
from modelshelf.errors import ConfigError, DriftDetected
from modelshelf.serve.predlog import PredictionLog, read
from test_serve import (  # noqa: F401 - fixtures
    BIN,
    held_out,
    module_project,
    rows_body,
    start_server,
    template_v1,
)

ANSWER = b'{"model":"m","version":"1.0.0","predictions":[1]}'


def test_records_are_json_lines_rotated_and_kept_bounded(tmp_path: Path) -> None:
    log = PredictionLog(str(tmp_path / "log"), max_bytes=2_000, keep=3)
    for i in range(200):
        body = b'{"rows": [{"x": %d}]}' % i if i % 2 else b'{"rows":\n [{"x": %d}]}' % i  # a body over two lines
        log.record("m", "1.0.0", body, ANSWER, 0.001)
    log.stop()  # drains synchronously: no writer thread was started
    files = sorted(p.name for p in (tmp_path / "log").iterdir())
    assert len(files) == 3 and all(f.startswith("predictions-") and f.endswith(".jsonl") for f in files)
    records = read(str(tmp_path / "log"))
    assert log.written == 200 and 0 < len(records) < 200  # the oldest files were deleted
    xs = [r["request"]["rows"][0]["x"] for r in records]
    assert xs == list(range(200 - len(xs), 200))  # the newest kept, in order
    assert {r["version"] for r in records} == {"1.0.0"} and records[0]["response"]["predictions"] == [1]


def test_a_full_queue_drops_and_counts_instead_of_waiting(tmp_path: Path) -> None:
    log = PredictionLog(str(tmp_path), queue=5)
    for _ in range(12):
        log.record("m", "1.0.0", b'{"rows":[{"x":1}]}', ANSWER, 0.001)
    assert log.dropped == 7
    log.stop()
    assert log.written == 5 and len(read(str(tmp_path))) == 5


def test_sampling_records_about_the_share_asked_for(tmp_path: Path) -> None:
    log = PredictionLog(str(tmp_path), sample=0.5, queue=100_000)
    for _ in range(10_000):
        log.record("m", "1.0.0", b'{"rows":[{"x":1}]}', ANSWER, 0.001)
    assert 4_500 < len(log._queue) < 5_500


def test_a_line_cut_short_by_a_kill_is_skipped(tmp_path: Path) -> None:
    log = PredictionLog(str(tmp_path))
    log.record("m", "1.0.0", b'{"rows":[{"x":1}]}', ANSWER, 0.001)
    log.stop()
    (name,) = os.listdir(tmp_path)
    with open(tmp_path / name, "ab") as fh:
        fh.write(b'{"time":"2026-12-03T00:00:00.000Z","model":"m","vers')  # what kill -9 leaves
    assert len(read(str(tmp_path))) == 1


def test_an_unwritable_log_directory_is_a_bad_flag(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ConfigError) as exc:
        PredictionLog(str(blocker / "log"))
    assert "--log-predictions" in exc.value.message and "writable directory" in exc.value.message


def _drift(p: Project, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "shelf"), "drift", *args], cwd=p.root, env=env, capture_output=True,
                          text=True, check=False)


@pytest.mark.slow
def test_served_traffic_is_logged_and_checked_for_drift(module_project: tuple[Project, dict[str, str]],
                                                        tmp_path: Path) -> None:
    p, env = module_project
    logdir = tmp_path / "served"
    server = start_server(p.root, "--model", "models", "--poll", "0", "--log-predictions", str(logdir),
                          env=env, logdir=tmp_path / "logs")
    frame = held_out(p.root)
    answers: list[Any] = []
    try:
        for lo, hi in ((0, 1), (1, 11), (11, len(frame))):  # one row, a small batch, a large one
            r = server.post("/predict", rows_body(frame.iloc[lo:hi]))
            assert r.status == 200, r
            answers.append(r.json())
        assert server.post("/predict", {"rows": [{"nope": 1}]}).status == 422  # refused: not logged
        health = server.health()["prediction_log"]
        assert health["directory"] == str(logdir) and health["dropped"] == 0
    finally:
        server.stop()  # SIGTERM: the log is drained and closed on the way out
    records = read(str(logdir))
    assert [r["response"] for r in records] == answers
    assert all(r["version"] == "1.0.0" and r["latency_ms"] > 0 for r in records)

    same = _drift(p, env, "--from-log", str(logdir), "--json")
    assert same.returncode == 0, same.stderr
    report = json.loads(same.stdout)
    assert "3 requests" in report["data"] and report["rows"] == len(frame)
    (name,) = os.listdir(logdir)
    with open(logdir / name, "ab") as fh:
        fh.write(b'{"time":"2026-12-03T00:00:00.000Z","model":"m","vers')  # what kill -9 leaves
    cut = _drift(p, env, "--from-log", str(logdir), "--json")
    assert cut.returncode == 0, cut.stderr
    assert "3 requests" in (data := json.loads(cut.stdout)["data"]) and "1 line cut short skipped" in data

    shifted = tmp_path / "shifted"
    log = PredictionLog(str(shifted))
    moved = frame.copy()
    moved[moved.columns[0]] = moved[moved.columns[0]] * 3 + 10
    log.record("model", "1.0.0", json.dumps(rows_body(moved)).encode(), ANSWER, 0.001)
    log.stop()
    drifted = _drift(p, env, "--from-log", str(shifted), "--no-predictions")
    assert drifted.returncode == DriftDetected.exit_code, drifted.stdout + drifted.stderr
    assert moved.columns[0] in drifted.stderr

    both = _drift(p, env, "new.csv", "--from-log", str(shifted))
    assert both.returncode == ConfigError.exit_code and "not both" in both.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    none = _drift(p, env, "--from-log", str(empty))
    assert none.returncode == 2 and "no prediction log records" in none.stderr and "Traceback" not in none.stderr


def test_rotation_never_deletes_a_live_workers_file(tmp_path: Path) -> None:
    gone = subprocess.Popen(["true"])
    gone.wait()  # its pid names no process now
    live = tmp_path / f"predictions-20000101T000000-{os.getppid()}-000001.jsonl"  # another live process
    dead = tmp_path / f"predictions-20000101T000000-{gone.pid}-000001.jsonl"
    for f in (live, dead):
        f.write_bytes(b"")
    log = PredictionLog(str(tmp_path), max_bytes=100, keep=1)
    for i in range(20):
        log.record("m", "1.0.0", b'{"rows":[{"x":%d}]}' % i, ANSWER, 0.001)
    log.stop()
    assert live.exists() and not dead.exists()
    assert len([f for f in tmp_path.iterdir() if f"-{os.getpid()}-" in f.name]) == 1
