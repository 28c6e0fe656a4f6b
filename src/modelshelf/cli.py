"""``shelf``: parse arguments, call one library function, print its result, map errors.

Exit codes: 0 success, 1 internal error, 2 bad configuration or data, 3 gate failed,
4 integrity (hash) failure, 5 library version mismatch, 6 git/DVC state,
7 release refused, 8 DVC remote error, 9 drift detected, 10 schema break.
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


def _positive(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {value!r}") from None
    if not number > 0 or number == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {value}")
    return number


def cmd_init(a: argparse.Namespace) -> int:
    from modelshelf.project import init

    for path in init(a.dir, force=a.force):
        print(f"wrote {path}")
    print("next: `dvc repro` runs prepare → train → evaluate → gate → serialise")
    return 0


def cmd_prepare(a: argparse.Namespace) -> int:
    from modelshelf.stages import prepare

    info = prepare(a.params, a.raw, a.out, a.profile)
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
    if a.prepared is None and a.params is not None and (a.params.resolve().parent / "dvc.yaml").is_file():
        from modelshelf.project import stage_options

        root = a.params.resolve().parent  # an older dvc.yaml has no --prepared: committed baseline
        a.prepared = root / p if (p := stage_options(root, "gate").get("prepared")) else None
    result = gate(a.params or Path("params.yaml"), a.metrics, None if a.no_write else a.out, a.prepared)
    print(json.dumps(result.to_json(), indent=2) if a.json else result.table())
    if not result.passed:
        raise GateFailed(str(a.out or a.metrics), "the candidate did not clear the gate",
                         "see the table above; nothing will be serialised")
    return 0


def cmd_serialise(a: argparse.Namespace) -> int:
    from modelshelf.stages import serialise

    done = serialise(a.params, a.prepared, a.candidate, a.metrics, a.gate, a.out, a.profile)
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

    if a.path is not None and not a.path.exists():  # a version, 'latest' or a stage
        from modelshelf.registry import Workspace, open_registry

        rel = open_registry(Workspace.open()).find(str(a.path))
        if rel.card is None:
            from modelshelf.errors import IntegrityError

            raise IntegrityError(rel.tag, "no readable card at this release", "inspect it with git show")
        card = rel.card
    else:
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
           else f"none ({base.get('note', '')})")
        + (f", {base['label']}" if base.get("found") and base.get("label") else ""),
    ]
    for metric, check in gate.get("checks", {}).items():
        mark = "✓" if check.get("passed") else "✗"
        lines.append(f"    {mark} {metric}: {_num(check.get('value'))} (threshold {_num(check.get('threshold'))}, "
                     f"baseline {_num(check.get('baseline'))})")
    return "\n".join(lines)


def _num(v: Any) -> str:
    return "none" if v is None else f"{v:.4g}"


def cmd_report(a: argparse.Namespace) -> int:
    from modelshelf.report import build

    rep = build(Path("."), a.base)
    if a.json:
        print(json.dumps(rep.to_json(), indent=2))
    else:
        print(rep.markdown() if a.md else rep.text(), end="")
    if not rep.passed:
        raise GateFailed(f"report against {a.base}", "the candidate does not clear the gate",
                         "see the report; the merge would not release it")
    return 0


def cmd_serve(a: argparse.Namespace) -> int:
    import os

    from modelshelf.serve.server import build, run

    token = os.environ.get(a.admin_token_env) or None
    app = build(a.model, admin_token=token, poll=a.poll, max_rows=a.max_rows, max_body=a.max_body,
                allow_version_mismatch=a.allow_version_mismatch)
    cur = app.holder.current
    assert cur is not None
    print(f"serving {cur.name} v{cur.version} ({cur.format}) on http://{a.host}:{a.port}"
          f" following '{a.model}'" + (f", polling every {a.poll:g}s" if a.poll > 0 else "")
          + ("" if token else f"; admin reload disabled (set {a.admin_token_env})"), flush=True)
    run(app, a.host, a.port, keep_alive=a.keep_alive)
    return 0


def cmd_predict(a: argparse.Namespace) -> int:
    from modelshelf.serve.batch import predict_csv

    done = predict_csv(a.model, a.input, a.out, allow_version_mismatch=a.allow_version_mismatch)
    print(f"scored {done.rows} rows with v{done.version} → {done.output}")
    return 0


def cmd_drift(a: argparse.Namespace) -> int:
    from modelshelf.drift import check
    from modelshelf.errors import DriftDetected, SchemaBreak

    if a.data is None:  # the newest data: what params.yaml trains on
        from modelshelf.params import load_params
        from modelshelf.project import find_root

        root = find_root()
        source = load_params(root / "params.yaml").data.source
        if source.startswith("builtin:"):
            from modelshelf.errors import ConfigError

            raise ConfigError("params.yaml: data.source", f"{source} is built in: there is no new data",
                              "pass a CSV: `shelf drift NEW.csv`")
        a.data = root / source
    rep = check(".", a.data, a.model, predictions=not a.no_predictions)
    if a.plot is not None:
        from modelshelf import plots

        written = plots.drift(rep.result, a.plot, rep.reference.version)
        print(f"wrote {len(written)} charts to {a.plot}", file=sys.stderr)
    if a.json:
        print(json.dumps(rep.to_json(), indent=2))
    else:
        print(rep.markdown(), end="")
    verdict = rep.result.verdict
    if verdict == "schema break":
        raise SchemaBreak(str(a.data), "; ".join(rep.result.schema_problems),
                          "fix the data or retrain on the new schema")
    if verdict == "drift":
        raise DriftDetected(str(a.data), f"drift in {', '.join(rep.result.drifted()) or 'predictions'}",
                            "retrain on the new data: `dvc repro`, then review with `shelf report`")
    return 0


def cmd_release(a: argparse.Namespace) -> int:
    from modelshelf.registry import release

    done = release(push=a.push, git_remote=a.git_remote, dvc_remote=a.remote, renumber=a.renumber,
                   skip_released=a.skip_released)
    if done.already:
        print(f"already released as {done.tag} (same model sha256): nothing to do")
        return 0
    if done.renumbered_from is not None:
        print(f"renumbered v{done.renumbered_from} → v{done.version} (committed)")
    print(f"released {done.tag} at {done.commit[:12]}: artefacts verified in the DVC remote"
          + ("; tag pushed" if done.pushed else "; push the tag with `git push origin " + done.tag + "`"))
    return 0


def cmd_versions(a: argparse.Namespace) -> int:
    from modelshelf.registry import Workspace, open_registry

    reg = open_registry(Workspace.open())
    rows = [r.summary() for r in reversed(reg.releases)]
    if a.plot is not None:
        from modelshelf import plots

        print(f"wrote {plots.versions(reg.releases, a.plot)}", file=sys.stderr)
    if a.json:
        print(json.dumps({"name": reg.name, "versions": rows}, indent=2))
        return 0
    if not rows:
        print(f"no releases of {reg.name} yet (`shelf release` makes the first)")
        return 0
    keys = [k for k in ("accuracy", "f1", "f1_macro", "roc_auc", "r2", "rmse") if any(k in r["metrics"] for r in rows)][:3]
    table = [["version", "date", "commit", "author", *keys, "stages", "deprecated"]]
    for r in rows:
        table.append([r["version"], r["date"][:19], r["commit"][:8], r["author"],
                      *(_num(r["metrics"].get(k)) for k in keys), ",".join(r["stages"]) or "-",
                      "yes" if r["deprecated"] else ""])
    widths = [max(len(str(row[i])) for row in table) for i in range(len(table[0]))]
    for row in table:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return 0


def cmd_diff(a: argparse.Namespace) -> int:
    from modelshelf.registry import Workspace, open_registry

    reg = open_registry(Workspace.open())
    old, new = reg.find(a.old), reg.find(a.new)
    from modelshelf.card import diff_cards

    diff = diff_cards(old.card or {}, new.card or {})
    if a.json:
        print(json.dumps({"old": f"v{old.version}", "new": f"v{new.version}", **diff}, indent=2))
        return 0
    print(f"v{old.version} → v{new.version}")
    for section, rows in diff.items():
        if rows:
            print(f"  {section}:")
            for key, (x, y) in rows.items():
                print(f"    {key}: {x} → {y}")
    return 0


def cmd_promote(a: argparse.Namespace) -> int:
    from modelshelf.registry import promote

    done = promote(".", a.version, a.to, push=a.push, git_remote=a.git_remote)
    print(f"assigned {a.to} to v{done.version} ({done.tag})")
    return 0


def cmd_deprecate(a: argparse.Namespace) -> int:
    from modelshelf.registry import deprecate

    print(f"deprecated: {deprecate('.', a.version, push=a.push, git_remote=a.git_remote)}")
    return 0


def cmd_rollback(a: argparse.Namespace) -> int:
    from modelshelf.registry import rollback, rollback_stage

    if a.stage:
        if a.version:
            from modelshelf.errors import ConfigError

            raise ConfigError("shelf rollback", "give a VERSION or --stage, not both", "pick one")
        done = rollback_stage(".", a.stage, push=a.push, git_remote=a.git_remote)
        print(f"{a.stage} rolled back to v{done.version} ({done.tag})")
        return 0
    if not a.version:
        from modelshelf.errors import ConfigError

        raise ConfigError("shelf rollback", "no VERSION or --stage given", "e.g. `shelf rollback v1.2.0`")
    r = rollback(".", a.version, force=a.force)
    print(f"workspace at v{r.version}: pipeline files from git, outputs from the {r.source}; "
          f"{r.directory} verified against its card. Commit to keep it (`git commit -am 'roll back to "
          f"v{r.version}'`)")
    return 0


def cmd_get(a: argparse.Namespace) -> int:
    from modelshelf.registry import get

    r = get(".", a.version, a.out)
    print(f"fetched v{r.version} into {r.directory} from the {r.source}; sha256 verified against its card")
    return 0


def cmd_gc(a: argparse.Namespace) -> int:
    from modelshelf.registry import gc

    out = gc(".", cloud=a.cloud, dvc_remote=a.remote, dry=a.dry)
    print(out or "nothing to collect; every release's artefacts kept")
    return 0


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
    p.add_argument("--profile", type=_p, help="where to write the training data's reference profile")

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
    p.add_argument("--prepared", type=_p, help="the prepared split the candidate was scored on, to "
                   "re-score the baseline model on (default: as in dvc.yaml's gate stage)")
    p.add_argument("--metrics", type=_p, help="default: as in dvc.yaml's gate stage")
    p.add_argument("--out", type=_p, help="default: as in dvc.yaml's gate stage")
    p.add_argument("--no-write", action="store_true", help="print the verdict only")
    p.add_argument("--json", action="store_true", help="print the report as JSON")

    p = add("serialise", cmd_serialise, "stage: write the gated model and its card")
    for opt in ("params", "prepared", "candidate", "metrics", "gate", "out"):
        p.add_argument(f"--{opt}", type=_p, required=True)
    p.add_argument("--profile", type=_p, help="the reference profile the card should point to")

    p = add("verify", cmd_verify, "check a model's sha256 and library versions against its card")
    p.add_argument("path", nargs="?", type=_p, help="card or directory (default: the dvc.yaml model's)")
    p.add_argument("--allow-version-mismatch", action="store_true")

    p = add("show", cmd_show, "summarise a model card: the workspace's, a directory's, or a release's")
    p.add_argument("path", nargs="?", type=_p,
                   help="card, directory, vX.Y.Z, latest or a stage (default: the workspace model)")
    p.add_argument("--json", action="store_true")

    p = add("report", cmd_report, "the pull-request report: the workspace candidate against a base revision")
    p.add_argument("--base", default="main", help="baseline revision (default: main)")
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--md", action="store_true", help="markdown with the sticky-comment marker")
    fmt.add_argument("--json", action="store_true")

    p = add("serve", cmd_serve, "serve a verified model over HTTP, hot-swapping as the registry moves")
    p.add_argument("--model", default="latest", help="vX.Y.Z, latest, a stage (prod) or a directory")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--poll", type=float, default=10.0, help="seconds between registry checks (0: never)")
    p.add_argument("--admin-token-env", default="SHELF_ADMIN_TOKEN",
                   help="environment variable holding the bearer token for POST /admin/reload")
    p.add_argument("--max-rows", type=int, default=10_000)
    p.add_argument("--max-body", type=int, default=8 << 20, help="bytes")
    p.add_argument("--keep-alive", type=_positive, default=5.0,
                   help="seconds an idle keep-alive connection stays open (default 5)")
    p.add_argument("--allow-version-mismatch", action="store_true")

    p = add("predict", cmd_predict, "score a CSV with a verified model (the same rules as serve)")
    p.add_argument("input", type=_p)
    p.add_argument("--model", default="latest", help="vX.Y.Z, latest, a stage or a directory")
    p.add_argument("-o", "--out", type=_p, required=True)
    p.add_argument("--allow-version-mismatch", action="store_true")

    p = add("drift", cmd_drift, "compare new data with the training profile (exit 0 none, 9 drift, 10 schema break)")
    p.add_argument("data", type=_p, nargs="?", help="a CSV of new data (default: data.source in params.yaml)")
    p.add_argument("--model", help="vX.Y.Z, latest or a stage (default: the workspace model)")
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--md", action="store_true", help="markdown (the default output)")
    fmt.add_argument("--json", action="store_true")
    p.add_argument("--no-predictions", action="store_true", help="skip prediction drift")
    p.add_argument("--plot", type=_p, metavar="DIR", help="also write one PNG per feature and overview.png")

    def pushable(p: argparse.ArgumentParser) -> None:
        p.add_argument("--push", action="store_true", help="push the tag to the git remote (atomically)")
        p.add_argument("--git-remote", default="origin", help="git remote for --push (default: origin)")

    p = add("release", cmd_release, "tag the workspace model model@vX.Y.Z once its artefacts are in the DVC remote")
    pushable(p)
    p.add_argument("-r", "--remote", help="DVC remote (default: the project's default remote)")
    p.add_argument("--renumber", action="store_true",
                   help="take the next free version when the card's is taken, commit, then release")
    p.add_argument("--skip-released", action="store_true",
                   help="exit 0 when this model (same sha256) is already released (for CI on main)")

    p = add("versions", cmd_versions, "list releases with metrics and stages (read from git tags)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--plot", type=_p, metavar="PNG", help="also chart every release's metrics over time")

    p = add("diff", cmd_diff, "metrics, hyperparameters and card differences between two releases")
    p.add_argument("old")
    p.add_argument("new")
    p.add_argument("--json", action="store_true")

    p = add("promote", cmd_promote, "assign a stage to a release (GTO tag name#stage#N)")
    p.add_argument("version", help="vX.Y.Z, latest or a stage")
    p.add_argument("--to", required=True, help="the stage, e.g. prod")
    pushable(p)

    p = add("deprecate", cmd_deprecate, "deprecate a release (GTO tag name@vX.Y.Z!#N)")
    p.add_argument("version")
    pushable(p)

    p = add("rollback", cmd_rollback, "put the workspace back to a release, or move a stage back")
    p.add_argument("version", nargs="?", help="the release whose pipeline state (dvc.lock, params, metrics, "
                                              "card, model, data) the workspace takes")
    p.add_argument("--stage", help="re-assign this stage to the version it held before")
    p.add_argument("--force", action="store_true", help="overwrite uncommitted changes to pipeline files and data")
    pushable(p)

    p = add("get", cmd_get, "fetch a release's model and card into a directory, verified")
    p.add_argument("version", help="vX.Y.Z, latest or a stage")
    p.add_argument("-o", "--out", type=_p, required=True)

    p = add("gc", cmd_gc, "collect DVC garbage, keeping the workspace and every release")
    p.add_argument("-c", "--cloud", action="store_true", help="also collect in the DVC remote")
    p.add_argument("-r", "--remote", help="DVC remote for --cloud")
    p.add_argument("--dry", action="store_true")
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
