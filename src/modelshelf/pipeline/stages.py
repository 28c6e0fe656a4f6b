"""Stage entry points named in dvc.yaml: each reads its inputs, calls pure functions, writes outputs.

Paths come from the caller (dvc.yaml); nothing here prints.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelshelf import artefacts
from modelshelf.card import CARD_FILE, MODEL_FILE, build_card, onnx_opsets, parse_card, schema_changed, utc_now
from modelshelf.errors import ConfigError, DataError, GateFailed
from modelshelf.pipeline.gate import GateResult, check_names, judge
from modelshelf.gitrepo import GitRepo
from modelshelf.pipeline.metrics import task_of
from modelshelf.params import load_params

ONNX_DIR = "onnx"
SCHEMA_FILE = "schema.json"
DATASET_FILE = "dataset.json"
CANDIDATE_MODEL = "model.joblib"
CANDIDATE_INFO = "candidate.json"


def _read_json(path: Path, remedy: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(str(path), "not found", remedy) from None
    except ValueError:
        raise DataError(str(path), "not valid JSON", remedy) from None


def _replace_dir(build: Path, out: Path) -> None:
    """Swap a fully written directory into place."""
    if out.exists():
        trash = Path(tempfile.mkdtemp(prefix=f".{out.name}.old.", dir=out.parent))
        out.rename(trash / out.name)
        build.rename(out)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        build.rename(out)


def _staging(out: Path) -> Path:
    """A fresh sibling directory to build ``out`` in, with a plain directory's mode."""
    out.parent.mkdir(parents=True, exist_ok=True)
    build = Path(tempfile.mkdtemp(prefix=f".{out.name}.new.", dir=out.parent))
    mask = os.umask(0)
    os.umask(mask)
    build.chmod(0o777 & ~mask)  # mkdtemp makes 0700
    return build


def prepare(params_path: Path, raw: Path, out: Path, profile_path: Path | None = None) -> dict[str, Any]:
    """Validate and split ``data.source``; write train/test CSVs, schema, dataset info and the
    training split's reference profile (for drift checks)."""
    from modelshelf.pipeline import data
    from modelshelf.drift import profile as profiles

    params = load_params(params_path).data
    root = params_path.resolve().parent
    if not params.source.startswith("builtin:"):
        src = (root / params.source).resolve()
        if raw.resolve() not in src.parents:
            raise ConfigError("params.yaml: data.source", f"{params.source} is outside {raw}, "
                              "the directory dvc.yaml declares as prepare's dependency",
                              f"move the file into {raw}/ and track it with `dvc add`")
    ds = data.load_source(params, root)
    kept, dropped_rows = data.apply_controls(ds.frame, params, ds.path or ds.source)
    task = data.validate(kept, params, ds.path or ds.source)
    check_names(load_params(params_path).gate, task)  # every bad gate metric now, before training
    frame = data.normalise(kept, params.target, params.id)
    schema = data.schema_of(frame, params.target, task, params.id)
    train, test = data.split(frame, params, task)
    info = {"source": ds.source, "path": ds.path, "sha256": ds.sha256, "rows": int(len(frame)),
            "columns": int(frame.shape[1]), "train_rows": int(len(train)), "test_rows": int(len(test)),
            "test_size": params.test_size, "random_state": params.random_state,
            "format": "builtin" if ds.path is None else data.source_format(params),
            "id": params.id, "dropped_columns": list(params.drop),
            "missing_target_dropped": dropped_rows}
    build = _staging(out)
    try:
        train.to_csv(build / "train.csv", index=False)
        test.to_csv(build / "test.csv", index=False)
        artefacts.write_json(build / SCHEMA_FILE, schema)
        artefacts.write_json(build / DATASET_FILE, info)
        if profile_path is not None:
            artefacts.write_json(profile_path, profiles.build(train, schema, dropped_rows))
        _replace_dir(build, out)
    finally:
        shutil.rmtree(build, ignore_errors=True)
    return {"task": task, **info}


def _schema(prepared: Path) -> dict[str, Any]:
    return _read_json(prepared / SCHEMA_FILE, "run `dvc repro prepare` first")


def train(params_path: Path, prepared: Path, out: Path) -> dict[str, Any]:
    """Fit the pipeline on the training split; write the candidate and its sha256."""
    from modelshelf.pipeline import data
    from modelshelf.pipeline.train import fit, json_safe_params

    params = load_params(params_path)
    schema = _schema(prepared)
    X, y = data.read_split(prepared / "train.csv", schema)
    root = params_path.resolve().parent
    trained = fit(X, y, params.train, schema, params.data.random_state, root)
    if trained.factory is not None:
        _check_tracked(root, trained.factory.file)
    pipeline = trained.pipeline
    build = _staging(out)
    try:
        # Dumped once, here, with the final compression: serialise copies these exact bytes,
        # because re-pickling a loaded model is not byte-stable (tree node padding).
        artefacts.dump_joblib(pipeline, build / CANDIDATE_MODEL, compress=params.serialise.compress)
        import sklearn

        info = {
            "sha256": artefacts.sha256_file(build / CANDIDATE_MODEL),
            "algorithm": params.train.estimator,
            # the factory (spec and its source's sha256) leads the card's pipeline section
            "pipeline": [*([f"factory: {trained.factory.spec} (sha256 {trained.factory.sha256})"]
                           if trained.factory else []),
                         *(f"{name}: {type(step).__name__}" for name, step in pipeline.steps)],
            "hyperparams": json_safe_params(pipeline[-1]),
            "scikit-learn": sklearn.__version__,
            "compress": params.serialise.compress,
            "trained_at": utc_now(),
            "preprocessing": trained.preprocessing,
            **({"factory": trained.factory.record() | {"arguments": {
                k: v if isinstance(v, (str, int, float, bool, type(None))) else repr(v)
                for k, v in sorted(trained.arguments.items())}}} if trained.factory else {}),
        }
        artefacts.write_json(build / CANDIDATE_INFO, info)
        _replace_dir(build, out)
    finally:
        shutil.rmtree(build, ignore_errors=True)
    return info


def _check_tracked(root: Path, file: str) -> None:
    """Refuse a factory in the project that the train stage does not depend on: DVC would call
    the stage up to date after an edit to it, and the model would no longer be its code's.

    Raises:
        ConfigError: naming the file and the dvc.yaml line to add.
    """
    from modelshelf import project

    if Path(file).is_absolute() or file.startswith("../") or not (root / project.DVC_YAML).is_file():
        return  # an installed package: its version is the environment's, recorded in the card
    try:
        name, deps = project.stage_deps(root, "train")
    except ConfigError:  # no train stage (a hand-written pipeline): nothing to check against
        return
    if not any(dep in (".", file) or file.startswith(dep.rstrip("/") + "/") for dep in deps):
        raise ConfigError(f"dvc.yaml: stages.{name}.deps",
                          f"the factory's file {file} (train.estimator) is not a dependency, so editing it "
                          "would not retrain", f"add `- {file}` (or its directory) under stages.{name}.deps")


def load_candidate(candidate: Path) -> tuple[Any, dict[str, Any]]:
    """The candidate pipeline, verified against the sha256 its train stage recorded."""
    info = _read_json(candidate / CANDIDATE_INFO, "run `dvc repro train` first")
    model = artefacts.load_verified(candidate / CANDIDATE_MODEL, info["sha256"],
                                    sklearn_version=info.get("scikit-learn"), label="the candidate's")
    return model, info


def evaluate(prepared: Path, candidate: Path, metrics_path: Path, plots: Path) -> dict[str, float]:
    """Score the candidate on the held-out split; write metrics and plot data."""
    from modelshelf.pipeline import data
    from modelshelf.pipeline.evaluate import evaluate as score

    schema = _schema(prepared)
    model, _ = load_candidate(candidate)
    X, y = data.read_split(prepared / "test.csv", schema)
    metrics, plot_rows = score(model, X, y, schema["task"])
    build = _staging(plots)
    try:
        for stem, rows in plot_rows.items():
            artefacts.write_json(build / f"{stem}.json", rows)
        _replace_dir(build, plots)
    finally:
        shutil.rmtree(build, ignore_errors=True)
    artefacts.write_json(metrics_path, {k: (None if math.isnan(v) else v) for k, v in metrics.items()})
    return metrics


def read_metrics(path: Path) -> dict[str, Any]:
    data = _read_json(path, "run `dvc repro evaluate` first")
    if not isinstance(data, dict):
        raise DataError(str(path), "expected a JSON object of metrics", "rerun `dvc repro evaluate`")
    return data


def gate(params_path: Path, metrics_path: Path, out: Path | None,
         prepared: Path | None = None, candidate: Path | None = None) -> GateResult:
    """Judge the metrics in ``metrics_path``; write the report to ``out`` (if given).

    With ``prepared`` (the split the candidate was scored on), the baseline model is
    re-scored on its test split and the candidate compared with that; otherwise, or when
    it cannot be, with the committed baseline metrics (see :mod:`modelshelf.pipeline.baseline`).

    With ``candidate`` (the train stage's output), the report records the sha256 of the
    candidate it judged (``candidate_sha256``), checked against its bytes: ``serialise`` and
    ``shelf release`` refuse any other model.  Without it nothing can be serialised.

    Raises:
        DataError: unreadable metrics or candidate info.
        IntegrityError: the candidate's bytes differ from the sha256 its train stage recorded.
        ConfigError: impossible thresholds, an unknown baseline revision.
    """
    from modelshelf.pipeline import baseline as baselines

    everything = load_params(params_path)
    params = everything.gate
    judged = candidate_sha256(candidate) if candidate is not None else None
    metrics = read_metrics(metrics_path)
    task = task_of(k for k, v in metrics.items() if v is not None)
    if task is None:
        raise DataError(str(metrics_path), "cannot tell the task from its metric names",
                        "rerun `dvc repro evaluate`")
    repo = GitRepo.discover(metrics_path.resolve().parent)
    significant = params.regression == "significant"
    baseline = baselines.read(repo, params.baseline, repo.relpath(metrics_path),
                              root=params_path.resolve().parent, prepared=prepared,
                              bump=everything.release.bump, outputs=significant)
    paired = (baselines.paired(baseline, candidate, prepared, everything.data.random_state)
              if significant else None)
    result = judge(metrics, params, task, baseline, paired)
    if out is not None:
        report = result.to_json()
        report["metrics_sha256"] = artefacts.sha256_file(metrics_path)
        if judged is not None:
            report["candidate_sha256"] = judged
        artefacts.write_json(out, report)
    return result


def candidate_sha256(candidate: Path) -> str:
    """The sha256 train recorded for ``candidate``'s model, once its bytes are shown to have it.

    Raises:
        DataError: no readable candidate info.
        IntegrityError: the model file is missing or its bytes differ.
    """
    info = _read_json(candidate / CANDIDATE_INFO, "run `dvc repro train` first")
    sha = info.get("sha256") if isinstance(info, dict) else None
    if not isinstance(sha, str):
        raise DataError(str(candidate / CANDIDATE_INFO), "records no sha256", "rerun `dvc repro train`")
    artefacts.verify(candidate / CANDIDATE_MODEL, sha, "the candidate info's")
    return sha


@dataclass(frozen=True)
class Serialised:
    card: dict[str, Any]
    model_path: Path
    card_path: Path

    def to_json(self) -> dict[str, Any]:
        """What ``shelf serialise --json`` prints: the version written and where."""
        c = self.card
        return {"serialised": True, "name": c["name"], "version": f"v{c['version']}",
                "version_bump": c.get("version_bump"), "model": str(self.model_path),
                "sha256": c["artefacts"]["model"]["sha256"], "card": str(self.card_path)}


def serialise(params_path: Path, prepared: Path, candidate: Path, metrics_path: Path,
              gate_path: Path, out: Path, profile_path: Path | None = None, *,
              standalone: bool = False) -> Serialised:
    """Write the gated model and its card, atomically; refuse a failed or stale gate.

    ``standalone`` (:func:`modelshelf.pipeline.inmemory.save`): ``out`` is not the model
    artefact dvc.yaml declares; the name, and the baseline card the version follows, are that
    artefact's."""
    from modelshelf import project, tags

    params = load_params(params_path)
    report = _read_json(gate_path, "run `dvc repro gate` first")
    if report.get("passed") is not True:
        raise GateFailed(str(gate_path), "the gate did not pass: nothing serialised",
                         "improve the model or revisit gate.thresholds, then `dvc repro`")
    if report.get("metrics_sha256") != artefacts.sha256_file(metrics_path):
        raise GateFailed(str(gate_path), f"the gate report is stale: {metrics_path} changed since",
                         "rerun `dvc repro` so the gate judges the current metrics")
    schema = _schema(prepared)
    dataset = _read_json(prepared / DATASET_FILE, "run `dvc repro prepare` first")
    info = _read_json(candidate / CANDIDATE_INFO, "run `dvc repro train` first")
    gated = report.get("candidate_sha256")
    if not isinstance(gated, str):
        raise GateFailed(str(gate_path), "the gate report records no candidate sha256 (an older gate)",
                         "rerun the gate with its candidate (`dvc repro -f gate`; see `shelf init`'s dvc.yaml)")
    if info.get("sha256") != gated:
        raise GateFailed(str(candidate / CANDIDATE_INFO),
                         f"the candidate (sha256 {str(info.get('sha256'))[:12]}…) is not the one the gate "
                         f"judged ({gated[:12]}…)", "rerun `dvc repro` so the gate judges this candidate")

    root = params_path.resolve().parent
    repo = GitRepo.discover(root)
    model_path, card_path = out / MODEL_FILE, out / CARD_FILE
    try:
        rel_model = model_path.resolve().relative_to(root).as_posix()
    except ValueError:
        raise ConfigError(str(out), f"is outside the project {root}", "write models inside the project") from None
    name, declared = project.model_artifact(root, None if standalone else rel_model)
    latest = tags.latest_release(repo.annotated_tags(f"{name}@v*", merged="HEAD"), name)
    base_card = _baseline_card(repo, params.gate.baseline, repo.relpath(root / Path(declared).parent / CARD_FILE))
    changed = schema_changed(base_card.get("input_schema") if base_card else None, schema)
    version, why = tags.next_version(latest, params.release.bump, changed)

    onnx_record, predictions = _export_onnx(params, prepared, candidate, schema, out / ONNX_DIR)
    artefacts.copy_verified(candidate / CANDIDATE_MODEL, model_path, info["sha256"])
    ignore = ("dvc.lock", *(repo.relpath(p) for p in (metrics_path, gate_path, out)),
              repo.relpath(metrics_path.parent))
    card = build_card(
        name=name, version=str(version), bump=why, trained_at=info.get("trained_at") or utc_now(),
        dataset={k: dataset[k] for k in ("source", "path", "sha256", "rows", "train_rows", "test_rows",
                                         "format", "id", "dropped_columns", "missing_target_dropped")
                 if k in dataset},  # a dataset.json from before data controls lacks the last four
        algorithm=info["algorithm"], pipeline=info["pipeline"], hyperparams=info["hyperparams"],
        metrics=read_metrics(metrics_path),
        gate={"passed": True, "baseline": report.get("baseline", {}), "candidate_sha256": gated,
              "checks": {m: {k: c.get(k) for k in ("value", "threshold", "baseline", "passed")}
                         | {k: c[k] for k in ("delta", "ci", "level", "method") if k in c}  # significance
                         for m, c in report.get("metrics", {}).items()}},
        input_schema=schema,
        artefacts={"model": artefacts.file_record(model_path, out) | {"format": "joblib",
                                                                      "compress": info.get("compress")},
                   **({"onnx": onnx_record["artefact"]} if "artefact" in onnx_record else {})},
        onnx=onnx_record["summary"],
        profile=_profile_record(repo, profile_path, predictions, schema["task"]),
        git=_trained_from(repo, ignore),
    )
    artefacts.write_json(card_path, card)
    return Serialised(card, model_path, card_path)


def _export_onnx(params: Any, prepared: Path, candidate: Path, schema: dict[str, Any],
                 onnx_dir: Path) -> tuple[dict[str, Any], Any]:
    """Export and parity-check the ONNX copy into ``onnx_dir`` (emptied first).

    Returns the card's records and the candidate's held-out predictions.
    """
    from modelshelf import onnxcopy
    from modelshelf.pipeline import data

    if onnx_dir.exists():
        shutil.rmtree(onnx_dir)
    onnx_dir.mkdir(parents=True)
    model, info = load_candidate(candidate)
    X, y = data.read_split(prepared / "test.csv", schema)
    predictions = model.predict(X)
    if not params.serialise.onnx:
        return {"summary": {"produced": False, "reason": "disabled by serialise.onnx"}}, predictions
    result = onnxcopy.export(model, schema, X, y, regression_tolerance=params.serialise.onnx_tolerance,
                             own_preprocessing=info.get("preprocessing", "modelshelf") == "modelshelf")
    if result.data is None:
        return {"summary": {"produced": False, "reason": result.reason, "parity": result.parity}}, predictions
    path = onnx_dir / onnxcopy.ONNX_FILE
    with artefacts.atomic_output(path, "wb") as fh:
        fh.write(result.data)
    record = artefacts.file_record(path, onnx_dir.parent) | {"format": "onnx", "parity": result.parity}
    summary = {"produced": True, "parity": result.parity, "opsets": onnx_opsets(result.data)}
    return {"artefact": record, "summary": summary}, predictions


def _profile_record(repo: GitRepo, profile_path: Path | None, predictions: Any, task: str) -> dict[str, Any]:
    """Where the training profile is (and its sha256), and the held-out predictions' profile."""
    from modelshelf.drift import profile as profiles

    record: dict[str, Any] = {"predictions": profiles.prediction_profile(predictions, task)}
    if profile_path is not None and profile_path.is_file():
        record |= {"file": repo.relpath(profile_path), "sha256": artefacts.sha256_file(profile_path)}
    return record


def _trained_from(repo: GitRepo, ignore: tuple[str, ...]) -> dict[str, Any]:
    """The card's ``git`` section: the commit the model was trained from and the tracked files
    that differed from it (one trains, then commits: ``modified`` says what the commit will add),
    the pipeline's own outputs aside."""
    modified = repo.modified(ignore)
    return {"commit": repo.head(), "dirty": bool(modified), "modified": modified}


def _baseline_card(repo: GitRepo, rev: str, path: str) -> dict[str, Any] | None:
    found = repo.resolve_branch(rev)
    raw = repo.show(found[0], path) if found else None
    return None if raw is None else parse_card(raw, f"{rev}:{path}")
