"""Issue 16 (plots): each task's plots exist and are declared, and ``dvc plots show``'s page
draws every chart in a real browser with no network (Vega bundled, no CDN)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

import browser
from conftest import Project
from modelshelf import charts
from modelshelf.project import init

TASKS = {
    "binary": ({}, {"Confusion matrix", "ROC", "Precision-recall"}),
    "multiclass": ({"data": {"source": "builtin:wine"},
                    "gate": {"thresholds": {"accuracy": 0.5}}},
                   {"Confusion matrix", "ROC", "Precision-recall"}),
    "regression": ({"data": {"source": "builtin:diabetes", "task": "regression"},
                    "train": {"estimator": "sklearn.ensemble.RandomForestRegressor"},
                    "gate": {"thresholds": {"r2": 0.0}}},
                   {"Predicted vs actual", "Residuals"}),
}


def make(root: Path, task: str) -> Project:
    """A project of ``task`` scaffolded by ``init`` (params written first, as a user would), committed."""
    from importlib import resources

    root.mkdir(parents=True)
    params = yaml.safe_load((resources.files("modelshelf") / "templates" / "params.yaml.template").read_text())
    for section, values in TASKS[task][0].items():
        params[section].update(values)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    init(root)
    p = Project(root)
    p.commit("scaffold")
    return p


def declared(p: Project) -> set[str]:
    return {name for entry in yaml.safe_load((p.root / "dvc.yaml").read_text())["plots"] for name in entry}


@pytest.mark.parametrize("task", list(TASKS))
def test_the_declared_plots_follow_the_task_and_the_page_template_is_offline(tmp_path: Path, task: str) -> None:
    p = make(tmp_path / task, task)
    assert declared(p) == TASKS[task][1]
    page = (p.root / ".dvc" / charts.HTML_TEMPLATE).read_text()
    assert "{plot_divs}" in page and "{scripts}" not in page and "cdn.jsdelivr" not in page
    assert "window.vegaEmbed" in page
    assert "html_template = plots/modelshelf.html" in (p.root / ".dvc" / "config").read_text()


@pytest.mark.slow
@pytest.mark.parametrize("task", list(TASKS))
def test_dvc_plots_show_draws_every_chart_offline_in_chromium(tmp_path: Path, task: str,
                                                               repo_root: Path) -> None:
    browser.chromium()
    p = make(tmp_path / task, task)
    p.dvc("repro")
    shown = p.dvc("plots", "show")
    assert "failed to load" not in (shown.stdout + shown.stderr).lower(), shown.stderr
    html = p.root / "dvc_plots" / "index.html"
    assert "cdn.jsdelivr" not in html.read_text()
    page = browser.load(html, tmp_path / "browser")
    assert page.errors == [], page.errors
    svgs = browser.charts(page.dom)
    assert len(svgs) == len(TASKS[task][1]), page.dom[-3000:]
    for svg in svgs:
        assert 'role="graphics-symbol"' in svg, svg[:2000]  # data marks, not just axes
    shot = browser.screenshot(html, tmp_path / "screenshots" / f"{task}.png", tmp_path / "browser")
    out = repo_root / "build" / "screenshots"
    out.mkdir(parents=True, exist_ok=True)
    shutil.copy(shot, out / f"dvc-plots-{task}.png")


def test_the_evaluate_plots_render_to_png_and_svg() -> None:
    rows = [{"class": c, "rank": i, "fpr": i / 3, "tpr": min(1, i / 2)} for c in ("a", "b") for i in range(4)]
    spec = charts.plot_spec("roc", rows, "ROC")
    assert charts.to_png(spec)[:8] == b"\x89PNG\r\n\x1a\n"
    assert charts.to_svg(spec).lstrip().startswith("<svg")
    page = charts.offline_html("t", [spec])
    assert "cdn." not in page and 'id="chart-0"' in page
