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
from modelshelf.errors import ShelfError
from modelshelf.pipeline.gate import Baseline, catalogue_numbers, read_baseline, with_rescore
from modelshelf.gitrepo import GitRepo

SCHEMA_FILE = "schema.json"
TEST_FILE = "test.csv"
TMP_PREFIX = "shelf-baseline-"


class NotRescorable(Exception):
    """The baseline model cannot be scored on this held-out set; the message says why."""


def read(repo: GitRepo, rev: str, metrics_path: str, *, root: Path,
         prepared: Path | None) -> Baseline:
    """The baseline at ``rev``: its model re-scored on ``prepared``'s test split when possible,
    else its committed ``metrics_path`` (repo-relative) with the reason recorded."""
    base = read_baseline(repo, rev, metrics_path)
    if not base.found or base.commit is None:
        return base
    if prepared is None:
        return with_rescore(base, None, "the gate was given no prepared test split "
                                        "(add `--prepared` to the gate stage in dvc.yaml)")
    try:
        metrics, model = rescore(root, base.commit, rev, prepared, base.metrics or {})
    except NotRescorable as exc:
        return with_rescore(base, None, str(exc))
    except ShelfError as exc:  # integrity, remote, version mismatch, git: say which, keep committed
        where = "" if not exc.where or TMP_PREFIX in exc.where else f"{exc.where}: "
        return with_rescore(base, None, where + exc.problem)
    note = f"model v{model['version']} (sha256 {model['sha256'][:12]}…, from the {model['source']})"
    return with_rescore(base, metrics, note, model)


def rescore(root: Path, commit: str, rev: str, prepared: Path,
            committed: Mapping[str, float]) -> tuple[dict[str, float], dict[str, Any]]:
    """``(metrics, model info)`` of the model committed at ``commit`` on ``prepared``'s test split.

    Raises NotRescorable (or a ShelfError: IntegrityError, RemoteError, VersionMismatchError)
    with the reason when it cannot.
    """
    from modelshelf.pipeline import data
    from modelshelf.pipeline.evaluate import evaluate
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
    except Exception as exc:  # noqa: BLE001 - any failure keeps the committed metrics
        raise NotRescorable(f"scoring the baseline model failed ({type(exc).__name__})") from None
    model = {"version": card.get("version"), "sha256": rec["sha256"], "source": source,
             "rows": int(len(y)), "scikit-learn": card["dependencies"].get("scikit-learn")}
    return metrics, model
