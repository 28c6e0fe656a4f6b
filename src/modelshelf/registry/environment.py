"""A requirements file that recreates the environment a release was serialised in, from the card
at the release tag's commit (its ``environment`` section; ``dependencies`` for older cards,
which the file then says is partial)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from packaging.version import InvalidVersion, Version

from modelshelf.card import CARD_FILE, normalise_name
from modelshelf.errors import IntegrityError
from modelshelf.registry.bom import DAMAGED, checked_versions, environment_lists
from modelshelf.registry.core import Release, Workspace, open_registry
from modelshelf.registry.restore import trusted_card

# The installer itself: pinning pip inside its own ``pip install -r`` only fights the venv's pip.
SKIPPED = {"pip": "the installer itself"}
KINDS = ("editable", "directory", "vcs", "archive")
VCS = ("git", "hg", "svn", "bzr")
URL = re.compile(r"(https|ssh)://[^\s#;]+")  # remote, and nothing pip would read as more than a URL


def requirements(start: str | Path, spec: str) -> str:
    """The requirements file (``name==version`` lines under a header) of a release's environment.

    Args:
        start: a path inside the project.
        spec: ``vX.Y.Z``, ``latest`` or a stage name.

    Returns:
        The file's text; the same for the same release on every run.

    Raises:
        ConfigError: no such version, no release yet, or a stage that holds none.
        ReleaseRefused: the tag's commit has no card (not a modelshelf release).
        IntegrityError: the card at the tag is unreadable, damaged or names another version.
    """
    ws = Workspace.open(start)
    rel = open_registry(ws).find(spec)
    card = trusted_card(ws, rel)
    return render(card, rel, card_path=ws.card)


def render(card: Mapping[str, Any], rel: Release, *, card_path: str = CARD_FILE) -> str:
    """The requirements text for ``card``, the card at ``rel``'s tag.

    Raises:
        IntegrityError: the card's environment or dependencies are not the shape modelshelf writes.
    """
    try:
        return _render(card, rel)
    except IntegrityError as exc:
        raise IntegrityError(f"{rel.tag}:{card_path}", exc.problem, exc.remedy) from None
    except (AttributeError, TypeError, ValueError):
        raise IntegrityError(f"{rel.tag}:{card_path}", "the card's sections are not the shape modelshelf writes",
                             DAMAGED) from None


def _render(card: Mapping[str, Any], rel: Release) -> str:
    env = card.get("environment")
    when = datetime.fromtimestamp(rel.timestamp, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    head = [f"# The environment of {_safe(rel.tag)} (commit {rel.commit[:12]}, released {when}),",
            "# as recorded in its card by `shelf serialise`; written by `shelf env`."]
    notes: list[str] = []
    lines: list[str] = []
    if env is not None and not isinstance(env, Mapping):
        raise IntegrityError("card", "its 'environment' is not an object", DAMAGED)
    if isinstance(env, Mapping):
        py, plat = env.get("python") or {}, env.get("platform") or {}
        version = _safe(py.get("version", "unknown"))
        head.append(f"# Python {version} ({_safe(py.get('implementation', 'unknown'))}) on "
                    f"{_safe(plat.get('platform', 'an unknown platform'))}.")
        dists, direct = environment_lists(env)
    else:
        deps = dict(card.get("dependencies") or {})
        version = _safe(deps.pop("python", "unknown"))
        head += [f"# Python {version}; the platform was not recorded.",
                 "# PARTIAL: this card predates the full environment record and names only the model's",
                 "# direct dependencies; pip resolves everything else to today's versions."]
        missing = [k for k, v in deps.items() if not v or v == "not installed"]
        notes += [f"# Not listed: {_safe(k)} (not installed when the model was serialised)" for k in missing]
        dists = checked_versions({normalise_name(k): v for k, v in deps.items() if k not in missing},
                                 "dependencies")
        direct = {}
    short = ".".join(version.split(".")[:2]) if re.match(r"\d+\.\d+", version) else "3"
    head.append(f"# Recreate: python{short} -m venv v && v/bin/pip install -r THIS_FILE")
    for name, ver in sorted(dists.items()):
        how = direct.get(name)
        if name in SKIPPED:
            notes.append(f"# Not listed: {name} {ver} ({SKIPPED[name]})")
        elif how is None:
            lines.append(_pin(name, ver))
        elif (line := _direct_line(name, how)) is not None:
            lines.append(line)
        else:
            kind = how.get("kind") if how.get("kind") in KINDS else "unknown"
            notes.append(f"# Not listed: {name} {ver} (installed {kind}, not from an index: "
                         "install it from its source)")
    return "\n".join([*head, *notes, *lines]) + "\n"


def _pin(name: str, version: str) -> str:
    try:
        Version(version)
    except InvalidVersion:
        return f"{name}==={version}"  # PEP 440's arbitrary equality: the exact string
    return f"{name}=={version}"


def _direct_line(name: str, how: Mapping[str, Any]) -> str | None:
    """A PEP 508 URL requirement for a VCS or remote-archive install; None when there is none
    (no URL, or one that is not a plain https/ssh URL)."""
    url = how.get("url")
    if not (isinstance(url, str) and URL.fullmatch(url)):
        return None
    commit, sha = str(how.get("commit", "")), str(how.get("sha256", ""))
    if how.get("kind") == "vcs" and how.get("vcs") in VCS and re.fullmatch(r"[0-9a-f]{7,64}", commit):
        return f"{name} @ {how['vcs']}+{url}@{commit}"
    if how.get("kind") == "archive":
        return f"{name} @ {url}" + (f"#sha256={sha}" if re.fullmatch(r"[0-9a-f]{64}", sha) else "")
    return None


def _safe(value: Any) -> str:
    """``value`` for a comment line: no control characters (a newline would end the comment)."""
    return re.sub(r"[\x00-\x1f\x7f]", "?", str(value))
