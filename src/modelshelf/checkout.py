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


def checkout(repo: GitRepo, root: Path, rev: str, lock: str, card: str, *, force: bool = False) -> str:
    """Put the pipeline state of ``rev`` into the workspace; returns ``"cache"`` or ``"remote"``
    (where the cached outputs came from).  The card's artefacts are verified at the end."""
    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    files = pipeline_files(repo, rev, lock) | pipeline_files(repo, "HEAD", lock)
    if not force:
        _refuse_local_changes(repo, root, files)
    wanted = repo.show_many([f"{rev}:{f}" for f in sorted(files)])
    for path, data in zip(sorted(files), wanted, strict=True):
        target = repo.root / path
        if data is None:
            target.unlink(missing_ok=True)
        else:
            with artefacts.atomic_output(target, "wb") as fh:
                fh.write(data)
    # DVC in-process (one import, not two subprocesses), on a fresh Repo: the lock changed.
    source = "cache"
    try:
        with Repo(str(root)) as dvc_repo:
            dvc_repo.checkout(force=True)
    except DvcException:  # objects missing from the cache
        source = "remote"
        try:
            with Repo(str(root)) as dvc_repo:
                dvc_repo.pull(force=True)
        except DvcException as exc:
            raise RemoteError(rev, f"dvc pull failed ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})",
                              "check `dvc remote list` and that the release was pushed") from None
    parsed = parse_card((repo.root / card).read_bytes(), card)
    directory = (repo.root / card).parent
    for rec in parsed["artefacts"].values():
        artefacts.verify(directory / rec["file"], rec["sha256"], label="the card's")
    return source


def _refuse_local_changes(repo: GitRepo, root: Path, files: set[str]) -> None:
    """Refuse to overwrite work not committed: git-tracked pipeline files, or DVC outputs
    that differ from the lock (new data not yet added, say)."""
    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    lines = repo.run("status", "--porcelain", "--untracked-files=no", "--", *sorted(files)).stdout.splitlines()
    changed = [line[3:] for line in lines if line.strip()]
    if not changed:
        try:
            with Repo(str(root)) as dvc_repo:
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
