"""Canary and shadow on one host: ``shelf serve --canary SPEC --canary-share F`` answers a
stable, sticky share of keys with the candidate; ``--shadow SPEC`` answers with the stable
model only and logs both answers; ``shelf canary report DIR`` compares them and says whether
to promote."""

from __future__ import annotations

import http.client
import json
import os
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from conftest import Project, isolated_env
from modelshelf.errors import ConfigError, GateFailed
from modelshelf.serve.canary import Split
from modelshelf.serve.compare import compare
from modelshelf.serve.holder import Holder
from modelshelf.serve.predlog import PredictionLog, read
from test_serve import (  # noqa: F401 - fixtures
    BIN,
    held_out,
    one,
    parse_metrics,
    rows_body,
    start_server,
    template_v1,
    template_v11,
    two_releases,
)


def test_the_canary_share_is_within_a_point_and_sticky_per_key() -> None:
    for share in (0.1, 0.3):
        split = Split(Holder("unused"), share=share)
        taken = [split.takes(f"user-{i}".encode()) for i in range(10_000)]
        assert abs(sum(taken) / len(taken) - share) < 0.01, share
        assert [split.takes(f"user-{i}".encode()) for i in range(10_000)] == taken  # sticky
    low, high = Split(Holder("unused"), share=0.1), Split(Holder("unused"), share=0.3)
    # Raising the share keeps the keys the canary had: nobody flips back and forth.
    assert all(high.takes(k) for i in range(10_000) if low.takes(k := f"user-{i}".encode()))


def _log(tmp: Path, records: list[tuple[str, str, Any, Any, float, bytes]]) -> Path:
    log = PredictionLog(str(tmp))
    for model, version, stable, extra_answer, ms, role in records:
        extra = role
        if extra_answer is not None:
            extra += (b',"shadow":{"version":"1.1.0","latency_ms":' + json.dumps(ms).encode()
                      + b',"response":' + json.dumps({"predictions": extra_answer}).encode() + b"}")
        log.record(model, version, b'{"rows":[{"x":1}]}', json.dumps({"predictions": stable}).encode(),
                   ms / 1000, extra)
    log.stop()
    return tmp


def test_shadow_report_promotes_an_agreeing_candidate_and_holds_a_disagreeing_one(tmp_path: Path) -> None:
    role = b',"role":"shadow"'
    same = _log(tmp_path / "same", [("m", "1.0.0", [i % 2], [i % 2], 1.0, role) for i in range(200)])
    good = compare(same)
    assert good.promote and good.mode == "shadow" and good.agreement == 1.0, good.reasons
    assert good.stable.version == "1.0.0" and good.candidate.version == "1.1.0"
    # Every fifth row answered 1: one row in ten changes (90 % agreement), class 1 grows from 50 % to 60 %.
    off = _log(tmp_path / "off", [("m", "1.0.0", [i % 2], [1 if i % 5 == 0 else i % 2], 1.0, role)
                                  for i in range(200)])
    bad = compare(off)
    assert not bad.promote and bad.agreement == pytest.approx(0.9) and bad.shift == pytest.approx(0.1)
    assert any("agreement 90.00%" in r for r in bad.reasons) and any("share" in r for r in bad.reasons)
    refused = role + b',"shadow":{"version":"1.1.0","latency_ms":0.1,"status":422,"error":{"error":"x"}}'
    failing = compare(_log(tmp_path / "failing", [("m", "1.0.0", [1], [1], 1.0, role) for i in range(150)]
                           + [("m", "1.0.0", [1], None, 1.0, refused)]))  # the candidate refused one request
    assert not failing.promote and failing.errors == 1 and failing.agreement == 1.0
    assert any("could not answer 1 of 151" in r for r in failing.reasons)


def test_canary_report_compares_the_two_sides_distributions(tmp_path: Path) -> None:
    recs = [("m", "1.0.0", [i % 2], None, 1.0, b',"role":"stable"') for i in range(300)]
    recs += [("m", "1.1.0", [i % 2], None, 1.2, b',"role":"canary"') for i in range(150)]
    ok = compare(_log(tmp_path / "ok", recs))
    assert ok.mode == "canary" and ok.promote and ok.agreement is None and ok.shift == 0.0
    assert (ok.stable.requests, ok.candidate.requests) == (300, 150)
    few = compare(_log(tmp_path / "few", recs[:300] + recs[300:320]))  # 20 canary requests: no verdict yet
    assert not few.promote and any("too few" in r for r in few.reasons)
    late = [("m", "1.1.0", [1], None, 9.0, b',"role":"canary"') for _ in range(150)]
    held = compare(_log(tmp_path / "late", recs[:300] + late))  # all class 1, and 9 × slower
    assert not held.promote and any("p99" in r for r in held.reasons) and held.shift == pytest.approx(0.5)
    with pytest.raises(Exception, match="no canary or shadow records"):
        compare(_log(tmp_path / "plain", [("m", "1.0.0", [1], None, 1.0, b"")]))


def _serve_refused(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = isolated_env(tmp_path / "home")
    return subprocess.run([str(BIN / "shelf"), "serve", *args], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=60)


def test_flags_a_canary_cannot_go_with_are_refused_in_one_line(tmp_path: Path) -> None:
    for args, words in ((("--shadow", "v1.1.0"), "add --log-predictions"),
                        (("--canary", "prod", "--model", "prod"), "is the stable model")):
        done = _serve_refused(tmp_path, *args)
        assert done.returncode == ConfigError.exit_code, done.stderr
        assert words in done.stderr and "Traceback" not in done.stderr and len(done.stderr.splitlines()) == 1
    both = _serve_refused(tmp_path, "--canary", "v1.1.0", "--shadow", "v1.1.0")
    assert both.returncode == 2 and "not allowed with" in both.stderr


def _post(conn: http.client.HTTPConnection, body: bytes, key: str | None = None) -> bytes:
    headers = {"Content-Type": "application/json", **({"X-Canary-Key": key} if key else {})}
    conn.request("POST", "/predict", body=body, headers=headers)
    resp = conn.getresponse()
    data = resp.read()
    assert resp.status == 200, data
    return data


@pytest.mark.slow
def test_a_canary_answers_its_share_of_keys_and_the_report_reads_it(two_releases: Project, tmp_path: Path) -> None:
    p = two_releases
    env = isolated_env(p.root.parent / "home")
    logdir = tmp_path / "served"
    server = start_server(p.root, "--model", "prod", "--poll", "0", "--canary", "v1.1.0", "--canary-share", "0.1",
                          "--log-predictions", str(logdir), env=env, logdir=tmp_path / "logs")
    frame = held_out(p.root)
    body = json.dumps(rows_body(frame.iloc[:1])).encode()
    try:
        assert "canary v1.1.0 for 10% of keys" in server.output()
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        seen: dict[str, str] = {}
        answered: Counter[str] = Counter()  # by version, every 200 below
        for i in range(10_000):
            seen[f"user-{i}"] = json.loads(_post(conn, body, f"user-{i}"))["version"]
            answered[seen[f"user-{i}"]] += 1
        share = sum(v == "1.1.0" for v in seen.values()) / len(seen)
        assert abs(share - 0.1) < 0.01, share
        for i in range(0, 10_000, 50):  # the same key, later: the same model
            assert json.loads(_post(conn, body, f"user-{i}"))["version"] == seen[f"user-{i}"]
            answered[seen[f"user-{i}"]] += 1
        no_key = {json.loads(_post(conn, body))["version"] for _ in range(20)}
        assert len(no_key) == 1  # no header: the body is the key
        answered[next(iter(no_key))] += 20
        # The Open Inference Protocol is routed alike; naming the candidate's version reaches it.
        row = frame.iloc[0]
        v2 = json.dumps({"inputs": [{"name": n, "shape": [1], "datatype": "FP64", "data": [float(row[n])]}
                                    for n in frame.columns]}).encode()
        for i in range(0, 10_000, 97):
            conn.request("POST", "/v2/models/model/infer", body=v2, headers={"X-Canary-Key": f"user-{i}"})
            assert json.loads(conn.getresponse().read())["model_version"] == seen[f"user-{i}"]
            answered[seen[f"user-{i}"]] += 1
        conn.request("POST", "/v2/models/model/versions/1.1.0/infer", body=v2)
        assert json.loads(conn.getresponse().read())["model_version"] == "1.1.0"
        answered["1.1.0"] += 1
        # A body the candidate refuses counts against the candidate, with its status.
        canary_key = next(k for k, v in seen.items() if v == "1.1.0")
        conn.request("POST", "/predict", body=b'{"rows": [{}]}', headers={"X-Canary-Key": canary_key})
        refused = conn.getresponse()
        refused.read()
        assert 400 <= refused.status < 500
        # /metrics says who answered what, for a canary analysis (Flagger, Argo Rollouts) to query.
        conn.request("GET", "/metrics")
        samples = parse_metrics(conn.getresponse().read().decode())
        for role, version in (("stable", "1.0.0"), ("canary", "1.1.0")):
            n = one(samples, "modelshelf_canary_answers_total", role=role, version=version, status="200")
            assert n == answered[version] > 0, (role, n, answered)
            refusals = 1 if role == "canary" else 0
            assert one(samples, "modelshelf_canary_answers_total", role=role, version=version,
                       status=str(refused.status)) == refusals
            count = one(samples, "modelshelf_canary_seconds_count", role=role)
            assert count == n + refusals == one(samples, "modelshelf_canary_seconds_bucket", role=role, le="+Inf")
            assert 0 < one(samples, "modelshelf_canary_seconds_sum", role=role) < count  # seconds, each well under 1
        health = server.health()["candidate"]
        assert health["mode"] == "canary" and health["version"] == "1.1.0" and health["answered"] > 900
        conn.close()
    finally:
        server.stop()
    records = read(str(logdir))
    assert {(r["role"], r["version"]) for r in records} == {("stable", "1.0.0"), ("canary", "1.1.0")}
    done = subprocess.run([str(BIN / "shelf"), "canary", "report", str(logdir), "--json"], cwd=p.root, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode in (0, GateFailed.exit_code), done.stderr
    report = json.loads(done.stdout)
    assert report["mode"] == "canary" and report["stable"]["version"] == "1.0.0"
    assert report["candidate"]["version"] == "1.1.0" and report["candidate"]["requests"] > 900
    assert (done.returncode == 0) == (report["verdict"] == "promote")


@pytest.mark.slow
def test_a_shadow_leaves_the_answers_byte_identical_and_logs_both(two_releases: Project, tmp_path: Path) -> None:
    p = two_releases
    env = isolated_env(p.root.parent / "home")
    logdir = tmp_path / "served"
    alone = start_server(p.root, "--model", "prod", "--poll", "0", env=env, logdir=tmp_path / "logs")
    shadowed = start_server(p.root, "--model", "prod", "--poll", "0", "--shadow", "v1.1.0",
                            "--log-predictions", str(logdir), env=env, logdir=tmp_path / "logs")
    frame = held_out(p.root)
    bodies = [json.dumps(rows_body(frame.iloc[i:i + n])).encode() for i, n in ((0, 1), (1, 5), (6, 100), (0, 1))]
    try:
        a = http.client.HTTPConnection("127.0.0.1", alone.port, timeout=30)
        b = http.client.HTTPConnection("127.0.0.1", shadowed.port, timeout=30)
        for body in bodies * 30:
            assert _post(b, body) == _post(a, body)  # the shadow changes no byte of an answer
        a.close()
        b.close()
    finally:
        alone.stop()
        shadowed.stop()  # SIGTERM: the shadow scores what is queued, then the log is drained
    records = read(str(logdir))
    assert len(records) == len(bodies) * 30
    assert all(r["role"] == "shadow" and r["version"] == "1.0.0" and r["shadow"]["version"] == "1.1.0"
               and r["shadow"]["response"]["version"] == "1.1.0"
               and len(r["shadow"]["response"]["predictions"]) == len(r["response"]["predictions"])
               for r in records)
    done = subprocess.run([str(BIN / "shelf"), "canary", "report", str(logdir)], cwd=p.root, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode in (0, GateFailed.exit_code), done.stderr
    assert "shadow: v1.1.0 beside v1.0.0" in done.stdout and "agreement:" in done.stdout
    assert os.path.isdir(logdir)
