"""The registry's core: the workspace, the registry read from the git tags, creating and
fetching tags.

Release ``model@vX.Y.Z`` (annotated, GTO's format) only after the artefacts are proven to
be in the remote; stages are GTO assignment tags ``model#prod#N``; rollback is a new
assignment or a verified restore of a release's files.

The tags are read as GTO 1.x reads them (``gto.registry.GitRegistry.get_state`` and
``gto show``'s defaults: ``--sort timestamp``, one version per stage); see :class:`Registry`.
Where this differs from GTO, on purpose or because GTO cannot answer:

- events in the same second: GTO orders them by its tag listing (by name), shelf by the
  ``#N`` counter; :func:`create_tag` never dates two events of a model in one second;
- ``--vs``/``--av`` (several versions per stage) and ``--sort semver`` are not modelled;
- ``name@created`` tags are ignored (GTO fails on them), and a commit registered as several
  versions is read through the assignment message's version (GTO refuses it), with a warning;
- ``dvc artifacts get --stage`` reads only the newest tag of the stage, unassignments and
  deregistrations aside: :attr:`Registry.problems` says when that would fetch another version.
"""

from __future__ import annotations

import gc
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from modelshelf import tags
from modelshelf.card import CARD_FILE, REQUIRED, SCHEMA_VERSION, parse_card
from modelshelf.errors import ConfigError, GitError, IntegrityError
from modelshelf.gitrepo import GitRepo, TagRecord
from modelshelf.tags import SemVer

if TYPE_CHECKING:
    import subprocess


@dataclass(frozen=True)
class Workspace:
    """Where the model lives in this project, from dvc.yaml's ``artifacts:``."""

    root: Path
    repo: GitRepo
    name: str
    model: str   # repo-relative path of the joblib file
    card: str    # repo-relative path of card.json
    lock: str    # repo-relative path of dvc.lock

    @classmethod
    def open(cls, start: str | Path = ".") -> Workspace:
        """The workspace of the project containing ``start``."""
        root = _project_root(Path(start))
        repo = GitRepo.discover(root)
        name, model_path = _model_artifact(root)
        model = repo.relpath(root / model_path)
        return cls(root, repo, name, model, str(PurePosixPath(model).parent / CARD_FILE),
                   repo.relpath(root / "dvc.lock"))


_ARTIFACT_CACHE = ".dvc/tmp/shelf-artifact.json"


def _project_root(start: Path) -> Path:
    """:func:`modelshelf.project.find_root`, without importing that module (nor, through it,
    importlib.resources): every ``shelf`` registry command starts here."""
    here = start.resolve()
    for cand in (here, *here.parents):
        if (cand / "dvc.yaml").is_file():
            return cand
    from modelshelf.project import find_root

    return find_root(start)  # raises its ConfigError


def _model_artifact(root: Path) -> tuple[str, str]:
    """:func:`modelshelf.project.model_artifact`, remembered in DVC's scratch directory per
    state of dvc.yaml (size, mtime, inode): parsing it costs the YAML import, a tenth of a
    short ``shelf versions``."""
    import os

    try:
        st = (root / "dvc.yaml").stat()
        key = [st.st_size, st.st_mtime_ns, st.st_ino]
    except OSError:
        key = None
    cache = root / _ARTIFACT_CACHE
    if key is not None:
        try:
            data = json.loads(cache.read_bytes())
            if data.get("key") == key and isinstance(data.get("name"), str) and isinstance(data.get("path"), str):
                return data["name"], data["path"]
        except (OSError, ValueError, AttributeError):
            pass
    from modelshelf.project import model_artifact

    name, path = model_artifact(root)
    if key is not None and cache.parent.is_dir():
        tmp = cache.with_name(f"{cache.name}.{os.getpid()}.tmp")
        try:
            tmp.write_text(json.dumps({"key": key, "name": name, "path": path}), encoding="utf-8")
            os.replace(tmp, cache)
        except OSError:  # a read-only project: no cache, same answer
            tmp.unlink(missing_ok=True)
    return name, path


@dataclass(frozen=True)
class Release:
    """One released version ``name@vX.Y.Z``, its card, the stages it holds, and whether it is deprecated.

    ``tag``, ``date``, ``timestamp`` and ``author`` are those of the version's newest
    registration tag (GTO's "ref"/"created_at"); ``problem`` says why the release must not
    be used (its card is missing, unreadable or names another version), else None.
    """

    name: str
    version: SemVer
    tag: str
    commit: str
    date: str
    timestamp: int
    author: str
    card: dict[str, Any] | None
    stages: tuple[str, ...] = ()
    deprecated: bool = False
    problem: str | None = None
    tags: tuple[str, ...] = ()   # every registration and deregistration tag of this version, oldest first

    def summary(self) -> dict[str, Any]:
        """The row ``shelf versions --json`` prints."""
        metrics = (self.card or {}).get("metrics", {})
        return {"version": f"v{self.version}", "tag": self.tag, "commit": self.commit,
                "date": self.date, "author": self.author, "metrics": metrics,
                "stages": list(self.stages), "deprecated": self.deprecated,
                "gate_passed": bool((self.card or {}).get("gate", {}).get("passed")),
                "warning": self.problem}


@dataclass(frozen=True)
class Assignment:
    """One stage event: assignment tag ``name#stage#N``, or an unassignment ``name#stage!#N``.

    GTO knows the version of a stage event only by the tag's commit: ``at`` is the release
    registered at that commit (None when none is).  ``version`` is ``at`` for an assignment
    and None for an unassignment.
    """

    stage: str
    version: SemVer | None   # None for an unassignment (or an assignment of an unreleased commit)
    tag: str
    commit: str
    timestamp: int
    number: int
    kind: str = "assign"     # "assign" or "unassign"
    at: SemVer | None = None

    def to_json(self) -> dict[str, Any]:
        """The event as ``shelf promote --json`` and ``shelf rollback --stage --json`` print it."""
        return {"stage": self.stage, "version": None if self.version is None else f"v{self.version}",
                "tag": self.tag, "commit": self.commit, "kind": self.kind, "number": self.number}


@dataclass(frozen=True)
class Registry:
    """A model's releases and stage events, as read from the git tags, with GTO's semantics.

    - a version is live when its newest registration is newer than its newest
      deregistration (a tie counts as deregistered);
    - a stage is held by the live version whose newest assignment to it is newest among the
      versions whose own newest event for that stage is an assignment; an unassignment
      therefore hands the stage back to the previous holder, and deregistering the holder
      does the same (GTO's default, one version per stage: ``gto show`` with ``--vs 1``);
    - the artefact is deprecated (``name@deprecated``) while its deprecation is newer than
      every other event of it, the commit times of its versions included; any later event
      re-creates it, with every version and stage as they were.
    """

    name: str
    releases: tuple[Release, ...]          # ascending SemVer
    assignments: tuple[Assignment, ...]    # oldest first: tagger time, then #N
    tag_names: tuple[str, ...] = field(default_factory=tuple)
    last_event: int = 0   # newest tagger time among this model's tags (seconds)
    deprecated: bool = False               # the whole artefact (``name@deprecated``)
    deprecation_tag: str | None = None
    holders: Mapping[str, str] = field(default_factory=dict)   # stage → "vX.Y.Z", or a commit GTO shows
    problems: tuple[str, ...] = ()         # registry-level warnings (GTO or DVC would read it otherwise)

    def find(self, spec: str, *, check: bool = True) -> Release:
        """A release by ``vX.Y.Z``/``X.Y.Z``, ``latest`` (highest live version) or a stage name.

        Args:
            spec: the version, ``latest`` or a stage.
            check: refuse a release whose card does not back its tag (set False only to
                inspect or retire such a tag).

        Returns:
            The release.

        Raises:
            ConfigError: nothing matches ``spec``, or the artefact is deprecated and ``spec``
                is ``latest`` or a stage.
            IntegrityError: the release's card is missing or names another version.
        """
        rel = self._resolve(spec)
        if check and rel.problem:
            raise IntegrityError(rel.tag, rel.problem, "do not use this release; see `shelf versions` "
                                                       "and `shelf verify --all`")
        return rel

    def _resolve(self, spec: str) -> Release:
        if SemVer.is_valid(spec):
            want = SemVer.parse(spec)
            for r in self.releases:
                if r.version == want:
                    return r
            raise ConfigError(spec, f"no release {tags.release_tag(self.name, want)}",
                              "see `shelf versions` for the released versions")
        if self.deprecated:
            raise ConfigError(spec, f"'{self.name}' is deprecated ({self.deprecation_tag}): no 'latest' and "
                              "no stages", "name a version, or release or promote one to re-create it")
        if spec == "latest":
            live = [r for r in self.releases if not r.deprecated]
            if not live:
                raise ConfigError("latest", f"no release of '{self.name}' yet", "run `shelf release` first")
            return live[-1]
        held = self.holder(spec)
        if held is None:
            commit = self.holders.get(spec)
            if commit is not None:
                raise ConfigError(spec, f"GTO assigns it to commit {commit[:12]}, which has no release tag",
                                  f"promote a released version: `shelf promote VERSION --to {spec}`")
            raise ConfigError(spec, "not a version, 'latest', or a stage holding a version",
                              "see `shelf versions`")
        return held

    def stage_history(self, stage: str) -> list[Assignment]:
        """The assignments and unassignments of ``stage``, oldest first."""
        return [a for a in self.assignments if a.stage == stage]

    def previous_holder(self, stage: str) -> Release | None:
        """The release that held ``stage`` before its holder took it, as GTO read the stage
        after each of its events (None: none did).

        Releases deprecated since, or whose card does not back their tag, are passed over,
        further back.  After a GTO unassignment the holder is the one before, and the
        unassigned version is what it held before: rolling back twice toggles, as it does
        after two promotions.
        """
        usable = {r.version: r for r in self.releases if not r.deprecated and not r.problem}
        last: dict[SemVer, Assignment] = {}
        timeline: list[SemVer | None] = []
        for event in self.stage_history(stage):   # oldest first
            if event.at is not None:
                last[event.at] = event
            live = [(a.timestamp, a.number, v) for v, a in last.items() if a.kind == "assign" and v in usable]
            held = max(live, key=lambda t: (t[0], t[1]))[2] if live else None
            if not timeline or timeline[-1] != held:
                timeline.append(held)
        current = self.holder(stage)
        now = current.version if current is not None else None
        for held in reversed(timeline):
            if held is not None and held != now:
                return usable[held]
        return None

    def holder(self, stage: str) -> Release | None:
        """The release holding ``stage`` as GTO reads it (None: no release holds it)."""
        held = self.holders.get(stage)
        if held is None or not held.startswith("v"):
            return None
        want = SemVer.parse(held)
        return next((r for r in self.releases if r.version == want), None)


@dataclass
class _Version:
    """GTO's ``Version``: the events of one (version name, commit)."""

    name: str              # "v1.2.0", or the commit sha for a version GTO discovers from a stage tag
    commit: str
    order: int             # creation order (GTO's ``artifact.versions`` list)
    semver: SemVer | None = None   # None for a discovered version
    registrations: list[TagRecord] = field(default_factory=list)
    deregistrations: list[TagRecord] = field(default_factory=list)
    stages: dict[str, list[tuple[int, bool, TagRecord]]] = field(default_factory=dict)  # (ts, assign?, tag)

    @property
    def discovered(self) -> bool:
        return not (self.registrations or self.deregistrations)

    @property
    def active(self) -> bool:
        if self.discovered:
            return True
        newest = max(r.timestamp for r in self.registrations + self.deregistrations)
        # sorted(registrations + deregistrations)[::-1][0]: on a tie a deregistration wins
        return not any(d.timestamp == newest for d in self.deregistrations)

    @property
    def created(self) -> int:
        if self.registrations:
            return max(r.timestamp for r in self.registrations)
        return max((ts for events in self.stages.values() for ts, _, _ in events), default=0)

    def stage_since(self, stage: str) -> int | None:
        """When ``stage`` became active on this version (its newest assignment), None if inactive."""
        events = self.stages.get(stage)
        if not events:
            return None
        newest = max(ts for ts, _, _ in events)
        if any(ts == newest and not assign for ts, assign, _ in events):
            return None  # an unassignment at least as new as every assignment
        return newest


def open_registry(ws: Workspace, *, fetch: bool = False, git_remote: str | None = None) -> Registry:
    """Every release and stage event of the model, from one tag listing and one batch read.

    A shallow clone, or a clone without any tag of the model, is checked against its git
    remote (``git ls-remote``, read-only): when the remote has release or stage tags this
    clone lacks, they are fetched (``fetch=True``: writing commands) or a :class:`GitError`
    says what to run (reading commands), so "no releases" never means "not fetched".

    Args:
        ws: the workspace.
        fetch: fetch missing tags (and, in a shallow clone, the history) from the remote.
        git_remote: the remote to compare with (default: the branch's upstream, else origin).

    Returns:
        The registry.

    Raises:
        GitError: tags are missing and ``fetch`` is False, or the fetch failed, or a shallow
            clone's remote cannot be asked.
    """
    # Thousands of tags and cards stay alive while they are read: the cyclic GC would rescan
    # them on every generation-2 pass (a third of the time at 10,000 releases), finding nothing.
    collecting = gc.isenabled()
    gc.disable()
    try:
        records = ws.repo.tag_records()
        parsed = [(rec, tags.parse_tag(rec.name)) for rec in records]
        mine = [(rec, t) for rec, t in parsed if t is not None and t.name == ws.name]
        shallow = ws.repo.is_shallow()
        if (shallow or not mine) and _complete(ws, {rec.name for rec, _ in mine}, shallow, fetch, git_remote):
            return open_registry(ws, fetch=False, git_remote=git_remote)
        return _read(ws, records, mine)
    finally:
        if collecting:
            gc.enable()


def _complete(ws: Workspace, have: set[str], shallow: bool, fetch: bool, git_remote: str | None) -> bool:
    """Compare this clone's tags of the model with the remote's; True when it fetched some."""
    remote = git_remote or ws.repo.default_remote()
    if remote is None:
        return False  # nowhere else the tags could be
    theirs = ws.repo.remote_tags(remote, (f"{ws.name}@*", f"{ws.name}#*"))
    if theirs is None:
        if shallow and not have:
            raise GitError("shallow clone", f"no tags of '{ws.name}' here and {remote} cannot be asked",
                           f"run `git fetch --unshallow --tags {remote}`")
        return False
    if theirs - have:  # lightweight tags count as present: GTO ignores them as we do
        have = have | set(ws.repo.run("for-each-ref", "--format=%(refname:strip=2)", f"refs/tags/{ws.name}@*",
                                      f"refs/tags/{ws.name}#*").stdout.split())
    missing = sorted(t for t in theirs - have if (p := tags.parse_tag(t)) is not None and p.name == ws.name)
    if not missing:
        return False
    if not fetch:
        what = f"{len(missing)} tag(s) of '{ws.name}' on {remote} are not in this clone (e.g. {missing[0]})"
        if shallow:
            raise GitError("shallow clone", what, f"run `git fetch --unshallow --tags {remote}`")
        raise GitError("tags not fetched", what, f"run `git fetch --tags {remote}`")
    ws.repo.fetch_history(remote)
    return True


def _read(ws: Workspace, records: list[TagRecord], mine: list[tuple[TagRecord, tags.Tag]]) -> Registry:
    # Mirrors gto.registry.GitRegistry.get_state: artefact tags, then version tags, then stage
    # tags, each sorted by tagger time (stably: for-each-ref lists by name, as GTO's list_tags).
    by_time = sorted(mine, key=lambda rt: rt[0].timestamp)
    versions: list[_Version] = []
    problems: list[str] = []
    keyed: dict[tuple[str, str], _Version] = {}
    at: dict[str, list[_Version]] = {}   # commit → the versions registered there
    for rec, t in by_time:
        if t.kind not in ("release", "deregister"):
            continue
        name = f"v{t.version}"
        v = keyed.get((name, rec.commit))
        if v is None:
            v = keyed[name, rec.commit] = _Version(name, rec.commit, len(versions), t.version)
            versions.append(v)
            at.setdefault(rec.commit, []).append(v)
        (v.registrations if t.kind == "release" else v.deregistrations).append(rec)
    registered = list(versions)
    assignments: list[Assignment] = []
    for rec, t in by_time:
        if t.kind not in ("assign", "unassign"):
            continue
        at_commit = at.get(rec.commit, [])
        if len(at_commit) > 1:
            named = ", ".join(x.name for x in at_commit)
            problems.append(f"{rec.name} points at a commit registered as several versions ({named}); "
                            "GTO refuses to read such a registry")
            words = rec.subject.split()
            at_commit = [x for x in at_commit if words and x.name == words[-1]] or at_commit[-1:]
        if at_commit:
            v = at_commit[0]
        else:  # GTO "discovers" a version named by the commit, once per such tag
            v = _Version(rec.commit, rec.commit, len(versions))
            versions.append(v)
        assign = t.kind == "assign"
        v.stages.setdefault(t.stage or "", []).append((rec.timestamp, assign, rec))
        version = v.semver
        assignments.append(Assignment(t.stage or "", version if assign else None, rec.name, rec.commit,
                                      rec.timestamp, t.number or 0, t.kind, version))
    assignments.sort(key=lambda a: (a.timestamp, a.number))

    # Each stage: the live version whose active assignment is newest (GTO's get_vstages with
    # sort=timestamp, versions_per_stage=1; on a tie, the version registered earlier).
    holders: dict[str, str] = {}
    best: dict[str, tuple[int, int, int]] = {}
    for v in versions:
        if not v.active:
            continue
        for stage in v.stages:
            since = v.stage_since(stage)
            if since is None:
                continue
            key = (since, -v.created, -v.order)
            if stage not in best or key > best[stage]:
                best[stage], holders[stage] = key, v.name

    deprecated, deprecation_tag = _artifact_deprecated(ws, mine, versions)
    releases = _releases(ws, registered, holders)
    for stage in sorted({a.stage for a in assignments}):
        dvc_says, held = _dvc_stage_commit(mine, stage), holders.get(stage)
        rel = next((r for r in releases if f"v{r.version}" == held), None)
        if dvc_says is not None and dvc_says != (rel.commit if rel else held):
            problems.append(f"stage {stage}: `dvc artifacts get --stage {stage}` would fetch commit "
                            f"{dvc_says[:12]} (it reads only the newest {ws.name}#{stage} tag) but GTO and "
                            f"shelf say {held or 'no version'}"
                            + (f"; `shelf promote {held} --to {stage}` makes them agree" if rel else ""))
    return Registry(ws.name, tuple(releases), tuple(assignments), tuple(r.name for r in records),
                    max((rec.timestamp for rec, _ in mine), default=0), deprecated, deprecation_tag,
                    holders, tuple(problems))


def _artifact_deprecated(ws: Workspace, mine: list[tuple[TagRecord, tags.Tag]],
                         versions: list[_Version]) -> tuple[bool, str | None]:
    """GTO's ``Artifact.is_active``: is the newest event a deprecation?"""
    deprecations = [rec for rec, t in mine if t.kind == "deprecate"]
    if not deprecations:
        return False, None
    newest = max(deprecations, key=lambda r: r.timestamp)
    others = [rec.timestamp for rec, t in mine if t.kind not in ("deprecate", "create")]
    # GTO also counts each version's commit ("enrichment" event, at the committer time).
    others += ws.repo.commit_times([v.commit for v in versions]).values()
    # On a tie another event is newer in GTO's order: the artefact stays active.
    return newest.timestamp > max(others, default=-1), newest.name


def _dvc_stage_commit(mine: list[tuple[TagRecord, tags.Tag]], stage: str) -> str | None:
    """What ``dvc artifacts get --stage`` fetches: the commit of the newest tag of the stage
    (assignment or unassignment alike), by tagger time."""
    events = [rec for rec, t in mine if t.kind in ("assign", "unassign") and t.stage == stage]
    return max(events, key=lambda r: r.timestamp).commit if events else None  # max keeps the first on ties


def _releases(ws: Workspace, registered: list[_Version], holders: dict[str, str]) -> list[Release]:
    versions = [v for v in registered if v.registrations]
    cards = ws.repo.show_many([f"{v.commit}:{ws.card}" for v in versions])
    decode = _decoder(len(cards))
    seen: dict[SemVer, _Version] = {}
    releases = []
    for v, raw in zip(versions, cards, strict=True):
        version = v.semver
        assert version is not None
        newest = max(v.registrations, key=lambda r: r.timestamp)
        card, problem = _card_check(raw, f"{newest.name}:{ws.card}", version, decode)
        if version in seen:
            other = seen[version]
            problem = (f"v{version} is registered at two commits ({other.commit[:12]}, {v.commit[:12]}); "
                       "GTO refuses to read it")
            releases = [replace(r, problem=r.problem or problem) if r.version == version else r
                        for r in releases]
            continue
        seen[version] = v
        held = tuple(sorted(s for s, name in holders.items() if name == v.name))
        every = sorted(v.registrations + v.deregistrations, key=lambda r: r.timestamp)
        releases.append(Release(ws.name, version, newest.name, v.commit, newest.date, newest.timestamp,
                                newest.tagger, card, held, not v.active, problem,
                                tuple(r.name for r in every)))
    releases.sort(key=lambda r: r.version)
    return releases


def _card_check(raw: bytes | None, where: str, version: SemVer,
                decode: Callable[[bytes], Any]) -> tuple[dict[str, Any] | None, str | None]:
    """The card and, when it does not back the tag, why."""
    if raw is None:
        return None, f"no {where.split(':', 1)[1]} at this commit"
    card = _card_or_none(raw, where, decode)
    if card is None:
        return None, "the card at this commit is unreadable"
    said = str(card.get("version"))
    if not SemVer.is_valid(said) or SemVer.parse(said) != version:
        return card, f"the tag says v{version} but the card at its commit says version {said}"
    return card, None


def _decoder(count: int) -> Callable[[bytes], Any]:
    """orjson for many cards (the standard parser is most of the time of listing 10,000
    releases), the already imported json for a few (orjson's import costs more than it saves)."""
    if count < 300:
        return json.loads
    import orjson

    return orjson.loads


def _card_or_none(raw: bytes | None, where: str,
                  decode: Callable[[bytes], Any] = json.loads) -> dict[str, Any] | None:
    """The card, or None when unreadable.  Anything ``decode`` refuses or that fails the card
    checks goes through :func:`parse_card` (orjson refuses the NaN metrics json accepts)."""
    if raw is None:
        return None
    try:
        data = decode(raw)
    except ValueError:  # orjson.JSONDecodeError is a ValueError
        data = None
    if isinstance(data, dict) and _looks_valid(data):
        return data
    try:
        return parse_card(raw, where)
    except Exception:  # noqa: BLE001 - an unreadable old card must not hide the other releases
        return None


def _looks_valid(card: dict[str, Any]) -> bool:
    """What :func:`modelshelf.card.parse_card` checks, on a decoded card."""
    if any(k not in card for k in REQUIRED) or card["schema_version"] != SCHEMA_VERSION:
        return False
    model = card["artefacts"].get("model") if isinstance(card["artefacts"], dict) else None
    return isinstance(model, dict) and {"file", "sha256"} <= set(model)


# --- tags -----------------------------------------------------------------------------------


def create_tag(ws: Workspace, reg: Registry, name: str, message: str, commit: str,
               check: bool = True, signed: Sequence[str] | None = None) -> subprocess.CompletedProcess[str]:
    """Create annotated tag ``name``, dated strictly after the model's previous event.

    GTO orders events by tagger time at one-second resolution and ignores ``#N``; two
    events in one second would otherwise be ordered differently by GTO and by us.
    ``signed``: sign the tag (``git tag -s``) with these git options before ``tag`` (``[]``:
    git's own signing configuration; see :func:`modelshelf.registry.signing.tag_preflight`).
    """
    import time

    when = max(int(time.time()), reg.last_event + 1)
    options, flag = ([], "-a") if signed is None else (list(signed), "-s")
    return ws.repo.run(*options, "tag", flag, name, "-m", message, commit, check=check,
                       env={"GIT_COMMITTER_DATE": f"{when} +0000"})


def fetch_tags(ws: Workspace, git_remote: str) -> None:
    """``git fetch --tags`` from ``git_remote``; a refusal is a :class:`GitError`."""
    proc = ws.repo.run("fetch", "-q", "--tags", git_remote, check=False)
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines()
        raise GitError(f"git fetch --tags {git_remote}", lines[-1] if lines else "failed",
                       "fix the remote or the clashing local tag (`git tag -d NAME`), then retry")
