"""The registry's core: the workspace, the registry read from the git tags, creating and
fetching tags.

Release ``model@vX.Y.Z`` (annotated, GTO's format) only after the artefacts are proven to
be in the remote; stages are GTO assignment tags ``model#prod#N``; rollback is a new
assignment or a verified restore of a release's files.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from modelshelf import tags
from modelshelf.card import CARD_FILE, parse_card
from modelshelf.errors import ConfigError, GitError
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
        from modelshelf.project import find_root, model_artifact

        root = find_root(start)
        repo = GitRepo.discover(root)
        name, model_path = model_artifact(root)
        model = repo.relpath(root / model_path)
        return cls(root, repo, name, model, str(PurePosixPath(model).parent / CARD_FILE),
                   repo.relpath(root / "dvc.lock"))


@dataclass(frozen=True)
class Release:
    """One release tag ``name@vX.Y.Z``, its card, the stages it holds, and whether it is deprecated."""

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

    def summary(self) -> dict[str, Any]:
        """The row ``shelf versions --json`` prints."""
        metrics = (self.card or {}).get("metrics", {})
        return {"version": f"v{self.version}", "tag": self.tag, "commit": self.commit,
                "date": self.date, "author": self.author, "metrics": metrics,
                "stages": list(self.stages), "deprecated": self.deprecated,
                "gate_passed": bool((self.card or {}).get("gate", {}).get("passed"))}


@dataclass(frozen=True)
class Assignment:
    """One stage event: assignment tag ``name#stage#N``, or an unassignment."""

    stage: str
    version: SemVer | None   # None for an unassignment
    tag: str
    commit: str
    timestamp: int
    number: int


@dataclass(frozen=True)
class Registry:
    """A model's releases and stage events, as read from the git tags."""

    name: str
    releases: tuple[Release, ...]          # ascending SemVer
    assignments: tuple[Assignment, ...]    # oldest first
    tag_names: tuple[str, ...] = field(default_factory=tuple)
    last_event: int = 0   # newest tagger time among this model's tags (seconds)

    def find(self, spec: str) -> Release:
        """A release by ``vX.Y.Z``/``X.Y.Z``, ``latest`` (highest live version) or a stage name."""
        live = [r for r in self.releases if not r.deprecated]
        if spec == "latest":
            if not live:
                raise ConfigError("latest", f"no release of '{self.name}' yet", "run `shelf release` first")
            return live[-1]
        if SemVer.is_valid(spec):
            want = SemVer.parse(spec)
            for r in self.releases:
                if r.version == want:
                    return r
            raise ConfigError(spec, f"no release {tags.release_tag(self.name, want)}",
                              "see `shelf versions` for the released versions")
        held = self.holder(spec)
        if held is None:
            raise ConfigError(spec, "not a version, 'latest', or a stage holding a version",
                              "see `shelf versions`")
        return held

    def stage_history(self, stage: str) -> list[Assignment]:
        """The assignments and unassignments of ``stage``, oldest first."""
        return [a for a in self.assignments if a.stage == stage]

    def holder(self, stage: str) -> Release | None:
        """The version the newest assignment gave ``stage``, skipping deprecated ones (as GTO does)."""
        live = {r.version: r for r in self.releases if not r.deprecated}
        for a in reversed(self.stage_history(stage)):
            if a.version is None:
                return None  # unassigned
            if a.version in live:
                return live[a.version]
        return None


def open_registry(ws: Workspace) -> Registry:
    """Every release and stage event of the model, from one tag listing and one batch read."""
    records = ws.repo.tag_records()
    parsed = [(rec, tags.parse_tag(rec.name)) for rec in records]
    mine = [(rec, t) for rec, t in parsed if t is not None and t.name == ws.name]
    rel = [(rec, t) for rec, t in mine if t.kind == "release"]
    deregistered = {t.version for _, t in mine if t.kind == "deregister"}
    cards = ws.repo.show_many([f"{rec.commit}:{ws.card}" for rec, _ in rel])
    by_commit: dict[str, list[SemVer]] = {}
    for rec, t in rel:
        by_commit.setdefault(rec.commit, []).append(t.version)  # type: ignore[arg-type]
    assignments = sorted(
        (Assignment(t.stage or "", _assigned_version(rec, by_commit) if t.kind == "assign" else None,
                    rec.name, rec.commit, rec.timestamp, t.number or 0)
         for rec, t in mine if t.kind in ("assign", "unassign")),
        key=lambda a: (a.timestamp, a.number))
    current: dict[str, SemVer | None] = {}
    for a in assignments:
        if a.version is None or a.version not in deregistered:
            current[a.stage] = a.version
    releases = []
    for (rec, t), raw in zip(rel, cards, strict=True):
        card = _card_or_none(raw, f"{rec.name}:{ws.card}")
        held = tuple(sorted(s for s, v in current.items() if v == t.version))
        releases.append(Release(ws.name, t.version, rec.name, rec.commit, rec.date,  # type: ignore[arg-type]
                                rec.timestamp, rec.tagger, card, held, t.version in deregistered))
    releases.sort(key=lambda r: r.version)
    return Registry(ws.name, tuple(releases), tuple(assignments), tuple(r.name for r in records),
                    max((rec.timestamp for rec, _ in mine), default=0))


def _assigned_version(rec: TagRecord, by_commit: dict[str, list[SemVer]]) -> SemVer | None:
    words = rec.subject.split()
    if words and words[-1].startswith("v") and SemVer.is_valid(words[-1]):
        return SemVer.parse(words[-1])
    versions = by_commit.get(rec.commit)
    return max(versions) if versions else None


def _card_or_none(raw: bytes | None, where: str) -> dict[str, Any] | None:
    if raw is None:
        return None
    try:
        return parse_card(raw, where)
    except Exception:  # noqa: BLE001 - an unreadable old card must not hide the other releases
        return None


# --- tags -----------------------------------------------------------------------------------


def create_tag(ws: Workspace, reg: Registry, name: str, message: str, commit: str,
               check: bool = True) -> subprocess.CompletedProcess[str]:
    """Create annotated tag ``name``, dated strictly after the model's previous event.

    GTO orders events by tagger time at one-second resolution and ignores ``#N``; two
    events in one second would otherwise be ordered differently by GTO and by us.
    """
    import time

    when = max(int(time.time()), reg.last_event + 1)
    return ws.repo.run("tag", "-a", name, "-m", message, commit, check=check,
                       env={"GIT_COMMITTER_DATE": f"{when} +0000"})


def fetch_tags(ws: Workspace, git_remote: str) -> None:
    """``git fetch --tags`` from ``git_remote``; a refusal is a :class:`GitError`."""
    proc = ws.repo.run("fetch", "-q", "--tags", git_remote, check=False)
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines()
        raise GitError(f"git fetch --tags {git_remote}", lines[-1] if lines else "failed",
                       "fix the remote or the clashing local tag (`git tag -d NAME`), then retry")
