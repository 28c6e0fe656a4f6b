"""Releasing the workspace model: tag ``model@vX.Y.Z`` once its artefacts are in the DVC remote.

The model must be committed, gated, up to date with its pipeline, and be the very bytes the
gate judged; its committed metrics must still clear the gate against ``gate.baseline`` as it
is now.  A taken version is refused, or (``--renumber``) replaced by the next free one in a
new commit.

Every step can be killed and rerun:

- a release tag at HEAD that never reached the git remote is completed by the next
  ``release --push`` (the DVC remote is proven to hold every object, then the tag is
  pushed), or deleted and reported when the remote took that version with another tag;
- an interrupted renumber (the card's version rewritten, not committed) is recognised from
  the working tree itself and finished by the next ``release --renumber``;
- a ``--renumber --push`` that could not publish its branch leaves neither its tag nor its
  renumber commit behind, and says which commands recover.

The baseline rule at release: the gate stage does not rerun when ``gate.baseline`` moves, so
the release compares the committed metrics with the committed metrics of the model
``gate.baseline`` holds now (when that is this very model, with the model it held before:
the newest commit on its first-parent history whose metrics differ).  When that baseline has
the same metrics file as the one the gate judged against, the gate's verdict stands (it may
have re-scored the baseline model on the current data); otherwise the committed metrics must
clear :func:`modelshelf.pipeline.gate.judge` against it, or the release is refused (exit 3).
"""

from __future__ import annotations

import json
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from modelshelf import artefacts, dvcrepo, tags
from modelshelf.card import parse_card
from modelshelf.errors import GateFailed, GitError, ReleaseRefused, RemoteError, ShelfError
from modelshelf.pipeline.gate import judge, read_baseline
from modelshelf.pipeline.metrics import task_of
from modelshelf.params import load_params
from modelshelf.project import stage_options
from modelshelf.registry.core import Registry, Workspace, create_tag, fetch_tags, open_registry
from modelshelf.registry import signing
from modelshelf.pipeline.stages import candidate_sha256
from modelshelf.tags import SemVer

RENUMBER_HINT = "run `shelf release --renumber` (add --push to publish) to take the next free version"
BASELINE_HISTORY = 500   # first-parent commits searched for the model gate.baseline held before
_RENUMBERED = re.compile(r"^(major|minor|patch): renumbered from (\S+) after v(\S+) was released$")


# --- what may be released -------------------------------------------------------------------


def _check_releasable(ws: Workspace) -> tuple[dict[str, Any], list[str]]:
    """The workspace card, once the tree, gate, metrics and model all agree, and what changed
    since ``dvc.lock`` (new data landed, say): such a model is released only if it already is."""
    if ws.repo.is_dirty():
        raise ReleaseRefused(str(ws.root), "the working tree has uncommitted changes",
                             "commit (or stash) them, then release")
    card_path = ws.repo.root / ws.card
    card = parse_card(card_path.read_bytes(), ws.card) if card_path.is_file() else None
    if card is None:
        raise ReleaseRefused(ws.card, "no model card", "run `dvc repro` and commit its outputs")
    opts = stage_options(ws.root, "gate")
    gate_path, metrics_path = ws.root / opts["out"], ws.root / opts["metrics"]
    try:
        report = json.loads(gate_path.read_text())
        metrics = json.loads(metrics_path.read_text())
    except (OSError, ValueError):
        raise ReleaseRefused(opts["out"], "no readable gate report or metrics", "run `dvc repro`") from None
    if report.get("passed") is not True or not card.get("gate", {}).get("passed"):
        raise GateFailed(opts["out"], "the gate did not pass for this model", "only gated models are released")
    if report.get("metrics_sha256") != artefacts.sha256_file(metrics_path) or card.get("metrics") != metrics:
        raise ReleaseRefused(opts["out"], "the gate report, metrics and card disagree (stale gate)",
                             "run `dvc repro` and commit its outputs")
    _check_gated_bytes(ws, card, report, opts["out"])
    changes = sorted(dvcrepo.pipeline_changes(ws.root))
    for rec in card["artefacts"].values():
        artefacts.verify(ws.repo.root / PurePosixPath(ws.card).parent / rec["file"], rec["sha256"], "the card's")
    _check_train_candidate(ws, card)
    return card, changes


def _check_gated_bytes(ws: Workspace, card: dict[str, Any], report: dict[str, Any], gate_rel: str) -> None:
    """The card's model is the candidate the gate judged, as the report and the card record it."""
    model_sha = card["artefacts"]["model"]["sha256"]
    for where, gated in ((gate_rel, report.get("candidate_sha256")),
                         (f"{ws.card}: gate.candidate_sha256", card.get("gate", {}).get("candidate_sha256"))):
        if gated is None:
            raise GateFailed(ws.model, f"the gate recorded no candidate sha256 ({where}: an older gate)",
                             "rerun the gate with its candidate (`dvc repro -f gate`, with "
                             "`${paths.candidate}/candidate.json` in its deps as `shelf init` writes) and commit")
        if gated != model_sha:
            judged = f"{gated[:12]}…" if isinstance(gated, str) else repr(gated)
            raise GateFailed(ws.model, f"its sha256 {model_sha[:12]}… is not the candidate the gate judged "
                                       f"({judged} in {where})",
                             "rebuild it with `dvc repro` and commit; only the gated candidate's bytes are released")


def _check_train_candidate(ws: Workspace, card: dict[str, Any]) -> None:
    """The card's model is the train stage's candidate: its info's sha256 and its bytes."""
    out = stage_options(ws.root, "train").get("out")
    if out is None:
        raise ReleaseRefused(f"{ws.root / 'dvc.yaml'}: stages.train", "no --out: the candidate cannot be found",
                             "keep `shelf init`'s train stage (`--out build/candidate`)")
    trained = candidate_sha256(ws.root / out)
    model_sha = card["artefacts"]["model"]["sha256"]
    if trained != model_sha:
        raise GateFailed(ws.model, f"its sha256 {model_sha[:12]}… is not the train stage's candidate "
                                   f"({trained[:12]}…, {out})",
                         "rebuild it with `dvc repro` and commit; only the gated candidate's bytes are released")


def _blobs(ws: Workspace, specs: list[str]) -> list[str | None]:
    """The blob id of each ``rev:path`` (None when absent), in one ``git cat-file --batch-check``."""
    if not specs:
        return []
    done = subprocess.run(["git", "cat-file", "--batch-check=%(objectname) %(objecttype)"], cwd=ws.repo.root,
                          input="\n".join(specs) + "\n", capture_output=True, text=True, check=False)
    out: list[str | None] = []
    for line in done.stdout.splitlines()[:len(specs)]:
        parts = line.split()
        out.append(parts[0] if len(parts) == 2 and parts[1] == "blob" else None)
    return out + [None] * (len(specs) - len(out))


def baseline_now(ws: Workspace, rev: str, metrics_rel: str) -> str | None:
    """The commit whose committed metrics a release is judged against: ``rev`` now, or, when
    ``rev`` holds this very model (HEAD's metrics), the newest commit on its first-parent
    history whose metrics differ.  None when there is no such commit (no earlier model)."""
    now = ws.repo.resolve(rev)
    if now is None:
        return None
    ours, at_now = _blobs(ws, [f"HEAD:{metrics_rel}", f"{now}:{metrics_rel}"])
    if at_now != ours:
        return now
    chain = ws.repo.run("rev-list", "--first-parent", f"--max-count={BASELINE_HISTORY}", now).stdout.split()
    for commit, blob in zip(chain, _blobs(ws, [f"{c}:{metrics_rel}" for c in chain]), strict=True):
        if blob != ours:
            return commit if blob is not None else None
    return None


def _rejudge(ws: Workspace, git_remote: str | None) -> None:
    """Refuse (GateFailed) when the model on ``gate.baseline`` now beats the committed metrics.

    With ``git_remote`` (tags and branches just fetched), a local ``gate.baseline`` branch that
    is behind its remote-tracking branch is read there: that is where it is now.
    """
    opts = stage_options(ws.root, "gate")
    metrics_path = ws.root / opts["metrics"]
    metrics = json.loads(metrics_path.read_text())
    report = json.loads((ws.root / opts["out"]).read_text())
    metrics_rel = ws.repo.relpath(metrics_path)
    params = load_params(ws.root / "params.yaml").gate
    if ws.repo.is_shallow():  # the model gate.baseline held before may be beyond the cut
        remote_name = git_remote or ws.repo.default_remote()
        if remote_name is None:
            raise GitError("shallow clone", "the baseline's history is cut",
                           "fetch it (`git fetch --unshallow --tags REMOTE`), then release")
        ws.repo.fetch_history(remote_name)
    rev = params.baseline
    local = ws.repo.resolve(rev)
    tracking = ws.repo.resolve(f"{git_remote}/{rev}") if git_remote else None
    if tracking is not None and local is not None and tracking != local and _is_ancestor(ws, local, tracking):
        rev = f"{git_remote}/{rev}"
    if local is None and tracking is None:
        read_baseline(ws.repo, params.baseline, metrics_rel)  # raises the gate's own ConfigError
        return
    if local is None:
        rev = f"{git_remote}/{rev}"
    effective = baseline_now(ws, rev, metrics_rel)
    if effective is None:
        return
    judged = (report.get("baseline") or {}).get("commit")
    then_blob = _blobs(ws, [f"{judged}:{metrics_rel}"])[0] if judged else None
    if then_blob is not None and _blobs(ws, [f"{effective}:{metrics_rel}"])[0] == then_blob:
        return  # the baseline the gate judged against is still the one: its verdict stands
    task = task_of(k for k, v in metrics.items() if v is not None) or str(report.get("task") or "binary")
    result = judge(metrics, params, task, read_baseline(ws.repo, effective, metrics_rel))
    failed = [c for c in result.checks if not c.passed]
    if failed:
        c = failed[0]
        raise GateFailed(f"gate.baseline {rev} ({effective[:12]})",
                         f"moved since the gate ran and now beats this model: {c.metric} "
                         f"{'; '.join(c.reasons)}",
                         f"merge {params.baseline} and rerun `dvc repro` so the gate judges against it")


# --- the git remote -------------------------------------------------------------------------


def remote_tags(ws: Workspace, git_remote: str) -> dict[str, str]:
    """Tag name → tag object id, as ``git ls-remote --tags`` reports them."""
    proc = ws.repo.run("ls-remote", "--tags", git_remote, check=False)
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines()
        raise GitError(f"git ls-remote {git_remote}", lines[-1] if lines else "failed",
                       f"check the git remote (`git remote get-url {git_remote}`) is reachable")
    found = {}
    for line in proc.stdout.splitlines():
        oid, _, ref = line.partition("\t")
        if ref.startswith("refs/tags/") and not ref.endswith("^{}"):
            found[ref.removeprefix("refs/tags/")] = oid
    return found


def local_tags(ws: Workspace) -> dict[str, str]:
    """Tag name → object id of every local tag."""
    out = ws.repo.run("for-each-ref", "--format=%(objectname) %(refname:strip=2)", "refs/tags").stdout
    return {name: oid for oid, _, name in (line.partition(" ") for line in out.splitlines())}


def drop_clobbered(ws: Workspace, remote: dict[str, str], git_remote: str) -> list[str]:
    """Delete this model's local tags that the git remote holds as other tag objects (another
    clone took that name); they can never be pushed.  Returns one note per deleted tag."""
    notes = []
    for name, oid in sorted(local_tags(ws).items()):
        parsed = tags.parse_tag(name)
        if parsed is None or parsed.name != ws.name or name not in remote or remote[name] == oid:
            continue
        commit = ws.repo.resolve(name) or ""
        ws.repo.run("tag", "-d", name)
        notes.append(f"deleted the local tag {name} (at {commit[:12]}): {git_remote} holds {name} "
                     "as another tag, never replaced")
    return notes


def _is_ancestor(ws: Workspace, a: str, b: str) -> bool:
    return ws.repo.is_ancestor(a, b, fetch_from=ws.repo.default_remote())


def _current_branch(ws: Workspace) -> str:
    return ws.repo.run("rev-parse", "--abbrev-ref", "HEAD").stdout.strip()


def _diverged(ws: Workspace, git_remote: str, branch: str, upstream: str) -> ReleaseRefused:
    """The one-line refusal for a branch that cannot be pushed, with the commands that recover."""
    base = ws.repo.run("merge-base", "HEAD", upstream, check=False).stdout.strip()

    def model_at(rev: str) -> tuple[str | None, str | None]:
        raw = ws.repo.show(rev, ws.card) if rev else None
        try:
            card = json.loads(raw) if raw is not None else {}
        except ValueError:
            card = {}
        return (card.get("artefacts", {}).get("model", {}).get("sha256"), card.get("version"))

    theirs, their_version = model_at(upstream)
    if theirs != model_at(base)[0] and theirs != model_at("HEAD")[0]:
        name = f"release-{(ws.repo.head() or '')[:8]}"
        return ReleaseRefused(f"{git_remote}/{branch}",
                              f"moved on with another model (v{their_version} at {upstream[:12]}); "
                              "nothing was tagged or committed",
                              f"release yours from its own branch: `git switch -c {name}` then "
                              f"`shelf release --renumber --push`; or merge it (`git pull --no-rebase "
                              f"{git_remote} {branch}`, `dvc repro`, commit) and release again")
    return ReleaseRefused(f"{git_remote}/{branch}", "has commits this branch lacks; nothing was tagged or committed",
                          f"run `git pull --rebase {git_remote} {branch}`, then `shelf release --renumber --push`")


def _branch_to_push(ws: Workspace, git_remote: str, will_commit: bool) -> str | None:
    """The branch to push with the tag (None: HEAD is already on the remote, or detached).

    Raises ReleaseRefused when the remote branch has moved past HEAD's history (``will_commit``:
    when a renumber commit on top of HEAD would not fast-forward it).
    """
    branch = _current_branch(ws)
    if branch == "HEAD":
        if will_commit:
            raise ReleaseRefused("HEAD", "a renumber commit cannot be published from a detached HEAD",
                                 "check out the branch (`git switch -C main`) and retry")
        return None  # pushing the tag sends the commit it names
    upstream = ws.repo.resolve(f"{git_remote}/{branch}")
    head = ws.repo.head() or ""
    if upstream is None:
        return branch
    if not will_commit and _is_ancestor(ws, head, upstream):
        return None
    if _is_ancestor(ws, upstream, head):
        return branch
    raise _diverged(ws, git_remote, branch, upstream)


def _push_release(ws: Workspace, tag: str, git_remote: str, branch: str | None,
                  renumber_commit: str | None) -> None:
    """Push ``tag`` (with ``branch``) atomically.  If the remote says no, delete the tag and
    undo ``renumber_commit`` (when HEAD is still it), so nothing blocks the retry."""
    refs = [f"refs/tags/{tag}"]
    if branch is not None:
        refs.insert(0, f"HEAD:refs/heads/{branch}")
    pushed = ws.repo.run("push", "--atomic", "--porcelain", git_remote, *refs, check=False)
    if pushed.returncode == 0:
        return
    _undo_local_release(ws, tag, renumber_commit)  # the remote said no: leave no local claim
    undone = renumber_commit is not None and ws.repo.head() != renumber_commit
    out = pushed.stdout + pushed.stderr
    rejected = [line for line in out.splitlines()
                if line.startswith("!") and "refs/heads/" in line and "atomic" not in line]
    what = "the renumber commit and its tag were undone" if undone else "the tag was deleted"
    if rejected and branch is not None and "[remote rejected]" in rejected[0]:
        # Not a moved branch: the forge's own rule (a protected branch, a hook) said no.
        reason = rejected[0].rsplit("[remote rejected]", 1)[1].strip(" ()") or "no reason given"
        said = next((line.removeprefix("remote:").strip() for line in out.splitlines()
                     if line.startswith("remote:") and "error" in line.lower()), "")
        raise ReleaseRefused(f"{git_remote}/{branch}",
                             f"the git remote refused the push to {branch} ({reason}"
                             f"{': ' + said if said else ''}); {what}",
                             (f"let the release identity push to {branch}, or renumber through a pull request "
                              "(docs/setup.md, \"Protected main\")") if renumber_commit else
                             f"merge the commit into {branch} first (a pull request), then release it there")
    if rejected and branch is not None:
        raise ReleaseRefused(f"{git_remote}/{branch}", f"moved while releasing {tag}; {what}",
                             f"run `git pull --rebase {git_remote} {branch}`, then `shelf release "
                             f"{'--renumber ' if renumber_commit else ''}--push`")
    if renumber_commit is not None and not undone:
        raise ReleaseRefused(tag, "the git remote refused the tag; the renumber commit stays (HEAD moved)",
                             f"`git fetch --tags {git_remote}`, then `shelf release --renumber --push`")
    raise ReleaseRefused(tag, "the git remote refused the tag (another release took this version?)",
                         RENUMBER_HINT)


# --- the DVC remote -------------------------------------------------------------------------


def _publish_objects(ws: Workspace, card: dict[str, Any], dvc_remote: str | None) -> None:
    """``dvc push`` the workspace, then prove the remote holds every output and released file."""
    dvcrepo.push(ws.root, dvc_remote)
    missing = dvcrepo.missing_in_remote(ws.root, dvc_remote)
    card_dir = ws.repo.root / PurePosixPath(ws.card).parent
    # `dvc status -c` trusts directory manifests; prove each released file's own object is there.
    missing += dvcrepo.missing_objects(ws.root, [card_dir / rec["file"] for rec in card["artefacts"].values()],
                                      dvc_remote)
    if missing:
        raise ReleaseRefused("dvc remote", f"{len(missing)} output(s) missing after push: {missing[0]}",
                             "check the remote, then `dvc push` and retry")


def lock_oids(ws: Workspace, commit: str, paths: list[str]) -> dict[str, list[str]]:
    """Project-relative path → the DVC objects it needs at ``commit``, from dvc.lock there: its
    own md5, or, for a file inside a directory output, ``[dir md5, "dir/:relpath"]`` (its md5
    is in that directory's manifest).  ``[]`` for a path dvc.lock does not cover."""
    raw = ws.repo.show(commit, ws.lock)
    lock = yaml.safe_load(raw) if raw is not None else None
    outs = [(str(o.get("path", "")).rstrip("/"), str(o.get("md5", "")))
            for stage in ((lock or {}).get("stages") or {}).values() for o in stage.get("outs") or []]
    found: dict[str, list[str]] = {}
    for rel in paths:
        for path, md5 in outs:
            if path == rel:
                found[rel] = [md5]
            elif md5.endswith(".dir") and rel.startswith(path + "/"):
                found[rel] = [md5, f"{path}/:{rel[len(path) + 1:]}"]
        found.setdefault(rel, [])
    return found


def card_paths(ws: Workspace, card: dict[str, Any]) -> list[str]:
    """The project-relative paths (as dvc.lock names them) of the files ``card`` lists."""
    root_rel = PurePosixPath(ws.repo.relpath(ws.root))
    card_dir = PurePosixPath(ws.card).parent
    files = [card_dir / rec["file"] for rec in card["artefacts"].values()]
    return [(f.relative_to(root_rel) if str(root_rel) != "." else f).as_posix() for f in files]


def manifest_md5(ws: Workspace, odb: Any, oids: list[str]) -> str | None:
    """The md5 of a file inside a directory output (``oids`` from :func:`lock_oids`), read from
    the manifest in the local cache, else in the remote object store ``odb`` (when given)."""
    entry = oids[1].split(":", 1)[1]
    local = dvcrepo.cache_file(ws.root, oids[0])
    if local.is_file():
        data = local.read_bytes()
    elif odb is not None and odb.exists(oids[0]):
        data = odb.fs.cat_file(odb.oid_to_path(oids[0]))
    else:
        return None
    try:
        entries = json.loads(data)
    except ValueError:
        return None
    return next((e.get("md5") for e in entries if isinstance(e, dict) and e.get("relpath") == entry), None)


def remote_odb(ws: Workspace, dvc_remote: str | None, fn: Any) -> Any:
    """``fn(odb)`` with the DVC remote's object store, opened read-only; RemoteError when not."""
    return dvcrepo.with_remote_odb(ws.root, dvc_remote, "fetch", fn)


def missing_in_remote_at(ws: Workspace, commit: str, card: dict[str, Any],
                         dvc_remote: str | None = None) -> list[str]:
    """The card's files at ``commit`` whose objects the DVC remote lacks.  Read-only: it only
    asks the remote's object store whether each object exists (nothing is uploaded).

    Raises:
        RemoteError: the remote cannot be asked.
    """
    needs = lock_oids(ws, commit, card_paths(ws, card))

    def check(odb: Any) -> list[str]:
        missing = []
        for f, oids in needs.items():
            if not oids or not odb.exists(oids[0]):  # not in dvc.lock: nothing proves it is there
                missing.append(f)
            elif len(oids) == 2 and ((md5 := manifest_md5(ws, odb, oids)) is None or not odb.exists(md5)):
                missing.append(f)
        return missing

    return remote_odb(ws, dvc_remote, check)


# --- the tag --------------------------------------------------------------------------------


def _tag_message(ws: Workspace, version: SemVer, card: dict[str, Any]) -> str:
    """The release tag's message: GTO's subject line, then the gate's checks and the model hash."""
    lines = [tags.release_message(ws.name, version), ""]

    def num(v: Any) -> str:
        return "none" if v is None else f"{v:.6g}"

    for metric, check in card.get("gate", {}).get("checks", {}).items():
        lines.append(f"{metric}: {num(check.get('value'))} (threshold {num(check.get('threshold'))}, "
                     f"baseline {num(check.get('baseline'))}, {'passed' if check.get('passed') else 'failed'})")
    base = card.get("gate", {}).get("baseline", {})
    lines.append(f"gate: passed; baseline {base.get('rev')} {base.get('commit') or '(none)'}")
    lines.append(f"model-sha256: {card['artefacts']['model']['sha256']}")
    return "\n".join(lines) + "\n"


def tag_model_sha(ws: Workspace, tag: str) -> str | None:
    """The ``model-sha256:`` line of ``tag``'s message, or None."""
    text = ws.repo.run("for-each-ref", "--format=%(contents)", f"refs/tags/{tag}").stdout
    found = [ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.startswith("model-sha256:")]
    return found[-1] if found else None


@dataclass(frozen=True)
class Released:
    """What :func:`release` did: the tag, version and commit, whether it was pushed or renumbered,
    that the model was already released, or that an interrupted release was completed.
    ``notes`` says what was repaired on the way (a finished renumber, a deleted local tag)."""

    tag: str
    version: SemVer
    commit: str
    pushed: bool
    renumbered_from: SemVer | None = None
    already: bool = False
    resumed: bool = False
    notes: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        """What ``shelf release --json`` prints."""
        return {"tag": self.tag, "version": f"v{self.version}", "commit": self.commit, "pushed": self.pushed,
                "already": self.already, "resumed": self.resumed,
                "renumbered_from": None if self.renumbered_from is None else f"v{self.renumbered_from}",
                "notes": list(self.notes)}


# --- renumbering ----------------------------------------------------------------------------


def renumbered_card(card: dict[str, Any], taken: SemVer) -> dict[str, Any]:
    """``card`` with the next free version after ``taken`` and the reason in ``version_bump``."""
    bump = str(card.get("version_bump", "minor")).split(":")[0]
    part = bump if bump in ("major", "minor", "patch") else "minor"
    return {**card, "version": str(taken.bump(part)),
            "version_bump": f"{part}: renumbered from {card['version']} after v{taken} was released"}


def begin_renumber(ws: Workspace, card: dict[str, Any], taken: SemVer) -> dict[str, Any]:
    """The first step of a renumber: rewrite the card (atomically) and refresh dvc.lock."""
    new = renumbered_card(card, taken)
    artefacts.write_json(ws.repo.root / ws.card, new)
    proc = dvcrepo.dvc(ws.root, "commit", "-f", "-q", "serialise")
    if proc.returncode != 0:
        raise ReleaseRefused("dvc commit", dvcrepo.last_line(proc), "fix the pipeline, then retry")
    return new


def _commit_renumber(ws: Workspace, old: str, new: str) -> str:
    ws.repo.run("add", ws.card, ws.lock)
    ws.repo.run("commit", "-q", "-m", f"Renumber {ws.name} v{old} → v{new}")
    return ws.repo.head() or ""


def _renumber(ws: Workspace, card: dict[str, Any], taken: SemVer) -> tuple[SemVer, str]:
    """Rewrite the card to the next free version, refresh dvc.lock, and commit."""
    new = begin_renumber(ws, card, taken)
    return SemVer.parse(new["version"]), _commit_renumber(ws, card["version"], new["version"])


def _renumber_commit_of(ws: Workspace, version: SemVer) -> bool:
    """True when HEAD is the renumber commit that gave the card ``version`` (it changed only
    the card and dvc.lock)."""
    subject = ws.repo.run("log", "-1", "--format=%s").stdout.strip()
    if not re.fullmatch(rf"Renumber {re.escape(ws.name)} v\S+ → v{re.escape(str(version))}", subject):
        return False
    touched = ws.repo.run("diff", "--name-only", "HEAD~1", "HEAD", check=False).stdout.split()
    return set(touched) <= {ws.card, ws.lock}


def _undo_local_release(ws: Workspace, tag: str, renumber_commit: str | None) -> None:
    """Delete an unpublished local ``tag`` and the renumber commit under it (HEAD), so that the
    recovery a refusal names starts from the model commit."""
    ws.repo.run("tag", "-d", tag, check=False)
    if renumber_commit is not None:
        _undo_renumber(ws, renumber_commit)


def _undo_renumber(ws: Workspace, renumber_commit: str) -> bool:
    """Drop ``renumber_commit`` when HEAD is still it (the card and lock go back); True if done."""
    return ws.repo.head() == renumber_commit and \
        ws.repo.run("reset", "-q", "--keep", "HEAD~1", check=False).returncode == 0


def _without_card_hash(lock: Any, card_rel: str) -> Any:
    for stage in ((lock or {}).get("stages") or {}).values():
        for out in stage.get("outs") or []:
            if str(out.get("path")) == card_rel:
                for key in ("md5", "size", "hash"):
                    out.pop(key, None)
    return lock


def interrupted_renumber(ws: Workspace) -> tuple[str, str] | None:
    """``(old, new)`` when the working tree is a renumber that was killed before its commit:
    the only changes are the card's ``version``/``version_bump`` (reading "renumbered from OLD")
    and, in dvc.lock, that card's hash.  None for any other state."""
    status = ws.repo.run("status", "--porcelain", "--untracked-files=no").stdout.splitlines()
    changed = {line[3:].split(" -> ")[-1].strip('"') for line in status}
    if ws.card not in changed or not changed <= {ws.card, ws.lock}:
        return None
    before_raw = ws.repo.show("HEAD", ws.card)
    try:
        before = json.loads(before_raw) if before_raw is not None else None
        after = json.loads((ws.repo.root / ws.card).read_bytes())
    except (OSError, ValueError):
        return None
    if not isinstance(before, dict) or not isinstance(after, dict):
        return None
    diff = {k for k in set(before) | set(after) if before.get(k) != after.get(k)}
    m = _RENUMBERED.match(str(after.get("version_bump", "")))
    if not diff <= {"version", "version_bump"} or "version" not in diff or m is None \
            or m.group(2) != before.get("version") or not SemVer.is_valid(str(after.get("version"))):
        return None
    if ws.lock in changed:
        card_rel = PurePosixPath(ws.card).relative_to(ws.repo.relpath(ws.root)).as_posix() \
            if ws.repo.relpath(ws.root) != "." else ws.card
        head_lock = ws.repo.show("HEAD", ws.lock)
        try:
            theirs = yaml.safe_load(head_lock) if head_lock is not None else None
            ours = yaml.safe_load((ws.repo.root / ws.lock).read_text(encoding="utf-8"))
        except yaml.YAMLError:
            ours = None  # a `dvc commit` killed mid-write: the finish rewrites the lock anyway
        except OSError:
            return None
        if ours is not None and _without_card_hash(ours, card_rel) != _without_card_hash(theirs, card_rel):
            return None
    return str(before["version"]), str(after["version"])


def _finish_renumber(ws: Workspace, renumber: bool) -> list[str]:
    """Finish a renumber a kill interrupted (``renumber``), or refuse naming both ways out."""
    found = interrupted_renumber(ws)
    if found is None:
        return []
    old, new = found
    if not renumber:
        raise ReleaseRefused(ws.card, f"an interrupted renumber v{old} → v{new} is not committed",
                             f"finish it with `shelf release --renumber`, or undo it with "
                             f"`git checkout -- {ws.card} {ws.lock}`")
    head_lock = ws.repo.show("HEAD", ws.lock)
    if head_lock is not None:  # start from the committed lock: the killed `dvc commit` may have torn it
        artefacts.write_text(ws.repo.root / ws.lock, head_lock.decode("utf-8"))
    proc = dvcrepo.dvc(ws.root, "commit", "-f", "-q", "serialise")
    if proc.returncode != 0:
        raise ReleaseRefused("dvc commit", dvcrepo.last_line(proc), "fix the pipeline, then retry")
    _commit_renumber(ws, old, new)
    return [f"finished the interrupted renumber v{old} → v{new} (committed)"]


# --- release --------------------------------------------------------------------------------


def _same_model(reg: Registry, model_sha: str, published: set[str] | None) -> list[Any]:
    return [r for r in reg.releases
            if (r.card or {}).get("artefacts", {}).get("model", {}).get("sha256") == model_sha
            and (published is None or r.tag in published)]


def release(start: str | Path = ".", *, push: bool = False, git_remote: str = "origin",
            dvc_remote: str | None = None, renumber: bool = False,
            skip_released: bool = False, sign: signing.KeySpec | None = None,
            sign_tag: str | Path | bool | None = None) -> Released:
    """Release the workspace model: push to the DVC remote, prove it is there, tag, optionally push.

    No tag is created unless every output is in the DVC remote, and none is pushed before.
    A model already released (same sha256; with ``push``, on the git remote) is reported as
    done, never tagged as a second version.  A release of HEAD's card version
    that already exists at HEAD is reported as done; with ``push``, one whose tag never reached
    the git remote is completed.

    Args:
        start: a directory inside the project.
        push: push the tag (and, when needed, the branch) to ``git_remote``.
        git_remote: the git remote for ``push``.
        dvc_remote: the DVC remote (default: the project's).
        renumber: take the next free version when the card's is taken (a new commit); also
            finishes a renumber a kill interrupted.
        skip_released: accepted for compatibility (``--skip-released``); an already released
            model is always reported, never released again.
        sign: sign the released files and the card with this key (model-signing); the
            bundle goes into the tag message.  Checked against ``release.trust`` first.
        sign_tag: sign the git tag itself: an SSH private key, or True for git's own signing
            configuration (required when ``release.trust.tag_signers`` is set).

    Returns:
        What was done.

    Raises:
        ReleaseRefused: dirty tree, stale gate, version taken, branch moved on the remote.
        GateFailed: the gate did not pass, the bytes are not the gated candidate, or the
            baseline moved and now beats the model.
        RemoteError: the DVC remote is unreachable or lacks an object after the push.
        GitError: the git remote cannot be read.
    """
    ws = Workspace.open(start)
    policy = signing.release_preflight(ws.root, sign)  # a key or policy problem stops it before anything
    tag_options = signing.tag_preflight(ws.repo, policy, sign_tag)
    notes: list[str] = []
    try:
        return _release(ws, notes, push=push, git_remote=git_remote, dvc_remote=dvc_remote,
                        renumber=renumber, skip_released=skip_released, sign=sign, policy=policy,
                        tag_options=tag_options)
    except ShelfError as exc:
        if notes:  # what was repaired before the refusal is said in its one line
            exc.problem = f"{exc.problem} ({'; '.join(notes)})"
        raise


def _release(ws: Workspace, notes: list[str], *, push: bool, git_remote: str, dvc_remote: str | None,
             renumber: bool, skip_released: bool, sign: signing.KeySpec | None,
             policy: signing.TrustPolicy, tag_options: list[str] | None = None) -> Released:
    notes += _finish_renumber(ws, renumber)
    card, stale = _check_releasable(ws)
    published: set[str] | None = None
    if push:
        remote = remote_tags(ws, git_remote)
        notes += drop_clobbered(ws, remote, git_remote)
        fetch_tags(ws, git_remote)
        published = set(remote)
    reg = open_registry(ws)
    head = ws.repo.head() or ""
    model_sha = card["artefacts"]["model"]["sha256"]
    same = _same_model(reg, model_sha, published)
    if same:  # the same bytes are never two versions: say which release holds them
        if stale:  # new data landed (`dvc add`, commit) and the pipeline has not run on it yet
            notes.append(f"the pipeline is not up to date ({', '.join(stale)} changed): the model here is "
                         f"still {same[-1].tag}'s; run `dvc repro` on a branch to release one from the change")
        return Released(same[-1].tag, same[-1].version, same[-1].commit, False, already=True, notes=tuple(notes))
    if stale:
        raise ReleaseRefused("dvc.lock", f"the pipeline is not up to date ({', '.join(stale)} changed)",
                             "run `dvc repro` and commit its outputs")
    _rejudge(ws, git_remote if push else None)
    version = SemVer.parse(card["version"])
    here = next((r for r in reg.releases if r.version == version and r.commit == head), None)
    renumbered_here = _renumber_commit_of(ws, version)
    if here is not None and published is not None and here.tag not in published:
        # A release a kill stopped between its tag and its push: prove the bytes, push the tag.
        try:
            branch = _branch_to_push(ws, git_remote, will_commit=False)
        except ReleaseRefused:
            _undo_local_release(ws, here.tag, head if renumbered_here else None)
            raise
        _publish_objects(ws, card, dvc_remote)
        _push_release(ws, here.tag, git_remote, branch, head if renumbered_here else None)
        return Released(here.tag, version, head, True, resumed=True, notes=tuple(notes))
    if here is not None and (not renumber or renumbered_here):
        return Released(here.tag, version, head, False, already=True, notes=tuple(notes))
    highest = max((r.version for r in reg.releases), default=None)
    renumbered_from, renumber_commit = None, None
    if highest is not None and version <= highest:
        if not renumber:
            problem = (f"v{version} already exists" if any(r.version == version for r in reg.releases)
                       else f"v{version} is not above the highest release v{highest}")
            raise ReleaseRefused(tags.release_tag(ws.name, version), problem, RENUMBER_HINT)
        if push:
            _branch_to_push(ws, git_remote, will_commit=True)  # refuse before committing anything
        renumbered_from = version
        version, renumber_commit = _renumber(ws, card, highest)
        head = renumber_commit
    tag = tags.release_tag(ws.name, version)
    try:
        if renumber_commit is not None:
            card, _ = _check_releasable(ws)  # the renumber changed the card and lock only: judged above
        branch = _branch_to_push(ws, git_remote, will_commit=False) if push else None
        _publish_objects(ws, card, dvc_remote)
        message = _tag_message(ws, version, card)
        if sign is not None:
            card_dir = ws.repo.root / PurePosixPath(ws.card).parent
            bundle = signing.sign_release(card_dir, card, sign)
            signing.verify(card_dir, signing.release_files(card), bundle, policy)  # what load will check
            message = signing.embed(message, bundle)
        made = create_tag(ws, reg, tag, message, head, check=False, signed=tag_options)
        if made.returncode != 0:
            if ws.repo.resolve(f"refs/tags/{tag}") is not None:
                raise ReleaseRefused(tag, "the tag already exists", RENUMBER_HINT)
            lines = made.stderr.strip().splitlines()  # e.g. a lock file a killed git left behind
            if tag_options is not None:  # git says why signing failed last
                raise GitError(f"git tag -s {tag}", lines[-1] if lines else "failed",
                               "check the tag signing key (--sign-tag KEY, or git's user.signingKey)")
            raise GitError(f"git tag {tag}", lines[0] if lines else "failed",
                           "if no other git command runs here, remove the stale lock file it names and retry")
        if policy.tag_signers is not None:
            try:  # what every later use will check: refuse now, not at the first load
                signing.verify_tag(ws.repo, tag, policy.tag_signers)
            except ShelfError:
                ws.repo.run("tag", "-d", tag, check=False)
                raise
    except ShelfError:
        if renumber_commit is not None and _undo_renumber(ws, renumber_commit):
            notes.append(f"the renumber commit v{renumbered_from} → v{version} was undone")
        raise
    if push:
        _push_release(ws, tag, git_remote, branch, renumber_commit)
    return Released(tag, version, head, push, renumbered_from, notes=tuple(notes))
