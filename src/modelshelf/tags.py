"""The git tag grammar shared with GTO, and SemVer ordering.

Release ``model@v1.3.0`` (optionally ``#N``), deregistration ``model@v1.3.0!``,
stage assignment ``model#prod#3``, unassignment ``model#prod!#4`` and
deprecation ``model@deprecated``.  Releases are ordered by SemVer, never by tag time.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import total_ordering
from typing import Literal

from modelshelf.errors import ConfigError

NAME_PATTERN = r"[a-zA-Z0-9](?:[a-zA-Z0-9\-/_]*[a-zA-Z0-9])?"
_NAME_RE = re.compile(rf"^{NAME_PATTERN}\Z")
_NUM = r"0|[1-9][0-9]*"
_IDENT = r"(?:0|[1-9][0-9]*|[0-9]*[a-zA-Z-][0-9a-zA-Z-]*)"
SEMVER_PATTERN = (
    rf"(?P<major>{_NUM})\.(?P<minor>{_NUM})\.(?P<patch>{_NUM})"
    rf"(?:-(?P<pre>{_IDENT}(?:\.{_IDENT})*))?"
    r"(?:\+(?P<build>[0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*))?"
)
_SEMVER_RE = re.compile(rf"^{SEMVER_PATTERN}\Z")
# The artefact part may carry a monorepo prefix: ``sub/dir=name`` (GTO's directory characters).
_ART = rf"(?:[a-zA-Z0-9\-_./]+=)?{NAME_PATTERN}"
_RELEASE_RE = re.compile(rf"^(?P<name>{_ART})@v(?P<version>[^@#!\s]+)(?P<bang>!)?(?:#(?P<n>[0-9]+))?\Z")
_STAGE_RE = re.compile(rf"^(?P<name>{_ART})#(?P<stage>{NAME_PATTERN})(?P<bang>!)?(?:#(?P<n>[0-9]+))?\Z")
_DEPRECATE_RE = re.compile(rf"^(?P<name>{_ART})@(?P<what>deprecated|created)(?:#(?P<n>[0-9]+))?\Z")

Kind = Literal["release", "deregister", "assign", "unassign", "deprecate", "create"]


@total_ordering
@dataclass(frozen=True)
class SemVer:
    """A SemVer 2.0 version with precedence ordering (build metadata ignored)."""

    major: int
    minor: int
    patch: int
    pre: tuple[str, ...] = ()
    build: str = ""

    @classmethod
    def parse(cls, text: str) -> SemVer:
        """Parse ``1.2.3``, ``v1.2.3``, ``1.2.3-rc.1+b5``; raise ConfigError otherwise."""
        m = _SEMVER_RE.match(text[1:] if text.startswith("v") else text)
        if not m:
            raise ConfigError("version", f"'{text}' is not a SemVer version",
                              "write it as MAJOR.MINOR.PATCH, e.g. 1.2.0")
        pre = tuple(m["pre"].split(".")) if m["pre"] else ()
        return cls(int(m["major"]), int(m["minor"]), int(m["patch"]), pre, m["build"] or "")

    @classmethod
    def is_valid(cls, text: str) -> bool:
        return bool(_SEMVER_RE.match(text[1:] if text.startswith("v") else text))

    def __str__(self) -> str:
        text = f"{self.major}.{self.minor}.{self.patch}"
        if self.pre:
            text += "-" + ".".join(self.pre)
        return text + (f"+{self.build}" if self.build else "")

    def _key(self) -> tuple:
        # A release sorts after its pre-releases; numeric identifiers sort below alphanumeric.
        pre = tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in self.pre)
        return (self.major, self.minor, self.patch, not self.pre, pre)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SemVer) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __lt__(self, other: SemVer) -> bool:
        return self._key() < other._key()

    def bump(self, part: str) -> SemVer:
        """The next release version with ``part`` (major/minor/patch) incremented."""
        # A pre-release bumps to its own release when it already sits on that boundary:
        # 2.0.0-rc.1 → major → 2.0.0, 1.3.0-rc.1 → minor → 1.3.0.
        if part == "major":
            on_boundary = self.pre and self.minor == 0 and self.patch == 0
            return SemVer(self.major + (0 if on_boundary else 1), 0, 0)
        if part == "minor":
            return SemVer(self.major, self.minor + (0 if self.pre and self.patch == 0 else 1), 0)
        if part == "patch":
            # 1.2.0-rc.1 bumps to its own release 1.2.0
            return SemVer(self.major, self.minor, self.patch + (0 if self.pre else 1))
        raise ValueError(f"unknown bump part {part!r}")


@dataclass(frozen=True)
class Tag:
    """One parsed GTO-style tag."""

    kind: Kind
    name: str
    version: SemVer | None = None
    stage: str | None = None
    number: int | None = None

    def __str__(self) -> str:
        return format_tag(self)


def is_valid_name(name: str) -> bool:
    return bool(_NAME_RE.match(name))


def format_tag(tag: Tag) -> str:
    """The tag name for ``tag``; the inverse of :func:`parse_tag`."""
    suffix = f"#{tag.number}" if tag.number is not None else ""
    if tag.kind in ("release", "deregister"):
        bang = "!" if tag.kind == "deregister" else ""
        return f"{tag.name}@v{tag.version}{bang}{suffix}"
    if tag.kind in ("assign", "unassign"):
        bang = "!" if tag.kind == "unassign" else ""
        return f"{tag.name}#{tag.stage}{bang}{suffix}"
    return f"{tag.name}@{'created' if tag.kind == 'create' else 'deprecated'}{suffix}"


def parse_tag(text: str) -> Tag | None:
    """Parse a tag name; ``None`` for a tag that is not in the grammar."""
    if m := _DEPRECATE_RE.match(text):
        return Tag("create" if m["what"] == "created" else "deprecate", m["name"], number=_int(m["n"]))
    if m := _RELEASE_RE.match(text):
        version = _semver_or_none(m["version"])
        if version is None:
            return None
        kind: Kind = "deregister" if m["bang"] else "release"
        return Tag(kind, m["name"], version, number=_int(m["n"]))
    if m := _STAGE_RE.match(text):
        kind = "unassign" if m["bang"] else "assign"
        return Tag(kind, m["name"], stage=m["stage"], number=_int(m["n"]))
    return None


def _semver_or_none(text: str) -> SemVer | None:
    """``SemVer.parse`` with one regex match, None when not a version (parse_tag's hot path)."""
    m = _SEMVER_RE.match(text)
    if not m:
        return None
    return SemVer(int(m["major"]), int(m["minor"]), int(m["patch"]),
                  tuple(m["pre"].split(".")) if m["pre"] else (), m["build"] or "")


def release_tag(name: str, version: SemVer) -> str:
    """``model@v1.2.0``: the annotated tag that registers a release."""
    return format_tag(Tag("release", name, version))


def release_message(name: str, version: SemVer) -> str:
    """GTO's default first line for a release tag."""
    return f"Registering artifact {name} version v{version}"


def latest_release(names: list[str], artefact: str) -> SemVer | None:
    """The highest released SemVer of ``artefact`` among tag ``names``, by precedence."""
    versions = [t.version for t in map(parse_tag, names)
                if t is not None and t.kind == "release" and t.name == artefact and t.version]
    return max(versions) if versions else None


def _int(text: str | None) -> int | None:
    return int(text) if text is not None else None


def next_version(latest: SemVer | None, bump: str, contract_changed: bool) -> tuple[SemVer, str]:
    """The version after ``latest`` and why: ``(version, reason)``.

    ``bump`` is ``auto`` (major when the input contract changed, else minor) or
    a forced ``major``/``minor``/``patch``.  The first release is 1.0.0.
    """
    if latest is None:
        return SemVer(1, 0, 0), "first release"
    if bump == "auto":
        part = "major" if contract_changed else "minor"
        why = "input schema or classes changed" if contract_changed else "same input schema"
        return latest.bump(part), f"{part}: {why}"
    return latest.bump(bump), f"{bump}: forced by release.bump"


def next_counter(names: list[str], artefact: str) -> int:
    """GTO's event counter: one more than the highest ``#N`` on any tag of ``artefact``."""
    numbers = [t.number for t in map(parse_tag, names)
               if t is not None and t.name == artefact and t.number is not None]
    return max(numbers, default=0) + 1


def assign_tag(name: str, stage: str, number: int) -> str:
    """``model#prod#3``: the annotated tag that assigns ``stage``."""
    return format_tag(Tag("assign", name, stage=stage, number=number))


def assign_message(name: str, stage: str, version: SemVer) -> str:
    return f"Assigning stage {stage} to artifact {name} version v{version}"


def deregister_tag(name: str, version: SemVer, number: int) -> str:
    return format_tag(Tag("deregister", name, version, number=number))
