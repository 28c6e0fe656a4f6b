"""A model registry with no server: git tags are the registry, the DVC remote holds the bytes.

Release ``model@vX.Y.Z`` (annotated, GTO's format) only after the artefacts are proven to
be in the remote; stages are GTO assignment tags ``model#prod#N``; rollback is a new
assignment or a verified restore of a release's files.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from modelshelf import artefacts, remote, tags
from modelshelf.card import CARD_FILE, parse_card
from modelshelf.errors import ConfigError, GateFailed, GitError, ReleaseRefused
from modelshelf.gitrepo import GitRepo, TagRecord
from modelshelf.params import load_params
from modelshelf.tags import SemVer

RENUMBER_HINT = "run `shelf release --renumber` (add --push to publish) to take the next free version"


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
        from modelshelf.project import find_root, model_artifact

        root = find_root(start)
        repo = GitRepo.discover(root)
        name, model_path = model_artifact(root)
        model = repo.relpath(root / model_path)
        return cls(root, repo, name, model, str(PurePosixPath(model).parent / CARD_FILE),
                   repo.relpath(root / "dvc.lock"))


@dataclass(frozen=True)
class Release:
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
        metrics = (self.card or {}).get("metrics", {})
        return {"version": f"v{self.version}", "tag": self.tag, "commit": self.commit,
                "date": self.date, "author": self.author, "metrics": metrics,
                "stages": list(self.stages), "deprecated": self.deprecated,
                "gate_passed": bool((self.card or {}).get("gate", {}).get("passed"))}


@dataclass(frozen=True)
class Assignment:
    stage: str
    version: SemVer | None   # None for an unassignment
    tag: str
    commit: str
    timestamp: int
    number: int


@dataclass(frozen=True)
class Registry:
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


# --- release --------------------------------------------------------------------------------


def _check_releasable(ws: Workspace) -> dict[str, Any]:
    """The workspace card, once the tree, gate, metrics, lock and model all agree."""
    from modelshelf.project import stage_options

    if ws.repo.is_dirty():
        raise ReleaseRefused(str(ws.root), "the working tree has uncommitted changes",
                             "commit (or stash) them, then release")
    card_path = ws.repo.root / ws.card
    card = parse_card(card_path.read_bytes(), ws.card) if card_path.is_file() else None
    if card is None:
        raise ReleaseRefused(ws.card, "no model card", "run `dvc repro` and commit its outputs")
    opts = stage_options(ws.root, "gate")
    gate_path, metrics_path = ws.root / opts["out"], ws.root / opts["metrics"]
    try:
        report = json.loads(gate_path.read_text())
        metrics = json.loads(metrics_path.read_text())
    except (OSError, ValueError):
        raise ReleaseRefused(opts["out"], "no readable gate report or metrics", "run `dvc repro`") from None
    if report.get("passed") is not True or not card.get("gate", {}).get("passed"):
        raise GateFailed(opts["out"], "the gate did not pass for this model", "only gated models are released")
    if report.get("metrics_sha256") != artefacts.sha256_file(metrics_path) or card.get("metrics") != metrics:
        raise ReleaseRefused(opts["out"], "the gate report, metrics and card disagree (stale gate)",
                             "run `dvc repro` and commit its outputs")
    changes = remote.pipeline_changes(ws.root)
    if changes:
        raise ReleaseRefused("dvc.lock", f"the pipeline is not up to date ({', '.join(sorted(changes))} changed)",
                             "run `dvc repro` and commit its outputs")
    for rec in card["artefacts"].values():
        artefacts.verify(ws.repo.root / PurePosixPath(ws.card).parent / rec["file"], rec["sha256"], "the card's")
    return card


def _tag_message(ws: Workspace, version: SemVer, card: dict[str, Any]) -> str:
    lines = [tags.release_message(ws.name, version), ""]

    def num(v: Any) -> str:
        return "none" if v is None else f"{v:.6g}"

    for metric, check in card.get("gate", {}).get("checks", {}).items():
        lines.append(f"{metric}: {num(check.get('value'))} (threshold {num(check.get('threshold'))}, "
                     f"baseline {num(check.get('baseline'))}, {'passed' if check.get('passed') else 'failed'})")
    base = card.get("gate", {}).get("baseline", {})
    lines.append(f"gate: passed; baseline {base.get('rev')} {base.get('commit') or '(none)'}")
    lines.append(f"model-sha256: {card['artefacts']['model']['sha256']}")
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class Released:
    tag: str
    version: SemVer
    commit: str
    pushed: bool
    renumbered_from: SemVer | None = None
    already: bool = False


def _renumber(ws: Workspace, card: dict[str, Any], taken: SemVer) -> SemVer:
    """Rewrite the card to the next free version, refresh dvc.lock, and commit."""
    bump = str(card.get("version_bump", "minor")).split(":")[0]
    part = bump if bump in ("major", "minor", "patch") else "minor"
    new = taken.bump(part)
    old = card["version"]
    card = {**card, "version": str(new),
            "version_bump": f"{part}: renumbered from {old} after v{taken} was released"}
    artefacts.write_json(ws.repo.root / ws.card, card)
    proc = remote.dvc(ws.root, "commit", "-f", "-q", "serialise")
    if proc.returncode != 0:
        raise ReleaseRefused("dvc commit", remote.last_line(proc), "fix the pipeline, then retry")
    ws.repo.run("add", ws.card, ws.lock)
    ws.repo.run("commit", "-q", "-m", f"Renumber {ws.name} v{old} → v{new}")
    return new


def release(start: str | Path = ".", *, push: bool = False, git_remote: str = "origin",
            dvc_remote: str | None = None, renumber: bool = False,
            skip_released: bool = False) -> Released:
    """Release the workspace model: push to the DVC remote, prove it is there, tag, optionally push.

    No tag is created unless every output is in the DVC remote.  With ``skip_released``, a
    model already released (same sha256) is reported, not refused: what CI on main wants.
    """
    ws = Workspace.open(start)
    card = _check_releasable(ws)
    if push:
        _fetch_tags(ws, git_remote)
    reg = open_registry(ws)
    model_sha = card["artefacts"]["model"]["sha256"]
    same = [r for r in reg.releases if (r.card or {}).get("artefacts", {}).get("model", {}).get("sha256") == model_sha]
    if same and skip_released:
        return Released(same[-1].tag, same[-1].version, same[-1].commit, False, already=True)
    version = SemVer.parse(card["version"])
    highest = max((r.version for r in reg.releases), default=None)
    renumbered_from = None
    if highest is not None and version <= highest:
        if not renumber:
            problem = (f"v{version} already exists" if any(r.version == version for r in reg.releases)
                       else f"v{version} is not above the highest release v{highest}")
            raise ReleaseRefused(tags.release_tag(ws.name, version), problem, RENUMBER_HINT)
        renumbered_from, version = version, _renumber(ws, card, highest)
        card = _check_releasable(ws)
    remote.push(ws.root, dvc_remote)
    missing = remote.missing_in_remote(ws.root, dvc_remote)
    card_dir = ws.repo.root / PurePosixPath(ws.card).parent
    # `dvc status -c` trusts directory manifests; prove each released file's own object is there.
    missing += remote.missing_objects(ws.root, [card_dir / rec["file"] for rec in card["artefacts"].values()],
                                      dvc_remote)
    if missing:
        raise ReleaseRefused("dvc remote", f"{len(missing)} output(s) missing after push: {missing[0]}",
                             "check the remote, then `dvc push` and retry")
    tag = tags.release_tag(ws.name, version)
    commit = ws.repo.head() or ""
    made = _tag(ws, reg, tag, _tag_message(ws, version, card), commit, check=False)
    if made.returncode != 0:
        raise ReleaseRefused(tag, "the tag already exists", RENUMBER_HINT)
    if push:
        refs = [f"refs/tags/{tag}"]
        branch = ws.repo.run("rev-parse", "--abbrev-ref", "HEAD").stdout.strip()
        upstream = f"{git_remote}/{branch}"
        published = branch != "HEAD" and ws.repo.resolve(upstream) is not None and ws.repo.run(
            "merge-base", "--is-ancestor", "HEAD", upstream, check=False).returncode == 0
        if not published and branch != "HEAD":
            refs.insert(0, f"HEAD:refs/heads/{branch}")  # e.g. a renumber commit: tag and branch together
        elif renumbered_from is not None and branch == "HEAD":
            ws.repo.run("tag", "-d", tag, check=False)
            raise ReleaseRefused(tag, "the renumber commit is on a detached HEAD",
                                 "check out the branch (`git checkout -B main`) and retry")
        pushed = ws.repo.run("push", "--atomic", "--porcelain", git_remote, *refs, check=False)
        if pushed.returncode != 0:
            ws.repo.run("tag", "-d", tag, check=False)  # the remote said no: leave no local claim
            out = pushed.stdout + pushed.stderr
            rejected_branch = any(line.startswith("!") and "refs/heads/" in line and "atomic" not in line
                                  for line in out.splitlines())
            if rejected_branch:
                raise ReleaseRefused(tag, f"{git_remote} refused the renumber commit: the branch moved there",
                                     "`git pull --rebase`, then `shelf release --renumber --push` again")
            raise ReleaseRefused(tag, "the git remote refused the tag (another release took this version?)",
                                 RENUMBER_HINT)
    return Released(tag, version, commit, push, renumbered_from)


# --- stages ---------------------------------------------------------------------------------


def _policy(ws: Workspace) -> tuple[tuple[str, ...], tuple[str, ...], str]:
    """Allowed stages: ``release.stages`` in params.yaml when set there, else GTO's ``.gto``
    ``stages:``, else the defaults; protected stages and the branch come from params.yaml."""
    import yaml

    params = load_params(ws.root / "params.yaml")
    stages = params.release.stages
    raw = yaml.safe_load((ws.root / "params.yaml").read_text(encoding="utf-8")) or {}
    gto = ws.repo.root / ".gto"
    if "stages" not in (raw.get("release") or {}) and gto.is_file():
        try:
            configured = (yaml.safe_load(gto.read_text(encoding="utf-8")) or {}).get("stages")
        except yaml.YAMLError:
            raise ConfigError(str(gto), "not valid YAML", "fix its syntax") from None
        if configured is not None:
            if not isinstance(configured, list) or not all(isinstance(s, str) and tags.is_valid_name(s)
                                                           for s in configured):
                raise ConfigError(f"{gto}: stages", "expected a list of stage names", "e.g. [dev, staging, prod]")
            stages = tuple(configured)
    protected = tuple(s for s in params.release.protected_stages if s in stages)
    return stages, protected, params.gate.baseline


def promote(start: str | Path, spec: str, stage: str, *, push: bool = False,
            git_remote: str = "origin") -> Assignment:
    """Assign ``stage`` to a release with a new GTO assignment tag ``name#stage#N``."""
    ws = Workspace.open(start)
    allowed, protected, branch = _policy(ws)
    if stage not in allowed:
        from modelshelf.params import suggest

        raise ConfigError(f"stage '{stage}'", "not an allowed stage (release.stages in params.yaml)",
                          suggest(stage, allowed, "allowed stages"))
    reg = open_registry(ws)
    rel = reg.find(spec)
    if rel.deprecated:
        raise ReleaseRefused(rel.tag, "this version is deprecated", "promote another version")
    if stage in protected:
        heads = [ref for ref in (branch, f"{git_remote}/{branch}") if ws.repo.resolve(ref)]
        on_branch = any(ws.repo.run("merge-base", "--is-ancestor", rel.commit, ref, check=False).returncode == 0
                        for ref in heads)
        if not on_branch:
            raise ReleaseRefused(rel.tag, f"'{stage}' takes only versions whose commit is on {branch}",
                                 f"merge it into {branch} and release from there")
        if not (rel.card or {}).get("gate", {}).get("passed"):
            raise GateFailed(rel.tag, f"'{stage}' takes only versions whose gate passed", "promote another version")
    number = tags.next_counter(list(reg.tag_names), ws.name)
    tag = tags.assign_tag(ws.name, stage, number)
    _tag(ws, reg, tag, tags.assign_message(ws.name, stage, rel.version), rel.commit)
    if push:
        _push_tags(ws, git_remote, tag)
    return Assignment(stage, rel.version, tag, rel.commit, 0, number)


def rollback_stage(start: str | Path, stage: str, *, push: bool = False,
                   git_remote: str = "origin") -> Assignment:
    """Re-assign ``stage`` to the version it held before the current one (a new tag)."""
    ws = Workspace.open(start)
    reg = open_registry(ws)
    history = [a.version for a in reg.stage_history(stage) if a.version is not None]
    if not history:
        raise ReleaseRefused(f"stage '{stage}'", "no version has held it", f"`shelf promote VERSION --to {stage}`")
    current = reg.holder(stage)
    previous = next((v for v in reversed(history) if current is None or v != current.version), None)
    if previous is None:
        raise ReleaseRefused(f"stage '{stage}'", "no earlier version held it", "promote a version explicitly")
    return promote(start, str(previous), stage, push=push, git_remote=git_remote)


def deprecate(start: str | Path, spec: str, *, push: bool = False, git_remote: str = "origin") -> str:
    """Mark a version deprecated with GTO's deregistration tag ``name@vX.Y.Z!#N``."""
    ws = Workspace.open(start)
    reg = open_registry(ws)
    rel = reg.find(spec)
    if rel.deprecated:
        raise ReleaseRefused(rel.tag, "already deprecated", "nothing to do")
    tag = tags.deregister_tag(ws.name, rel.version, tags.next_counter(list(reg.tag_names), ws.name))
    _tag(ws, reg, tag, f"Deregistering artifact {ws.name} version v{rel.version}", rel.commit)
    if push:
        _push_tags(ws, git_remote, tag)
    return tag


def _tag(ws: Workspace, reg: Registry, name: str, message: str, commit: str, check: bool = True) -> Any:
    """Create annotated tag ``name``, dated strictly after the model's previous event.

    GTO orders events by tagger time at one-second resolution and ignores ``#N``; two
    events in one second would otherwise be ordered differently by GTO and by us.
    """
    import time

    when = max(int(time.time()), reg.last_event + 1)
    return ws.repo.run("tag", "-a", name, "-m", message, commit, check=check,
                       env={"GIT_COMMITTER_DATE": f"{when} +0000"})


def _fetch_tags(ws: Workspace, git_remote: str) -> None:
    proc = ws.repo.run("fetch", "-q", "--tags", git_remote, check=False)
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines()
        raise GitError(f"git fetch --tags {git_remote}", lines[-1] if lines else "failed",
                       "fix the remote or the clashing local tag (`git tag -d NAME`), then retry")


def _push_tags(ws: Workspace, git_remote: str, *tag_names: str) -> None:
    proc = ws.repo.run("push", "--atomic", "-q", git_remote, *(f"refs/tags/{t}" for t in tag_names), check=False)
    if proc.returncode != 0:
        for t in tag_names:
            ws.repo.run("tag", "-d", t, check=False)
        raise GitError(f"git push {git_remote}", "the remote refused the tag", "fetch tags and retry")


# --- restore --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Restored:
    version: SemVer
    directory: Path
    source: str   # "cache" or "remote"
    card: dict[str, Any]


def restore(ws: Workspace, rel: Release, dest: Path) -> Restored:
    """Write ``rel``'s model and card into ``dest``, each verified against the card."""
    raw = ws.repo.show(rel.tag, ws.card)
    if raw is None:
        raise ReleaseRefused(rel.tag, f"no {ws.card} at this release", "this tag is not a modelshelf release")
    card = parse_card(raw, f"{rel.tag}:{ws.card}")
    dest.mkdir(parents=True, exist_ok=True)
    sources = set()
    for rec in card["artefacts"].values():  # every format the card records, each verified
        sources.add(restore_artefact(ws, rel.tag, rec, dest / rec["file"]))
    artefacts.write_text(dest / CARD_FILE, raw.decode())
    return Restored(rel.version, dest, "remote" if "remote" in sources else "cache", card)


def restore_artefact(ws: Workspace, rev: str, rec: dict[str, Any], target: Path) -> str:
    """Write the bytes of the card record ``rec`` (``file``, ``sha256``) as they were at ``rev``
    to ``target``, verified: from the local DVC cache, else the remote (``"cache"``/``"remote"``)."""
    lock_dir = PurePosixPath(ws.lock).parent
    repo_path = PurePosixPath(ws.card).parent / rec["file"]
    rel_path = str(repo_path.relative_to(lock_dir)) if str(lock_dir) != "." else str(repo_path)
    md5 = remote.locked_md5(ws.repo, rev, ws.lock, rel_path, ws.root)
    target.parent.mkdir(parents=True, exist_ok=True)
    return remote.restore(ws.root, rev, rel_path, target, rec["sha256"], md5)


def rollback(start: str | Path, spec: str, *, force: bool = False) -> Restored:
    """Put the workspace's pipeline state back to a release (see :mod:`modelshelf.checkout`):
    its dvc.lock, params, metrics and card from git, its model and data from the DVC cache or
    remote, the model verified against the card.  Refuses to overwrite uncommitted changes
    unless ``force``."""
    from modelshelf.checkout import checkout

    ws = Workspace.open(start)
    rel = open_registry(ws).find(spec)
    if ws.repo.show(rel.tag, ws.card) is None:
        raise ReleaseRefused(rel.tag, f"no {ws.card} at this release", "this tag is not a modelshelf release")
    source, card = checkout(ws.repo, ws.root, rel.tag, ws.lock, ws.card, force=force)
    return Restored(rel.version, ws.repo.root / PurePosixPath(ws.card).parent, source, card)


def get(start: str | Path, spec: str, out: str | Path) -> Restored:
    """Fetch a release (``vX.Y.Z``, ``latest`` or a stage) into ``out``, verified."""
    ws = Workspace.open(start)
    return restore(ws, open_registry(ws).find(spec), Path(out))


def fetch(start: str | Path, spec: str) -> Path:
    """A verified local copy of a release (``vX.Y.Z``, ``latest`` or a stage), cached per version.

    The copy lives under ``.dvc/tmp/modelshelf/`` (ignored by git); it is re-verified on
    every call and re-fetched when its hash no longer matches.
    """
    ws = Workspace.open(start)
    rel = open_registry(ws).find(spec)
    dest = ws.root / ".dvc" / "tmp" / "modelshelf" / ws.name / f"v{rel.version}"
    try:
        card = parse_card((dest / CARD_FILE).read_bytes(), str(dest / CARD_FILE))
        for rec in card["artefacts"].values():
            artefacts.verify(dest / rec["file"], rec["sha256"])
        if card["version"] == str(rel.version):
            return dest
    except Exception:  # noqa: BLE001 - anything wrong with the copy means fetch it again
        pass
    return restore(ws, rel, dest).directory


def gc(start: str | Path = ".", *, cloud: bool = False, dvc_remote: str | None = None,
       dry: bool = False) -> str:
    """``dvc gc`` keeping the workspace and every tag (so every release's artefacts)."""
    ws = Workspace.open(start)
    remotes = ws.repo.run("remote").stdout.split()
    if cloud and remotes:
        # Releases this clone has not fetched still own objects in the shared remote.
        for name in remotes:
            _fetch_tags(ws, name)
    args = ["gc", "-w", "--all-tags", "-f", *(["--dry"] if dry else [])]
    if cloud:
        args += ["-c", *(["-r", dvc_remote] if dvc_remote else [])]
    proc = remote.dvc(ws.root, *args)
    if proc.returncode != 0:
        raise GitError("dvc gc", remote.last_line(proc), "check the repository and remote")
    return proc.stdout.strip()
