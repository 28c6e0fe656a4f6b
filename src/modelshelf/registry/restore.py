"""Getting a release's files back, each verified against the card at its release tag.

The card committed at the tag's commit, read from git, is the only anchor of trust: every
byte written or handed to a loader is checked against it, never against a card stored
beside a copy.  ``get`` writes a release's model and card into a directory (all or
nothing), ``fetch`` keeps a verified copy per version (what ``modelshelf.load("prod")`` and
``shelf serve`` use: a cache, re-verified on every use), ``rollback`` puts the workspace's
pipeline state back to a release.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath
from typing import Any

from modelshelf import artefacts, dvcrepo
from modelshelf.card import CARD_FILE, parse_card
from modelshelf.errors import ConfigError, IntegrityError, ReleaseRefused
from modelshelf.registry import signing
from modelshelf.registry.core import Release, Workspace, open_registry
from modelshelf.tags import SemVer


@dataclass(frozen=True)
class Restored:
    """A release's files written out: where, from the DVC cache or remote, and its card."""

    version: SemVer
    directory: Path
    source: str   # "cache" or "remote"
    card: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        """What ``shelf get --json`` and ``shelf rollback --json`` print (the card aside)."""
        model = self.card.get("artefacts", {}).get("model", {})
        return {"name": self.card.get("name"), "version": f"v{self.version}", "directory": str(self.directory),
                "source": self.source, "sha256": model.get("sha256")}


@dataclass(frozen=True)
class Fetched:
    """A verified local copy of a release: its directory, the card it was verified against
    (read from git at the release's commit: the one to trust, never ``directory/card.json``)
    and the release."""

    directory: Path
    card: dict[str, Any]
    release: Release


def trusted_card(ws: Workspace, rel: Release) -> dict[str, Any]:
    """The card committed at ``rel``'s commit, as read from git: the registry reads every
    release's card in one ``git cat-file --batch`` (``rel.card``); read again with ``git show``
    when it did not parse it.

    Args:
        ws: the workspace.
        rel: the release.

    Returns:
        The card, checked: it names the release's version, and every artefact a file inside
        the release's directory with a sha256.

    Raises:
        ReleaseRefused: there is no card at the release's commit.
        IntegrityError: the card is unreadable, names another version, or an artefact path
            that leaves the release's directory.
    """
    where = f"{rel.tag}:{ws.card}"
    card = rel.card if isinstance(rel.card, dict) else parse_card(card_bytes(ws, rel), where)
    if str(card["version"]) != str(rel.version):
        raise IntegrityError(where, f"the card says version {card['version']}, the tag v{rel.version}",
                             "do not use this release; see `shelf versions`")
    for kind, rec in card["artefacts"].items():
        name = rec.get("file") if isinstance(rec, dict) else None
        parts = PurePosixPath(name).parts if isinstance(name, str) else ()
        if (not parts or PurePosixPath(name).is_absolute() or ".." in parts or name == CARD_FILE
                or not isinstance(rec.get("sha256"), str)):
            raise IntegrityError(where, f"artefacts.{kind} names no file inside the release ({name!r}) "
                                 "or lacks a sha256", "do not use this release")
    return card


def card_bytes(ws: Workspace, rel: Release) -> bytes:
    """The bytes of the card at ``rel``'s commit (``git show``); ReleaseRefused when absent."""
    raw = ws.repo.show(rel.commit, ws.card)
    if raw is None:
        raise ReleaseRefused(rel.tag, f"no {ws.card} at this release", "this tag is not a modelshelf release")
    return raw


def restore(ws: Workspace, rel: Release, dest: Path) -> Restored:
    """Write ``rel``'s artefacts and card into ``dest``, each verified against the card at the tag.

    All or nothing: the files are fetched and verified into a staging directory beside
    ``dest``, then renamed into place one by one, the card last.  On any failure ``dest``
    is left as it was (and is not created).

    Args:
        ws: the workspace.
        rel: the release.
        dest: the directory to write into (made if missing).

    Returns:
        What was written, and whether the bytes came from the DVC cache or the remote.

    Raises:
        IntegrityError: bytes that do not match the card; RemoteError: bytes found nowhere;
        ConfigError: ``dest`` is not a directory.
    """
    raw = card_bytes(ws, rel)
    card = trusted_card(ws, replace(rel, card=parse_card(raw, f"{rel.tag}:{ws.card}")))
    dest = Path(dest)
    if dest.exists() and not dest.is_dir():
        raise ConfigError(str(dest), "exists and is not a directory", "choose another -o DIR")
    try:
        staging = _staging(dest)
        try:
            sources = {restore_artefact(ws, rel.tag, rec, staging / rec["file"])
                       for rec in card["artefacts"].values()}
            with artefacts.atomic_output(staging / CARD_FILE, "wb") as fh:
                fh.write(raw)
            dest.mkdir(exist_ok=True)
            for rec in card["artefacts"].values():  # every file verified: now rename them in, the card last
                target = dest / rec["file"]
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(staging / rec["file"], target)
            os.replace(staging / CARD_FILE, dest / CARD_FILE)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    except OSError as exc:
        raise ConfigError(str(exc.filename or dest), f"cannot write the release here ({exc.strerror or exc})",
                          "choose a directory this user may write (-o DIR)") from None
    return Restored(rel.version, dest, "remote" if "remote" in sources else "cache", card)


def _staging(dest: Path) -> Path:
    """A fresh directory on ``dest``'s file system for files not yet verified: beside ``dest``
    (so that ``dest`` itself is not even created on failure), else inside it."""
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".shelf-get", dir=dest.parent))
    except OSError:
        dest.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=".shelf-get.", dir=dest))


def restore_artefact(ws: Workspace, rev: str, rec: dict[str, Any], target: Path) -> str:
    """Write the bytes of the card record ``rec`` (``file``, ``sha256``) as they were at ``rev``
    to ``target``, verified: from the local DVC cache, else the remote (``"cache"``/``"remote"``)."""
    lock_dir = PurePosixPath(ws.lock).parent
    repo_path = PurePosixPath(ws.card).parent / rec["file"]
    rel_path = str(repo_path.relative_to(lock_dir)) if str(lock_dir) != "." else str(repo_path)
    md5 = dvcrepo.locked_md5(ws.repo, rev, ws.lock, rel_path, ws.root)
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.is_symlink() or (target.exists() and not target.is_file()):
        _remove(target)  # a link or a directory where the copy's file goes: never written through
    return dvcrepo.restore(ws.root, rev, rel_path, target, rec["sha256"], md5)


def rollback(start: str | Path, spec: str, *, force: bool = False) -> Restored:
    """Put the workspace's pipeline state back to a release (see :mod:`modelshelf.registry.checkout`).

    Its dvc.lock, params, metrics and card from git, its model and data from the DVC cache or
    remote; every object is fetched and verified before any file is written, and the model
    is verified against the card at the tag.

    Args:
        start: a path inside the project.
        spec: ``vX.Y.Z``, ``latest`` or a stage.
        force: overwrite uncommitted changes to pipeline files and data.

    Returns:
        The workspace's model directory and the release's card.

    Raises:
        ReleaseRefused: uncommitted changes (without ``force``); IntegrityError: an object or
        artefact that does not hash right; RemoteError: objects found nowhere.
    """
    from modelshelf.registry.checkout import checkout

    ws = Workspace.open(start)
    rel = open_registry(ws).find(spec)
    card = trusted_card(ws, rel)
    signing.check_release(ws, rel, spec=spec)
    source, _ = checkout(ws.repo, ws.root, rel.commit, ws.lock, ws.card, force=force, label=rel.tag,
                         trusted=card)
    return Restored(rel.version, ws.repo.root / PurePosixPath(ws.card).parent, source, card)


def get(start: str | Path, spec: str, out: str | Path) -> Restored:
    """Fetch a release (``vX.Y.Z``, ``latest`` or a stage) into ``out``, verified against the
    card at its tag; all or nothing (see :func:`restore`)."""
    ws = Workspace.open(start)
    rel = open_registry(ws).find(spec)
    signing.check_release(ws, rel, spec=spec)  # before anything is written
    return restore(ws, rel, Path(out))


def copy_directory(ws: Workspace, version: SemVer) -> Path:
    """Where :func:`fetch` keeps the copy of ``version`` (ignored by git)."""
    return ws.root / ".dvc" / "tmp" / "modelshelf" / ws.name / f"v{version}"


def fetch(start: str | Path, spec: str) -> Fetched:
    """A verified local copy of a release (``vX.Y.Z``, ``latest`` or a stage), cached per version.

    The copy lives under ``.dvc/tmp/modelshelf/`` and is only a cache: on every call each
    artefact is re-hashed against the card read from git at the release's commit, and
    re-fetched (DVC cache, else remote) when it differs.  The copy's ``card.json`` is
    rewritten from git when it says anything else, and is never trusted.

    Args:
        start: a path inside the project.
        spec: ``vX.Y.Z``, ``latest`` or a stage.

    Returns:
        The copy's directory, the trusted card and the release.  Loaders must use that card.

    Raises:
        IntegrityError: no bytes matching the card can be found; RemoteError: the bytes are
        in neither the cache nor the remote; ConfigError: unknown version or stage.
    """
    ws = Workspace.open(start)
    rel = open_registry(ws).find(spec)
    card = trusted_card(ws, rel)
    # The signature covers the card at the tag, whose sha256s every artefact is checked against below.
    signing.check_release(ws, rel, spec=spec)
    dest = copy_directory(ws, rel.version)
    for rec in card["artefacts"].values():
        target = dest / rec["file"]
        try:
            if target.is_symlink():
                raise IntegrityError(str(target), "is a link, not a copy", "")
            artefacts.verify(target, rec["sha256"])
        except (IntegrityError, OSError):
            restore_artefact(ws, rel.tag, rec, target)
    # The copy's card.json is for people and tools that read the directory, never for trust:
    # rewritten from git whenever it says anything else.
    card_path = dest / CARD_FILE
    try:
        same = not card_path.is_symlink() and json.loads(card_path.read_bytes()) == card
    except (OSError, ValueError):
        same = False
    if not same:
        if card_path.is_symlink() or card_path.is_dir():
            _remove(card_path)
        with artefacts.atomic_output(card_path, "wb") as fh:
            fh.write(card_bytes(ws, rel))
    return Fetched(dest, card, rel)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)
