"""A prediction log that was edited, damaged or is still being written, read by ``shelf canary
report DIR`` and ``shelf drift --from-log DIR``: a line a killed (or live) server left half
written at a file's end is skipped and counted; anything else malformed is refused in one line
naming the file, the line and the field, with the exit code of a :class:`DataError`."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from conftest import BIN, isolated_env
from modelshelf.errors import DataError
from modelshelf.serve.predlog import PredictionLog, read

REQUEST = b'{"rows":[{"x":1}]}'
SHADOW = b',"role":"shadow","shadow":{"version":"1.1.0","latency_ms":1.0,"response":{"predictions":[1]}}'


def _canary_log(directory: Path, plain: int = 0) -> Path:
    """A canary's log that reports "promote" (300 stable, 150 canary requests alike), after
    ``plain`` records of a server without a canary; returns its one file."""
    log = PredictionLog(str(directory))
    for i in range(plain):
        log.record("m", "1.0.0", REQUEST, b'{"model":"m","version":"1.0.0","predictions":[%d]}' % (i % 2), 0.001)
    for version, role, n in (("1.0.0", b"stable", 300), ("1.1.0", b"canary", 150)):
        for i in range(n):
            answer = json.dumps({"model": "m", "version": version, "predictions": [i % 2]}).encode()
            log.record("m", version, REQUEST, answer, 0.001, b',"role":"' + role + b'"')
    log.stop()
    (name,) = os.listdir(directory)
    return directory / name


def _shadow_log(directory: Path) -> Path:
    log = PredictionLog(str(directory))
    for _ in range(150):
        log.record("m", "1.0.0", REQUEST, b'{"model":"m","version":"1.0.0","predictions":[1]}', 0.001, SHADOW)
    log.stop()
    (name,) = os.listdir(directory)
    return directory / name


def _edit(file: Path, line: int, change: Callable[[dict[str, Any]], Any] | bytes) -> None:
    """Replace line ``line`` (from 1) of ``file`` by ``change`` (bytes) or by its record after
    ``change`` altered it in place."""
    lines = file.read_bytes().split(b"\n")
    if isinstance(change, bytes):
        lines[line - 1] = change
    else:
        record = json.loads(lines[line - 1])
        change(record)
        lines[line - 1] = json.dumps(record).encode()
    file.write_bytes(b"\n".join(lines))


def _shelf(directory: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = isolated_env(directory.parent / "home")
    return subprocess.run([str(BIN / "shelf"), *args], cwd=directory.parent, env=env, capture_output=True,
                          text=True, timeout=120)


def _report(directory: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return _shelf(directory, "canary", "report", str(directory), *args)


def _refused(done: subprocess.CompletedProcess[str], *words: str) -> str:
    """The one error line of a refused command (exit 2, nothing on stdout, no traceback)."""
    assert done.returncode == DataError.exit_code, done.stdout + done.stderr
    assert "Traceback" not in done.stderr and "internal error" not in done.stderr, done.stderr
    assert done.stdout == "" and len(done.stderr.splitlines()) == 1, done.stdout + done.stderr
    for word in words:
        assert word in done.stderr, done.stderr
    return done.stderr


# --- shelf canary report: refused ---------------------------------------------------------------


@pytest.mark.parametrize(("field", "change"), [
    ("response", lambda r: r.pop("response")),
    ("version", lambda r: r.pop("version")),
    ("latency_ms", lambda r: r.pop("latency_ms")),
])
def test_a_record_lacking_a_field_is_refused_naming_the_line(tmp_path: Path, field: str,
                                                              change: Callable[[dict[str, Any]], Any]) -> None:
    log = _canary_log(tmp_path / "served")
    _edit(log, 7, change)
    _refused(_report(tmp_path / "served"), f"{log}:7:", f'"{field}" is missing', "fix or delete")


def test_a_latency_that_is_not_a_number_is_refused(tmp_path: Path) -> None:
    log = _canary_log(tmp_path / "served")
    _edit(log, 12, lambda r: r.update(latency_ms="fast"))
    _refused(_report(tmp_path / "served"), f"{log}:12:", '"latency_ms"', '"fast"', "not a number")


def test_a_response_that_is_not_an_object_is_refused(tmp_path: Path) -> None:
    log = _canary_log(tmp_path / "served")
    _edit(log, 3, lambda r: r.update(response=[]))
    _refused(_report(tmp_path / "served"), f"{log}:3:", '"response"', "not an object")


def test_predictions_that_are_not_a_list_are_refused(tmp_path: Path) -> None:
    log = _canary_log(tmp_path / "served")
    _edit(log, 400, lambda r: r["response"].update(predictions=1))
    _refused(_report(tmp_path / "served"), f"{log}:400:", '"response.predictions"', "not a list")


def test_a_prediction_that_is_null_is_refused(tmp_path: Path) -> None:
    log = _canary_log(tmp_path / "served")
    _edit(log, 400, lambda r: r["response"].update(predictions=[None]))
    _refused(_report(tmp_path / "served"), f"{log}:400:", '"response.predictions"', "null")


def test_a_line_that_is_not_json_is_refused(tmp_path: Path) -> None:
    log = _canary_log(tmp_path / "served")
    _edit(log, 20, b'{"time":"2026-12-03T00:00:00.000Z","model":"m","vers')  # cut short, but not the last
    _refused(_report(tmp_path / "served"), f"{log}:20:", "not JSON")


def test_a_line_that_is_a_json_list_is_refused(tmp_path: Path) -> None:
    log = _canary_log(tmp_path / "served")
    _edit(log, 20, b'[1, 2, 3]')
    _refused(_report(tmp_path / "served"), f"{log}:20:", "a JSON array, not an object")


def test_an_unknown_role_is_refused(tmp_path: Path) -> None:
    log = _canary_log(tmp_path / "served")
    _edit(log, 450, lambda r: r.update(role="canry"))
    _refused(_report(tmp_path / "served"), f"{log}:450:", '"role"', '"canry"')


def test_a_shadow_record_without_the_candidates_answer_or_status_is_refused(tmp_path: Path) -> None:
    log = _shadow_log(tmp_path / "served")
    _edit(log, 9, lambda r: r["shadow"].pop("response"))
    _refused(_report(tmp_path / "served"), f"{log}:9:", '"shadow.response"')


def test_a_shadow_latency_of_the_wrong_type_is_refused(tmp_path: Path) -> None:
    log = _shadow_log(tmp_path / "served")
    _edit(log, 150, lambda r: r["shadow"].update(latency_ms=None))
    _refused(_report(tmp_path / "served"), f"{log}:150:", '"shadow.latency_ms"', "null")


def test_a_directory_with_no_log_files_is_refused(tmp_path: Path) -> None:
    (tmp_path / "served").mkdir()
    (tmp_path / "served" / "notes.txt").write_text("not a log\n")
    _refused(_report(tmp_path / "served"), str(tmp_path / "served"), "no prediction log records",
             "predictions-*.jsonl")


def test_a_compressed_log_alone_is_refused_saying_so(tmp_path: Path) -> None:
    (tmp_path / "served").mkdir()
    (tmp_path / "served" / "predictions-20260101T000000-1-000001.jsonl.gz").write_bytes(b"\x1f\x8b\x08\x00")
    _refused(_report(tmp_path / "served"), str(tmp_path / "served"), ".jsonl.gz", "decompress")


def test_only_empty_log_files_are_refused(tmp_path: Path) -> None:
    (tmp_path / "served").mkdir()
    (tmp_path / "served" / "predictions-20260101T000000-1-000001.jsonl").write_bytes(b"")
    _refused(_report(tmp_path / "served"), str(tmp_path / "served"), "no canary or shadow records")


def test_a_file_instead_of_a_directory_is_refused(tmp_path: Path) -> None:
    log = _canary_log(tmp_path / "served")
    _refused(_report(log), str(log), "not a directory")


def test_traceback_shows_the_traceback_and_keeps_the_exit_code(tmp_path: Path) -> None:
    log = _canary_log(tmp_path / "served")
    _edit(log, 7, lambda r: r.pop("response"))
    done = _report(tmp_path / "served", "--traceback")
    assert done.returncode == DataError.exit_code and "Traceback" in done.stderr
    assert f"{log}:7:" in done.stderr.splitlines()[-1]


# --- shelf canary report: skipped -----------------------------------------------------------------


def test_a_half_written_last_line_is_skipped_and_reported(tmp_path: Path) -> None:
    served = tmp_path / "served"
    log = _canary_log(served)
    older = served / "predictions-20000101T000000-1-000001.jsonl"  # a server killed earlier
    plain = json.loads(log.read_bytes().split(b"\n")[0])
    del plain["role"]  # a record of the server before it had a canary
    older.write_bytes(json.dumps(plain).encode() + b'\n{"time":"2000-01-01T00:00:00.000Z","mo')
    with open(log, "ab") as fh:
        fh.write(b'{"time":"2026-12-03T00:00:00.000Z","model":"m","vers')  # a server still writing
    done = _report(served)
    assert done.returncode == 0, done.stderr
    assert "skipped: 2 lines cut short" in done.stdout and "1 record outside this comparison" in done.stdout
    data = json.loads(_report(served, "--json").stdout)
    assert data["skipped"] == {"cut_short": 2, "not_compared": 1} and data["verdict"] == "promote"


def test_records_of_other_kinds_are_skipped_and_unrelated_files_ignored(tmp_path: Path) -> None:
    served = tmp_path / "served"
    _canary_log(served, plain=40)  # the server ran without a canary first
    (served / "predictions-20260101T000000-1-000001.jsonl.gz").write_bytes(b"\x1f\x8b\x08\x00")
    (served / "README").write_text("rotated logs\n")
    (served / "predictions-old.jsonl").mkdir()  # not a file
    (served / "predictions-20000101T000000-1-000001.jsonl").write_bytes(b"")  # just rotated, empty
    data = json.loads(_report(served, "--json").stdout)
    assert data["skipped"] == {"cut_short": 0, "not_compared": 40} and data["verdict"] == "promote"
    assert (data["stable"]["requests"], data["candidate"]["requests"]) == (300, 150)


def test_a_shadows_error_answers_are_counted_not_refused(tmp_path: Path) -> None:
    log = _shadow_log(tmp_path / "served")
    _edit(log, 5, lambda r: r.update(shadow={"version": "1.1.0", "latency_ms": 0.1, "status": 422,
                                              "error": {"error": "x"}}))
    done = _report(tmp_path / "served", "--json")
    assert done.returncode == 3, done.stderr  # hold: the candidate failed a request
    data = json.loads(done.stdout)
    assert data["errors"] == 1 and data["skipped"] == {"cut_short": 0, "not_compared": 0}


def test_a_clean_log_reports_nothing_skipped(tmp_path: Path) -> None:
    _canary_log(tmp_path / "served")
    done = _report(tmp_path / "served")
    assert done.returncode == 0, done.stderr
    assert "skipped" not in done.stdout


# --- shelf drift --from-log: the same reader ------------------------------------------------------


def _drift(directory: Path) -> subprocess.CompletedProcess[str]:
    return _shelf(directory, "drift", "--from-log", str(directory))


def test_drift_refuses_a_line_that_is_not_json(tmp_path: Path) -> None:
    log = _canary_log(tmp_path / "served")
    _edit(log, 20, b"garbage")
    _refused(_drift(tmp_path / "served"), f"{log}:20:", "not JSON")


def test_drift_refuses_a_line_that_is_a_json_list(tmp_path: Path) -> None:
    log = _canary_log(tmp_path / "served")
    _edit(log, 20, b"[]")
    _refused(_drift(tmp_path / "served"), f"{log}:20:", "not an object")


def test_drift_refuses_a_record_lacking_its_version(tmp_path: Path) -> None:
    log = _canary_log(tmp_path / "served")
    _edit(log, 450, lambda r: r.pop("version"))  # the newest record, which names the model
    _refused(_drift(tmp_path / "served"), f"{log}:450:", '"version" is missing')


def test_drift_refuses_a_record_lacking_its_request(tmp_path: Path) -> None:
    log = _canary_log(tmp_path / "served")
    _edit(log, 30, lambda r: r.pop("request"))
    _refused(_drift(tmp_path / "served"), f"{log}:30:", '"request" is missing')


def test_drift_refuses_rows_that_are_not_objects(tmp_path: Path) -> None:
    log = _canary_log(tmp_path / "served")
    _edit(log, 30, lambda r: r.update(request={"rows": [1, 2]}))
    _refused(_drift(tmp_path / "served"), f"{log}:30:", '"request.rows"', "not an object")


def test_drift_refuses_columns_of_unequal_lengths(tmp_path: Path) -> None:
    log = _canary_log(tmp_path / "served")
    _edit(log, 30, lambda r: r.update(request={"columns": {"x": [1, 2], "y": [1]}}))
    _refused(_drift(tmp_path / "served"), f"{log}:30:", '"request.columns"')


def test_drift_refuses_a_directory_with_no_log_files(tmp_path: Path) -> None:
    (tmp_path / "served").mkdir()
    (tmp_path / "served" / "predictions-20260101T000000-1-000001.jsonl.gz").write_bytes(b"\x1f\x8b\x08\x00")
    _refused(_drift(tmp_path / "served"), "no prediction log records", "decompress")


# --- the reader itself ----------------------------------------------------------------------------


def test_the_reader_skips_only_a_cut_short_last_line(tmp_path: Path) -> None:
    from modelshelf.serve.logread import read_log

    log = _canary_log(tmp_path / "served")
    with open(log, "ab") as fh:
        fh.write(b'{"time":"2026-12-03T00:00:00.000Z","model":"m","vers')
    got = read_log(tmp_path / "served")
    assert len(got.entries) == 450 and got.cut_short == 1
    assert got.entries[-1].where == f"{log}:450" and got.entries[-1].record["role"] == "canary"
    assert len(read(str(tmp_path / "served"))) == 450  # predlog.read: the same reader, records only
    with open(log, "ab") as fh:
        fh.write(b"\n")  # now a whole line, and not JSON: refused
    with pytest.raises(DataError, match=r":451: not JSON"):
        read_log(tmp_path / "served")


def test_a_last_line_that_is_not_the_start_of_a_record_is_refused(tmp_path: Path) -> None:
    from modelshelf.serve.logread import read_log

    log = _canary_log(tmp_path / "served")
    with open(log, "ab") as fh:
        fh.write(b"\x1f\x8b\x08\x00 binary")  # no newline, yet no server wrote it
    with pytest.raises(DataError, match=r":451: not JSON"):
        read_log(tmp_path / "served")


def test_a_shadow_that_failed_every_request_reports_null_shift_in_strict_json(tmp_path: Path) -> None:
    log = PredictionLog(str(tmp_path / "served"))
    failed = b',"role":"shadow","shadow":{"version":"1.1.0","latency_ms":1.0,"status":500,"error":"internal error"}'
    for _ in range(150):
        log.record("m", "1.0.0", REQUEST, b'{"model":"m","version":"1.0.0","predictions":[1]}', 0.001, failed)
    log.stop()
    done = _report(tmp_path / "served", "--json")
    assert done.returncode == 3, done.stderr  # hold: the shadow answered nothing

    def strict(name: str) -> None:
        raise AssertionError(f"{name} is not JSON")

    report = json.loads(done.stdout, parse_constant=strict)
    assert report["shift"] is None and report["errors"] == 150 and report["verdict"] == "hold"
