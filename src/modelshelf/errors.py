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
    """A parameter or configuration value is unknown, mistyped or inconsistent."""

    exit_code = 2


class DataError(ShelfError):
    """The dataset cannot be used: missing, empty, malformed or too small."""

    exit_code = 2


class GateFailed(ShelfError):
    """The candidate did not clear the gate: nothing may be serialised."""

    exit_code = 3


class IntegrityError(ShelfError):
    """An artefact is missing or its sha256 differs from the one recorded."""

    exit_code = 4


class VersionMismatchError(ShelfError):
    """The runtime's library versions differ from those the model was built with."""

    exit_code = 5


class GitError(ShelfError):
    """A git operation failed or the repository is not in the needed state."""

    exit_code = 6


class ReleaseRefused(ShelfError):
    """A release, promotion or rollback was refused: the repository is not in a releasable state."""

    exit_code = 7


class RemoteError(ShelfError):
    """The DVC remote is unreachable or does not hold an artefact it must hold."""

    exit_code = 8


class DriftDetected(ShelfError):
    """New data has drifted from the training profile."""

    exit_code = 9


class SchemaBreak(ShelfError):
    """New data no longer fits the model's input schema (missing, new or retyped columns)."""

    exit_code = 10
