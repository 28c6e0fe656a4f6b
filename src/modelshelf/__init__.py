"""modelshelf: gated, versioned scikit-learn models on Git + DVC."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from modelshelf.model import Model


def load(card_or_dir: Any, *, repo: Any = ".", allow_version_mismatch: bool = False) -> Model:
    """Load a model verified against its card: a path, or a release ("v1.2.0", "latest", "prod").

    A release is verified against the card committed at its tag, read from git, never against
    the card.json of its local copy.  See :func:`modelshelf.model.load`.
    """
    from modelshelf.model import load as _load

    return _load(card_or_dir, repo=repo, allow_version_mismatch=allow_version_mismatch)


__all__ = ["__version__", "load"]
