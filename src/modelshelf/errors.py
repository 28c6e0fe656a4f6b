"""One exception tree for modelshelf.

Every error carries the place it concerns (a file, a key, a field) and a remedy,
and maps to one exit code.  The CLI turns any of these into a single line.
"""

from __future__ import annotations


class ShelfError(Exception):
    """Base of every error modelshelf raises on purpose."""

    exit_code = 1

    def __init__(self, where: str, problem: str, remedy: str = "") -> None:
        self.where = where
        self.problem = problem
        self.remedy = remedy
        super().__init__(self.message)

    @property
    def message(self) -> str:
        text = f"{self.where}: {self.problem}" if self.where else self.problem
        return f"{text}; {self.remedy}" if self.remedy else text


class ConfigError(ShelfError):
    """An unknown params key, a wrong type, an unknown estimator, version or stage."""

    exit_code = 2


class DataError(ShelfError):
    """A missing target, an empty, malformed or too small dataset."""

    exit_code = 2


class GateFailed(ShelfError):
    """The gate failed (or a release no longer clears it): nothing may be serialised or released."""

    exit_code = 3


class IntegrityError(ShelfError):
    """An artefact is missing or differs from the card at its release tag, or is not signed as the trust policy requires."""

    exit_code = 4


class VersionMismatchError(ShelfError):
    """The installed scikit-learn differs from the card's."""

    exit_code = 5


class GitError(ShelfError):
    """Not a git repository, a shallow clone without the tags it needs, a git command failed."""

    exit_code = 6


class ReleaseRefused(ShelfError):
    """A release, promotion or rollback was refused: dirty tree, stale gate, version taken, policy."""

    exit_code = 7


class RemoteError(ShelfError):
    """The DVC remote is unreachable or lacks an artefact it must hold."""

    exit_code = 8


class DriftDetected(ShelfError):
    """`shelf drift`: the new data has drifted from the training profile."""

    exit_code = 9


class SchemaBreak(ShelfError):
    """`shelf drift`: the new data breaks the input schema (missing, new or retyped columns)."""

    exit_code = 10


def exit_code_table() -> str:
    """The README's exit-code table, one row per class above (their docstrings), in code order.

    Returns:
        A Markdown table; ``tests/test_cli.py`` checks that the README carries it verbatim.
    """
    rows = {0: "success", 1: "internal error (a bug: rerun with `--traceback` and report it)"}
    for cls in _subclasses(ShelfError):
        doc = f"`{cls.__name__}`: {(cls.__doc__ or '').strip().splitlines()[0].rstrip('.')}"
        rows[cls.exit_code] = f"{rows[cls.exit_code]}<br>{doc}" if cls.exit_code in rows else doc
    lines = ["| code | meaning |", "|---|---|"]
    lines += [f"| {code} | {text} |" for code, text in sorted(rows.items())]
    return "\n".join(lines) + "\n"


def _subclasses(cls: type) -> list[type]:
    found = []
    for sub in cls.__subclasses__():
        found += [sub, *_subclasses(sub)]
    return found
