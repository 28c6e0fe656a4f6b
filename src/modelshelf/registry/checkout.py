"""The workspace's pipeline state put back to a revision: what ``git checkout TAG -- …`` plus
``dvc checkout`` (or ``dvc pull``) does by hand, limited to what the pipeline owns.

Restored from git: ``dvc.yaml``, ``dvc.lock``, the params files the lock names, ``*.dvc``
files and the git-tracked outputs (metrics, plots, the card, the profile), as they were at
the revision; such files the revision does not have are removed.  Then DVC puts the cached
outputs (model, data, candidate) to match the restored lock.  Code (stage dependencies that
are not outputs) is never touched.  Afterwards ``dvc status`` is clean and ``git diff``
shows the rollback, ready to commit.

Verify, then write.  Before any workspace file is touched every object the revision caches
is in the local cache and hashes to its name (DVC 3 names an object by the md5 of its
bytes, a directory manifest ``.dir`` included): a corrupt local object is removed and
fetched again; one fetched from the remote that does not hash to its name is removed (it
would poison later runs) and the rollback fails, the workspace as it was.  The model and
ONNX objects must also hash to the sha256 of the card at the revision.

Resumable.  Files are written atomically one by one, after a journal
(``.dvc/tmp/modelshelf/rollback.json``) names the target: a rollback killed at any moment is
finished by running it again, without ``--force``, as long as the only changes in the
workspace are ones that rollback made.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import Any

import yaml
from dvc.exceptions import DvcException
from dvc.repo import Repo

from modelshelf import artefacts
from modelshelf.card import parse_card
from modelshelf.dvcrepo import cache_file, fetch_objects, locked_md5, md5_file, repair_rwlock
from modelshelf.errors import GitError, IntegrityError, ReleaseRefused, RemoteError
from modelshelf.gitrepo import GitRepo

JOURNAL = PurePosixPath(".dvc/tmp/modelshelf/rollback.json")
"""The rollback journal, relative to the DVC project's root (ignored by git: .dvc/tmp)."""


def pipeline_files(repo: GitRepo, rev: str, lock: str) -> set[str]:
    """Repo-relative paths of the git-tracked files the pipeline owns at ``rev``."""
    base = PurePosixPath(lock).parent
    owned = {str(base / "dvc.yaml"), lock}
    raw = repo.show(rev, lock)
    data: Any = yaml.safe_load(raw) if raw else None
    roots: set[str] = set()
    for stage in (data or {}).get("stages", {}).values():
        owned.update(str(base / name) for name in (stage.get("params") or {}))
        roots.update(str(base / out["path"]).rstrip("/") for out in stage.get("outs") or [])
    out = set()
    for path in repo.run("ls-tree", "-r", "--name-only", rev).stdout.splitlines():
        if (path in owned or path.endswith(".dvc")
                or any(path == r or path.startswith(r + "/") for r in roots)):
            out.add(path)
    return out


def checkout(repo: GitRepo, root: Path, rev: str, lock: str, card: str, *, force: bool = False,
             label: str | None = None, trusted: dict[str, Any] | None = None) -> tuple[str, dict[str, Any]]:
    """Put the pipeline state of ``rev`` into the workspace, every object verified first.

    Args:
        repo: the git repository.
        root: the DVC project's root.
        rev: the revision (a release's commit).
        lock: repo-relative path of dvc.lock.
        card: repo-relative path of the card.
        force: overwrite uncommitted changes to pipeline files and data.
        label: how errors name the revision (e.g. the release tag; default ``rev``).
        trusted: the card at ``rev`` as the caller read it from git (read here when None).

    Returns:
        Where the cached outputs came from (``"cache"`` or ``"remote"``) and the card at
        ``rev``, which the restored artefacts match.

    Raises:
        ReleaseRefused: uncommitted changes the rollback would overwrite (without ``force``).
        IntegrityError: an object or artefact that does not hash right (no file written).
        RemoteError: objects in neither the cache nor the remote (no file written).
    """
    target = repo.resolve(rev)
    if target is None:
        raise GitError(rev, "names no commit", "see `shelf versions`")
    label = label or rev
    if trusted is None:
        raw = repo.show(target, card)
        if raw is None:
            raise ReleaseRefused(label, f"no {card} at this revision", "this is not a modelshelf release")
        trusted = parse_card(raw, f"{label}:{card}")
    at_rev = pipeline_files(repo, target, lock)
    head = repo.head()
    files = at_rev | pipeline_files(repo, "HEAD", lock)
    repair_rwlock(root)  # a DVC killed with an earlier rollback may have left it unreadable
    journal = read_journal(root)
    resuming = journal if journal and journal.get("target") == target and journal.get("head") == head else None
    if not force:
        _refuse_local_changes(repo, root, files, target, resuming, journal)

    # Every object first, verified: nothing below writes to the workspace until they are.
    source = _fetch_verified(root, label, _cached_outs(repo, target, lock, at_rev))
    _check_artefact_objects(repo, root, target, label, lock, card, trusted, at_rev)

    write_journal(root, {"target": target, "tag": label, "head": head, "state": "writing",
                         "started": int(time.time())})
    paths = sorted(files)
    for path, data in zip(paths, repo.show_many([f"{target}:{f}" for f in paths]), strict=True):
        dest = repo.root / path
        for stale in dest.parent.glob(f".{dest.name}.*.tmp"):  # an atomic write a kill interrupted
            stale.unlink(missing_ok=True)
        if data is None:
            dest.unlink(missing_ok=True)
        elif not _holds(dest, data):
            with artefacts.atomic_output(dest, "wb") as fh:
                fh.write(data)
    # DVC in-process (one import, not a subprocess per step), on a fresh Repo: the lock changed.
    try:
        with _quiet_dvc(), Repo(str(root)) as dvc_repo:
            dvc_repo.checkout(force=True)
    except DvcException as exc:
        raise RemoteError(label, f"dvc checkout failed ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})",
                          f"run `shelf rollback {label.rsplit('@', 1)[-1]}` again, or `dvc checkout`") from None
    directory = repo.root / PurePosixPath(card).parent
    for rec in trusted["artefacts"].values():
        artefacts.verify(directory / rec["file"], rec["sha256"], label="the card's")
    write_journal(root, {"target": target, "tag": label, "head": head, "state": "done",
                         "finished": int(time.time())})
    return source, trusted


def read_journal(root: Path) -> dict[str, Any] | None:
    """The last rollback's journal (target commit, tag, HEAD then, state), or None."""
    try:
        data = json.loads((root / JOURNAL).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def write_journal(root: Path, entry: dict[str, Any]) -> None:
    """Record ``entry`` as the rollback journal, atomically."""
    artefacts.write_json(root / JOURNAL, entry)


def _holds(path: Path, data: bytes) -> bool:
    try:
        return not path.is_symlink() and path.read_bytes() == data
    except OSError:
        return False


@contextmanager
def _quiet_dvc() -> Iterator[None]:
    """DVC in-process logs warnings to stderr; the CLI speaks in one line of its own."""
    logs = [logging.getLogger(name) for name in ("dvc", "dvc_data", "dvc_objects")]
    levels = [log.level for log in logs]
    for log in logs:
        log.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for log, level in zip(logs, levels, strict=True):
            log.setLevel(level)


# --- objects ------------------------------------------------------------------------------------


def _cached_outs(repo: GitRepo, rev: str, lock: str, tracked: set[str]) -> list[tuple[str, str]]:
    """``(repo path, md5)`` of every output DVC caches at ``rev`` (dvc.lock and ``.dvc`` files);
    outputs git tracks (``cache: false``) do not count."""
    records = [(lock, "stages")] + [(path, None) for path in sorted(tracked) if path.endswith(".dvc")]
    outs = []
    for path, key in records:
        raw = repo.show(rev, path)
        data: Any = yaml.safe_load(raw) if raw else {}
        base = PurePosixPath(path).parent
        groups = (data or {}).get("stages", {}).values() if key else [data or {}]
        for group in groups:
            for out in group.get("outs") or []:
                where, md5 = str(base / out["path"]).rstrip("/"), out.get("md5")
                if md5 and not any(t == where or t.startswith(where + "/") for t in tracked):
                    outs.append((where, str(md5)))
    return outs


def _fetch_verified(root: Path, label: str, outs: list[tuple[str, str]]) -> str:
    """Make every object of ``outs`` present and intact in the local cache; ``"cache"`` when
    it already was, ``"remote"`` when some were fetched (each verified before it lands)."""
    missing = _audit(root, outs, label)
    if not missing:
        return "cache"
    for _ in range(3):  # directory manifests first, then the files they list: DVC nests no deeper
        with _quiet_dvc():
            absent, corrupt = fetch_objects(root, sorted({md5 for _, md5 in missing}))
        where = {md5: path for path, md5 in missing}
        if corrupt:
            raise IntegrityError(f"{label}:{where[corrupt[0]]}", f"the DVC remote's object {corrupt[0]} does not "
                                 f"hash to its name ({len(corrupt)} such); not fetched, no file was changed",
                                 "the remote's copy is corrupt: `dvc push` a good one from a clone that has it")
        if absent:
            raise RemoteError(label, f"{where[absent[0]]} ({absent[0]}) is in neither the cache nor the DVC "
                              f"remote ({len(absent)} such); no file was changed",
                              "check `dvc remote list` and that the release was pushed (`dvc push`)")
        missing = _audit(root, outs, label)
        if not missing:
            return "remote"
    raise RemoteError(label, f"{missing[0][0]} is still missing after fetching", "run `dvc fetch`, then retry")


def _audit(root: Path, outs: list[tuple[str, str]], label: str) -> list[tuple[str, str]]:
    """The objects of ``outs`` (directory manifests and their files) missing from the local
    cache.  An object whose bytes do not hash to its name is removed: it counts as missing."""
    missing: list[tuple[str, str]] = []
    seen: set[str] = set()
    queue = list(outs)
    while queue:
        path, md5 = queue.pop(0)
        if md5 in seen:
            continue
        seen.add(md5)
        obj = cache_file(root, md5)
        if not obj.is_file():
            missing.append((path, md5))
            continue
        if md5_file(obj) != md5.removesuffix(".dir"):
            _discard(obj, label, path)
            missing.append((path, md5))
            continue
        if md5.endswith(".dir"):
            try:
                entries = json.loads(obj.read_bytes())
                queue += [(f"{path}/{e['relpath']}", str(e["md5"])) for e in entries]
            except (ValueError, TypeError, KeyError):
                raise IntegrityError(f"{label}:{path}", f"the directory manifest {md5} is unreadable",
                                     "remove it from .dvc/cache and retry") from None
    return missing


def _discard(obj: Path, label: str, path: str) -> None:
    try:
        obj.unlink()
    except OSError as exc:
        raise IntegrityError(f"{label}:{path}", f"the cache object {obj} is corrupt and cannot be removed "
                             f"({exc.strerror})", f"remove it by hand (`rm -f {obj}`) and retry") from None


def _check_artefact_objects(repo: GitRepo, root: Path, rev: str, label: str, lock: str, card: str,
                            trusted: dict[str, Any], tracked: set[str]) -> None:
    """Each artefact the card records, as the revision will restore it (git blob or cache
    object), hashes to the card's sha256."""
    lock_dir = PurePosixPath(lock).parent
    for rec in trusted["artefacts"].values():
        repo_path = str(PurePosixPath(card).parent / rec["file"])
        if repo_path in tracked:
            data = repo.show(rev, repo_path) or b""
            actual = hashlib.sha256(data).hexdigest()
        else:
            rel = str(PurePosixPath(repo_path).relative_to(lock_dir)) if str(lock_dir) != "." else repo_path
            md5 = locked_md5(repo, rev, lock, rel, root)
            if md5 is None:
                raise IntegrityError(f"{label}:{repo_path}", "not recorded in dvc.lock at this release",
                                     "the release is broken; do not roll back to it")
            actual = artefacts.sha256_file(cache_file(root, md5))
        if actual != rec["sha256"]:
            raise IntegrityError(f"{label}:{repo_path}", f"sha256 {actual[:12]}… does not match the card's "
                                 f"{rec['sha256'][:12]}…; no file was changed",
                                 "the release's dvc.lock and card disagree: do not roll back to it")


# --- refusing to overwrite work ----------------------------------------------------------------


def _refuse_local_changes(repo: GitRepo, root: Path, files: set[str], target: str,
                          resuming: dict[str, Any] | None, journal: dict[str, Any] | None) -> None:
    """Refuse to overwrite work not committed: git-tracked pipeline files, or DVC outputs
    that differ from the lock (new data not yet added, say).

    When ``resuming`` (the journal of a rollback to the same target from the same HEAD), a
    file that already holds the target's bytes is the rollback's own change; and while that
    rollback was interrupted (``state`` is ``writing``) the DVC outputs are its to put back.
    """
    changed = _changed_files(repo, files)
    if resuming is not None and changed:
        at_target = repo.show_many([f"{target}:{p}" for p in changed])
        changed = [p for p, data in zip(changed, at_target, strict=True)
                   if not (_holds(repo.root / p, data) if data is not None else not (repo.root / p).exists())]
    interrupted = resuming is not None and resuming.get("state") != "done"
    if not changed and not interrupted:
        changed = _modified_outs(root)
    if changed:
        remedy = "commit or stash them (`dvc add`/`dvc commit` for data), or pass --force"
        if journal is not None and journal.get("state") != "done" and resuming is None:
            tag = str(journal.get("tag", journal.get("target", "")))
            remedy = (f"a rollback to {tag} was interrupted: run it again to finish it "
                      f"(`shelf rollback {tag.rsplit('@', 1)[-1]}`), or pass --force")
        raise ReleaseRefused(changed[0], "has changes not committed that the rollback would overwrite", remedy)


def _changed_files(repo: GitRepo, files: set[str]) -> list[str]:
    """Which of ``files`` differ from HEAD (git status, tracked files only)."""
    # --no-optional-locks: a status killed with the rollback must not leave .git/index.lock behind.
    out = repo.run("--no-optional-locks", "status", "--porcelain", "-z", "--untracked-files=no", "--",
                   *sorted(files)).stdout
    changed, entries = [], out.split("\0")
    i = 0
    while i < len(entries):
        entry = entries[i]
        if len(entry) > 3:
            changed.append(entry[3:])
            if entry[0] in "RC":
                i += 1  # the rename's source follows
        i += 1
    return changed


def _modified_outs(root: Path) -> list[str]:
    """DVC outputs whose workspace bytes differ from the lock (``dvc status``)."""
    try:
        with _quiet_dvc(), Repo(str(root)) as dvc_repo:
            report = dvc_repo.status()
    except DvcException as exc:  # cannot tell what would be lost: refuse
        raise ReleaseRefused("dvc status", f"failed ({type(exc).__name__})",
                             "fix the DVC project, or pass --force to skip this check") from None
    changed = []
    for entries in report.values():
        for entry in entries if isinstance(entries, list) else []:
            outs = entry.get("changed outs", {}) if isinstance(entry, dict) else {}
            changed += [path for path, state in outs.items() if state == "modified"]
    return changed
