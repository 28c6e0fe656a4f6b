"""The ONNX copy of a model: export with skl2onnx, prove parity, run with onnxruntime.

The training pipeline imputes missing categories with a constant; that imputer does not
convert, so the exported graph starts at the one-hot encoder and every caller fills
missing categories with :data:`MISSING_CATEGORY` first (see :func:`feeds`).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

from modelshelf.pipeline.features import Batch

# The pipeline fills missing categories with this; the graph expects callers to (see feeds).
MISSING_CATEGORY = "__missing__"
ONNX_FILE = "model.onnx"
PROBA_TOLERANCE = 1e-5


class Export(NamedTuple):
    """An exported graph, or why there is none; ``parity`` holds what was measured."""

    data: bytes | None
    parity: dict[str, Any]
    reason: str = ""


NUMERIC_INPUT = "numeric_features"


def feeds(batch: Batch) -> list[Any]:
    """onnxruntime inputs in the graph's order: one ``[n, k]`` float32 matrix of the numeric
    features (schema order), then one ``[n, 1]`` string tensor per categorical feature."""
    import numpy as np

    out = [batch.numeric.astype(np.float32)] if batch.numeric.shape[1] else []
    for values in batch.categorical.values():
        out.append(np.array([MISSING_CATEGORY if v is None else v for v in values], dtype=str).reshape(-1, 1))
    return out


def _one_numeric_input(data: bytes) -> bytes:
    """Replace the graph's per-column float inputs by one ``[n, k]`` input split inside the graph.

    One input instead of k makes each call cheaper (onnxruntime binds every input), and lets
    callers build one matrix; the parity check below runs on the rewritten graph.
    """
    import onnx
    from onnx import TensorProto, helper

    model = onnx.load_from_string(data)
    graph = model.graph
    numeric = [i for i in graph.input if i.type.tensor_type.elem_type == TensorProto.FLOAT]
    if not numeric:
        return data
    others = [i for i in graph.input if i.type.tensor_type.elem_type != TensorProto.FLOAT]
    names = [i.name for i in numeric]
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 11)
    if opset >= 13:  # split sizes became an input in opset 13
        sizes = helper.make_tensor("modelshelf_split_sizes", TensorProto.INT64, [len(names)], [1] * len(names))
        graph.initializer.append(sizes)
        split = helper.make_node("Split", [NUMERIC_INPUT, sizes.name], names, axis=1,
                                 name="modelshelf_split_numeric")
    else:
        split = helper.make_node("Split", [NUMERIC_INPUT], names, axis=1, split=[1] * len(names),
                                 name="modelshelf_split_numeric")
    merged = helper.make_tensor_value_info(NUMERIC_INPUT, TensorProto.FLOAT, [None, len(names)])
    del graph.input[:]
    graph.input.extend([merged, *others])
    graph.node.insert(0, split)
    _drop_split_concat(graph, names)
    onnx.checker.check_model(model)
    return model.SerializeToString()


def _drop_split_concat(graph: Any, names: list[str]) -> None:
    """When the graph only concatenates the split columns back in order (a numeric-only
    pipeline), feed the input matrix straight through: two fewer operators per call."""
    consumers = [n for n in graph.node if any(x in names for x in n.input)]
    if len(consumers) != 1 or consumers[0].op_type != "Concat" or list(consumers[0].input) != names:
        return
    concat = consumers[0]
    axis = next((a.i for a in concat.attribute if a.name == "axis"), None)
    merged = concat.output[0]
    if axis not in (1, -1) or any(o.name == merged for o in graph.output):
        return
    split = next(n for n in graph.node if list(n.output) == names)
    for node in graph.node:
        for i, x in enumerate(node.input):
            if x == merged:
                node.input[i] = NUMERIC_INPUT
    kept = [n for n in graph.node if n is not split and n is not concat]
    del graph.node[:]
    graph.node.extend(kept)
    used = {x for n in graph.node for x in n.input}
    inits = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(inits)


def _graph_pipeline(pipeline: Any) -> Any:
    """A copy of the fitted pipeline whose categorical branch starts at the encoder."""
    conv = copy.deepcopy(pipeline)
    ct = conv.named_steps["preprocess"]
    ct.transformers_ = [(name, t.steps[-1][1] if name == "categorical" else t, cols)
                        for name, t, cols in ct.transformers_]
    return conv


def export(pipeline: Any, schema: Mapping[str, Any], X: Any, y: Any, *,
           regression_tolerance: float, own_preprocessing: bool = True) -> Export:
    """Convert ``pipeline`` and check it against scikit-learn on the held-out ``X``.

    Classifiers: identical labels and probabilities within 1e-5.  Regressors: predictions
    within ``regression_tolerance`` (absolute).  Anything else yields ``data=None`` and a reason,
    never an exception: a user's pipeline (``own_preprocessing=False``: a factory's, converted
    as it is) may fail to convert, to run, or to match, and the card records why.
    """
    try:
        return _export(pipeline, schema, X, y, regression_tolerance, own_preprocessing)
    except Exception as exc:  # noqa: BLE001 - onnxruntime and user code raise many kinds; record why
        return Export(None, {"checked": False}, f"the ONNX copy could not be checked: {_why(exc)}")


def _why(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0][:200]}" if text else type(exc).__name__


def _export(pipeline: Any, schema: Mapping[str, Any], X: Any, y: Any, regression_tolerance: float,
            own_preprocessing: bool) -> Export:
    import numpy as np

    try:
        from skl2onnx import convert_sklearn
        from skl2onnx.common.data_types import FloatTensorType, StringTensorType

        inputs = [(f["name"], StringTensorType([None, 1]) if f["kind"] == "categorical"
                   else FloatTensorType([None, 1])) for f in schema["features"]]
        conv = _graph_pipeline(pipeline) if own_preprocessing else pipeline
        est = conv.steps[-1][1] if hasattr(conv, "steps") else conv
        options = {id(est): {"zipmap": False}} if schema["task"] != "regression" else None
        # a fixed graph name: skl2onnx draws a random one, and the copy must be reproducible
        model = convert_sklearn(conv, initial_types=inputs, options=options, name="modelshelf")
        data = _one_numeric_input(model.SerializeToString())
    except Exception as exc:  # noqa: BLE001 - the converter raises many kinds; record why
        return Export(None, {"checked": False}, f"skl2onnx cannot convert it: {type(exc).__name__}: "
                      f"{str(exc).splitlines()[0][:200] if str(exc) else ''}")

    session = Session(data)
    if len(session.inputs) != len(feeds(Batch.from_columns({f["name"]: X[f["name"]].to_numpy()[:1]
                                                            for f in schema["features"]}, schema))):
        return Export(None, {"checked": False}, f"the graph takes {len(session.inputs)} inputs, not one per "
                      "feature kind as served (a pipeline that drops input columns does not convert)")
    cols = {f["name"]: X[f["name"]].to_numpy() for f in schema["features"]}
    out = session.run(feeds(Batch.from_columns(cols, schema)))
    rows = int(len(X))
    if schema["task"] == "regression":
        expected = np.asarray(pipeline.predict(X), dtype=float)
        got = np.asarray(out[0], dtype=float).reshape(-1)
        # Relative to the prediction's size (floor 1): the graph computes in float32.
        rel = np.abs(got - expected) / np.maximum(1.0, np.abs(expected))
        diff = float(np.max(rel)) if rows else 0.0
        ok = diff <= regression_tolerance
        parity = {"checked": True, "rows": rows, "max_rel_diff": diff,
                  "tolerance": regression_tolerance, "passed": ok}
        return Export(data if ok else None, parity,
                      "" if ok else f"parity failed: relative difference {diff:.3g} > {regression_tolerance}")
    labels = np.asarray(out[0]).reshape(-1)
    expected_labels = np.asarray(pipeline.predict(X))
    same = float(np.mean(labels.astype(str) == expected_labels.astype(str))) if rows else 1.0
    parity = {"checked": True, "rows": rows, "labels_equal": same}
    ok = same == 1.0
    if len(out) > 1 and hasattr(pipeline, "predict_proba"):
        diff = float(np.max(np.abs(np.asarray(out[1]) - pipeline.predict_proba(X)))) if rows else 0.0
        parity |= {"max_proba_diff": diff, "tolerance": PROBA_TOLERANCE}
        ok = ok and diff <= PROBA_TOLERANCE
    parity["passed"] = ok
    reason = "" if ok else (f"parity failed: {1 - same:.2%} of labels differ" if same < 1.0
                            else f"parity failed: probabilities differ by {parity.get('max_proba_diff'):.3g}")
    return Export(data if ok else None, parity, reason)


class Session:
    """An onnxruntime session for a verified graph: ``run(feeds) -> [labels, probabilities]``."""

    def __init__(self, data: bytes) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1   # one-row latency beats intra-op parallelism here
        opts.inter_op_num_threads = 1
        self._session = ort.InferenceSession(data, sess_options=opts, providers=["CPUExecutionProvider"])
        self.outputs: Sequence[str] = [o.name for o in self._session.get_outputs()]
        # skl2onnx sanitises input names (spaces become '_'); it keeps their order.
        self.inputs: Sequence[str] = [i.name for i in self._session.get_inputs()]

    @property
    def ort(self) -> Any:
        """The ``onnxruntime.InferenceSession`` itself."""
        return self._session

    def run(self, tensors: Sequence[Any]) -> list[Any]:
        """Outputs for ``tensors`` given in the schema's feature order (see :func:`feeds`)."""
        return self._session.run(self.outputs, dict(zip(self.inputs, tensors, strict=True)))
