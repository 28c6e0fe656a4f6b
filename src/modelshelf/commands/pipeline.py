"""``shelf`` subcommands of the pipeline: scaffold, the stages, verify, show, report."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from modelshelf import api
from modelshelf.commands import Add, console, number
from modelshelf.errors import GateFailed


def cmd_init(a: argparse.Namespace) -> int:
    result = api.init(a.dir, force=a.force, dry_run=a.dry_run, prefix=a.prefix)
    if a.json:
        console.emit_json(_init_json(result))
        return 0
    if result.nothing_to_add:
        console.result(f"nothing to add: modelshelf is already set up in {result.root}")
        return 0
    would = "would " if a.dry_run else ""
    show = console.result if a.dry_run else console.say  # a dry run's plan is its result
    if a.dry_run:
        for change in result.changes:
            sys.stdout.write(change.diff(result.root))
    for step in result.setup:
        show(f"{would}run `{step}`")
    for change in result.changes:
        rel = change.path.relative_to(result.root).as_posix()
        for item in change.added:
            show(f"{rel}: {would}add {item}")
        if not change.added:
            show(f"{rel}: {would}create")
    if a.dry_run:
        console.say("dry run: nothing written")
    else:
        console.say("next: `dvc repro` runs your stages and modelshelf's prepare → train → evaluate → gate → serialise")
    return 0


def _init_json(result: Any) -> dict[str, Any]:
    """``shelf init --json``: what was (or, on a dry run, would be) set up, paths relative to the root."""
    return {"root": str(result.root), "dry_run": result.dry_run, "nothing_to_add": result.nothing_to_add,
            "setup": list(result.setup),
            "changes": [{"path": c.path.relative_to(result.root).as_posix(), "created": c.before is None,
                         "added": list(c.added)} for c in result.changes]}


def cmd_prepare(a: argparse.Namespace) -> int:
    info = api.prepare(a.params, a.raw, a.out, a.profile)
    if a.json:
        console.emit_json(info)
        return 0
    console.say(f"prepare: {info['source']}: {info['rows']} rows ({info['train_rows']} train, "
                f"{info['test_rows']} test), task {info['task']}, sha256 {info['sha256'][:12]}")
    return 0


def cmd_train(a: argparse.Namespace) -> int:
    info = api.train(a.params, a.prepared, a.out)
    if a.json:
        console.emit_json(info)
        return 0
    console.say(f"train: {info['algorithm']} fitted, candidate sha256 {info['sha256'][:12]}")
    return 0


def cmd_evaluate(a: argparse.Namespace) -> int:
    metrics = api.evaluate(a.prepared, a.candidate, a.metrics, a.plots)
    if a.json:
        console.emit_json({"metrics": metrics})
        return 0
    console.say("evaluate: " + ", ".join(f"{k} {v:.4g}" for k, v in metrics.items()))
    return 0


def _stage_defaults(a: argparse.Namespace, stage: str, names: Sequence[str]) -> None:
    """Fill options left out from the stage's command in dvc.yaml."""
    if all(getattr(a, n) is not None for n in names):
        return
    from modelshelf.project import find_root, stage_options

    root = find_root()
    opts = stage_options(root, stage)
    for n in names:
        if getattr(a, n) is None:
            setattr(a, n, root / opts[n] if n in opts else None)


def cmd_gate(a: argparse.Namespace) -> int:
    from modelshelf.pipeline import experiments

    _stage_defaults(a, "gate", ("params", "metrics", "out"))
    params = a.params or Path("params.yaml")
    experiments.borrow_refs(params.resolve().parent)
    if a.prepared is None and a.params is not None and (a.params.resolve().parent / "dvc.yaml").is_file():
        from modelshelf.project import stage_options

        root = a.params.resolve().parent  # an older dvc.yaml has no --prepared: committed baseline
        a.prepared = root / p if (p := stage_options(root, "gate").get("prepared")) else None
    result = api.gate(params, a.metrics, None if a.no_write else a.out, a.prepared,
                  _gated_candidate(a))
    if a.verdict is not None and not a.no_write:
        experiments.write_verdict(a.verdict, result.passed, [c.metric for c in result.checks if not c.passed])
    if a.json:
        console.emit_json(result.to_json())
    else:
        console.result(marks(result.table()))
    if not result.passed:
        if (name := experiments.current()) is not None and not a.no_write:
            console.say(f"experiment {name}: the failed gate is recorded in {a.out} (`dvc exp show` lists it); "
                        "it will not be serialised or released", err=True)
            return 0
        raise GateFailed(str(a.out or a.metrics), "the candidate did not clear the gate",
                         "see the table above; nothing will be serialised")
    return 0


def _gated_candidate(a: argparse.Namespace) -> Path | None:
    """The candidate directory the gate judges: ``--candidate``, else the gate stage's
    ``--candidate`` in dvc.yaml, else the train stage's ``--out`` (the candidate it writes)."""
    given = getattr(a, "candidate", None)
    if given is not None:
        return Path(given)
    if a.params is None or not (a.params.resolve().parent / "dvc.yaml").is_file():
        return None
    from modelshelf.project import candidate_dir

    return candidate_dir(a.params.resolve().parent)


def marks(text: str) -> str:
    """``text`` with its ✓ and ✗ marks (and a gate's PASSED or FAILED) coloured, on a terminal."""
    if not console.color_enabled():
        return text
    for word, kind in (("✓", "ok"), ("✗", "fail"), ("PASSED", "ok"), ("FAILED", "fail")):
        text = text.replace(word, console.style(word, kind))
    return text


def _modified(git: dict[str, Any]) -> str:
    """`` (modified: params.yaml, src/x.py)`` for ``shelf show``; an older card says only dirty."""
    if "modified" in git:
        files = git["modified"]
        return f" (modified: {', '.join(files[:4])}{', …' if len(files) > 4 else ''})" if files else ""
    return " (dirty)" if git.get("dirty") else ""


def cmd_serialise(a: argparse.Namespace) -> int:
    from modelshelf.pipeline import experiments

    experiments.borrow_refs(a.params.resolve().parent)
    try:
        done = api.serialise(a.params, a.prepared, a.candidate, a.metrics, a.gate, a.out, a.profile)
    except GateFailed:
        if (name := experiments.current()) is None or not experiments.gate_failed(a.gate):
            raise
        console.say(f"experiment {name}: the gate failed: nothing serialised ({a.out} keeps the model the "
                    "experiment started from)", err=True)
        if a.json:
            console.emit_json({"serialised": False, "experiment": name, "reason": "the gate failed"})
        return 0
    if a.json:
        console.emit_json(done.to_json())
        return 0
    c = done.card
    console.say(f"serialise: {c['name']} v{c['version']} ({c['version_bump']}) → {done.model_path} "
                f"sha256 {c['artefacts']['model']['sha256'][:12]}, card {done.card_path}")
    return 0


def _model_dir(value: Path | None) -> Path:
    if value is not None:
        return value
    from modelshelf.project import find_root, model_artifact

    root = find_root()
    return (root / model_artifact(root)[1]).parent


def cmd_verify(a: argparse.Namespace) -> int:
    if a.all:
        return _verify_all(a)
    if a.remote is not None:
        from modelshelf.errors import ConfigError

        raise ConfigError("shelf verify", "--remote goes with --all", "e.g. `shelf verify --all --remote`")
    target = a.path
    if target is not None and not target.exists():  # a version, 'latest' or a stage, as `show` and `get` take
        target = api.locate(str(target)).directory  # a copy verified against the card at its tag
    v = api.verify(_model_dir(target), allow_version_mismatch=a.allow_version_mismatch)
    if a.json:
        console.emit_json(v.to_json())
        return 0
    files = ", ".join(f for _, f in v.files)
    console.result(f"verified {v.name} v{v.version}: sha256 matches the card for {files}")
    for dep, (built, running) in v.dependencies.items():
        mark = console.style("✓", "ok") if built == running else console.style("!", "warn")
        console.result(f"  {mark} {dep}: built {built}, running {running}")
    return 0


def _verify_all(a: argparse.Namespace) -> int:
    from modelshelf.errors import ConfigError, IntegrityError

    if a.path is not None:
        raise ConfigError("shelf verify", "give a PATH or --all, not both", "pick one")
    done = api.audit(".", remote=a.remote or None, use_remote=a.remote is not None)
    if a.json:
        console.emit_json(done.to_json())
    else:
        for p in done.problems:
            console.result(console.style(p.line(), "fail"))
        where = f"the local cache and DVC remote {done.remote or '(default)'}" if a.remote is not None \
            else "the local cache"
        console.result(f"{done.name}: {done.releases} releases, {done.objects} objects checked in {where}: "
                       + ("all good" if done.ok else f"{len(done.problems)} problems")
                       + (f" ({len(done.notes)} objects only in the remote, not in the cache)" if done.notes else ""))
    if not done.ok:
        raise IntegrityError("shelf verify --all", f"{len(done.problems)} problems in {done.releases} releases",
                             "see the lines above; restore the objects from a clone that has them (`dvc push`)")
    return 0


def cmd_show(a: argparse.Namespace) -> int:
    from modelshelf.card import read_card

    if a.path is not None and not a.path.exists():  # a version, 'latest' or a stage
        rel = api.versions().find(str(a.path))
        if rel.card is None:
            from modelshelf.errors import IntegrityError

            raise IntegrityError(rel.tag, "no readable card at this release", "inspect it with git show")
        card = rel.card
    else:
        card = read_card(_model_dir(a.path))
    if a.json:
        console.emit_json(card)
        return 0
    console.result(marks(render_card(card)))
    return 0


def render_card(card: dict[str, Any]) -> str:
    """A short human summary of a card."""
    ds, gate, model = card["dataset"], card["gate"], card["artefacts"]["model"]
    base = gate.get("baseline", {})
    lines = [
        f"{card['name']} v{card['version']}  ({card.get('version_bump', '')})",
        f"  trained    {card['trained_at']} from commit {(card['git'].get('commit') or 'none')[:12]}"
        + _modified(card["git"]),
        f"  algorithm  {card['algorithm']}",
        f"  dataset    {ds['source']}: {ds['rows']} rows, sha256 {ds['sha256'][:12]}",
        f"  model      {model['file']}: {model['bytes']} bytes, sha256 {model['sha256'][:12]}",
        f"  runtime    python {card['dependencies'].get('python')}, "
        f"scikit-learn {card['dependencies'].get('scikit-learn')}",
        f"  gate       {'passed' if gate.get('passed') else 'FAILED'}; baseline "
        + (f"{base.get('rev')} ({(base.get('commit') or '')[:12]})" if base.get("found")
           else f"none ({base.get('note', '')})")
        + (f", {base['label']}" if base.get("found") and base.get("label") else ""),
    ]
    for metric, check in gate.get("checks", {}).items():
        mark = "✓" if check.get("passed") else "✗"
        ci = check.get("ci")
        change = (f", change {check['delta']:+.2g} [{ci[0]:+.2g}, {ci[1]:+.2g}]"
                  if isinstance(ci, list) and len(ci) == 2 and None not in ci and check.get("delta") is not None else "")
        lines.append(f"    {mark} {metric}: {number(check.get('value'))} (threshold {number(check.get('threshold'))}, "
                     f"baseline {number(check.get('baseline'))}{change})")
    return "\n".join(lines)


def cmd_report(a: argparse.Namespace) -> int:
    rep = api.report(Path("."), a.base, a.plots)  # --plots DIR: linked as DIR/KIND.png (working-dir relative)
    if a.json:
        console.emit_json(rep.to_json())
    else:
        sys.stdout.write(rep.markdown() if a.md else marks(rep.text()))
    if not rep.passed:
        raise GateFailed(f"report against {a.base}", "the candidate does not clear the gate",
                         "see the report; the merge would not release it")
    return 0


def register(add: Add) -> None:
    """Add these subcommands and their arguments."""
    p = add("init", cmd_init, "set up the workflow in DIR, new or existing (merges into dvc.yaml, params.yaml)")
    p.add_argument("dir", nargs="?", default=".", type=Path)
    p.add_argument("--force", action="store_true",
                   help="re-merge into an existing project (never erases its own stages or keys)")
    p.add_argument("--dry-run", action="store_true", help="show the diff of each file; write nothing")
    p.add_argument("--prefix", default="", metavar="PREFIX",
                   help="prefix modelshelf's stage names (ms_ → ms_prepare, …) beside stages of yours")
    p.add_argument("--json", action="store_true", help="print what was (or would be) set up as JSON")

    p = add("prepare", cmd_prepare, "stage: validate and split the dataset")
    p.add_argument("--params", type=Path, required=True)
    p.add_argument("--raw", type=Path, required=True, help="raw-data directory (the stage's dependency)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--profile", type=Path, help="where to write the training data's reference profile")
    p.add_argument("--json", action="store_true", help="print the dataset's summary as JSON")

    p = add("train", cmd_train, "stage: fit the candidate")
    p.add_argument("--params", type=Path, required=True)
    p.add_argument("--prepared", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--json", action="store_true", help="print the candidate's summary as JSON")

    p = add("evaluate", cmd_evaluate, "stage: held-out metrics and plot data")
    p.add_argument("--prepared", type=Path, required=True)
    p.add_argument("--candidate", type=Path, required=True)
    p.add_argument("--metrics", type=Path, required=True)
    p.add_argument("--plots", type=Path, required=True)
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")

    p = add("gate", cmd_gate, "judge the candidate's metrics against thresholds and the baseline")
    p.add_argument("--params", type=Path, help="default: as in dvc.yaml's gate stage")
    p.add_argument("--prepared", type=Path, help="the prepared split the candidate was scored on, to "
                   "re-score the baseline model on (default: as in dvc.yaml's gate stage)")
    p.add_argument("--metrics", type=Path, help="default: as in dvc.yaml's gate stage")
    p.add_argument("--out", type=Path, help="default: as in dvc.yaml's gate stage")
    p.add_argument("--verdict", type=Path, help="also write the verdict as DVC metrics (gate: passed|failed, "
                   "failed: the metrics that failed), a column in `dvc exp show`")
    p.add_argument("--no-write", action="store_true", help="print the verdict only")
    p.add_argument("--json", action="store_true", help="print the report as JSON")

    p = add("serialise", cmd_serialise, "stage: write the gated model and its card")
    for opt in ("params", "prepared", "candidate", "metrics", "gate", "out"):
        p.add_argument(f"--{opt}", type=Path, required=True)
    p.add_argument("--profile", type=Path, help="the reference profile the card should point to")
    p.add_argument("--json", action="store_true", help="print what was written as JSON")

    p = add("verify", cmd_verify, "check a model's sha256 and library versions against its card, "
            "or (--all) audit every release")
    p.add_argument("path", nargs="?", type=Path,
                   help="card, directory, vX.Y.Z, latest or a stage (default: the dvc.yaml model's)")
    p.add_argument("--allow-version-mismatch", action="store_true")
    p.add_argument("--all", action="store_true", help="audit every release: tag, card, version, tag message, "
                   "and every object in the local cache")
    p.add_argument("--remote", nargs="?", const="", metavar="NAME",
                   help="with --all: also check every object in the DVC remote NAME (default: the default remote)")
    p.add_argument("--json", action="store_true", help="print the verification (with --all: the audit) as JSON")

    p = add("show", cmd_show, "summarise a model card: the workspace's, a directory's, or a release's")
    p.add_argument("path", nargs="?", type=Path,
                   help="card, directory, vX.Y.Z, latest or a stage (default: the workspace model)")
    p.add_argument("--json", action="store_true", help="print the card as JSON")

    p = add("report", cmd_report, "the pull-request report: the workspace candidate against a base revision")
    p.add_argument("--base", default="main", help="baseline revision (default: main)")
    p.add_argument("--plots", type=Path, metavar="DIR",
                   help="also write the candidate's plots as PNG into DIR, linked from the report as "
                   "DIR/KIND.png: relative to the working directory, so write the markdown there")
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--md", action="store_true", help="markdown with the sticky-comment marker")
    fmt.add_argument("--json", action="store_true")
