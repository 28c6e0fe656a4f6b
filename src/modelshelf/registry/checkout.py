"""The workspace's pipeline state put back to a revision: what ``git checkout TAG -- …`` plus
``dvc checkout`` (or ``dvc pull``) does by hand, limited to what the pipeline owns.

Restored from git: ``dvc.yaml``, ``dvc.lock``, the params files the lock names, ``*.dvc``
files and the git-tracked outputs (metrics, plots, the card, the profile), as they were at
the revision; such files the revision does not have are removed.  Then DVC puts the cached
outputs (model, data, candidate) to match the restored lock, from the local cache or else
the remote.  Code (stage dependencies that are not outputs) is never touched.  Afterwards
``dvc status`` is clean and ``git diff`` shows the rollback, ready to commit.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import Any

from modelshelf import artefacts
from modelshelf.card import parse_card
from modelshelf.errors import ReleaseRefused, RemoteError
from modelshelf.gitrepo import GitRepo


def pipeline_files(repo: GitRepo, rev: str, lock: str) -> set[str]:
    """Repo-relative paths of the git-tracked files the pipeline owns at ``rev``."""
    import yaml

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


def checkout(repo: GitRepo, root: Path, rev: str, lock: str, card: str, *,
             force: bool = False) -> tuple[str, dict[str, Any]]:
    """Put the pipeline state of ``rev`` into the workspace; returns where the cached outputs
    came from (``"cache"`` or ``"remote"``) and the card, whose artefacts are verified."""
    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    at_rev = pipeline_files(repo, rev, lock)
    files = at_rev | pipeline_files(repo, "HEAD", lock)
    if not force:
        _refuse_local_changes(repo, root, files)
    # Every object first, so a remote that fails leaves the workspace as it was (a failed
    # `dvc checkout --force` deletes the outputs it cannot restore).
    source = "cache"
    if _missing_from_cache(repo, root, rev, lock, at_rev):
        source = "remote"
        try:
            with _quiet_dvc(), Repo(str(root)) as dvc_repo:
                dvc_repo.fetch(revs=[rev], workspace=False)
        except DvcException as exc:
            raise RemoteError(rev, f"dvc fetch failed ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})",
                              "check `dvc remote list` and that the release was pushed") from None
        if _missing_from_cache(repo, root, rev, lock, at_rev):  # DVC only warns about these
            raise RemoteError(rev, "dvc fetch failed: objects are in neither the cache nor the remote",
                              "check `dvc remote list` and that the release was pushed")
    wanted = repo.show_many([f"{rev}:{f}" for f in sorted(files)])
    for path, data in zip(sorted(files), wanted, strict=True):
        target = repo.root / path
        if data is None:
            target.unlink(missing_ok=True)
        else:
            with artefacts.atomic_output(target, "wb") as fh:
                fh.write(data)
    # DVC in-process (one import, not a subprocess per step), on a fresh Repo: the lock changed.
    try:
        with _quiet_dvc(), Repo(str(root)) as dvc_repo:
            dvc_repo.checkout(force=True)
    except DvcException as exc:
        raise RemoteError(rev, f"dvc checkout failed ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})",
                          "run `dvc pull`, then `dvc status`") from None
    parsed = parse_card((repo.root / card).read_bytes(), card)
    directory = (repo.root / card).parent
    for rec in parsed["artefacts"].values():
        artefacts.verify(directory / rec["file"], rec["sha256"], label="the card's")
    return source, parsed


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


def _missing_from_cache(repo: GitRepo, root: Path, rev: str, lock: str, tracked: set[str]) -> bool:
    """True when an output DVC caches at ``rev`` (dvc.lock and ``.dvc`` files) is not in the
    local cache; outputs git tracks (``cache: false``) do not count."""
    import json

    import yaml

    from modelshelf.dvcrepo import cache_file

    records = [(lock, "stages")] + [(path, None) for path in sorted(tracked) if path.endswith(".dvc")]
    for path, key in records:
        raw = repo.show(rev, path)
        data: Any = yaml.safe_load(raw) if raw else {}
        base = PurePosixPath(path).parent
        groups = (data or {}).get("stages", {}).values() if key else [data or {}]
        for group in groups:
            for out in group.get("outs") or []:
                where, md5 = str(base / out["path"]).rstrip("/"), out.get("md5")
                if not md5 or any(t == where or t.startswith(where + "/") for t in tracked):
                    continue
                obj = cache_file(root, md5)
                if not obj.is_file():
                    return True
                if md5.endswith(".dir") and any(not cache_file(root, e["md5"]).is_file()
                                                for e in json.loads(obj.read_text())):
                    return True
    return False


def _refuse_local_changes(repo: GitRepo, root: Path, files: set[str]) -> None:
    """Refuse to overwrite work not committed: git-tracked pipeline files, or DVC outputs
    that differ from the lock (new data not yet added, say)."""
    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    lines = repo.run("status", "--porcelain", "--untracked-files=no", "--", *sorted(files)).stdout.splitlines()
    changed = [line[3:] for line in lines if line.strip()]
    if not changed:
        try:
            with _quiet_dvc(), Repo(str(root)) as dvc_repo:
                report = dvc_repo.status()
        except DvcException as exc:  # cannot tell what would be lost: refuse
            raise ReleaseRefused("dvc status", f"failed ({type(exc).__name__})",
                                 "fix the DVC project, or pass --force to skip this check") from None
        for entries in report.values():
            for entry in entries if isinstance(entries, list) else []:
                outs = entry.get("changed outs", {}) if isinstance(entry, dict) else {}
                changed += [path for path, state in outs.items() if state == "modified"]
    if changed:
        raise ReleaseRefused(changed[0], "has changes not committed that the rollback would overwrite",
                             "commit or stash them (`dvc add`/`dvc commit` for data), or pass --force")
