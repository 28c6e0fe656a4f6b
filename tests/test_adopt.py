"""Adoption (issue 14): ``shelf init`` in an existing repository merges modelshelf's stages and
params sections beside the project's own, keeps every byte of theirs, refuses clashes in one
line, and runs the project's own upstream stage (``featurize``) before ``prepare``."""

from __future__ import annotations

import difflib
from pathlib import Path

import pytest

from modelshelf.project import STAGES, init, stage_name, stage_options
from conftest import Project, add_remotes, run

FEATURIZE = '''\
"""Our own feature step: writes the table modelshelf trains on."""
import csv
import sys

import yaml

from ourlib import rows

conf = yaml.safe_load(open("params.yaml"))["featurize"]
with open(sys.argv[1], "w", newline="") as fh:
    out = csv.writer(fh)
    out.writerow(["a", "b", "label"])
    out.writerows(rows(conf["rows"], conf["seed"]))
'''

OURLIB = '''\
"""Our own code."""
import random


def rows(n, seed):
    rng = random.Random(seed)
    for _ in range(n):
        a, b = rng.gauss(0, 1), rng.gauss(0, 1)
        yield a, b, int(a + b > 0)
'''

# Their own layout: four-space indents, comments in and between blocks, a trailing comment.
DVC_YAML = '''\
# Our pipeline, written by hand.
stages:
    featurize:   # writes the features the model trains on
        cmd: python src/featurize.py data/raw/features.csv
        deps:
            - src/featurize.py
            - src/ourlib.py
        params:
            - featurize
        outs:
            - data/raw/features.csv

# (more stages of ours to come)
'''
FEATURIZE_STAGE = DVC_YAML.split("stages:\n", 1)[1].split("\n\n", 1)[0] + "\n"

PARAMS = '''\
# our parameters
featurize:
  rows: 400       # enough for the gate's thresholds
  seed: 7
'''


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` (.git and .dvc included) and its bytes."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def only_insertions(before: str, after: str) -> bool:
    """True when ``after`` is ``before`` with lines inserted: none removed, changed or moved."""
    ops = difflib.SequenceMatcher(None, before.splitlines(True), after.splitlines(True), autojunk=False)
    return all(tag in ("equal", "insert") for tag, *_ in ops.get_opcodes())


def one_line_error(proc: object, *parts: str) -> str:
    assert getattr(proc, "returncode") == 2, getattr(proc, "stdout")
    lines = getattr(proc, "stderr").strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("shelf: error: ")
    for part in parts:
        assert part in lines[0]
    return lines[0]


def theirs(root: Path, dvc_yaml: str = DVC_YAML, params: str = PARAMS, commit: bool = True) -> Project:
    """An existing repository with its own stage, params keys and code (git + DVC, committed)."""
    root.mkdir(parents=True)
    (root / "src").mkdir()
    (root / "src" / "featurize.py").write_text(FEATURIZE)
    (root / "src" / "ourlib.py").write_text(OURLIB)
    (root / "dvc.yaml").write_text(dvc_yaml)
    (root / "params.yaml").write_text(params)
    p = Project(root)
    p.git("init", "-q", "-b", "main")
    p.dvc("init", "-q")
    p.dvc("config", "core.analytics", "false")
    if commit:
        p.commit("our own project")
    return p


def set_ours(p: Project, old: str, new: str) -> None:
    """Edit modelshelf's section of params.yaml as a user would: as text (comments kept)."""
    path = p.root / "params.yaml"
    text = path.read_text()
    assert text.count(old) == 1
    path.write_text(text.replace(old, new))


@pytest.mark.slow
def test_adopting_merges_runs_their_stage_first_releases_and_keeps_their_bytes(tmp_path: Path) -> None:
    p = theirs(tmp_path / "proj")
    before = snapshot(p.root)

    out = p.shelf("init", ".").stdout
    for stage in STAGES:
        assert f"dvc.yaml: add stage {stage}\n" in out
    for section in ("data", "train", "gate", "serialise", "release", "drift"):
        assert f"params.yaml: add section {section}\n" in out
    assert "dvc.yaml: add stage featurize" not in out

    dvc_yaml, params = (p.root / "dvc.yaml").read_text(), (p.root / "params.yaml").read_text()
    assert dvc_yaml.startswith("# Our pipeline, written by hand.\nstages:\n" + FEATURIZE_STAGE)
    assert only_insertions(DVC_YAML, dvc_yaml) and "\n# (more stages of ours to come)\n" in dvc_yaml
    assert params.startswith(PARAMS) and only_insertions(PARAMS, params)
    assert p.dvc("stage", "list", "--name-only").stdout.split() == ["featurize", *STAGES]

    # Their featurize feeds prepare: data.source points at its output (set as text, as documented).
    set_ours(p, "source: builtin:breast_cancer", "source: data/raw/features.csv")
    set_ours(p, "  target: target", "  target: label")
    p.commit("adopt modelshelf")
    repro = p.dvc("repro").stdout
    assert repro.index("Running stage 'featurize'") < repro.index("Running stage 'prepare'")
    assert "gate: PASSED" in repro
    assert p.json("models/card.json")["dataset"]["source"] == "data/raw/features.csv"
    p.commit("first model")

    add_remotes(p)
    done = p.shelf("release", "--push")
    assert "released model@v1.0.0" in done.stdout

    after = snapshot(p.root)
    for rel in ("src/featurize.py", "src/ourlib.py"):
        assert after[rel] == before[rel]
    assert (p.root / "params.yaml").read_text().startswith(PARAMS)
    assert FEATURIZE_STAGE in (p.root / "dvc.yaml").read_text()


def test_dry_run_shows_each_diff_and_writes_nothing(tmp_path: Path) -> None:
    p = theirs(tmp_path / "proj")
    before = snapshot(p.root)
    out = p.shelf("init", "--dry-run", ".").stdout
    assert "--- a/dvc.yaml\n+++ b/dvc.yaml\n" in out and "+    prepare:\n" in out
    assert "--- a/params.yaml\n+++ b/params.yaml\n" in out and "+data:\n" in out
    assert "--- /dev/null\n+++ b/.gitignore\n" in out
    assert "dvc.yaml: would add stage serialise\n" in out
    assert out.endswith("dry run: nothing written\n")
    assert snapshot(p.root) == before

    fresh = tmp_path / "fresh"
    fresh.mkdir()
    out = run(["shelf", "init", "--dry-run", "."], fresh).stdout
    assert "would run `git init`" in out and "would run `dvc init`" in out
    assert list(fresh.iterdir()) == []


CLASH_STAGE = DVC_YAML.replace("    featurize:", "    train:   # ours, not modelshelf's\n"
                                "        cmd: python src/train.py\n    featurize:")


@pytest.mark.parametrize(
    ("dvc_yaml", "params", "parts"),
    [
        (CLASH_STAGE, PARAMS, ("dvc.yaml: stages.train", "your project has a stage of this name",
                               "--prefix ms_")),
        (DVC_YAML, PARAMS + "data:\n  path: our.csv\n",
         ("params.yaml: data", "not modelshelf's section (data.path: unknown key)", "rename your key")),
        (DVC_YAML, PARAMS + "paths:\n  out: build\n", ("params.yaml: paths", "rename your key")),
        (DVC_YAML, PARAMS + "trian:\n  estimator: x\n", ("params.yaml: trian", "did you mean 'train'?")),
        (DVC_YAML + "vars:\n  - paths:\n      out: build\n", PARAMS,
         ("dvc.yaml: vars.paths", "lacks modelshelf's raw")),
        (DVC_YAML + "artifacts:\n  net:\n    path: net.pt\n    type: model\n", PARAMS,
         ("dvc.yaml: artifacts.net", "exactly one")),
        ("stages: {featurize: {cmd: python src/featurize.py}}\n", PARAMS,
         ("dvc.yaml: stages", "flow style")),
    ],
    ids=["stage", "params-shape", "paths-key", "typo", "vars-paths", "artifact", "flow"],
)
def test_a_clash_is_one_line_exit_2_and_changes_nothing(
        tmp_path: Path, dvc_yaml: str, params: str, parts: tuple[str, ...]) -> None:
    p = theirs(tmp_path / "proj", dvc_yaml, params)
    before = snapshot(p.root)
    one_line_error(p.shelf("init", ".", check=False), *parts)
    assert snapshot(p.root) == before


def test_prefix_adds_modelshelfs_stages_beside_a_stage_of_the_same_name(tmp_path: Path) -> None:
    p = theirs(tmp_path / "proj", CLASH_STAGE)
    out = p.shelf("init", "--prefix", "ms_", ".").stdout
    assert "dvc.yaml: add stage ms_train\n" in out
    text = (p.root / "dvc.yaml").read_text()
    assert only_insertions(CLASH_STAGE, text)
    assert p.dvc("stage", "list", "--name-only").stdout.split() == ["train", "featurize", *(f"ms_{s}" for s in STAGES)]
    # modelshelf finds its stages by the command they run, so release and report still work.
    assert stage_name(p.root, "gate") == "ms_gate"
    assert stage_options(p.root, "gate")["out"] == "metrics/gate.json"
    assert stage_name(p.root, "train") == "train"  # a stage of that name is found first
    again = p.shelf("init", ".").stdout  # without the prefix: modelshelf's are found by command
    assert again.startswith("nothing to add")


def test_init_twice_and_force_are_idempotent_and_keep_their_stages(tmp_path: Path) -> None:
    p = theirs(tmp_path / "proj")
    p.shelf("init", ".")
    merged = snapshot(p.root)
    for args in (("init", "."), ("init", "--force", ".")):
        assert p.shelf(*args).stdout.startswith("nothing to add: modelshelf is already set up")
        assert snapshot(p.root) == merged

    # A section of modelshelf's removed by hand: --force re-adds it, the rest stays byte for byte.
    params = (p.root / "params.yaml").read_text()
    cut = params[:params.index("drift:")] + params[params.index("release:"):]
    (p.root / "params.yaml").write_text(cut)
    out = p.shelf("init", "--force", ".").stdout
    assert "params.yaml: add section drift\n" in out and "add stage" not in out
    assert only_insertions(cut, (p.root / "params.yaml").read_text())
    assert FEATURIZE_STAGE in (p.root / "dvc.yaml").read_text()


def test_force_on_a_modelshelf_project_keeps_a_stage_the_user_added(tmp_path: Path) -> None:
    init(tmp_path / "proj")
    path = tmp_path / "proj" / "dvc.yaml"
    own = path.read_text().replace("stages:\n", "stages:\n  featurize:\n    cmd: python f.py\n\n", 1)
    path.write_text(own)
    proc = run(["shelf", "init", "--force", "."], tmp_path / "proj")
    assert proc.stdout.startswith("nothing to add")
    assert path.read_text() == own


def test_a_new_directory_gets_the_templates_verbatim(tmp_path: Path) -> None:
    from importlib import resources

    result = init(tmp_path / "proj")
    templates = resources.files("modelshelf") / "templates"
    for name in ("dvc.yaml", "params.yaml"):
        assert (tmp_path / "proj" / name).read_text() == templates.joinpath(name + ".template").read_text()
    assert (tmp_path / "proj" / ".gitignore").read_text() == "/build/\n/.venv/\n__pycache__/\n"
    assert (tmp_path / "proj" / ".dvcignore").read_text().endswith("\n/.venv/\n__pycache__/\n")
    assert {"git init", "dvc init"} == set(result.setup)


def test_crlf_files_and_a_missing_final_newline_keep_their_bytes(tmp_path: Path) -> None:
    root = tmp_path / "proj"
    root.mkdir()
    dvc_yaml = DVC_YAML.replace("\n", "\r\n")
    params = PARAMS.rstrip("\n")
    (root / "dvc.yaml").write_bytes(dvc_yaml.encode())
    (root / "params.yaml").write_bytes(params.encode())
    (root / ".gitignore").write_bytes(b"*.log")
    result = init(root, dry_run=True)
    after = {c.path.name: c.after for c in result.changes}
    assert after["dvc.yaml"].startswith(dvc_yaml.split("\r\n\r\n")[0] + "\r\n")
    assert "\n" not in after["dvc.yaml"].replace("\r\n", "")
    assert after["params.yaml"].startswith(params + "\n\n# modelshelf parameters")
    assert after[".gitignore"] == "*.log\n/build/\n/.venv/\n__pycache__/\n"
    assert not (root / ".git").exists() and (root / "params.yaml").read_bytes() == params.encode()
