"""Batch scoring of a CSV with the same verified runner and the same input rules as HTTP."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from modelshelf import artefacts
from modelshelf.errors import DataError
from modelshelf.pipeline.features import Batch
from modelshelf.params import suggest


@dataclass(frozen=True)
class Scored:
    """What :func:`predict_csv` scored: the model version, the rows, and the file written
    (None when the CSV went to a stream)."""

    version: str
    rows: int
    output: Path | None

    def to_json(self) -> dict[str, Any]:
        """What ``shelf predict --json`` prints."""
        return {"version": f"v{self.version}", "rows": self.rows,
                "output": None if self.output is None else str(self.output)}


def predict_csv(spec: str, source: Path, output: Path | TextIO, *, repo: Path = Path("."),
                allow_version_mismatch: bool = False) -> Scored:
    """Score ``source`` with the model ``spec`` names; write ``output`` atomically, or write
    the CSV to ``output`` when it is a text stream (``shelf predict -o -``: standard output).

    When the card's input schema names an ID column (``data.id``) and ``source`` has it, the
    output's first column is that ID, row for row, read as text (leading zeros kept)."""
    import numpy as np
    import pandas as pd

    from modelshelf.model import locate
    from modelshelf.serve.runner import load

    # A release's bytes are verified against the card at its tag, not its copy's card.json.
    where = locate(spec, repo)
    loaded = load(where.directory, card=where.card, allow_version_mismatch=allow_version_mismatch, max_rows=0)
    schema = loaded.card["input_schema"]
    cats = {f["name"]: object for f in schema["features"] if f["kind"] == "categorical"}
    id_name = (schema.get("id") or {}).get("name")
    if id_name is not None:
        cats[id_name] = object  # the ID as written, not as a number
    try:
        frame = pd.read_csv(source, dtype=cats, keep_default_na=True)
    except FileNotFoundError:
        raise DataError(str(source), "file not found", "check the path") from None
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError, ValueError) as exc:
        raise DataError(str(source), f"not a readable CSV ({type(exc).__name__})", "fix the file") from None
    names = [f["name"] for f in schema["features"]]
    missing = [n for n in names if n not in frame.columns]
    if missing:
        raise DataError(str(source), f"missing feature column '{missing[0]}'",
                        suggest(missing[0], tuple(map(str, frame.columns)), "columns"))
    columns: dict[str, Any] = {}
    for f in schema["features"]:
        col = frame[f["name"]]
        if f["kind"] == "numeric":
            values = pd.to_numeric(col, errors="coerce")
            bad = col.notna() & values.isna()
            if bad.any():
                row = int(np.flatnonzero(bad.to_numpy())[0])
                raise DataError(str(source), f"column '{f['name']}' row {row + 1}: {col.iloc[row]!r} is not a number",
                                "fix the value or leave it empty for missing")
            if np.isinf(values.to_numpy(dtype=float)).any():
                raise DataError(str(source), f"column '{f['name']}' holds infinity", "replace it")
            columns[f["name"]] = values.to_numpy(dtype=float)
        else:
            columns[f["name"]] = [None if v is None or (isinstance(v, float) and v != v) else str(v)
                                  for v in col.tolist()]
    result = loaded.runner.predict(Batch.from_columns(columns, schema)) if len(frame) else {"predictions": []}
    out = pd.DataFrame({"prediction": result["predictions"]})
    for i, cls in enumerate(result.get("classes") or []):
        if "probabilities" in result:
            out[f"proba_{cls}"] = [p[i] for p in result["probabilities"]]
    out.insert(0, "model_version", loaded.version)
    if id_name is not None and id_name in frame.columns:
        if id_name in out.columns:
            raise DataError(str(source), f"the ID column '{id_name}' has the name of an output column",
                            "rename the ID column (data.id) and retrain")
        out.insert(0, id_name, frame[id_name].to_numpy())
    text = out.to_csv(index=False)
    if not hasattr(output, "write"):
        artefacts.write_text(Path(output), text)
        return Scored(loaded.version, len(frame), Path(output))
    output.write(text)
    output.flush()
    return Scored(loaded.version, len(frame), None)
