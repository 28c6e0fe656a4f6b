"""``shelf``: parse arguments, call one library function, print its result, map errors.

Exit codes: 0 success, 1 internal error, 2 bad configuration or data, 3 gate failed,
4 integrity (hash) failure, 5 library version mismatch, 6 git/DVC state.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from modelshelf import __version__
from modelshelf.errors import GateFailed, ShelfError

Handler = Callable[[argparse.Namespace], int]


def _p(value: str) -> Path:
    return Path(value)


def cmd_init(a: argparse.Namespace) -> int:
    from modelshelf.project import init

    for path in init(a.dir, force=a.force):
        print(f"wrote {path}")
    print("next: `dvc repro` runs prepare → train → evaluate → gate → serialise")
    return 0


def cmd_prepare(a: argparse.Namespace) -> int:
    from modelshelf.stages import prepare

    info = prepare(a.params, a.raw, a.out)
    print(f"prepare: {info['source']}: {info['rows']} rows ({info['train_rows']} train, "
          f"{info['test_rows']} test), task {info['task']}, sha256 {info['sha256'][:12]}")
    return 0


def cmd_train(a: argparse.Namespace) -> int:
    from modelshelf.stages import train

    info = train(a.params, a.prepared, a.out)
    print(f"train: {info['algorithm']} fitted, candidate sha256 {info['sha256'][:12]}")
    return 0


def cmd_evaluate(a: argparse.Namespace) -> int:
    from modelshelf.stages import evaluate

    metrics = evaluate(a.prepared, a.candidate, a.metrics, a.plots)
    print("evaluate: " + ", ".join(f"{k} {v:.4g}" for k, v in metrics.items()))
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
    from modelshelf.stages import gate

    _stage_defaults(a, "gate", ("params", "metrics", "out"))
    result = gate(a.params or Path("params.yaml"), a.metrics, None if a.no_write else a.out)
    print(json.dumps(result.to_json(), indent=2) if a.json else result.table())
    if not result.passed:
        raise GateFailed(str(a.out or a.metrics), "the candidate did not clear the gate",
                         "see the table above; nothing will be serialised")
    return 0


def cmd_serialise(a: argparse.Namespace) -> int:
    from modelshelf.stages import serialise

    done = serialise(a.params, a.prepared, a.candidate, a.metrics, a.gate, a.out)
    c = done.card
    print(f"serialise: {c['name']} v{c['version']} ({c['version_bump']}) → {done.model_path} "
          f"sha256 {c['artefacts']['model']['sha256'][:12]}, card {done.card_path}")
    return 0


def _model_dir(value: Path | None) -> Path:
    if value is not None:
        return value
    from modelshelf.project import find_root, model_artifact

    root = find_root()
    return (root / model_artifact(root)[1]).parent


def cmd_verify(a: argparse.Namespace) -> int:
    from modelshelf.model import verify

    v = verify(_model_dir(a.path), allow_version_mismatch=a.allow_version_mismatch)
    files = ", ".join(f for _, f in v.files)
    print(f"verified {v.name} v{v.version}: sha256 matches the card for {files}")
    for dep, (built, running) in v.dependencies.items():
        mark = "✓" if built == running else "!"
        print(f"  {mark} {dep}: built {built}, running {running}")
    return 0


def cmd_show(a: argparse.Namespace) -> int:
    from modelshelf.card import read_card

    card = read_card(_model_dir(a.path))
    if a.json:
        print(json.dumps(card, indent=2))
        return 0
    print(render_card(card))
    return 0


def render_card(card: dict[str, Any]) -> str:
    """A short human summary of a card."""
    ds, gate, model = card["dataset"], card["gate"], card["artefacts"]["model"]
    base = gate.get("baseline", {})
    lines = [
        f"{card['name']} v{card['version']}  ({card.get('version_bump', '')})",
        f"  trained    {card['trained_at']} from commit {(card['git'].get('commit') or 'none')[:12]}"
        + (" (dirty)" if card["git"].get("dirty") else ""),
        f"  algorithm  {card['algorithm']}",
        f"  dataset    {ds['source']}: {ds['rows']} rows, sha256 {ds['sha256'][:12]}",
        f"  model      {model['file']}: {model['bytes']} bytes, sha256 {model['sha256'][:12]}",
        f"  runtime    python {card['dependencies'].get('python')}, "
        f"scikit-learn {card['dependencies'].get('scikit-learn')}",
        f"  gate       {'passed' if gate.get('passed') else 'FAILED'}; baseline "
        + (f"{base.get('rev')} ({(base.get('commit') or '')[:12]})" if base.get("found")
           else f"none ({base.get('note', '')})"),
    ]
    for metric, check in gate.get("checks", {}).items():
        mark = "✓" if check.get("passed") else "✗"
        lines.append(f"    {mark} {metric}: {_num(check.get('value'))} (threshold {_num(check.get('threshold'))}, "
                     f"baseline {_num(check.get('baseline'))})")
    return "\n".join(lines)


def _num(v: Any) -> str:
    return "none" if v is None else f"{v:.4g}"


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--traceback", action="store_true", default=argparse.SUPPRESS,
                        help="show the Python traceback on errors")
    parser = argparse.ArgumentParser(prog="shelf", parents=[common],
                                     description="Gated, versioned scikit-learn models on Git + DVC.")
    parser.add_argument("--version", action="version", version=f"modelshelf {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, handler: Handler, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, parents=[common], help=help, description=help)
        p.set_defaults(handler=handler)
        return p

    p = add("init", cmd_init, "scaffold the workflow (git, DVC, dvc.yaml, params.yaml) in DIR")
    p.add_argument("dir", nargs="?", default=".", type=_p)
    p.add_argument("--force", action="store_true", help="overwrite dvc.yaml and params.yaml")

    p = add("prepare", cmd_prepare, "stage: validate and split the dataset")
    p.add_argument("--params", type=_p, required=True)
    p.add_argument("--raw", type=_p, required=True, help="raw-data directory (the stage's dependency)")
    p.add_argument("--out", type=_p, required=True)

    p = add("train", cmd_train, "stage: fit the candidate")
    p.add_argument("--params", type=_p, required=True)
    p.add_argument("--prepared", type=_p, required=True)
    p.add_argument("--out", type=_p, required=True)

    p = add("evaluate", cmd_evaluate, "stage: held-out metrics and plot data")
    p.add_argument("--prepared", type=_p, required=True)
    p.add_argument("--candidate", type=_p, required=True)
    p.add_argument("--metrics", type=_p, required=True)
    p.add_argument("--plots", type=_p, required=True)

    p = add("gate", cmd_gate, "judge the candidate's metrics against thresholds and the baseline")
    p.add_argument("--params", type=_p, help="default: as in dvc.yaml's gate stage")
    p.add_argument("--metrics", type=_p, help="default: as in dvc.yaml's gate stage")
    p.add_argument("--out", type=_p, help="default: as in dvc.yaml's gate stage")
    p.add_argument("--no-write", action="store_true", help="print the verdict only")
    p.add_argument("--json", action="store_true", help="print the report as JSON")

    p = add("serialise", cmd_serialise, "stage: write the gated model and its card")
    for opt in ("params", "prepared", "candidate", "metrics", "gate", "out"):
        p.add_argument(f"--{opt}", type=_p, required=True)

    p = add("verify", cmd_verify, "check a model's sha256 and library versions against its card")
    p.add_argument("path", nargs="?", type=_p, help="card or directory (default: the dvc.yaml model's)")
    p.add_argument("--allow-version-mismatch", action="store_true")

    p = add("show", cmd_show, "summarise a model card")
    p.add_argument("path", nargs="?", type=_p, help="card or directory (default: the dvc.yaml model's)")
    p.add_argument("--json", action="store_true")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    traceback = getattr(args, "traceback", False)
    try:
        return args.handler(args)
    except ShelfError as exc:
        if traceback:
            raise
        print(f"shelf: error: {exc.message}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("shelf: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - one line instead of a traceback
        if traceback:
            raise
        print(f"shelf: internal error: {type(exc).__name__}: {exc} (rerun with --traceback)",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
