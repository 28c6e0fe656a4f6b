"""Releasing the workspace model: tag ``model@vX.Y.Z`` once its artefacts are in the DVC remote.

The model must be committed, gated, and up to date with its pipeline; a taken version is
refused, or (``--renumber``) replaced by the next free one in a new commit.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from modelshelf import artefacts, dvcrepo, tags
from modelshelf.card import parse_card
from modelshelf.errors import GateFailed, ReleaseRefused
from modelshelf.registry.core import Workspace, create_tag, fetch_tags, open_registry
from modelshelf.tags import SemVer

RENUMBER_HINT = "run `shelf release --renumber` (add --push to publish) to take the next free version"


def _check_releasable(ws: Workspace) -> dict[str, Any]:
    """The workspace card, once the tree, gate, metrics, lock and model all agree."""
    from modelshelf.project import stage_options

    if ws.repo.is_dirty():
        raise ReleaseRefused(str(ws.root), "the working tree has uncommitted changes",
                             "commit (or stash) them, then release")
    card_path = ws.repo.root / ws.card
    card = parse_card(card_path.read_bytes(), ws.card) if card_path.is_file() else None
    if card is None:
        raise ReleaseRefused(ws.card, "no model card", "run `dvc repro` and commit its outputs")
    opts = stage_options(ws.root, "gate")
    gate_path, metrics_path = ws.root / opts["out"], ws.root / opts["metrics"]
    try:
        report = json.loads(gate_path.read_text())
        metrics = json.loads(metrics_path.read_text())
    except (OSError, ValueError):
        raise ReleaseRefused(opts["out"], "no readable gate report or metrics", "run `dvc repro`") from None
    if report.get("passed") is not True or not card.get("gate", {}).get("passed"):
        raise GateFailed(opts["out"], "the gate did not pass for this model", "only gated models are released")
    if report.get("metrics_sha256") != artefacts.sha256_file(metrics_path) or card.get("metrics") != metrics:
        raise ReleaseRefused(opts["out"], "the gate report, metrics and card disagree (stale gate)",
                             "run `dvc repro` and commit its outputs")
    changes = dvcrepo.pipeline_changes(ws.root)
    if changes:
        raise ReleaseRefused("dvc.lock", f"the pipeline is not up to date ({', '.join(sorted(changes))} changed)",
                             "run `dvc repro` and commit its outputs")
    for rec in card["artefacts"].values():
        artefacts.verify(ws.repo.root / PurePosixPath(ws.card).parent / rec["file"], rec["sha256"], "the card's")
    return card


def _tag_message(ws: Workspace, version: SemVer, card: dict[str, Any]) -> str:
    """The release tag's message: GTO's subject line, then the gate's checks and the model hash."""
    lines = [tags.release_message(ws.name, version), ""]

    def num(v: Any) -> str:
        return "none" if v is None else f"{v:.6g}"

    for metric, check in card.get("gate", {}).get("checks", {}).items():
        lines.append(f"{metric}: {num(check.get('value'))} (threshold {num(check.get('threshold'))}, "
                     f"baseline {num(check.get('baseline'))}, {'passed' if check.get('passed') else 'failed'})")
    base = card.get("gate", {}).get("baseline", {})
    lines.append(f"gate: passed; baseline {base.get('rev')} {base.get('commit') or '(none)'}")
    lines.append(f"model-sha256: {card['artefacts']['model']['sha256']}")
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class Released:
    """What :func:`release` did: the tag, version and commit, whether it was pushed or renumbered,
    or that the model was already released."""

    tag: str
    version: SemVer
    commit: str
    pushed: bool
    renumbered_from: SemVer | None = None
    already: bool = False


def _renumber(ws: Workspace, card: dict[str, Any], taken: SemVer) -> SemVer:
    """Rewrite the card to the next free version, refresh dvc.lock, and commit."""
    bump = str(card.get("version_bump", "minor")).split(":")[0]
    part = bump if bump in ("major", "minor", "patch") else "minor"
    new = taken.bump(part)
    old = card["version"]
    card = {**card, "version": str(new),
            "version_bump": f"{part}: renumbered from {old} after v{taken} was released"}
    artefacts.write_json(ws.repo.root / ws.card, card)
    proc = dvcrepo.dvc(ws.root, "commit", "-f", "-q", "serialise")
    if proc.returncode != 0:
        raise ReleaseRefused("dvc commit", dvcrepo.last_line(proc), "fix the pipeline, then retry")
    ws.repo.run("add", ws.card, ws.lock)
    ws.repo.run("commit", "-q", "-m", f"Renumber {ws.name} v{old} → v{new}")
    return new


def release(start: str | Path = ".", *, push: bool = False, git_remote: str = "origin",
            dvc_remote: str | None = None, renumber: bool = False,
            skip_released: bool = False) -> Released:
    """Release the workspace model: push to the DVC remote, prove it is there, tag, optionally push.

    No tag is created unless every output is in the DVC remote.  With ``skip_released``, a
    model already released (same sha256) is reported, not refused: what CI on main wants.
    """
    ws = Workspace.open(start)
    card = _check_releasable(ws)
    if push:
        fetch_tags(ws, git_remote)
    reg = open_registry(ws)
    model_sha = card["artefacts"]["model"]["sha256"]
    same = [r for r in reg.releases if (r.card or {}).get("artefacts", {}).get("model", {}).get("sha256") == model_sha]
    if same and skip_released:
        return Released(same[-1].tag, same[-1].version, same[-1].commit, False, already=True)
    version = SemVer.parse(card["version"])
    highest = max((r.version for r in reg.releases), default=None)
    renumbered_from = None
    if highest is not None and version <= highest:
        if not renumber:
            problem = (f"v{version} already exists" if any(r.version == version for r in reg.releases)
                       else f"v{version} is not above the highest release v{highest}")
            raise ReleaseRefused(tags.release_tag(ws.name, version), problem, RENUMBER_HINT)
        renumbered_from, version = version, _renumber(ws, card, highest)
        card = _check_releasable(ws)
    dvcrepo.push(ws.root, dvc_remote)
    missing = dvcrepo.missing_in_remote(ws.root, dvc_remote)
    card_dir = ws.repo.root / PurePosixPath(ws.card).parent
    # `dvc status -c` trusts directory manifests; prove each released file's own object is there.
    missing += dvcrepo.missing_objects(ws.root, [card_dir / rec["file"] for rec in card["artefacts"].values()],
                                      dvc_remote)
    if missing:
        raise ReleaseRefused("dvc remote", f"{len(missing)} output(s) missing after push: {missing[0]}",
                             "check the remote, then `dvc push` and retry")
    tag = tags.release_tag(ws.name, version)
    commit = ws.repo.head() or ""
    made = create_tag(ws, reg, tag, _tag_message(ws, version, card), commit, check=False)
    if made.returncode != 0:
        raise ReleaseRefused(tag, "the tag already exists", RENUMBER_HINT)
    if push:
        refs = [f"refs/tags/{tag}"]
        branch = ws.repo.run("rev-parse", "--abbrev-ref", "HEAD").stdout.strip()
        upstream = f"{git_remote}/{branch}"
        published = branch != "HEAD" and ws.repo.resolve(upstream) is not None and ws.repo.run(
            "merge-base", "--is-ancestor", "HEAD", upstream, check=False).returncode == 0
        if not published and branch != "HEAD":
            refs.insert(0, f"HEAD:refs/heads/{branch}")  # e.g. a renumber commit: tag and branch together
        elif renumbered_from is not None and branch == "HEAD":
            ws.repo.run("tag", "-d", tag, check=False)
            raise ReleaseRefused(tag, "the renumber commit is on a detached HEAD",
                                 "check out the branch (`git checkout -B main`) and retry")
        pushed = ws.repo.run("push", "--atomic", "--porcelain", git_remote, *refs, check=False)
        if pushed.returncode != 0:
            ws.repo.run("tag", "-d", tag, check=False)  # the remote said no: leave no local claim
            out = pushed.stdout + pushed.stderr
            rejected_branch = any(line.startswith("!") and "refs/heads/" in line and "atomic" not in line
                                  for line in out.splitlines())
            if rejected_branch:
                raise ReleaseRefused(tag, f"{git_remote} refused the renumber commit: the branch moved there",
                                     "`git pull --rebase`, then `shelf release --renumber --push` again")
            raise ReleaseRefused(tag, "the git remote refused the tag (another release took this version?)",
                                 RENUMBER_HINT)
    return Released(tag, version, commit, push, renumbered_from)
