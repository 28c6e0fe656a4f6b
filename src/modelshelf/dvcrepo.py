"""The DVC side of a release: push, prove presence in the remote, and fetch bytes by revision."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from modelshelf import artefacts
from modelshelf.errors import IntegrityError, RemoteError
from modelshelf.gitrepo import GitRepo


def dvc(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run DVC from this interpreter's environment (no reliance on PATH)."""
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    return subprocess.run([sys.executable, "-m", "dvc", *args], cwd=root, capture_output=True,
                          text=True, check=False, env=env)


def last_line(proc: subprocess.CompletedProcess[str]) -> str:
    """DVC's own reason for a failure: its last ``ERROR:`` line, never the support footer."""
    lines = [ln.strip() for ln in (proc.stderr + "\n" + proc.stdout).splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("ERROR:")]
    if errors:
        return errors[-1].removeprefix("ERROR:").strip()
    lines = [ln for ln in lines if "dvc.org/support" not in ln]
    return lines[-1] if lines else f"exit {proc.returncode}"


def push(root: Path, remote: str | None = None) -> None:
    """``dvc push`` every output of the pipeline; RemoteError when it fails."""
    args = ["push", *(["-r", remote] if remote else [])]  # not -q: it hides DVC's ERROR line
    proc = dvc(root, *args)
    if proc.returncode != 0:
        raise RemoteError("dvc push", last_line(proc),
                          "check the DVC remote (`dvc remote list`) and that it is reachable")


def missing_in_remote(root: Path, remote: str | None = None) -> list[str]:
    """Outputs of the workspace's pipeline that the remote does not hold (empty: all there)."""
    proc = dvc(root, "status", "-c", "--json", *(["-r", remote] if remote else []))
    if proc.returncode != 0:
        raise RemoteError("dvc status -c", last_line(proc), "check the DVC remote is reachable")
    try:
        status: dict[str, Any] = json.loads(proc.stdout or "{}")
    except ValueError:
        raise RemoteError("dvc status -c", "unreadable output", "upgrade dvc") from None
    return sorted(path for path, state in status.items() if state != "deleted")


def missing_objects(root: Path, files: list[Path], remote: str | None = None) -> list[str]:
    """Files whose content the DVC remote lacks, after re-uploading them once.

    DVC 3 addresses a file by the md5 of its bytes.  ``dvc push``/``dvc status -c`` assume
    every file of a pushed directory manifest is present; this checks each object itself.
    """
    oids = {str(f): md5_file(f) for f in files}

    def upload(odb: Any) -> list[str]:
        missing = [f for f, oid in oids.items() if not odb.exists(oid)]
        for f in missing:
            odb.fs.put_file(f, odb.oid_to_path(oids[f]))
        return [f for f in missing if not odb.exists(oids[f])]

    return with_remote_odb(root, remote, "push", upload)


def with_remote_odb(root: Path, remote: str | None, mode: str, fn: Any) -> Any:
    """``fn(odb)`` with the DVC remote's object store (``mode``: ``push`` or ``fetch``);
    RemoteError when it cannot be opened or asked."""
    from dvc.repo import Repo

    try:
        repo = Repo(str(root))
        try:
            return fn(repo.cloud.get_remote_odb(remote, mode))
        finally:
            repo.close()
    except RemoteError:
        raise
    except Exception as exc:  # noqa: BLE001 - DVC and fsspec raise many kinds
        raise RemoteError("dvc remote", f"cannot check objects ({type(exc).__name__}: {exc})",
                          "check the remote is reachable (`dvc remote list`)") from None


def pipeline_changes(root: Path) -> dict[str, Any]:
    """``dvc status --json``: stages whose deps or outs differ from dvc.lock (empty: in sync)."""
    proc = dvc(root, "status", "--json")
    if proc.returncode != 0:
        raise RemoteError("dvc status", last_line(proc), "run `dvc status` to see why")
    return json.loads(proc.stdout or "{}")


def locked_md5(repo: GitRepo, rev: str, lock_path: str, out_path: str, root: Path) -> str | None:
    """The md5 DVC recorded at ``rev`` for ``out_path`` (lock-relative): a file output, or a
    file inside a directory output whose manifest is in the local cache.  None when unknown."""
    import yaml

    raw = repo.show(rev, lock_path)
    if raw is None:
        return None
    lock = yaml.safe_load(raw) or {}
    for stage in (lock.get("stages") or {}).values():
        for out in stage.get("outs") or []:
            path, md5 = str(out.get("path", "")).rstrip("/"), str(out.get("md5", ""))
            if path == out_path:
                return md5 or None
            if md5.endswith(".dir") and out_path.startswith(path + "/"):
                manifest = cache_file(root, md5)
                try:
                    entries = json.loads(manifest.read_text())
                except (OSError, ValueError):
                    return None
                rel = out_path[len(path) + 1:]
                return next((e.get("md5") for e in entries if e.get("relpath") == rel), None)
    return None


def cache_dir(root: Path) -> Path:
    """The project's local DVC cache: ``[cache] dir`` from .dvc/config(.local), else .dvc/cache."""
    import configparser

    base = root / ".dvc"
    found = base / "cache"
    for name in ("config", "config.local"):  # later files override earlier ones, as in DVC
        parser = configparser.ConfigParser(interpolation=None)
        try:
            parser.read(base / name, encoding="utf-8")
        except configparser.Error:
            continue
        if parser.has_option("cache", "dir"):
            found = (base / parser.get("cache", "dir")).resolve()
    return found


def cache_file(root: Path, md5: str) -> Path:
    """Where DVC 3 keeps the object with ``md5`` in the project's local cache."""
    return cache_dir(root) / "files" / "md5" / md5[:2] / md5[2:]


def repair_rwlock(root: Path) -> bool:
    """Remove DVC's ``.dvc/tmp/rwlock`` when a DVC killed while writing it left it unreadable.

    DVC truncates and rewrites that small JSON file under its guard lock; a kill -9 in
    between leaves it empty or cut short, and every later DVC command then refuses to run
    ("Unable to read RWLock-file") until someone deletes it.  It is checked, and removed,
    under the same guard lock, so a file a live DVC is writing is never touched.

    Returns:
        True when a corrupt file was removed.
    """
    from dvc.lock import LockError, make_lock

    tmp = root / ".dvc" / "tmp"
    path = tmp / "rwlock"

    def readable() -> bool:
        try:
            json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return True
        except (OSError, ValueError):
            return False
        return True

    if readable():
        return False
    try:
        with make_lock(str(tmp / "rwlock.lock"), tmp_dir=str(tmp)):
            if readable():
                return False
            path.unlink(missing_ok=True)
            return True
    except LockError:  # a live DVC holds it: leave the file to DVC
        return False


def fetch_objects(root: Path, oids: list[str], remote: str | None = None) -> tuple[list[str], list[str]]:
    """Copy objects from the DVC remote into the local cache, each verified before it lands.

    DVC 3 names an object by the md5 of its bytes (a directory manifest: that md5 + ``.dir``).
    Each object is downloaded to a temporary file in the cache, hashed, and renamed into
    place only when it hashes to its name, so a corrupt remote never poisons the cache.
    The remote is the workspace's (``dvc fetch --rev`` would read a revision's config, and
    resolves a relative remote URL there against ``/``).

    Args:
        root: the DVC project.
        oids: the objects to fetch.
        remote: the DVC remote (default: the project's default remote).

    Returns:
        ``(missing, corrupt)``: the oids the remote lacks, and those whose bytes there do not
        hash to their name (neither is written to the cache).

    Raises:
        RemoteError: no such remote, or it cannot be read.
    """
    import tempfile

    from dvc.repo import Repo

    missing: list[str] = []
    corrupt: list[str] = []
    try:
        repo = Repo(str(root))
        try:
            odb = repo.cloud.get_remote_odb(remote, "fetch")
            for oid in oids:
                dest = cache_file(root, oid)
                dest.parent.mkdir(parents=True, exist_ok=True)
                fd, name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
                os.close(fd)
                tmp = Path(name)
                try:
                    try:
                        odb.fs.get_file(odb.oid_to_path(oid), name)
                    except FileNotFoundError:
                        missing.append(oid)
                        continue
                    if md5_file(tmp) != oid.removesuffix(".dir"):
                        corrupt.append(oid)
                        continue
                    tmp.chmod(0o444)  # as DVC protects its cache objects
                    os.replace(tmp, dest)
                finally:
                    tmp.unlink(missing_ok=True)
        finally:
            repo.close()
    except Exception as exc:  # noqa: BLE001 - DVC and fsspec raise many kinds
        raise RemoteError("dvc remote", f"cannot fetch objects ({type(exc).__name__}: {str(exc)[:200]})",
                          "check `dvc remote list` and that the remote is reachable") from None
    return missing, corrupt


def restore(root: Path, rev: str, path: str, dest: Path, sha256: str, md5: str | None) -> str:
    """Write the bytes of DVC-tracked ``path`` at ``rev`` to ``dest``, verified against ``sha256``.

    The local cache is tried first, then the remote (through ``dvc.api``).  Returns
    ``"cache"`` or ``"remote"``.  Nothing is left at ``dest`` unless the hash matches.
    """
    if md5:
        cached = cache_file(root, md5)
        if cached.is_file():
            if artefacts.sha256_file(cached) == sha256:
                artefacts.copy_verified(cached, dest, sha256)
                return "cache"
            # A corrupt object (its bytes no longer hash to its name) would be served again by
            # dvc.api: drop it and fetch the remote's.  An intact one stays, whatever the card says.
            if md5_file(cached) != md5:
                cached.unlink()
    import hashlib

    import dvc.api

    h = hashlib.sha256()
    try:
        with dvc.api.open(path, repo=str(root), rev=rev, mode="rb") as src, \
                artefacts.atomic_output(dest, "wb") as out:
            while chunk := src.read(1 << 20):
                h.update(chunk)
                out.write(chunk)
            if h.hexdigest() != sha256:  # raised inside: the temp file goes, dest stays as it was
                raise IntegrityError(f"{rev}:{path}", "fetched bytes do not match the card's sha256",
                                     "the remote holds a different file; do not use it")
    except IntegrityError:
        raise
    except Exception as exc:  # noqa: BLE001 - DVC raises many kinds; one line for the user
        raise RemoteError(f"{rev}:{path}", f"cannot fetch from cache or remote ({type(exc).__name__})",
                          "check `dvc remote list` and that the release was pushed") from None
    return "remote"


def md5_file(path: str | Path) -> str:
    """The md5 of a file's bytes: DVC 3's content address (not a security hash)."""
    import hashlib

    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()
