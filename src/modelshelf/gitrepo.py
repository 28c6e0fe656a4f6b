"""Git access through the real ``git`` command: files at revisions, refs and tags."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

from modelshelf.errors import GitError


@dataclass(frozen=True)
class TagRecord:
    """An annotated tag: name, the commit it points at, tagger and date, message subject."""

    name: str
    commit: str
    timestamp: int
    date: str
    tagger: str
    email: str
    subject: str


_TAG_FORMAT = "%00".join([
    "%(objecttype)", "%(refname:strip=2)", "%(*objectname)", "%(taggerdate:unix)",
    "%(taggerdate:iso-strict)", "%(taggername)", "%(taggeremail:trim)", "%(contents:subject)",
])


@dataclass(frozen=True)
class GitRepo:
    """A git working tree; ``root`` is its top-level directory."""

    root: Path

    @classmethod
    def discover(cls, start: str | Path = ".") -> GitRepo:
        """The repository containing ``start``; GitError when there is none."""
        proc = _git(["rev-parse", "--show-toplevel"], cwd=Path(start))
        if proc.returncode != 0:
            raise GitError(str(Path(start).resolve()), "not inside a git repository",
                           "run `git init` (and `dvc init`) first")
        return cls(Path(proc.stdout.strip()))

    def run(self, *args: str, check: bool = True,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        proc = _git(list(args), cwd=self.root, env=env)
        if check and proc.returncode != 0:
            detail = proc.stderr.strip().splitlines()
            raise GitError(f"git {' '.join(args[:2])}", detail[-1] if detail else "failed",
                           "check the repository state")
        return proc

    def relpath(self, path: str | Path) -> str:
        """``path`` relative to the repository root, in git's slash form."""
        return Path(path).resolve().relative_to(self.root.resolve()).as_posix()

    def resolve(self, rev: str) -> str | None:
        """The commit sha ``rev`` names, or None when it names nothing."""
        proc = self.run("rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}", check=False)
        return proc.stdout.strip() if proc.returncode == 0 else None

    def has_any_commit(self) -> bool:
        """True when any ref in the repository names a commit."""
        return bool(self.run("rev-list", "-n", "1", "--all").stdout.strip())

    def show(self, rev: str, path: str) -> bytes | None:
        """The bytes of ``path`` (repo-relative) at ``rev``, or None when absent there."""
        proc = subprocess.run(["git", "show", f"{rev}:{path}"], cwd=self.root,
                              capture_output=True, check=False)
        return proc.stdout if proc.returncode == 0 else None

    def head(self) -> str | None:
        return self.resolve("HEAD")

    def is_dirty(self, ignore: tuple[str, ...] = ()) -> bool:
        """True when tracked files differ from HEAD, outside the ``ignore`` prefixes."""
        out = self.run("status", "--porcelain", "--untracked-files=no").stdout
        for line in out.splitlines():
            path = line[3:].split(" -> ")[-1].strip('"')
            if not any(path == p or path.startswith(p.rstrip("/") + "/") for p in ignore):
                return True
        return False

    def tag_records(self, pattern: str = "") -> list[TagRecord]:
        """Every annotated tag (matching ``pattern``) with its commit and tagger, in one git call."""
        out = self.run("for-each-ref", f"--format={_TAG_FORMAT}",
                       f"refs/tags/{pattern}" if pattern else "refs/tags").stdout
        return [r for r in map(_parse_tag_line, out.splitlines()) if r is not None]

    def show_many(self, specs: list[str]) -> list[bytes | None]:
        """``git show`` for many ``rev:path`` specs through one ``git cat-file --batch``."""
        if not specs:
            return []
        proc = subprocess.run(["git", "cat-file", "--batch"], cwd=self.root, check=False,
                              input="\n".join(specs).encode() + b"\n", capture_output=True)
        data, pos, out = proc.stdout, 0, []
        for _ in specs:
            end = data.index(b"\n", pos)
            header = data[pos:end].split()
            pos = end + 1
            if len(header) == 3:
                size = int(header[2])
                out.append(data[pos:pos + size])
                pos += size + 1
            else:  # "<spec> missing"
                out.append(None)
        return out

    def annotated_tags(self, pattern: str, merged: str | None = None) -> list[str]:
        """Names of annotated tags matching ``pattern`` (optionally reachable from ``merged``)."""
        args = ["for-each-ref", "--format=%(objecttype) %(refname:strip=2)"]
        if merged:
            if self.resolve(merged) is None:
                return []
            args.append(f"--merged={merged}")
        out = self.run(*args, f"refs/tags/{pattern}").stdout
        return [line.split(" ", 1)[1] for line in out.splitlines() if line.startswith("tag ")]


def _parse_tag_line(line: str) -> TagRecord | None:
    parts = line.split("\0")
    if len(parts) != 8 or parts[0] != "tag":
        return None  # lightweight tags do not count
    _, name, commit, ts, date, tagger, email, subject = parts
    return TagRecord(name, commit, int(ts or 0), date, tagger, email, subject)


def _git(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    import os

    try:
        return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=False,
                              env={**os.environ, **env} if env else None)
    except FileNotFoundError:
        raise GitError("git", "command not found", "install git") from None
