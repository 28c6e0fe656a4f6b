"""`shelf site`: the registry as one static page, built from the tags and cards."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import Project
from modelshelf.errors import ConfigError
from modelshelf.registry import site
from modelshelf.registry.core import Assignment, Registry, Release
from modelshelf.tags import SemVer


def two_releases(p: Project) -> None:
    """``p`` (v1.0.0 released) retrained with more trees and released as v1.1.0; prod moved
    from v1.0.0 to v1.1.0."""
    p.shelf("promote", "v1.0.0", "--to", "prod")
    hyper = p.params()["train"]["hyperparams"]
    hyper["n_estimators"] = 120
    p.set_params(train={"hyperparams": hyper}, gate={"tolerance": 0.05})
    p.dvc("repro", "-q")
    p.commit("retrain: 120 trees")
    p.shelf("release")
    p.shelf("promote", "v1.1.0", "--to", "prod")


def test_the_page_shows_every_release_stage_chart_and_diff(released: Project, tmp_path: Path) -> None:
    two_releases(released)
    built = site.build(released.root, tmp_path / "registry")
    text = built.index.read_text(encoding="utf-8")
    assert built.releases == 2
    stages = text[text.index("<h2>Stages</h2>"):text.index("<h2>Releases</h2>")]
    assert "<td>prod</td><td>v1.1.0</td>" in stages, stages
    history = text[text.index("<h2>Stage history</h2>"):text.index("<h2>Releases in detail</h2>")]
    assert history.count("<tr>") == 1 + 2 and history.index("v1.1.0") < history.index("v1.0.0")  # newest first
    for version in ("1.0.0", "1.1.0"):
        card = json.loads((tmp_path / "registry" / "cards" / f"v{version}.json").read_text())
        assert card["version"] == version
    [diff] = re.findall(r"<details id='card-v1\.1\.0'>.*?</details>", text, re.S)
    assert "n_estimators" in diff and "<td>100</td><td>120</td>" in diff, diff
    specs = [json.loads(s) for s in re.findall(r"<script type='application/json' id='spec-\d+'>(.*?)</script>", text)]
    metrics = set(json.loads((released.root / "models" / "card.json").read_text())["metrics"])
    assert {s["title"] for s in specs} == metrics and built.charts == len(metrics)
    gated = {s["title"] for s in specs if any("threshold" in json.dumps(layer["encoding"]) for layer in s["layer"])}
    assert gated == set(released.params()["gate"]["thresholds"]), gated
    rules = [layer for s in specs for layer in s["layer"] if layer["mark"]["type"] == "rule"]
    assert rules and all(len(r["data"]["values"]) == 2 for r in rules)  # both promotions marked
    assert (tmp_path / "registry" / "assets" / "vega.js").stat().st_size > 100_000
    assert not re.search(r"""(src|href|url)\s*[=(]\s*["']?(https?:)?//""", text), "nothing from the network"


def hostile_registry() -> Registry:
    evil = "</script><script>alert(1)</script><img src=x onerror=alert(2)>"
    card = {"version": "1.0.0", "metrics": {evil: 0.5, "accuracy": 0.9},
            "gate": {"passed": True, "checks": {"accuracy": {"threshold": 0.8}}}, "algorithm": evil}
    rel = Release(name="model", version=SemVer.parse("1.0.0"), tag="model@v1.0.0", commit="a" * 40,
                  date="2026-12-01T00:00:00Z", timestamp=1_764_547_200, author=evil, card=card, stages=("prod",))
    stage = Assignment(stage="prod", version=SemVer.parse("1.0.0"), tag="model#prod#1", commit="a" * 40,
                       timestamp=1_764_547_300, number=1)
    return Registry(name="model", releases=(rel,), assignments=(stage,), holders={"prod": "v1.0.0"},
                    last_event=1_764_547_300)


def test_nothing_from_git_or_a_card_can_inject_markup() -> None:
    reg = hostile_registry()
    text = site.page(reg, site.metric_specs(reg))
    assert "<img src=x" not in text and "<script>alert" not in text
    assert text.count("<script") == text.count("</script>") == 2 + len(site.metric_specs(reg))
    assert "&lt;/script&gt;" in text  # shown, escaped


def test_a_rebuild_replaces_its_own_site_and_refuses_any_other_directory(released: Project, tmp_path: Path) -> None:
    out = tmp_path / "registry"
    site.build(released.root, out)
    (out / "stale.html").write_text("from an older build")
    site.build(released.root, out)
    assert not (out / "stale.html").exists() and (out / "index.html").is_file()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no staging left
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="not a site written by `shelf site`"):
        site.build(released.root, mine)
    assert (mine / "notes.txt").read_text() == "keep me"


def test_a_rerun_after_a_kill_between_the_renames_cleans_up_and_builds(released: Project, tmp_path: Path) -> None:
    """A SIGKILL after ``out`` was renamed away and before the new site took its place leaves no
    ``out`` and a hidden ``.NAME.old-PID`` (and maybe a staging ``.NAME.new-PID-*``) holding the
    marker: a rerun removes those of dead processes and builds, and touches nothing else."""
    out = tmp_path / "registry"
    site.build(released.root, out)
    dead = _dead_pid()
    old, staging = tmp_path / f".registry.old-{dead}", tmp_path / f".registry.new-{dead}-k1ll3d"
    out.rename(old)                                   # what the killed build had done
    shutil.copytree(old, staging)
    (staging / "index.html").unlink()                 # half written
    live = tmp_path / f".registry.old-{os.getppid()}"  # another build, still running: not ours to remove
    shutil.copytree(old, live)
    foreign = tmp_path / ".registry.old-1234567"       # no marker: not a directory `shelf site` wrote
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    built = site.build(released.root, out)
    assert built.releases == 1 and "v1.0.0" in built.index.read_text(encoding="utf-8")
    assert (out / site.MARKER).is_file() and (out / "assets" / "vega.js").is_file()
    assert (out / "cards" / "v1.0.0.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == sorted([live.name, foreign.name])
    assert (foreign / "notes.txt").read_text() == "keep me"


def _dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_drift_sections_escape_everything_and_a_note_replaces_a_missing_report() -> None:
    from modelshelf.drift.profile import DriftResult, FeatureDrift

    reg = hostile_registry()
    evil = reg.releases[0].author
    feature = FeatureDrift(name=evil, kind="numeric", psi=0.4, test="ks", statistic=0.3, p_value=1e-9,
                           missing_ref=0.0, missing_new=0.25, level="drift", bins=("a", "b"),
                           ref_shares=(0.5, 0.5), new_shares=(0.9, 0.1), reasons=(evil,))
    report = site.Drift("1.0.0", evil, DriftResult(rows=10, features=(feature,)))
    text = site.page(reg, site.metric_specs(reg), {"1.0.0": report})
    assert "<img src=x" not in text and "<script>alert" not in text
    assert text.count("<script") == text.count("</script>") == 2 + len(site.metric_specs(reg)) + 1  # + the overview
    [section] = re.findall(r"<section id='release-v1\.0\.0'>.*?</section>", text, re.S)
    assert "<table class=drift>" in section and "0.0% → 25.0%" in section and "level-drift" in section
    assert f"id='chart-{len(site.metric_specs(reg))}'" in section
    noted = site.page(reg, [], {"1.0.0": site.Drift("1.0.0", "data/raw/x.csv", note=f"no drift report: {evil}")})
    assert "<p class=note>no drift report: &lt;/script&gt;" in noted and "class=chart" not in noted


def test_the_drift_of_the_current_data_is_in_each_held_or_latest_release(released: Project, tmp_path: Path) -> None:
    """Built-in data has no new data (a note); a CSV gives a report; ``drift=False`` none; data
    that cannot be read a note, never a failed build."""
    from modelshelf.params import load_params
    from modelshelf.pipeline import data

    built = site.build(released.root, tmp_path / "builtin")
    assert built.drift == 0 and "built in: there is no new data to compare" in built.index.read_text()
    frame = data.load_source(load_params(released.root / "params.yaml").data, released.root).frame
    frame["mean radius"] *= 1.5
    released.add_csv("new.csv", frame)
    built = site.build(released.root, tmp_path / "csv")
    text = built.index.read_text()
    metrics = len(json.loads((released.root / "models" / "card.json").read_text())["metrics"])
    assert built.drift == 1 and built.charts == metrics + 1
    [section] = re.findall(r"<section id='release-v1\.0\.0'>.*?</section>", text, re.S)
    assert "drift of the current data (data/raw/new.csv)" in section and "<table class=drift>" in section
    assert "<tr><td>mean radius</td>" in section and "<td class='level-drift'>drift</td>" in section
    assert site.build(released.root, tmp_path / "off", drift=False).drift == 0
    assert "drift of the current data" not in (tmp_path / "off" / "index.html").read_text()
    (released.root / "data" / "raw" / "new.csv").unlink()
    broken = site.build(released.root, tmp_path / "broken")
    note = "<p class=note>no drift report: data/raw/new.csv: file not found"
    assert broken.drift == 0 and note in broken.index.read_text() and str(tmp_path) not in broken.index.read_text()
