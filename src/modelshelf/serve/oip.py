"""The Open Inference Protocol (KServe's v2 REST API) beside the native one, over the same
verified model: health, server and model metadata from the card's input schema, and inference.

An inference request carries either one input per feature (each of shape ``[n]`` or
``[n, 1]``, ``BYTES`` for a categorical feature, a numeric type otherwise), or, for a model whose
features are all numeric, one ``[n, k]`` tensor with the features in the card's order.

An input is JSON (``data``) or binary, as the binary tensor data extension has it: the
request's ``Inference-Header-Content-Length`` header gives the length of the JSON at the
body's start; after it come the binary inputs' bytes, in the inputs' order, each input giving
their number in ``parameters.binary_data_size``: little-endian, row-major, a ``BYTES`` element
as a 4-byte length and its UTF-8 text.  A NaN in a binary float is a missing value, as null is
in JSON.  Both kinds become a :class:`Tensor` and go through the native API's checks
(:class:`~modelshelf.serve.payload.Parser`), so both APIs accept and refuse the same data.

An output asked for with ``parameters.binary_data`` (or, unless it says otherwise, every
output of a request with ``parameters.binary_data_output``) is answered in binary too: an
``application/octet-stream`` body, the JSON first, its length in the answer's
``Inference-Header-Content-Length`` header.  ``model_version`` in every answer is the card's
version.

https://kserve.github.io/website/latest/modelserving/data_plane/v2_protocol/
https://github.com/triton-inference-server/server/blob/main/docs/protocol/extension_binary_data.md
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import numpy as np  # loaded at start-up anyway (modelshelf.serve.payload)
import orjson

from modelshelf import __version__
from modelshelf.serve.payload import BadRequest, loads, loads_large

JSON = b"application/json"
OCTETS = b"application/octet-stream"
Reply = tuple[int, bytes, bytes]

NUMERIC = frozenset(("FP16", "FP32", "FP64", "INT8", "INT16", "INT32", "INT64",
                     "UINT8", "UINT16", "UINT32", "UINT64"))
# numpy's little-endian dtype of each fixed-size datatype, as binary tensor data holds it
DTYPES = {"BOOL": "?", "INT8": "i1", "INT16": "<i2", "INT32": "<i4", "INT64": "<i8", "UINT8": "u1",
          "UINT16": "<u2", "UINT32": "<u4", "UINT64": "<u8", "FP16": "<f2", "FP32": "<f4", "FP64": "<f8"}
ITEMSIZE = {datatype: np.dtype(code).itemsize for datatype, code in DTYPES.items()}
HEADER = "Inference-Header-Content-Length"
SIZE = "parameters.binary_data_size"
CHUNK = 1 << 15  # binary values turned into Python objects at a time (about 0.3 ms holding the GIL)
SERVER = orjson.dumps({"name": "modelshelf", "version": __version__, "extensions": ["binary_tensor_data"]})
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
          predict: Callable[[Any], dict[str, Any]], header: bytes = b"") -> tuple[Reply, int]:
    """Answer ``POST …/infer``: the request's tensors as the native API's columns, checked and
    predicted by ``predict`` (a :class:`~modelshelf.serve.payload.Batch` to the native answer).
    ``header`` is the request's ``Inference-Header-Content-Length`` (empty without one).

    Returns:
        The reply and the number of rows scored.
    """
    missing = _unknown(name, version, loaded)
    if missing is not None:
        return missing, 0
    request, binary = _request(body, header, large)
    columns = _columns(_inputs(request["inputs"], binary), loaded.parser)
    batch = loaded.parser.batch({"columns": columns})
    answer = predict(batch)
    outputs, data = _wanted(request, _outputs(answer, batch.n))
    reply: dict[str, Any] = {"model_name": loaded.name, "model_version": loaded.version, "outputs": outputs}
    if isinstance(request.get("id"), str):
        reply["id"] = request["id"]
    head = orjson.dumps(reply)
    if not data:
        return (200, JSON, head), batch.n
    return (200, binary_type(len(head)), b"".join((head, *data))), batch.n


def binary_type(length: int) -> bytes:
    """The content type of an answer with binary outputs, and the header giving the length of
    its JSON (a reply's content type may carry further header lines: see ``app.Reply``)."""
    return b"%s\r\n%s: %d" % (OCTETS, HEADER.lower().encode(), length)


def _request(body: bytes, header: bytes, large: bool) -> tuple[dict[str, Any], memoryview | None]:
    """The request's JSON, and with a ``header`` the binary data after it (else None)."""
    decode = loads_large if large else loads
    binary = None
    if not header:
        try:
            request = decode(body)
        except BadRequest as exc:
            if exc.status != 400:  # JSON, but refused (NaN): nothing to do with binary data
                raise
            raise BadRequest(400, f"{exc.message}; a binary tensor needs the {HEADER} header "
                             "(the length of the JSON before the binary data)") from None
    else:
        n = _header_length(header, len(body))
        try:
            request = decode(body[:n])
        except BadRequest as exc:
            raise BadRequest(exc.status, f"the body's first {n} bytes ({HEADER}) are not the JSON request: "
                             f"{exc.message}") from None
        binary = memoryview(body)[n:]
    if type(request) is not dict or type(request.get("inputs")) is not list or not request["inputs"]:
        raise BadRequest(400, 'send {"inputs": [{"name", "shape", "datatype", "data"}, …]}', "inputs")
    return request, binary


def _header_length(value: bytes, size: int) -> int:
    """The ``Inference-Header-Content-Length`` of a body of ``size`` bytes, checked."""
    text = value.strip()
    if not text.isdigit():  # ASCII digits only: no sign, no space, no "1e3"
        raise BadRequest(400, f"{HEADER} must be a non-negative integer, not {value[:40].decode('latin-1')!r}")
    digits = text.lstrip(b"0") or b"0"
    if len(digits) > len(str(size)) or int(digits) > size:
        raise BadRequest(400, f"{HEADER} is {digits[:40].decode()}, more than the body's {size} bytes")
    return int(digits)


class Tensor(NamedTuple):
    """One input tensor, sent as JSON or binary: its values row-major and flat."""

    name: str
    shape: list[int]
    datatype: str
    data: list[Any]


def _inputs(inputs: list[Any], binary: memoryview | None) -> list[Tensor]:
    """The request's inputs as tensors: JSON ``data``, or ``parameters.binary_data_size`` bytes of
    ``binary`` (the body after its JSON; None without the header), in the inputs' order."""
    tensors: list[Tensor] = []
    offset = 0
    for i, t in enumerate(inputs):
        if type(t) is not dict or not {"name", "shape", "datatype"} <= t.keys():
            raise BadRequest(400, f"each input needs name, shape, datatype and data (or {SIZE})", f"inputs[{i}]")
        name, shape, datatype = t["name"], t["shape"], t["datatype"]
        if type(name) is not str:
            raise BadRequest(400, "name must be a string", f"inputs[{i}].name")
        if type(shape) is not list or not shape or any(type(d) is not int or d < 0 for d in shape):
            raise BadRequest(400, "shape must be a non-empty list of non-negative integers", f"inputs[{i}].shape")
        if type(datatype) is not str:
            raise BadRequest(400, "datatype must be a string", f"inputs[{i}].datatype")
        parameters = t.get("parameters")
        if parameters is not None and type(parameters) is not dict:
            raise BadRequest(400, "parameters must be an object", f"inputs.{name}.parameters")
        size = (parameters or {}).get("binary_data_size")
        if size is None:
            if type(t.get("data")) is not list:
                raise BadRequest(400, f"input '{name}' needs data, a list (or {SIZE}, with the {HEADER} header)",
                                 f"inputs.{name}.data")
            tensors.append(Tensor(name, shape, datatype, _flat(t["data"])))
            continue
        field = f"inputs.{name}.{SIZE}"
        if "data" in t:
            raise BadRequest(400, f"input '{name}' has both data and {SIZE}: send one", field)
        if binary is None:
            raise BadRequest(400, f"input '{name}' is binary ({SIZE}) but the request has no {HEADER} header", field)
        if type(size) is not int or size < 0:
            raise BadRequest(400, f"input '{name}': {SIZE} must be a non-negative integer, not {size!r}", field)
        left = len(binary) - offset
        if size > left:
            raise BadRequest(400, f"input '{name}': {SIZE} is {size}, but only {left} bytes of binary data "
                             "are left for it", field)
        tensors.append(Tensor(name, shape, datatype, _decode(binary[offset:offset + size], name, shape, datatype)))
        offset += size
    if binary is not None and offset != len(binary):
        raise BadRequest(400, f"the inputs' {SIZE} add up to {offset} bytes, but {len(binary)} follow the JSON "
                         f"({HEADER})", "inputs")
    return tensors


def _count(shape: list[int]) -> int | None:
    """How many values ``shape`` holds, or None when more than 2**64 (no product grows past that)."""
    if 0 in shape:
        return 0
    count = 1
    for d in shape:
        count *= d
        if count > 1 << 64:
            return None
    return count


def _decode(raw: memoryview, name: str, shape: list[int], datatype: str) -> list[Any]:
    """Binary tensor data as Python values, row-major (floats' NaN as None, the JSON null)."""
    field = f"inputs.{name}.{SIZE}"
    if datatype == "BYTES":
        return _strings(raw, name, shape)
    code = DTYPES.get(datatype)
    if code is None:
        raise BadRequest(400, f"input '{name}': datatype {datatype!r} has no binary form here (BOOL, INT8-INT64, "
                         "UINT8-UINT64, FP16, FP32, FP64 or BYTES)", f"inputs.{name}.datatype")
    itemsize = ITEMSIZE[datatype]
    count = _count(shape)
    if count is None or count * itemsize != len(raw):
        needs = f"{count * itemsize} bytes" if count is not None else f"more than {len(raw)} bytes"
        raise BadRequest(400, f"input '{name}': shape {shape} of {datatype} is {needs}, {SIZE} is {len(raw)}", field)
    array = np.frombuffer(raw, dtype=code)  # a view of the body: nothing is copied
    values: list[Any] = []
    for lo in range(0, count, CHUNK):
        values.extend(array[lo:lo + CHUNK].tolist())
    if datatype.startswith("FP") and np.isnan(array).any():
        values = [None if v != v else v for v in values]
    return values


def _strings(raw: memoryview, name: str, shape: list[int]) -> list[Any]:
    """A binary ``BYTES`` tensor's elements (a 4-byte little-endian length, then UTF-8 text each)."""
    field = f"inputs.{name}.{SIZE}"
    count = _count(shape)
    values: list[Any] = []
    pos, end = 0, len(raw)
    while pos < end and (count is None or len(values) < count):
        if end - pos < 4:
            raise BadRequest(400, f"input '{name}': element {len(values)} of its BYTES data lacks its 4-byte "
                             "length", field)
        n = int.from_bytes(raw[pos:pos + 4], "little")
        pos += 4
        if n > end - pos:
            raise BadRequest(400, f"input '{name}': element {len(values)} of its BYTES data is {n} bytes long, "
                             f"only {end - pos} are left", field)
        try:
            values.append(str(raw[pos:pos + n], "utf-8"))
        except UnicodeDecodeError:
            raise BadRequest(400, f"input '{name}': element {len(values)} of its BYTES data is not UTF-8 text",
                             field) from None
        pos += n
    if count is None or len(values) != count or pos != end:
        holds = f"{count} values" if count is not None else f"more than the {len(values)} values"
        extra = f" and {end - pos} bytes more" if pos != end else ""
        raise BadRequest(400, f"input '{name}': shape {shape} holds {holds}, its BYTES data has {len(values)}{extra}",
                         field)
    return values


def _columns(inputs: list[Tensor], parser: Any) -> dict[str, list[Any]]:
    """The native API's ``columns`` from the request's input tensors (see the module's docstring)."""
    names = [t.name for t in inputs]
    if len(set(names)) != len(names):
        raise BadRequest(400, "an input name is given twice", "inputs")
    if len(inputs) == 1 and inputs[0].name not in parser.kinds and len(inputs[0].shape) == 2:
        return _matrix(inputs[0], parser)
    columns: dict[str, list[Any]] = {}
    for t in inputs:
        name, shape = t.name, t.shape
        kind = parser.kinds.get(name)
        if kind is None and name != parser.id:
            raise BadRequest(400, f"unknown input '{name}': the inputs are the card's features "
                             f"({', '.join(parser.names)}), or one [n, {len(parser.names)}] tensor of them",
                             f"inputs.{name}")
        if len(shape) > 2 or (len(shape) == 2 and shape[1] != 1):
            raise BadRequest(400, f"shape {shape}: one feature's input is [n] or [n, 1]", f"inputs.{name}.shape")
        _check_type(t, kind, f"inputs.{name}")
        if len(t.data) != shape[0]:
            raise BadRequest(400, f"shape {shape} holds {shape[0]} values, data has {len(t.data)}", f"inputs.{name}")
        columns[name] = t.data
    return columns


def _matrix(t: Tensor, parser: Any) -> dict[str, list[Any]]:
    n, k = t.shape
    name = t.name
    if parser.categorical:
        raise BadRequest(400, f"one [n, k] tensor serves all-numeric models; send one input per feature "
                         f"({', '.join(parser.names)})", f"inputs.{name}")
    if k != len(parser.names):
        raise BadRequest(400, f"shape [{n}, {k}]: this model takes {len(parser.names)} features "
                         f"({', '.join(parser.names)})", f"inputs.{name}.shape")
    _check_type(t, "numeric", f"inputs.{name}")
    data = t.data
    if len(data) != n * k:
        raise BadRequest(400, f"shape [{n}, {k}] holds {n * k} values, data has {len(data)}", f"inputs.{name}")
    return {f: data[j::k] for j, f in enumerate(parser.names)}


def _check_type(t: Tensor, kind: str | None, field: str) -> None:
    datatype = t.datatype
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


def _wanted(request: Mapping[str, Any], outputs: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[bytes]]:
    """The outputs the request asks for (all without ``outputs``), and the binary data of those
    asked for in binary, which give its length instead of their data."""
    parameters = request.get("parameters")
    if parameters is not None and type(parameters) is not dict:
        raise BadRequest(400, "parameters must be an object", "parameters")
    default = (parameters or {}).get("binary_data_output", False)
    if type(default) is not bool:
        raise BadRequest(400, "binary_data_output must be true or false", "parameters.binary_data_output")
    names = {o["name"] for o in outputs}
    wanted = request.get("outputs")
    if wanted is None:
        binary = dict.fromkeys(names, default)
    else:
        if type(wanted) is not list or any(type(o) is not dict or type(o.get("name")) is not str for o in wanted):
            raise BadRequest(400, 'outputs must be a list of {"name": …}', "outputs")
        unknown = [o["name"] for o in wanted if o["name"] not in names]
        if unknown:
            raise BadRequest(400, f"unknown output '{unknown[0]}': this model gives {', '.join(sorted(names))}",
                             "outputs")
        binary = {}
        for o in wanted:
            given = o.get("parameters")
            if given is not None and type(given) is not dict:
                raise BadRequest(400, "parameters must be an object", f"outputs.{o['name']}.parameters")
            flag = (given or {}).get("binary_data", default)  # an output's own choice overrides the request's
            if type(flag) is not bool:
                raise BadRequest(400, "binary_data must be true or false",
                                 f"outputs.{o['name']}.parameters.binary_data")
            binary[o["name"]] = flag
    kept: list[dict[str, Any]] = []
    data: list[bytes] = []
    for o in outputs:
        if o["name"] not in binary:
            continue
        if binary[o["name"]]:
            raw = _encode(o["data"], o["datatype"])
            data.append(raw)
            o = {k: v for k, v in o.items() if k != "data"} | {"parameters": {"binary_data_size": len(raw)}}
        kept.append(o)
    return kept, data


def _encode(values: list[Any], datatype: str) -> bytes:
    """An output's values as binary tensor data (``BYTES``: each one's length, then its UTF-8
    text; a label that is not a string, as JSON)."""
    if datatype == "BYTES":
        texts = [v.encode() if type(v) is str else orjson.dumps(v) for v in values]
        return b"".join(b"%s%s" % (len(t).to_bytes(4, "little"), t) for t in texts)
    return np.asarray(values, dtype=DTYPES[datatype]).tobytes()
