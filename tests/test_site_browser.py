"""Issue 16 (the registry page): for each task, `shelf site`'s page draws every chart (metrics
across releases, each drift overview) in headless Chromium with the network blocked."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

import browser
from conftest import Project, add_remotes
from modelshelf import api
from modelshelf.params import load_params
from modelshelf.pipeline import data
from test_plots_offline import TASKS, make


def two_releases_on_new_data(p: Project) -> tuple[str, str]:
    """``p`` released (built-in data) and promoted to prod; retrained on a CSV of the
    same rows with the first feature shifted, released (a major version) and promoted to staging; then newer
    data arrives in that CSV (a second feature 30% missing). Returns both versions."""
    p.dvc("repro", "-q")
    p.commit("first model")
    first = api.release(p.root).version
    api.promote(p.root, f"v{first}", "prod")
    params = load_params(p.root / "params.yaml").data
    frame = data.load_source(params, p.root).frame
    x, y = [c for c in frame.columns if c != params.target][:2]
    frame[x] = frame[x] + 2 * frame[x].std()
    p.add_csv("new.csv", frame)
    p.set_params(release={"bump": "major"})  # a new dataset starts a new line
    p.dvc("repro", "-q")
    p.commit("retrain on the new data")
    second = api.release(p.root).version
    api.promote(p.root, f"v{second}", "staging")
    frame.loc[np.random.default_rng(0).random(len(frame)) < 0.3, y] = np.nan
    frame.to_csv(p.root / "data" / "raw" / "new.csv", index=False)
    return str(first), str(second)


def containers(dom: str) -> dict[str, str]:
    """Each chart container's markup in the DOM, by id (up to what follows it on the page)."""
    starts = [(m.start(), m.group(1)) for m in re.finditer(r"<div[^>]*\bid=\"(chart-\d+)\"", dom)]
    found = {}
    for start, name in starts:
        after = re.compile(r"<div[^>]*\bid=\"chart-\d+\"|<script|<details|<h2").search(dom, start + 1)
        found[name] = dom[start:after.start() if after else len(dom)]
    return found


@pytest.mark.slow
@pytest.mark.parametrize("task", list(TASKS))
def test_the_registry_page_draws_every_chart_offline_in_chromium(tmp_path: Path, task: str) -> None:
    browser.chromium()
    p = add_remotes(make(tmp_path / task, task))
    first, second = two_releases_on_new_data(p)
    out = tmp_path / "site"
    shown = json.loads(p.shelf("site", "-o", str(out), "--json").stdout)
    assert shown["releases"] == 2 and shown["drift_reports"] == 2, shown
    index = out / "index.html"
    source = index.read_text(encoding="utf-8")
    for version, stage in ((first, "prod"), (second, "staging, latest")):
        [section] = re.findall(rf"<section id='release-v{re.escape(version)}'>.*?</section>", source, re.S)
        assert f"<h3>v{version} ({stage})</h3>" in section and "<table class=drift>" in section, section[:2000]
        assert "against v" + version in section and "class=chart" in section
    assert "<td class='level-drift'>drift</td>" in source  # v1.0.0 trained before the shift
    assert source.count("class=chart ") + source.count("class=chart>") == shown["charts"]

    page = browser.load(index, tmp_path / "browser")
    assert page.errors == [], page.errors
    drawn = containers(page.dom)
    assert len(drawn) == shown["charts"] >= 3, page.dom[-3000:]
    for name, markup in drawn.items():
        assert "chart failed" not in markup, (name, markup[:2000])
        assert re.search(r"<svg\b[^>]*class=\"marks\"", markup) or "<canvas" in markup, (name, markup[:2000])
        assert 'role="graphics-symbol"' in markup, (name, markup[:2000])  # data marks, not just axes
    shot = browser.screenshot(index, tmp_path / "screenshots" / f"site-{task}.png", tmp_path / "browser",
                              size="1400,6000")
    print(f"screenshot of the {task} registry page: {shot}")
