"""The pipeline's evaluate, gate and serialise for a model fitted in a script or notebook.

:func:`assess` and :func:`save` take a fitted scikit-learn estimator and a held-out ``(X, y)``
and run the very functions ``dvc repro`` runs: the same metrics, the same gate (the project's
``gate`` params, the baseline at ``gate.baseline`` re-scored on the same rows, the significance
test when configured) and the same card, ONNX copy and parity check.  The held-out rows take the
pipeline's own path (normalised and written as its prepared split, in a scratch directory under
``.dvc/tmp``), so what is judged is what a served model would see.

A saved directory loads and verifies like any other (``api.load(out)``, ``api.verify(out)``).
Releases stay with the pipeline, so that every version can be rebuilt: to release a model
built in a notebook, move its construction into a factory (``train.estimator:
src/mymodel.py:build``) and ``dvc repro``.
"""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelshelf import artefacts
from modelshelf.card import utc_now
from modelshelf.errors import ConfigError, DataError, GateFailed
from modelshelf.gitrepo import GitRepo
from modelshelf.params import Params, load_params
from modelshelf.pipeline import baseline as baselines
from modelshelf.pipeline import data, stages
from modelshelf.pipeline.evaluate import evaluate as score
from modelshelf.pipeline.gate import GateResult, check_names, judge
from modelshelf.pipeline.train import PREPROCESSING_USER, json_safe_params
from modelshelf.project import find_root, stage_options

WHERE = "X, y"


@dataclass(frozen=True)
class Assessment:
    """A fitted model's held-out metrics and the project gate's verdict on them."""

    metrics: dict[str, float]
    gate: GateResult

    @property
    def passed(self) -> bool:
        return self.gate.passed

    def table(self) -> str:
        """The gate's table, as ``shelf gate`` prints it."""
        return self.gate.table()


@dataclass(frozen=True)
class Saved:
    """What :func:`save` wrote: the card and the paths of the model and the card."""

    assessment: Assessment
    card: dict[str, Any]
    model_path: Path
    card_path: Path


def assess(model: Any, X: Any, y: Any, *, project: str | Path = ".", source: str | None = None) -> Assessment:
    """Score ``model`` on the held-out ``(X, y)`` and judge it with the project's gate.

    Args:
        model: a fitted scikit-learn estimator or pipeline taking ``X``'s columns.
        X: the held-out features (a pandas DataFrame).
        y: the held-out target (a Series or array, one value per row of ``X``).
        project: a directory inside the modelshelf project (its params.yaml and git history).
        source: what the data is (default: the project's ``data.source``); another source than
            the baseline's is a new line (``release.bump: major`` or ``gate.baseline: none``).

    Returns:
        The metrics and the gate's verdict (``passed``, ``table()``); a failed gate is a result,
        not an exception.

    Raises:
        DataError: ``X``/``y`` unusable (not a frame, lengths differ, missing targets).
        ConfigError: bad gate params for this task, an unknown baseline revision.
        GateFailed: the data or schema changed from the baseline's with no explicit choice.
    """
    root = find_root(project)
    with _Scratch(root) as scratch:
        return scratch.stage(model, X, y, source).assess()


def save(model: Any, X: Any, y: Any, out: str | Path, *, project: str | Path = ".",
         X_train: Any = None, y_train: Any = None, source: str | None = None) -> Saved:
    """Assess ``model`` and, when it clears the gate, write it with its card to ``out``:
    ``model.joblib``, ``onnx/model.onnx`` (when it converts and passes the parity check) and
    ``card.json``, as ``dvc repro``'s serialise stage does.

    Args:
        model, X, y, project, source: as for :func:`assess`.
        out: a directory inside the project (not the pipeline's own ``models/``).
        X_train, y_train: the training data, for the drift profile (``profile.json`` in ``out``,
            which ``shelf drift`` checks new data against); without them the card has none.

    Returns:
        The assessment, the card and where the files are.

    Raises:
        GateFailed: the gate did not pass (nothing is written).
        DataError, ConfigError: as for :func:`assess`; ``out`` outside the project or the
            pipeline's own model directory.
    """
    root = find_root(project)
    target = Path(out).resolve()
    if root.resolve() not in target.parents:
        raise ConfigError(str(out), f"is outside the project {root}", "save inside the project, e.g. models/notebook")
    pipeline_out = stage_options(root, "serialise").get("out")
    if pipeline_out is not None and target == (root / pipeline_out).resolve():
        raise ConfigError(str(out), "is the pipeline's own model directory (serialise --out in dvc.yaml)",
                          "save elsewhere, e.g. models/notebook: models/ is what `dvc repro` writes")
    with _Scratch(root) as scratch:
        staged = scratch.stage(model, X, y, source, X_train, y_train)
        assessment = staged.assess()
        if not assessment.passed:
            raise GateFailed(str(out), "the model did not clear the gate: nothing saved",
                             "see assess(...).table(); improve the model or revisit gate.thresholds")
        staged.write_gate(assessment.gate)
        profile = None
        if staged.profile is not None:  # the drift profile lives beside the card it belongs to
            target.mkdir(parents=True, exist_ok=True)
            profile = target / "profile.json"
            shutil.copyfile(staged.profile, profile)
        done = stages.serialise(scratch.params_path, staged.prepared, staged.candidate, staged.metrics,
                                staged.gate_path, target, profile, standalone=True)
    return Saved(assessment, done.card, done.model_path, done.card_path)


class _Scratch:
    """A scratch directory under the project's ``.dvc/tmp`` (git ignores it), removed on exit."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.params_path = root / "params.yaml"
        self.params: Params = load_params(self.params_path)
        self.dir: Path | None = None

    def __enter__(self) -> _Scratch:
        tmp = self.root / ".dvc" / "tmp"
        tmp.mkdir(parents=True, exist_ok=True)
        self.dir = Path(tempfile.mkdtemp(prefix="shelf-inmemory-", dir=tmp))
        return self

    def __exit__(self, *exc: object) -> None:
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)

    def stage(self, model: Any, X: Any, y: Any, source: str | None,
              X_train: Any = None, y_train: Any = None) -> _Staged:
        """Write ``(X, y)`` as a prepared split and ``model`` as a candidate, the pipeline's way."""
        assert self.dir is not None
        params = self.params
        target = params.data.target
        test = _frame(X, y, target, "X, y")
        train = _frame(X_train, y_train, target, "X_train, y_train") if X_train is not None else None
        task = data.infer_task(test[target], params.data.task)
        check_names(params.gate, task)
        both = test if train is None else _concat(train, test)
        data.check_cardinality(both, dataclasses.replace(params.data, id=None, drop=()), WHERE)
        schema = data.schema_of(data.normalise(both, target), target, task)
        if task != "regression" and hasattr(model, "classes_"):
            schema["classes"] = sorted(data._json_scalar(c) for c in model.classes_)
        prepared, candidate = self.dir / "prepared", self.dir / "candidate"
        prepared.mkdir()
        candidate.mkdir()
        data.normalise(test, target).to_csv(prepared / "test.csv", index=False)
        profile = None
        if train is not None:
            normal = data.normalise(train, target)
            normal.to_csv(prepared / "train.csv", index=False)
            from modelshelf.drift import profile as profiles

            profile = self.dir / "profile.json"
            artefacts.write_json(profile, profiles.build(normal, schema, 0))
        artefacts.write_json(prepared / stages.SCHEMA_FILE, schema)
        artefacts.write_json(prepared / stages.DATASET_FILE, {
            "source": source or params.data.source, "path": None,
            "sha256": artefacts.sha256_file(prepared / "test.csv"), "rows": len(both),
            "train_rows": None if train is None else len(train), "test_rows": len(test),
            "format": "in-memory"})
        _write_candidate(model, candidate, params.serialise.compress)
        return _Staged(self, prepared, candidate, self.dir / "eval.json", self.dir / "gate.json", profile, task)


@dataclass
class _Staged:
    scratch: _Scratch
    prepared: Path
    candidate: Path
    metrics: Path
    gate_path: Path
    profile: Path | None
    task: str

    def assess(self) -> Assessment:
        s = self.scratch
        metrics = stages.evaluate(self.prepared, self.candidate, self.metrics, s.dir / "plots")  # type: ignore[operator]
        params = s.params
        repo = GitRepo.discover(s.root)
        metrics_rel = stage_options(s.root, "gate").get("metrics", "metrics/eval.json")
        significant = params.gate.regression == "significant"
        base = baselines.read(repo, params.gate.baseline, repo.relpath(s.root / metrics_rel), root=s.root,
                              prepared=self.prepared, bump=params.release.bump, outputs=significant)
        paired = (baselines.paired(base, self.candidate, self.prepared, params.data.random_state)
                  if significant else None)
        return Assessment(metrics, judge(metrics, params.gate, self.task, base, paired))

    def write_gate(self, result: GateResult) -> None:
        report = result.to_json()
        report["metrics_sha256"] = artefacts.sha256_file(self.metrics)
        report["candidate_sha256"] = stages.candidate_sha256(self.candidate)
        artefacts.write_json(self.gate_path, report)


def _frame(X: Any, y: Any, target: str, where: str) -> Any:
    import pandas as pd

    if not isinstance(X, pd.DataFrame):
        raise DataError(where, f"X is a {type(X).__name__}, not a pandas DataFrame",
                        "pass the features as a DataFrame with the columns the model was fitted on")
    if y is None or len(y) != len(X):
        raise DataError(where, f"y has {'no' if y is None else len(y)} values for {len(X)} rows of X",
                        "pass one target value per row")
    if target in X.columns:
        raise DataError(where, f"X has the target column '{target}' (data.target in params.yaml)",
                        "drop it from X")
    if len(X) == 0:
        raise DataError(where, "X has no rows", "pass the held-out rows")
    frame = X.reset_index(drop=True).copy()
    frame.columns = [str(c) for c in frame.columns]
    values = pd.Series(y).reset_index(drop=True)
    if values.isna().any():
        raise DataError(where, f"y has {int(values.isna().sum())} missing values", "drop those rows")
    frame[target] = values
    return frame


def _concat(train: Any, test: Any) -> Any:
    import pandas as pd

    if list(train.columns) != list(test.columns):
        raise DataError("X_train", "its columns differ from X's", "pass the same columns, in the same order")
    return pd.concat([train, test], ignore_index=True)


def _write_candidate(model: Any, candidate: Path, compress: int) -> None:
    import sklearn

    final = model[-1] if hasattr(model, "steps") else model
    path = candidate / stages.CANDIDATE_MODEL
    artefacts.dump_joblib(model, path, compress=compress)
    steps: Mapping[str, Any] = dict(model.steps) if hasattr(model, "steps") else {"model": model}
    artefacts.write_json(candidate / stages.CANDIDATE_INFO, {
        "sha256": artefacts.sha256_file(path),
        "algorithm": f"{type(final).__module__}.{type(final).__qualname__}",
        "pipeline": ["in memory: modelshelf.api.save", *(f"{n}: {type(s).__name__}" for n, s in steps.items())],
        "hyperparams": json_safe_params(final),
        "scikit-learn": sklearn.__version__,
        "compress": compress,
        "trained_at": utc_now(),
        "preprocessing": PREPROCESSING_USER,
    })
