"""`shelf report`: the pull-request report, in real repositories with main and a feature branch."""

from __future__ import annotations

import json

import pytest

from conftest import Project

pytestmark = pytest.mark.slow


def test_feature_branch_report_shows_deltas_params_verdict_and_version(built: Project) -> None:
    # A release exists on main, so the branch's model would be the next minor version.
    built.git("tag", "-a", "model@v1.0.0", "-m", "Registering artifact model version v1.0.0")
    base_card = built.json("models/card.json")
    built.git("checkout", "-q", "-b", "deeper")
    built.set_params(train={"hyperparams": {"n_estimators": 60, "max_depth": 6}}, gate={"tolerance": 0.05})
    built.dvc("repro")
    built.commit("fewer trees")

    proc = built.shelf("report", "--base", "main", "--json")
    rep = json.loads(proc.stdout)
    assert proc.returncode == 0 and rep["passed"] is True and rep["same_commit"] is False
    assert rep["base_commit"] == built.git("rev-parse", "main").stdout.strip()
    assert rep["params_changed"]["train.hyperparams.n_estimators"] == {"old": 100, "new": 60}
    assert rep["params_changed"]["gate.tolerance"] == {"old": 0.0, "new": 0.05}
    assert rep["release"]["version"] == "1.1.0" and rep["release"]["reason"].startswith("minor")
    card = built.json("models/card.json")
    assert rep["model_bytes"] == {"old": base_card["artefacts"]["model"]["bytes"],
                                  "new": card["artefacts"]["model"]["bytes"]}
    roc = rep["gate"]["metrics"]["roc_auc"]
    assert roc["baseline"] == base_card["metrics"]["roc_auc"] and roc["value"] == card["metrics"]["roc_auc"]
    assert rep["dataset"] == {}  # same data

    md = built.shelf("report", "--base", "main", "--md").stdout
    assert md.startswith("<!-- modelshelf-report -->")
    assert "### modelshelf: v1.1.0 ✓ passes the gate" in md
    delta = card["metrics"]["roc_auc"] - base_card["metrics"]["roc_auc"]
    assert f"| roc_auc | {base_card['metrics']['roc_auc']:.4f} | {card['metrics']['roc_auc']:.4f} | {delta:+.4f} |" in md
    assert "`train.hyperparams.n_estimators` `100` → `60`" in md
    # The same verdict as the pipeline's gate stage wrote.
    assert rep["passed"] == built.json("metrics/gate.json")["passed"]


def test_regressing_branch_fails_with_a_cross_and_exit_3(built: Project) -> None:
    built.git("checkout", "-q", "-b", "worse")
    built.set_params(train={"hyperparams": {"n_estimators": 2, "max_depth": 1}},
                     gate={"tolerance": 1.0, "thresholds": {"accuracy": 0.5}})
    built.dvc("repro")           # passes its own (loosened) gate ...
    built.commit("loosen the gate")
    built.set_params(gate={"tolerance": 0.0})   # ... but a reviewer's main-strength gate says no
    proc = built.shelf("report", "--base", "main", "--md", check=False)
    assert proc.returncode == 3
    assert "✗ fails the gate" in proc.stdout and "| ✗ |" in proc.stdout
    assert "regressed by" in proc.stdout
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr


def test_same_commit_says_no_change(built: Project) -> None:
    proc = built.shelf("report", "--base", "main")
    assert "no change" in proc.stdout
    rep = json.loads(built.shelf("report", "--base", "main", "--json").stdout)
    assert rep["same_commit"] is True and rep["params_changed"] == {}
    assert rep["release"]["version"] is None and "unchanged" in rep["release"]["reason"]
    # DVC itself says nothing for the same commit: the report still does.
    assert built.dvc("metrics", "diff", "main", "--json").stdout.strip() in ("{}", "")


def test_first_model_has_thresholds_only(project: Project) -> None:
    project.dvc("repro")
    proc = project.shelf("report", "--base", "main")
    assert proc.returncode == 0
    assert "No baseline at main" in proc.stdout and "thresholds only" in proc.stdout
    rep = json.loads(project.shelf("report", "--json").stdout)
    assert rep["gate"]["baseline"]["found"] is False and rep["release"]["version"] == "1.0.0"
