"""Export of a trained run of any method: :func:`export_saved_model` (a TF-Serving model
version, the signatures coming from the run's method) and :func:`export_onnx`. The run is
restored by :func:`labelreg.methods.runs.load_trained_run`; the versioned publishing is
:mod:`labelreg.export.publish`'s."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

from labelreg import ops
from labelreg._tf import tf
from labelreg.export.publish import SERVING_DEFAULT, export_endpoints, training_step
from labelreg.methods.runs import load_trained_run
from labelreg.networks.precision import policy_name, with_precision

__all__ = ["export_saved_model", "export_onnx"]


def _run_endpoints(
    model_dir_or_checkpoint: str | os.PathLike, options: dict[str, Any],
    precision: str = "float32",
):
    run = load_trained_run(model_dir_or_checkpoint)
    # Every model of the run is given the precision before the method builds its signatures,
    # so the option works for any method (and a float32 model is used as it is).
    models = {key: with_precision(model, precision) for key, model in run.models.items()}
    endpoints = run.method.serving_endpoints(models, run.meta, **options)
    return run, endpoints


def export_saved_model(
    model_dir_or_checkpoint: str | os.PathLike,
    base_dir: str | os.PathLike,
    name: str | None = None,
    version: int | None = None,
    *,
    jit_compile: bool = False,
    precision: str = "float32",
    **options: Any,
) -> Path:
    """Export a trained run of any method as a TF-Serving model version ``base_dir/name/version/``.

    Args:
        model_dir_or_checkpoint: a run folder, its ``checkpoints/`` folder, a checkpoint prefix
            or label-reg's ``file_model_save`` prefix.
        base_dir: parent of the model folder.
        name: the model name TF-Serving serves it under (``MODEL_NAME``); default the method's.
        version: a positive int, or ``None`` for the next free integer. An existing version is
            never overwritten.
        jit_compile: trace with XLA (off by default, for TF-Serving's stock server).
        precision: ``"float32"``, or ``"bfloat16"`` (alias ``"mixed_bfloat16"``): the
            signatures run bfloat16 copies of the run's networks
            (:func:`labelreg.networks.precision.with_precision`: the same float32 weights,
            bfloat16 convolutions; a registration network's inputs, DDF and warps stay
            float32). Recorded as ``meta.precision`` (the dtype policy, ``"float32"`` or
            ``"mixed_bfloat16"``) in ``model.json``.
        **options: the method's export options (e.g. ``label_interpolation="nearest"`` for a
            registration network).

    Returns:
        The version folder written.

    Raises:
        DataError: no checkpoint or model description, an existing version, an unwritable folder.
        ConfigError: a bad name, version, precision or option.
    """
    policy = policy_name(precision)  # a bad name fails before the run is restored
    run, endpoints = _run_endpoints(model_dir_or_checkpoint, options, policy)
    config_path = run.run_dir / "config.ini"
    return export_endpoints(
        endpoints, base_dir, name or run.method.name, version,
        description={"method": run.method.name, "models": run.description["models"],
                     "meta": {**run.meta, **options,
                              **run.method.export_meta(run.models, **options),
                              "precision": policy, "checkpoint": str(run.prefix)}},
        step=training_step(run.prefix),
        config_text=config_path.read_text(encoding="utf-8") if config_path.is_file() else None,
        jit_compile=jit_compile,
    )


def export_onnx(
    model_dir_or_checkpoint: str | os.PathLike,
    path: str | os.PathLike,
    opset: int = 17,
) -> Path:
    """Convert the ``serving_default`` signature of a trained run to ONNX with tf2onnx.

    For a registration network the ONNX graph has the inputs ``moving_image`` and
    ``fixed_image`` and the outputs ``ddf`` and ``warped_moving_image``, with the same units and
    dynamic sizes as the SavedModel signature. Needs the optional extra ``labelreg[onnx]``
    (``tf2onnx``; ``onnxruntime`` to run the result).

    Returns:
        ``path``.

    Raises:
        ImportError: when tf2onnx is missing, with the install command.
    """
    try:
        import tf2onnx
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "ONNX export needs tf2onnx: `pip install 'labelreg[onnx]'` (tf2onnx, onnxruntime)."
        ) from err
    try:
        # tf2onnx 1.17 still uses np.object etc., gone in NumPy 2; Keras's own ONNX export ships
        # the patch (which touches np.object itself, hence the FutureWarning filter).
        from keras.src.export.tf2onnx_lib import patch_tf2onnx
    except ImportError:  # pragma: no cover - a Keras without it
        patch_tf2onnx = None
    if patch_tf2onnx is not None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            patch_tf2onnx()
    _, endpoints = _run_endpoints(model_dir_or_checkpoint, {})
    fn, specs, *_ = endpoints.get(SERVING_DEFAULT) or next(iter(endpoints.values()))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with ops.xla_disabled():  # ONNX has no XLA clusters either
        function = tf.function(fn, input_signature=specs, autograph=False)
        tf2onnx.convert.from_function(function, input_signature=specs, opset=int(opset),
                                      output_path=str(path))
    return path
