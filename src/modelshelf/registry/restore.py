"""Getting a release's files back, each verified against its card.

``get`` writes a release's model and card into a directory, ``fetch`` keeps a verified
copy per version (what ``modelshelf.load("prod")`` uses), ``rollback`` puts the
workspace's pipeline state back to a release.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from modelshelf import artefacts, dvcrepo
from modelshelf.card import CARD_FILE, parse_card
from modelshelf.errors import ReleaseRefused
from modelshelf.registry.core import Release, Workspace, open_registry
from modelshelf.tags import SemVer


@dataclass(frozen=True)
class Restored:
    """A release's files written out: where, from the DVC cache or remote, and its card."""

    version: SemVer
    directory: Path
    source: str   # "cache" or "remote"
    card: dict[str, Any]


def restore(ws: Workspace, rel: Release, dest: Path) -> Restored:
    """Write ``rel``'s model and card into ``dest``, each verified against the card."""
    raw = ws.repo.show(rel.tag, ws.card)
    if raw is None:
        raise ReleaseRefused(rel.tag, f"no {ws.card} at this release", "this tag is not a modelshelf release")
    card = parse_card(raw, f"{rel.tag}:{ws.card}")
    dest.mkdir(parents=True, exist_ok=True)
    sources = set()
    for rec in card["artefacts"].values():  # every format the card records, each verified
        sources.add(restore_artefact(ws, rel.tag, rec, dest / rec["file"]))
    artefacts.write_text(dest / CARD_FILE, raw.decode())
    return Restored(rel.version, dest, "remote" if "remote" in sources else "cache", card)


def restore_artefact(ws: Workspace, rev: str, rec: dict[str, Any], target: Path) -> str:
    """Write the bytes of the card record ``rec`` (``file``, ``sha256``) as they were at ``rev``
    to ``target``, verified: from the local DVC cache, else the remote (``"cache"``/``"remote"``)."""
    lock_dir = PurePosixPath(ws.lock).parent
    repo_path = PurePosixPath(ws.card).parent / rec["file"]
    rel_path = str(repo_path.relative_to(lock_dir)) if str(lock_dir) != "." else str(repo_path)
    md5 = dvcrepo.locked_md5(ws.repo, rev, ws.lock, rel_path, ws.root)
    target.parent.mkdir(parents=True, exist_ok=True)
    return dvcrepo.restore(ws.root, rev, rel_path, target, rec["sha256"], md5)


def rollback(start: str | Path, spec: str, *, force: bool = False) -> Restored:
    """Put the workspace's pipeline state back to a release (see :mod:`modelshelf.registry.checkout`):
    its dvc.lock, params, metrics and card from git, its model and data from the DVC cache or
    remote, the model verified against the card.  Refuses to overwrite uncommitted changes
    unless ``force``."""
    from modelshelf.registry.checkout import checkout

    ws = Workspace.open(start)
    rel = open_registry(ws).find(spec)
    if ws.repo.show(rel.tag, ws.card) is None:
        raise ReleaseRefused(rel.tag, f"no {ws.card} at this release", "this tag is not a modelshelf release")
    source, card = checkout(ws.repo, ws.root, rel.tag, ws.lock, ws.card, force=force)
    return Restored(rel.version, ws.repo.root / PurePosixPath(ws.card).parent, source, card)


def get(start: str | Path, spec: str, out: str | Path) -> Restored:
    """Fetch a release (``vX.Y.Z``, ``latest`` or a stage) into ``out``, verified."""
    ws = Workspace.open(start)
    return restore(ws, open_registry(ws).find(spec), Path(out))


def fetch(start: str | Path, spec: str) -> Path:
    """A verified local copy of a release (``vX.Y.Z``, ``latest`` or a stage), cached per version.

    The copy lives under ``.dvc/tmp/modelshelf/`` (ignored by git); it is re-verified on
    every call and re-fetched when its hash no longer matches.
    """
    ws = Workspace.open(start)
    rel = open_registry(ws).find(spec)
    dest = ws.root / ".dvc" / "tmp" / "modelshelf" / ws.name / f"v{rel.version}"
    try:
        card = parse_card((dest / CARD_FILE).read_bytes(), str(dest / CARD_FILE))
        for rec in card["artefacts"].values():
            artefacts.verify(dest / rec["file"], rec["sha256"])
        if card["version"] == str(rel.version):
            return dest
    except Exception:  # noqa: BLE001 - anything wrong with the copy means fetch it again
        pass
    return restore(ws, rel, dest).directory
