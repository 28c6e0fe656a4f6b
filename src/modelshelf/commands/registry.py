"""``shelf`` subcommands of the git-tag registry: release, versions, diff, promote, deprecate,
rollback, get, gc, site."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from modelshelf.commands import Add, number, path, pushable


def cmd_release(a: argparse.Namespace) -> int:
    from modelshelf import api
    from modelshelf.registry.signing import KeySpec

    key = KeySpec.from_options(sign=a.sign, key=a.sign_key, cert=a.sign_cert, chain=a.sign_chain)
    done = api.release(push=a.push, git_remote=a.git_remote, dvc_remote=a.remote, renumber=a.renumber,
                   skip_released=a.skip_released, sign=key, sign_tag=a.sign_tag)
    for note in done.notes:
        print(note)
    if done.already:
        print(f"already released as {done.tag} (same model sha256): nothing to do")
        return 0
    if done.resumed:
        print(f"completed the interrupted release {done.tag} at {done.commit[:12]}: artefacts verified "
              "in the DVC remote; tag pushed")
        return 0
    if done.renumbered_from is not None:
        print(f"renumbered v{done.renumbered_from} → v{done.version} (committed)")
    print(f"released {done.tag} at {done.commit[:12]}: artefacts verified in the DVC remote"
          + ("; signed" if key is not None else "")
          + ("; tag pushed" if done.pushed else f"; push the tag with `git push {a.git_remote} {done.tag}`"))
    return 0


def cmd_versions(a: argparse.Namespace) -> int:
    from modelshelf import api

    reg = api.versions()
    rows = [r.summary() for r in reversed(reg.releases)]
    if a.plot is not None:
        from modelshelf.pipeline import plots

        print(f"wrote {plots.versions(reg.releases, a.plot, assignments=reg.assignments)}", file=sys.stderr)
    if a.json:
        print(json.dumps({"name": reg.name, "deprecated": reg.deprecated, "deprecation_tag": reg.deprecation_tag,
                          "stages": dict(reg.holders), "warnings": list(reg.problems), "versions": rows},
                         indent=2))
        return 0
    if not rows:
        print(f"no releases of {reg.name} yet (`shelf release` makes the first)")
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
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    if reg.deprecated:
        print(f"{reg.name} is deprecated ({reg.deprecation_tag}): no 'latest' and no stages until a new "
              "release or promotion re-creates it")
    for r in rows:
        if r["warning"]:
            print(f"warning: {r['tag']}: {r['warning']} (refused for use)")
    for problem in reg.problems:
        print(f"warning: {problem}")
    return 0


def cmd_diff(a: argparse.Namespace) -> int:
    from modelshelf import api

    reg = api.versions()
    old, new = reg.find(a.old, check=False), reg.find(a.new, check=False)
    from modelshelf.card import diff_cards

    for rel in (old, new):
        if rel.problem:
            print(f"warning: {rel.tag}: {rel.problem}", file=sys.stderr)
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
    from modelshelf import api

    done = api.promote(".", a.version, a.to, push=a.push, git_remote=a.git_remote)
    for note in done.notes:
        print(note)
    if done.already:
        print(f"{a.to} already holds v{done.version} ({done.tag}): nothing to do")
    elif done.resumed:
        print(f"assigned {a.to} to v{done.version} ({done.tag}): pushed the tag an interrupted promote left")
    else:
        print(f"assigned {a.to} to v{done.version} ({done.tag})" + ("; tag pushed" if a.push else ""))
    return 0


def cmd_deprecate(a: argparse.Namespace) -> int:
    from modelshelf import api

    print(f"deprecated: {api.deprecate('.', a.version, push=a.push, git_remote=a.git_remote)}")
    return 0


def cmd_rollback(a: argparse.Namespace) -> int:
    from modelshelf import api

    if a.stage:
        if a.version:
            from modelshelf.errors import ConfigError

            raise ConfigError("shelf rollback", "give a VERSION or --stage, not both", "pick one")
        done = api.rollback_stage(".", a.stage, push=a.push, git_remote=a.git_remote)
        print(f"{a.stage} rolled back to v{done.version} ({done.tag})")
        return 0
    if not a.version:
        from modelshelf.errors import ConfigError

        raise ConfigError("shelf rollback", "no VERSION or --stage given", "e.g. `shelf rollback v1.2.0`")
    r = api.rollback(".", a.version, force=a.force)
    print(f"workspace at v{r.version}: pipeline files from git, outputs from the {r.source} (every object "
          f"verified before any file was written); {r.directory} verified against the card at the tag. "
          f"Commit to keep it (`git commit -am 'roll back to v{r.version}'`)")
    return 0


def cmd_get(a: argparse.Namespace) -> int:
    from modelshelf import api

    r = api.get(".", a.version, a.out)
    print(f"fetched v{r.version} into {r.directory} from the {r.source}; sha256 verified against the card "
          "at its tag")
    if a.signature:
        from modelshelf.registry import signing
        from modelshelf.registry.core import Workspace

        bundle = signing.bundle_at(Workspace.open().repo, api.versions().find(a.version).tag)
        if bundle is None:
            print(f"v{r.version} is not signed: no {signing.SIGNATURE_FILE} written")
        else:
            print(f"wrote {signing.write_sidecar(r.directory, bundle)} (model-signing's bundle)")
    return 0


def cmd_gc(a: argparse.Namespace) -> int:
    from modelshelf import api

    done = api.gc(".", cloud=a.cloud, dvc_remote=a.remote, dry=a.dry)
    for line in done.lines():
        print(line)
    if done.dry:
        print("dry run: nothing was deleted")
    return 0


def cmd_site(a: argparse.Namespace) -> int:
    from modelshelf import api

    built = api.site(out=a.out)
    if a.json:
        print(json.dumps({"index": str(built.index), "releases": built.releases, "charts": built.charts}, indent=2))
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

    p = add("versions", cmd_versions, "list releases with metrics and stages (read from git tags)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--plot", type=Path, metavar="PNG", help="also chart every release's metrics over time")

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
    p.add_argument("-o", "--out", type=Path, required=True)
    p.add_argument("--signature", action="store_true",
                   help="also write the release's signature as model.sig (for model-signing's own verifier)")

    p = add("gc", cmd_gc, "collect DVC garbage, keeping the workspace, every branch (pushed ones too) and tag")
    p.add_argument("-c", "--cloud", action="store_true",
                   help="also collect in the DVC remote (after fetching every git remote's branches and tags)")
    p.add_argument("-r", "--remote", help="DVC remote for --cloud")
    p.add_argument("--dry-run", "--dry", dest="dry", action="store_true",
                   help="say what would be deleted (objects and bytes per location), delete nothing")

    p = add("site", cmd_site, "write the registry as one static page (releases, stages, metrics, cards)")
    p.add_argument("-o", "--out", type=Path, default=Path("build/registry"),
                   help="the site's directory (default: build/registry)")
    p.add_argument("--json", action="store_true")
