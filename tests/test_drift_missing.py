"""Missing values in drift: judged against the training rate (threshold and sample size), drawn
in the charts; and the charts' labels, PSI scale and PNGs."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from modelshelf.drift import charts
from modelshelf.drift import profile as P
from modelshelf.errors import ConfigError
from modelshelf.params import DriftParams, parse_params

from conftest import Project, customers, environ, isolated_env

SCHEMA = {"features": [{"name": "x", "kind": "numeric"}, {"name": "year", "kind": "numeric"},
                       {"name": "colour", "kind": "categorical"}],
          "target": {"name": "y"}, "task": "binary"}


def frame(n: int, seed: int, missing: float = 0.0) -> pd.DataFrame:
    """``n`` rows; a share ``missing`` of x (exactly, rounded) is missing."""
    rng = np.random.default_rng(seed)
    out = pd.DataFrame({"x": rng.normal(size=n), "year": rng.integers(2010, 2024, size=n).astype(float),
                        "colour": rng.choice(["red", "green", "blue"], size=n), "y": rng.integers(0, 2, size=n)})
    out.loc[rng.choice(n, int(round(n * missing)), replace=False), "x"] = np.nan
    return out


@pytest.fixture(scope="module")
def reference() -> dict:
    return P.build(frame(4000, seed=0, missing=0.10), SCHEMA)


# PSI out of the way (on 10 rows it alarms on its own): the missing rates alone are judged.
MISSING_ONLY = DriftParams(psi_warn=1e9, psi_alert=1e9)


def feature(result: P.DriftResult, name: str) -> P.FeatureDrift:
    return next(f for f in result.features if f.name == name)


# --- judging missing rates ------------------------------------------------------------------


def test_the_same_rise_in_missing_values_is_drift_in_a_large_sample_and_noise_in_a_small_one(
        reference: dict) -> None:
    large = P.compare(reference, SCHEMA, frame(1000, seed=1, missing=0.30), MISSING_ONLY)
    assert large.verdict == "drift" and large.drifted() == ["x"]
    x = feature(large, "x")
    assert x.missing_p_value < 1e-6 and x.reasons == ("missing 10.0% → 30.0%",)
    small = P.compare(reference, SCHEMA, frame(10, seed=1, missing=0.30), MISSING_ONLY)
    x = feature(small, "x")
    assert x.missing_new == pytest.approx(0.3) and x.missing_p_value > 0.01
    assert small.verdict == "no drift" and x.level == "warn" and "too few rows to confirm" in x.reasons[0]
    # With PSI judged too, the default thresholds on 1,000 rows: the missing rate makes the verdict.
    assert P.compare(reference, SCHEMA, frame(1000, seed=1, missing=0.30), DriftParams()).drifted() == ["x"]


def test_a_significant_change_below_the_threshold_is_not_drift(reference: dict) -> None:
    new = frame(100_000, seed=2, missing=0.13)
    quiet = P.compare(reference, SCHEMA, new, DriftParams())
    assert feature(quiet, "x").missing_p_value < 1e-6 and quiet.verdict == "no drift"
    strict = P.compare(reference, SCHEMA, new, DriftParams(missing_rate=0.02))
    assert strict.drifted() == ["x"]


def test_fewer_missing_values_is_a_change_too(reference: dict) -> None:
    result = P.compare(reference, SCHEMA, frame(2000, seed=3, missing=0.0), DriftParams(missing_rate=0.05))
    assert result.drifted() == ["x"] and "missing 10.0% → 0.0%" in feature(result, "x").reasons


def test_samples_with_the_training_missing_rate_raise_few_alarms(reference: dict) -> None:
    alarms = sum(P.compare(reference, SCHEMA, frame(n, seed=s, missing=0.1), MISSING_ONLY).verdict != "no drift"
                 for s in range(10, 40) for n in (20, 500))
    assert alarms / 60 < 0.05
    assert all(P.compare(reference, SCHEMA, frame(500, seed=s, missing=0.1), DriftParams()).verdict == "no drift"
               for s in range(40, 50))


def test_the_missing_rate_test_against_exact_binomial_counts() -> None:
    # 3 of 10 missing against 10% of 4,000: Fisher's exact test, not the normal approximation.
    from scipy import stats

    want = stats.fisher_exact([[400, 3600], [3, 7]]).pvalue
    assert P._missing_p_value(0.1, 4000, 0.3, 10) == pytest.approx(want, rel=1e-9)
    assert P._missing_p_value(0.0, 4000, 0.0, 10) == 1.0
    assert P._missing_p_value(0.01, 4000, 0.8, 1000) < 1e-100


@pytest.mark.parametrize("value", [-0.1, 1.5, "high", True])
def test_a_bad_missing_rate_is_a_one_line_config_error(value: object) -> None:
    with pytest.raises(ConfigError) as err:
        parse_params({"drift": {"missing_rate": value}})
    text = str(err.value)
    assert "drift.missing_rate" in text and "\n" not in text
    assert parse_params({"drift": {"missing_rate": 0.2}}).drift.missing_rate == 0.2
    assert parse_params({}).drift.missing_rate == 0.1


def test_the_json_and_markdown_name_the_reason(reference: dict) -> None:
    from modelshelf.drift.core import DriftReport, Reference

    result = P.compare(reference, SCHEMA, frame(1000, seed=4, missing=0.8), DriftParams())
    rep = DriftReport(Reference("1.0.0", {}, reference, None), "new.csv", result)
    row = next(r for r in rep.to_json()["features"] if r["feature"] == "x")
    assert row["level"] == "drift" and row["reasons"] == ["missing 10.0% → 80.0%"]
    assert row["missing_p_value"] < 1e-6
    assert "x (missing 10.0% → 80.0%)" in rep.markdown()


# --- charts ---------------------------------------------------------------------------------


def test_bin_labels_are_plain_numbers_chosen_by_the_bin_width() -> None:
    assert P.bin_labels([2010.0 + i for i in range(0, 101)]) == (
        "≤2,020", "2,020–2,030", "2,030–2,040", "2,040–2,050", "2,050–2,060", "2,060–2,070",
        "2,070–2,080", "2,080–2,090", "2,090–2,100", ">2,100")
    small = P.bin_labels(list(np.linspace(12.0, 22.0, 101)))
    assert small[1] == "13–14" and small[0] == "≤13"
    assert P.bin_labels(list(np.linspace(11.9, 17.9, 101)))[1] == "12.5–13.1"
    fine = P.bin_labels(list(np.linspace(0.0, 0.01, 101)))
    assert fine[1] == "0.001–0.002"
    for q in (np.linspace(-1e6, 1e6, 101), np.linspace(1e-5, 2e-5, 101), np.zeros(101),
              np.r_[np.zeros(50), np.ones(51)]):
        assert not any("e+" in b or "e-" in b for b in P.bin_labels(list(q)))


def test_the_drift_bins_carry_plain_labels(reference: dict) -> None:
    year = feature(P.compare(reference, SCHEMA, frame(500, seed=5), DriftParams()), "year")
    assert year.bins and not any("e+" in b for b in year.bins)
    assert year.bins[0] == "≤2,011" and year.bins[-1] == ">2,022" and "2,012–2,014" in year.bins


def position(scale: dict, value: float) -> float:
    """Where ``value`` falls on a Vega-Lite x scale, 0 (left) to 1 (right)."""
    lo, hi = scale["domain"]
    kind = scale.get("type", "linear")
    if kind == "symlog":
        c = scale.get("constant", 1.0)
        f = lambda v: math.copysign(math.log1p(abs(v) / c), v)  # noqa: E731
    elif kind == "log":
        f = math.log
    else:
        assert kind == "linear", kind
        f = lambda v: v  # noqa: E731
    return (f(value) - f(lo)) / (f(hi) - f(lo))


def overview_scale(spec: dict) -> tuple[dict, list[float]]:
    """The PSI panel's x scale and the threshold rules' values."""
    panel = spec["hconcat"][0]
    bars = next(layer for layer in panel["layer"] if layer["mark"]["type"] == "bar")
    rules = next(layer for layer in panel["layer"] if layer["mark"]["type"] == "rule")
    return bars["encoding"]["x"]["scale"], [v["psi"] for v in rules["data"]["values"]]


def drift_with_outlier(reference: dict) -> P.DriftResult:
    result = P.compare(reference, SCHEMA, frame(1000, seed=6, missing=0.5), DriftParams())
    big = P.FeatureDrift("outlier", "numeric", 50 * result.thresholds.psi_alert, "ks", 1.0, 0.0, 0.0, 0.0,
                         "drift", ("≤1", ">1"), (0.5, 0.5), (0.0, 1.0))
    return P.DriftResult(result.rows, (*result.features, big), thresholds=result.thresholds)


def test_the_psi_overview_keeps_the_warn_and_alert_lines_in_view_beside_an_outlier(reference: dict) -> None:
    result = drift_with_outlier(reference)
    spec = charts.specs(result, "1.0.0")["overview"]
    scale, rules = overview_scale(spec)
    th = result.thresholds
    assert sorted(rules) == [th.psi_warn, th.psi_alert]
    warn, alert, top = (position(scale, v) for v in (th.psi_warn, th.psi_alert, 50 * th.psi_alert))
    assert 0.1 <= warn < alert <= 0.6 and top <= 1.0  # both lines well apart from 0 and from the outlier
    text = json.dumps(spec, ensure_ascii=False)
    assert "12.5" in text  # the outlier's value is written
    # The second panel shows the missing rates, training and new, per feature.
    missing = json.dumps(spec["hconcat"][1], ensure_ascii=False)
    assert "missing" in missing and "0.5" in missing


def test_feature_charts_draw_a_missing_bar_and_category_names(reference: dict) -> None:
    result = P.compare(reference, SCHEMA, frame(1000, seed=7, missing=0.5), DriftParams())
    specs = charts.specs(result, "1.0.0")
    rows = specs["x"]["data"]["values"]
    missing = {r["source"]: r["share"] for r in rows if r["bin"] == "(missing)"}
    assert missing == {"training (v1.0.0)": pytest.approx(0.1), "new data": pytest.approx(0.5)}
    assert sum(r["share"] for r in rows if r["source"] == "new data") == pytest.approx(1.0)
    colours = {r["bin"] for r in specs["colour"]["data"]["values"]}
    assert {"red", "green", "blue", "(missing)"} <= colours
    assert not any("e+" in r["bin"] for name in ("x", "year") for r in specs[name]["data"]["values"])


def test_charts_are_written_as_png_files(reference: dict, tmp_path: Path) -> None:
    result = drift_with_outlier(reference)
    written = charts.write(result, tmp_path / "charts", "1.0.0")
    names = sorted(p.name for p in written)
    assert names == ["colour.png", "outlier.png", "overview.png", "x.png", "year.png"]
    for p in written:
        data = p.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR" and len(data) > 2000
    assert not [p for p in (tmp_path / "charts").iterdir() if p.name.startswith(".")]  # no temp files left


# --- through the CLI ------------------------------------------------------------------------


def with_missing(data: pd.DataFrame, share: float, seed: int, columns: tuple[str, ...] = ("x1", "x2")) -> pd.DataFrame:
    out = data.copy()
    rng = np.random.default_rng(seed)
    for c in columns:
        out.loc[rng.choice(len(out), int(round(len(out) * share)), replace=False), c] = np.nan
    return out


@pytest.fixture(scope="module")
def missing_project(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Project, dict[str, str]]]:
    """A project trained on customers with 1% of x1 and x2 missing."""
    from modelshelf.project import init

    base = tmp_path_factory.mktemp("missing")
    env = isolated_env(base / "home")
    with environ(env):
        init(base / "proj")
        p = Project(base / "proj")
        p.commit("scaffold")
        p.add_csv("customers.csv", with_missing(customers(2000, seed=1), 0.01, seed=1))
        p.set_params(data={"target": "churn"}, gate={"thresholds": {"accuracy": 0.6}, "tolerance": 0.0})
        p.dvc("repro")
        p.commit("model")
    yield p, env


@pytest.mark.slow
def test_shelf_drift_flags_missing_values_rising_from_1_to_80_percent(
        missing_project: tuple[Project, dict[str, str]]) -> None:
    p, env = missing_project
    with environ(env):
        with_missing(customers(1000, seed=2), 0.8, seed=2).to_csv(p.root / "holes.csv", index=False)
        out = p.shelf("drift", "holes.csv", "--no-predictions", check=False)
        assert out.returncode == 9, out.stderr
        assert "x1" in out.stderr and "x2" in out.stderr
        # The training split holds about 1% missing (the split is random): 0.9% or 1.1%.
        assert re.search(r"\*\*Drifted:\*\* .*x1 \(missing [01]\.[0-9]% → 80\.0%\)", out.stdout), out.stdout
        assert re.search(r"x2 \(missing [01]\.[0-9]% → 80\.0%\)", out.stdout), out.stdout
        js = p.shelf("drift", "holes.csv", "--json", "--plot", "charts", check=False)
        assert js.returncode == 9
        report = json.loads(js.stdout)
        assert report["verdict"] == "drift" and {"x1", "x2"} <= set(report["drifted"])
        x1 = next(f for f in report["features"] if f["feature"] == "x1")
        assert x1["missing_ref"] == pytest.approx(0.01, abs=0.002) and x1["missing_new"] == pytest.approx(0.8)
        assert x1["reasons"] == [f"missing {x1['missing_ref']:.1%} → 80.0%"] and x1["level"] == "drift"
        assert x1["missing_p_value"] < 1e-6 and report["thresholds"]["missing_rate"] == 0.1
        pngs = sorted(f.name for f in (p.root / "charts").glob("*.png"))
        assert "x1.png" in pngs and "overview.png" in pngs
        assert (p.root / "charts" / "x1.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_shelf_drift_is_quiet_on_new_data_with_as_few_missing_values(
        missing_project: tuple[Project, dict[str, str]]) -> None:
    p, env = missing_project
    with environ(env):
        with_missing(customers(1000, seed=3), 0.01, seed=3).to_csv(p.root / "same.csv", index=False)
        out = p.shelf("drift", "same.csv", "--json", check=False)
        assert out.returncode == 0, out.stdout + out.stderr
        report = json.loads(out.stdout)
        assert report["verdict"] == "no drift"
        x1 = next(f for f in report["features"] if f["feature"] == "x1")
        assert x1["missing_new"] == pytest.approx(0.01) and x1["level"] == "ok"
