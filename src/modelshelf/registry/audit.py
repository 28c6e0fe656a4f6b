"""``shelf verify --all``: audit every release of the model.

For each release tag ``name@vX.Y.Z``: the tag parses and is annotated; the card at its
commit parses and names the tag's version; the tag message's ``model-sha256:`` line (when
there is one) names the card's model; and every artefact the card lists has its DVC object
(and the ``.dir`` manifest of a directory output) in the local cache, with bytes whose md5
is the object's name and whose sha256 is the card's.  With a DVC remote, every object must
be in the remote too (hashed when the remote is a local directory; asked through DVC's
object database otherwise).  It would have caught a user's ``dvc gc -w -c`` that deleted an
old release's objects.

Each object is hashed once, however many releases share it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from modelshelf import dvcrepo, tags
from modelshelf.errors import IntegrityError, RemoteError
from modelshelf.registry import signing
from modelshelf.registry.core import Registry, Release, Workspace, open_registry

_MODEL_SHA = "model-sha256:"


@dataclass(frozen=True)
class Problem:
    """One thing wrong with one release."""

    tag: str
    where: str      # "tag", "card", "message", "signature", "cache" or "remote"
    problem: str
    integrity: bool = True   # False: a problem of naming, not of bytes

    def line(self) -> str:
        return f"{self.tag}: {self.where}: {self.problem}"


@dataclass(frozen=True)
class Audit:
    """The outcome of :func:`audit`."""

    name: str
    releases: int
    objects: int                 # distinct DVC objects checked
    remote: str | None           # the DVC remote checked, None when only the cache was
    problems: tuple[Problem, ...]
    notes: tuple[str, ...] = ()  # not problems: e.g. objects only the remote has

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "ok": self.ok, "releases": self.releases, "objects": self.objects,
                "remote": self.remote, "notes": list(self.notes),
                "problems": [{"tag": p.tag, "where": p.where, "problem": p.problem} for p in self.problems]}


@dataclass
class _Object:
    """A DVC object some release needs, and which artefact of which releases it is."""

    md5: str
    sha256: str | None            # the card's, for an artefact file; None for a .dir manifest
    users: list[tuple[str, str]] = field(default_factory=list)   # (tag, repo path)


def audit(start: str | Path = ".", *, remote: str | None = None, use_remote: bool = False) -> Audit:
    """Audit every release: tag, card, version, tag message and every object's bytes.

    Args:
        start: a directory inside the project.
        remote: the DVC remote to check (with ``use_remote``; None: the default remote).
        use_remote: also check that the DVC remote holds (and, for a local one, hashes) every object.

    Returns:
        Every problem found, one per release and location.

    Raises:
        RemoteError: the DVC remote cannot be reached or listed.
        GitError: the clone lacks tags (see :func:`~modelshelf.registry.core.open_registry`).
    """
    ws = Workspace.open(start)
    reg = open_registry(ws)
    if use_remote:
        with _RemoteStore(ws.root, remote) as store:
            return _audit(ws, reg, store)
    return _audit(ws, reg, None)


def _audit(ws: Workspace, reg: Registry, store: _RemoteStore | None) -> Audit:
    problems: list[Problem] = _tag_problems(ws)
    messages = _messages(ws)
    policy = signing.TrustPolicy.effective(ws.root)
    objects: dict[str, _Object] = {}
    locks = ws.repo.show_many([f"{r.commit}:{ws.lock}" for r in reg.releases])
    parsed_locks: dict[bytes, dict[str, Any]] = {}
    for rel, raw in zip(reg.releases, locks, strict=True):
        if rel.problem:
            problems.append(Problem(rel.tag, "card", rel.problem))
        if rel.card is None:
            continue
        problems += _message_problems(rel, messages)
        problems += _signature_problems(ws, rel, messages, policy)
        if raw is None:
            problems.append(Problem(rel.tag, "card", f"no {ws.lock} at this commit: its objects are unknown"))
            continue
        if raw not in parsed_locks:
            try:
                lock = yaml.load(raw, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
            except yaml.YAMLError:
                lock = None
            parsed_locks[raw] = lock if isinstance(lock, dict) else {}
        if not parsed_locks[raw]:
            problems.append(Problem(rel.tag, "card",
                                    f"{ws.lock} at this commit is unreadable: its objects are unknown"))
            continue
        problems += _collect(ws, rel, parsed_locks[raw], objects, store)

    cache_state = {md5: _check_cache(ws.root, obj) for md5, obj in objects.items()}
    notes: list[str] = []
    remote_state = store.check(objects) if store is not None else {}
    for md5, obj in sorted(objects.items()):
        local = cache_state[md5]
        there = remote_state.get(md5)
        if local == "missing" and store is not None and there is None:
            notes.append(f"object {md5} ({obj.users[0][1]}, {len(obj.users)} uses) is only in the remote")
        for tag, path in obj.users:
            if local == "missing" and store is not None:
                pass  # the remote's copy is what counts; its problems follow
            elif local is not None:
                problems.append(Problem(tag, "cache", f"{path}: object {md5} {local}"))
            if there is not None:
                problems.append(Problem(tag, "remote", f"{path}: object {md5} {there}"))
    problems.sort(key=lambda p: (p.tag, p.where, p.problem))
    return Audit(reg.name, len(reg.releases), len(objects), store.name if store else None, tuple(problems),
                 tuple(notes))


def _tag_problems(ws: Workspace) -> list[Problem]:
    """Tags that look like the model's but GTO and shelf both ignore (unparsable or lightweight)."""
    out = ws.repo.run("for-each-ref", "--format=%(objecttype) %(refname:strip=2)",
                      f"refs/tags/{ws.name}@*", f"refs/tags/{ws.name}#*").stdout
    found = []
    for line in out.splitlines():
        kind, _, tag = line.partition(" ")
        parsed = tags.parse_tag(tag)
        if parsed is None or parsed.name != ws.name:
            found.append(Problem(tag, "tag", "not in GTO's tag grammar: ignored by GTO and shelf", False))
        elif kind != "tag":
            found.append(Problem(tag, "tag", "a lightweight tag: GTO and shelf read annotated tags only", False))
    return found


def _messages(ws: Workspace) -> dict[str, str]:
    """Every release tag's full message, in one call."""
    out = ws.repo.run("for-each-ref", "--format=%(refname:strip=2)%00%(contents)%00",
                      f"refs/tags/{ws.name}@*").stdout
    found = {}
    for record in out.split("\0\n"):
        if "\0" in record:
            tag, _, body = record.partition("\0")
            found[tag] = body.rstrip("\0")
    return found


def _signature_problems(ws: Workspace, rel: Release, messages: dict[str, str],
                        policy: signing.TrustPolicy) -> list[Problem]:
    """The release's signature against the trust policy (the card at the tag's digests); only
    releases that are signed or must be are checked, so unsigned registries pay nothing."""
    if signing.BEGIN not in messages.get(rel.tag, "") and not policy.requires(rel.stages) \
            and policy.tag_signers is None:
        return []
    try:
        signing.check_release(ws, rel, policy=policy)
    except IntegrityError as exc:
        return [Problem(rel.tag, "signature", exc.problem)]
    return []


def _message_problems(rel: Release, messages: dict[str, str]) -> list[Problem]:
    want = ((rel.card or {}).get("artefacts") or {}).get("model", {}).get("sha256")
    found = []
    for tag in rel.tags or (rel.tag,):
        t = tags.parse_tag(tag)
        if t is None or t.kind != "release":
            continue
        for line in messages.get(tag, "").splitlines():
            if line.startswith(_MODEL_SHA):
                named = line[len(_MODEL_SHA):].strip()
                if named != want:
                    found.append(Problem(tag, "message", f"the tag names model-sha256 {named[:12]}…, "
                                                         f"the card {str(want)[:12]}…"))
    return found


def _collect(ws: Workspace, rel: Release, lock: dict[str, Any], objects: dict[str, _Object],
             store: _RemoteStore | None) -> list[Problem]:
    """Add the objects ``rel``'s card artefacts live in; problems for those the lock does not name."""
    lock_dir = PurePosixPath(ws.lock).parent
    model_dir = PurePosixPath(ws.card).parent
    outs = [(str(o.get("path", "")).rstrip("/"), str(o.get("md5") or ""))
            for stage in (lock.get("stages") or {}).values() if isinstance(stage, dict)
            for o in stage.get("outs") or [] if isinstance(o, dict)]
    found = []
    for rec in ((rel.card or {}).get("artefacts") or {}).values():
        if not isinstance(rec, dict) or "file" not in rec or "sha256" not in rec:
            continue
        repo_path = model_dir / rec["file"]
        path = str(repo_path.relative_to(lock_dir)) if str(lock_dir) != "." else str(repo_path)
        hit = next(((p, m) for p, m in outs if p == path or path.startswith(p + "/")), None)
        if hit is None or not hit[1]:
            found.append(Problem(rel.tag, "card", f"{path} is not a DVC output at this commit"))
            continue
        out_path, md5 = hit
        if out_path == path:
            _need(objects, md5, rec["sha256"], rel.tag, path)
            continue
        _need(objects, md5, None, rel.tag, out_path)  # the directory's manifest
        entry = _manifest_entry(ws.root, md5, path[len(out_path) + 1:], store)
        if entry is None:
            continue  # the manifest's own check reports it
        _need(objects, entry, rec["sha256"], rel.tag, path)
    return found


def _need(objects: dict[str, _Object], md5: str, sha256: str | None, tag: str, path: str) -> None:
    obj = objects.setdefault(md5, _Object(md5, sha256))
    if obj.sha256 is None and sha256 is not None:
        obj.sha256 = sha256
    obj.users.append((tag, path))


def _manifest_entry(root: Path, dir_md5: str, relpath: str, store: _RemoteStore | None) -> str | None:
    """The md5 of ``relpath`` in the directory manifest ``dir_md5`` (from the cache, else a
    local remote's copy); None when no copy can be read."""
    raw = None
    for path in (dvcrepo.cache_file(root, dir_md5), store.path_of(dir_md5) if store else None):
        try:
            raw = path.read_bytes() if path is not None else None
        except OSError:
            continue
        if raw is not None:
            break
    try:
        entries = json.loads(raw) if raw is not None else None
    except ValueError:
        return None
    if not isinstance(entries, list):
        return None
    return next((e.get("md5") for e in entries if isinstance(e, dict) and e.get("relpath") == relpath), None)


def _hashes(path: Path) -> tuple[str, str]:
    md5, sha = hashlib.md5(usedforsecurity=False), hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            md5.update(chunk)
            sha.update(chunk)
    return md5.hexdigest(), sha.hexdigest()


def _verdict(path: Path, obj: _Object) -> str | None:
    """None when the object at ``path`` is intact; else what is wrong with it."""
    if not path.is_file():
        return "missing"
    md5, sha = _hashes(path)
    if md5 != obj.md5.removesuffix(".dir"):
        return f"corrupt (its md5 is {md5})"
    if obj.sha256 is not None and sha != obj.sha256:
        return f"does not hash to the card's sha256 {obj.sha256[:12]}… (it is {sha[:12]}…)"
    return None


def _check_cache(root: Path, obj: _Object) -> str | None:
    return _verdict(dvcrepo.cache_file(root, obj.md5), obj)


class _RemoteStore:
    """The DVC remote, opened once through DVC's object database."""

    def __init__(self, root: Path, remote: str | None) -> None:
        self.root, self.remote = root, remote
        self.repo: Any = None
        self.odb: Any = None
        self.name = remote or ""

    def __enter__(self) -> _RemoteStore:
        from dvc.repo import Repo

        try:
            self.repo = Repo(str(self.root))
            self.name = self.remote or str(self.repo.config.get("core", {}).get("remote") or "")
            self.odb = self.repo.cloud.get_remote_odb(self.remote, "verify")
        except Exception as exc:  # noqa: BLE001 - DVC raises many kinds
            self.__exit__()
            raise RemoteError(f"DVC remote {self.name or '(default)'}",
                              f"cannot be opened ({type(exc).__name__}: {exc})".splitlines()[0],
                              "check `dvc remote list`") from None
        if self.local and not Path(self.odb.path).is_dir():
            self.__exit__()
            raise RemoteError(f"DVC remote {self.name}", f"{self.odb.path} is not reachable",
                              "check `dvc remote list` and that the path is mounted")
        return self

    def __exit__(self, *exc: object) -> None:
        if self.repo is not None:
            self.repo.close()
            self.repo = None

    @property
    def local(self) -> bool:
        return self.odb.fs.protocol == "local"

    def path_of(self, md5: str) -> Path | None:
        """Where a local remote keeps object ``md5``; None for other remotes."""
        return Path(self.odb.oid_to_path(md5)) if self.local else None

    def check(self, objects: dict[str, _Object]) -> dict[str, str | None]:
        """Per object: None (intact, or present where bytes cannot be read cheaply) or what is wrong."""
        oids = sorted(objects)
        if self.local:
            return {md5: _verdict(Path(self.odb.oid_to_path(md5)), objects[md5]) for md5 in oids}
        try:
            present = set(self.odb.list_oids_exists(oids))
        except Exception as exc:  # noqa: BLE001 - DVC and fsspec raise many kinds
            raise RemoteError(f"DVC remote {self.name or '(default)'}",
                              f"unreachable ({type(exc).__name__}: {exc})".splitlines()[0],
                              "check `dvc remote list` and the credentials") from None
        return {md5: (None if md5 in present else "missing") for md5 in oids}
