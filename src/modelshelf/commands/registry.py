"""``shelf`` subcommands of the git-tag registry: release, versions, diff, promote, deprecate,
rollback, get, gc, site."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from modelshelf.commands import Add, console, number, path, pushable


def cmd_release(a: argparse.Namespace) -> int:
    from modelshelf import api
    from modelshelf.registry.signing import KeySpec

    key = KeySpec.from_options(sign=a.sign, key=a.sign_key, cert=a.sign_cert, chain=a.sign_chain)
    done = api.release(push=a.push, git_remote=a.git_remote, dvc_remote=a.remote, renumber=a.renumber,
                   skip_released=a.skip_released, sign=key, sign_tag=a.sign_tag)
    for note in done.notes:
        console.say(note, err=a.json)
    if a.json:
        console.emit_json({**done.to_json(), "signed": key is not None and not done.already})
        return 0
    if done.already:
        console.say(f"already released as {done.tag} (same model sha256): nothing to do")
        return 0
    if done.resumed:
        console.say(f"completed the interrupted release {done.tag} at {done.commit[:12]}: artefacts verified "
                    "in the DVC remote; tag pushed")
        return 0
    if done.renumbered_from is not None:
        console.say(f"renumbered v{done.renumbered_from} → v{done.version} (committed)")
    console.say(f"released {done.tag} at {done.commit[:12]}: artefacts verified in the DVC remote"
          + ("; signed" if key is not None else "")
          + ("; tag pushed" if done.pushed else f"; push the tag with `git push {a.git_remote} {done.tag}`"))
    return 0


def cmd_versions(a: argparse.Namespace) -> int:
    from modelshelf import api

    reg = api.versions()
    rows = [r.summary() for r in reversed(reg.releases)]
    if a.plot is not None:
        from modelshelf.pipeline import plots

        console.say(f"wrote {plots.versions(reg.releases, a.plot, assignments=reg.assignments)}", err=True)
    if a.json:
        console.emit_json({"name": reg.name, "deprecated": reg.deprecated, "deprecation_tag": reg.deprecation_tag,
                           "stages": dict(reg.holders), "warnings": list(reg.problems), "versions": rows})
        return 0
    if not rows:
        console.result(f"no releases of {reg.name} yet (`shelf release` makes the first)")
        return 0
    keys = [k for k in ("accuracy", "f1", "f1_macro", "roc_auc", "r2", "rmse") if any(k in r["metrics"] for r in rows)][:3]
    warned = any(r["warning"] for r in rows)
    table = [["version", "date", "commit", "author", *keys, "stages", "deprecated", *(["warning"] if warned else [])]]
    for r in rows:
        table.append([r["version"], r["date"][:19], r["commit"][:8], r["author"],
                      *(number(r["metrics"].get(k)) for k in keys), ",".join(r["stages"]) or "-",
                      "yes" if r["deprecated"] else "", *(["!" if r["warning"] else ""] if warned else [])])
    widths = [max(len(str(row[i])) for row in table) for i in range(len(table[0]))]
    for row in table:
        console.result("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    if reg.deprecated:
        console.result(f"{reg.name} is deprecated ({reg.deprecation_tag}): no 'latest' and no stages until a new "
                       "release or promotion re-creates it")
    for r in rows:
        if r["warning"]:
            console.result(console.style(f"warning: {r['tag']}: {r['warning']} (refused for use)", "warn"))
    for problem in reg.problems:
        console.result(console.style(f"warning: {problem}", "warn"))
    return 0


def cmd_diff(a: argparse.Namespace) -> int:
    from modelshelf import api

    reg = api.versions()
    old, new = reg.find(a.old, check=False), reg.find(a.new, check=False)
    from modelshelf.card import diff_cards, feature_changes, numeric_changes

    for rel in (old, new):
        if rel.problem:
            console.warn(f"{rel.tag}: {rel.problem}")
    diff = diff_cards(old.card or {}, new.card or {})
    features = feature_changes(old.card or {}, new.card or {})
    deltas = numeric_changes(diff)
    if a.json:
        console.emit_json({"old": f"v{old.version}", "new": f"v{new.version}", **diff,
                           "features": features, "deltas": deltas})
        return 0
    console.result(console.style(f"v{old.version} → v{new.version}", "bold"))
    for section, rows in diff.items():
        if rows:
            console.result(f"  {section}:")
            for key, (x, y) in rows.items():
                change = deltas[section].get(key)
                console.result(f"    {key}: {_shown(x)} → {_shown(y)}" + (_change(change) if change else ""))
    moved = [f"{what}: {', '.join(names)}" for what, names in features.items() if names]
    if moved:
        console.result("  features " + "; ".join(moved))
    return 0


def _shown(value: object) -> str:
    """A value of ``shelf diff``: a float to 4 significant digits, an int whole, None as none."""
    if isinstance(value, float):
        return number(value)
    return "none" if value is None else str(value)


def _change(delta: dict[str, float | None]) -> str:
    """`` (+0.0088, +0.92%)``: the signed change and, where the old value is not zero, the relative one."""
    change, relative = delta["change"], delta["relative"]
    assert change is not None
    text = f"{change:+.4g}" if isinstance(change, float) else f"{change:+d}"
    return f" ({text}" + ("" if relative is None else f", {relative * 100:+.3g}%") + ")"



def cmd_promote(a: argparse.Namespace) -> int:
    from modelshelf import api

    done = api.promote(".", a.version, a.to, push=a.push, git_remote=a.git_remote)
    for note in done.notes:
        console.say(note, err=a.json)
    if a.json:
        console.emit_json({**done.to_json(), "pushed": a.push})
    elif done.already:
        console.say(f"{a.to} already holds v{done.version} ({done.tag}): nothing to do")
    elif done.resumed:
        console.say(f"assigned {a.to} to v{done.version} ({done.tag}): pushed the tag an interrupted promote left")
    else:
        console.say(f"assigned {a.to} to v{done.version} ({done.tag})" + ("; tag pushed" if a.push else ""))
    return 0


def cmd_deprecate(a: argparse.Namespace) -> int:
    from modelshelf import api

    tag = api.deprecate(".", a.version, push=a.push, git_remote=a.git_remote)
    if a.json:
        from modelshelf.tags import parse_tag

        parsed = parse_tag(tag)
        version = parsed.version if parsed is not None else None
        console.emit_json({"tag": tag, "version": None if version is None else f"v{version}", "pushed": a.push})
    else:
        console.say(f"deprecated: {tag}")
    return 0


def cmd_rollback(a: argparse.Namespace) -> int:
    from modelshelf import api

    if a.stage:
        if a.version:
            from modelshelf.errors import ConfigError

            raise ConfigError("shelf rollback", "give a VERSION or --stage, not both", "pick one")
        done = api.rollback_stage(".", a.stage, push=a.push, git_remote=a.git_remote)
        if a.json:
            console.emit_json({**done.to_json(), "pushed": a.push})
            return 0
        console.say(f"{a.stage} rolled back to v{done.version} ({done.tag})")
        return 0
    if not a.version:
        from modelshelf.errors import ConfigError

        raise ConfigError("shelf rollback", "no VERSION or --stage given", "e.g. `shelf rollback v1.2.0`")
    r = api.rollback(".", a.version, force=a.force)
    if a.json:
        console.emit_json(r.to_json())
        return 0
    console.say(f"workspace at v{r.version}: pipeline files from git, outputs from the {r.source} (every object "
                f"verified before any file was written); {r.directory} verified against the card at the tag. "
                f"Commit to keep it (`git commit -am 'roll back to v{r.version}'`)")
    return 0


def cmd_get(a: argparse.Namespace) -> int:
    from modelshelf import api

    r = api.get(".", a.version, a.out)
    if not a.json:
        console.say(f"fetched v{r.version} into {r.directory} from the {r.source}; sha256 verified against the card "
                    "at its tag")
    signature = None
    if a.signature:
        from modelshelf.registry import signing
        from modelshelf.registry.core import Workspace

        bundle = signing.bundle_at(Workspace.open().repo, api.versions().find(a.version).tag)
        if bundle is None:
            console.say(f"v{r.version} is not signed: no {signing.SIGNATURE_FILE} written", err=a.json)
        else:
            signature = signing.write_sidecar(r.directory, bundle)
            if not a.json:
                console.say(f"wrote {signature} (model-signing's bundle)")
    if a.json:
        console.emit_json({**r.to_json(), "signature": None if signature is None else str(signature)})
    return 0


def cmd_gc(a: argparse.Namespace) -> int:
    from modelshelf import api

    done = api.gc(".", cloud=a.cloud, dvc_remote=a.remote, dry=a.dry)
    if a.json:
        for name in done.unfetched:
            console.warn(f"could not fetch {name}: its branches are kept as last fetched")
        console.emit_json(done.to_json())
        return 0
    for line in done.lines():
        console.result(console.style(line, "warn") if line.startswith("warning: ") else line)
    if done.dry:
        console.say("dry run: nothing was deleted")
    return 0


def cmd_site(a: argparse.Namespace) -> int:
    from modelshelf import api

    built = api.site(out=a.out, drift=not a.no_drift)
    if a.json:
        print(json.dumps({"index": str(built.index), "releases": built.releases, "charts": built.charts,
                          "drift_reports": built.drift}, indent=2))
    else:
        print(f"wrote {built.index} ({built.releases} releases, {built.charts} charts): open it in a browser, "
              "no server needed")
    return 0


def register(add: Add) -> None:
    """Add these subcommands and their arguments."""
    p = add("release", cmd_release, "tag the workspace model model@vX.Y.Z once its artefacts are in the DVC remote")
    pushable(p)
    p.add_argument("-r", "--remote", help="DVC remote (default: the project's default remote)")
    p.add_argument("--renumber", action="store_true",
                   help="take the next free version when the card's is taken, commit, then release")
    p.add_argument("--skip-released", action="store_true",
                   help="kept for CI scripts: a model already released (same sha256) always exits 0 with no new tag")
    p.add_argument("--sign", action="store_true",
                   help="sign the released files and card (model-signing) with --sign-key or $SHELF_SIGNING_KEY")
    p.add_argument("--sign-tag", metavar="KEY", nargs="?", const=True, default=None, type=path,
                   help="sign the git tag too: with SSH private key KEY, or with git's own signing configuration")
    p.add_argument("--sign-key", metavar="PATH", help="EC private key (PEM) to sign with, or 'sigstore' (keyless)")
    p.add_argument("--sign-cert", metavar="PATH", help="the signing certificate for --sign-key")
    p.add_argument("--sign-chain", metavar="PATH", action="append", default=[],
                   help="an intermediate certificate (repeat; the leaf's issuer first)")
    p.add_argument("--json", action="store_true", help="print the release as JSON (notes on stderr)")

    p = add("versions", cmd_versions, "list releases with metrics and stages (read from git tags)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--plot", type=Path, metavar="PNG", help="also chart every release's metrics over time")

    p = add("diff", cmd_diff, "metrics, hyperparameters and card differences between two releases")
    p.add_argument("old")
    p.add_argument("new")
    p.add_argument("--json", action="store_true", help="print the differences as JSON (raw numbers, with changes)")

    p = add("promote", cmd_promote, "assign a stage to a release (GTO tag name#stage#N)")
    p.add_argument("version", help="vX.Y.Z, latest or a stage")
    p.add_argument("--to", required=True, help="the stage, e.g. prod")
    pushable(p)
    p.add_argument("--json", action="store_true", help="print the assignment as JSON")

    p = add("deprecate", cmd_deprecate, "deprecate a release (GTO tag name@vX.Y.Z!#N)")
    p.add_argument("version")
    pushable(p)
    p.add_argument("--json", action="store_true", help="print the deprecation tag as JSON")

    p = add("rollback", cmd_rollback, "put the workspace back to a release, or move a stage back")
    p.add_argument("version", nargs="?", help="the release whose pipeline state (dvc.lock, params, metrics, "
                                              "card, model, data) the workspace takes")
    p.add_argument("--stage", help="re-assign this stage to the version it held before")
    p.add_argument("--force", action="store_true", help="overwrite uncommitted changes to pipeline files and data")
    pushable(p)
    p.add_argument("--json", action="store_true", help="print the restored release (or the new assignment) as JSON")

    p = add("get", cmd_get, "fetch a release's model and card into a directory, verified")
    p.add_argument("version", help="vX.Y.Z, latest or a stage")
    p.add_argument("-o", "--out", type=Path, required=True)
    p.add_argument("--signature", action="store_true",
                   help="also write the release's signature as model.sig (for model-signing's own verifier)")
    p.add_argument("--json", action="store_true", help="print the fetched release as JSON")

    p = add("gc", cmd_gc, "collect DVC garbage, keeping the workspace, every branch (pushed ones too) and tag")
    p.add_argument("-c", "--cloud", action="store_true",
                   help="also collect in the DVC remote (after fetching every git remote's branches and tags)")
    p.add_argument("-r", "--remote", help="DVC remote for --cloud")
    p.add_argument("--dry-run", "--dry", dest="dry", action="store_true",
                   help="say what would be deleted (objects and bytes per location), delete nothing")
    p.add_argument("--json", action="store_true", help="print what was (or would be) collected as JSON")

    p = add("site", cmd_site, "write the registry as one static page (releases, stages, metrics, cards)")
    p.add_argument("-o", "--out", type=Path, default=Path("build/registry"),
                   help="the site's directory (default: build/registry)")
    p.add_argument("--no-drift", action="store_true",
                   help="leave out the drift of data.source against each stage holder's and the latest's profile")
    p.add_argument("--json", action="store_true")
