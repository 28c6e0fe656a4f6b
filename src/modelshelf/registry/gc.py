"""``shelf gc``: DVC garbage collection that keeps what any branch or tag, here or pushed,
still references.

DVC's ``gc -a -T`` keeps the tips of *local* branches and every tag; an open pull request
lives in a branch that only the git remote (and so only ``refs/remotes/*``) has.  This
fetches the remotes' branches and tags first, then keeps the workspace, every local branch,
every remote-tracking branch, every tag and every experiment, and says per location what
goes (count and bytes) before anything is deleted.  With ``dry`` nothing is.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelshelf import gitrepo
from modelshelf.errors import GitError, RemoteError
from modelshelf.registry.core import Workspace


@dataclass(frozen=True)
class Collected:
    """What gc removes (or would remove) from one object store."""

    location: str   # "cache" or "remote NAME"
    path: str
    objects: int
    bytes: int | None   # None when the store cannot tell sizes cheaply

    def line(self, dry: bool) -> str:
        size = "?" if self.bytes is None else _human(self.bytes)
        verb = "would delete" if dry else "deleted"
        return f"{self.location} ({self.path}): {verb} {self.objects} objects, {size}"


@dataclass(frozen=True)
class GcReport:
    """The outcome of :func:`gc`."""

    dry: bool
    kept_revisions: int             # distinct commits whose data was kept (workspace aside)
    fetched: tuple[str, ...]        # git remotes whose branches and tags were fetched first
    collected: tuple[Collected, ...]
    unfetched: tuple[str, ...] = ()  # git remotes that could not be fetched (local collection only)

    def lines(self) -> list[str]:
        head = (f"kept the workspace and {self.kept_revisions} commits (every branch, remote-tracking "
                f"branch and tag" + (f", after fetching {', '.join(self.fetched)}" if self.fetched else "") + ")")
        warn = [f"warning: could not fetch {name}: its branches are kept as last fetched"
                for name in self.unfetched]
        return [head, *warn, *(c.line(self.dry) for c in self.collected)]

    def to_json(self) -> dict[str, Any]:
        """What ``shelf gc --json`` prints."""
        return {"dry": self.dry, "kept_revisions": self.kept_revisions, "fetched": list(self.fetched),
                "unfetched": list(self.unfetched),
                "collected": [{"location": c.location, "path": c.path, "objects": c.objects, "bytes": c.bytes}
                              for c in self.collected]}


def gc(start: str | Path = ".", *, cloud: bool = False, dvc_remote: str | None = None,
       dry: bool = False) -> GcReport:
    """Collect DVC garbage, keeping everything a branch (local or pushed) or tag references.

    Args:
        start: a directory inside the project.
        cloud: also collect in the DVC remote (shared: it is collected only after every
            git remote's branches and tags were fetched).
        dvc_remote: the DVC remote for ``cloud`` (default: the project's default).
        dry: report what would go, delete nothing.

    Returns:
        What was (or would be) deleted, per location.

    Raises:
        GitError: a git remote's branches cannot be fetched before a ``cloud`` collection.
        RemoteError: DVC cannot list what is used, or the remote cannot be collected.
    """
    ws = Workspace.open(start)
    fetched, unfetched = [], []
    for name in ws.repo.remotes():
        proc = ws.repo.run("fetch", "-q", name, f"+refs/heads/*:refs/remotes/{name}/*", "--tags", check=False,
                           env=gitrepo.no_prompt_env())
        if proc.returncode == 0:
            fetched.append(name)
            continue
        unfetched.append(name)
        if cloud:  # a branch we cannot see may own objects of the shared remote
            lines = proc.stderr.strip().splitlines()
            raise GitError(f"git fetch {name}", lines[-1] if lines else "failed",
                           f"gc -c must see every pushed branch first: fix the remote, or remove it "
                           f"(`git remote remove {name}`) if it is gone")
    revs = _kept_revisions(ws)
    from dvc.repo import Repo

    repo = Repo(str(ws.root))
    try:
        with repo.lock:
            used = _used(repo, revs, cloud, dvc_remote)
            collected, seen = [], []
            for scheme, odb in repo.cache.by_scheme():
                if odb is None or any(odb is o for o in seen):
                    continue
                seen.append(odb)
                found = _collect(odb, used["objects"], dry, indexed=False)
                if found.objects or scheme == "local":
                    collected.append(_named(found, "cache"))
            if cloud:
                name = dvc_remote or _default_remote(repo)
                for remote_odb, oids in used["remote"].items():
                    found = _collect(remote_odb, oids, dry, indexed=True)
                    if found.objects or remote_odb.hash_name == "md5":
                        collected.append(_named(found, f"remote {name}"))
    except (GitError, RemoteError):
        raise
    except Exception as exc:  # noqa: BLE001 - DVC raises many kinds; one line, nothing half-deleted
        raise RemoteError("dvc gc", f"{type(exc).__name__}: {exc}".splitlines()[0],
                          "fix the revision or remote it names (nothing was deleted from that location)") from None
    finally:
        repo.close()
    return GcReport(dry, len(revs), tuple(fetched), tuple(collected), tuple(unfetched))


def _kept_revisions(ws: Workspace) -> list[str]:
    """The commits of every local branch, remote-tracking branch and tag."""
    out = ws.repo.run("for-each-ref", "--format=%(objectname) %(*objectname) %(objecttype) %(*objecttype)",
                      "refs/heads", "refs/remotes", "refs/tags").stdout
    commits = []
    for line in out.splitlines():
        obj, peeled, kind, peeled_kind = (line.split(" ") + ["", "", "", ""])[:4]
        if kind == "commit":
            commits.append(obj)
        elif kind == "tag" and peeled_kind == "commit":
            commits.append(peeled)
    return list(dict.fromkeys(commits))


def _used(repo: Any, revs: list[str], cloud: bool, dvc_remote: str | None) -> dict[str, Any]:
    """Every object the workspace and ``revs`` use, as DVC's own gc collects them."""
    # force=False: a directory whose manifest cannot be found fails the collection instead of
    # silently dropping its files (DVC's `gc -f` passes force through and loses them).
    by_odb = repo.used_objs(revs=revs or None, all_experiments=True, remote=dvc_remote, force=False, num=1)
    objects = set().union(*by_odb.values()) if by_odb else set()
    remote: dict[Any, set[Any]] = {}
    if cloud:
        from dvc.repo.gc import _merge_remote_obj_ids

        merged = dict(by_odb)
        _merge_remote_obj_ids(repo, dvc_remote, merged)
        remote = {odb: oids for odb, oids in merged.items() if odb is not None}
    return {"objects": objects, "remote": remote}


def _collect(odb: Any, used: set[Any], dry: bool, indexed: bool) -> Collected:
    """Delete (unless ``dry``) the objects of ``odb`` that nothing uses; what went."""
    from dvc_data.hashfile.hash_info import HASH_DIR_SUFFIX

    keep = {h.value for h in used if h.name == odb.hash_name}
    dirs, files = [], []
    for oid in odb.all():
        if oid in keep:
            continue
        (dirs if oid.endswith(HASH_DIR_SUFFIX) else files).append(oid)
    paths = [odb.oid_to_path(o) for o in dirs + files]
    size: int | None = 0
    for path in paths:
        try:
            size += int(odb.fs.size(path) or 0)  # type: ignore[operator]
        except Exception:  # noqa: BLE001 - a store that cannot tell a size
            size = None
            break
    if not dry and paths:
        for oid in dirs:
            odb._remove_unpacked_dir(oid)  # as dvc_data's gc does, for old unpacked directories
        odb.fs.remove(paths)
        if indexed:  # DVC's index of what a remote holds would still list them
            from dvc_data.hashfile.db import get_index

            get_index(odb).clear()
    return Collected("", str(odb.path), len(paths), size)


def _named(found: Collected, location: str) -> Collected:
    return Collected(location, found.path, found.objects, found.bytes)


def _default_remote(repo: Any) -> str:
    return str(repo.config.get("core", {}).get("remote") or "default")


def _human(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return f"{n} B"
