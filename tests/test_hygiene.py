"""Release hygiene (issue 14): the card says which commit a model was trained from and what
differed from it, not a bare ``dirty``."""

from __future__ import annotations

from conftest import Project


def test_the_card_names_the_commit_trained_from_and_the_files_modified(built: Project) -> None:
    p = built
    head = p.git("rev-parse", "HEAD").stdout.strip()
    assert p.json("models/card.json")["git"]["modified"] == []
    p.set_params(train={"hyperparams": {"n_estimators": 120}}, gate={"tolerance": 0.05})
    p.dvc("repro")
    git = p.json("models/card.json")["git"]
    # the pipeline's own outputs (dvc.lock, metrics/, models/) are not what "modified" means
    assert git == {"commit": head, "dirty": True, "modified": ["params.yaml"]}, git
    assert "(modified: params.yaml)" in p.shelf("show").stdout
