"""Tests of labelreg.serving: REST JSON and gRPC protos round-trip, errors, and real transports
against small stand-in servers (an HTTP server and an in-process gRPC PredictionService)."""

from __future__ import annotations

import json
import threading
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from labelreg import serving

SHAPES = {2: (7, 9), 3: (5, 6, 4)}


def pair(rng: np.random.Generator, ndim: int, batch: int = 2) -> dict[str, np.ndarray]:
    moving_shape = tuple(s + 2 for s in SHAPES[ndim])
    return {
        "moving_image": rng.normal(size=(batch, *moving_shape, 1)).astype(np.float32),
        "fixed_image": (rng.random((batch, *SHAPES[ndim], 1)) * 255).astype(np.float32),
    }


# --------------------------------------------------------------------------------------------
# REST
# --------------------------------------------------------------------------------------------


def test_rest_url():
    assert serving.rest_url() == "http://localhost:8501/v1/models/labelreg:predict"
    assert (serving.rest_url("gpu-box", "prostate", port=9000, version=3)
            == "http://gpu-box:9000/v1/models/prostate/versions/3:predict")


@pytest.mark.parametrize("ndim", [2, 3])
def test_rest_request_round_trips_exactly(ndim, rng):
    inputs = pair(rng, ndim)
    body = serving.encode_rest_request(inputs)
    data = json.loads(body)
    assert data["signature_name"] == "serving_default"
    assert sorted(data["inputs"]) == ["fixed_image", "moving_image"]
    signature, arrays = serving.decode_rest_request(body)
    assert signature == "serving_default"
    for name, array in inputs.items():
        assert arrays[name].dtype == np.float32
        np.testing.assert_array_equal(arrays[name], array)


def test_rest_request_with_labels_and_other_dtypes(rng):
    labels = rng.integers(0, 2, size=(1, 5, 6, 4, 3)).astype(np.uint8)
    ddf = rng.normal(size=(1, 4, 5, 3, 3))
    body = serving.encode_rest_request({"moving_label": labels, "ddf": ddf}, "warp_labels")
    signature, arrays = serving.decode_rest_request(body)
    assert signature == "warp_labels"
    np.testing.assert_array_equal(arrays["moving_label"], labels.astype(np.float32))
    np.testing.assert_array_equal(arrays["ddf"], ddf.astype(np.float32))


def test_rest_request_rejects_bad_inputs(rng):
    inputs = pair(rng, 2)
    with pytest.raises(ValueError, match=r"takes the inputs \['moving_image', 'fixed_image'\]"):
        serving.rest_request({"moving_image": inputs["moving_image"]})
    bad = dict(inputs, fixed_image=np.full((2, 7, 9, 1), np.nan, np.float32))
    with pytest.raises(ValueError, match=r"'fixed_image' contains 126 NaN or Inf value\(s\) of 126"):
        serving.rest_request(bad)
    with pytest.raises(ValueError, match="'moving_image' must be a numeric array"):
        serving.rest_request(dict(inputs, moving_image=[["a"]]))
    with pytest.raises(ValueError, match="non-empty mapping"):
        serving.rest_request({})


@pytest.mark.parametrize("ndim", [2, 3])
def test_rest_response_round_trips(ndim, rng):
    outputs = {"ddf": rng.normal(size=(1, *SHAPES[ndim], ndim)).astype(np.float32),
               "warped_moving_image": rng.random((1, *SHAPES[ndim], 1)).astype(np.float32)}
    decoded = serving.decode_rest_response(serving.encode_rest_response(outputs))
    assert sorted(decoded) == sorted(outputs)
    for name in outputs:
        np.testing.assert_array_equal(decoded[name], outputs[name])


def test_rest_response_single_output_and_errors():
    decoded = serving.decode_rest_response('{"outputs": [[1.5, 2.0]]}', ("warped_label",))
    np.testing.assert_array_equal(decoded["warped_label"], np.array([[1.5, 2.0]], np.float32))
    with pytest.raises(serving.ServingError, match="Shape of tensor moving_image"):
        serving.decode_rest_response({"error": "Shape of tensor moving_image [1,3] is not ..."})
    with pytest.raises(ValueError, match="neither 'outputs' nor 'error'"):
        serving.decode_rest_response({"result": 1})
    with pytest.raises(ValueError, match="not valid JSON"):
        serving.decode_rest_response(b"<html>")


class _StandIn(BaseHTTPRequestHandler):
    """Answers like TF-Serving: echoes the fixed image as 'warped_moving_image', a DDF of the
    fixed grid filled with the moving image's mean, and TF-Serving's error for a bad request."""

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        body = self.rfile.read(int(self.headers["Content-Length"]))
        assert self.path == "/v1/models/tiny/versions/2:predict"
        try:
            signature, arrays = serving.decode_rest_request(body)
            fixed = arrays["fixed_image"]
            n = fixed.ndim - 2
            ddf = np.full(fixed.shape[:-1] + (n,), arrays["moving_image"].mean(), np.float32)
            answer, status = serving.encode_rest_response(
                {"ddf": ddf, "warped_moving_image": fixed}), 200
        except KeyError as err:
            answer, status = json.dumps({"error": f"input {err} missing"}).encode(), 400
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def rest_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _StandIn)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()
    thread.join()


def test_predict_rest_against_a_stand_in_server(rest_server, rng):
    url = serving.rest_url("127.0.0.1", "tiny", port=rest_server, version=2)
    inputs = pair(rng, 3, batch=1)
    out = serving.predict_rest(url, inputs, timeout=10)
    np.testing.assert_array_equal(out["warped_moving_image"], inputs["fixed_image"])
    assert out["ddf"].shape == (1, *SHAPES[3], 3)
    np.testing.assert_allclose(out["ddf"], inputs["moving_image"].mean(), rtol=1e-6)
    # A server-side error comes back with TF-Serving's message.
    with pytest.raises(serving.ServingError, match="HTTP 400: input 'moving_image' missing"):
        serving.predict_rest(url, {"fixed_image": inputs["fixed_image"]}, "custom", timeout=10)


def test_predict_rest_unreachable_server():
    with pytest.raises(serving.ServingError, match="cannot reach TF-Serving"):
        serving.predict_rest("http://127.0.0.1:9/v1/models/x:predict",
                             {"moving_image": [[1.0]], "fixed_image": [[1.0]]}, timeout=2)


# --------------------------------------------------------------------------------------------
# gRPC
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ndim", [2, 3])
def test_grpc_request_round_trips_through_bytes(ndim, rng):
    from tensorflow_serving.apis import predict_pb2

    inputs = pair(rng, ndim)
    inputs["moving_label"] = rng.integers(0, 2, size=inputs["moving_image"].shape[:-1] + (4,))
    request = serving.grpc_request(inputs, model="prostate", signature_name="register_with_labels",
                                   version=5)
    wire = request.SerializeToString()
    parsed = predict_pb2.PredictRequest.FromString(wire)
    model, signature, version, arrays = serving.decode_grpc_request(parsed)
    assert (model, signature, version) == ("prostate", "register_with_labels", 5)
    for name, array in inputs.items():
        assert arrays[name].dtype == np.float32
        np.testing.assert_array_equal(arrays[name], np.asarray(array, np.float32))
    # Packed float32 bytes: about 4 bytes a voxel, unlike JSON.
    voxels = sum(np.asarray(a).size for a in inputs.values())
    assert len(wire) < 4 * voxels + 400


def test_grpc_request_without_version_and_response_round_trip(rng):
    from tensorflow_serving.apis import predict_pb2

    request = serving.grpc_request(pair(rng, 2))
    model, signature, version, _ = serving.decode_grpc_request(request)
    assert (model, signature, version) == ("labelreg", "serving_default", None)
    outputs = {"ddf": rng.normal(size=(2, 7, 9, 2)).astype(np.float32)}
    wire = serving.grpc_response(outputs).SerializeToString()
    decoded = serving.decode_grpc_response(predict_pb2.PredictResponse.FromString(wire))
    np.testing.assert_array_equal(decoded["ddf"], outputs["ddf"])


def test_predict_grpc_against_an_in_process_service(rng):
    import grpc
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    class Service(prediction_service_pb2_grpc.PredictionServiceServicer):
        def Predict(self, request, context):  # noqa: N802 (the proto's name)
            model, signature, version, arrays = serving.decode_grpc_request(request)
            if signature != "serving_default":
                context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                              f"Serving signature name: \"{signature}\" not found")
            fixed = arrays["fixed_image"]
            ddf = np.zeros(fixed.shape[:-1] + (fixed.ndim - 2,), np.float32) + version
            return serving.grpc_response({"ddf": ddf, "warped_moving_image": fixed}, model)

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(Service(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        inputs = pair(rng, 3, batch=1)
        out = serving.predict_grpc(f"127.0.0.1:{port}", inputs, version=4, timeout=10)
        np.testing.assert_array_equal(out["warped_moving_image"], inputs["fixed_image"])
        np.testing.assert_array_equal(out["ddf"], np.full((1, *SHAPES[3], 3), 4.0, np.float32))
        with pytest.raises(serving.ServingError, match='FAILED_PRECONDITION: Serving signature'):
            serving.predict_grpc(f"127.0.0.1:{port}", inputs, signature_name="other", timeout=10)
    finally:
        server.stop(None)
