"""Git access through the real ``git`` command: files at revisions, refs and tags, and what a
shallow or tag-less clone lacks."""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass, field
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


def no_prompt_env() -> dict[str, str]:
    """Environment for network commands that must fail rather than ask: no credential prompt,
    ssh in batch mode (unless the user configured ssh for git)."""
    env = {"GIT_TERMINAL_PROMPT": "0"}
    if "GIT_SSH_COMMAND" not in os.environ and "GIT_SSH" not in os.environ:
        env["GIT_SSH_COMMAND"] = "ssh -o BatchMode=yes"
    return env


_TAG_FORMAT = "%00".join([
    "%(objecttype)", "%(refname:strip=2)", "%(*objectname)", "%(taggerdate:unix)",
    "%(taggerdate:iso-strict)", "%(taggername)", "%(taggeremail:trim)", "%(contents:subject)",
])


@dataclass(frozen=True)
class GitRepo:
    """A git working tree; ``root`` is its top-level directory."""

    root: Path
    git_dir: Path | None = field(default=None, compare=False)   # known when found without asking git

    @classmethod
    def discover(cls, start: str | Path = ".") -> GitRepo:
        """The repository containing ``start``; GitError when there is none."""
        found = _find_work_tree(Path(start))
        if found is not None:  # the common case, without a subprocess (``shelf versions`` is timed)
            return cls(found, found / ".git")
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

    def resolve_branch(self, rev: str) -> tuple[str, str] | None:
        """``(sha, how)`` for a baseline such as ``main``, also on a forge's checkout.

        A pull request's checkout is detached with no local ``main`` (GitHub keeps
        ``origin/main``; a shallow or single-branch one may have only the base SHA), so after
        ``rev`` itself come the default remote's ``REMOTE/rev`` and then the pull request's
        base commit when ``rev`` is its target branch (:func:`forge_base`). ``how`` is empty
        when ``rev`` resolved as given, else says what stood in for it.
        """
        sha = self.resolve(rev)
        if sha is not None:
            return sha, ""
        remote = self.default_remote()
        if remote is not None and not rev.startswith(("refs/", f"{remote}/")):
            sha = self.resolve(f"refs/remotes/{remote}/{rev}")
            if sha is not None:
                return sha, f"{remote}/{rev} (no local branch {rev})"
        base = forge_base(rev)
        if base is not None:
            sha = self.resolve(base[0])
            if sha is not None:
                return sha, f"{base[0][:12]}, {base[1]}"
        return None

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
        return bool(self.modified(ignore))

    def modified(self, ignore: tuple[str, ...] = ()) -> list[str]:
        """The tracked files that differ from HEAD (staged or not), outside the ``ignore``
        prefixes, sorted; a rename counts as its new path."""
        out = self.run("status", "--porcelain", "-z", "--untracked-files=no").stdout
        found, records = set(), iter(out.split("\0"))
        for record in records:
            if len(record) < 4:
                continue
            if record[0] in "RC":   # -z: "R  NEW\0OLD"
                next(records, None)
            path = record[3:]
            if not any(path == p or path.startswith(p.rstrip("/") + "/") for p in ignore):
                found.add(path)
        return sorted(found)

    def tag_records(self, pattern: str = "") -> list[TagRecord]:
        """Every annotated tag (matching ``pattern``) with its commit and tagger, in one git call."""
        out = self.run("for-each-ref", f"--format={_TAG_FORMAT}",
                       f"refs/tags/{pattern}" if pattern else "refs/tags").stdout
        return [r for r in map(_parse_tag_line, out.splitlines()) if r is not None]

    def show_many(self, specs: list[str]) -> list[bytes | None]:
        """``git show`` for many ``rev:path`` specs through one ``git cat-file --batch``."""
        if not specs:
            return []
        batch = "\n".join(specs).encode() + b"\n"
        if len(specs) < 1000:
            proc = subprocess.run(["git", "cat-file", "--batch"], cwd=self.root, check=False, input=batch,
                                  stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        else:
            import tempfile  # not at the top: it imports shutil (and zlib, bz2, lzma); `shelf serve` is timed

            # The specs come from a file and only stdout is a pipe: communicate() then reads it in
            # one call instead of polling 32 KiB at a time (10,000 cards are over 100 MB).
            with tempfile.TemporaryFile() as specs_file:
                specs_file.write(batch)
                specs_file.seek(0)
                proc = subprocess.run(["git", "cat-file", "--batch"], cwd=self.root, check=False,
                                      stdin=specs_file, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
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

    def commit_times(self, commits: list[str]) -> dict[str, int]:
        """Committer time (unix seconds) of each of ``commits``, in one ``git log --no-walk``."""
        if not commits:
            return {}
        proc = subprocess.run(["git", "log", "--no-walk=unsorted", "--stdin", "--format=%H %ct"], cwd=self.root,
                              input="\n".join(dict.fromkeys(commits)) + "\n", capture_output=True, text=True,
                              check=False)
        out = {}
        for line in proc.stdout.splitlines():
            sha, _, when = line.partition(" ")
            if when.isdigit():
                out[sha] = int(when)
        return out

    def is_shallow(self) -> bool:
        """True in a shallow clone (``git clone --depth N``): history before the cut is absent."""
        if self.git_dir is not None:
            return (self.git_dir / "shallow").is_file()  # what --is-shallow-repository checks
        return self.run("rev-parse", "--is-shallow-repository", check=False).stdout.strip() == "true"

    def remotes(self) -> list[str]:
        """The names of the configured git remotes."""
        return self.run("remote", check=False).stdout.split()

    def default_remote(self) -> str | None:
        """The remote of the current branch's upstream, else ``origin``, else the only remote."""
        names = self.remotes()
        branch = self.run("symbolic-ref", "-q", "--short", "HEAD", check=False).stdout.strip()
        if branch:
            upstream = self.run("config", f"branch.{branch}.remote", check=False).stdout.strip()
            if upstream in names:
                return upstream
        if "origin" in names:
            return "origin"
        return names[0] if len(names) == 1 else None

    def remote_tags(self, remote: str, patterns: tuple[str, ...] = ()) -> set[str] | None:
        """Tag names ``remote`` has (matching the ``refs/tags/`` ``patterns``); None when unreachable.

        Read-only, and never prompts for credentials.
        """
        try:
            proc = subprocess.run(["git", "ls-remote", "--tags", "--refs", remote,
                                   *(f"refs/tags/{p}" for p in patterns)],
                                  cwd=self.root, capture_output=True, text=True, check=False, timeout=20,
                                  env={**os.environ, **no_prompt_env()})
        except subprocess.TimeoutExpired:
            return None
        if proc.returncode != 0:
            return None
        return {line.split("\t", 1)[1].removeprefix("refs/tags/") for line in proc.stdout.splitlines()
                if "\t" in line}

    def is_ancestor(self, commit: str, ref: str, fetch_from: str | None = None) -> bool:
        """True when ``commit`` is in the history of ``ref``.

        In a shallow clone a "no" may only mean the history is cut: then the missing history
        is fetched from ``fetch_from`` (``git fetch --unshallow``) and the question asked
        again; without a remote to fetch from, a :class:`GitError` says what to run.
        """
        def ask() -> int:
            return self.run("merge-base", "--is-ancestor", commit, ref, check=False).returncode

        code = ask()
        if code == 0:
            return True
        if not self.is_shallow():
            return False
        if fetch_from is None:
            remote = self.default_remote() or "origin"
            raise GitError("shallow clone", f"cannot tell whether {commit[:12]} is on {ref}: the history is cut",
                           f"run `git fetch --unshallow --tags {remote}`")
        self.fetch_history(fetch_from)
        return ask() == 0

    def fetch_history(self, remote: str) -> None:
        """``git fetch --unshallow --tags`` (or just ``--tags`` when not shallow); GitError on failure."""
        args = ["fetch", "-q", *(["--unshallow"] if self.is_shallow() else []), "--tags", remote]
        proc = self.run(*args, check=False, env=no_prompt_env())
        if proc.returncode != 0:
            lines = proc.stderr.strip().splitlines()
            raise GitError(f"git {' '.join(args[1:])}", lines[-1] if lines else "failed",
                           "check the remote is reachable, or run the fetch yourself")

    def annotated_tags(self, pattern: str, merged: str | None = None) -> list[str]:
        """Names of annotated tags matching ``pattern`` (optionally reachable from ``merged``)."""
        args = ["for-each-ref", "--format=%(objecttype) %(refname:strip=2)"]
        if merged:
            if self.resolve(merged) is None:
                return []
            args.append(f"--merged={merged}")
        out = self.run(*args, f"refs/tags/{pattern}").stdout
        return [line.split(" ", 1)[1] for line in out.splitlines() if line.startswith("tag ")]


def _find_work_tree(start: Path) -> Path | None:
    """The work tree above ``start`` whose ``.git`` is a plain directory, found as git would;
    None whenever git's own answer could differ (GIT_* discovery variables, a ``.git`` file
    of a linked worktree or submodule, no repository): then git is asked."""
    if any(k in os.environ for k in ("GIT_DIR", "GIT_WORK_TREE", "GIT_CEILING_DIRECTORIES",
                                     "GIT_DISCOVERY_ACROSS_FILESYSTEM", "GIT_COMMON_DIR")):
        return None
    try:
        here = start.resolve()
    except OSError:
        return None
    for cand in (here, *here.parents):
        dot = cand / ".git"
        if dot.is_dir() and (dot / "HEAD").is_file() and (dot / "objects").is_dir():
            return cand
        if dot.exists():
            return None
    return None


def _parse_tag_line(line: str) -> TagRecord | None:
    parts = line.split("\0")
    if len(parts) != 8 or parts[0] != "tag":
        return None  # lightweight tags do not count
    _, name, commit, ts, date, tagger, email, subject = parts
    return TagRecord(name, commit, int(ts or 0), date, tagger, email, subject)


def _git(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=False,
                              env={**os.environ, **env} if env else None)
    except FileNotFoundError:
        raise GitError("git", "command not found", "install git") from None


def forge_base(branch: str) -> tuple[str, str] | None:
    """``(sha, source)`` of the pull request's base commit when ``branch`` is its target.

    Read from the forge's own environment: GitHub's event payload (``GITHUB_EVENT_PATH``,
    ``pull_request.base.sha``, when ``GITHUB_BASE_REF`` is ``branch``) and GitLab's
    ``CI_MERGE_REQUEST_DIFF_BASE_SHA`` (when ``CI_MERGE_REQUEST_TARGET_BRANCH_NAME`` is).
    """
    if os.environ.get("GITHUB_BASE_REF") == branch and os.environ.get("GITHUB_EVENT_PATH"):
        try:
            event = json.loads(Path(os.environ["GITHUB_EVENT_PATH"]).read_text(encoding="utf-8"))
            sha = event["pull_request"]["base"]["sha"]
        except (OSError, ValueError, KeyError, TypeError):
            sha = None
        if isinstance(sha, str) and sha:
            return sha, "the pull request's base"
    if os.environ.get("CI_MERGE_REQUEST_TARGET_BRANCH_NAME") == branch:
        sha = os.environ.get("CI_MERGE_REQUEST_DIFF_BASE_SHA", "")
        if sha:
            return sha, "the merge request's base"
    return None
