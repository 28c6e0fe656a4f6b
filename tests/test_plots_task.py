"""Issue 16 (plots): the plots follow a change of task, `shelf report --plots` draws the candidate's
plots as PNG for the pull-request report, and no stage imports the renderer (vl_convert) to start."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import Project, run

PNG = b"\x89PNG\r\n\x1a\n"
REGRESSION = {"Predicted vs actual", "Residuals"}
# Two plot entries of the user's own: one under a name modelshelf never uses, one under a name
# it does (ROC) but reading the user's own file. Neither is modelshelf's to take out.
USERS = """  - Loss:
      x: step
      y:
        metrics/loss.json: loss
  - ROC:
      x: fpr
      y:
        metrics/own_roc.json: tpr
"""
TO_REGRESSION = {"data": {"source": "builtin:diabetes", "task": "auto"},
                 "train": {"estimator": "sklearn.ensemble.RandomForestRegressor"},
                 "gate": {"thresholds": {"r2": 0.0}}}


def plot_entries(p: Project) -> dict[str, Any]:
    return {name: spec for entry in yaml.safe_load((p.root / "dvc.yaml").read_text())["plots"]
            for name, spec in entry.items()}


def plot_files(p: Project) -> set[str]:
    return {f.name for f in (p.root / "metrics" / "plots").iterdir()}


def set_section(p: Project, section: str, values: dict[str, Any]) -> None:
    """Replace keys of params.yaml's ``section`` (whole values: thresholds are replaced, not merged)."""
    data = p.params()
    data[section].update(values)
    (p.root / "params.yaml").write_text(yaml.safe_dump(data, sort_keys=False))


def test_rerunning_init_after_a_change_of_task_swaps_modelshelfs_plots_and_keeps_the_users(tmp_path: Path) -> None:
    run(["shelf", "init", "proj"], tmp_path)
    p = Project(tmp_path / "proj")
    dvc_yaml = p.root / "dvc.yaml"
    dvc_yaml.write_text(dvc_yaml.read_text().replace("\nartifacts:", USERS + "\nartifacts:", 1))
    users = {k: v for k, v in plot_entries(p).items() if k in ("Loss",)}
    users["ROC"] = {"x": "fpr", "y": {"metrics/own_roc.json": "tpr"}}
    p.commit("scaffold, with plots of our own")
    p.dvc("repro", "evaluate")
    assert plot_files(p) == {"predictions.json", "roc.json", "precision_recall.json"}

    # The task changes in params.yaml (data.task stays auto: the source's target decides, not
    # the binary schema the last `dvc repro` prepared), and `shelf init` is rerun.
    for section, values in TO_REGRESSION.items():
        set_section(p, section, values)
    out = p.shelf("init", ".").stdout
    assert "add plot Predicted vs actual" in out and "add plot Residuals" in out, out
    entries = plot_entries(p)
    assert set(entries) == REGRESSION | {"Loss", "ROC"}
    assert entries["Loss"] == users["Loss"] and entries["ROC"] == users["ROC"]  # the user's, untouched
    assert "# Regression's plots" in dvc_yaml.read_text()
    assert "Classification's plots" not in dvc_yaml.read_text()
    assert "nothing to add" in p.shelf("init", ".").stdout  # and a rerun changes nothing

    p.dvc("repro", "evaluate")
    assert plot_files(p) == {"predictions.json"}  # no stale roc.json / precision_recall.json
    rows = p.json("metrics/plots/predictions.json")
    assert rows and set(rows[0]) == {"actual", "predicted", "residual"}
    shown = json.loads(p.dvc("plots", "show", "--json").stdout)
    assert {e["name"] for e in shown["errors"]} == {"Loss", "ROC"}  # only the user's (no files yet)
    assert set(shown["data"]) == REGRESSION | {"Loss", "ROC"}
    for name in REGRESSION:  # DVC draws modelshelf's two from the regression data
        assert shown["data"][name] and shown["data"][name][0]["type"] == "vega", shown["data"][name]


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == PNG and data[12:16] == b"IHDR", data[:32]
    return struct.unpack(">II", data[16:24])


TASKS = {
    "binary": ({}, {"confusion": "Confusion matrix", "roc": "ROC"}),
    "multiclass": ({"data": {"source": "builtin:wine"}, "gate": {"thresholds": {"accuracy": 0.5}}},
                   {"confusion": "Confusion matrix", "roc": "ROC"}),
    "regression": (TO_REGRESSION, {"fit": "Predicted vs actual", "residuals": "Residuals"}),
}


@pytest.mark.parametrize("task", list(TASKS))
def test_report_plots_writes_the_candidates_pngs_and_the_markdown_links_them(tmp_path: Path, task: str) -> None:
    run(["shelf", "init", "proj"], tmp_path)
    p = Project(tmp_path / "proj")
    for section, values in TASKS[task][0].items():
        set_section(p, section, values)
    p.shelf("init", ".")  # the task's plots, if it is not the template's
    p.commit("scaffold")
    p.dvc("repro", "evaluate")
    (p.root / "report-plots").mkdir()
    other = "fit" if task != "regression" else "confusion"
    (p.root / "report-plots" / f"{other}.png").write_bytes(PNG)  # the other task's, from an older report

    proc = p.shelf("report", "--base", "main", "--md", "--plots", "report-plots", check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    wanted = TASKS[task][1]
    assert {f.name for f in (p.root / "report-plots").iterdir()} == {f"{k}.png" for k in wanted}
    for kind, title in wanted.items():
        data = (p.root / "report-plots" / f"{kind}.png").read_bytes()
        width, height = png_size(data)
        assert width >= 300 and height >= 300 and len(data) > 5_000, (kind, width, height, len(data))
        assert f"![{title}](report-plots/{kind}.png)" in proc.stdout, proc.stdout
    assert proc.stdout.startswith("<!-- modelshelf-report -->")

    got = json.loads(p.shelf("report", "--base", "main", "--json", "--plots", "report-plots").stdout)
    assert {"base", "base_commit", "same_commit", "passed", "gate", "params_changed", "release",
            "model_bytes", "dataset"} < set(got)
    assert got["plots"] == [{"kind": k, "title": t, "path": f"report-plots/{k}.png"} for k, t in wanted.items()]
    assert "plots" in json.loads(p.shelf("report", "--base", "main", "--json").stdout)  # [] without --plots


def test_report_plot_links_are_relative_to_where_the_markdown_goes(built: Project) -> None:
    from modelshelf.report import build

    rep = build(built.root, "main", plots=built.root / "build" / "report" / "plots")
    assert [f.kind for f in rep.plots] == ["confusion", "roc"]
    md = rep.markdown(relative_to=built.root / "build" / "report")
    assert "![Confusion matrix](plots/confusion.png)" in md and "![ROC](plots/roc.png)" in md
    assert "Candidate plots" not in build(built.root, "main").markdown()  # none asked for, none shown


# The stages' start-up path, as `shelf STAGE` and the warm host (warm.PRELOAD) take it. The warm
# host does not preload vl_convert: a stage that draws nothing never pays for it.
LEAN = """
import importlib, json, sys
from modelshelf.pipeline.warm import PRELOAD
for name in ("modelshelf.cli", "modelshelf.commands.pipeline", "modelshelf.pipeline.stages", *PRELOAD):
    importlib.import_module(name)
from modelshelf.cli import build_parser
for stage in ("prepare", "train", "evaluate", "gate", "serialise", "report"):
    build_parser(stage)
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] == "vl_convert")))
"""


def test_no_stage_imports_vl_convert_to_start() -> None:
    proc = subprocess.run([sys.executable, "-c", LEAN], capture_output=True, text=True, check=True)
    assert json.loads(proc.stdout) == [], "vl_convert imported at start-up: " + proc.stdout


# A stage run to the end in one process (SHELF_WARM=0: not through a warm host), then the report,
# without and with --plots: only drawing a PNG imports vl_convert.
RUNS = """
import json, os, sys
from modelshelf.cli import main
from modelshelf.project import stage_options
opts = stage_options(__import__("pathlib").Path("."), "evaluate")
assert main(["evaluate", *[w for k in ("prepared", "candidate", "metrics", "plots") for w in ("--" + k, opts[k])]]) == 0
seen = {"evaluate": "vl_convert" in sys.modules}
assert main(["report", "--base", "main", "--json"]) == 0
seen["report"] = "vl_convert" in sys.modules
assert main(["report", "--base", "main", "--json", "--plots", "build/plots"]) == 0
seen["report --plots"] = "vl_convert" in sys.modules
print("SEEN " + json.dumps(seen))
"""


def test_only_drawing_a_png_imports_vl_convert(built: Project) -> None:
    proc = run([sys.executable, "-c", RUNS], built.root)
    seen = json.loads(proc.stdout.rsplit("SEEN ", 1)[1])
    assert seen == {"evaluate": False, "report": False, "report --plots": True}, seen
