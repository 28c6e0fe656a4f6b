"""The dataset: load, validate, infer the task and schema, split deterministically."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modelshelf.errors import DataError
from modelshelf.onnxcopy import MISSING_CATEGORY  # noqa: F401 - the pipeline's fill value, re-exported
from modelshelf.params import DataParams, suggest

if TYPE_CHECKING:
    import pandas as pd

BUILTINS = {
    "breast_cancer": "load_breast_cancer",
    "iris": "load_iris",
    "wine": "load_wine",
    "diabetes": "load_diabetes",
}
MAX_CLASSES_FOR_AUTO = 20
MAX_RECORDED_CATEGORIES = 1000
PARQUET_SUFFIXES = (".parquet", ".pq")
# A string column is "mostly unique", like an ID, when at least this share of its values are
# distinct, over more than UNIQUE_MIN_DISTINCT of them: one-hot encoding it learns nothing.
UNIQUE_SHARE = 0.9
UNIQUE_MIN_DISTINCT = 20
SHOWN_ROWS = 5


@dataclass(frozen=True)
class Dataset:
    frame: pd.DataFrame
    source: str
    path: str | None
    sha256: str


def source_format(params: DataParams) -> str:
    """``csv`` or ``parquet``: ``data.format``, or when ``auto`` the source's extension."""
    if params.format != "auto":
        return params.format
    return "parquet" if params.source.lower().endswith(PARQUET_SUFFIXES) else "csv"


def load_source(params: DataParams, root: Path) -> Dataset:
    """Read ``data.source``: ``builtin:NAME``, or a CSV (``data.sep``) or Parquet file relative
    to ``root`` (``data.format``).

    Raises:
        DataError: an unknown built-in, a missing, empty or unreadable file.
    """
    import pandas as pd

    if params.source.startswith("builtin:"):
        name = params.source.split(":", 1)[1]
        if name not in BUILTINS:
            raise DataError("params.yaml: data.source", f"unknown built-in dataset '{name}'",
                            suggest(name, tuple(BUILTINS), "built-ins"))
        import sklearn.datasets

        frame = getattr(sklearn.datasets, BUILTINS[name])(as_frame=True).frame
        canonical = frame.to_csv(index=False).encode()
        return Dataset(frame, params.source, None, hashlib.sha256(canonical).hexdigest())

    path = root / params.source
    where = f"{params.source}"
    if not path.is_file():
        raise DataError(where, "data file not found (data.source in params.yaml)",
                        "check the path, or run `dvc pull` if it is tracked by DVC")
    raw = path.read_bytes()
    if source_format(params) == "parquet":
        frame = read_parquet(path, where)
    else:
        try:
            # an ID is read as written: "007" stays "007"
            ids = {"dtype": {params.id: str}} if params.id is not None else {}
            frame = pd.read_csv(path, sep=params.sep, **ids, **_exact_floats())
        except pd.errors.EmptyDataError:
            raise DataError(where, "the CSV file is empty", "add a header row and data rows") from None
        except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as exc:
            detail = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
            raise DataError(where, f"malformed CSV ({detail})",
                            "fix the file so every row has the header's columns") from None
    frame.columns = [str(c) for c in frame.columns]
    return Dataset(frame, params.source, params.source, hashlib.sha256(raw).hexdigest())


def read_parquet(path: Path, where: str) -> pd.DataFrame:
    import pandas as pd

    try:
        import pyarrow  # noqa: F401 - pandas' Parquet engine
    except ImportError:
        raise DataError(where, "reading Parquet needs pyarrow, which is not installed",
                        "pip install pyarrow, or convert the file to CSV") from None
    try:
        return pd.read_parquet(path)
    except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(where, f"not a readable Parquet file ({detail})",
                        "write it again with pandas.DataFrame.to_parquet, or set data.format: csv") from None


def apply_controls(frame: pd.DataFrame, params: DataParams, where: str) -> tuple[pd.DataFrame, int]:
    """Apply ``data.drop``, check ``data.id``, and handle rows without a target
    (``data.missing_target``).

    Returns:
        The frame without the dropped columns (and rows), and how many rows were dropped.

    Raises:
        DataError: an unknown column, or missing targets when ``data.missing_target`` is error.
    """
    columns = tuple(map(str, frame.columns))
    for key, name in [*(("data.drop", c) for c in params.drop), ("data.id", params.id)]:
        if name is not None and name not in columns:
            raise DataError(where, f"column '{name}' ({key} in params.yaml) not found",
                            suggest(name, columns, "columns"))
    out = frame.drop(columns=list(params.drop)) if params.drop else frame
    if params.target not in columns:
        return out, 0  # validate() names it, with its did-you-mean
    missing = out[params.target].isna().to_numpy()
    n = int(missing.sum())
    if not n:
        return out, 0
    if params.missing_target == "error":
        rows = [int(i) + 1 for i in missing.nonzero()[0][:SHOWN_ROWS]]
        shown = ", ".join(map(str, rows)) + (", …" if n > SHOWN_ROWS else "")
        raise DataError(where, f"target column '{params.target}' has {n} missing value{'s' * (n != 1)} "
                        f"(data rows {shown}; row 1 is the first below the header)",
                        "fill or remove those rows, or set data.missing_target: drop")
    return out[~missing].reset_index(drop=True), n


def infer_task(y: pd.Series, requested: str) -> str:
    """``binary``, ``multiclass`` or ``regression`` for target ``y``."""
    import pandas as pd

    numeric = pd.api.types.is_numeric_dtype(y) and not pd.api.types.is_bool_dtype(y)
    if requested == "regression":
        if not numeric:
            raise DataError("params.yaml: data.task", "regression needs a numeric target",
                            "set data.task to classification or auto")
        return "regression"
    if requested == "auto" and numeric:
        integral = pd.api.types.is_integer_dtype(y) or bool(((y % 1) == 0).all())
        if not integral or y.nunique() > MAX_CLASSES_FOR_AUTO:
            return "regression"
    return "binary" if y.nunique() == 2 else "multiclass"


def validate(frame: pd.DataFrame, params: DataParams, where: str) -> str:
    """Check the frame can be trained on; return the task."""
    target = params.target
    if frame.shape[0] == 0:
        raise DataError(where, "the dataset has no rows", "add data rows below the header")
    if target not in frame.columns:
        columns = tuple(map(str, frame.columns))
        remedy = suggest(target, columns, "columns")
        if len(columns) == 1 and (seps := [c for c in ";\t|," if c != params.sep and c in columns[0]]):
            remedy = f"the header reads as one column: set data.sep: {seps[0]!r}"
        raise DataError(where, f"target column '{target}' (data.target in params.yaml) not found", remedy)
    if frame.shape[1] - (params.id is not None and params.id in frame.columns) < 2:
        raise DataError(where, "no feature columns besides the target", "add feature columns")
    y = frame[target]
    if y.isna().any():
        raise DataError(where, f"target column '{target}' has {int(y.isna().sum())} missing values",
                        "remove or fill those rows")
    empty = [str(c) for c in frame.columns if c != params.id and frame[c].isna().all()]
    if empty:
        raise DataError(where, f"column '{empty[0]}' has no values (all NaN)",
                        "add it to data.drop or fill it")
    check_cardinality(frame, params, where)
    task = infer_task(y, params.task)
    if task != "regression":
        counts = y.value_counts()
        if len(counts) < 2:
            raise DataError(where, f"target column '{target}' has a single class",
                            "a classifier needs at least two classes")
        rare = counts[counts < 2]
        if len(rare):
            raise DataError(where, f"class {_json_scalar(rare.index[0])!r} has {int(rare.iloc[0])} row; "
                            "a stratified split needs at least 2 per class",
                            "add rows for it or remove it")
        n_test = _n_test(len(frame), params.test_size)
        if n_test < len(counts) or len(frame) - n_test < len(counts):
            raise DataError(where, f"{len(frame)} rows cannot be split into train and test sets "
                            f"holding all {len(counts)} classes (data.test_size={params.test_size})",
                            "add rows or adjust data.test_size")
    elif len(frame) < 5:
        raise DataError(where, f"only {len(frame)} rows", "a regression needs at least 5 rows")
    return task


def check_cardinality(frame: pd.DataFrame, params: DataParams, where: str) -> None:
    """Refuse a string feature with more than ``data.max_categories`` distinct values, or one
    whose values are mostly unique (an ID): one-hot encoding it would learn nothing.

    Raises:
        DataError: naming the column, its distinct count and the remedies.
    """
    import pandas as pd

    for col in frame.columns:
        if col in (params.target, params.id):
            continue
        s = frame[col]
        if pd.api.types.is_numeric_dtype(s) and not pd.api.types.is_bool_dtype(s):
            continue
        present = s.dropna()
        distinct = int(present.astype(str).nunique())
        if distinct > UNIQUE_MIN_DISTINCT and distinct >= UNIQUE_SHARE * len(present):
            raise DataError(where, f"column '{col}' has {distinct} distinct values in {len(present)} rows: "
                            "mostly unique, like an ID, so nothing can be learnt from it",
                            "add it to data.drop, or name it data.id if it identifies rows "
                            "(raising data.max_categories does not admit a mostly unique column)")
        if distinct > params.max_categories:
            raise DataError(where, f"column '{col}' has {distinct} distinct values, more than "
                            f"data.max_categories ({params.max_categories}) to one-hot encode",
                            f"add it to data.drop, name it data.id if it identifies rows, "
                            f"or raise data.max_categories to at least {distinct}")


def _n_test(n: int, test_size: float) -> int:
    import math

    return math.ceil(n * test_size)


def normalise(frame: pd.DataFrame, target: str, id_column: str | None = None) -> pd.DataFrame:
    """Categorical features (object, bool, category) become strings; NaN stays NaN.  The ID
    column is left as it is."""
    import pandas as pd

    out = frame.copy()
    if pd.api.types.is_bool_dtype(out[target]):
        out[target] = out[target].astype(str)
    for col in out.columns:
        if col in (target, id_column):
            continue
        s = out[col]
        if not pd.api.types.is_numeric_dtype(s) or pd.api.types.is_bool_dtype(s):
            out[col] = s.astype(object).where(s.isna(), s.astype(str))
    return out


def schema_of(frame: pd.DataFrame, target: str, task: str, id_column: str | None = None) -> dict[str, Any]:
    """The input schema: features (name, kind, dtype, categories), target, task, classes, and
    the ID column (``id``: name and dtype, never a feature) when there is one."""
    import pandas as pd

    features = []
    for col in frame.columns:
        if col in (target, id_column):
            continue
        s = frame[col]
        if pd.api.types.is_numeric_dtype(s) and not pd.api.types.is_bool_dtype(s):
            features.append({"name": str(col), "kind": "numeric", "dtype": str(s.dtype)})
        else:
            cats = sorted(s.dropna().astype(str).unique().tolist())
            entry: dict[str, Any] = {"name": str(col), "kind": "categorical", "dtype": "string",
                                     "cardinality": len(cats)}
            entry["categories"] = cats if len(cats) <= MAX_RECORDED_CATEGORIES else None
            features.append(entry)
    y = frame[target]
    schema: dict[str, Any] = {
        "features": features,
        "target": {"name": str(target), "dtype": str(y.dtype)},
        "task": task,
    }
    if task != "regression":
        schema["classes"] = sorted(_json_scalar(v) for v in y.unique())
    if id_column is not None:
        schema["id"] = {"name": str(id_column), "dtype": str(frame[id_column].dtype)}
    return schema


def split(frame: pd.DataFrame, params: DataParams, task: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Deterministic train/test split, stratified for classification."""
    from sklearn.model_selection import train_test_split

    stratify = frame[params.target] if task != "regression" else None
    train, test = train_test_split(frame, test_size=params.test_size,
                                   random_state=params.random_state, stratify=stratify)
    return train, test


def read_split(path: str | Path, schema: dict[str, Any]) -> tuple[pd.DataFrame, pd.Series]:
    """Read a prepared split back with the schema's dtypes: ``(X, y)``."""
    import pandas as pd

    dtypes: dict[str, Any] = {f["name"]: object for f in schema["features"] if f["kind"] == "categorical"}
    target = schema["target"]["name"]
    if schema["target"]["dtype"] in ("object", "str", "string", "bool"):
        dtypes[target] = object
    frame = pd.read_csv(path, dtype=dtypes, keep_default_na=False, **_exact_floats(),
                        na_values=[""])
    names = [f["name"] for f in schema["features"]]
    return frame[names], frame[target]


def _exact_floats() -> dict[str, Any]:
    """read_csv options that parse every float exactly: pandas 3 does by default (and
    deprecates the option); pandas 2's default parser can be off by one ulp."""
    import pandas as pd

    return {} if int(pd.__version__.split(".")[0]) >= 3 else {"float_precision": "round_trip"}


def _json_scalar(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value
