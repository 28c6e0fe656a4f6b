"""Stage assignment and deprecation: GTO tags ``model#stage#N`` and ``model@vX.Y.Z!#N``.

Which stages exist, and which are protected (only gated versions from the release
branch), come from params.yaml or GTO's ``.gto``.
"""

from __future__ import annotations

from pathlib import Path

from modelshelf import tags
from modelshelf.errors import ConfigError, GateFailed, GitError, ReleaseRefused
from modelshelf.params import load_params
from modelshelf.registry.core import Assignment, Workspace, create_tag, open_registry


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
    create_tag(ws, reg, tag, tags.assign_message(ws.name, stage, rel.version), rel.commit)
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
