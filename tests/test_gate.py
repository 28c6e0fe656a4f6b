"""The gate: thresholds, baseline regressions, tolerances, fail-closed metrics, and baselines from git."""

from __future__ import annotations

import json
import math
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from modelshelf.errors import ConfigError, DataError
from modelshelf.pipeline.gate import Baseline, GateResult, judge, read_baseline, result_from_json
from modelshelf.gitrepo import GitRepo
from modelshelf.params import GateParams

from conftest import Project, customers

NAN = float("nan")
METRICS_PATH = "metrics/eval.json"


def no_baseline(note: str = "first model") -> Baseline:
    return Baseline("main", METRICS_PATH, note=note)


def baseline(**metrics: float) -> Baseline:
    return Baseline("main", METRICS_PATH, "0123456789abcdef0123456789abcdef01234567", dict(metrics))


def gate(thresholds: Mapping[str, float] | None = None, tolerance: Mapping[str, float] | None = None,
         default_tolerance: float = 0.0) -> GateParams:
    return GateParams(thresholds=dict(thresholds or {}), tolerance=dict(tolerance or {}),
                      default_tolerance=default_tolerance)


def check_of(result: GateResult, metric: str) -> Any:
    [check] = [c for c in result.checks if c.metric == metric]
    return check


# --------------------------------------------------------------------------- thresholds


def test_passes_when_every_threshold_is_met() -> None:
    result = judge({"accuracy": 0.95, "f1": 0.91, "roc_auc": 0.99},
                   gate({"accuracy": 0.9, "f1": 0.9}), "binary", no_baseline())
    assert result.passed is True
    assert [c.metric for c in result.checks] == ["accuracy", "f1"]
    assert all(c.passed and c.reasons == () for c in result.checks)
    assert result.task == "binary"
    assert result.table().endswith("gate: PASSED")


def test_threshold_is_inclusive() -> None:
    assert judge({"accuracy": 0.9}, gate({"accuracy": 0.9}), "binary", no_baseline()).passed
    assert judge({"rmse": 2.0}, gate({"rmse": 2.0}), "regression", no_baseline()).passed


def test_fails_below_threshold() -> None:
    result = judge({"accuracy": 0.95, "f1": 0.85}, gate({"accuracy": 0.9, "f1": 0.9}),
                   "binary", no_baseline())
    assert result.passed is False
    assert check_of(result, "accuracy").passed is True
    f1 = check_of(result, "f1")
    assert f1.passed is False
    assert f1.reasons == ("below threshold 0.9",)
    assert f1.value == 0.85 and f1.threshold == 0.9
    assert result.table().endswith("gate: FAILED")
    assert "✗ f1: 0.85 (threshold ≥ 0.9, no baseline): below threshold 0.9" in result.table()


@pytest.mark.parametrize("metric", ["rmse", "mae"])
def test_lower_is_better_above_threshold_fails(metric: str) -> None:
    result = judge({metric: 3.5}, gate({metric: 3.0}), "regression", no_baseline())
    check = check_of(result, metric)
    assert result.passed is False
    assert check.higher_is_better is False
    assert check.reasons == ("above threshold 3",)
    assert "threshold ≤ 3" in check.line()


@pytest.mark.parametrize("metric", ["rmse", "mae"])
def test_lower_is_better_below_threshold_passes(metric: str) -> None:
    result = judge({metric: 0.5}, gate({metric: 3.0}), "regression", no_baseline())
    assert result.passed is True
    assert check_of(result, metric).passed is True


def test_r2_is_higher_is_better() -> None:
    assert not judge({"r2": 0.4}, gate({"r2": 0.5}), "regression", no_baseline()).passed
    assert judge({"r2": 0.6}, gate({"r2": 0.5}), "regression", no_baseline()).passed


# --------------------------------------------------------------------------- baseline


def test_regression_from_baseline_fails_even_above_threshold() -> None:
    result = judge({"accuracy": 0.85}, gate({"accuracy": 0.8}), "binary", baseline(accuracy=0.9))
    check = check_of(result, "accuracy")
    assert result.passed is False
    assert check.baseline == 0.9
    assert len(check.reasons) == 1
    assert check.reasons[0].startswith("regressed by 0.05 from baseline 0.9")
    assert "tolerance" not in check.reasons[0]


def test_lower_is_better_regression_from_baseline_fails() -> None:
    result = judge({"rmse": 2.5}, gate({"rmse": 10.0}), "regression", baseline(rmse=2.0))
    assert result.passed is False
    assert check_of(result, "rmse").reasons == ("regressed by 0.5 from baseline 2",)
    improved = judge({"rmse": 1.5}, gate({"rmse": 10.0}), "regression", baseline(rmse=2.0))
    assert improved.passed is True


def test_both_threshold_and_regression_reasons_are_reported() -> None:
    result = judge({"accuracy": 0.7}, gate({"accuracy": 0.8}), "binary", baseline(accuracy=0.9))
    reasons = check_of(result, "accuracy").reasons
    assert len(reasons) == 2
    assert reasons[0] == "below threshold 0.8"
    assert reasons[1].startswith("regressed by 0.2")


def test_equal_to_baseline_passes() -> None:
    assert judge({"accuracy": 0.9}, gate({"accuracy": 0.8}), "binary", baseline(accuracy=0.9)).passed


def test_improvement_over_baseline_passes() -> None:
    result = judge({"accuracy": 0.97}, gate({"accuracy": 0.8}), "binary",
                   baseline(accuracy=0.9))
    assert result.passed is True
    assert check_of(result, "accuracy").reasons == ()


def test_regression_within_scalar_tolerance_passes() -> None:
    params = gate({"accuracy": 0.8}, default_tolerance=0.02)
    # exactly at the tolerance (0.90 - 0.88 is 0.0200000000000000178 in floats)
    assert judge({"accuracy": 0.88}, params, "binary", baseline(accuracy=0.9)).passed
    assert judge({"accuracy": 0.89}, params, "binary", baseline(accuracy=0.9)).passed
    result = judge({"accuracy": 0.87}, params, "binary", baseline(accuracy=0.9))
    assert result.passed is False
    check = check_of(result, "accuracy")
    assert check.tolerance == 0.02
    assert check.reasons == ("regressed by 0.03 from baseline 0.9 (tolerance 0.02)",)
    assert "tolerance 0.02" in check.line()


def test_scalar_tolerance_lower_is_better() -> None:
    params = gate({"mae": 5.0}, default_tolerance=0.5)
    assert judge({"mae": 2.4}, params, "regression", baseline(mae=2.0)).passed
    assert not judge({"mae": 2.6}, params, "regression", baseline(mae=2.0)).passed


def test_per_metric_tolerance_map() -> None:
    params = gate({"accuracy": 0.5, "f1": 0.5}, tolerance={"accuracy": 0.05}, default_tolerance=0.0)
    result = judge({"accuracy": 0.86, "f1": 0.79}, params, "binary", baseline(accuracy=0.9, f1=0.8))
    acc, f1 = check_of(result, "accuracy"), check_of(result, "f1")
    assert acc.tolerance == 0.05 and acc.passed is True
    assert f1.tolerance == 0.0 and f1.passed is False
    assert f1.reasons[0].startswith("regressed by 0.01")
    assert result.passed is False


def test_per_metric_tolerance_overrides_default() -> None:
    params = gate({"accuracy": 0.5, "f1": 0.5}, tolerance={"accuracy": 0.0}, default_tolerance=0.1)
    result = judge({"accuracy": 0.89, "f1": 0.75}, params, "binary", baseline(accuracy=0.9, f1=0.8))
    assert check_of(result, "accuracy").passed is False
    assert check_of(result, "f1").passed is True
    assert check_of(result, "f1").tolerance == 0.1


def test_baseline_lacking_one_metric_checks_that_metric_against_threshold_only() -> None:
    params = gate({"accuracy": 0.8, "f1": 0.8})
    result = judge({"accuracy": 0.85, "f1": 0.82}, params, "binary", baseline(accuracy=0.9))
    f1, acc = check_of(result, "f1"), check_of(result, "accuracy")
    assert f1.baseline is None and f1.passed is True
    assert "no baseline" in f1.line()
    assert acc.baseline == 0.9 and acc.passed is False
    assert result.passed is False
    # ... and the metric missing from the baseline still fails its threshold
    result = judge({"accuracy": 0.95, "f1": 0.7}, params, "binary", baseline(accuracy=0.9))
    assert check_of(result, "f1").reasons == ("below threshold 0.8",)


def test_nan_baseline_value_is_treated_as_absent() -> None:
    result = judge({"accuracy": 0.85}, gate({"accuracy": 0.8}), "binary", baseline(accuracy=NAN))
    assert check_of(result, "accuracy").baseline is None
    assert result.passed is True


# --------------------------------------------------------------------------- fail closed


def test_nan_metric_fails_closed() -> None:
    result = judge({"accuracy": NAN, "f1": 0.9}, gate({"accuracy": 0.0, "f1": 0.5}), "binary",
                   baseline(accuracy=0.5))
    check = check_of(result, "accuracy")
    assert result.passed is False
    assert check.value is None
    assert check.reasons == ("missing or NaN: fails closed",)
    assert check_of(result, "f1").passed is True


def test_nan_lower_is_better_metric_fails_closed() -> None:
    assert not judge({"rmse": NAN}, gate({"rmse": 1e9}), "regression", no_baseline()).passed


def test_missing_metric_fails_closed() -> None:
    result = judge({"accuracy": 0.99}, gate({"accuracy": 0.5, "roc_auc": 0.5}), "binary", no_baseline())
    roc = check_of(result, "roc_auc")
    assert result.passed is False
    assert roc.value is None
    assert roc.reasons == ("missing or NaN: fails closed",)
    assert "✗ roc_auc: missing" in result.table()


@pytest.mark.parametrize("bad", [None, "0.99", True, [0.99], {"value": 0.99}])
def test_non_numeric_metric_fails_closed(bad: Any) -> None:
    result = judge({"accuracy": bad}, gate({"accuracy": 0.5}), "binary", no_baseline())
    assert result.passed is False
    assert check_of(result, "accuracy").value is None
    assert "accuracy" not in result.metrics


def test_integer_metric_is_accepted() -> None:
    result = judge({"accuracy": 1}, gate({"accuracy": 0.5}), "binary", no_baseline())
    assert result.passed is True
    assert check_of(result, "accuracy").value == 1.0
    assert result.metrics == {"accuracy": 1.0}


# --------------------------------------------------------------------------- no baseline


def test_no_baseline_applies_thresholds_only() -> None:
    b = Baseline("main", METRICS_PATH, note="no metrics/eval.json at main: first model")
    assert b.found is False
    # a big "regression" cannot be detected without a baseline: only the threshold applies
    result = judge({"accuracy": 0.81}, gate({"accuracy": 0.8}), "binary", b)
    assert result.passed is True
    assert check_of(result, "accuracy").baseline is None
    table = result.table()
    assert "thresholds only" in table
    assert "baseline: none (no metrics/eval.json at main: first model); thresholds only" in table
    assert table.splitlines()[-1] == "gate: PASSED"
    failing = judge({"accuracy": 0.79}, gate({"accuracy": 0.8}), "binary", b)
    assert failing.passed is False
    assert "thresholds only" in failing.table()


def test_found_baseline_table_names_rev_and_commit() -> None:
    result = judge({"accuracy": 0.95}, gate({"accuracy": 0.9}), "binary", baseline(accuracy=0.9))
    lines = result.table().splitlines()
    assert lines[0] == "✓ accuracy: 0.95 (threshold ≥ 0.9, baseline 0.9)"
    assert lines[1] == f"baseline: {METRICS_PATH} at main (0123456789ab)"
    assert lines[2] == "gate: PASSED"
    assert "thresholds only" not in result.table()


# --------------------------------------------------------------------------- configuration errors


@pytest.mark.parametrize(
    ("task", "metric", "suggestion"),
    [
        ("multiclass", "precision", "did you mean 'precision_macro'?"),
        ("multiclass", "roc_auc", "did you mean 'roc_auc_ovr'?"),
        ("binary", "recall_macro", "did you mean 'recall'?"),
    ],
)
def test_threshold_for_metric_task_does_not_produce(task: str, metric: str, suggestion: str) -> None:
    with pytest.raises(ConfigError) as info:
        judge({metric: 0.9}, gate({metric: 0.5}), task, no_baseline())
    err = info.value
    assert err.exit_code == 2
    assert err.where == f"params.yaml: gate.thresholds.{metric}"
    assert err.problem == f"a {task} model does not produce '{metric}'"
    assert err.remedy == suggestion


def test_f1_on_multiclass_names_f1_macro() -> None:
    with pytest.raises(ConfigError) as info:
        judge({}, gate({"f1": 0.5}), "multiclass", no_baseline())
    err = info.value
    assert err.exit_code == 2
    assert err.where == "params.yaml: gate.thresholds.f1"
    assert "f1_macro" in err.remedy
    assert "valid keys" not in err.remedy  # reworded for metrics


def test_f1_on_multiclass_suggests_f1_macro() -> None:
    with pytest.raises(ConfigError) as info:
        judge({}, gate({"f1": 0.5}), "multiclass", no_baseline())
    assert "did you mean 'f1_macro'?" in info.value.remedy


def test_regression_metric_on_classifier_lists_task_metrics() -> None:
    with pytest.raises(ConfigError) as info:
        judge({}, gate({"accuracy": 0.5}), "regression", no_baseline())
    assert info.value.remedy == "regression metrics: mae, r2, rmse"


def test_tolerance_for_metric_task_does_not_produce() -> None:
    with pytest.raises(ConfigError) as info:
        judge({}, gate({"accuracy": 0.5}, tolerance={"rmse": 0.1}), "binary", no_baseline())
    assert info.value.where == "params.yaml: gate.tolerance.rmse"
    assert info.value.exit_code == 2


@pytest.mark.parametrize("params", [GateParams(), gate(default_tolerance=0.1)])
def test_no_gated_metric_raises(params: GateParams) -> None:
    with pytest.raises(ConfigError) as info:
        judge({"accuracy": 0.9}, params, "binary", baseline(accuracy=0.9))
    err = info.value
    assert err.exit_code == 2
    assert err.where == "params.yaml: gate.thresholds"
    assert err.problem == "no metric is gated"
    assert "accuracy" in err.remedy


def test_no_gated_metric_suggests_a_metric_of_the_task() -> None:
    with pytest.raises(ConfigError) as info:
        judge({}, GateParams(), "regression", no_baseline())
    assert "rmse" in info.value.remedy


# --------------------------------------------------------------------------- tolerance-only metrics


def test_metric_only_in_tolerance_map_is_gated_against_baseline() -> None:
    params = gate({"accuracy": 0.5}, tolerance={"f1": 0.01})
    result = judge({"accuracy": 0.9, "f1": 0.7}, params, "binary", baseline(accuracy=0.9, f1=0.8))
    assert [c.metric for c in result.checks] == ["accuracy", "f1"]
    f1 = check_of(result, "f1")
    assert f1.threshold is None
    assert f1.passed is False
    assert f1.reasons[0].startswith("regressed by 0.1 from baseline 0.8")
    assert "no threshold" in f1.line()
    assert result.passed is False
    within = judge({"accuracy": 0.9, "f1": 0.795}, params, "binary", baseline(accuracy=0.9, f1=0.8))
    assert within.passed is True


def test_tolerance_only_metric_without_baseline_passes_but_must_exist() -> None:
    params = gate(tolerance={"f1": 0.0})
    assert judge({"f1": 0.1}, params, "binary", no_baseline()).passed is True
    missing = judge({}, params, "binary", no_baseline())
    assert missing.passed is False
    assert check_of(missing, "f1").reasons == ("missing or NaN: fails closed",)


def test_default_tolerance_alone_does_not_gate_other_metrics() -> None:
    params = gate({"accuracy": 0.5}, default_tolerance=0.01)
    result = judge({"accuracy": 0.9, "f1": 0.1}, params, "binary", baseline(accuracy=0.9, f1=0.9))
    assert [c.metric for c in result.checks] == ["accuracy"]
    assert result.passed is True


# --------------------------------------------------------------------------- JSON report


def test_to_json_fields() -> None:
    result = judge({"accuracy": 0.95, "f1": NAN, "roc_auc": 0.9, "note": "x"},
                   gate({"accuracy": 0.9, "f1": 0.5}, tolerance={"roc_auc": 0.01}),
                   "binary", baseline(accuracy=0.9, f1=0.8, roc_auc=0.95))
    data = result.to_json()
    assert data["schema_version"] == 1
    assert data["passed"] is False
    assert data["task"] == "binary"
    assert set(data["metrics"]) == {"accuracy", "f1", "roc_auc"}
    acc = data["metrics"]["accuracy"]
    assert acc == {"value": 0.95, "threshold": 0.9, "baseline": 0.9, "tolerance": 0.0,
                   "direction": "higher", "passed": True, "reasons": [],
                   "baseline_committed": 0.9, "baseline_rescored": None}
    f1 = data["metrics"]["f1"]
    assert f1["value"] is None and f1["passed"] is False
    assert f1["reasons"] == ["missing or NaN: fails closed"]
    roc = data["metrics"]["roc_auc"]
    assert roc["threshold"] is None and roc["tolerance"] == 0.01 and roc["passed"] is False
    assert data["baseline"] == {"rev": "main", "commit": "0123456789abcdef0123456789abcdef01234567",
                                "path": METRICS_PATH, "found": True, "note": "",
                                "used": "committed", "label": "committed metrics",
                                "committed_metrics": {"accuracy": 0.9, "f1": 0.8, "roc_auc": 0.95},
                                "rescored_metrics": None, "rescore": None}
    assert data["candidate"]["f1"] is None            # NaN → null
    assert data["candidate"]["accuracy"] == 0.95
    assert "note" not in data["candidate"]
    text = json.dumps(data, allow_nan=False)          # strict JSON: no NaN anywhere
    assert json.loads(text) == data


def test_to_json_lower_is_better_and_no_baseline() -> None:
    data = judge({"rmse": 1.0}, gate({"rmse": 2.0}), "regression", no_baseline("first model")).to_json()
    assert data["passed"] is True
    assert data["metrics"]["rmse"]["direction"] == "lower"
    assert data["metrics"]["rmse"]["baseline"] is None
    assert data["baseline"]["found"] is False
    assert data["baseline"]["commit"] is None
    assert data["baseline"]["note"] == "first model"


def test_result_from_json_round_trip() -> None:
    result = judge({"accuracy": 0.95}, gate({"accuracy": 0.9}), "binary", no_baseline())
    passed, candidate = result_from_json(json.loads(json.dumps(result.to_json())))
    assert passed is True
    assert candidate == {"accuracy": 0.95}
    failed = judge({"accuracy": 0.5}, gate({"accuracy": 0.9}), "binary", no_baseline())
    assert result_from_json(failed.to_json())[0] is False
    assert result_from_json({}) == (False, {})


# --------------------------------------------------------------------------- read_baseline (real git)


def git(root: Path, *args: str) -> str:
    proc = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, f"git {' '.join(args)} failed: {proc.stderr}"
    return proc.stdout.strip()


@pytest.fixture
def repo(tmp_path: Path) -> GitRepo:
    root = tmp_path / "repo"
    root.mkdir()
    git(root, "init", "-q", "-b", "main")
    return GitRepo(root)


def commit_file(repo: GitRepo, rel: str, text: str, message: str = "commit") -> str:
    path = repo.root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    git(repo.root, "add", rel)
    git(repo.root, "commit", "-q", "-m", message)
    return git(repo.root, "rev-parse", "HEAD")


def test_read_baseline_unborn_repo(repo: GitRepo) -> None:
    b = read_baseline(repo, "main", METRICS_PATH)
    assert b.found is False
    assert b.metrics is None and b.commit is None
    assert b.note == "the repository has no commits yet: first model"
    assert (b.rev, b.path) == ("main", METRICS_PATH)


def test_read_baseline_unknown_revision(repo: GitRepo) -> None:
    commit_file(repo, METRICS_PATH, '{"accuracy": 0.9}')
    with pytest.raises(ConfigError) as info:
        read_baseline(repo, "production", METRICS_PATH)
    err = info.value
    assert err.exit_code == 2
    assert err.where == "params.yaml: gate.baseline"
    assert "'production' not found" in err.problem
    assert "gate.baseline" in err.remedy


def test_read_baseline_revision_without_the_file(repo: GitRepo) -> None:
    sha = commit_file(repo, "README.md", "hello\n")
    b = read_baseline(repo, "main", METRICS_PATH)
    assert b.found is False
    assert b.commit == sha
    assert b.note == f"no {METRICS_PATH} at main: first model"
    assert "first model" in b.note


def test_read_baseline_malformed_json(repo: GitRepo) -> None:
    commit_file(repo, METRICS_PATH, '{"accuracy": 0.9,')
    with pytest.raises(DataError) as info:
        read_baseline(repo, "main", METRICS_PATH)
    assert info.value.exit_code == 2
    assert info.value.where == f"main:{METRICS_PATH}"
    assert "not valid JSON" in info.value.problem


def test_read_baseline_json_that_is_not_an_object(repo: GitRepo) -> None:
    commit_file(repo, METRICS_PATH, "[0.9, 0.8]")
    with pytest.raises(DataError) as info:
        read_baseline(repo, "main", METRICS_PATH)
    assert "not a JSON object" in info.value.problem


def test_read_baseline_reads_committed_metrics(repo: GitRepo) -> None:
    text = json.dumps({"accuracy": 0.9, "f1": 1, "roc_auc": 0.95, "flag": True, "accuracy_note": "x",
                       "not_a_metric": 0.5, "n_rows": 569, "rmse": True})
    sha = commit_file(repo, METRICS_PATH, text)
    b = read_baseline(repo, "main", METRICS_PATH)
    assert b.found is True
    assert b.commit == sha
    assert b.note == ""
    assert dict(b.metrics or {}) == {"accuracy": 0.9, "f1": 1.0, "roc_auc": 0.95}
    assert all(type(v) is float for v in (b.metrics or {}).values())


def test_read_baseline_reads_the_revision_not_the_working_tree(repo: GitRepo) -> None:
    first = commit_file(repo, METRICS_PATH, '{"accuracy": 0.8}', "first")
    commit_file(repo, METRICS_PATH, '{"accuracy": 0.9}', "second")
    (repo.root / METRICS_PATH).write_text('{"accuracy": 0.1}', encoding="utf-8")  # uncommitted
    assert read_baseline(repo, "main", METRICS_PATH).metrics == {"accuracy": 0.9}
    old = read_baseline(repo, first, METRICS_PATH)
    assert old.metrics == {"accuracy": 0.8} and old.commit == first
    git(repo.root, "tag", "v1", first)
    assert read_baseline(repo, "v1", METRICS_PATH).metrics == {"accuracy": 0.8}
    assert read_baseline(repo, "HEAD~1", METRICS_PATH).commit == first


def test_read_baseline_from_another_branch(repo: GitRepo) -> None:
    commit_file(repo, METRICS_PATH, '{"accuracy": 0.9}', "baseline")
    git(repo.root, "checkout", "-q", "-b", "candidate")
    commit_file(repo, METRICS_PATH, '{"accuracy": 0.7}', "candidate")
    b = read_baseline(repo, "main", METRICS_PATH)
    assert b.metrics == {"accuracy": 0.9}
    result = judge({"accuracy": 0.7}, gate({"accuracy": 0.5}), "binary", b)
    assert result.passed is False
    assert check_of(result, "accuracy").reasons[0].startswith("regressed by 0.2 from baseline 0.9")
    assert math.isclose(check_of(result, "accuracy").baseline, 0.9)


def test_read_baseline_on_orphan_branch_still_reads_main(repo: GitRepo) -> None:
    commit_file(repo, METRICS_PATH, '{"accuracy": 0.9}', "baseline")
    git(repo.root, "checkout", "-q", "--orphan", "fresh")
    b = read_baseline(repo, "main", METRICS_PATH)
    assert b.metrics == {"accuracy": 0.9}


# --------------------------------------------------------------------------- re-scored baseline (pure)


def rescored_pair(committed: Mapping[str, float], rescored: Mapping[str, float] | None,
                  note: str = "model v1.0.0") -> Baseline:
    from modelshelf.pipeline.gate import with_rescore

    return with_rescore(baseline(**committed), rescored, note, {"version": "1.0.0", "rows": 120} if rescored else None)


def test_rescored_baseline_is_the_one_compared_with() -> None:
    # New data: the baseline model scores 0.80 on the new held-out set, not the committed 0.90.
    b = rescored_pair({"accuracy": 0.9, "f1": 0.9}, {"accuracy": 0.8, "f1": 0.85, "roc_auc": 0.9})
    assert b.rescored and b.used == "rescored"
    assert b.metrics == {"accuracy": 0.8, "f1": 0.85, "roc_auc": 0.9}
    assert b.committed == {"accuracy": 0.9, "f1": 0.9}
    params = gate({"accuracy": 0.7, "f1": 0.7})
    result = judge({"accuracy": 0.82, "f1": 0.86}, params, "binary", b)
    assert result.passed is True                      # better than the baseline model, like for like
    assert judge({"accuracy": 0.82, "f1": 0.86}, params, "binary", baseline(accuracy=0.9, f1=0.9)).passed is False
    acc = check_of(result, "accuracy")
    assert (acc.baseline, acc.committed, acc.rescored) == (0.8, 0.9, True)
    assert acc.line() == "✓ accuracy: 0.82 (threshold ≥ 0.7, baseline 0.8 re-scored, committed 0.9)"
    table = result.table().splitlines()
    assert table[-2] == ("baseline: re-scored on this held-out set (120 rows): model v1.0.0 at main "
                         "(0123456789ab); committed metrics/eval.json shown for reference")
    # ... and a real regression against the re-scored baseline still fails.
    worse = judge({"accuracy": 0.79, "f1": 0.86}, params, "binary", b)
    assert worse.passed is False
    assert check_of(worse, "accuracy").reasons[0].startswith("regressed by 0.01 from baseline 0.8")


def test_rescored_baseline_json_records_both_sets() -> None:
    b = rescored_pair({"accuracy": 0.9, "f1": 0.9}, {"accuracy": 0.8, "f1": 0.85})
    data = judge({"accuracy": 0.82, "f1": 0.86}, gate({"accuracy": 0.7, "f1": 0.7}), "binary", b).to_json()
    assert data["baseline"]["used"] == "rescored"
    assert data["baseline"]["label"] == "re-scored on this held-out set"
    assert data["baseline"]["committed_metrics"] == {"accuracy": 0.9, "f1": 0.9}
    assert data["baseline"]["rescored_metrics"] == {"accuracy": 0.8, "f1": 0.85}
    assert data["baseline"]["rescore"] == {"used": True, "note": "model v1.0.0",
                                           "model": {"version": "1.0.0", "rows": 120}}
    acc = data["metrics"]["accuracy"]
    assert (acc["baseline"], acc["baseline_committed"], acc["baseline_rescored"]) == (0.8, 0.9, 0.8)
    assert data["baseline"]["found"] is True and data["baseline"]["rev"] == "main"  # the old fields stay
    assert json.loads(json.dumps(data, allow_nan=False)) == data


def test_unusable_rescore_keeps_the_committed_metrics_and_says_why() -> None:
    params = gate({"accuracy": 0.7, "f1": 0.7})
    candidate = {"accuracy": 0.82, "f1": 0.86}
    for rescored, why in [(None, "the input schema changed"),
                          ({"accuracy": 0.8, "f1": NAN}, "re-scoring the baseline model gave no f1"),
                          ({"accuracy": 0.8}, "re-scoring the baseline model gave no f1")]:
        b = rescored_pair({"accuracy": 0.9, "f1": 0.9}, rescored, note="the input schema changed")
        assert b.used == "committed" and not b.rescored
        assert b.metrics == {"accuracy": 0.9, "f1": 0.9} == b.committed
        result = judge(candidate, params, "binary", b)
        assert result.passed is False                 # exactly the committed-metrics verdict
        assert check_of(result, "accuracy").line().endswith("baseline 0.9): regressed by 0.08 from baseline 0.9")
        assert result.table().splitlines()[-2] == ("baseline: committed metrics: metrics/eval.json at main "
                                                   f"(0123456789ab); not re-scored: {why}")
        data = result.to_json()
        assert data["baseline"]["used"] == "committed" and data["baseline"]["rescore"]["note"] == why
        assert data["metrics"]["accuracy"]["baseline_committed"] == 0.9
        assert data["metrics"]["accuracy"]["baseline_rescored"] is None


def test_rescore_does_not_apply_without_a_baseline() -> None:
    from modelshelf.pipeline.gate import with_rescore

    b = with_rescore(no_baseline(), {"accuracy": 0.8}, "model v1.0.0")
    assert b.used == "none" and b.rescore is None and not b.found


# --------------------------------------------------------------------------- re-scored baseline (real git and DVC)




def customer_project(new_project: Any) -> Project:
    """A built, committed project on 600 customers, gated with no tolerance."""
    p: Project = new_project("fair")
    p.commit("scaffold")
    p.add_csv("customers.csv", customers(600, seed=1))
    p.set_params(data={"target": "churn"}, gate={"thresholds": {"accuracy": 0.75, "f1": 0.7}, "tolerance": 0.0})
    p.dvc("repro")
    p.commit("first model")
    return p


def shifted(p: Project) -> None:
    """Append 600 rows shifted in x0: more, harder held-out rows for the same estimator."""
    p.add_csv("customers.csv", pd.concat([customers(600, seed=1), customers(600, seed=2, shift=1.5)],
                                         ignore_index=True))


def model_cache_object(p: Project) -> Path:
    from modelshelf.dvcrepo import cache_file, locked_md5

    md5 = locked_md5(GitRepo(p.root), "main", "dvc.lock", "models/model.joblib", p.root)
    assert md5 is not None
    return cache_file(p.root, md5)


def held_out(p: Project) -> tuple[pd.DataFrame, pd.Series]:
    test = pd.read_csv(p.root / "data/prepared/test.csv")
    return test.drop(columns="churn"), test["churn"]


@pytest.mark.slow
def test_new_data_gates_against_the_baseline_model_rescored_on_the_new_held_out_set(
        new_project: Any, tmp_path: Path) -> None:
    import shutil

    from sklearn import metrics as skm

    import modelshelf
    from modelshelf.params import load_params

    p = customer_project(new_project)
    committed = p.json("metrics/eval.json")
    old_models = tmp_path / "committed-models"
    old_models.mkdir()
    for name in ("card.json", "model.joblib"):
        shutil.copy(p.root / "models" / name, old_models / name)

    shifted(p)
    out = p.dvc("repro").stdout
    assert "Running stage 'gate'" in out and "gate: PASSED" in out
    assert "re-scored on this held-out set" in out
    report = p.json("metrics/gate.json")
    candidate = p.json("metrics/eval.json")

    # The old behaviour (committed metrics, measured on the old held-out split) fails this candidate.
    old = judge(candidate, load_params(p.root / "params.yaml").gate, "binary",
                read_baseline(GitRepo(p.root), "main", METRICS_PATH))
    assert old.passed is False
    assert candidate["accuracy"] < committed["accuracy"]

    # The new one compares with the committed model scored on this held-out set, which we
    # recompute here: the verified committed model, the new test split, scikit-learn's metrics.
    X, y = held_out(p)
    model = modelshelf.load(old_models)
    pred, proba = model.predict(X), model.predict_proba(X)[:, 1]
    mine = {"accuracy": skm.accuracy_score(y, pred), "precision": skm.precision_score(y, pred),
            "recall": skm.recall_score(y, pred), "f1": skm.f1_score(y, pred),
            "roc_auc": skm.roc_auc_score(y, proba)}
    base = report["baseline"]
    assert base["used"] == "rescored" and base["label"] == "re-scored on this held-out set"
    assert base["rescored_metrics"] == pytest.approx(mine, rel=1e-12, abs=0)
    assert base["committed_metrics"] == committed
    assert base["rescore"]["model"]["sha256"] == model.card["artefacts"]["model"]["sha256"]
    assert base["rescore"]["model"]["source"] == "cache" and base["rescore"]["model"]["rows"] == len(y)
    assert mine["accuracy"] < committed["accuracy"]   # the same model looks worse on the new split
    for metric in ("accuracy", "f1"):
        check = report["metrics"][metric]
        assert check["baseline"] == check["baseline_rescored"] == pytest.approx(mine[metric], rel=1e-12)
        assert check["baseline_committed"] == committed[metric]
        assert check["value"] >= check["baseline"] and check["passed"] is True
    card = p.json("models/card.json")
    assert card["gate"]["passed"] is True and card["gate"]["baseline"]["used"] == "rescored"

    # `shelf report` reaches the same verdict through the same baseline.
    rep = json.loads(p.shelf("report", "--base", "main", "--json").stdout)
    assert rep["passed"] is True and rep["gate"]["baseline"]["used"] == "rescored"
    assert "re-scored on this held-out set" in p.shelf("report", "--base", "main", "--md").stdout

    # Committed, the pipeline is up to date; the gate does rerun when only the data changes.
    p.commit("retrain on new data")
    assert "up to date" in p.dvc("status").stdout


@pytest.mark.slow
def test_a_dropped_feature_is_a_new_lineage_not_gated_against_the_old_baseline(new_project: Any) -> None:
    """Issue 14: a schema change is never gated against the old baseline without a choice."""
    p = customer_project(new_project)
    p.add_csv("customers.csv", customers(600, seed=1).drop(columns=["x3"]))
    p.set_params(gate={"tolerance": 1.0})
    refused = p.dvc("repro", check=False)
    said = refused.stdout + refused.stderr
    assert refused.returncode != 0 and "input schema changed: dropped x3" in said
    assert "release.bump: major" in said and "gate.baseline: none" in said
    assert not (p.root / "metrics/gate.json").exists() or not p.json("metrics/gate.json")["passed"]

    # Remedy 1: a major bump. The old baseline is ignored, and the table and report say so.
    p.set_params(release={**p.params()["release"], "bump": "major"})
    done = p.dvc("repro")
    assert "baseline: none (baseline ignored: major bump, input schema changed); thresholds only" in done.stdout
    gate = p.json("metrics/gate.json")
    assert gate["passed"] is True and gate["baseline"]["found"] is False
    assert all(c["baseline"] is None for c in gate["metrics"].values())
    card = p.json("models/card.json")
    assert "x3" not in {f["name"] for f in card["input_schema"]["features"]}

    # Remedy 2: a first-of-a-line gate, thresholds only, whatever the bump rule.
    p.set_params(release={**p.params()["release"], "bump": "auto"}, gate={"baseline": "none"})
    done = p.dvc("repro")
    assert "baseline: none (gate.baseline: none: a first-of-a-line gate); thresholds only" in done.stdout
    assert p.json("metrics/gate.json")["passed"] is True


@pytest.mark.slow
def test_unverifiable_baseline_bytes_never_loosen_the_gate(new_project: Any) -> None:
    p = customer_project(new_project)
    obj = model_cache_object(p)
    obj.chmod(0o644)
    obj.write_bytes(obj.read_bytes() + b"tampered")   # the cache lies and there is no remote
    shifted(p)
    proc = p.dvc("repro", check=False)
    assert proc.returncode != 0 and "gate: FAILED" in proc.stdout and "Running stage 'serialise'" not in proc.stdout
    report = p.json("metrics/gate.json")
    assert report["passed"] is False and report["baseline"]["used"] == "committed"
    assert "cannot fetch from cache or remote" in report["baseline"]["rescore"]["note"]
    for metric in ("accuracy", "f1"):    # the committed baseline, as before this change
        assert report["metrics"][metric]["baseline"] == report["baseline"]["committed_metrics"][metric]


@pytest.mark.slow
def test_rescoring_on_the_same_split_reproduces_the_committed_metrics(built: Project) -> None:
    from modelshelf.pipeline import baseline as baselines

    repo, prepared = GitRepo(built.root), built.root / "data/prepared"
    same = baselines.read(repo, "main", METRICS_PATH, root=built.root, prepared=prepared)
    assert same.used == "rescored" and same.metrics == same.committed   # like for like, bit for bit
    assert same.rescore is not None and same.rescore.model["source"] == "cache"

    card = built.json("models/card.json")
    card["dependencies"]["scikit-learn"] = "0.24.2"
    (built.root / "models/card.json").write_text(json.dumps(card))
    built.commit("a card from another scikit-learn")
    other = baselines.read(repo, "main", METRICS_PATH, root=built.root, prepared=prepared)
    assert other.used == "committed" and other.rescore is not None
    assert "built with scikit-learn 0.24.2" in other.rescore.note
    assert baselines.read(repo, "main", METRICS_PATH, root=built.root, prepared=None).used == "committed"


@pytest.mark.slow
def test_baseline_model_missing_locally_is_fetched_from_the_remote(released: Project) -> None:
    model_cache_object(released).unlink()
    released.set_params(data={"test_size": 0.25}, gate={"tolerance": 1.0})   # a new split
    out = released.dvc("repro").stdout
    assert "Running stage 'gate'" in out and "re-scored on this held-out set" in out
    report = released.json("metrics/gate.json")
    assert report["baseline"]["used"] == "rescored"
    assert report["baseline"]["rescore"]["model"]["source"] == "remote"


def test_threshold_names_are_checked_at_prepare_before_training_all_at_once(project: Project) -> None:
    """Issue 14: a multiclass task gated on binary names fails at prepare, naming every bad one."""
    p = project
    p.set_params(data={"source": "builtin:iris"}, train={"hyperparams": {"n_estimators": 10}},
                 gate={"thresholds": {"accuracy": 0.8, "f1": 0.8, "roc_auc": 0.9}})
    proc = p.dvc("repro", check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "Running stage 'train'" not in out
    assert "gate.thresholds.f1, gate.thresholds.roc_auc" in out and "a multiclass model does not produce" in out
    assert "f1: did you mean 'f1_macro'?" in out and "roc_auc: did you mean 'roc_auc_ovr'?" in out
    assert not (p.root / "build/candidate").exists() and not (p.root / "data/prepared").exists()
