"""End to end: real git, real DVC, the real `shelf` stages, in temporary projects."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import modelshelf
from modelshelf.card import REQUIRED
from modelshelf.errors import IntegrityError, VersionMismatchError

from conftest import Project

pytestmark = pytest.mark.slow


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def multiclass_frame(n: int = 300, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    colour = rng.choice(["red", "green", "blue"], size=n)
    size = rng.normal(size=n)
    weight = rng.normal(size=n)
    label = np.where(colour == "red", "apple", np.where(size > 0, "plum", "grape"))
    frame = pd.DataFrame({"colour": colour, "size": size, "weight": weight, "fruit": label})
    frame.loc[rng.choice(n, 15, replace=False), "size"] = np.nan      # numeric gaps
    frame.loc[rng.choice(n, 10, replace=False), "colour"] = np.nan    # categorical gaps
    return frame


def regression_frame(n: int = 200, seed: int = 1) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x1, x2 = rng.normal(size=n), rng.normal(size=n)
    kind = rng.choice(["a", "b"], size=n)
    y = 3 * x1 - 2 * x2 + np.where(kind == "a", 1.0, -1.0) + rng.normal(scale=0.1, size=n)
    return pd.DataFrame({"x1": x1, "x2": x2, "kind": kind, "price": y})


def test_built_pipeline_outputs_card_and_dvc_integration(built: Project) -> None:
    root = built.root
    card = built.json("models/card.json")
    assert set(REQUIRED) <= set(card)
    assert card["name"] == "model" and card["version"] == "1.0.0"
    assert card["algorithm"] == "sklearn.ensemble.RandomForestClassifier"
    assert card["hyperparams"]["n_estimators"] == 100 and card["hyperparams"]["random_state"] == 42
    assert card["dataset"]["source"] == "builtin:breast_cancer" and card["dataset"]["rows"] == 569
    assert len(card["dataset"]["sha256"]) == 64
    assert card["artefacts"]["model"]["sha256"] == sha(root / "models/model.joblib")
    assert card["artefacts"]["model"]["bytes"] == (root / "models/model.joblib").stat().st_size
    assert card["input_schema"]["task"] == "binary" and card["input_schema"]["classes"] == [0, 1]
    assert len(card["input_schema"]["features"]) == 30
    for dep in ("python", "scikit-learn", "joblib", "numpy", "scipy", "pandas"):
        assert card["dependencies"][dep] not in ("", "not installed")
    assert card["metrics"] == built.json("metrics/eval.json")
    assert card["gate"]["passed"] is True and card["gate"]["baseline"]["found"] is False
    assert card["git"]["commit"] == built.git("rev-parse", "HEAD~1").stdout.strip()

    # A second repro retrains nothing, and DVC sees everything up to date.
    again = built.dvc("repro")
    assert "Running stage" not in again.stdout
    assert "up to date" in built.dvc("status").stdout
    assert built.git("status", "--porcelain").stdout == ""

    shown = json.loads(built.dvc("metrics", "show", "--json").stdout)
    assert shown[""]["data"]["metrics/eval.json"]["data"]["accuracy"] == card["metrics"]["accuracy"]
    plots = built.dvc("plots", "show", "-o", str(root / "plots-out"))
    assert (root / "plots-out" / "index.html").is_file(), plots.stdout + plots.stderr
    assert "failed" not in (plots.stdout + plots.stderr).lower()

    # Loading verifies and predicts.
    model = modelshelf.load(root / "models")
    test = pd.read_csv(root / "data/prepared/test.csv")
    assert model.version == "1.0.0"
    assert set(model.predict(test.drop(columns=["target"]))) <= {0, 1}


def test_param_change_retrains_and_metrics_diff_reads_it(built: Project) -> None:
    built.set_params(train={"hyperparams": {"n_estimators": 60, "max_depth": 6}},
                     gate={"tolerance": 0.05})
    out = built.dvc("repro").stdout
    assert "Stage 'prepare' didn't change" in out and "Running stage 'train'" in out
    assert "baseline" in out and "gate: PASSED" in out
    diff = json.loads(built.dvc("metrics", "diff", "--all", "--json").stdout)
    assert "accuracy" in diff["metrics/eval.json"]
    gate = built.json("metrics/gate.json")
    assert gate["baseline"]["found"] is True
    assert gate["baseline"]["commit"] == built.git("rev-parse", "main").stdout.strip()
    assert gate["metrics"]["accuracy"]["baseline"] is not None


def test_threshold_above_reach_stops_repro_and_writes_nothing(built: Project) -> None:
    root = built.root
    model_sha, card_before = sha(root / "models/model.joblib"), (root / "models/card.json").read_text()
    built.set_params(gate={"thresholds": {"accuracy": 0.999, "f1": 0.9}},
                     train={"hyperparams": {"n_estimators": 50, "max_depth": 4}})
    proc = built.dvc("repro", check=False)
    assert proc.returncode != 0
    assert "✗ accuracy" in proc.stdout and "gate: FAILED" in proc.stdout
    assert "Running stage 'serialise'" not in proc.stdout
    report = built.json("metrics/gate.json")
    assert report["passed"] is False and report["metrics"]["accuracy"]["passed"] is False
    assert sha(root / "models/model.joblib") == model_sha
    assert (root / "models/card.json").read_text() == card_before
    # The gate's own exit code, from the CLI with paths taken from dvc.yaml.
    direct = built.shelf("gate", "--no-write", check=False)
    assert direct.returncode == 3
    assert "Traceback" not in direct.stderr and len(direct.stderr.strip().splitlines()) == 1


def test_regression_from_baseline_fails_and_tolerance_admits_it(built: Project) -> None:
    built.set_params(train={"hyperparams": {"n_estimators": 1, "max_depth": 1}},
                     gate={"thresholds": {"accuracy": 0.5}})
    proc = built.dvc("repro", check=False)
    assert proc.returncode != 0
    assert "regressed by" in proc.stdout
    built.set_params(gate={"tolerance": 0.5})
    ok = built.dvc("repro")
    assert "gate: PASSED" in ok.stdout
    assert built.json("models/card.json")["gate"]["baseline"]["found"] is True


def test_version_follows_annotated_tags_and_schema(built: Project) -> None:
    # A lightweight tag is ignored; an annotated one counts.
    built.git("tag", "model@v7.0.0")
    built.git("tag", "-a", "model@v1.2.0", "-m", "Registering artifact model version v1.2.0")
    built.set_params(train={"hyperparams": {"n_estimators": 80, "max_depth": 8}}, gate={"tolerance": 0.1})
    built.dvc("repro")
    card = built.json("models/card.json")
    assert card["version"] == "1.3.0" and card["version_bump"].startswith("minor")
    built.set_params(release={"bump": "patch"})
    built.dvc("repro")
    assert built.json("models/card.json")["version"] == "1.2.1"


def test_multiclass_csv_with_categories_and_gaps(project: Project) -> None:
    project.add_csv("fruit.csv", multiclass_frame())
    project.set_params(data={"target": "fruit"},
                       gate={"thresholds": {"accuracy": 0.7, "f1_macro": 0.6}})
    out = project.dvc("repro").stdout
    assert "task multiclass" in out and "gate: PASSED" in out
    card = project.json("models/card.json")
    schema = card["input_schema"]
    assert schema["classes"] == ["apple", "grape", "plum"]
    colour = next(f for f in schema["features"] if f["name"] == "colour")
    assert colour["kind"] == "categorical" and colour["categories"] == ["blue", "green", "red"]
    assert {"accuracy", "f1_macro", "roc_auc_ovr"} <= set(card["metrics"])
    assert card["dataset"]["path"] == "data/raw/fruit.csv"
    assert card["dataset"]["sha256"] == sha(project.root / "data/raw/fruit.csv")
    model = modelshelf.load(project.root / "models/card.json")
    rows = pd.DataFrame({"colour": [np.nan, "purple", "red"], "size": [0.5, np.nan, 1.0],
                         "weight": [0.0, 0.1, 0.2]})
    assert set(model.predict(rows)) <= {"apple", "grape", "plum"}
    # New data: a changed CSV reruns prepare (the raw directory is the stage's dependency).
    project.add_csv("fruit.csv", multiclass_frame(seed=5))
    assert "Running stage 'prepare'" in project.dvc("repro").stdout


def test_regression_csv(project: Project) -> None:
    project.add_csv("houses.csv", regression_frame())
    project.set_params(data={"target": "price"},
                       train={"estimator": "sklearn.linear_model.Ridge", "hyperparams": {"alpha": 1.0}},
                       gate={"thresholds": {"r2": 0.9, "rmse": 1.0}})
    out = project.dvc("repro").stdout
    assert "task regression" in out and "gate: PASSED" in out
    metrics = project.json("metrics/eval.json")
    assert set(metrics) == {"rmse", "mae", "r2"} and metrics["r2"] > 0.9
    card = project.json("models/card.json")
    assert card["input_schema"]["task"] == "regression" and "classes" not in card["input_schema"]
    assert card["hyperparams"]["alpha"] == 1.0
    plots = project.dvc("plots", "show", "-o", str(project.root / "plots-out"), check=False)
    assert (project.root / "plots-out" / "index.html").is_file(), plots.stderr


def test_tampered_model_is_refused_before_loading(built: Project) -> None:
    model_file = built.root / "models/model.joblib"
    model_file.write_bytes(model_file.read_bytes() + b"\0")
    with pytest.raises(IntegrityError, match="does not match"):
        modelshelf.load(built.root / "models")
    proc = built.shelf("verify", check=False)
    assert proc.returncode == 4 and "sha256" in proc.stderr and "Traceback" not in proc.stderr


def test_scikit_learn_version_mismatch_is_refused(built: Project) -> None:
    card_path = built.root / "models/card.json"
    card = json.loads(card_path.read_text())
    card["dependencies"]["scikit-learn"] = "0.24.2"
    card_path.write_text(json.dumps(card))
    with pytest.raises(VersionMismatchError) as err:
        modelshelf.load(card_path)
    assert "0.24.2" in str(err.value) and "pip install scikit-learn==0.24.2" in str(err.value)
    assert modelshelf.load(card_path, allow_version_mismatch=True).version == "1.0.0"
    proc = built.shelf("verify", check=False)
    assert proc.returncode == 5 and "0.24.2" in proc.stderr


@pytest.mark.parametrize(("edit", "needle"), [
    ({"data": {"sorce": "x"}}, "data.sorce: unknown key; did you mean 'source'?"),
    ({"train": {"estimator": "sklearn.ensemble.RandomForrestClassifier"}}, "did you mean 'RandomForestClassifier'?"),
    ({"train": {"estimator": "os.path.join"}}, "not a scikit-learn estimator"),
    ({"train": {"hyperparams": {"n_estimator": 5}}}, "train.hyperparams.n_estimator: not a parameter"),
    ({"data": {"test_size": "big"}}, "data.test_size: expected a number"),
    ({"data": {"target": "diagnosis"}}, "target column 'diagnosis' (data.target in params.yaml) not found"),
    ({"gate": {"thresholds": {"rmse": 1.0}}}, "gate.thresholds.rmse: a binary model does not produce 'rmse'"),
])
def test_bad_params_fail_with_one_line_and_exit_2(project: Project, edit: dict, needle: str) -> None:
    project.set_params(**edit)
    stages = [("prepare", "--raw", "data/raw", "--out", "data/prepared"),
              ("train", "--prepared", "data/prepared", "--out", "build/candidate")]
    for stage in stages:
        proc = project.shelf(stage[0], "--params", "params.yaml", *stage[1:], check=False)
        if proc.returncode != 0:
            break
    else:
        project.shelf("evaluate", "--prepared", "data/prepared", "--candidate", "build/candidate",
                      "--metrics", "metrics/eval.json", "--plots", "metrics/plots")
        proc = project.shelf("gate", check=False)
    assert proc.returncode == 2, proc.stderr
    assert needle in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
    assert "params.yaml" in proc.stderr
    leftovers = [p for p in project.root.rglob("*.tmp")] + list(project.root.glob("**/.*.new.*"))
    assert leftovers == []


@pytest.mark.parametrize(("content", "needle"), [
    ("", "the CSV file is empty"),
    ("a,b,target\n1,2,0\n3,4\n5,6,1,9,9\n", "malformed CSV"),
    ("a,b,y\n1,2,0\n3,4,1\n", "target column 'target' (data.target in params.yaml) not found; columns: a, b, y"),
    ("a,b,target\n" + "1,,0\n" * 3 + "2,,1\n" * 3, "column 'b' has no values"),
    ("a,target\n1,0\n2,0\n3,0\n4,1\n", "class 1 has 1 row"),
])
def test_bad_csv_fails_with_one_line_and_keeps_old_outputs(project: Project, content: str, needle: str) -> None:
    (project.root / "data/raw/bad.csv").write_text(content)
    project.set_params(data={"source": "data/raw/bad.csv"})
    (project.root / "data/prepared").mkdir(parents=True)
    (project.root / "data/prepared/keep.txt").write_text("old")
    proc = project.shelf("prepare", "--params", "params.yaml", "--raw", "data/raw",
                         "--out", "data/prepared", check=False)
    assert proc.returncode == 2 and needle in proc.stderr, proc.stderr
    assert "data/raw/bad.csv" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert (project.root / "data/prepared/keep.txt").read_text() == "old"
    assert sorted(p.name for p in (project.root / "data").iterdir()) == ["prepared", "raw"]


def test_source_outside_the_declared_raw_directory_is_refused(project: Project) -> None:
    regression_frame().to_csv(project.root / "elsewhere.csv", index=False)
    project.set_params(data={"source": "elsewhere.csv", "target": "price"})
    proc = project.shelf("prepare", "--params", "params.yaml", "--raw", "data/raw",
                         "--out", "data/prepared", check=False)
    assert proc.returncode == 2 and "outside data/raw" in proc.stderr


def test_traceback_flag_shows_the_traceback(project: Project) -> None:
    project.set_params(data={"sorce": "x"})
    proc = project.shelf("--traceback", "prepare", "--params", "params.yaml", "--raw", "data/raw",
                         "--out", "data/prepared", check=False)
    assert proc.returncode != 0 and "Traceback" in proc.stderr


def test_reference_instance_matches_the_templates(repo_root: Path) -> None:
    templates = repo_root / "src/modelshelf/templates"
    for name in ("dvc.yaml", "params.yaml"):
        assert (repo_root / name).read_text() == (templates / f"{name}.template").read_text(), name
    config = (repo_root / ".dvc/config").read_text()
    assert "analytics = false" in config
