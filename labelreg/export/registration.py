"""The serving signatures of a registration network (``[moving, fixed] -> ddf``), for every
method whose model is one; :mod:`labelreg.export.publish` writes them as a SavedModel version.

Signatures (``S_mov``/``S_fix``: any spatial sizes, the batch ``B`` is dynamic; ``n = 2`` or ``3``):

================================  ===========================================================
``serving_default``               ``moving_image [B, *S_mov, 1]``, ``fixed_image [B, *S_fix, 1]``
                                  → ``ddf [B, *S_fix, n]``, ``warped_moving_image [B, *S_fix, 1]``
``warp_labels``                   ``moving_label [B, *S_mov, L]`` (any ``L``),
                                  ``ddf [B, *S_fix, n]`` → ``warped_label [B, *S_fix, L]``
``register_with_labels``          ``moving_image``, ``fixed_image``, ``moving_label``
                                  → ``ddf``, ``warped_moving_image``, ``warped_label``
================================  ===========================================================

Units: float32 everywhere, also in a bfloat16 export (``precision="bfloat16"``: the network's
convolutions run in bfloat16, its weights, its DDF and everything after it stay float32; see
:mod:`labelreg.networks.precision`). ``ddf`` is in voxels of the moving image AS SENT, on the fixed
image's grid, axes in array order (``ij``): ``warped(x) = moving(x + ddf(x))``, the convention of
:func:`labelreg.warp`. ``warped_moving_image`` is the moving image as sent (not normalised),
warped linearly with zero outside. ``warped_label`` uses the interpolation chosen at export
(``linear`` gives soft labels in [0, 1]; threshold them at 0.5, or ``nearest``).

How inputs of any size are handled. The networks need a static fixed-image shape when traced
(their resizing and, for GlobalNet and CompositeNet, their dense layer depend on it), so inside
every signature the network runs on exactly the grid it was trained on:

1. both images are min-max normalised per image to [0, 1] when training did so;
2. the fixed image is resized (linear, half-pixel centres) to the trained fixed shape; the moving
   image is resized to that same grid by the network itself, as in training;
3. the network's DDF, which maps trained-fixed-grid voxels to trained-moving-grid voxels, is
   carried to the grids that were sent, assuming they cover the same field of view as the
   training images (the same assumption the network's own moving-image resize makes)::

       y    = (x + 0.5) * S_fix_trained / S_fix_sent - 0.5           (fixed voxel, trained grid)
       ddf  = ((y + ddf_net(y)) + 0.5) * S_mov_sent / S_mov_trained - 0.5 - x

   with ``ddf_net`` interpolated linearly (border replicated). At the trained shapes ``y = x``
   and both factors are 1, so the output equals the Keras model's to float rounding.

No padding to a multiple of 16 is done for the registration networks: their "SAME" max-pooling and
transposed convolutions that take the skip's exact shape handle any size, and the Keras model
itself runs on the trained shape unpadded; zero-padding 47x63x44 to 48x64x48 and cropping back
changes the DDF (see ``docs/serving.md``), so it would no longer match the trained network.

"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras

from labelreg import ops
from labelreg._tf import tf
from labelreg.errors import ConfigError
from labelreg.export.publish import SERVING_DEFAULT, export_endpoints
from labelreg.networks.apply import register_pair
from labelreg.networks.precision import model_precision, with_precision
from labelreg.serving import SIGNATURES

__all__ = [
    "SERVING_DEFAULT",
    "WARP_LABELS",
    "REGISTER_WITH_LABELS",
    "SIGNATURE_NAMES",
    "ServingFunctions",
    "normalise_intensity",
    "carry_ddf_to_grids",
    "export_model",
]

WARP_LABELS = "warp_labels"
REGISTER_WITH_LABELS = "register_with_labels"
SIGNATURE_NAMES = tuple(SIGNATURES)

_INTERPOLATIONS = ("linear", "nearest")


# --------------------------------------------------------------------------------------------
# Graph pieces
# --------------------------------------------------------------------------------------------


def normalise_intensity(image: tf.Tensor) -> tf.Tensor:
    """Min-max normalise each image of a batch to [0, 1], as training does.

    The same arithmetic as :func:`labelreg.data.pipeline.normalise_intensity` (one image at a
    time, all voxels and channels); a constant image becomes zeros.

    Args:
        image: ``[B, *S, C]`` float32.

    Returns:
        ``[B, *S, C]`` float32.
    """
    axes = list(range(1, image.shape.rank))
    # Halved before subtracting (exact in binary floating point), so a range wider than the
    # float32 maximum does not overflow to inf.
    half = image * 0.5
    low = tf.reduce_min(half, axis=axes, keepdims=True)
    high = tf.reduce_max(half, axis=axes, keepdims=True)
    span = high - low
    positive = span > 0.0
    scaled = (half - low) / tf.where(positive, span, tf.ones_like(span))
    return tf.where(positive, scaled, tf.zeros_like(scaled))


def _axis_coordinates(size_out: tf.Tensor, size_in: float) -> tuple[tf.Tensor, tf.Tensor]:
    """Voxel indices ``x`` of a grid of ``size_out`` and their half-pixel image ``y`` in a grid
    of ``size_in`` covering the same extent: ``y = x * s + (s - 1) / 2``, ``s = in / out``.

    Written as a product and a sum (not ``(x + 0.5) * s - 0.5``) so that ``s == 1`` gives
    ``y == x`` exactly.
    """
    x = tf.range(size_out, dtype=tf.float32)
    scale = tf.cast(size_in, tf.float32) / tf.cast(size_out, tf.float32)
    return x, x * scale + 0.5 * (scale - 1.0)


def carry_ddf_to_grids(
    ddf_net: tf.Tensor,
    fixed_sent: tf.Tensor,
    moving_sent: tf.Tensor,
    moving_trained: Sequence[int],
) -> tf.Tensor:
    """Express a DDF predicted on the trained grids on the grids of the images that were sent.

    Args:
        ddf_net: ``[B, *S_fix_trained, n]`` in trained-moving-grid voxels.
        fixed_sent: ``[n]`` int32, the spatial shape of the fixed image sent.
        moving_sent: ``[n]`` int32, the spatial shape of the moving image sent.
        moving_trained: the moving shape the network was trained on.

    Returns:
        ``[B, *S_fix_sent, n]`` in voxels of the moving image sent (see the module docstring).
    """
    n = ddf_net.shape[-1]
    trained_fixed = ddf_net.shape[1:-1]
    sampled_axes, offset_axes, ratios = [], [], []
    for d in range(n):
        x, y = _axis_coordinates(fixed_sent[d], float(trained_fixed[d]))
        ratio = tf.cast(moving_sent[d], tf.float32) / float(moving_trained[d])
        sampled_axes.append(y)
        # Moving voxel m (trained grid) is voxel m * r + (r - 1) / 2 of the moving grid sent.
        offset_axes.append(y * ratio + 0.5 * (ratio - 1.0) - x)
        ratios.append(ratio)
    coords = tf.stack(tf.meshgrid(*sampled_axes, indexing="ij"), axis=-1)
    offset = tf.stack(tf.meshgrid(*offset_axes, indexing="ij"), axis=-1)
    batch = tf.shape(ddf_net)[:1]
    coords = tf.broadcast_to(coords[None], tf.concat([batch, tf.shape(coords)], axis=0))
    sampled = ops.sample(ddf_net, coords, interpolation="linear", fill_mode="nearest")
    return sampled * tf.stack(ratios) + offset[None]


def _assert_same(a: tf.Tensor, b: tf.Tensor, message: str) -> tf.Operation:
    return tf.debugging.assert_equal(a, b, message=message)


@dataclass(frozen=True)
class _Grids:
    ndim: int
    moving_shape: tuple[int, ...]
    fixed_shape: tuple[int, ...]


class ServingFunctions:
    """The functions behind the three serving signatures, for one trained network.

    They are plain TensorFlow functions of float32 tensors with dynamic batch and spatial sizes;
    :func:`build_export_archive` traces them. Calling them eagerly gives the same numbers as the
    exported signatures (handy for tests and for serving without TF-Serving).

    Args:
        model: a registration network, ``model([moving, fixed], training=False) -> ddf``.
        moving_shape: the moving images' spatial shape in training.
        fixed_shape: the fixed images' spatial shape in training.
        normalise: min-max normalise the images for the network, as in training.
        label_interpolation: ``"linear"`` or ``"nearest"`` for ``warped_label``.
        moving_channels: channels of the moving image the network takes.
        fixed_channels: channels of the fixed image the network takes.
        precision: the network's arithmetic in the signatures, one of
            :data:`labelreg.networks.precision.PRECISIONS` (``"bfloat16"``: a bfloat16 copy
            of the network with the same weights, made by
            :func:`~labelreg.networks.precision.with_precision`), or ``None`` to use ``model``
            as it is.

    Attributes:
        precision: the dtype policy the signatures run the network with, ``"float32"`` or
            ``"mixed_bfloat16"``.

    Raises:
        ConfigError: for inconsistent shapes, an unknown interpolation or an unknown precision.
        ValueError: for a network that is not built yet.
    """

    def __init__(
        self,
        model: keras.Model,
        moving_shape: Sequence[int],
        fixed_shape: Sequence[int],
        normalise: bool = True,
        label_interpolation: str = "linear",
        moving_channels: int = 1,
        fixed_channels: int = 1,
        precision: str | None = None,
    ) -> None:
        ndim = len(tuple(fixed_shape))
        if ndim not in (2, 3) or len(tuple(moving_shape)) != ndim:
            raise ConfigError(
                f"moving_shape and fixed_shape must both list 2 or 3 spatial sizes; received "
                f"moving_shape={tuple(moving_shape)!r}, fixed_shape={tuple(fixed_shape)!r}."
            )
        if any(int(s) < 1 for s in (*moving_shape, *fixed_shape)):
            raise ConfigError(
                f"moving_shape and fixed_shape must be positive; received "
                f"moving_shape={tuple(moving_shape)!r}, fixed_shape={tuple(fixed_shape)!r}."
            )
        model_ndim = getattr(model, "ndim", ndim)
        if model_ndim != ndim:
            raise ConfigError(
                f"the network is {model_ndim}-D but fixed_shape={tuple(fixed_shape)!r} is {ndim}-D."
            )
        if label_interpolation not in _INTERPOLATIONS:
            raise ConfigError(
                f"label_interpolation must be one of {_INTERPOLATIONS}; received "
                f"label_interpolation={label_interpolation!r}."
            )
        if not model.built:
            raise ValueError(
                f"the network {model.name!r} is not built; call it once on a [moving, fixed] "
                "pair (or restore it with labelreg.infer.load_trained_model) before exporting."
            )
        if precision is not None:
            model = with_precision(model, precision)
        self.model = model
        self.precision = model_precision(model)
        self.grids = _Grids(ndim, tuple(int(s) for s in moving_shape),
                            tuple(int(s) for s in fixed_shape))
        self.normalise = bool(normalise)
        self.label_interpolation = label_interpolation
        self.moving_channels = int(moving_channels)
        self.fixed_channels = int(fixed_channels)
        # One tf.function for the network part, shared by serving_default and
        # register_with_labels: tracing the network is most of the export time, and a nested
        # tf.function is traced once per input signature, not once per caller.
        specs = self.input_signatures()[SERVING_DEFAULT]
        self._ddf_function = tf.function(self._predict_ddf, input_signature=specs,
                                         autograph=False)

    # -- signatures ---------------------------------------------------------------------------

    def input_signatures(self) -> dict[str, list[tf.TensorSpec]]:
        """The ``tf.TensorSpec`` inputs of each signature, by signature name."""
        n = self.grids.ndim
        free = [None] * (n + 1)
        moving = tf.TensorSpec([*free, self.moving_channels], tf.float32, name="moving_image")
        fixed = tf.TensorSpec([*free, self.fixed_channels], tf.float32, name="fixed_image")
        label = tf.TensorSpec([*free, None], tf.float32, name="moving_label")
        ddf = tf.TensorSpec([*free, n], tf.float32, name="ddf")
        return {
            SERVING_DEFAULT: [moving, fixed],
            WARP_LABELS: [label, ddf],
            REGISTER_WITH_LABELS: [moving, fixed, label],
        }

    def functions(self) -> dict[str, Callable[..., dict[str, tf.Tensor]]]:
        """The Python function of each signature, by signature name."""
        return {
            SERVING_DEFAULT: self.register,
            WARP_LABELS: self.warp_labels,
            REGISTER_WITH_LABELS: self.register_with_labels,
        }

    def endpoints(self) -> dict[str, tuple[Callable[..., dict[str, tf.Tensor]], list, list]]:
        """``{signature: (function, input_signature, output names)}`` for
        :func:`labelreg.export.publish.export_endpoints`."""
        specs = self.input_signatures()
        return {name: (fn, specs[name], list(SIGNATURES[name]["outputs"]))
                for name, fn in self.functions().items()}

    def register(self, moving_image: tf.Tensor, fixed_image: tf.Tensor) -> dict[str, tf.Tensor]:
        """``serving_default``: the DDF of a pair and the warped moving image.

        Args:
            moving_image: ``[B, *S_mov, C_m]`` in any intensity units.
            fixed_image: ``[B, *S_fix, C_f]``.

        Returns:
            ``{"ddf": [B, *S_fix, n], "warped_moving_image": [B, *S_fix, C_m]}``.
        """
        moving, fixed = self._check_pair(moving_image, fixed_image)
        return register_pair(self._ddf_function, moving, fixed)

    def warp_labels(self, moving_label: tf.Tensor, ddf: tf.Tensor) -> dict[str, tf.Tensor]:
        """``warp_labels``: moving labels carried onto the fixed grid by a DDF.

        Args:
            moving_label: ``[B, *S_mov, L]``, any number of labels.
            ddf: ``[B, *S_fix, n]`` as returned by ``serving_default``.

        Returns:
            ``{"warped_label": [B, *S_fix, L]}``.
        """
        specs = self.input_signatures()[WARP_LABELS]
        label = self._check_tensor(moving_label, specs[0])
        ddf = self._check_tensor(ddf, specs[1])
        with tf.control_dependencies([
            _assert_same(tf.shape(label)[0], tf.shape(ddf)[0],
                         "moving_label and ddf must have the same batch size"),
        ]):
            label = tf.identity(label)
        return {"warped_label": self._warp_label(label, ddf)}

    def register_with_labels(
        self, moving_image: tf.Tensor, fixed_image: tf.Tensor, moving_label: tf.Tensor
    ) -> dict[str, tf.Tensor]:
        """``register_with_labels``: ``serving_default`` and ``warp_labels`` in one call.

        Args:
            moving_image: ``[B, *S_mov, C_m]``.
            fixed_image: ``[B, *S_fix, C_f]``.
            moving_label: ``[B, *S_mov, L]`` on the moving image's grid.

        Returns:
            ``{"ddf", "warped_moving_image", "warped_label"}`` as the two other signatures.
        """
        moving, fixed = self._check_pair(moving_image, fixed_image)
        label = self._check_tensor(moving_label, self.input_signatures()[REGISTER_WITH_LABELS][2])
        with tf.control_dependencies([
            _assert_same(tf.shape(label)[:-1], tf.shape(moving)[:-1],
                         "moving_label must have the batch and spatial shape of moving_image"),
        ]):
            label = tf.identity(label)
        return register_pair(self._ddf_function, moving, fixed, label,
                             label_interpolation=self.label_interpolation)

    # -- internals ----------------------------------------------------------------------------

    def _check_tensor(self, x: tf.Tensor, spec: tf.TensorSpec) -> tf.Tensor:
        # A signature loaded with tf.saved_model.load does not check the shapes it is fed
        # against its TensorSpecs, so a wrong rank would fail deep inside the network.
        # EnsureShape fails first, naming the input: "Shape of tensor moving_image [1,8,8,1] is
        # not compatible with expected shape [?,?,?,?,1]". Then named errors for empty grids
        # and non-finite values, instead of NaN outputs.
        name = spec.name
        x = tf.ensure_shape(tf.convert_to_tensor(x, tf.float32), spec.shape, name=f"check_{name}")
        with tf.control_dependencies([
            tf.debugging.assert_positive(
                tf.shape(x)[1:-1], message=f"{name} must have at least one voxel per axis"),
        ]):
            return tf.debugging.check_numerics(x, f"{name} contains NaN or Inf")

    def _check_pair(self, moving: tf.Tensor, fixed: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        moving_spec, fixed_spec = self.input_signatures()[SERVING_DEFAULT]
        moving = self._check_tensor(moving, moving_spec)
        fixed = self._check_tensor(fixed, fixed_spec)
        with tf.control_dependencies([
            _assert_same(tf.shape(moving)[0], tf.shape(fixed)[0],
                         "moving_image and fixed_image must have the same batch size"),
        ]):
            return tf.identity(moving), fixed

    def _predict_ddf(self, moving: tf.Tensor, fixed: tf.Tensor) -> tf.Tensor:
        net_moving = normalise_intensity(moving) if self.normalise else moving
        net_fixed = normalise_intensity(fixed) if self.normalise else fixed
        net_fixed = ops.resize(net_fixed, self.grids.fixed_shape)
        ddf_net = self.model([net_moving, net_fixed], training=False)
        n = self.grids.ndim
        return carry_ddf_to_grids(ddf_net, tf.shape(fixed)[1:1 + n], tf.shape(moving)[1:1 + n],
                                  self.grids.moving_shape)

    def _warp_label(self, label: tf.Tensor, ddf: tf.Tensor) -> tf.Tensor:
        return ops.warp(label, ddf, interpolation=self.label_interpolation)


# --------------------------------------------------------------------------------------------
# Export of an in-memory network
# --------------------------------------------------------------------------------------------


def export_model(
    model: keras.Model,
    base_dir: str | os.PathLike,
    name: str = "labelreg",
    version: int | None = None,
    *,
    moving_shape: Sequence[int],
    fixed_shape: Sequence[int],
    normalise: bool = True,
    label_interpolation: str = "linear",
    jit_compile: bool = False,
    step: int | None = None,
    config_text: str | None = None,
    extra_meta: dict[str, Any] | None = None,
    precision: str = "float32",
) -> Path:
    """Export an in-memory registration network as ``base_dir/name/version/``.

    Args:
        model: the network (built, weights loaded).
        base_dir: the folder TF-Serving's ``--model_base_path`` points above.
        name: the model name (a folder name).
        version: a positive int, or ``None`` for the next free version.
        moving_shape, fixed_shape: the spatial shapes the network was trained on.
        normalise: whether training min-max normalised the images.
        label_interpolation: ``"linear"`` or ``"nearest"`` for the ``warped_label`` outputs.
        jit_compile: trace the warps with XLA (faster in Python; TF-Serving's stock CPU server
            does not compile XLA clusters).
        step: the training step to record.
        config_text: the run's INI text to record (``assets.extra/labelreg/config.ini``).
        extra_meta: more JSON-able entries for ``model.json``.
        precision: ``"float32"``, or ``"bfloat16"`` (alias ``"mixed_bfloat16"``) to export a
            bfloat16 copy of the network (same float32 weights, bfloat16 convolutions; the
            inputs, the DDF and the warps stay float32). Recorded as ``meta.precision``
            (the dtype policy, ``"float32"`` or ``"mixed_bfloat16"``) in ``model.json``.

    Returns:
        The version folder written.

    Raises:
        ConfigError: for a bad name, version, shape, interpolation or precision.
        DataError: when the version exists or the folder cannot be written.
    """
    functions = ServingFunctions(model, moving_shape, fixed_shape, normalise=normalise,
                                 label_interpolation=label_interpolation, precision=precision)
    description = {
        "method": "labelreg",
        "models": {"model": keras.saving.serialize_keras_object(model)},
        "meta": {
            **(extra_meta or {}),
            "moving_shape": list(functions.grids.moving_shape),
            "fixed_shape": list(functions.grids.fixed_shape),
            "normalise": functions.normalise,
            "label_interpolation": label_interpolation,
            "precision": functions.precision,
        },
    }
    return export_endpoints(functions.endpoints(), base_dir, name, version,
                            description=description, step=step, config_text=config_text,
                            jit_compile=jit_compile)
