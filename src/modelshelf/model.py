"""A served model: load a card's artefact only after verifying it, and check the runtime."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelshelf import artefacts
from modelshelf.card import CARD_FILE, read_card
from modelshelf.errors import VersionMismatchError


@dataclass(frozen=True)
class Model:
    """A verified, deserialised model with the card that describes it."""

    estimator: Any
    card: dict[str, Any]
    directory: Path

    @property
    def version(self) -> str:
        return str(self.card["version"])

    @property
    def name(self) -> str:
        return str(self.card["name"])

    def predict(self, X: Any) -> Any:
        return self.estimator.predict(X)

    def predict_proba(self, X: Any) -> Any:
        return self.estimator.predict_proba(X)


def _card_dir(card_or_dir: str | Path) -> tuple[dict[str, Any], Path]:
    path = Path(card_or_dir)
    card = read_card(path)
    return card, (path if path.is_dir() else path.parent)


@dataclass(frozen=True)
class Verification:
    """What ``shelf verify`` checked: each artefact's hash, and the runtime's versions."""

    name: str
    version: str
    files: tuple[tuple[str, str], ...]
    dependencies: dict[str, tuple[str, str]]

    def to_json(self) -> dict[str, Any]:
        """What ``shelf verify --json`` prints."""
        return {"name": self.name, "version": f"v{self.version}",
                "files": [{"kind": kind, "file": file} for kind, file in self.files],
                "dependencies": {dep: {"built": built, "running": running, "match": built == running}
                                 for dep, (built, running) in self.dependencies.items()}}


def verify(card_or_dir: str | Path, *, allow_version_mismatch: bool = False) -> Verification:
    """Check every artefact's sha256 and the scikit-learn version, without deserialising."""
    from modelshelf.card import dependency_versions

    card, directory = _card_dir(card_or_dir)
    checked = []
    for kind, rec in card["artefacts"].items():
        artefacts.verify(directory / rec["file"], rec["sha256"], "the card's")
        checked.append((kind, rec["file"]))
    here = dependency_versions()
    deps = {k: (str(v), here.get(k, "unknown")) for k, v in card["dependencies"].items()}
    built, running = deps.get("scikit-learn", ("unknown", "unknown"))
    if built != running and not allow_version_mismatch:
        raise VersionMismatchError(str(directory / CARD_FILE),
                                   f"model built with scikit-learn {built} but {running} is installed",
                                   f"install scikit-learn=={built} or pass --allow-version-mismatch")
    return Verification(card["name"], card["version"], tuple(checked), deps)


@dataclass(frozen=True)
class Located:
    """What a spec names: the directory holding the artefacts, and the card to verify them by.

    For a release the card is the one committed at its tag, read from git (``release`` names
    the tag); for a path it is the ``card.json`` the caller named (``release`` is None).
    """

    directory: Path
    card: dict[str, Any]
    release: str | None = None


def _is_path(spec: str | Path) -> bool:
    return isinstance(spec, Path) or Path(spec).exists() or "/" in str(spec) or str(spec).endswith(".json")


def locate(spec: str | Path, repo: str | Path = ".") -> Located:
    """A path as given with its card, or, for ``vX.Y.Z``/``latest``/a stage, a verified local
    copy of that release with the card at its tag (see :func:`modelshelf.registry.restore.fetch`).

    Args:
        spec: a ``card.json``, the directory holding it, or a release of the project at ``repo``.
        repo: a path inside the project whose registry resolves a release.

    Returns:
        The directory and the card its artefacts must match.

    Raises:
        IntegrityError: no card at the path, or no bytes matching the release's card;
        ConfigError: an unknown version or stage; RemoteError: the bytes are nowhere.
    """
    if _is_path(spec):
        card, directory = _card_dir(spec)
        return Located(directory, card)
    from modelshelf.registry.restore import fetch

    done = fetch(repo, str(spec))
    return Located(done.directory, done.card, done.release.tag)


def resolve(spec: str | Path, repo: str | Path = ".") -> Path:
    """The directory of :func:`locate` (a path as given, or a verified copy of a release).

    Prefer :func:`locate`: a caller that reads ``card.json`` from a release's copy trusts a
    file anyone who can write ``.dvc/tmp`` can replace; the card :func:`locate` returns is git's.
    """
    if _is_path(spec):
        return Path(spec)
    return locate(spec, repo).directory


def load(card_or_dir: str | Path, *, repo: str | Path = ".", allow_version_mismatch: bool = False) -> Model:
    """Load the model a card describes: sha256 first, scikit-learn version next, then joblib.

    ``card_or_dir`` is a ``card.json``, the directory holding it (e.g. ``models/``), or a
    release of the project at ``repo``: ``"v1.2.0"``, ``"latest"`` or a stage such as ``"prod"``.
    A release is verified against the card at its tag, read from git, never against the
    ``card.json`` of its local copy.

    Raises:
        IntegrityError: bytes that do not match the card (nothing is unpickled);
        VersionMismatchError: another scikit-learn than the card's; ConfigError: unknown release.
    """
    where = locate(card_or_dir, repo)
    card, directory = where.card, where.directory
    rec = card["artefacts"]["model"]
    # load_verified hashes the very file it then unpickles, against the trusted card's sha256.
    estimator = artefacts.load_verified(
        directory / rec["file"], rec["sha256"],
        sklearn_version=card["dependencies"].get("scikit-learn"),
        allow_version_mismatch=allow_version_mismatch, label="the card's")
    return Model(estimator, card, directory)
