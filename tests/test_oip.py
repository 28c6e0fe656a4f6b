"""The Open Inference Protocol (KServe v2 REST) on a real ``shelf serve``, spoken to by
``tritonclient``'s HTTP client unchanged: health, server and model metadata, inference that
matches the native ``/predict``, and errors that name what is wrong."""

from __future__ import annotations

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
    binary = triton.InferInput("input-0", list(frame.shape), "FP64")
    binary.set_data_from_numpy(frame.to_numpy(dtype=np.float64), binary_data=True)
    assert "binary_data=False" in _refusal(client, "model", [binary])
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


def test_a_mixed_schema_takes_one_input_per_feature_checked_as_the_native_api_does() -> None:
    from modelshelf.serve import oip
    from modelshelf.serve.payload import BadRequest, Parser

    parser = Parser({"features": [{"name": "age", "kind": "numeric"}, {"name": "plan", "kind": "categorical"}]}, 100)
    cols = oip._columns([{"name": "age", "shape": [2, 1], "datatype": "INT64", "data": [[30], [41]]},
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
    }
    for message, inputs in refusals.items():
        with pytest.raises(BadRequest) as exc:
            oip._columns(inputs, parser)
        assert message in exc.value.message, (message, exc.value.message)
    with pytest.raises(BadRequest) as exc:  # the native checks still apply: a string is not a number
        parser.batch({"columns": oip._columns([{"name": "age", "shape": [1], "datatype": "FP64", "data": ["x"]},
                                               {"name": "plan", "shape": [1], "datatype": "BYTES", "data": ["a"]}],
                                              parser)})
    assert exc.value.field == "columns.age[0]"
