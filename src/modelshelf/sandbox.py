"""A hermetic environment for running git and DVC.

A private HOME, no system or global git config beyond a private one, a fixed git
identity, no DVC analytics, this interpreter's ``bin`` first on PATH (so ``shelf``
and ``dvc`` are the ones installed next to it).  Used by the test suite and the
benchmarks, which must not read or write the user's configuration.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

GITCONFIG = "[init]\n\tdefaultBranch = main\n"
"""The private global git config: new repositories start on ``main``."""


def hermetic_env(home: Path, *, name: str = "modelshelf") -> dict[str, str]:
    """This process's environment minus GIT_*/DVC_*, plus a private HOME and a fixed identity.

    ``home`` (made if missing) becomes HOME, holds the XDG config and cache
    directories and DVC's site cache, and gets a ``.gitconfig`` (written if missing)
    that is the only git config read besides a repository's own.  Commits are made
    by "``name`` Author" <author@example.invalid> and "``name`` Committer"
    <committer@example.invalid>.  PATH is this process's with the directory of
    ``sys.executable`` put first.

    Returns a new dict; ``os.environ`` is not changed.
    """
    home.mkdir(parents=True, exist_ok=True)
    gitconfig = home / ".gitconfig"
    if not gitconfig.exists():
        gitconfig.write_text(GITCONFIG, encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GIT_", "DVC_"))}
    env.update({
        "HOME": str(home),
        "XDG_CONFIG_HOME": str(home / ".config"),
        "XDG_CACHE_HOME": str(home / ".cache"),
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": str(gitconfig),
        "GIT_AUTHOR_NAME": f"{name} Author",
        "GIT_AUTHOR_EMAIL": "author@example.invalid",
        "GIT_COMMITTER_NAME": f"{name} Committer",
        "GIT_COMMITTER_EMAIL": "committer@example.invalid",
        "DVC_NO_ANALYTICS": "1",
        "DVC_SITE_CACHE_DIR": str(home / ".dvc-site"),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    })
    return env


__all__ = ["GITCONFIG", "hermetic_env"]
