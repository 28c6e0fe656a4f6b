"""The Open Inference Protocol (KServe's v2 REST API) beside the native one, over the same
verified model: health, server and model metadata from the card's input schema, and inference.

An inference request carries either one input per feature (each of shape ``[n]`` or
``[n, 1]``, ``BYTES`` for a categorical feature, a numeric type otherwise), or, for a model whose
features are all numeric, one ``[n, k]`` tensor with the features in the card's order. The
values go through the native API's checks (:class:`~modelshelf.serve.payload.Parser`), so both
APIs accept and refuse the same data. JSON tensors only: the binary tensor extension is
refused with a clear error. ``model_version`` in every answer is the card's version.

https://kserve.github.io/website/latest/modelserving/data_plane/v2_protocol/
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import orjson

from modelshelf import __version__
from modelshelf.serve.payload import BadRequest, loads, loads_large

JSON = b"application/json"
Reply = tuple[int, bytes, bytes]

NUMERIC = frozenset(("FP16", "FP32", "FP64", "INT8", "INT16", "INT32", "INT64",
                     "UINT8", "UINT16", "UINT32", "UINT64"))
SERVER = orjson.dumps({"name": "modelshelf", "version": __version__, "extensions": []})
GET = b"GET, HEAD"


def route(path: str) -> tuple[str, str | None, str | None] | None:
    """``(what, model, version)`` for a v2 path, or None when it is not one of the protocol's.

    ``what`` is ``server``, ``live``, ``ready``, ``model``, ``model_ready`` or ``infer``.
    """
    if path != "/v2" and not path.startswith("/v2/"):
        return None
    parts = path.split("/")[2:]  # "/v2/..." → [...]
    if not parts or parts == [""]:
        return "server", None, None
    if parts in (["health", "live"], ["health", "ready"]):
        return ("live" if parts[1] == "live" else "ready"), None, None
    if len(parts) < 2 or parts[0] != "models" or not parts[1]:
        return None
    name, rest = parts[1], parts[2:]
    version = None
    if len(rest) >= 2 and rest[0] == "versions" and rest[1]:
        version, rest = rest[1], rest[2:]
    what = {(): "model", ("ready",): "model_ready", ("infer",): "infer"}.get(tuple(rest))
    return (what, name, version) if what else None


def allowed(what: str) -> bytes:
    """The methods a v2 route takes, for a 405's Allow header."""
    return b"POST" if what == "infer" else GET


def _error(status: int, message: str) -> Reply:
    return status, JSON, orjson.dumps({"error": message})


def _metadata(loaded: Any) -> dict[str, Any]:
    schema = loaded.parser.schema
    inputs = [{"name": f["name"], "datatype": "FP64" if f["kind"] == "numeric" else "BYTES", "shape": [-1]}
              for f in schema["features"]]
    outputs = [{"name": "predictions", "datatype": _label_type(schema), "shape": [-1]}]
    if schema["task"] != "regression":
        outputs.append({"name": "probabilities", "datatype": "FP64", "shape": [-1, len(schema.get("classes") or [])]})
    return {"name": loaded.name, "versions": [loaded.version], "platform": "modelshelf_sklearn",
            "inputs": inputs, "outputs": outputs,
            "parameters": {"task": schema["task"], "format": loaded.format}}


def _label_type(schema: Mapping[str, Any]) -> str:
    if schema["task"] == "regression":
        return "FP64"
    classes = schema.get("classes") or []
    return _datatype(classes) if classes else "BYTES"


def _datatype(values: list[Any]) -> str:
    types = set(map(type, values))
    if types <= {bool}:
        return "BOOL"
    if types <= {int}:
        return "INT64"
    if types <= {int, float}:
        return "FP64"
    return "BYTES"


def get(what: str, name: str | None, version: str | None, loaded: Any) -> Reply:
    """The answer to a GET on a v2 route (everything but ``infer``)."""
    if what == "server":
        return 200, JSON, SERVER
    if what == "live":
        return 200, JSON, b'{"live":true}'
    if what == "ready":
        return (200, JSON, b'{"ready":true}') if loaded is not None else (503, JSON, b'{"ready":false}')
    missing = _unknown(name, version, loaded)
    if missing is not None:
        return missing
    if what == "model_ready":
        return 200, JSON, orjson.dumps({"name": loaded.name, "ready": True})
    return 200, JSON, orjson.dumps(_metadata(loaded))


def _unknown(name: str | None, version: str | None, loaded: Any) -> Reply | None:
    if loaded is None:
        return _error(503, "no model loaded yet")
    if name != loaded.name:
        return _error(404, f"unknown model '{name}': this server serves '{loaded.name}'")
    if version is not None and version.removeprefix("v") != loaded.version:
        return _error(404, f"version '{version}' of '{name}' is not served: v{loaded.version} is")
    return None


def infer(name: str | None, version: str | None, loaded: Any, body: bytes, large: bool,
          predict: Callable[[Any], dict[str, Any]]) -> tuple[Reply, int]:
    """Answer ``POST …/infer``: the request's tensors as the native API's columns, checked and
    predicted by ``predict`` (a :class:`~modelshelf.serve.payload.Batch` to the native answer).

    Returns:
        The reply and the number of rows scored.
    """
    missing = _unknown(name, version, loaded)
    if missing is not None:
        return missing, 0
    try:
        request = loads_large(body) if large else loads(body)
    except BadRequest as exc:
        raise BadRequest(400, f"{exc.message}; with a binary tensor (Inference-Header-Content-Length), "
                         "send JSON tensors instead (tritonclient: binary_data=False)") from None
    if type(request) is not dict or type(request.get("inputs")) is not list or not request["inputs"]:
        raise BadRequest(400, 'send {"inputs": [{"name", "shape", "datatype", "data"}, …]}', "inputs")
    columns = _columns(request["inputs"], loaded.parser)
    batch = loaded.parser.batch({"columns": columns})
    answer = predict(batch)
    outputs = _outputs(answer, batch.n)
    wanted = request.get("outputs")
    if wanted is not None:
        if type(wanted) is not list or any(type(o) is not dict or type(o.get("name")) is not str for o in wanted):
            raise BadRequest(400, 'outputs must be a list of {"name": …}', "outputs")
        names = {o["name"] for o in outputs}
        unknown = [o["name"] for o in wanted if o["name"] not in names]
        if unknown:
            raise BadRequest(400, f"unknown output '{unknown[0]}': this model gives {', '.join(sorted(names))}",
                             "outputs")
        keep = {o["name"] for o in wanted}
        outputs = [o for o in outputs if o["name"] in keep]
    reply: dict[str, Any] = {"model_name": loaded.name, "model_version": loaded.version, "outputs": outputs}
    if isinstance(request.get("id"), str):
        reply["id"] = request["id"]
    return (200, JSON, orjson.dumps(reply)), batch.n


def _columns(inputs: list[Any], parser: Any) -> dict[str, list[Any]]:
    """The native API's ``columns`` from the request's input tensors (see the module's docstring)."""
    for i, t in enumerate(inputs):
        if type(t) is not dict or not {"name", "shape", "datatype", "data"} <= t.keys():
            raise BadRequest(400, "each input needs name, shape, datatype and data", f"inputs[{i}]")
        if type(t["shape"]) is not list or not t["shape"] or any(type(d) is not int or d < 0 for d in t["shape"]):
            raise BadRequest(400, "shape must be a non-empty list of non-negative integers", f"inputs[{i}].shape")
        if type(t["data"]) is not list:
            raise BadRequest(400, "data must be a list (JSON tensors only)", f"inputs[{i}].data")
    names = [t["name"] for t in inputs]
    if len(set(map(str, names))) != len(names):
        raise BadRequest(400, "an input name is given twice", "inputs")
    if len(inputs) == 1 and inputs[0]["name"] not in parser.kinds and len(inputs[0]["shape"]) == 2:
        return _matrix(inputs[0], parser)
    columns: dict[str, list[Any]] = {}
    for t in inputs:
        name, shape = t["name"], t["shape"]
        kind = parser.kinds.get(name)
        if kind is None and name != parser.id:
            raise BadRequest(400, f"unknown input '{name}': the inputs are the card's features "
                             f"({', '.join(parser.names)}), or one [n, {len(parser.names)}] tensor of them",
                             f"inputs.{name}")
        if len(shape) > 2 or (len(shape) == 2 and shape[1] != 1):
            raise BadRequest(400, f"shape {shape}: one feature's input is [n] or [n, 1]", f"inputs.{name}.shape")
        _check_type(t, kind, f"inputs.{name}")
        data = _flat(t["data"])
        if len(data) != shape[0]:
            raise BadRequest(400, f"shape {shape} holds {shape[0]} values, data has {len(data)}", f"inputs.{name}")
        columns[name] = data
    return columns


def _matrix(t: Mapping[str, Any], parser: Any) -> dict[str, list[Any]]:
    n, k = t["shape"]
    name = t["name"]
    if parser.categorical:
        raise BadRequest(400, f"one [n, k] tensor serves all-numeric models; send one input per feature "
                         f"({', '.join(parser.names)})", f"inputs.{name}")
    if k != len(parser.names):
        raise BadRequest(400, f"shape [{n}, {k}]: this model takes {len(parser.names)} features "
                         f"({', '.join(parser.names)})", f"inputs.{name}.shape")
    _check_type(t, "numeric", f"inputs.{name}")
    data = _flat(t["data"])
    if len(data) != n * k:
        raise BadRequest(400, f"shape [{n}, {k}] holds {n * k} values, data has {len(data)}", f"inputs.{name}")
    return {f: data[j::k] for j, f in enumerate(parser.names)}


def _check_type(t: Mapping[str, Any], kind: str | None, field: str) -> None:
    datatype = t["datatype"]
    if kind == "numeric" and datatype not in NUMERIC:
        raise BadRequest(400, f"datatype {datatype!r}: a numeric feature takes FP32, FP64 or an integer type",
                         f"{field}.datatype")
    if kind not in (None, "numeric") and datatype != "BYTES":
        raise BadRequest(400, f"datatype {datatype!r}: a categorical feature takes BYTES", f"{field}.datatype")


def _flat(data: list[Any]) -> list[Any]:
    """Row-major values, whether the client nested them by shape or sent them flat."""
    if any(type(v) is list for v in data):
        out: list[Any] = []
        for v in data:
            out.extend(_flat(v) if type(v) is list else [v])
        return out
    return data


def _outputs(answer: Mapping[str, Any], n: int) -> list[dict[str, Any]]:
    predictions = answer["predictions"]
    outputs = [{"name": "predictions", "datatype": _datatype(predictions), "shape": [n], "data": predictions}]
    if "probabilities" in answer:
        probabilities = answer["probabilities"]
        c = len(probabilities[0]) if probabilities else 0
        outputs.append({"name": "probabilities", "datatype": "FP64", "shape": [n, c],
                        "data": [p for row in probabilities for p in row]})
    return outputs
