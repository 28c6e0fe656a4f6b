"""Stage assignment and deprecation: GTO tags ``model#stage#N`` and ``model@vX.Y.Z!#N``.

Which stages exist, and which are protected (only gated versions from the release
branch), come from params.yaml or GTO's ``.gto``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelshelf import tags
from modelshelf.errors import ConfigError, GateFailed, GitError, ReleaseRefused, RemoteError
from modelshelf.params import load_params
from modelshelf.project import stage_options
from modelshelf.registry import signing
from modelshelf.registry.core import Assignment, Release, Workspace, create_tag, fetch_tags, open_registry
from modelshelf.registry.release import (card_paths, drop_clobbered, local_tags, lock_oids, manifest_md5,
                                         missing_in_remote_at, remote_odb, remote_tags, tag_model_sha)


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


@dataclass(frozen=True)
class Promoted(Assignment):
    """What :func:`promote` did: the assignment, and whether the stage already held the version
    (``already``: no tag made) or an unpushed assignment tag was pushed (``resumed``)."""

    already: bool = False
    resumed: bool = False
    notes: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        """The assignment, whether it was already in place or resumed, and the notes."""
        return {**super().to_json(), "already": self.already, "resumed": self.resumed, "notes": list(self.notes)}


def _binding_problem(ws: Workspace, rel: Release) -> str | None:
    """Why ``rel``'s card does not bind its bytes to the gate's verdict (None: it binds).

    The card at the tag's commit must say the gate passed and record the candidate the gate
    judged (``gate.candidate_sha256``) as its model, and the tag message's ``model-sha256:``
    line must name that same model.
    """
    card = rel.card or {}
    gate = card.get("gate") or {}
    model_sha = ((card.get("artefacts") or {}).get("model") or {}).get("sha256")
    if not gate.get("passed"):
        return "its gate did not pass"
    if not isinstance(model_sha, str):
        return "its card records no model sha256"
    gated = gate.get("candidate_sha256")
    if gated is None:
        legacy = _legacy_problem(ws, rel)
        if legacy is not None:
            return legacy
    elif gated != model_sha:
        judged = f"{gated[:12]}…" if isinstance(gated, str) else repr(gated)
        return f"its model (sha256 {model_sha[:12]}…) is not the candidate its gate judged ({judged})"
    tagged = tag_model_sha(ws, rel.tag)
    if tagged != model_sha:
        return f"its tag message names model-sha256 {(tagged or 'none')[:12]}…, its card {model_sha[:12]}…"
    return None


def _legacy_problem(ws: Workspace, rel: Release) -> str | None:
    """For a card from before the gate recorded its candidate: the model dvc.lock records at the
    release's commit must be the train stage's candidate byte for byte (equal md5s; the
    candidate's is read from its directory manifest, in the cache or else the DVC remote)."""
    out = stage_options(ws.root, "train").get("out")
    model = card_paths(ws, {"artefacts": {"model": (rel.card or {})["artefacts"]["model"]}})[0]
    if out is None:
        return "its card records no gated candidate, and dvc.yaml's train stage names none"
    candidate = f"{out.rstrip('/')}/model.joblib"
    oids = lock_oids(ws, rel.commit, [model, candidate])
    if len(oids[model]) != 1 or len(oids[candidate]) != 2:
        return f"its card records no gated candidate, and dvc.lock at {rel.commit[:12]} cannot show one"
    trained = manifest_md5(ws, None, oids[candidate])
    if trained is None:
        trained = remote_odb(ws, None, lambda odb: manifest_md5(ws, odb, oids[candidate]))
    if trained is None:
        return f"its card records no gated candidate, and {out}'s manifest is in neither the cache nor the remote"
    if trained != oids[model][0]:
        return f"its model is not the train stage's candidate at {rel.commit[:12]} (dvc.lock md5s differ)"
    return None


def _check_published(ws: Workspace, rel: Release, remote: dict[str, str], git_remote: str) -> None:
    """The release tag is on ``git_remote`` (this very tag) and the DVC remote holds every file
    its card lists (asked read-only)."""
    if remote.get(rel.tag) != local_tags(ws).get(rel.tag):
        raise ReleaseRefused(rel.tag, f"the release is not on {git_remote}: no stage is published for it",
                             "publish it first with `shelf release --push` (it completes an unpushed release)")
    missing = missing_in_remote_at(ws, rel.commit, rel.card or {})
    if missing:
        raise RemoteError(rel.tag, f"the DVC remote lacks {len(missing)} of its files ({missing[0]})",
                          f"push them from a clone that has them: `git checkout {rel.tag} && dvc push`")


def promote(start: str | Path, spec: str, stage: str, *, push: bool = False,
            git_remote: str = "origin") -> Promoted:
    """Assign ``stage`` to a release with a new GTO assignment tag ``name#stage#N``.

    Protected stages take only releases on the release branch whose card binds the gated
    candidate.  With ``push``, the release must be on the git remote and its files in the DVC
    remote; an assignment of the same version whose tag never reached the remote (a kill
    between tag and push) is pushed instead of making a second one.  Assigning the version the
    stage already holds makes no tag.

    Args:
        start: a directory inside the project.
        spec: ``vX.Y.Z``, ``latest`` or a stage.
        stage: the stage to assign.
        push: push the tag to ``git_remote``.
        git_remote: the git remote.

    Returns:
        The assignment (``already``/``resumed`` when no new tag was made).

    Raises:
        ConfigError: unknown stage or version.
        ReleaseRefused: deprecated, not on the release branch, not on the git remote.
        GateFailed: a protected stage and a release whose gate or binding fails.
        RemoteError: the DVC remote lacks a file of the release.
        GitError: the git remote cannot be read or refused the tag.
    """
    ws = Workspace.open(start)
    allowed, protected, branch = _policy(ws)
    if stage not in allowed:
        from modelshelf.params import suggest

        raise ConfigError(f"stage '{stage}'", "not an allowed stage (release.stages in params.yaml)",
                          suggest(stage, allowed, "allowed stages"))
    remote: dict[str, str] = {}
    notes: list[str] = []
    if push:
        remote = remote_tags(ws, git_remote)
        notes = drop_clobbered(ws, remote, git_remote)
        fetch_tags(ws, git_remote)
    reg = open_registry(ws)
    rel = reg.find(spec)
    if rel.deprecated:
        raise ReleaseRefused(rel.tag, "this version is deprecated", "promote another version")
    signing.check_release(ws, rel, spec=spec, to=stage)  # a stage that requires a signature gets one
    if stage in protected:
        heads = [ref for ref in (branch, f"{git_remote}/{branch}") if ws.repo.resolve(ref)]
        # In a shallow clone a cut history is fetched before "not on the branch" is believed.
        remote_name = git_remote if git_remote in ws.repo.remotes() else None
        on_branch = any(ws.repo.is_ancestor(rel.commit, ref, fetch_from=remote_name) for ref in heads)
        if not on_branch:
            raise ReleaseRefused(rel.tag, f"'{stage}' takes only versions whose commit is on {branch}",
                                 f"merge it into {branch} and release from there")
        if not (rel.card or {}).get("gate", {}).get("passed"):
            raise GateFailed(rel.tag, f"'{stage}' takes only versions whose gate passed", "promote another version")
        problem = _binding_problem(ws, rel)
        if problem is not None:
            raise GateFailed(rel.tag, f"'{stage}' takes only releases bound to their gate: {problem}",
                             "release a model built by `dvc repro` (its card, gate report and tag agree)")
    if push:
        _check_published(ws, rel, remote, git_remote)
    history = reg.stage_history(stage)
    last = history[-1] if history else None
    if last is not None and last.version == rel.version:
        if push and remote.get(last.tag) != local_tags(ws).get(last.tag):
            _push_tags(ws, git_remote, last.tag)  # a kill stopped this promotion before its push
            return Promoted(stage, rel.version, last.tag, rel.commit, last.timestamp, last.number,
                            resumed=True, notes=tuple(notes))
        return Promoted(stage, rel.version, last.tag, rel.commit, last.timestamp, last.number,
                        already=True, notes=tuple(notes))
    number = tags.next_counter(list(reg.tag_names), ws.name)
    tag = tags.assign_tag(ws.name, stage, number)
    create_tag(ws, reg, tag, tags.assign_message(ws.name, stage, rel.version), rel.commit)
    if push:
        _push_tags(ws, git_remote, tag)
    return Promoted(stage, rel.version, tag, rel.commit, 0, number, notes=tuple(notes))


def rollback_stage(start: str | Path, stage: str, *, push: bool = False,
                   git_remote: str = "origin") -> Assignment:
    """Re-assign ``stage`` to the version it held before the current one (a new tag): the
    release that held it before, as GTO read it (:meth:`Registry.previous_holder`)."""
    ws = Workspace.open(start)
    reg = open_registry(ws)
    history = [a.version for a in reg.stage_history(stage) if a.version is not None]
    if not history:
        raise ReleaseRefused(f"stage '{stage}'", "no version has held it", f"`shelf promote VERSION --to {stage}`")
    if push:
        events = reg.stage_history(stage)
        if events and events[-1].version is not None and events[-1].tag not in remote_tags(ws, git_remote):
            # A rollback a kill stopped before its push: finish that one, do not roll back further.
            return promote(start, str(events[-1].version), stage, push=True, git_remote=git_remote)
    previous = reg.previous_holder(stage)
    if previous is None:
        raise ReleaseRefused(f"stage '{stage}'", "no earlier release held it",
                             "promote a version explicitly")
    return promote(start, str(previous.version), stage, push=push, git_remote=git_remote)


def deprecate(start: str | Path, spec: str, *, push: bool = False, git_remote: str = "origin") -> str:
    """Mark a version deprecated with GTO's deregistration tag ``name@vX.Y.Z!#N``."""
    ws = Workspace.open(start)
    reg = open_registry(ws)
    rel = reg.find(spec, check=False)   # a tag its card does not back is exactly what to retire
    if rel.deprecated and push:
        remote, local = remote_tags(ws, git_remote), local_tags(ws)
        unpushed = [name for name, oid in local.items() if remote.get(name) != oid
                    and (t := tags.parse_tag(name)) is not None and t.kind == "deregister"
                    and t.name == ws.name and t.version == rel.version]
        if unpushed:  # a kill stopped this deprecation before its push
            _push_tags(ws, git_remote, *unpushed)
            return unpushed[0]
    if rel.deprecated:
        raise ReleaseRefused(rel.tag, "already deprecated", "nothing to do")
    tag = tags.deregister_tag(ws.name, rel.version, tags.next_counter(list(reg.tag_names), ws.name))
    create_tag(ws, reg, tag, f"Deregistering artifact {ws.name} version v{rel.version}", rel.commit)
    if push:
        _push_tags(ws, git_remote, tag)
    return tag


def _push_tags(ws: Workspace, git_remote: str, *tag_names: str) -> None:
    """Push ``tag_names`` atomically; if the remote refuses, delete them locally too."""
    proc = ws.repo.run("push", "--atomic", "-q", git_remote, *(f"refs/tags/{t}" for t in tag_names), check=False)
    if proc.returncode != 0:
        for t in tag_names:
            ws.repo.run("tag", "-d", t, check=False)
        raise GitError(f"git push {git_remote}", "the remote refused the tag", "fetch tags and retry")
