"""GTO parity: events made by ``gto`` itself and by ``shelf``, in mixed orders, read alike.

GTO's registry is its tags, read by ``gto.registry.GitRegistry.get_state``: versions are
live while their newest registration is newer than their newest deregistration; a stage
is held by the live version whose newest assignment is newest among those whose own
newest event for that stage is an assignment (an unassignment hands the stage back);
an artefact deprecation ``model@deprecated`` hides the artefact until any newer event.
Each scenario here makes events with GTO's own API (in-process, the tags written by the
``git`` command so that ``GIT_COMMITTER_DATE`` pins their tagger time: GTO orders by tagger
time at one-second resolution) and with the ``shelf`` CLI, and after each step compares
``gto show`` (registry, per version and ``model#STAGE``) with ``shelf versions --json``
and ``Registry.find(STAGE)``.

The repository needs only cards at commits: ``built`` (one real model) plus commits that
rewrite ``models/card.json``'s version.  The last section covers clones that lack tags
(shallow, ``--no-tags``).
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import gto.api
import pytest
from scmrepo.git import Git

from modelshelf.errors import ConfigError, GitError, IntegrityError
from modelshelf.registry.core import Registry, Workspace, open_registry

from conftest import Project, add_remotes, run

CARD = "models/card.json"


# --- helpers --------------------------------------------------------------------------------


def version_commit(p: Project, says: str | None, message: str) -> str:
    """A commit on main whose card says version ``says`` (None: the card is deleted)."""
    path = p.root / CARD
    if says is None:
        p.git("rm", "-q", CARD)
    else:
        card = json.loads(path.read_text())
        card["version"] = says
        path.write_text(json.dumps(card, indent=2) + "\n")
    return p.commit(message)


class Events:
    """Registry events with distinct, increasing tagger times, made by GTO or by shelf."""

    def __init__(self, p: Project) -> None:
        self.p = p
        self.t = int(time.time()) + 100   # after every commit: GTO counts commit times too

    def _newest_tag_time(self) -> int:
        out = self.p.git("for-each-ref", "--sort=-taggerdate", "--count=1", "--format=%(taggerdate:unix)",
                         "refs/tags").stdout.strip()
        return int(out or 0)

    def gto(self, action: str, **kwargs: Any) -> Any:
        """``gto.api.ACTION(repo, name="model", **kwargs)``, its tag dated 10 s after the last event."""
        self.t = max(self.t, self._newest_tag_time()) + 10
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("GIT_COMMITTER_DATE", f"{self.t} +0000")
            # gitpython first: its tags are made by `git tag`, which honours GIT_COMMITTER_DATE
            # (scmrepo's pygit2 backend refuses a date override, dulwich ignores it).
            scm = Git(str(self.p.root), backends=["gitpython", "pygit2", "dulwich"])
            try:
                return getattr(gto.api, action)(scm, name="model", **kwargs)
            finally:
                scm.close()

    def shelf(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """A shelf command; shelf dates its tags one second after the model's newest event."""
        proc = self.p.shelf(*args, check=check)
        self.t = max(self.t, self._newest_tag_time())
        return proc


def registry(p: Project) -> Registry:
    return open_registry(Workspace.open(p.root))


def compare(p: Project) -> dict[str, Any]:
    """GTO's and shelf's views must agree: artefact state, latest, stages, each version."""
    root = str(p.root)
    ours = json.loads(p.shelf("versions", "--json").stdout)
    everything = gto.api.show(root, deprecated=True)
    gto_all = everything["model"]
    assert ours["deprecated"] is (not gto_all["active"])
    assert ("model" in gto.api.show(root)) is (not ours["deprecated"])      # `gto show` hides it

    live = [r["version"] for r in ours["versions"] if not r["deprecated"]]
    assert gto_all["version"] == (live[0] if live else None), "latest"
    gto_stages = {s: v for s, v in gto_all["stage"].items() if v}
    assert ours["stages"] == gto_stages
    assert {s: r["version"] for r in ours["versions"] for s in r["stages"]} == gto_stages

    per_version = {v["version"]: v for v in gto.api.show(root, "model", deprecated=True)}
    assert {r["version"]: not r["deprecated"] for r in ours["versions"]} == \
        {v: d["is_active"] for v, d in per_version.items()}
    assert {r["version"]: r["commit"] for r in ours["versions"]} == \
        {v: d["commit_hexsha"] for v, d in per_version.items()}

    reg = registry(p)
    for stage in {a.stage for a in reg.assignments}:
        shown = gto.api.show(root, f"model#{stage}")   # [] when no version holds it, or deprecated
        if shown:
            assert len(shown) == 1
            assert f"v{reg.find(stage).version}" == shown[0]["version"], stage
        else:
            with pytest.raises(ConfigError):
                reg.find(stage)
    if ours["deprecated"]:
        with pytest.raises(ConfigError, match="deprecated"):
            reg.find("latest")
    elif live:
        assert f"v{reg.find('latest').version}" == gto_all["version"]
    return ours


def held(ours: dict[str, Any]) -> dict[str, str]:
    return dict(ours["stages"])


@pytest.fixture
def three(built: Project) -> tuple[Project, list[str]]:
    """``built`` plus two commits whose cards say 1.1.0 and 1.2.0: three commits to register.

    No stage is protected here: the policy (gate binding, release branch) is not under test,
    and GTO's own tags do not carry the ``model-sha256:`` line it asks for."""
    p = built
    p.set_params(release={"protected_stages": []})
    commits = [p.commit("no protected stages"),
               version_commit(p, "1.1.0", "card 1.1.0"), version_commit(p, "1.2.0", "card 1.2.0")]
    return p, commits


# --- unassignment -------------------------------------------------------------------------------


def test_an_unassignment_hands_the_stage_back_as_gto_reads_it(three: tuple[Project, list[str]]) -> None:
    p, (c1, c2, c3) = three
    ev = Events(p)
    ev.gto("register", ref=c1, version="v1.0.0")
    ev.gto("register", ref=c2, version="v1.1.0")
    ev.shelf("promote", "v1.0.0", "--to", "prod")
    ev.gto("assign", stage="prod", version="v1.1.0")
    assert held(compare(p)) == {"prod": "v1.1.0"}

    # GTO's unassignment model#prod!#N: prod goes back to v1.0.0, whose assignment still stands.
    tag = ev.gto("unassign", stage="prod", version="v1.1.0").tag
    assert tag == "model#prod!#3"
    assert held(compare(p)) == {"prod": "v1.0.0"}
    events = registry(p).stage_history("prod")
    assert [(a.kind, a.at and str(a.at)) for a in events] == \
        [("assign", "1.0.0"), ("assign", "1.1.0"), ("unassign", "1.1.0")]

    # shelf builds on it: promote the third version and roll the stage back; then GTO
    # unassigns what rollback gave the stage: v1.2.0's assignment is what is left.
    ev.gto("register", ref=c3, version="v1.2.0")
    ev.shelf("promote", "v1.2.0", "--to", "prod")
    ev.shelf("promote", "v1.1.0", "--to", "staging")
    assert held(compare(p)) == {"prod": "v1.2.0", "staging": "v1.1.0"}
    ev.shelf("rollback", "--stage", "prod")
    # "the version it held before" is the holder before v1.2.0 as GTO read prod then:
    # v1.0.0 (GTO had unassigned v1.1.0), not v1.1.0, the previous assignment.
    back = held(compare(p))["prod"]
    assert back == "v1.0.0"
    ev.gto("unassign", stage="prod", version=back)
    assert held(compare(p))["prod"] == "v1.2.0"
    for version in ("v1.2.0", "v1.1.0", "v1.0.0"):
        if held(compare(p)).get("prod") == version:
            ev.gto("unassign", stage="prod", version=version)
    ev.gto("unassign", stage="staging", version="v1.1.0")
    assert held(compare(p)) == {}
    refused = p.shelf("get", "prod", "-o", str(p.root.parent / "out"), check=False)
    assert refused.returncode == 2 and "prod" in refused.stderr and "Traceback" not in refused.stderr

    # `dvc artifacts get --stage` reads only the newest model#prod tag (here an unassignment):
    # shelf follows GTO and says where DVC would differ, and how to make them agree.
    warnings = json.loads(p.shelf("versions", "--json").stdout)["warnings"]
    assert any("dvc artifacts get --stage prod" in w for w in warnings), warnings


# --- version deregistration --------------------------------------------------------------------


def test_deregistration_and_re_registration_as_gto_reads_them(three: tuple[Project, list[str]]) -> None:
    p, (c1, c2, c3) = three
    ev = Events(p)
    for c, v in ((c1, "v1.0.0"), (c2, "v1.1.0"), (c3, "v1.2.0")):
        ev.gto("register", ref=c, version=v)
    ev.gto("assign", stage="prod", version="v1.0.0")
    ev.shelf("promote", "v1.2.0", "--to", "prod")
    assert held(compare(p)) == {"prod": "v1.2.0"}

    # GTO deregisters the holder (model@v1.2.0!): latest is v1.1.0, prod falls back to v1.0.0.
    assert ev.gto("deregister", version="v1.2.0").tag == "model@v1.2.0!"
    ours = compare(p)
    assert held(ours) == {"prod": "v1.0.0"}
    assert ours["versions"][0]["version"] == "v1.2.0" and ours["versions"][0]["deprecated"] is True
    # shelf deprecates v1.1.0 (model@v1.1.0!#N): latest is v1.0.0 for both.
    ev.shelf("deprecate", "v1.1.0")
    assert [r["version"] for r in compare(p)["versions"] if not r["deprecated"]] == ["v1.0.0"]

    # GTO re-registers v1.2.0 (model@v1.2.0#N, newer than its deregistration): it is live
    # again, one row, and its old prod assignment stands again.
    assert ev.gto("register", ref=c3, version="v1.2.0", force=True, simple=False).tag.startswith("model@v1.2.0#")
    ours = compare(p)
    assert [r["version"] for r in ours["versions"]] == ["v1.2.0", "v1.1.0", "v1.0.0"]
    assert held(ours) == {"prod": "v1.2.0"}
    assert ours["versions"][0]["tag"].startswith("model@v1.2.0#")   # GTO's ref: the newest registration
    assert len(registry(p).find("v1.2.0").tags) == 3


# --- artefact deprecation ------------------------------------------------------------------------


def test_artifact_deprecation_hides_latest_and_stages_until_a_newer_event(
        three: tuple[Project, list[str]], tmp_path: Path) -> None:
    p, (c1, c2, _) = three
    ev = Events(p)
    ev.gto("register", ref=c1, version="v1.0.0")
    ev.gto("register", ref=c2, version="v1.1.0")
    ev.shelf("promote", "v1.0.0", "--to", "prod")
    ev.gto("assign", stage="staging", version="v1.1.0")
    assert held(compare(p)) == {"prod": "v1.0.0", "staging": "v1.1.0"}

    assert ev.gto("deprecate").tag == "model@deprecated"
    ours = compare(p)
    assert ours["deprecated"] is True and ours["deprecation_tag"] == "model@deprecated"
    text = p.shelf("versions").stdout
    assert "model is deprecated (model@deprecated)" in text
    for spec in ("prod", "latest"):
        refused = p.shelf("get", spec, "-o", str(tmp_path / spec), check=False)
        assert refused.returncode == 2 and "deprecated" in refused.stderr, refused.stderr
    # An explicit version stays readable (GTO's `show -d` lists it), as after a deregistration.
    assert "fetched v1.1.0" in p.shelf("get", "v1.1.0", "-o", str(tmp_path / "v110")).stdout

    # A newer event re-creates the artefact, every version and stage as they were.
    ev.shelf("promote", "v1.1.0", "--to", "dev")
    ours = compare(p)
    assert ours["deprecated"] is False
    assert held(ours) == {"prod": "v1.0.0", "staging": "v1.1.0", "dev": "v1.1.0"}
    # Deprecated again (GTO needs --force for a second model@deprecated#N), then re-created by GTO.
    assert ev.gto("deprecate", force=True).tag.startswith("model@deprecated#")
    assert compare(p)["deprecated"] is True
    ev.gto("assign", stage="prod", version="v1.1.0")
    assert held(compare(p)) == {"prod": "v1.1.0", "staging": "v1.1.0", "dev": "v1.1.0"}


def test_mixed_order_of_every_kind_of_event(three: tuple[Project, list[str]]) -> None:
    """One long interleaving of both tools' events; the views agree after every step."""
    p, (c1, c2, c3) = three
    ev = Events(p)
    steps: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = [
        ("gto", ("register",), {"ref": c2, "version": "v1.1.0"}),
        ("gto", ("register",), {"ref": c1, "version": "v1.0.0"}),
        ("shelf", ("promote", "v1.1.0", "--to", "staging"), {}),
        ("gto", ("assign",), {"stage": "prod", "version": "v1.0.0"}),
        ("gto", ("register",), {"ref": c3, "version": "v1.2.0"}),
        ("shelf", ("promote", "latest", "--to", "staging"), {}),
        ("gto", ("unassign",), {"stage": "staging", "version": "v1.2.0"}),
        ("shelf", ("rollback", "--stage", "staging"), {}),
        ("gto", ("deregister",), {"version": "v1.1.0"}),
        ("shelf", ("promote", "v1.2.0", "--to", "prod"), {}),
        ("gto", ("deprecate",), {}),
        ("shelf", ("promote", "v1.0.0", "--to", "dev"), {}),
        ("gto", ("unassign",), {"stage": "prod", "version": "v1.2.0"}),
        ("shelf", ("deprecate", "v1.0.0"), {}),
    ]
    seen = []
    for tool, args, kwargs in steps:
        if tool == "gto":
            ev.gto(*args, **kwargs)
        else:
            ev.shelf(*args)
        ours = compare(p)
        seen.append(held(ours))
    # staging: v1.2.0 unassigned → back to v1.1.0 (its assignment stands)
    assert seen[6] == {"prod": "v1.0.0", "staging": "v1.1.0"}
    # shelf's rollback then gives staging the holder before v1.1.0: v1.2.0 (a toggle)
    assert seen[7] == {"prod": "v1.0.0", "staging": "v1.2.0"}
    # deprecated (step 11) then re-created by a promotion (12); GTO's unassignment of prod's
    # v1.2.0 (13) hands prod back to v1.0.0
    assert seen[11] == seen[10] | {"dev": "v1.0.0"} and seen[12]["prod"] == "v1.0.0"
    # deprecating v1.0.0 (14) frees prod and dev: v1.1.0 is deregistered, v1.2.0 unassigned
    assert "prod" not in seen[-1] and "dev" not in seen[-1]


# --- the card must back the tag ---------------------------------------------------------------


def test_a_tag_whose_card_names_another_version_is_flagged_and_refused(
        three: tuple[Project, list[str]], tmp_path: Path) -> None:
    p, (c1, c2, _) = three
    ev = Events(p)
    ev.gto("register", ref=c1, version="v1.0.0")
    ev.gto("register", ref=c2, version="v1.5.0")            # the card there says 1.1.0
    c4 = version_commit(p, None, "drop the card")
    ev.gto("register", ref=c4, version="v1.6.0")            # no card at all

    rows = {r["version"]: r for r in json.loads(p.shelf("versions", "--json").stdout)["versions"]}
    assert rows["v1.0.0"]["warning"] is None
    assert "v1.5.0" in rows["v1.5.0"]["warning"] and "1.1.0" in rows["v1.5.0"]["warning"]
    assert "no models/card.json" in rows["v1.6.0"]["warning"]
    table = p.shelf("versions").stdout
    assert "warning: model@v1.5.0:" in table and "warning: model@v1.6.0:" in table

    for spec, tag, needles in (("v1.5.0", "model@v1.5.0", ("v1.5.0", "1.1.0")),
                               ("latest", "model@v1.6.0", ("no models/card.json",))):
        for cmd in (("get", spec, "-o", str(tmp_path / spec)), ("show", spec)):
            proc = p.shelf(*cmd, check=False)
            lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
            assert proc.returncode == 4 and len(lines) == 1, (cmd, proc.stderr)
            assert tag in lines[0] and all(n in lines[0] for n in needles), lines[0]
        assert not (tmp_path / spec).exists()
    reg = registry(p)
    with pytest.raises(IntegrityError):
        reg.find("v1.5.0")
    assert reg.find("v1.5.0", check=False).problem is not None
    assert f"v{reg.find('v1.0.0').version}" == "v1.0.0"
    # promote resolves through find: the bad tag cannot take a stage.
    assert p.shelf("promote", "v1.5.0", "--to", "dev", check=False).returncode == 4
    # ... but it can be retired, which is what one does with such a tag.
    assert p.shelf("deprecate", "v1.5.0").returncode == 0
    assert {r["version"]: r["deprecated"] for r in json.loads(p.shelf("versions", "--json").stdout)["versions"]
            }["v1.5.0"] is True


# --- clones that lack tags ---------------------------------------------------------------------


@pytest.fixture
def moved_on(released: Project) -> Project:
    """``released`` (model@v1.0.0 on origin) with one more commit on main, pushed: the release
    tag is not at the tip, so a depth-1 clone does not follow it."""
    p = released
    (p.root / "NOTES.md").write_text("after the release\n")
    p.commit("notes")
    p.git("push", "-q", "origin", "main")
    return p


def clone_url(p: Project) -> str:
    return "file://" + p.git("remote", "get-url", "origin").stdout.strip()


def one_line(proc: subprocess.CompletedProcess[str], code: int) -> str:
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == code and len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    return lines[0]


@pytest.mark.slow
def test_clones_that_lack_tags_never_say_no_releases(moved_on: Project, tmp_path: Path) -> None:
    url = clone_url(moved_on)
    # What CI checks out by default: depth 1, no tags.
    dest = tmp_path / "ci"
    run(["git", "clone", "-q", "--depth", "1", url, str(dest)], tmp_path)
    c = Project(dest)
    assert c.git("tag", "-l").stdout == ""
    for cmd in (("versions",), ("versions", "--json"), ("get", "latest", "-o", str(tmp_path / "x"))):
        line = one_line(c.shelf(*cmd, check=False), 6)
        assert "shallow clone" in line and "git fetch --unshallow --tags origin" in line, line
    # Reading commands fetch nothing behind the user's back; the remedy works.
    assert c.git("tag", "-l").stdout == "" and c.git("rev-parse", "--is-shallow-repository").stdout.strip() == "true"
    c.git("fetch", "-q", "--unshallow", "--tags", "origin")
    assert [r["version"] for r in json.loads(c.shelf("versions", "--json").stdout)["versions"]] == ["v1.0.0"]

    # A full clone without tags is told to fetch them.
    dest = tmp_path / "notags"
    run(["git", "clone", "-q", "--no-tags", url, str(dest)], tmp_path)
    line = one_line(Project(dest).shelf("versions", check=False), 6)
    assert "not in this clone" in line and "git fetch --tags origin" in line, line

    # A shallow clone with its tags reads the cards at the tags (their commits are present).
    dest = tmp_path / "shallow-tags"
    run(["git", "clone", "-q", "--depth", "1", "--no-single-branch", url, str(dest)], tmp_path)
    c = Project(dest)
    c.git("fetch", "-q", "--tags", "--depth", "1", "origin")
    assert c.git("rev-parse", "--is-shallow-repository").stdout.strip() == "true"
    rows = json.loads(c.shelf("versions", "--json").stdout)["versions"]
    assert [(r["version"], r["warning"]) for r in rows] == [("v1.0.0", None)]
    assert rows[0]["metrics"], "the card at the tag was read"
    # The ancestry question of the protected-stage policy cannot be answered from the cut
    # history: GitRepo.is_ancestor fetches it, or without a remote to fetch from says what to run.
    ws = Workspace.open(c.root)
    tagged = c.git("rev-parse", "model@v1.0.0^{commit}").stdout.strip()
    assert c.git("merge-base", "--is-ancestor", tagged, "origin/main", check=False).returncode == 1
    with pytest.raises(GitError, match="git fetch --unshallow --tags origin"):
        ws.repo.is_ancestor(tagged, "origin/main")
    assert ws.repo.is_ancestor(tagged, "origin/main", fetch_from="origin")
    assert c.git("rev-parse", "--is-shallow-repository").stdout.strip() == "false"


@pytest.mark.slow
def test_promote_to_a_protected_stage_from_a_shallow_clone(moved_on: Project, tmp_path: Path) -> None:
    dest = tmp_path / "shallow-promote"
    run(["git", "clone", "-q", "--depth", "1", "--no-single-branch", clone_url(moved_on), str(dest)], tmp_path)
    c = Project(dest)
    c.git("fetch", "-q", "--tags", "--depth", "1", "origin")
    proc = c.shelf("promote", "v1.0.0", "--to", "prod", check=False)
    # v1.0.0's commit is on main: the policy must not refuse it (exit 7) because history is cut.
    assert proc.returncode == 0, proc.stderr
    assert "model#prod#" in proc.stdout


def test_an_unreleased_project_with_a_remote_still_says_no_releases(tmp_path: Path, built: Project) -> None:
    p = add_remotes(built)
    assert "no releases of model yet" in p.shelf("versions").stdout
