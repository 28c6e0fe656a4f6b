"""Your own training code: ``train.estimator: src/mymodel.py:build`` or ``package.module:build``.

modelshelf still owns the split, the evaluation, the gate, the card and the ONNX export.
"""

from __future__ import annotations

import hashlib
import textwrap
from pathlib import Path
from typing import Any

import joblib
import pandas as pd
import pytest
import yaml

from modelshelf.errors import ConfigError
from modelshelf.params import TrainParams
from modelshelf.pipeline import data
from modelshelf.pipeline.train import fit

from conftest import Project, customers

PIPELINE_FACTORY = '''
import numpy as np
from sklearn.compose import ColumnTransformer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer, OneHotEncoder, StandardScaler


def build(C=1.0, exotic=False, random_state=None):
    """My own preprocessing: columns picked by name, so they must arrive raw."""
    numeric = [("scale", StandardScaler(), ["x0", "x1", "x2", "x3"])]
    if exotic:  # no ONNX converter for a FunctionTransformer
        numeric = [("abs", FunctionTransformer(np.abs), ["x3"]), ("scale", StandardScaler(), ["x0", "x1", "x2"])]
    pre = ColumnTransformer([*numeric, ("region", OneHotEncoder(handle_unknown="ignore"), ["region"])])
    return Pipeline([("mine", pre), ("clf", LogisticRegression(C=C, random_state=random_state))])
'''

GATE = {"thresholds": {"accuracy": 0.85, "f1": 0.85, "roc_auc": 0.9}}


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def depend_on(p: Project, rel: str) -> None:
    """The line docs/data.md tells users to add: the train stage depends on the factory's file."""
    spec = yaml.safe_load((p.root / "dvc.yaml").read_text())
    spec["stages"]["train"]["deps"].append(rel)
    (p.root / "dvc.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))


@pytest.mark.slow
def test_a_factory_pipeline_trains_evaluates_gates_and_serialises(project: Project) -> None:
    (project.root / "src").mkdir()
    factory = project.root / "src/mymodel.py"
    factory.write_text(PIPELINE_FACTORY)
    project.add_csv("customers.csv", customers(500, seed=1))
    project.set_params(data={"target": "churn"}, gate=GATE,
                       train={"estimator": "src/mymodel.py:build", "hyperparams": {"C": 0.3}})
    depend_on(project, "src/mymodel.py")
    out = project.dvc("repro").stdout
    assert "train: src/mymodel.py:build fitted" in out and "gate: PASSED" in out

    card = project.json("models/card.json")
    assert card["algorithm"] == "src/mymodel.py:build"
    assert card["pipeline"][0] == f"factory: src/mymodel.py:build (sha256 {sha(factory)})"
    assert card["pipeline"][1:] == ["mine: ColumnTransformer", "clf: LogisticRegression"]
    assert card["hyperparams"]["C"] == 0.3 and card["hyperparams"]["random_state"] == 42  # arrived
    candidate = project.json("build/candidate/candidate.json")
    assert candidate["factory"] == {"spec": "src/mymodel.py:build", "file": "src/mymodel.py",
                                    "sha256": sha(factory), "arguments": {"C": 0.3, "random_state": 42}}
    assert candidate["preprocessing"] == "user"
    # Not wrapped again: the user's ColumnTransformer saw the raw, named columns.
    model = joblib.load(project.root / "models/model.joblib")
    assert list(model.named_steps["mine"].feature_names_in_) == ["x0", "x1", "x2", "x3", "region"]
    assert card["onnx"]["produced"] is True and card["onnx"]["parity"]["passed"] is True
    assert card["metrics"]["accuracy"] >= 0.85

    # The served paths load it: shelf predict on new rows.
    customers(5, seed=7).drop(columns=["churn"]).to_csv(project.root / "new.csv", index=False)
    project.shelf("predict", "new.csv", "--model", "models", "-o", "scored.csv")
    assert len(pd.read_csv(project.root / "scored.csv")) == 5

    # Editing the factory reruns training (the deps line); a pipeline that does not convert
    # to ONNX is still serialised, and the card says why.
    factory.write_text(PIPELINE_FACTORY.replace("exotic=False", "exotic=True"))
    out = project.dvc("repro").stdout
    assert "Running stage 'train'" in out and "gate: PASSED" in out
    card = project.json("models/card.json")
    assert card["pipeline"][0] == f"factory: src/mymodel.py:build (sha256 {sha(factory)})"
    assert card["onnx"]["produced"] is False and "FunctionTransformer" in card["onnx"]["reason"]
    assert not (project.root / "models/onnx/model.onnx").exists()
    project.shelf("predict", "new.csv", "--model", "models", "-o", "scored.csv")  # the joblib copy serves


def test_a_module_factory_returning_an_estimator_gets_modelshelf_preprocessing(
        project: Project, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pkg = tmp_path / "site" / "acme_models"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "churn.py").write_text(textwrap.dedent('''
        from sklearn.linear_model import LogisticRegression

        def build(C):
            return LogisticRegression(C=C, max_iter=500)
    '''))
    monkeypatch.setenv("PYTHONPATH", str(tmp_path / "site"))
    project.add_csv("customers.csv", customers(300, seed=2))
    project.set_params(data={"target": "churn"},
                       train={"estimator": "acme_models.churn:build", "hyperparams": {"C": 2.5}})
    project.shelf("prepare", "--params", "params.yaml", "--raw", "data/raw", "--out", "data/prepared")
    project.shelf("train", "--params", "params.yaml", "--prepared", "data/prepared", "--out", "build/candidate")
    info = project.json("build/candidate/candidate.json")
    assert info["preprocessing"] == "modelshelf" and info["hyperparams"]["C"] == 2.5
    assert info["factory"]["arguments"] == {"C": 2.5}  # no random_state: build() does not take it
    assert info["pipeline"][1:] == ["preprocess: ColumnTransformer", "model: LogisticRegression"]
    assert info["factory"]["file"] == str(pkg / "churn.py") and info["factory"]["sha256"] == sha(pkg / "churn.py")
    ev = project.shelf("evaluate", "--prepared", "data/prepared", "--candidate", "build/candidate",
                       "--metrics", "metrics/eval.json", "--plots", "metrics/plots")
    assert "accuracy" in ev.stdout and project.json("metrics/eval.json")["accuracy"] > 0.8


def test_a_broken_factory_stops_train_with_one_line_and_exit_2(project: Project) -> None:
    (project.root / "src").mkdir()
    (project.root / "src/mymodel.py").write_text("def build():\n    raise RuntimeError('no GPU here')\n")
    project.set_params(train={"estimator": "src/mymodel.py:build", "hyperparams": None})
    project.shelf("prepare", "--params", "params.yaml", "--raw", "data/raw", "--out", "data/prepared")
    proc = project.shelf("train", "--params", "params.yaml", "--prepared", "data/prepared",
                         "--out", "build/candidate", check=False)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "shelf: error: params.yaml: train.estimator: src/mymodel.py:build raised RuntimeError: no GPU here; "
        "fix the factory in src/mymodel.py"]
    assert not (project.root / "build/candidate").exists()


def test_a_factory_file_the_train_stage_does_not_depend_on_is_refused(project: Project) -> None:
    """Editing it would not retrain (DVC would call train up to date): one line naming the fix."""
    (project.root / "src").mkdir()
    (project.root / "src/mymodel.py").write_text(
        "from sklearn.linear_model import LogisticRegression\n\n"
        "def build(random_state):\n    return LogisticRegression(max_iter=500, random_state=random_state)\n")
    project.set_params(train={"estimator": "src/mymodel.py:build", "hyperparams": None})
    project.shelf("prepare", "--params", "params.yaml", "--raw", "data/raw", "--out", "data/prepared")
    train = ("train", "--params", "params.yaml", "--prepared", "data/prepared", "--out", "build/candidate")
    proc = project.shelf(*train, check=False)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        "shelf: error: dvc.yaml: stages.train.deps: the factory's file src/mymodel.py (train.estimator) is not "
        "a dependency, so editing it would not retrain; add `- src/mymodel.py` (or its directory) under "
        "stages.train.deps"]
    assert not (project.root / "build/candidate").exists()
    depend_on(project, "src")                    # its directory will do
    project.shelf(*train)
    assert project.json("build/candidate/candidate.json")["factory"]["file"] == "src/mymodel.py"


def frame() -> tuple[pd.DataFrame, pd.Series, dict[str, Any]]:
    f = data.normalise(customers(80, seed=3), "churn")
    schema = data.schema_of(f, "churn", "binary")
    return f[[c for c in f.columns if c != "churn"]], f["churn"], schema


@pytest.mark.parametrize(("code", "spec", "hyper", "needle"), [
    (None, "src/nothere.py:build", {}, "train.estimator: factory file 'src/nothere.py' not found"),
    ("def build():\n    pass\n", "src/m.py:biuld", {}, "no function 'biuld' in src/m.py; did you mean 'build'?"),
    ("def build():\n    return 42\n", "src/m.py:build", {}, "src/m.py:build returned int, not a scikit-learn estimator"),
    ("from sklearn.svm import SVC\ndef build():\n    return SVC\n", "src/m.py:build", {},
     "returned the class SVC, not an estimator; return an instance: SVC(...)"),
    ("def build(C=1):\n    raise ValueError('C must be odd')\n", "src/m.py:build", {"C": 2},
     "src/m.py:build raised ValueError: C must be odd"),
    ("def build(alpha=1):\n    pass\n", "src/m.py:build", {"alpah": 2},
     "train.hyperparams.alpah: not a parameter of src/m.py:build; did you mean 'alpha'?"),
    ("def build(\n", "src/m.py:build", {}, "importing m.py raised SyntaxError"),
    ("from sklearn.linear_model import Ridge\ndef build():\n    return Ridge()\n", "src/m.py:build", {},
     "src/m.py:build returned a regressor but the task is binary classification"),
    ("import sklearn.base as b\nfrom sklearn.linear_model import LogisticRegression\n"
     "class Mine(b.BaseEstimator, b.TransformerMixin):\n    def fit(self, X, y=None):\n        return self\n"
     "    def transform(self, X):\n        return X\n"
     "def build():\n    return LogisticRegression()\n",
     "src/m.py:Mine", {}, "'Mine' in src/m.py is not a function"),
    ("from sklearn.pipeline import make_pipeline\nfrom sklearn.linear_model import LogisticRegression\n"
     "from sklearn.preprocessing import FunctionTransformer\n"
     "def double(X):\n    return X[['x0', 'x1']] * 2\n"
     "def build():\n    return make_pipeline(FunctionTransformer(double), LogisticRegression())\n",
     "src/m.py:build", {}, "the pipeline holds double, defined in src/m.py: a released model could not be loaded"),
    (None, "acme_nothere.models:build", {}, "train.estimator: no module 'acme_nothere.models'"),
    (None, "src/m.py:", {}, "'src/m.py:' is not a factory spec"),
])
def test_factory_problems_name_train_estimator(tmp_path: Path, code: str | None, spec: str,
                                               hyper: dict[str, Any], needle: str) -> None:
    if code is not None:
        (tmp_path / "src").mkdir()
        (tmp_path / "src/m.py").write_text(code)
    X, y, schema = frame()
    with pytest.raises(ConfigError) as err:
        fit(X, y, TrainParams(spec, hyper), schema, 0, tmp_path)
    assert needle in str(err.value) and err.value.exit_code == 2
    assert str(err.value).startswith("params.yaml: train.")


def test_a_factory_without_random_state_is_called_with_the_hyperparams_only(tmp_path: Path) -> None:
    (tmp_path / "m.py").write_text("from sklearn.tree import DecisionTreeClassifier\n"
                                   "def build(**kw):\n    return DecisionTreeClassifier(**kw)\n")
    X, y, schema = frame()
    trained = fit(X, y, TrainParams("m.py:build", {"max_depth": 2}), schema, 0, tmp_path)
    assert trained.pipeline[-1].get_params()["max_depth"] == 2
    assert trained.pipeline[-1].get_params()["random_state"] is None  # only what the user asked for
    assert trained.preprocessing == "modelshelf" and trained.factory.record()["file"] == "m.py"
