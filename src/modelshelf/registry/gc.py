"""``shelf gc``: DVC garbage collection that keeps every release's artefacts."""

from __future__ import annotations

from pathlib import Path

from modelshelf import dvcrepo
from modelshelf.errors import GitError
from modelshelf.registry.core import Workspace, fetch_tags


def gc(start: str | Path = ".", *, cloud: bool = False, dvc_remote: str | None = None,
       dry: bool = False) -> str:
    """``dvc gc`` keeping the workspace and every tag (so every release's artefacts)."""
    ws = Workspace.open(start)
    remotes = ws.repo.run("remote").stdout.split()
    if cloud and remotes:
        # Releases this clone has not fetched still own objects in the shared remote.
        for name in remotes:
            fetch_tags(ws, name)
    args = ["gc", "-w", "--all-tags", "-f", *(["--dry"] if dry else [])]
    if cloud:
        args += ["-c", *(["-r", dvc_remote] if dvc_remote else [])]
    proc = dvcrepo.dvc(ws.root, *args)
    if proc.returncode != 0:
        raise GitError("dvc gc", dvcrepo.last_line(proc), "check the repository and remote")
    return proc.stdout.strip()
