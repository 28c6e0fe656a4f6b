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


def resolve(spec: str | Path, repo: str | Path = ".") -> Path:
    """A path as given, or, for ``vX.Y.Z``/``latest``/a stage name, a verified local copy of that release."""
    path = Path(spec)
    if path.exists() or isinstance(spec, Path) or "/" in str(spec) or str(spec).endswith(".json"):
        return path
    from modelshelf.registry.restore import fetch

    return fetch(repo, str(spec))


def load(card_or_dir: str | Path, *, repo: str | Path = ".", allow_version_mismatch: bool = False) -> Model:
    """Load the model a card describes: sha256 first, scikit-learn version next, then joblib.

    ``card_or_dir`` is a ``card.json``, the directory holding it (e.g. ``models/``), or a
    release of the project at ``repo``: ``"v1.2.0"``, ``"latest"`` or a stage such as ``"prod"``.
    """
    card, directory = _card_dir(resolve(card_or_dir, repo))
    rec = card["artefacts"]["model"]
    estimator = artefacts.load_verified(
        directory / rec["file"], rec["sha256"],
        sklearn_version=card["dependencies"].get("scikit-learn"),
        allow_version_mismatch=allow_version_mismatch, label="the card's")
    return Model(estimator, card, directory)
