"""Benchmark: the git-tag registry against GTO, and rollback against plain git + DVC.

Run from the repository root::

    .venv/bin/python benchmarks/registry.py                    # 1,500 releases; 5 shelf / 3 gto runs
    .venv/bin/python benchmarks/registry.py --releases 100,1500,10000 --versions-runs 7 --gto-runs 3 \\
        --verify-runs 3 --rollback-runs 9 --json

Everything happens in a fresh temporary directory with its own HOME, no
system/global git config, a fixed git identity and DVC analytics off; the venv's
``bin`` (the directory of ``sys.executable``) comes first on PATH so ``shelf``,
``dvc`` and ``gto`` are this checkout's.  Nothing outside the temporary directory
is touched, and it is removed at the end.

Measured (wall time of the whole command, ``time.perf_counter`` around
``subprocess.run``):

1. **Listing versions**: ``shelf versions`` against ``gto show`` in a repository
   with ``--releases`` (1,500) releases.  Set-up: ``modelshelf.project.init``,
   commit, ``dvc repro`` once, commit; then one ``git fast-import`` stream adds
   1,500 commits on ``main``, each changing ``models/card.json`` (version
   ``1.N.0``, metrics nudged), each with an annotated tag ``model@v1.N.0``
   ("Registering artifact model version v1.N.0"), plus ``--assignments`` (50)
   annotated stage tags ``model#prod#I`` ("Assigning stage prod to artifact model
   version v1.K.0").  Tagger times increase, so the last assignment wins.  Before
   timing, ``shelf versions --json`` must list every release and agree with
   ``gto show --json`` (and with what was generated) on the latest version and on
   the ``prod`` holder.  One discarded run of each, then ``--versions-runs`` (5)
   of ``shelf versions`` and ``--gto-runs`` (3) of ``gto show``, interleaved.
   Goal: ``gto show`` median / ``shelf versions`` median ≥ 10, at every size given
   (``--releases 100,1500,10000``: one scaffolded project, copied per size).  ``shelf
   versions`` includes its checks (the card at each tag names the tag's version; GTO's
   unassignment, deregistration and deprecation semantics; where ``dvc artifacts get
   --stage`` would disagree).
   Then ``--verify-runs`` (3) of ``shelf verify --all`` (every release's tag, card, tag
   message and artefact objects in the local cache: the releases share one model, so this
   is the per-release cost plus hashing each distinct object once); it must say "all good".
2. **Rollback from the local cache**: ``shelf rollback vX`` (the workspace's
   pipeline state back to the release, the model verified) against ``git checkout
   model@vX -- dvc.lock params.yaml metrics models/card.json`` + ``dvc checkout``
   of the same tag, in a small project with two real releases (``shelf release``
   to a local DVC remote; the second after ``train.hyperparams.n_estimators: 60``
   and ``gate.tolerance: 0.05``).  vX is the first release, the workspace holds
   the second.  After every run the workspace is put back (``git checkout main --
   .`` + ``dvc checkout``, not timed) and checked; after every rollback the
   model's sha256 must equal the card's and the release's, and ``shelf`` must say
   it restored from the cache.  One discarded round, then ``--rollback-runs`` (5)
   of each, interleaved with the order alternating per round.  Goal: ``shelf
   rollback`` median / plain median ≤ 1.5.

The results are medians and minima; the exit status is 0 whether or not a goal
is met (this is a measurement, not a test; "ABOVE GOAL" marks a miss).  A
set-up failure (a command exiting non-zero, or a check failing) exits 1 with
its output.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from _common import (BenchError, Sample, bench_env, check, commit, interleaved, nproc, positive, run,
                     scaffold, set_param, sha256, show, tools_missing)

VERSIONS_GOAL = 10.0   # gto show must take at least this many times as long as shelf versions
ROLLBACK_GOAL = 1.5    # shelf rollback at most this many times the plain git + dvc checkout
NAME = "model"
CARD = "models/card.json"
MODEL = "models/model.joblib"
COMMITTER = "Bench Committer <committer@example.invalid>"
EPOCH = 1_700_000_000  # tagger/committer time of the generated history (fixed: reproducible repos)


@dataclass(frozen=True)
class Machine:
    nproc: int
    python: str
    git: str
    dvc: str
    gto: str
    platform: str
    load: float   # 1-minute load average when the run started (other work on the machine skews timings)


# -- environment -------------------------------------------------------------------------------

def hermetic_env(home: Path) -> dict[str, str]:
    """The benchmarks' hermetic environment (see _common.bench_env) minus GTO_* as well."""
    return {k: v for k, v in bench_env(home).items() if not k.startswith("GTO_")}


def machine(env: Mapping[str, str]) -> Machine:
    git = subprocess.run(["git", "--version"], capture_output=True, text=True, env=dict(env),
                         check=False).stdout.strip().removeprefix("git version ")
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = float("nan")
    return Machine(nproc=nproc(), python=platform.python_version(), git=git or "unknown",
                   dvc=metadata.version("dvc"), gto=metadata.version("gto"), platform=platform.platform(),
                   load=round(load, 2))


# -- 1. versions: a repository with many releases ------------------------------------------------

def release_stream(card: Mapping[str, Any], parent: str, releases: int,
                   assigned: Sequence[int]) -> bytes:
    """A ``git fast-import`` stream: one commit + annotated release tag per version, then stage tags.

    Commit N (on main, after ``parent``) changes models/card.json to version 1.N.0 with its
    metrics nudged, and is tagged ``model@v1.N.0``; assignment I tags the commit of release
    ``assigned[I-1]`` as ``model#prod#I``, timed just after that release.
    """
    out: list[bytes] = []

    def data(text: str | bytes) -> None:
        raw = text.encode() if isinstance(text, str) else text
        out.append(b"data %d\n%s\n" % (len(raw), raw))

    metrics = card.get("metrics", {})
    for n in range(1, releases + 1):
        nudge = ((n * 7919) % 101 - 50) * 1e-5      # deterministic, within ±0.0005
        c = dict(card)
        c["version"] = f"1.{n}.0"
        c["version_bump"] = "minor: same input schema"
        c["metrics"] = {k: (round(min(1.0, max(0.0, v + nudge)), 12) if isinstance(v, (int, float)) else v)
                        for k, v in metrics.items()}
        when = EPOCH + 100 * n
        out.append(f"commit refs/heads/main\nmark :{n}\ncommitter {COMMITTER} {when} +0000\n".encode())
        data(f"model v1.{n}.0")
        if n == 1:
            out.append(f"from {parent}\n".encode())
        out.append(f"M 100644 inline {CARD}\n".encode())
        data(json.dumps(c, indent=2) + "\n")
        out.append(f"tag {NAME}@v1.{n}.0\nfrom :{n}\ntagger {COMMITTER} {when} +0000\n".encode())
        data(f"Registering artifact {NAME} version v1.{n}.0\n")
    for i, k in enumerate(assigned, 1):
        out.append(f"tag {NAME}#prod#{i}\nfrom :{k}\ntagger {COMMITTER} {EPOCH + 100 * k + 50} +0000\n".encode())
        data(f"Assigning stage prod to artifact {NAME} version v1.{k}.0\n")
    return b"".join(out)


def assigned_versions(releases: int, assignments: int) -> list[int]:
    """Which releases get ``prod``, ascending and spread over the history; the last is not the latest."""
    if assignments < 1:
        return []
    step = max(1, releases // assignments)
    picks = [min(releases, max(1, step * i - step // 4)) for i in range(1, assignments + 1)]
    return sorted(set(picks))


def build_many(root: Path, base: Path, env: Mapping[str, str], releases: int,
               assignments: int) -> tuple[str, str | None, int, float]:
    """Copy the scaffolded ``base``, then fast-import the history; return (latest, prod holder,
    assignments, seconds)."""
    shutil.copytree(base, root, symlinks=True)
    card = json.loads((root / CARD).read_text(encoding="utf-8"))
    parent = run(["git", "rev-parse", "HEAD"], root, env)[1].stdout.strip()
    assigned = assigned_versions(releases, assignments)
    stream = release_stream(card, parent, releases, assigned)
    seconds, _ = run(["git", "fast-import", "--quiet"], root, env, stdin=stream)
    run(["git", "reset", "-q", "--hard", "main"], root, env)   # the workspace follows main's new tip
    run(["git", "gc", "-q"], root, env)   # pack refs and objects, as a real repository would be
    got = run(["git", "for-each-ref", "--format=%(objecttype)", "refs/tags"], root, env)[1].stdout.split()
    check(got.count("tag") == releases + len(assigned) == len(got),
          f"expected {releases + len(assigned)} annotated tags, found {len(got)} ({got.count('tag')} annotated)")
    return f"v1.{releases}.0", (f"v1.{assigned[-1]}.0" if assigned else None), len(assigned), seconds


def check_versions(root: Path, env: Mapping[str, str], releases: int, latest: str,
                   prod: str | None) -> dict[str, Any]:
    """shelf and gto must agree with each other and with what was generated."""
    shelf = json.loads(run(["shelf", "versions", "--json"], root, env)[1].stdout)
    rows = shelf["versions"]
    check(len(rows) == releases, f"`shelf versions --json` lists {len(rows)} versions, expected {releases}")
    check(not shelf.get("warnings") and not any(r.get("warning") for r in rows),
          f"`shelf versions` warns: {(shelf.get('warnings') or [r['warning'] for r in rows if r.get('warning')])[:1]}")
    check(len({r["version"] for r in rows}) == releases, "`shelf versions` lists a version twice")
    check(all(r["metrics"] for r in rows), "`shelf versions` lost a release's card metrics")
    shelf_latest = rows[0]["version"]
    holders = [r["version"] for r in rows if "prod" in r["stages"]]
    shelf_prod = holders[0] if len(holders) == 1 else None
    check(len(holders) <= 1, f"`shelf versions` shows prod on {len(holders)} versions")

    gto = json.loads(run(["gto", "show", "--json"], root, env)[1].stdout)
    check(NAME in gto, f"`gto show --json` does not list '{NAME}': {sorted(gto)}")
    gto_latest = gto[NAME].get("version")
    gto_prod = (gto[NAME].get("stage") or {}).get("prod")
    check(shelf_latest == gto_latest == latest,
          f"latest version: shelf {shelf_latest}, gto {gto_latest}, generated {latest}")
    check(shelf_prod == gto_prod == prod, f"prod holder: shelf {shelf_prod}, gto {gto_prod}, generated {prod}")
    return {"versions": len(rows), "latest": shelf_latest, "prod": shelf_prod}


def measure_versions(root: Path, env: Mapping[str, str], shelf_runs: int, gto_runs: int) -> tuple[Sample, Sample]:
    def shelf() -> float:
        return run(["shelf", "versions"], root, env)[0]

    def gto() -> float:
        return run(["gto", "show"], root, env)[0]

    ts, tg = interleaved(shelf, gto, shelf_runs, gto_runs)
    return Sample("shelf versions", ts), Sample("gto show", tg)


def measure_verify(root: Path, env: Mapping[str, str], runs: int, releases: int) -> Sample:
    """``shelf verify --all`` (cache only): one discarded run, checked, then ``runs`` timed."""
    _, proc = run(["shelf", "verify", "--all"], root, env)
    check(f"{releases} releases" in proc.stdout and "all good" in proc.stdout,
          f"`shelf verify --all` did not find every release intact:\n{proc.stdout[-400:]}")
    return Sample("shelf verify --all", [run(["shelf", "verify", "--all"], root, env)[0] for _ in range(runs)])


# -- 2. rollback: a project with two real releases -----------------------------------------------

def build_two(root: Path, store: Path, env: Mapping[str, str]) -> tuple[str, str]:
    """Two releases through ``shelf release`` against a local DVC remote; return (old tag, new tag)."""
    scaffold(root, env, edit=lambda r: run(["dvc", "remote", "add", "-d", "store", str(store)], r, env))
    run(["shelf", "release"], root, env)
    set_param(root / "params.yaml", "n_estimators", "60")
    set_param(root / "params.yaml", "tolerance", "0.05")
    run(["dvc", "repro"], root, env)
    commit(root, env, "second model: 60 trees, tolerance 0.05")
    run(["shelf", "release"], root, env)
    tags = run(["git", "tag", "-l", f"{NAME}@v*"], root, env)[1].stdout.split()
    check(len(tags) == 2, f"expected two release tags, found {tags}")
    from modelshelf.tags import SemVer

    old, new = sorted(tags, key=lambda t: SemVer.parse(t.split("@", 1)[1]))
    return old, new


def card_sha(raw: str | bytes) -> str:
    return json.loads(raw)["artefacts"]["model"]["sha256"]


def measure_rollback(root: Path, env: Mapping[str, str], tag: str,
                     runs: int) -> tuple[Sample, Sample, dict[str, Any]]:
    version = tag.split("@", 1)[1]
    want = card_sha(run(["git", "show", f"{tag}:{CARD}"], root, env)[1].stdout)
    current = card_sha((root / CARD).read_text(encoding="utf-8"))
    check(want != current, f"{tag}'s model is the workspace's: a rollback would restore nothing")
    check(sha256(root / MODEL) == current, "the workspace model does not match its card before the runs")

    def restored(who: str) -> None:
        got = sha256(root / MODEL)
        card = card_sha((root / CARD).read_text(encoding="utf-8"))
        check(got == card == want, f"after {who}: {MODEL} sha256 {got[:12]}, card {card[:12]}, "
                                   f"{tag} {want[:12]}")

    def reset() -> None:
        run(["git", "checkout", "main", "--", "."], root, env)
        run(["dvc", "checkout", "-q"], root, env)
        dirty = run(["git", "status", "--porcelain", "--untracked-files=no"], root, env)[1].stdout.strip()
        check(not dirty and sha256(root / MODEL) == current, f"the workspace was not restored:\n{dirty}")

    def shelf() -> float:
        elapsed, proc = run(["shelf", "rollback", version], root, env)
        check("from the cache" in proc.stdout, f"`shelf rollback` did not restore from the cache:\n{proc.stdout}")
        restored("shelf rollback")
        reset()
        return elapsed

    def plain() -> float:
        start = time.perf_counter()
        run(["git", "checkout", tag, "--", "dvc.lock", "params.yaml", "metrics", CARD], root, env)
        run(["dvc", "checkout", "-q"], root, env)
        elapsed = time.perf_counter() - start
        restored("git checkout + dvc checkout")
        reset()
        return elapsed

    ts, tp = interleaved(shelf, plain, runs, runs)
    return (Sample(f"shelf rollback {version}", ts), Sample("git checkout + dvc checkout", tp),
            {"tag": tag, "sha256": want})


# -- report --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Size:
    """The measurements at one number of releases."""

    releases: int
    agreed: dict[str, Any]
    import_s: float
    shelf: Sample
    gto: Sample
    verify: Sample | None

    @property
    def speedup(self) -> float:
        return self.gto.median / self.shelf.median


def report(m: Machine, sizes: Sequence[Size], rb_shelf: Sample, rb_plain: Sample,
           rb: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    rb_ratio = rb_shelf.median / rb_plain.median
    r_ok = rb_ratio <= ROLLBACK_GOAL
    lines = [
        f"machine           nproc {m.nproc}, python {m.python}, git {m.git}, dvc {m.dvc}, gto {m.gto}, "
        f"{m.platform}, load {m.load:.2f}",
    ]
    for z in sizes:
        ok = z.speedup >= VERSIONS_GOAL
        lines += [
            f"repository        {z.agreed['versions']} releases + {z.agreed['assignments']} prod assignments, "
            f"annotated (fast-import {z.import_s:.2f} s); shelf and gto agree: latest {z.agreed['latest']}, "
            f"prod {z.agreed['prod']}",
            f"  shelf versions  median {z.shelf.median:.3f} s  min {z.shelf.min:.3f} s  "
            f"(gto show median {z.gto.median:.3f} s  min {z.gto.min:.3f} s)  "
            f"gto/shelf {z.speedup:.1f}×  goal ≥ {VERSIONS_GOAL:g}×  {'OK' if ok else 'ABOVE GOAL'}"
            f"  [{len(z.shelf.times)}/{len(z.gto.times)} runs]",
        ]
        if z.verify is not None:
            lines.append(f"  verify --all    median {z.verify.median:.3f} s  min {z.verify.min:.3f} s  "
                         f"({1000 * z.verify.median / z.releases:.2f} ms per release)  [{len(z.verify.times)} runs]")
    lines += [
        f"shelf rollback    median {rb_shelf.median:.3f} s  min {rb_shelf.min:.3f} s  "
        f"(git checkout + dvc checkout median {rb_plain.median:.3f} s  min {rb_plain.min:.3f} s)  "
        f"ratio {rb_ratio:.2f}  goal ≤ {ROLLBACK_GOAL:g}  {'OK' if r_ok else 'ABOVE GOAL'}"
        f"  [{len(rb_shelf.times)} runs each]",
        f"sanity            every rollback restored {rb['tag']} (sha256 {rb['sha256'][:12]}) from the cache, "
        f"model = card = release",
    ]
    result = {
        "machine": asdict(m),
        "versions": [{"releases": z.releases, "shelf": z.shelf.to_json(), "gto": z.gto.to_json(),
                      "speedup": round(z.speedup, 3), "goal": VERSIONS_GOAL, "ok": z.speedup >= VERSIONS_GOAL,
                      "repository": dict(z.agreed), "fast_import_s": round(z.import_s, 4),
                      "verify_all": z.verify.to_json() if z.verify else None} for z in sizes],
        "rollback": {"shelf": rb_shelf.to_json(), "plain": rb_plain.to_json(), "ratio": round(rb_ratio, 4),
                     "goal": ROLLBACK_GOAL, "ok": r_ok, **rb},
    }
    return "\n".join(lines), result


def sizes(value: str) -> list[int]:
    """An argparse type: a comma-separated list of positive numbers of releases."""
    return [positive(v) for v in value.split(",") if v.strip()]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--releases", type=sizes, default=[1500],
                        help="releases to generate, comma-separated sizes (default 1500)")
    parser.add_argument("--assignments", type=int, default=50, help="prod assignments to generate (default 50)")
    parser.add_argument("--versions-runs", type=positive, default=5, help="`shelf versions` runs (default 5)")
    parser.add_argument("--gto-runs", type=positive, default=3, help="`gto show` runs (default 3)")
    parser.add_argument("--verify-runs", type=int, default=3, help="`shelf verify --all` runs (default 3; 0: skip)")
    parser.add_argument("--rollback-runs", type=positive, default=5,
                        help="shelf rollback and plain git+dvc runs each (default 5)")
    parser.add_argument("--json", action="store_true", help="also print the results as JSON")
    args = parser.parse_args(argv)

    if tools_missing(("shelf", "dvc", "gto"), "registry.py"):
        return 1

    with tempfile.TemporaryDirectory(prefix="modelshelf-bench-") as tmp:
        env = hermetic_env(Path(tmp) / "home")
        m = machine(env)
        base, two, store = Path(tmp) / "base", Path(tmp) / "two", Path(tmp) / "store"
        measured: list[Size] = []
        try:
            print(f"scaffolding {base} (init, dvc repro) …", flush=True)
            scaffold(base, env)
            for n in args.releases:
                many = Path(tmp) / f"many-{n}"
                print(f"setting up {n} releases in {many} (copy, fast-import) …", flush=True)
                latest, prod, n_assigned, import_s = build_many(many, base, env, n, args.assignments)
                print("checking shelf versions --json against gto show --json …", flush=True)
                agreed = {**check_versions(many, env, n, latest, prod), "assignments": n_assigned}
                print(f"measuring shelf versions ({args.versions_runs} runs) vs gto show ({args.gto_runs} runs) …",
                      flush=True)
                shelf, gto = measure_versions(many, env, args.versions_runs, args.gto_runs)
                verify = None
                if args.verify_runs > 0:
                    print(f"measuring shelf verify --all ({args.verify_runs} runs) …", flush=True)
                    verify = measure_verify(many, env, args.verify_runs, n)
                measured.append(Size(n, agreed, import_s, shelf, gto, verify))
                shutil.rmtree(many)   # 10,000 releases are a few hundred MB of work tree and packs
            print(f"setting up two releases in {two} (dvc repro, shelf release, twice) …", flush=True)
            old, _new = build_two(two, store, env)
            print(f"measuring shelf rollback vs git checkout + dvc checkout ({args.rollback_runs} runs each) …",
                  flush=True)
            rb_shelf, rb_plain, rb = measure_rollback(two, env, old, args.rollback_runs)
        except BenchError as exc:
            print(f"benchmark: {exc}", file=sys.stderr)
            return 1

    text, result = report(m, measured, rb_shelf, rb_plain, rb)
    return show(text, result, args.json)


if __name__ == "__main__":
    raise SystemExit(main())
