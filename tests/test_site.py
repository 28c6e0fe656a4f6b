"""`shelf site`: the registry as one static page, built from the tags and cards."""

from __future__ import annotations

import json
import re
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
    history = text[text.index("<h2>Stage history</h2>"):text.index("<h2>Cards</h2>")]
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
