"""``shelf drift``: new data against the training profile of the workspace model or a release."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from modelshelf import artefacts
from modelshelf.card import CARD_FILE, read_card
from modelshelf.drift.profile import DriftResult, FeatureDrift, compare
from modelshelf.errors import DataError, IntegrityError
from modelshelf.params import DriftParams

if TYPE_CHECKING:
    import pandas as pd

    from modelshelf.serve.logread import Entry


@dataclass(frozen=True)
class Reference:
    version: str
    card: dict[str, Any]
    profile: dict[str, Any]
    spec: str | None


@dataclass(frozen=True)
class DriftReport:
    reference: Reference
    source: str
    result: DriftResult

    def to_json(self) -> dict[str, Any]:
        r = self.result
        row = lambda f: {"feature": f.name, "kind": f.kind, "psi": _finite(f.psi), "test": f.test,  # noqa: E731
                         "statistic": _finite(f.statistic), "p_value": _finite(f.p_value),
                         "missing_ref": f.missing_ref, "missing_new": f.missing_new,
                         "missing_p_value": _finite(f.missing_p_value), "level": f.level, "reasons": list(f.reasons)}
        return {"verdict": r.verdict, "version": self.reference.version, "data": self.source, "rows": r.rows,
                "schema_problems": list(r.schema_problems), "drifted": r.drifted(),
                "thresholds": vars(r.thresholds), "features": [row(f) for f in r.features],
                "predictions": row(r.prediction) if r.prediction else None}

    def markdown(self) -> str:
        r = self.result
        mark = {"no drift": "✓ no drift", "drift": "✗ drift", "schema break": "✗ schema break"}[r.verdict]
        lines = [f"### modelshelf drift: {mark} — {self.source} ({r.rows} rows) against v{self.reference.version}", ""]
        if r.schema_problems:
            lines += [f"- {p}" for p in r.schema_problems]
            return "\n".join(lines) + "\n"
        lines += ["| feature | kind | PSI | test | statistic | p-value | missing (train → new) | |",
                  "|---|---|---:|---|---:|---:|---:|:-:|"]
        rows = sorted(r.features, key=lambda f: -f.psi)
        if r.prediction:
            rows = [r.prediction, *rows]
        icon = {"ok": "✓", "warn": "!", "drift": "✗"}
        for f in rows:
            lines.append(f"| {f.name} | {f.kind} | {f.psi:.3f} | {f.test} | {f.statistic:.3g} | {f.p_value:.2g} "
                         f"| {f.missing_ref:.1%} → {f.missing_new:.1%} | {icon[f.level]} |")
        drifted = [f for f in ([r.prediction] if r.prediction else []) + list(r.features) if f.level == "drift"]
        if drifted:
            lines += ["", "**Drifted:** " + ", ".join(_named(f) for f in drifted)]
        return "\n".join(lines) + "\n"


def reference(start: str | Path, spec: str | None) -> Reference:
    """The card and verified training profile of the workspace model (``spec`` None) or a release."""
    from modelshelf.registry.core import Workspace, open_registry

    ws = Workspace.open(start)
    if spec is None:
        card = read_card(ws.repo.root / ws.card)
        rec = card.get("profile", {})
        if "file" not in rec:
            raise IntegrityError(ws.card, "the card records no training profile",
                                 "rerun `dvc repro` with a modelshelf that writes data/profile.json")
        path = ws.repo.root / rec["file"]
        raw = path.read_bytes() if path.is_file() else None
    else:
        rel = open_registry(ws).find(spec)
        if rel.card is None or "file" not in rel.card.get("profile", {}):
            raise IntegrityError(rel.tag, "this release records no training profile", "check a newer release")
        card, rec = rel.card, rel.card["profile"]
        raw = ws.repo.show(rel.tag, rec["file"])
    if raw is None:
        raise IntegrityError(rec["file"], "the training profile is missing", "restore it with git")
    if artefacts.sha256_bytes(raw) != rec["sha256"]:
        raise IntegrityError(rec["file"], "sha256 differs from the card's", "restore it with `git checkout`")
    return Reference(str(card["version"]), card, json.loads(raw), spec)


def check(start: str | Path, source: Path, spec: str | None = None, *,
          thresholds: DriftParams | None = None, predictions: bool = True) -> DriftReport:
    """Compare the CSV ``source`` with the reference of ``spec`` (default: the workspace model)."""
    import pandas as pd

    from modelshelf.params import load_params
    from modelshelf.project import find_root

    from modelshelf.pipeline import data

    ref = reference(start, spec)
    schema = ref.card["input_schema"]
    params = load_params(find_root(start) / "params.yaml")
    if thresholds is None:
        thresholds = params.drift
    cats = {f["name"]: object for f in schema["features"] if f["kind"] == "categorical"}
    if str(source).lower().endswith(data.PARQUET_SUFFIXES):
        frame = data.read_parquet(Path(source), str(source))
        frame = frame.astype({k: object for k in cats if k in frame.columns})
        return _compared(start, ref, schema, frame, thresholds, predictions, source)
    try:  # the project's separator (data.sep): new data comes as the training data came
        frame = pd.read_csv(source, dtype=cats, sep=params.data.sep)
    except FileNotFoundError:
        raise DataError(str(source), "file not found", "check the path") from None
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError, ValueError) as exc:
        raise DataError(str(source), f"not a readable CSV ({type(exc).__name__})", "fix the file") from None
    return _compared(start, ref, schema, frame, thresholds, predictions, source)


def _compared(start: str | Path, ref: Reference, schema: dict[str, Any], frame: Any,
              thresholds: DriftParams, predictions: bool, source: Path) -> DriftReport:
    # Columns the model never used by design (data.id, data.drop) are not "new" in new data.
    dataset = ref.card.get("dataset", {})
    ignored = [*dataset.get("dropped_columns", ()), *([dataset["id"]] if dataset.get("id") else [])]
    frame = frame.drop(columns=[c for c in ignored if c in frame.columns])
    preds = None
    pred_profile = ref.card.get("profile", {}).get("predictions")
    if predictions and pred_profile is not None and all(f["name"] in frame.columns for f in schema["features"]):
        preds = _predict(start, ref, frame)
    result = compare(ref.profile, schema, frame, thresholds, preds, pred_profile)
    return DriftReport(ref, str(source), result)


PREDICTION_SAMPLE = 100_000


def _predict(start: str | Path, ref: Reference, frame: Any) -> Any:
    """The reference model's predictions on ``frame`` (a seeded sample of at most
    100,000 rows: plenty for a distribution), through the verified serving runner."""
    import pandas as pd

    from modelshelf.model import locate
    from modelshelf.registry.core import Workspace
    from modelshelf.serve.runner import load

    trusted = None
    if ref.spec is None:
        ws = Workspace.open(start)
        directory = ws.repo.root / PurePosixPath(ws.card).parent
    else:
        where = locate(ref.spec, start)  # a release: its copy, with the card at its tag
        directory, trusted = where.directory, where.card
    if not (directory / CARD_FILE).is_file():
        return None
    loaded = load(directory, card=trusted)
    if len(frame) > PREDICTION_SAMPLE:
        frame = frame.sample(n=PREDICTION_SAMPLE, random_state=0)
    columns = {}
    for f in ref.card["input_schema"]["features"]:
        col = frame[f["name"]]
        if f["kind"] == "numeric":
            if not pd.api.types.is_numeric_dtype(col):
                return None
            columns[f["name"]] = col.to_numpy(dtype=float)
        else:
            columns[f["name"]] = col.to_numpy(dtype=object)
    from modelshelf.pipeline.features import Batch

    return loaded.runner.predict(Batch.from_columns(columns, ref.card["input_schema"]))["predictions"]


def _named(f: FeatureDrift) -> str:
    return f"{f.name} ({'; '.join(f.reasons)})" if f.reasons else f.name


def _finite(v: float) -> float | None:
    import math

    return v if math.isfinite(v) else None


def check_log(start: str | Path, directory: str | Path, spec: str | None = None, *,
              thresholds: DriftParams | None = None, predictions: bool = True) -> DriftReport:
    """Compare served traffic, as ``shelf serve --log-predictions DIR`` recorded it, with the
    training profile of ``spec`` (default: the version that answered the newest record).

    Args:
        start: a path inside the project.
        directory: the prediction log's directory.
        spec: vX.Y.Z, latest or a stage; None for the version in the newest record.
        thresholds: the drift thresholds (default: ``drift`` in params.yaml).
        predictions: also compare the model's predictions on the traffic with the training ones.

    Returns:
        The report, its ``source`` naming the log and the number of requests and rows read.

    Raises:
        DataError: the directory holds no readable record, a line of the log is malformed (its
            file, line and field named; a line cut short at a file's end is skipped), or the
            records do not fit the schema.
    """
    import pandas as pd

    from modelshelf.params import load_params
    from modelshelf.project import find_root
    from modelshelf.serve.logread import read_log

    log = read_log(directory)
    where = Path(log.directory)
    if not log.entries:
        files = f"{log.files} log file{'s' if log.files != 1 else ''}"
        raise DataError(str(where), f"no prediction log records in {files}{log.skipped()}",
                        "serve with `--log-predictions DIR` and send some traffic first")
    versions = [entry.get("version", "text") for entry in log.entries]
    if spec is None:
        spec = f"v{versions[-1]}"
    frame = pd.concat([_request_frame(entry) for entry in log.entries], ignore_index=True)
    ref = reference(start, spec)
    schema = ref.card["input_schema"]
    cats = [f["name"] for f in schema["features"] if f["kind"] == "categorical" and f["name"] in frame.columns]
    frame = frame.astype({k: object for k in cats})
    if thresholds is None:
        thresholds = load_params(find_root(start) / "params.yaml").drift
    served = sorted(set(versions))
    source = Path(f"{where} ({len(log.entries)} requests, {len(frame)} rows, served by v{', v'.join(served)}"
                  f"{log.skipped()})")
    return _compared(start, ref, schema, frame, thresholds, predictions, source)


def _request_frame(entry: Entry) -> pd.DataFrame:
    """The rows of one logged request (``rows``: objects; ``columns``: equal-length arrays), its
    values JSON scalars; a refusal names the record's file and line."""
    import pandas as pd

    from modelshelf.serve.logread import shown

    request = entry.get("request", "object")
    if "rows" in request:
        rows = entry.get("request.rows", "list")
        for i, row in enumerate(rows):
            if not isinstance(row, dict):
                entry.refuse(f'field "request.rows" holds {shown(row)} (row {i + 1}), not an object')
            _scalars(entry, "request.rows", row.values())
        return pd.DataFrame.from_records(rows)
    if "columns" in request:
        columns = entry.get("request.columns", "object")
        lengths: set[int] = set()
        for name, values in columns.items():
            entry.check(f"request.columns.{name}", values, "list")
            _scalars(entry, f"request.columns.{name}", values)
            lengths.add(len(values))
        if len(lengths) > 1:
            entry.refuse(f'field "request.columns" holds arrays of lengths {sorted(lengths)}, not of one length')
        return pd.DataFrame(columns)
    entry.refuse('field "request" holds neither "rows" nor "columns"')


def _scalars(entry: Entry, name: str, values: Iterable[Any]) -> None:
    """Refuse a value of the field ``name`` that is an array or an object (a cell holds a JSON scalar)."""
    from modelshelf.serve.logread import shown

    for value in values:
        if isinstance(value, dict | list):
            entry.refuse(f'field "{name}" holds {shown(value)}, not a number, string, boolean or null')
