"""The baseline for the gate, like for like: the baseline model re-scored on the candidate's
held-out set.

The committed metrics at ``gate.baseline`` were measured on the held-out split of *that*
commit's data; once the data changes, they are no longer comparable with the candidate's.
So the model the baseline's card names is fetched (local DVC cache, else the remote),
verified against the card's sha256 before it is unpickled, refused on a scikit-learn version
mismatch (as :func:`modelshelf.load` does), and scored on the current held-out split.

Fallback rule: whenever that cannot be done — no card at the revision, a card that does not
describe the committed metrics, a changed input schema (features, kinds, task, classes), bytes
neither in the cache nor in the remote, a hash or version mismatch, a model that fails to score
or a metric it cannot produce — the gate compares with the committed metrics, exactly as it did
before, and says why.  Falling back never makes the gate more lenient than it used to be.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from modelshelf import artefacts
from modelshelf.card import parse_card, schema_changed
from modelshelf.errors import DataError, GateFailed, ShelfError
from modelshelf.pipeline.gate import Baseline, Paired, catalogue_numbers, read_baseline, with_rescore
from modelshelf.pipeline.significance import Outputs
from modelshelf.gitrepo import GitRepo
from modelshelf.params import NO_BASELINE

SCHEMA_FILE = "schema.json"
DATASET_FILE = "dataset.json"
TEST_FILE = "test.csv"
TMP_PREFIX = "shelf-baseline-"


class NotRescorable(Exception):
    """The baseline model cannot be scored on this held-out set; the message says why."""


def read(repo: GitRepo, rev: str, metrics_path: str, *, root: Path,
         prepared: Path | None, bump: str = "auto", outputs: bool = False) -> Baseline:
    """The baseline at ``rev``: its model re-scored on ``prepared``'s test split when possible,
    else its committed ``metrics_path`` (repo-relative) with the reason recorded.

    A new line (the dataset, task or input schema changed since the baseline's card, see
    :func:`lineage`) is never gated against the old one: with ``bump`` ``major`` the baseline
    is ignored (thresholds only); otherwise GateFailed names the change and the two remedies.
    With ``outputs``, the re-scored baseline keeps its held-out outputs (for significance).
    """
    base = read_baseline(repo, rev, metrics_path)
    if not base.found or base.commit is None:
        return base
    change = lineage(root, base.commit, prepared)
    if change is not None:
        if bump == "major":
            return Baseline(rev, metrics_path, base.commit,
                            note=f"baseline ignored: major bump, {change.split(':')[0]}")
        raise GateFailed(f"gate.baseline {rev} ({base.commit[:12]})", f"{change}: a new line",
                         "set release.bump: major (a new major version; the baseline is ignored) "
                         f"or gate.baseline: {NO_BASELINE} (a first-of-a-line gate: thresholds only)")
    if prepared is None:
        return with_rescore(base, None, "the gate was given no prepared test split "
                                        "(add `--prepared` to the gate stage in dvc.yaml)")
    try:
        metrics, model, found = rescore(root, base.commit, rev, prepared, base.metrics or {})
    except NotRescorable as exc:
        return with_rescore(base, None, str(exc))
    except ShelfError as exc:  # integrity, remote, version mismatch, git: say which, keep committed
        where = "" if not exc.where or TMP_PREFIX in exc.where else f"{exc.where}: "
        return with_rescore(base, None, where + exc.problem)
    note = f"model v{model['version']} (sha256 {model['sha256'][:12]}…, from the {model['source']})"
    return with_rescore(base, metrics, note, model, found if outputs else None)


def lineage(root: Path, commit: str, prepared: Path | None) -> str | None:
    """What changed between the baseline card at ``commit`` and the candidate's prepared data
    (``dataset changed: data.source a → b``, ``task changed: …``, ``input schema changed: …``),
    or None when nothing did or it cannot be told (no card, no prepared split)."""
    if prepared is None:
        return None
    from modelshelf.registry.core import Workspace

    ws = Workspace.open(root)
    raw = ws.repo.show(commit, ws.card)
    if raw is None:
        return None
    card = parse_card(raw, f"{commit[:12]}:{ws.card}")
    try:
        schema = json.loads((prepared / SCHEMA_FILE).read_text(encoding="utf-8"))
        dataset = json.loads((prepared / DATASET_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    old_source = (card.get("dataset") or {}).get("source")
    if old_source is not None and old_source != dataset.get("source"):
        return f"dataset changed: data.source {old_source} → {dataset.get('source')}"
    old = card.get("input_schema")
    if old is None:
        return None
    if old.get("task") != schema.get("task"):
        return f"task changed: {old.get('task')} → {schema.get('task')}"
    if schema_changed(old, schema):
        return f"input schema changed: {_schema_change(old, schema)}"
    return None


def _schema_change(old: Mapping[str, Any], new: Mapping[str, Any]) -> str:
    def feats(s: Mapping[str, Any]) -> dict[str, Any]:
        return {f.get("name"): f.get("kind") for f in s.get("features", [])}

    a, b = feats(old), feats(new)
    parts = []
    if gone := [n for n in a if n not in b]:
        parts.append("dropped " + ", ".join(map(str, gone)))
    if added := [n for n in b if n not in a]:
        parts.append("added " + ", ".join(map(str, added)))
    if kinds := [n for n in a if n in b and a[n] != b[n]]:
        parts.append("kind of " + ", ".join(map(str, kinds)))
    if tuple(old.get("classes") or ()) != tuple(new.get("classes") or ()):
        parts.append(f"classes {old.get('classes')} → {new.get('classes')}")
    return "; ".join(parts) or "feature order"


def paired(baseline: Baseline, candidate: Path | None, prepared: Path | None, seed: int) -> Paired | None:
    """The candidate's and the re-scored baseline's outputs on the same held-out rows, or None
    when the baseline was not re-scored (with outputs) or there is no candidate or split.

    Raises:
        DataError, IntegrityError: an unreadable or altered candidate (as the gate's own check).
    """
    from modelshelf.pipeline import data
    from modelshelf.pipeline.significance import outputs
    from modelshelf.pipeline.stages import load_candidate

    r = baseline.rescore
    if candidate is None or prepared is None or r is None or not r.used or r.outputs is None:
        return None
    schema = json.loads((prepared / SCHEMA_FILE).read_text(encoding="utf-8"))
    model, _ = load_candidate(candidate)
    X, y = data.read_split(prepared / TEST_FILE, schema)
    mine = outputs(model, X, y, schema["task"], schema.get("classes"))
    if mine.y.shape != r.outputs.y.shape:
        raise DataError(str(prepared / TEST_FILE), "the baseline was re-scored on other rows",
                        "rerun `dvc repro`")
    return Paired(mine, r.outputs, seed)


def rescore(root: Path, commit: str, rev: str, prepared: Path,
            committed: Mapping[str, float]) -> tuple[dict[str, float], dict[str, Any], Outputs]:
    """``(metrics, model info, outputs)`` of the model committed at ``commit`` on
    ``prepared``'s test split.

    Raises NotRescorable (or a ShelfError: IntegrityError, RemoteError, VersionMismatchError)
    with the reason when it cannot.
    """
    from modelshelf.pipeline import data
    from modelshelf.pipeline.evaluate import evaluate
    from modelshelf.pipeline.significance import outputs
    from modelshelf.registry.core import Workspace
    from modelshelf.registry.restore import restore_artefact

    ws = Workspace.open(root)
    raw = ws.repo.show(commit, ws.card)
    if raw is None:
        raise NotRescorable(f"no {ws.card} at {rev}")
    card = parse_card(raw, f"{rev}:{ws.card}")
    if catalogue_numbers(card.get("metrics")) != catalogue_numbers(committed):
        raise NotRescorable(f"the card at {rev} describes another model than its committed metrics")
    try:
        schema = json.loads((prepared / SCHEMA_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise NotRescorable(f"no readable {prepared / SCHEMA_FILE}") from None
    if card.get("input_schema") is None or schema_changed(card["input_schema"], schema):
        raise NotRescorable("the input schema changed (features, kinds, task or classes)")
    rec = card["artefacts"]["model"]
    with tempfile.TemporaryDirectory(prefix=TMP_PREFIX) as tmp:
        target = Path(tmp) / Path(rec["file"]).name
        source = restore_artefact(ws, commit, rec, target)
        estimator = artefacts.load_verified(
            target, rec["sha256"], sklearn_version=card["dependencies"].get("scikit-learn"),
            label=f"the {rev} card's")
    X, y = data.read_split(prepared / TEST_FILE, schema)
    try:
        metrics, _ = evaluate(estimator, X, y, schema["task"])
        found = outputs(estimator, X, y, schema["task"], schema.get("classes"))
    except Exception as exc:  # noqa: BLE001 - any failure keeps the committed metrics
        raise NotRescorable(f"scoring the baseline model failed ({type(exc).__name__})") from None
    model = {"version": card.get("version"), "sha256": rec["sha256"], "source": source,
             "rows": int(len(y)), "scikit-learn": card["dependencies"].get("scikit-learn")}
    return metrics, model, found
