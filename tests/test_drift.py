"""Drift statistics against a training profile, and `shelf drift` end to end."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from modelshelf.drift import profile as P
from modelshelf.params import DriftParams

from conftest import Project

SCHEMA = {
    "features": [{"name": f"x{i}", "kind": "numeric"} for i in range(10)]
    + [{"name": "colour", "kind": "categorical"}],
    "target": {"name": "y"},
    "task": "binary",
}


def frame(n: int, seed: int, shift: float = 0.0, mix: tuple[float, float, float] = (0.5, 0.3, 0.2)) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    data = {f"x{i}": rng.normal(size=n) for i in range(10)}
    data["x3"] = data["x3"] + shift
    data["colour"] = rng.choice(["red", "green", "blue"], size=n, p=list(mix))
    data["y"] = rng.integers(0, 2, size=n)
    out = pd.DataFrame(data)
    out.loc[rng.choice(n, n // 50, replace=False), "x1"] = np.nan
    return out


@pytest.fixture(scope="module")
def reference() -> dict:
    return P.build(frame(4000, seed=0), SCHEMA)


def test_samples_from_the_training_distribution_raise_under_5_percent_false_alarms(reference: dict) -> None:
    alarms = sum(P.compare(reference, SCHEMA, frame(1000, seed=s), DriftParams()).verdict != "no drift"
                 for s in range(1, 61))
    assert alarms / 60 < 0.05


def test_a_one_sigma_mean_shift_is_drift_and_names_the_feature(reference: dict) -> None:
    result = P.compare(reference, SCHEMA, frame(1000, seed=7, shift=1.0), DriftParams())
    assert result.verdict == "drift" and result.drifted() == ["x3"]
    x3 = next(f for f in result.features if f.name == "x3")
    assert x3.psi > 0.25 and x3.test == "ks" and x3.p_value < 1e-6


def test_a_changed_category_mix_is_drift(reference: dict) -> None:
    result = P.compare(reference, SCHEMA, frame(1000, seed=8, mix=(0.2, 0.3, 0.5)), DriftParams())
    assert result.verdict == "drift" and "colour" in result.drifted()
    colour = next(f for f in result.features if f.name == "colour")
    assert colour.test == "chi2" and colour.p_value < 1e-6


def test_missing_renamed_and_retyped_columns_are_a_schema_break(reference: dict) -> None:
    new = frame(200, seed=9).rename(columns={"x2": "x2_renamed"})
    new["x5"] = "text"
    result = P.compare(reference, SCHEMA, new, DriftParams())
    assert result.verdict == "schema break"
    assert "missing column 'x2'" in result.schema_problems
    assert "new column 'x2_renamed'" in result.schema_problems
    assert "column 'x5' is no longer numeric" in result.schema_problems


def test_unseen_categories_and_missing_values_are_counted(reference: dict) -> None:
    new = frame(1000, seed=10)
    new.loc[:400, "colour"] = "purple"
    result = P.compare(reference, SCHEMA, new, DriftParams())
    assert "colour" in result.drifted()
    assert next(f for f in result.features if f.name == "x1").missing_ref == pytest.approx(0.02, abs=0.005)


def test_psi_is_zero_for_identical_shares_and_grows_with_shift() -> None:
    assert P._psi([0.5, 0.5], [0.5, 0.5]) == 0.0
    assert P._psi([0.5, 0.5], [0.6, 0.4]) < P._psi([0.5, 0.5], [0.8, 0.2])


def test_threaded_comparison_of_a_large_frame_equals_the_serial_one(reference: dict,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    new = frame(P.PARALLEL_ROWS, seed=11, shift=0.05)
    new.loc[::7, "x4"] = np.inf
    monkeypatch.setattr(P, "_workers", lambda: 2)
    threaded = P.compare(reference, SCHEMA, new, DriftParams())
    monkeypatch.setattr(P, "PARALLEL_ROWS", len(new) + 1)
    serial = P.compare(reference, SCHEMA, new, DriftParams())
    assert threaded == serial and [f.name for f in threaded.features] == [f["name"] for f in SCHEMA["features"]]


@pytest.mark.slow
def test_shelf_drift_cli_exit_codes_and_reports(built: Project) -> None:
    test = pd.read_csv(built.root / "data/prepared/test.csv")
    test.to_csv(built.root / "same.csv", index=False)
    shifted = test.copy()
    shifted["mean radius"] += test["mean radius"].std()
    shifted.to_csv(built.root / "shifted.csv", index=False)
    test.drop(columns=["mean area"]).to_csv(built.root / "broken.csv", index=False)

    same = built.shelf("drift", "same.csv", "--json")
    assert same.returncode == 0 and json.loads(same.stdout)["verdict"] == "no drift"
    assert json.loads(same.stdout)["predictions"]["level"] == "ok"
    drift = built.shelf("drift", "shifted.csv", "--plot", "charts", check=False)
    assert drift.returncode == 9 and "mean radius" in drift.stderr and "✗ drift" in drift.stdout
    charts = built.root / "charts"
    assert (charts / "mean_radius.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (charts / "overview.png").is_file() and len(list(charts.glob("*.png"))) == 32  # 30 + predictions + overview
    broken = built.shelf("drift", "broken.csv", check=False)
    assert broken.returncode == 10 and "missing column 'mean area'" in broken.stderr
    assert "Traceback" not in broken.stderr and len(broken.stderr.strip().splitlines()) == 1
    # The card points at a git-tracked profile whose hash it records.
    card = built.json("models/card.json")
    assert card["profile"]["file"] == "data/profile.json"
    assert built.git("ls-files", "data/profile.json").stdout.strip() == "data/profile.json"
