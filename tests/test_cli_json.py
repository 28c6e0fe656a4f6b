"""Issue 16: ``--json`` on every command but ``serve`` (one document, indent 2, on stdout, with
the keys docs/cli.md documents), ``shelf predict -o -`` and ``shelf diff``'s formatting."""

from __future__ import annotations

import argparse
import json
import re
import subprocess
from pathlib import Path
from typing import Any

from conftest import Project

# `serve` runs until stopped: its output is the log (`--log-format json`), not one result;
# `completion` prints a script for the shell to source, which JSON would not serve.
NO_JSON = {"serve", "completion"}


def subcommands() -> dict[str, argparse.ArgumentParser]:
    from modelshelf.cli import build_parser

    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_every_subcommand_but_serve_takes_json() -> None:
    commands = subcommands()
    assert {"init", "verify", "predict", "bom", "keygen", "serve"} <= set(commands)
    missing = sorted(name for name, p in commands.items()
                     if name not in NO_JSON and not any("--json" in a.option_strings for a in p._actions))
    assert missing == [], f"subcommands without --json: {missing}"


def as_json(proc: subprocess.CompletedProcess[str], keys: set[str]) -> dict[str, Any]:
    """stdout is exactly one JSON object, indented by 2, holding at least ``keys``."""
    cmd = " ".join(map(str, proc.args))
    try:
        doc = json.loads(proc.stdout)
    except json.JSONDecodeError as exc:
        raise AssertionError(f"{cmd}: stdout is not one JSON document ({exc}):\n{proc.stdout}") from None
    assert isinstance(doc, dict), cmd
    assert proc.stdout == json.dumps(doc, indent=2) + "\n", f"{cmd}: not indent-2 JSON alone"
    assert keys <= set(doc), f"{cmd}: missing {sorted(keys - set(doc))}"
    return doc


# (arguments, documented top-level keys) on ``built``: one model, nothing released.
# {tmp} is a scratch directory outside the project (serialise rewrites the copy's own models/).
BUILT = [
    (["init", ".", "--dry-run", "--json"], {"root", "dry_run", "nothing_to_add", "setup", "changes"}),
    (["prepare", "--params", "params.yaml", "--raw", "data/raw", "--out", "{tmp}/prepared", "--json"],
     {"task", "source", "sha256", "rows", "train_rows", "test_rows"}),
    (["train", "--params", "params.yaml", "--prepared", "data/prepared", "--out", "{tmp}/candidate", "--json"],
     {"algorithm", "sha256"}),
    (["evaluate", "--prepared", "data/prepared", "--candidate", "build/candidate", "--metrics",
      "{tmp}/eval.json", "--plots", "{tmp}/plots", "--json"], {"metrics"}),
    (["gate", "--no-write", "--json"], {"passed", "metrics", "baseline"}),
    (["serialise", "--params", "params.yaml", "--prepared", "data/prepared", "--candidate", "build/candidate",
      "--metrics", "metrics/eval.json", "--gate", "metrics/gate.json", "--out", "models", "--profile", "data/profile.json", "--json"],
     {"serialised", "name", "version", "version_bump", "model", "sha256", "card"}),
    (["verify", "--json"], {"name", "version", "files", "dependencies"}),
    (["show", "--json"], {"name", "version", "metrics", "artefacts"}),
    (["predict", "data/prepared/test.csv", "--model", "models", "-o", "{tmp}/scored.csv", "--json"],
     {"version", "rows", "output"}),
    (["keygen", "{tmp}/keys", "--json"], {"private_key", "public_key"}),
]

# On a project with remotes, in this order: the release first, the deprecation last.
RELEASED = [
    (["release", "--push", "--json"], {"tag", "version", "commit", "pushed", "already", "resumed",
                                       "renumbered_from", "notes", "signed"}),
    (["versions", "--json"], {"name", "deprecated", "stages", "warnings", "versions"}),
    (["diff", "v1.0.0", "latest", "--json"], {"old", "new", "metrics", "hyperparams", "card", "features",
                                              "deltas"}),
    (["promote", "v1.0.0", "--to", "prod", "--json"], {"stage", "version", "tag", "commit", "already",
                                                        "resumed", "notes", "pushed"}),
    (["get", "prod", "-o", "{tmp}/got", "--json"], {"name", "version", "directory", "source", "sha256",
                                                   "signature"}),
    (["verify", "--all", "--json"], {"name", "ok", "releases", "objects", "problems"}),
    (["bom", "v1.0.0", "--json"], {"release", "bom", "file"}),
    (["env", "v1.0.0", "-o", "{tmp}/requirements.txt", "--json"], {"release", "requirements", "text", "file"}),
    (["gc", "--dry-run", "--json"], {"dry", "kept_revisions", "fetched", "unfetched", "collected"}),
    (["rollback", "v1.0.0", "--json"], {"name", "version", "directory", "source", "sha256"}),
    (["deprecate", "v1.0.0", "--json"], {"tag", "version", "pushed"}),
]


def run_table(p: Project, table: list[tuple[list[str], set[str]]], tmp: Path) -> dict[str, dict[str, Any]]:
    docs = {}
    for args, keys in table:
        proc = p.shelf(*(a.format(tmp=tmp) for a in args))
        docs[args[0]] = as_json(proc, keys)
    return docs


def test_json_of_the_pipeline_and_model_commands(built: Project, tmp_path: Path) -> None:
    docs = run_table(built, BUILT, tmp_path)
    assert docs["init"]["nothing_to_add"] is True and docs["init"]["changes"] == []
    assert docs["prepare"]["rows"] == docs["prepare"]["train_rows"] + docs["prepare"]["test_rows"]
    assert set(docs["evaluate"]["metrics"]) >= {"accuracy", "f1", "roc_auc"}
    assert docs["serialise"]["serialised"] is True and docs["serialise"]["version"] == "v1.0.0"
    card = built.json("models/card.json")
    assert docs["verify"]["version"] == f"v{card['version']}"
    assert {f["kind"] for f in docs["verify"]["files"]} >= {"model"}
    assert docs["verify"]["dependencies"]["scikit-learn"]["match"] is True
    assert docs["predict"]["rows"] > 0 and docs["predict"]["output"] == str(tmp_path / "scored.csv")
    assert Path(docs["keygen"]["private_key"]).is_file() and Path(docs["keygen"]["public_key"]).is_file()


def test_json_of_the_registry_commands(remote_project: Project, tmp_path: Path) -> None:
    p = remote_project
    docs = run_table(p, RELEASED, tmp_path)
    assert docs["release"]["tag"] == "model@v1.0.0" and docs["release"]["pushed"] is True
    assert docs["release"]["version"] == "v1.0.0" and docs["release"]["signed"] is False
    assert docs["promote"]["tag"] == "model#prod#1" and docs["promote"]["stage"] == "prod"
    assert docs["get"]["directory"] == str(tmp_path / "got") and docs["get"]["signature"] is None
    assert docs["bom"]["file"] is None and docs["bom"]["bom"]["bomFormat"] == "CycloneDX"
    assert docs["env"]["file"] == str(tmp_path / "requirements.txt")
    assert (tmp_path / "requirements.txt").read_text() == docs["env"]["text"]
    assert any(r.startswith("scikit-learn==") for r in docs["env"]["requirements"])
    assert docs["gc"]["dry"] is True
    assert docs["rollback"]["version"] == "v1.0.0"
    assert docs["deprecate"]["tag"].startswith("model@v1.0.0!#") and docs["deprecate"]["version"] == "v1.0.0"


def test_predict_to_standard_output(built: Project) -> None:
    proc = built.shelf("predict", "data/prepared/test.csv", "--model", "models", "-o", "-")
    lines = proc.stdout.splitlines()
    rows = len((built.root / "data/prepared/test.csv").read_text().splitlines()) - 1
    assert lines[0].startswith("model_version,prediction"), proc.stdout[:200]
    assert len(lines) == rows + 1 and all(ln.startswith("1.0.0,") for ln in lines[1:])
    assert "scored" in proc.stderr and "scored" not in proc.stdout
    assert not (built.root / "-").exists()
    refused = built.shelf("predict", "data/prepared/test.csv", "--model", "models", "-o", "-", "--json",
                          check=False)
    assert refused.returncode == 2 and refused.stdout == ""
    assert refused.stderr.startswith("shelf: error: ") and len(refused.stderr.splitlines()) == 1


def test_diff_formats_numbers_and_names_added_and_dropped_features(released: Project) -> None:
    from sklearn.datasets import load_breast_cancer

    p = released
    frame = load_breast_cancer(as_frame=True).frame.drop(columns=["mean radius"])
    frame.insert(0, "noise", range(len(frame)))  # a new column: the schema changes, a major bump
    p.add_csv("cancer.csv", frame)
    p.set_params(release={**p.params()["release"], "bump": "major"})
    p.dvc("repro")
    p.commit("new features")
    p.shelf("release", "--push")
    text = p.shelf("diff", "v1.0.0", "v2.0.0").stdout
    assert text.splitlines()[0] == "v1.0.0 → v2.0.0"
    assert "  features added: noise; dropped: mean radius" in text.splitlines()
    metrics = [ln for ln in text.splitlines() if re.match(r"    (accuracy|f1|roc_auc): ", ln)]
    assert metrics, text
    for line in metrics:  # 4 significant digits, then the signed and relative changes
        assert re.fullmatch(r"    \w+: [01](\.\d{1,4})? → [01](\.\d{1,4})? \([+-][\d.e-]+, [+-][\d.e-]+%\)", line), line
    assert "n_estimators" not in text and "features: " not in text  # as many features: only the names say it
    doc = json.loads(p.shelf("diff", "v1.0.0", "v2.0.0", "--json").stdout)
    assert doc["features"] == {"added": ["noise"], "dropped": ["mean radius"]}
    for metric, (old, new) in doc["metrics"].items():  # raw numbers stay; the changes are beside them
        assert doc["deltas"]["metrics"][metric]["change"] == new - old
