"""The one-row lane: a single all-numeric row answered without building a batch.

Most online requests are one row.  On the general path that row becomes a float64 matrix, a
float32 copy, an input dict for onnxruntime and output arrays allocated per call; on a server
that idles between requests (caches and branch predictors gone cold) that costs about as
much as the trees themselves.  Here the row's values are checked over the tuple (numbers
only, within float32's range), packed straight into the one ``[1, k]`` tensor an IOBinding
holds, and the graph writes into outputs bound once.

The lane answers exactly what :meth:`OnnxRunner.predict <modelshelf.serve.runner.OnnxRunner.predict>`
would (checked when it is built, and by the tests on the held-out set); a null is a
missing value, NaN, as there.  It declines (``None``), and the general path answers, for
anything else: several rows, columns, a value to explain, a model with categorical features
or string labels, a body whose colons do not add up (a duplicate key, see
:func:`~modelshelf.serve.payload.check_unique`), or a call while another thread holds its buffers.
"""

from __future__ import annotations

import operator
import struct
import threading
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from modelshelf.serve.payload import FLOAT32_MAX
from modelshelf.serve.runner import answer

if TYPE_CHECKING:
    from modelshelf.onnxcopy import Session
    from modelshelf.serve.runner import OnnxRunner

_NUMBER = frozenset({float, int})  # not bool: that goes the general way, to be refused
_NUMBER_OR_NULL = _NUMBER | {type(None)}
_NAN = float("nan")
_DTYPES = {"tensor(float)": "float32", "tensor(double)": "float64", "tensor(int64)": "int64",
           "tensor(int32)": "int32"}


class OneRow:
    """Buffers bound to one session: ``predict(data)`` for a parsed ``/predict`` body."""

    def __init__(self, session: Session, schema: Mapping[str, Any]) -> None:
        """Bind the buffers; raises ``ValueError`` when the graph does not suit the lane."""
        import numpy as np
        import onnxruntime as ort

        names = [f["name"] for f in schema["features"]]
        if not names or any(f["kind"] != "numeric" for f in schema["features"]) or len(session.inputs) != 1:
            raise ValueError("the lane takes graphs with one input of numeric features only")
        ort_session = session.ort
        self.width = len(set(names))
        # the colons of {"rows": [row]} without duplicates: one a member, and those in the names
        self._colons = 1 + self.width + sum(n.count(":") for n in set(names))
        self._escapes = self._colons != 1 + self.width  # \u003a in a name could hide a duplicate
        get = operator.itemgetter(*names)
        self._values = (lambda row: (get(row),)) if len(names) == 1 else get
        self._row = np.zeros((1, len(names)), dtype=np.float32)
        self._pack = struct.Struct(f"={len(names)}f").pack_into
        self._view = memoryview(self._row).cast("B")
        self._outputs = [np.zeros(_shape(o.shape), dtype=_dtype(o.type)) for o in ort_session.get_outputs()]
        binding = ort_session.io_binding()
        binding.bind_ortvalue_input(session.inputs[0], ort.OrtValue.ortvalue_from_numpy(self._row))
        for name, buf in zip(session.outputs, self._outputs, strict=True):
            binding.bind_ortvalue_output(name, ort.OrtValue.ortvalue_from_numpy(buf))
        self._run = lambda: ort_session.run_with_iobinding(binding)
        self._schema = schema
        self._lock = threading.Lock()

    def predict(self, data: Any, body: bytes | None = None) -> dict[str, Any] | None:
        """The answer for ``{"rows": [one clean row]}``, or None: the general path answers.

        ``body``, the text ``data`` was decoded from, is checked for duplicate keys: without
        it the caller vouches that there were none."""
        if type(data) is not dict or len(data) != 1:
            return None
        rows = data.get("rows")
        if type(rows) is not list or len(rows) != 1:
            return None
        row = rows[0]
        if type(row) is not dict or len(row) != self.width:
            return None
        try:
            values = present = self._values(row)  # every feature found, and no other: len() says so
        except KeyError:
            return None
        if not _NUMBER.issuperset(map(type, values)):
            if not _NUMBER_OR_NULL.issuperset(map(type, values)):
                return None
            present = [v for v in values if v is not None]
            values = tuple(_NAN if v is None else v for v in values)  # missing: the graph imputes NaN
        # min/max compare ints exactly; the bound is the general path's (payload.FLOAT32_MAX)
        if present and not (-FLOAT32_MAX <= min(present) and max(present) <= FLOAT32_MAX):
            return None
        if body is not None and (body.count(b":") != self._colons or self._escapes and b"\\" in body):
            return None  # perhaps a duplicate key: the general path finds it
        if not self._lock.acquire(blocking=False):
            return None  # another thread has the buffers: the general path needs none
        try:
            self._pack(self._view, 0, *values)  # float → float32 rounds as numpy's astype does
            self._run()
            return answer(self._outputs, self._schema)  # lists: copies made before the buffers are let go
        finally:
            self._lock.release()


def build(runner: OnnxRunner) -> OneRow | None:
    """A lane for ``runner``'s session (warmed up), or None when its graph does not suit one or
    the lane's answer for a probe row differs from ``runner.predict``'s."""
    from modelshelf.pipeline.features import Batch

    schema = runner.schema
    try:
        lane = OneRow(runner.session, schema)
    except (ValueError, KeyError):
        return None
    names = [f["name"] for f in schema["features"]]
    probe = {name: i * 0.75 - 1 for i, name in enumerate(names)}  # distinct values: a mix-up shows
    try:  # an optimisation: any failure here leaves the general path to answer
        got = lane.predict({"rows": [probe]})
    except Exception:  # noqa: BLE001 - onnxruntime's errors have no common base worth naming
        return None
    if got is None or got != runner.predict(Batch.from_columns({n: [v] for n, v in probe.items()}, schema)):
        return None
    return lane


def _shape(dims: Sequence[Any]) -> tuple[int, ...]:
    """An output's shape for one row: the batch dimension (symbolic or not) is 1."""
    if not dims:
        raise ValueError("an output without a shape")
    rest = dims[1:]
    if not all(isinstance(d, int) for d in rest):
        raise ValueError("an output with a symbolic inner dimension")
    return (1, *rest)


def _dtype(ort_type: str) -> str:
    if ort_type not in _DTYPES:
        raise ValueError(f"an output of type {ort_type}")
    return _DTYPES[ort_type]
