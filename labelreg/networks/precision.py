"""bfloat16 arithmetic for the registration networks: dtype-policy scopes and bf16 copies.

The registration networks follow the Keras dtype policy in force when they are created. Two
policies are used:

- ``float32``: everything in float32 (the default);
- ``mixed_bfloat16``: the convolutions, transposed convolutions, pooling and the feature maps
  between them are bfloat16; the variables (weights, batch-norm statistics) stay float32 and are
  cast to bfloat16 as they are read. Batch normalisation computes its statistics in float32.

What stays float32 under ``mixed_bfloat16``, by design:

- the network's interface: it takes the images as float32 (no cast on entry) and returns a
  float32 DDF; every head's output is cast to float32 before the levels are resized and summed;
- GlobalNet's (and CompositeNet's) affine head: the dense layer, ``theta`` and its DDF;
- everything downstream of the DDF: :func:`labelreg.networks.apply.register_pair`, the warps,
  the composition in CompositeNet, the losses and the optimiser's updates;
- GraDIRN's descent (the step size, the similarity gradient and the displacement carried from
  step to step); only its CNN corrections are bfloat16.

bfloat16 keeps float32's 8-bit exponent (same range, so training needs no loss scaling) but has
8 significant bits (7 stored), i.e. a relative rounding error of up to 2**-8 ≈ 0.4% per value,
about 2.4 decimal digits. A bfloat16 DDF therefore differs from the float32 one by a small
fraction of its own magnitude, not by a fixed number of voxels; ``benchmarks/bench_serving.py``
prints the difference measured on the prostate shapes.

Training under ``mixed_bfloat16``: the gradients reach the float32 variables as float32 (the
gradient of each cast), the optimiser updates float32 weights, and a checkpoint holds the same
float32 variables as a float32 run's, so either precision resumes or fine-tunes the other's
checkpoints. Two TensorFlow CPU kernels give wrong bfloat16 gradients; labelreg's convolutions
avoid them (``labelreg.networks.layers._BFloat16SafeConv``). Measured on LocalNet at
initialisation (64² and 32³ grids), the bfloat16 gradient differs from the float32 one by 1-3%
(norm of the difference over the norm) with fixed batch-norm statistics, and by 10-14% (cosine
0.99) with batch statistics (``training=True``), which magnify the features' roundings.

Precision names (``[Train] precision``, ``[Inference] precision``, export options):
:data:`PRECISIONS`. ``"bfloat16"`` is an alias of ``"mixed_bfloat16"``: pure bfloat16 weights
are never used, so a float32-trained checkpoint loads unchanged and serves with bfloat16
arithmetic.

Typical use::

    with precision_scope("mixed_bfloat16"):      # training: build the network in the scope
        model = build_network("local", 3, num_channel_initial=32)

    fast = with_precision(trained, "bfloat16")    # serving a float32-trained network in bf16
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from typing import Any

import keras

from labelreg._tf import tf
from labelreg.cpu import bfloat16_note
from labelreg.errors import ConfigError
from labelreg.logs import log_line

__all__ = [
    "PRECISIONS",
    "check_precision",
    "policy_name",
    "precision_scope",
    "model_precision",
    "with_precision",
]

#: Accepted precision names; ``"bfloat16"`` means the same policy as ``"mixed_bfloat16"``.
PRECISIONS = ("float32", "bfloat16", "mixed_bfloat16")

_POLICIES = {"float32": "float32", "bfloat16": "mixed_bfloat16",
             "mixed_bfloat16": "mixed_bfloat16"}


def check_precision(precision: Any) -> str:
    """``precision`` as one of :data:`PRECISIONS` (lower case, surrounding spaces ignored).

    Raises:
        ConfigError: for any other value; the message lists the accepted names.
    """
    name = precision.strip().lower() if isinstance(precision, str) else precision
    if name not in _POLICIES:
        raise ConfigError(
            f"precision must be one of {', '.join(PRECISIONS)}; received "
            f"precision={precision!r}."
        )
    return name


def policy_name(precision: str) -> str:
    """The Keras dtype policy of a precision: ``"float32"`` or ``"mixed_bfloat16"``.

    Raises:
        ConfigError: for an unknown precision.
    """
    return _POLICIES[check_precision(precision)]


@contextlib.contextmanager
def precision_scope(precision: str) -> Iterator[str]:
    """Set the global Keras dtype policy for the networks created inside; restore it on exit.

    Layers take the policy in force when they are created (their variables when built), so
    create AND build the network inside the scope. The previous policy is restored on exit,
    also when the body raises. Keras keeps the policy per thread, so the scope affects only the
    calling thread.

    Args:
        precision: one of :data:`PRECISIONS`.

    Yields:
        The policy name set (``"float32"`` or ``"mixed_bfloat16"``).

    Raises:
        ConfigError: for an unknown precision (before the policy changes).
    """
    policy = policy_name(precision)
    if policy != "float32":
        _note_emulated_bfloat16()
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        yield policy
    finally:
        keras.config.set_dtype_policy(previous)


@functools.cache
def _note_emulated_bfloat16() -> None:
    """Say once per process when bfloat16 runs emulated: on a CPU without bfloat16 hardware
    and no GPU, where it is slower than float32."""
    note = bfloat16_note()
    if note is not None and not tf.config.list_physical_devices("GPU"):
        log_line(note)


def model_precision(model: keras.Layer) -> str:
    """The policy a network computes with: ``"mixed_bfloat16"`` when any of its layers
    computes in bfloat16, otherwise ``"float32"``.

    The inner layers decide, not the outer model's own policy: a network saved under
    ``mixed_bfloat16`` records that policy in its config, but when it is rebuilt under the
    float32 policy only the outer model takes it, and the layers that compute are float32.
    """
    # Keras has no public recursive iterator over the tracked sub-layers; _flatten_layers is it.
    layers = list(model._flatten_layers(include_self=False, recursive=True)) or [model]
    if any(layer.dtype_policy.compute_dtype == "bfloat16" for layer in layers):
        return "mixed_bfloat16"
    return "float32"


def with_precision(
    model: keras.Model, precision: str, input_shape: Any | None = None
) -> keras.Model:
    """A copy of a built network that computes with another precision, with the same weights.

    The network is re-created from its Keras config (``keras.saving.serialize_keras_object``,
    which works for every registered labelreg network) inside :func:`precision_scope`, built on
    the input shapes the original was built on, and given the original's variable values with
    ``set_weights`` (trainable weights and batch-norm statistics; all float32 under either
    policy, so the values are copied exactly). The original is not changed. Use it to serve a
    float32-trained checkpoint with bfloat16 arithmetic::

        model, meta, _ = load_trained_model(run_dir)
        model = with_precision(model, "bfloat16")

    Args:
        model: a built network (weights created, e.g. by one call or by
            :func:`labelreg.infer.load_trained_model`).
        precision: one of :data:`PRECISIONS`.
        input_shape: the shapes to build the copy on, as passed to ``model.build``
            (``[[B, *S_mov, C_m], [B, *S_fix, C_f]]`` for a registration network); default the
            shapes the original was built on.

    Returns:
        The copy, or ``model`` itself when it already computes with that precision.

    Raises:
        ConfigError: for an unknown precision.
        ValueError: when ``model`` is not built, or the copy's variables do not match the
            original's (a network whose ``build`` does not create all of its variables).
    """
    policy = policy_name(precision)
    if model_precision(model) == policy:
        return model
    if not model.built:
        raise ValueError(
            f"{model.name!r} is not built; call it once on a [moving, fixed] pair (or restore it "
            "with labelreg.infer.load_trained_model) before changing its precision."
        )
    serialized = keras.saving.serialize_keras_object(model)
    # The outer model's own policy is part of its config; without it the copy takes the scope's.
    serialized["config"] = {k: v for k, v in serialized["config"].items() if k != "dtype"}
    build_config = serialized.pop("build_config", None)
    if input_shape is not None:
        build_config = {"input_shape": input_shape}
    if build_config is None:
        raise ValueError(
            f"{model.name!r} does not record the shapes it was built on; pass input_shape."
        )
    with precision_scope(policy):
        copy = keras.saving.deserialize_keras_object(serialized)
        copy.build_from_config(build_config)
    source, target = model.weights, copy.weights
    if [tuple(v.shape) for v in source] != [tuple(v.shape) for v in target]:
        raise ValueError(
            f"the {policy} copy of {model.name!r} has {len(target)} variables where the "
            f"original has {len(source)} (or their shapes differ); its build() must create "
            "every variable."
        )
    copy.set_weights([v.numpy() for v in source])
    return copy
