"""The retraining cycle end to end, for real: release and serve v1.0.0 as prod; new, shifted
data arrives; drift is detected; retrain, gate, release v1.1.0, promote; the running server
hot-swaps; a regression is stopped by the gate and never released; rolling the stage back
returns the server to v1.0.0, byte for byte."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pandas as pd
import pytest

from conftest import Project, add_remotes, customers
from test_serve import serve, wait_for  # noqa: F401  (serve is a fixture)

pytestmark = pytest.mark.slow




def test_new_data_drift_retrain_release_serve_regression_rollback(new_project, serve, tmp_path: Path) -> None:  # noqa: F811
    p: Project = new_project("cycle")
    p.commit("scaffold")
    p.add_csv("customers.csv", customers(600, seed=1))
    p.set_params(data={"target": "churn"},
                 gate={"thresholds": {"accuracy": 0.75, "f1": 0.7}, "tolerance": 0.0})
    p.dvc("repro")
    p.commit("v1 model")
    add_remotes(p)
    p.shelf("release", "--push")
    p.shelf("promote", "v1.0.0", "--to", "prod")
    v1_card = json.loads(p.git("show", "model@v1.0.0:models/card.json").stdout)

    server = serve(p.root, "--model", "prod", "--poll", "0.3")
    assert server.health()["version"] == "1.0.0"
    probe = {"rows": [{"x0": 0.3, "x1": -0.2, "x2": 0.1, "x3": 0.0, "region": "east"}]}
    v1_answer = server.post("/predict", probe).json()

    # New data arrives, shifted in x0: the drift check against prod names it (exit 9).
    grown = pd.concat([customers(600, seed=1), customers(600, seed=2, shift=1.5)], ignore_index=True)
    fresh = tmp_path / "fresh.csv"
    customers(600, seed=2, shift=1.5).to_csv(fresh, index=False)
    drift = p.shelf("drift", str(fresh), "--model", "prod", "--json", check=False)
    assert drift.returncode == 9, drift.stderr
    assert json.loads(drift.stdout)["drifted"] == ["x0"]

    # Retrain on all the data, gate, release v1.1.0, promote: the server follows prod.
    # The gate judges the new model against v1's model scored on the same, new held-out set.
    p.add_csv("customers.csv", grown)
    p.dvc("repro")
    assert json.loads((p.root / "metrics" / "gate.json").read_text())["baseline"]["used"] == "rescored"
    p.commit("retrain on new data")
    assert "released model@v1.1.0" in p.shelf("release", "--push").stdout
    p.shelf("promote", "v1.1.0", "--to", "prod")
    wait_for("the server to swap to v1.1.0", lambda: server.health()["version"] == "1.1.0")
    assert server.post("/predict", probe).json()["version"] == "1.1.0"

    p.shelf("versions", "--plot", "versions.png")
    assert (p.root / "versions.png").read_bytes()[:4] == b"\x89PNG"

    # A regression is stopped by the gate and never released.
    p.set_params(train={"hyperparams": {"n_estimators": 1, "max_depth": 1}}, gate={"tolerance": 0.0})
    failed = p.dvc("repro", check=False)
    assert failed.returncode != 0 and "gate: FAILED" in failed.stdout
    p.git("checkout", "--", ".")
    p.dvc("checkout", "-q")
    assert "already released as model@v1.1.0" in p.shelf("release").stdout   # nothing new to release
    assert "model@v1.2.0" not in p.git("tag", "-l").stdout

    # Rolling prod back returns the server to v1.0.0, byte for byte.
    p.shelf("rollback", "--stage", "prod")
    wait_for("the server to swap back to v1.0.0", lambda: server.health()["version"] == "1.0.0")
    served_card = server.get("/model").json()
    assert served_card["artefacts"] == v1_card["artefacts"]
    back = server.post("/predict", probe).json()
    assert back["version"] == "1.0.0" and back["probabilities"] == v1_answer["probabilities"]
    fetched = p.root / ".dvc/tmp/modelshelf/model/v1.0.0"
    for rec in v1_card["artefacts"].values():
        assert hashlib.sha256((fetched / rec["file"]).read_bytes()).hexdigest() == rec["sha256"]
