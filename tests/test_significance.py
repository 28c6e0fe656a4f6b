"""The significance gate (issue 14): paired bootstrap intervals of candidate − baseline, so a
change the held-out set cannot resolve is not a regression under ``gate.regression: significant``."""

from __future__ import annotations

import re

import numpy as np
import pytest

from modelshelf.pipeline.significance import Outputs, intervals, regressed

from conftest import Project


def binary(n: int, flip_c: float, flip_b: float, seed: int) -> tuple[Outputs, Outputs]:
    """Labels and two models' predictions/scores that are right except for a share of flips."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    outs = []
    for flip in (flip_c, flip_b):
        wrong = rng.random(n) < flip
        pred = np.where(wrong, 1 - y, y)
        score = np.clip(pred * 0.8 + rng.normal(0.1, 0.1, n), 0, 1)
        outs.append(Outputs(y, pred, score))
    return outs[0], outs[1]


def test_noise_is_not_a_regression_and_a_real_drop_is() -> None:
    same_c, same_b = binary(200, 0.05, 0.05, seed=1)        # equally good: differ by noise only
    noise = intervals(["accuracy", "f1", "roc_auc"], same_c, same_b, "binary", resamples=2000, seed=7)
    assert set(noise) == {"accuracy", "f1", "roc_auc"}
    for iv in noise.values():
        assert iv.low < 0 < iv.high or iv.low <= iv.delta <= iv.high
        assert not regressed(iv, True, 0.0), iv.text()
    worse_c, worse_b = binary(5000, 0.20, 0.05, seed=2)     # truly worse by ~15 points
    worse = intervals(["accuracy", "f1"], worse_c, worse_b, "binary", resamples=2000, seed=7)
    assert all(regressed(iv, True, 0.0) and iv.high < -0.1 for iv in worse.values()), worse
    # deterministic: the same seed gives the same interval; Bonferroni widens each of 3 metrics
    again = intervals(["accuracy", "f1", "roc_auc"], same_c, same_b, "binary", resamples=2000, seed=7)
    assert {k: (v.low, v.high) for k, v in again.items()} == {k: (v.low, v.high) for k, v in noise.items()}
    assert noise["accuracy"].level == pytest.approx(1 - 0.05 / 3)
    assert noise["accuracy"].text().startswith(("+", "-"))


@pytest.mark.slow
def test_the_pipeline_gate_passes_noise_when_significant_and_fails_it_when_point(built: Project) -> None:
    p = built
    p.set_params(train={"hyperparams": {"n_estimators": 120}}, gate={"tolerance": 0.0, "regression": "point"})
    point = p.dvc("repro", check=False)
    assert point.returncode != 0 and "regressed by" in point.stdout + point.stderr   # 0.0003 of roc_auc
    p.set_params(gate={"regression": "significant"})
    p.dvc("repro")
    report = p.json("metrics/gate.json")
    assert report["passed"] is True
    shown = p.shelf("gate", "--no-write").stdout
    assert "[" in shown and "]" in shown   # the interval is in the table
    # ... and in the card's gate checks and the pull-request report's change column
    card = p.json("models/card.json")
    assert card["gate"]["checks"]["roc_auc"]["ci"] == report["metrics"]["roc_auc"]["ci"]
    assert card["gate"]["checks"]["roc_auc"]["method"] == "paired bootstrap"
    md = p.shelf("report", "--md").stdout   # the workspace candidate against main's model
    row = next(line for line in md.splitlines() if line.startswith("| roc_auc |"))
    assert re.search(r"\| [+-]\d\.\d+ \[[+-]\d\.\d+, [+-]\d\.\d+\] \|", row), row
    assert "paired bootstrap interval" in md
