"""A small client for registration models served by TF-Serving.

Two transports, both speaking TF-Serving's Predict API for the signatures written by
:mod:`labelreg.export` (names in :data:`SIGNATURES`):

- REST (port 8501): a JSON body ``{"signature_name": ..., "inputs": {name: nested lists}}``
  POSTed to ``/v1/models/<name>[/versions/<v>]:predict``; the answer is
  ``{"outputs": {name: nested lists}}``. Plain JSON numbers are about 10 bytes a voxel, so use it
  for 2-D images and small volumes.
- gRPC (port 8500): ``tensorflow.serving.PredictRequest`` protos whose tensors are packed
  float32 bytes, for 3-D volumes. Needs the optional extra ``labelreg[serving]``
  (``tensorflow-serving-api``, and TensorFlow for the tensor protos); it is imported only when a
  gRPC function is called.

The REST helpers need only NumPy and the standard library, so a guidance workstation can talk to
a server without TensorFlow installed.

Example::

    from labelreg import serving
    url = serving.rest_url("localhost", "labelreg")
    out = serving.predict_rest(url, {"moving_image": mr[None, ..., None],
                                     "fixed_image": us[None, ..., None]})
    ddf = out["ddf"]                      # [1, *us.shape, 3], in MR voxels
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = [
    "SIGNATURES",
    "REST_PORT",
    "GRPC_PORT",
    "ServingError",
    "rest_url",
    "rest_request",
    "encode_rest_request",
    "decode_rest_request",
    "encode_rest_response",
    "decode_rest_response",
    "predict_rest",
    "grpc_request",
    "decode_grpc_request",
    "grpc_response",
    "decode_grpc_response",
    "predict_grpc",
]

REST_PORT = 8501
GRPC_PORT = 8500

#: Inputs and outputs of each exported signature, in the order documented in docs/serving.md.
SIGNATURES: dict[str, dict[str, tuple[str, ...]]] = {
    "serving_default": {
        "inputs": ("moving_image", "fixed_image"),
        "outputs": ("ddf", "warped_moving_image"),
    },
    "warp_labels": {
        "inputs": ("moving_label", "ddf"),
        "outputs": ("warped_label",),
    },
    "register_with_labels": {
        "inputs": ("moving_image", "fixed_image", "moving_label"),
        "outputs": ("ddf", "warped_moving_image", "warped_label"),
    },
}


class ServingError(RuntimeError):
    """The server answered with an error (its message is included) or could not be reached."""


def _as_float32(name: str, value: Any) -> np.ndarray:
    try:
        array = np.asarray(value, dtype=np.float32)
    except (TypeError, ValueError) as err:
        raise ValueError(
            f"input {name!r} must be a numeric array; received {type(value).__name__} ({err})."
        ) from err
    if array.ndim == 0:
        raise ValueError(
            f"input {name!r} must be an array with a batch axis, e.g. [B, *S, C]; received a "
            "scalar."
        )
    if not np.all(np.isfinite(array)):
        raise ValueError(
            f"input {name!r} contains {int((~np.isfinite(array)).sum())} NaN or Inf value(s) of "
            f"{array.size}; the server would reject it."
        )
    return array


def _check_inputs(inputs: Mapping[str, Any], signature_name: str) -> dict[str, np.ndarray]:
    if not isinstance(inputs, Mapping) or not inputs:
        raise ValueError(
            f"inputs must be a non-empty mapping of input name to array; received {inputs!r:.80}."
        )
    expected = SIGNATURES.get(signature_name, {}).get("inputs")
    if expected is not None and set(inputs) != set(expected):
        raise ValueError(
            f"signature {signature_name!r} takes the inputs {list(expected)}; received "
            f"{sorted(inputs)}."
        )
    return {str(k): _as_float32(str(k), v) for k, v in inputs.items()}


# --------------------------------------------------------------------------------------------
# REST
# --------------------------------------------------------------------------------------------


def rest_url(
    host: str = "localhost",
    model: str = "labelreg",
    port: int = REST_PORT,
    version: int | None = None,
    scheme: str = "http",
) -> str:
    """The ``:predict`` URL of a model (the latest version unless ``version`` is given)."""
    path = f"/v1/models/{model}" + (f"/versions/{int(version)}" if version is not None else "")
    return f"{scheme}://{host}:{int(port)}{path}:predict"


def rest_request(
    inputs: Mapping[str, Any], signature_name: str = "serving_default"
) -> dict[str, Any]:
    """The JSON-able body of a REST predict request in TF-Serving's columnar format.

    Args:
        inputs: input name → array with a batch axis (converted to float32), e.g.
            ``{"moving_image": [B, *S_mov, 1], "fixed_image": [B, *S_fix, 1]}``.
        signature_name: one of :data:`SIGNATURES` (other names are passed through unchecked).

    Returns:
        ``{"signature_name": ..., "inputs": {name: nested lists}}``.

    Raises:
        ValueError: for missing or unexpected input names, non-numeric or non-finite arrays.
    """
    arrays = _check_inputs(inputs, signature_name)
    return {
        "signature_name": signature_name,
        "inputs": {name: array.tolist() for name, array in arrays.items()},
    }


def encode_rest_request(
    inputs: Mapping[str, Any], signature_name: str = "serving_default"
) -> bytes:
    """:func:`rest_request` serialised as UTF-8 JSON bytes (the HTTP body)."""
    return json.dumps(rest_request(inputs, signature_name), separators=(",", ":")).encode()


def _load_json(body: bytes | str | Mapping[str, Any], what: str) -> Mapping[str, Any]:
    if isinstance(body, Mapping):
        return body
    try:
        data = json.loads(body)
    except (TypeError, ValueError) as err:
        raise ValueError(f"the {what} is not valid JSON ({err}).") from err
    if not isinstance(data, Mapping):
        raise ValueError(f"the {what} must be a JSON object; received {type(data).__name__}.")
    return data


def decode_rest_request(body: bytes | str | Mapping[str, Any]) -> tuple[str, dict[str, np.ndarray]]:
    """Read a REST predict body back: ``(signature_name, {name: float32 array})``.

    Raises:
        ValueError: when the body is not a columnar (``"inputs"``) request.
    """
    data = _load_json(body, "request")
    if "inputs" not in data or not isinstance(data["inputs"], Mapping):
        raise ValueError(
            "the request must have an object 'inputs' (columnar format); received the keys "
            f"{sorted(data)}."
        )
    signature = str(data.get("signature_name", "serving_default"))
    return signature, {k: np.asarray(v, dtype=np.float32) for k, v in data["inputs"].items()}


def encode_rest_response(outputs: Mapping[str, Any]) -> bytes:
    """TF-Serving's answer to a columnar request, ``{"outputs": {name: nested lists}}``.

    Used by test servers and tools that stand in for TF-Serving.
    """
    body = {"outputs": {k: np.asarray(v, dtype=np.float32).tolist() for k, v in outputs.items()}}
    return json.dumps(body, separators=(",", ":")).encode()


def decode_rest_response(
    body: bytes | str | Mapping[str, Any], output_names: tuple[str, ...] | None = None
) -> dict[str, np.ndarray]:
    """The arrays of a REST predict answer.

    TF-Serving answers a columnar request with ``{"outputs": {name: value}}``, or with
    ``{"outputs": value}`` when the signature has a single output; an error comes as
    ``{"error": message}``.

    Args:
        body: the HTTP body (or its parsed JSON).
        output_names: the signature's output names, to name a single unnamed output.

    Returns:
        name → float32 array.

    Raises:
        ServingError: when the server reported an error.
        ValueError: for a body that is neither.
    """
    data = _load_json(body, "response")
    if "error" in data:
        raise ServingError(f"TF-Serving answered with an error: {data['error']}")
    if "outputs" in data:
        outputs = data["outputs"]
    elif "predictions" in data:  # answer to a row-format ("instances") request
        outputs = data["predictions"]
    else:
        raise ValueError(
            f"the response has neither 'outputs' nor 'error'; received the keys {sorted(data)}."
        )
    if isinstance(outputs, Mapping):
        return {k: np.asarray(v, dtype=np.float32) for k, v in outputs.items()}
    name = output_names[0] if output_names and len(output_names) == 1 else "output"
    return {name: np.asarray(outputs, dtype=np.float32)}


def predict_rest(
    url: str,
    inputs: Mapping[str, Any],
    signature_name: str = "serving_default",
    timeout: float = 60.0,
) -> dict[str, np.ndarray]:
    """POST a predict request and decode the answer.

    Args:
        url: from :func:`rest_url`.
        inputs: as for :func:`rest_request`.
        signature_name: the signature to run.
        timeout: seconds.

    Returns:
        output name → float32 array.

    Raises:
        ServingError: for an HTTP error (with TF-Serving's message) or an unreachable server.
    """
    body = encode_rest_request(inputs, signature_name)
    request = urllib.request.Request(
        url, data=body, headers={"Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            payload = answer.read()
    except urllib.error.HTTPError as err:
        detail = err.read().decode("utf-8", "replace")
        try:
            detail = str(json.loads(detail).get("error", detail))
        except (ValueError, AttributeError):
            pass
        raise ServingError(f"{url}: HTTP {err.code}: {detail}") from err
    except (urllib.error.URLError, OSError) as err:
        raise ServingError(f"{url}: cannot reach TF-Serving ({err}).") from err
    outputs = SIGNATURES.get(signature_name, {}).get("outputs")
    return decode_rest_response(payload, outputs)


# --------------------------------------------------------------------------------------------
# gRPC
# --------------------------------------------------------------------------------------------


def _serving_apis() -> tuple[Any, Any]:
    try:
        from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc
    except ImportError as err:
        raise ImportError(
            "gRPC requests need the optional extra 'serving': `pip install --no-deps "
            "'tensorflow-serving-api==2.21.*'` (with --no-deps so that it does not pull the "
            "'tensorflow' wheel next to tensorflow-cpu), and grpcio."
        ) from err
    return predict_pb2, prediction_service_pb2_grpc


def _tf() -> Any:
    import tensorflow as tf

    return tf


def grpc_request(
    inputs: Mapping[str, Any],
    model: str = "labelreg",
    signature_name: str = "serving_default",
    version: int | None = None,
) -> Any:
    """A ``tensorflow.serving.PredictRequest`` for a model's signature.

    Args:
        inputs: input name → array with a batch axis (sent as float32 bytes).
        model: the served model's name.
        signature_name: one of :data:`SIGNATURES` (other names pass unchecked).
        version: a model version, or ``None`` for the latest.

    Returns:
        The request proto.

    Raises:
        ImportError: without ``tensorflow-serving-api``.
        ValueError: as :func:`rest_request`.
    """
    arrays = _check_inputs(inputs, signature_name)
    predict_pb2, _ = _serving_apis()
    tf = _tf()
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.model_spec.signature_name = signature_name
    if version is not None:
        request.model_spec.version.value = int(version)
    for name, array in arrays.items():
        request.inputs[name].CopyFrom(tf.make_tensor_proto(array))
    return request


def decode_grpc_request(request: Any) -> tuple[str, str, int | None, dict[str, np.ndarray]]:
    """``(model, signature_name, version or None, {name: array})`` of a ``PredictRequest``."""
    tf = _tf()
    spec = request.model_spec
    version = spec.version.value if spec.HasField("version") else None
    arrays = {name: tf.make_ndarray(proto) for name, proto in request.inputs.items()}
    return spec.name, spec.signature_name, version, arrays


def grpc_response(outputs: Mapping[str, Any], model: str = "labelreg") -> Any:
    """A ``PredictResponse`` holding ``outputs`` (for servers and tests standing in for TF-Serving)."""
    predict_pb2, _ = _serving_apis()
    tf = _tf()
    response = predict_pb2.PredictResponse()
    response.model_spec.name = model
    for name, value in outputs.items():
        response.outputs[name].CopyFrom(tf.make_tensor_proto(np.asarray(value, np.float32)))
    return response


def decode_grpc_response(response: Any) -> dict[str, np.ndarray]:
    """The arrays of a ``PredictResponse``, by output name."""
    tf = _tf()
    return {name: tf.make_ndarray(proto) for name, proto in response.outputs.items()}


def predict_grpc(
    target: str,
    inputs: Mapping[str, Any],
    model: str = "labelreg",
    signature_name: str = "serving_default",
    version: int | None = None,
    timeout: float = 60.0,
    max_message_mb: int = 512,
) -> dict[str, np.ndarray]:
    """Send a ``PredictRequest`` over an insecure gRPC channel and decode the answer.

    Args:
        target: ``"host:8500"``.
        inputs, model, signature_name, version: as for :func:`grpc_request`.
        timeout: seconds.
        max_message_mb: the channel's message size limit both ways (gRPC's default of 4 MB is
            less than one 128^3 float32 volume).

    Returns:
        output name → float32 array.

    Raises:
        ServingError: with the server's status and message.
    """
    import grpc

    _, service = _serving_apis()
    request = grpc_request(inputs, model, signature_name, version)
    limit = int(max_message_mb) * 1024 * 1024
    options = [("grpc.max_send_message_length", limit), ("grpc.max_receive_message_length", limit)]
    with grpc.insecure_channel(target, options=options) as channel:
        stub = service.PredictionServiceStub(channel)
        try:
            response = stub.Predict(request, timeout=timeout)
        except grpc.RpcError as err:
            raise ServingError(f"{target}: {err.code().name}: {err.details()}") from err
    return decode_grpc_response(response)
