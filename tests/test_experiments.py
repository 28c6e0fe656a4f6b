"""``dvc exp run`` with the gate (issue 14): a failed gate is a saved experiment whose verdict
is a column of ``dvc exp show``, never a serialised or released model; a queued grid runs with
several workers in DVC's scratch clones, and its best point is applied, reproduced and released.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from conftest import Project


def experiments(p: Project) -> dict[str, dict[str, Any]]:
    """``dvc exp show --json``: experiment name → {params, verdict, accuracy, state}."""
    rows = json.loads(p.dvc("exp", "show", "--json").stdout)
    found = {}
    for row in rows:
        for exp in row.get("experiments") or []:
            for rev in exp.get("revs") or []:
                data = rev.get("data") or {}
                metrics = {k: v.get("data") for k, v in (data.get("metrics") or {}).items()}
                found[rev.get("name") or rev["rev"]] = {
                    "params": (data.get("params") or {}).get("params.yaml", {}).get("data", {}),
                    "verdict": metrics.get("metrics/verdict.json") or {},
                    "accuracy": (metrics.get("metrics/eval.json") or {}).get("accuracy"),
                    "state": data.get("status") or rev.get("status"),
                }
    return found


def test_a_failed_gate_is_a_saved_experiment_that_can_never_be_released(built: Project) -> None:
    p = built
    model_before = p.json("models/card.json")["artefacts"]["model"]["sha256"]
    proc = p.dvc("exp", "run", "-n", "too-strict", "-S", "gate.thresholds.accuracy=0.999",
                 "-S", "train.hyperparams.max_depth=1")
    assert "the failed gate is recorded" in proc.stdout + proc.stderr
    exp = experiments(p)["too-strict"]
    assert exp["verdict"]["gate"] == "failed" and "accuracy" in exp["verdict"]["failed"], exp
    assert exp["params"]["train"]["hyperparams"]["max_depth"] == 1
    # The workspace holds the experiment's results, but not its model: models/ is what it started from.
    assert p.json("metrics/gate.json")["passed"] is False
    assert p.json("models/card.json")["artefacts"]["model"]["sha256"] == model_before
    p.commit("the failed experiment, applied")
    refused = p.shelf("release", check=False)
    assert refused.returncode == 3 and "gate" in refused.stderr, refused.stderr
    assert not p.git("tag", "-l", "model@*").stdout.strip()

    # Outside an experiment a failed gate still stops `dvc repro`.
    p.set_params(gate={"thresholds": {"accuracy": 0.9999}})
    failed = p.dvc("repro", check=False)
    assert failed.returncode != 0 and "did not clear the gate" in failed.stderr


@pytest.mark.slow
def test_a_queued_grid_runs_on_two_workers_and_its_best_point_is_released(remote_project: Project) -> None:
    p = remote_project
    p.shelf("release", "--push")
    p.set_params(gate={"tolerance": 0.01})   # stumps regress by more (accuracy 0.93 against 0.96)
    p.commit("tolerate small regressions")
    p.git("push", "-q", "origin", "main")
    # 2 × 2: stumps fail the accuracy threshold; an impossible threshold fails everything.
    p.dvc("exp", "run", "--queue", "-S", "train.hyperparams.max_depth=1,12",
          "-S", "gate.thresholds.accuracy=0.95,0.999")
    p.dvc("exp", "run", "--run-all", "-j", "2")
    grid = experiments(p)
    seen = {n: (e["params"]["train"]["hyperparams"]["max_depth"], e["params"]["gate"]["thresholds"]["accuracy"],
                e["verdict"], e["accuracy"]) for n, e in grid.items()}
    assert len(grid) == 4, seen
    verdicts = {(depth, threshold): v["gate"] for depth, threshold, v, _ in seen.values()}
    assert verdicts == {(1, 0.95): "failed", (1, 0.999): "failed", (12, 0.95): "passed", (12, 0.999): "failed"}, seen
    best = next(n for n, e in grid.items() if e["verdict"]["gate"] == "passed")

    p.dvc("exp", "apply", best)
    assert "up to date" in p.dvc("repro").stdout   # the experiment's outputs are the pipeline's
    hyper = p.params()["train"]["hyperparams"]
    p.commit(f"apply {best}")
    out = p.shelf("release", "--push").stdout
    assert "released model@v1." in out and "v1.0.0" not in out.split("released", 1)[1].split()[0]
    card = p.json("models/card.json")
    assert card["hyperparams"]["max_depth"] == hyper["max_depth"]
    assert card["hyperparams"]["n_estimators"] == hyper["n_estimators"]
    assert card["gate"]["passed"] is True
