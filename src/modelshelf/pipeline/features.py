"""A batch of rows in the shape a model takes: numeric features as one matrix, categoricals as lists.

Built from HTTP payloads (:mod:`modelshelf.serve.payload`), CSV columns or a DataFrame, and
consumed by the serving runners and the ONNX parity check, so no caller transposes twice.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import numpy as np


class Batch(NamedTuple):
    """``numeric``: ``[n, k]`` float64, the schema's numeric features in schema order, NaN for
    missing; ``categorical``: name → n values, ``None`` for missing.

    A NamedTuple rather than a frozen dataclass: as immutable, and ~1 ms less of the server's
    timed start-up to create."""

    numeric: np.ndarray
    categorical: Mapping[str, list[Any]]
    n: int

    @classmethod
    def from_columns(cls, columns: Mapping[str, Any], schema: Mapping[str, Any]) -> Batch:
        """A batch from ``{feature: values}`` (lists or arrays), values already checked."""
        features = schema["features"]
        numeric = [f["name"] for f in features if f["kind"] == "numeric"]
        categorical = {f["name"]: _missing_to_none(columns[f["name"]])
                       for f in features if f["kind"] != "numeric"}
        n = len(columns[features[0]["name"]]) if features else 0
        if numeric:
            matrix = np.empty((n, len(numeric)), dtype=np.float64)
            for j, name in enumerate(numeric):
                matrix[:, j] = np.asarray(columns[name], dtype=np.float64)
        else:
            matrix = np.empty((n, 0), dtype=np.float64)
        return cls(matrix, categorical, n)


def _missing_to_none(values: Any) -> list[Any]:
    return [None if v is None or (isinstance(v, float) and v != v) else v for v in values]
