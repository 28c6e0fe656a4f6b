"""The Open Inference Protocol (KServe v2 REST) on a real ``shelf serve``, spoken to by
``tritonclient``'s HTTP client unchanged: health, server and model metadata, inference that
matches the native ``/predict`` with JSON and binary tensors (the binary tensor data
extension, tritonclient's default), and errors that name what is wrong."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from conftest import Project
from test_serve import (  # noqa: F401 - fixtures
    Server,
    held_out,
    module_project,
    rows_body,
    server,
    template_v1,
)

pytestmark = pytest.mark.slow


@pytest.fixture
def client(server: Server) -> Any:
    c = triton.InferenceServerClient(f"127.0.0.1:{server.port}", connection_timeout=30, network_timeout=30)
    yield c
    c.close()


def _card(p: Project) -> dict[str, Any]:
    return p.json("models/card.json")  # type: ignore[no-any-return]


def test_health_and_metadata_come_from_the_card(client: Any, module_project: tuple[Project, dict[str, str]]) -> None:
    p, _ = module_project
    card = _card(p)
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("model") and client.is_model_ready("model", "1.0.0")
    assert not client.is_model_ready("other")
    assert client.get_server_metadata()["name"] == "modelshelf"
    meta = client.get_model_metadata("model")
    assert meta["versions"] == [card["version"]] == ["1.0.0"]
    assert [i["name"] for i in meta["inputs"]] == [f["name"] for f in card["input_schema"]["features"]]
    assert [o["name"] for o in meta["outputs"]] == ["predictions", "probabilities"]
    assert client.get_model_metadata("model", "v1.0.0") == meta


def _native(server: Server, frame: Any) -> dict[str, Any]:
    r = server.post("/predict", rows_body(frame))
    assert r.status == 200, r
    return r.json()  # type: ignore[no-any-return]


def test_inference_as_one_tensor_matches_the_native_api(client: Any, server: Server,
                                                        module_project: tuple[Project, dict[str, str]]) -> None:
    p, _ = module_project
    frame = held_out(p.root).head(25)
    tensor = triton.InferInput("input-0", list(frame.shape), "FP64")
    tensor.set_data_from_numpy(frame.to_numpy(dtype=np.float64), binary_data=False)
    outputs = [triton.InferRequestedOutput(n, binary_data=False) for n in ("predictions", "probabilities")]
    result = client.infer("model", [tensor], outputs=outputs, request_id="r-1")
    native = _native(server, frame)
    assert result.as_numpy("predictions").tolist() == native["predictions"]
    assert result.as_numpy("probabilities").tolist() == native["probabilities"]
    response = result.get_response()
    assert (response["model_name"], response["model_version"], response["id"]) == ("model", "1.0.0", "r-1")


def test_inference_one_input_per_feature_and_a_version_path(client: Any, server: Server,
                                                            module_project: tuple[Project, dict[str, str]]) -> None:
    p, _ = module_project
    frame = held_out(p.root).head(7)
    inputs = []
    for name in frame.columns:
        t = triton.InferInput(name, [len(frame)], "FP32")
        t.set_data_from_numpy(frame[name].to_numpy(dtype=np.float32), binary_data=False)
        inputs.append(t)
    result = client.infer("model", inputs, model_version="1.0.0",
                          outputs=[triton.InferRequestedOutput("predictions", binary_data=False)])
    native = server.post("/predict", {"rows": [{k: float(np.float32(v)) for k, v in rec.items()}
                                               for rec in frame.to_dict("records")]}).json()
    assert result.as_numpy("predictions").tolist() == native["predictions"]
    assert result.as_numpy("probabilities") is None  # only what was asked for
    assert result.get_response()["model_version"] == "1.0.0"


def _refusal(client: Any, *args: Any, **kw: Any) -> str:
    with pytest.raises(InferenceServerException) as exc:
        client.infer(*args, **kw)
    return str(exc.value)


def test_refusals_name_what_is_wrong(client: Any, server: Server, module_project: tuple[Project, dict[str, str]]) -> None:
    p, _ = module_project
    frame = held_out(p.root).head(3)
    ok = triton.InferInput("input-0", list(frame.shape), "FP64")
    ok.set_data_from_numpy(frame.to_numpy(dtype=np.float64), binary_data=False)
    assert "unknown model 'other'" in _refusal(client, "other", [ok])
    assert "version '9.9.9'" in _refusal(client, "model", [ok], model_version="9.9.9")
    narrow = triton.InferInput("input-0", [3, 2], "FP64")
    narrow.set_data_from_numpy(frame.to_numpy(dtype=np.float64)[:, :2], binary_data=False)
    assert f"takes {frame.shape[1]} features" in _refusal(client, "model", [narrow])
    text = triton.InferInput(frame.columns[0], [3], "BYTES")
    text.set_data_from_numpy(np.array(["a", "b", "c"], dtype=object), binary_data=False)
    assert "a numeric feature takes" in _refusal(client, "model", [text])

    r = server.get("/v2/models/model/infer")
    assert r.status == 405 and r.headers.get("allow") == "POST", r
    assert server.get("/v2x").status == 404 and server.get("/v2/models/model/explain").status == 404
    missing = server.post("/v2/models/model/infer", {"inputs": [{"name": "nope", "shape": [1], "datatype": "FP64",
                                                                 "data": [1.0]}]})
    assert missing.status == 400 and "unknown input 'nope'" in missing.json()["error"], missing
    metrics = server.get("/metrics").body.decode()
    assert 'path="/v2/infer",status="200"' in metrics and 'path="/v2/infer",status="400"' in metrics


def _columns(inputs: list[dict[str, Any]], parser: Any, binary: bytes | None = None) -> dict[str, list[Any]]:
    """What ``oip.infer`` makes of these inputs (and the binary data after the JSON, if any)."""
    from modelshelf.serve import oip

    return oip._columns(oip._inputs(inputs, None if binary is None else memoryview(binary)), parser)


def test_a_mixed_schema_takes_one_input_per_feature_checked_as_the_native_api_does() -> None:
    from modelshelf.serve.payload import BadRequest, Parser

    parser = Parser({"features": [{"name": "age", "kind": "numeric"}, {"name": "plan", "kind": "categorical"}]}, 100)
    cols = _columns([{"name": "age", "shape": [2, 1], "datatype": "INT64", "data": [[30], [41]]},
                     {"name": "plan", "shape": [2], "datatype": "BYTES", "data": ["basic", None]}], parser)
    assert cols == {"age": [30, 41], "plan": ["basic", None]}
    batch = parser.batch({"columns": cols})
    assert batch.n == 2 and batch.categorical == {"plan": ["basic", None]}
    refusals = {
        "a categorical feature takes BYTES": [{"name": "age", "shape": [1], "datatype": "FP64", "data": [1.0]},
                                              {"name": "plan", "shape": [1], "datatype": "FP64", "data": [1.0]}],
        "one [n, k] tensor serves all-numeric models": [{"name": "x", "shape": [1, 2], "datatype": "FP64",
                                                         "data": [1.0, 2.0]}],
        "holds 2 values, data has 1": [{"name": "age", "shape": [2], "datatype": "FP64", "data": [1.0]}],
        "given twice": [{"name": "age", "shape": [1], "datatype": "FP64", "data": [1.0]}] * 2,
        "name must be a string": [{"name": ["age"], "shape": [1], "datatype": "FP64", "data": [1.0]}],  # was a 500
        "datatype must be a string": [{"name": "age", "shape": [1], "datatype": ["FP64"], "data": [1.0]}],
    }
    for message, inputs in refusals.items():
        with pytest.raises(BadRequest) as exc:
            _columns(inputs, parser)
        assert message in exc.value.message, (message, exc.value.message)
    with pytest.raises(BadRequest) as exc:  # the native checks still apply: a string is not a number
        parser.batch({"columns": _columns([{"name": "age", "shape": [1], "datatype": "FP64", "data": ["x"]},
                                           {"name": "plan", "shape": [1], "datatype": "BYTES", "data": ["a"]}],
                                          parser)})
    assert exc.value.field == "columns.age[0]"


# --- the binary tensor data extension -----------------------------------------------------------


def test_tritonclient_defaults_binary_tensors_in_and_out_match_the_native_api(
        client: Any, server: Server, module_project: tuple[Project, dict[str, str]]) -> None:
    """tritonclient sends binary tensors and asks for binary outputs unless told otherwise."""
    p, _ = module_project
    assert "binary_tensor_data" in client.get_server_metadata()["extensions"]
    frame = held_out(p.root).head(25)
    native = _native(server, frame)
    tensor = triton.InferInput("input-0", list(frame.shape), "FP64")
    tensor.set_data_from_numpy(frame.to_numpy(dtype=np.float64))  # binary_data=True
    asked = client.infer("model", [tensor], outputs=[triton.InferRequestedOutput("predictions"),
                                                     triton.InferRequestedOutput("probabilities")], request_id="b-1")
    everything = client.infer("model", [tensor])  # no outputs named: the request's binary_data_output
    for result in (asked, everything):
        assert result.as_numpy("predictions").tolist() == native["predictions"]
        assert result.as_numpy("probabilities").tolist() == native["probabilities"]
        for name, size in (("predictions", 8 * 25), ("probabilities", 8 * 25 * 2)):
            out = result.get_output(name)
            assert "data" not in out and out["parameters"] == {"binary_data_size": size}, out
    response = asked.get_response()
    assert (response["model_name"], response["model_version"], response["id"]) == ("model", "1.0.0", "b-1")
    assert [o["datatype"] for o in response["outputs"]] == ["INT64", "FP64"]

    inputs = []  # one FP32 input per feature, binary, on a version path
    for name in frame.columns:
        t = triton.InferInput(name, [len(frame), 1], "FP32")
        t.set_data_from_numpy(frame[[name]].to_numpy(dtype=np.float32))
        inputs.append(t)
    result = client.infer("model", inputs, model_version="1.0.0")
    as_float32 = server.post("/predict", {"rows": [{k: float(np.float32(v)) for k, v in rec.items()}
                                                   for rec in frame.to_dict("records")]}).json()
    assert result.as_numpy("predictions").tolist() == as_float32["predictions"]
    assert result.as_numpy("probabilities").tolist() == as_float32["probabilities"]


def test_a_large_binary_batch_is_answered_off_the_loop_as_the_native_api_answers_it(
        client: Any, server: Server, module_project: tuple[Project, dict[str, str]]) -> None:
    import pandas as pd

    p, _ = module_project
    test = held_out(p.root)
    frame = pd.concat([test] * (1 + 70_000 // (8 * test.size)), ignore_index=True)
    assert 8 * frame.size > 64 * 1024  # past App's INLINE_BODY: decoded and predicted in a worker thread
    tensor = triton.InferInput("input-0", list(frame.shape), "FP64")
    tensor.set_data_from_numpy(frame.to_numpy(dtype=np.float64))
    result = client.infer("model", [tensor])
    native = _native(server, frame)
    assert result.as_numpy("predictions").tolist() == native["predictions"]
    assert result.as_numpy("probabilities").tolist() == native["probabilities"]


def test_binary_and_json_inputs_mix_and_one_output_comes_in_binary(
        client: Any, server: Server, module_project: tuple[Project, dict[str, str]]) -> None:
    """Half the features binary, half JSON; the predictions in binary, the probabilities not."""
    p, _ = module_project
    frame = held_out(p.root).head(9)
    native = _native(server, frame)
    inputs = []
    for i, name in enumerate(frame.columns):
        t = triton.InferInput(name, [len(frame)], "FP64")
        t.set_data_from_numpy(frame[name].to_numpy(dtype=np.float64), binary_data=i % 2 == 0)
        inputs.append(t)
    outputs = [triton.InferRequestedOutput("predictions"), triton.InferRequestedOutput("probabilities",
                                                                                        binary_data=False)]
    result = client.infer("model", inputs, outputs=outputs)
    assert result.as_numpy("predictions").tolist() == native["predictions"]
    assert result.as_numpy("probabilities").tolist() == native["probabilities"]
    assert result.get_output("predictions")["parameters"] == {"binary_data_size": 8 * 9}
    assert "parameters" not in result.get_output("probabilities")
    assert result.get_output("probabilities")["data"] == [v for row in native["probabilities"] for v in row]

    # the same, as bytes on the wire: the JSON first, its length in a header, then the tensor
    body, headers = _binary(inputs=[{"name": "x", "shape": list(frame.shape), "datatype": "FP64"}],
                            data=[frame.to_numpy(dtype="<f8").tobytes()],
                            outputs=[{"name": "probabilities", "parameters": {"binary_data": True}}])
    r = _post(server.port, body, headers)
    assert r.status == 200 and r.headers["content-type"] == "application/octet-stream", r
    n = int(r.headers["inference-header-content-length"])
    head = json.loads(r.body[:n])
    assert head["outputs"] == [{"name": "probabilities", "datatype": "FP64", "shape": [9, 2],
                                "parameters": {"binary_data_size": 8 * 9 * 2}}]
    assert np.frombuffer(r.body[n:], "<f8").reshape(9, 2).tolist() == native["probabilities"]
    # and JSON outputs only (binary_data_output false, or not given) are a plain JSON answer
    body, headers = _binary(inputs=[{"name": "x", "shape": list(frame.shape), "datatype": "FP64"}],
                            data=[frame.to_numpy(dtype="<f8").tobytes()], parameters={"binary_data_output": False})
    r = _post(server.port, body, headers)
    assert r.status == 200 and r.headers["content-type"] == "application/json", r
    assert "inference-header-content-length" not in r.headers
    assert r.json()["outputs"][0]["data"] == native["predictions"]


def _binary(inputs: list[dict[str, Any]], data: list[bytes], header: str | None = "auto",
            **request: Any) -> tuple[bytes, list[tuple[str, str]]]:
    """A binary inference body: the JSON (the first inputs given ``binary_data_size`` from
    ``data`` unless they have parameters), then ``data``; and its headers, with
    Inference-Header-Content-Length ``header`` (None: without it; "auto": the JSON's length)."""
    sized = [t if "parameters" in t or i >= len(data) else {**t, "parameters": {"binary_data_size": len(data[i])}}
             for i, t in enumerate(inputs)]
    head = json.dumps({"inputs": sized, **request}).encode()
    headers = [("Content-Type", "application/octet-stream")]
    if header is not None:
        headers.append(("Inference-Header-Content-Length", str(len(head)) if header == "auto" else header))
    return head + b"".join(data), headers


def _post(port: int, body: bytes, headers: list[tuple[str, str]]) -> Any:
    """POST ``body`` to the v2 inference route with exactly these headers (a name may repeat)."""
    import http.client

    from test_serve import Reply

    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        c.putrequest("POST", "/v2/models/model/infer")
        c.putheader("Content-Length", str(len(body)))
        for name, value in headers:
            c.putheader(name, value)
        c.endheaders(body)
        resp = c.getresponse()
        return Reply(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read())
    finally:
        c.close()


def test_malformed_binary_requests_are_400s_naming_the_problem(
        server: Server, module_project: tuple[Project, dict[str, str]]) -> None:
    p, _ = module_project
    frame = held_out(p.root).head(2)
    k = frame.shape[1]
    x = frame.to_numpy(dtype="<f8").tobytes()
    one = {"name": "x", "shape": [2, k], "datatype": "FP64"}
    first, second = frame.columns[:2]
    feature = {"name": first, "shape": [2], "datatype": "FP64"}
    size = "parameters.binary_data_size"
    body, headers = _binary([one], [x])
    length = len(body) - len(x)
    cases: list[tuple[str, tuple[bytes, list[tuple[str, str]]], str]] = [
        ("a header past the body", _binary([one], [x], header=str(len(body) + 1)),
         f"Inference-Header-Content-Length is {len(body) + 1}, more than the body's {len(body)} bytes"),
        ("a huge header", _binary([one], [x], header="9" * 400), f"more than the body's {len(body)} bytes"),
        ("a header that is not a number", _binary([one], [x], header="12abc"),
         "Inference-Header-Content-Length must be a non-negative integer, not '12abc'"),
        ("a negative header", _binary([one], [x], header="-5"), "must be a non-negative integer, not '-5'"),
        ("a header given twice", (body, [*headers, headers[-1]]), f"integer, not '{length}, {length}'"),
        ("a header short of the JSON", _binary([one], [x], header="10"),
         "the body's first 10 bytes (Inference-Header-Content-Length) are not the JSON request"),
        ("no header", _binary([one], [x], header=None), "needs the Inference-Header-Content-Length header"),
        ("a binary input without the header", (body[:length], []),
         f"input 'x' is binary ({size}) but the request has no Inference-Header-Content-Length header"),
        ("a size short of the shape", _binary([{**one, "parameters": {"binary_data_size": len(x) - 8}}], [x[:-8]]),
         f"input 'x': shape [2, {k}] of FP64 is {len(x)} bytes, {size} is {len(x) - 8}"),
        ("a size past the body", _binary([{**one, "parameters": {"binary_data_size": len(x) + 1}}], [x]),
         f"input 'x': {size} is {len(x) + 1}, but only {len(x)} bytes of binary data are left for it"),
        ("a huge size", _binary([{**one, "parameters": {"binary_data_size": 2 ** 63 - 1}}], [x]),
         f"{size} is {2 ** 63 - 1}, but only {len(x)} bytes"),
        ("a size past 64 bits", _binary([{**one, "parameters": {"binary_data_size": 10 ** 30}}], [x]),
         f"{size} must be a non-negative integer"),
        ("a negative size", _binary([{**one, "parameters": {"binary_data_size": -8}}], [x]),
         f"input 'x': {size} must be a non-negative integer, not -8"),
        ("a size that is not a number", _binary([{**one, "parameters": {"binary_data_size": "8"}}], [x]),
         "must be a non-negative integer, not '8'"),
        ("bytes left over", _binary([one], [x, b"\0" * 8]),
         f"the inputs' {size} add up to {len(x)} bytes, but {len(x) + 8} follow the JSON"),
        ("sizes past the data", _binary([{**feature, "parameters": {"binary_data_size": 16}},
                                         {**feature, "name": second, "parameters": {"binary_data_size": 16}}],
                                        [x[:16], x[16:24]]),
         f"input '{second}': {size} is 16, but only 8 bytes of binary data are left for it"),
        ("a huge shape", _binary([{**one, "shape": [2 ** 62, 2 ** 62]}], [x]),
         f"shape [{2 ** 62}, {2 ** 62}] of FP64 is more than {len(x)} bytes"),
        ("data and binary data", _binary([{**one, "data": [1.0]}], [x]), f"input 'x' has both data and {size}"),
        ("a datatype with no binary form", _binary([{**one, "datatype": "BF16"}], [x]),
         "input 'x': datatype 'BF16' has no binary form"),
    ]
    for what, (body, headers), message in cases:
        r = _post(server.port, body, headers)
        assert r.status == 400, (what, r)
        assert message in r.json()["error"], (what, message, r.json())
    # binary values pass the native checks too: a BOOL is not a number, infinity is out of range
    r = _post(server.port, *_binary([{"name": first, "shape": [2], "datatype": "BOOL"}], [b"\1\0"]))
    assert r.status == 400 and "a numeric feature takes FP32, FP64 or an integer type" in r.json()["error"], r
    rest = [{"name": n, "shape": [2], "datatype": "FP64", "data": frame[n].tolist()} for n in frame.columns[1:]]
    r = _post(server.port, *_binary([feature, *rest], [np.array([1.0, np.inf], "<f8").tobytes()]))
    assert r.status == 422 and r.json() == {"error": "number out of range", "field": f"columns.{first}[1]"}, r
    # and a NaN in a binary float is a missing value, as JSON's null is
    r = _post(server.port, *_binary([feature, *rest], [np.array([np.nan, frame[first].iloc[1]], "<f8").tobytes()]))
    nulls = {"columns": {n: [None if n == first and i == 0 else float(v) for i, v in enumerate(frame[n])]
                         for n in frame.columns}}
    assert r.status == 200 and r.json()["outputs"][0]["data"] == server.post("/predict", nulls).json()["predictions"]
    metrics = server.get("/metrics").body.decode()
    assert 'path="/v2/infer",status="400"' in metrics and 'path="/v2/infer",status="422"' in metrics


def test_binary_bytes_tensors_are_text_for_a_categorical_feature() -> None:
    """A BYTES input in binary: each element a 4-byte little-endian length, then UTF-8 text;
    the values become the same columns as the same tensors in JSON."""
    from modelshelf.serve.payload import BadRequest, Parser

    def strings(*values: bytes) -> bytes:
        return b"".join(len(v).to_bytes(4, "little") + v for v in values)

    parser = Parser({"features": [{"name": "age", "kind": "numeric"}, {"name": "plan", "kind": "categorical"}]}, 100)
    plans = strings(b"basic", "pr\u00e9mium".encode())
    ages = np.array([30, 41], "<i8").tobytes()
    binary = [{"name": "age", "shape": [2, 1], "datatype": "INT64", "parameters": {"binary_data_size": 16}},
              {"name": "plan", "shape": [2], "datatype": "BYTES", "parameters": {"binary_data_size": len(plans)}}]
    cols = _columns(binary, parser, ages + plans)
    assert cols == _columns([{"name": "age", "shape": [2, 1], "datatype": "INT64", "data": [[30], [41]]},
                             {"name": "plan", "shape": [2], "datatype": "BYTES", "data": ["basic", "pr\u00e9mium"]}],
                            parser) == {"age": [30, 41], "plan": ["basic", "pr\u00e9mium"]}
    assert parser.batch({"columns": cols}).categorical == {"plan": ["basic", "pr\u00e9mium"]}
    age = {"name": "age", "shape": [1], "datatype": "FP16", "data": [2.5]}
    refusals = {
        "element 1 of its BYTES data is 9 bytes long, only 2 are left": strings(b"a") + b"\x09\0\0\0ab",
        "element 1 of its BYTES data lacks its 4-byte length": strings(b"a") + b"\1\0",
        "element 0 of its BYTES data is not UTF-8 text": strings(b"\xff\xfe"),
        "shape [2] holds 2 values, its BYTES data has 1": strings(b"a"),
        "shape [2] holds 2 values, its BYTES data has 2 and 3 bytes more": strings(b"a", b"b") + b"xyz",
        "shape [2] holds 2 values, its BYTES data has 2 and 5 bytes more": strings(b"a", b"b", b"c"),
    }
    for message, data in refusals.items():
        with pytest.raises(BadRequest) as exc:
            _columns([age, {"name": "plan", "shape": [2], "datatype": "BYTES",
                            "parameters": {"binary_data_size": len(data)}}], parser, data)
        assert message in exc.value.message and exc.value.field == "inputs.plan.parameters.binary_data_size", \
            (message, exc.value.message)
    half = {"name": "age", "shape": [1], "datatype": "FP16", "parameters": {"binary_data_size": 2}}
    assert _columns([half, {"name": "plan", "shape": [1], "datatype": "BYTES", "data": ["a"]}], parser,
                    np.array([2.5], "<f2").tobytes()) == {"age": [2.5], "plan": ["a"]}


def test_string_labels_come_as_binary_bytes_tensors() -> None:
    """A classifier's string labels in binary are BYTES (a 4-byte length, then UTF-8 each), as
    tritonclient reads them; integer labels INT64, probabilities FP64."""
    from modelshelf.serve import oip

    for labels, datatype in ((["yes", "n\u00f6"], "BYTES"), ([3, 7], "INT64"), ([True, False], "BOOL")):
        outputs = oip._outputs({"predictions": labels, "probabilities": [[0.25, 0.75], [0.5, 0.5]]}, 2)
        kept, data = oip._wanted({"parameters": {"binary_data_output": True}}, outputs)
        head = json.dumps({"outputs": kept}).encode()
        result = triton.InferResult.from_response_body(head + b"".join(data), header_length=len(head))
        assert result.get_output("predictions")["datatype"] == datatype
        got = result.as_numpy("predictions").tolist()
        assert (got if datatype != "BYTES" else [b.decode() for b in got]) == labels
        assert result.as_numpy("probabilities").reshape(2, 2).tolist() == [[0.25, 0.75], [0.5, 0.5]]
        # an output's own binary_data: false overrides the request's binary_data_output
        kept, data = oip._wanted({"parameters": {"binary_data_output": True}, "outputs": [
            {"name": "predictions", "parameters": {"binary_data": False}}, {"name": "probabilities"}]}, outputs)
        assert kept[0]["data"] == labels and kept[1]["parameters"] == {"binary_data_size": 32} and len(data) == 1


def test_the_asgi_app_speaks_the_binary_extension_too(module_project: tuple[Project, dict[str, str]]) -> None:
    import asyncio

    from modelshelf.serve.server import build

    p, _ = module_project
    frame = held_out(p.root).head(3)
    app = build(str(p.root / "models"), poll=0)
    body, headers = _binary([{"name": "x", "shape": list(frame.shape), "datatype": "FP64"}],
                            [frame.to_numpy(dtype="<f8").tobytes()], parameters={"binary_data_output": True})
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/v2/models/model/infer",
             "headers": [(k.lower().encode(), v.encode()) for k, v in headers]}
    asyncio.run(app(scope, receive, send))
    answer = dict(sent[0]["headers"])
    data = b"".join(m.get("body", b"") for m in sent[1:])
    assert sent[0]["status"] == 200 and answer[b"content-type"] == b"application/octet-stream", (sent[0], data)
    n = int(answer[b"inference-header-content-length"])
    result = triton.InferResult.from_response_body(data, header_length=n)
    assert len(result.as_numpy("predictions")) == 3 and result.as_numpy("probabilities").shape == (3, 2)
