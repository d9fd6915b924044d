"""Export trained registration networks as TF-Serving SavedModels (and, optionally, to ONNX).

A TF-Serving model folder holds one sub-folder per integer version::

    <base_dir>/<name>/1/      saved_model.pb, variables/, assets.extra/labelreg/
    <base_dir>/<name>/2/      ...

:func:`export_saved_model` restores a training run's checkpoint and writes the next free version
(a version is never overwritten). The SavedModel is written with ``keras.export.ExportArchive``
into a hidden staging folder and renamed into place, so a TF-Serving server polling the folder
never sees a half-written version.

Signatures (``S_mov``/``S_fix``: any spatial sizes, the batch ``B`` is dynamic; ``n = 2`` or ``3``):

================================  ===========================================================
``serving_default``               ``moving_image [B, *S_mov, 1]``, ``fixed_image [B, *S_fix, 1]``
                                  → ``ddf [B, *S_fix, n]``, ``warped_moving_image [B, *S_fix, 1]``
``warp_labels``                   ``moving_label [B, *S_mov, L]`` (any ``L``),
                                  ``ddf [B, *S_fix, n]`` → ``warped_label [B, *S_fix, L]``
``register_with_labels``          ``moving_image``, ``fixed_image``, ``moving_label``
                                  → ``ddf``, ``warped_moving_image``, ``warped_label``
================================  ===========================================================

Units: float32 everywhere. ``ddf`` is in voxels of the moving image AS SENT, on the fixed
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
changes the DDF (see ``docs/serving.md``), so it would no longer match the trained network. The
CoMIR encoders (:func:`export_comir_saved_model`) do need sides that are multiples of
``2 ** len(down_blocks)``: there each image is reflect-padded up to the next multiple and the
CoMIR cropped back.

XLA: :func:`labelreg.warp` is compiled with XLA in training, but TF-Serving's stock CPU server does
not run XLA clusters by default, so the serving functions are traced inside
:func:`labelreg.ops.xla_disabled` unless ``jit_compile=True`` is asked for.

Metadata: the model's Keras config, the training meta (shapes, normalisation), the training step
and the run's ``config.ini`` are written to ``assets.extra/labelreg/`` (the SavedModel folder for
files the graph does not load) and are also inside the SavedModel as the variables
``training_step`` (int64) and ``model_description`` (a JSON string), readable with TensorFlow
alone: ``tf.saved_model.load(path).training_step[0]``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import time
import uuid
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras

from labelreg import ops
from labelreg._tf import tf
from labelreg.errors import ConfigError, DataError
from labelreg.serving import SIGNATURES

__all__ = [
    "SERVING_DEFAULT",
    "WARP_LABELS",
    "REGISTER_WITH_LABELS",
    "SIGNATURE_NAMES",
    "METADATA_DIR",
    "ServingFunctions",
    "normalise_intensity",
    "carry_ddf_to_grids",
    "build_export_archive",
    "export_model",
    "export_saved_model",
    "export_onnx",
    "export_comir_saved_model",
    "export_comir_run",
    "pad_to_multiple",
    "comir_margin",
    "list_versions",
    "next_version",
]

SERVING_DEFAULT = "serving_default"
WARP_LABELS = "warp_labels"
REGISTER_WITH_LABELS = "register_with_labels"
SIGNATURE_NAMES = tuple(SIGNATURES)
METADATA_DIR = os.path.join("assets.extra", "labelreg")

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
    low = tf.reduce_min(image, axis=axes, keepdims=True)
    high = tf.reduce_max(image, axis=axes, keepdims=True)
    span = high - low
    positive = span > 0.0
    scaled = (image - low) / tf.where(positive, span, tf.ones_like(span))
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


def _describe_spec(spec: tf.TensorSpec) -> str:
    return "[" + ", ".join("?" if s is None else str(s) for s in spec.shape) + "]"


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

    Raises:
        ConfigError: for inconsistent shapes or an unknown interpolation.
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
        self.model = model
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

    def register(self, moving_image: tf.Tensor, fixed_image: tf.Tensor) -> dict[str, tf.Tensor]:
        """``serving_default``: the DDF of a pair and the warped moving image.

        Args:
            moving_image: ``[B, *S_mov, C_m]`` in any intensity units.
            fixed_image: ``[B, *S_fix, C_f]``.

        Returns:
            ``{"ddf": [B, *S_fix, n], "warped_moving_image": [B, *S_fix, C_m]}``.
        """
        moving, fixed = self._check_pair(moving_image, fixed_image)
        ddf = self._ddf_function(moving, fixed)
        return {"ddf": ddf, "warped_moving_image": ops.warp(moving, ddf)}

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
        ddf = self._ddf_function(moving, fixed)
        return {
            "ddf": ddf,
            "warped_moving_image": ops.warp(moving, ddf),
            "warped_label": self._warp_label(label, ddf),
        }

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
# Archives and versions
# --------------------------------------------------------------------------------------------


def build_export_archive(
    functions: ServingFunctions,
    step: int | None = None,
    description: dict[str, Any] | None = None,
) -> keras.export.ExportArchive:
    """The three serving signatures in a ``keras.export.ExportArchive``.

    The functions are traced when the archive is written (``tf.saved_model.save`` traces them
    again even if they were traced before), so call ``write_out`` inside
    :func:`labelreg.ops.xla_disabled` for a SavedModel without XLA clusters, as
    :func:`export_model` does.

    Args:
        functions: the serving functions of a network.
        step: the training step, stored as the variable collection ``training_step``.
        description: JSON-able metadata stored as the string variable ``model_description``.

    Returns:
        The archive, ready for ``write_out``.
    """
    archive = keras.export.ExportArchive()
    # No archive.track(model): the endpoints capture every variable they use, and tracking the
    # Keras model as well stores every weight twice (measured: variables/ doubles in size).
    specs = functions.input_signatures()
    for name, fn in functions.functions().items():
        archive.add_endpoint(name, fn, input_signature=specs[name])
    _add_metadata_variables(archive, step, description or {})
    return archive


def _add_metadata_variables(
    archive: keras.export.ExportArchive, step: int | None, description: dict[str, Any]
) -> None:
    # Readable with TensorFlow alone: tf.saved_model.load(path).training_step[0].
    archive.add_variable_collection(
        "training_step", [tf.Variable(int(step if step is not None else -1), dtype=tf.int64,
                                      trainable=False, name="training_step")])
    archive.add_variable_collection(
        "model_description", [tf.Variable(json.dumps(description), dtype=tf.string,
                                          trainable=False, name="model_description")])


def _xla_context(jit_compile: bool) -> contextlib.AbstractContextManager:
    return contextlib.nullcontext() if jit_compile else ops.xla_disabled()


def list_versions(model_dir: str | os.PathLike) -> list[int]:
    """The integer versions present in a TF-Serving model folder, sorted (empty if none)."""
    path = Path(model_dir)
    if not path.is_dir():
        return []
    return sorted(int(p.name) for p in path.iterdir() if p.is_dir() and p.name.isdigit())


def next_version(model_dir: str | os.PathLike) -> int:
    """One more than the highest version in ``model_dir`` (1 for a new folder)."""
    versions = list_versions(model_dir)
    return versions[-1] + 1 if versions else 1


def _check_version(version: Any) -> int:
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ConfigError(
            f"version must be a positive integer (TF-Serving's version folders); received "
            f"version={version!r}."
        )
    return version


def _check_name(name: Any) -> str:
    text = str(name)
    if not text or text in (".", "..") or "/" in text or os.sep in text:
        raise ConfigError(
            f"name must be a plain folder name (the TF-Serving model name); received name={name!r}."
        )
    return text


def _publish(staging: Path, model_dir: Path, version: int | None) -> Path:
    """Rename the staged SavedModel to its version folder, never replacing an existing one."""
    explicit = version is not None
    for _ in range(100):
        number = version if explicit else next_version(model_dir)
        target = model_dir / str(number)
        if target.exists():
            if explicit:
                raise DataError(
                    f"{target}: version {number} already exists; exports never overwrite a "
                    f"version. Pick another --version or leave it unset for the next free one "
                    f"({next_version(model_dir)})."
                )
            continue
        try:
            os.rename(staging, target)
        except OSError:
            if explicit or not target.exists():
                raise
            continue  # another export took this number meanwhile: try the next one
        return target
    raise DataError(f"{model_dir}: could not find a free version folder.")


def _prepare_target(
    base_dir: str | os.PathLike, name: str, version: int | None
) -> tuple[Path, int | None]:
    """Check the name and version before any work, and create the model folder."""
    name = _check_name(name)
    if version is not None:
        version = _check_version(version)
    model_dir = Path(base_dir) / name
    if version is not None and (model_dir / str(version)).exists():
        raise DataError(
            f"{model_dir / str(version)}: version {version} already exists; exports never "
            f"overwrite a version (next free: {next_version(model_dir)})."
        )
    try:
        model_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DataError(f"{model_dir}: cannot create the model folder ({err}).") from err
    return model_dir, version


def _write_archive(
    archive: keras.export.ExportArchive,
    model_dir: Path,
    version: int | None,
    files: dict[str, str],
) -> Path:
    # A hidden, non-numeric staging name: TF-Serving only loads folders named by an integer.
    staging = Path(tempfile.mkdtemp(prefix=f".export-{uuid.uuid4().hex[:8]}-", dir=model_dir))
    try:
        saved = staging / "model"
        archive.write_out(str(saved), verbose=False)
        for relative, text in files.items():
            target = saved / METADATA_DIR / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text, encoding="utf-8")
        return _publish(saved, model_dir, version)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


# --------------------------------------------------------------------------------------------
# Public entry points
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

    Returns:
        The version folder written.

    Raises:
        ConfigError: for a bad name, version, shape or interpolation.
        DataError: when the version exists or the folder cannot be written.
    """
    model_dir, version = _prepare_target(base_dir, name, version)
    functions = ServingFunctions(model, moving_shape, fixed_shape, normalise=normalise,
                                 label_interpolation=label_interpolation)
    description = {
        "model": keras.saving.serialize_keras_object(model),
        "meta": {
            **(extra_meta or {}),
            "moving_shape": list(functions.grids.moving_shape),
            "fixed_shape": list(functions.grids.fixed_shape),
            "normalise": functions.normalise,
        },
        "training_step": step,
        "export": {
            "label_interpolation": label_interpolation,
            "jit_compile": bool(jit_compile),
            "signatures": _signature_summary(functions),
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "tensorflow": tf.__version__,
            "keras": keras.__version__,
        },
    }
    files = {"model.json": json.dumps(description, indent=2) + "\n"}
    if config_text is not None:
        files["config.ini"] = config_text
    with _xla_context(jit_compile):
        archive = build_export_archive(functions, step=step, description=description)
        return _write_archive(archive, model_dir, version, files)


def _signature_summary(functions: ServingFunctions) -> dict[str, dict[str, list[str]]]:
    return {
        name: {"inputs": [f"{s.name} {_describe_spec(s)}" for s in specs],
               "outputs": list(SIGNATURES[name]["outputs"])}
        for name, specs in functions.input_signatures().items()
    }


def _training_step(prefix: str) -> int | None:
    try:
        names = dict(tf.train.list_variables(prefix))
        if "step/.ATTRIBUTES/VARIABLE_VALUE" in names:
            return int(tf.train.load_variable(prefix, "step/.ATTRIBUTES/VARIABLE_VALUE"))
    except (tf.errors.OpError, ValueError):
        pass
    tail = prefix.rsplit("-", 1)[-1]
    return int(tail) if tail.isdigit() else None


def _load_run(model_dir_or_checkpoint: str | os.PathLike) -> tuple[keras.Model, dict, str, Path]:
    from labelreg.infer import load_trained_model
    from labelreg.train.checkpoints import resolve_checkpoint

    model, meta, prefix = load_trained_model(model_dir_or_checkpoint)
    _, run_dir = resolve_checkpoint(prefix)
    for key in ("moving_shape", "fixed_shape"):
        if key not in meta:
            raise DataError(
                f"{run_dir / 'model.json'}: the meta entry {key!r} is missing; export needs the "
                "shapes the network was trained on (written by training.py)."
            )
    return model, meta, prefix, run_dir


def export_saved_model(
    model_dir_or_checkpoint: str | os.PathLike,
    base_dir: str | os.PathLike,
    name: str = "labelreg",
    version: int | None = None,
    *,
    label_interpolation: str = "linear",
    jit_compile: bool = False,
) -> Path:
    """Export a trained checkpoint as a TF-Serving model version ``base_dir/name/version/``.

    Args:
        model_dir_or_checkpoint: a run folder, its ``checkpoints/`` folder, a checkpoint prefix
            or label-reg's ``file_model_save`` prefix (anything
            :func:`labelreg.infer.load_trained_model` accepts).
        base_dir: parent of the model folder.
        name: the model name TF-Serving serves it under (``MODEL_NAME``).
        version: a positive int, or ``None`` for the next free integer. An existing version is
            never overwritten.
        label_interpolation: ``"linear"`` (soft labels) or ``"nearest"`` for ``warped_label``.
        jit_compile: trace the warps with XLA (off by default, for TF-Serving's stock server).

    Returns:
        The version folder written (``base_dir/name/version``).

    Raises:
        DataError: no checkpoint or model description, an existing version, an unwritable folder.
        ConfigError: a bad name, version or interpolation.
    """
    model, meta, prefix, run_dir = _load_run(model_dir_or_checkpoint)
    config_path = run_dir / "config.ini"
    config_text = config_path.read_text(encoding="utf-8") if config_path.is_file() else None
    extra = {k: v for k, v in meta.items() if k not in ("moving_shape", "fixed_shape", "normalise")}
    extra["checkpoint"] = str(prefix)
    return export_model(
        model, base_dir, name, version,
        moving_shape=meta["moving_shape"], fixed_shape=meta["fixed_shape"],
        normalise=bool(meta.get("normalise", True)), label_interpolation=label_interpolation,
        jit_compile=jit_compile, step=_training_step(prefix), config_text=config_text,
        extra_meta=extra,
    )


def export_onnx(
    model_dir_or_checkpoint: str | os.PathLike,
    path: str | os.PathLike,
    opset: int = 17,
) -> Path:
    """Convert the ``serving_default`` function of a trained checkpoint to ONNX with tf2onnx.

    The ONNX graph has the inputs ``moving_image`` and ``fixed_image`` and the outputs ``ddf`` and
    ``warped_moving_image``, with the same units and dynamic sizes as the SavedModel signature.
    Needs the optional extra ``labelreg[onnx]`` (``tf2onnx``; ``onnxruntime`` to run the result).

    Args:
        model_dir_or_checkpoint: as for :func:`export_saved_model`.
        path: the ``.onnx`` file to write.
        opset: the ONNX opset.

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
    model, meta, _, _ = _load_run(model_dir_or_checkpoint)
    functions = ServingFunctions(model, meta["moving_shape"], meta["fixed_shape"],
                                 normalise=bool(meta.get("normalise", True)))
    specs = functions.input_signatures()[SERVING_DEFAULT]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with ops.xla_disabled():  # ONNX has no XLA clusters either
        fn = tf.function(functions.register, input_signature=specs, autograph=False)
        tf2onnx.convert.from_function(fn, input_signature=specs, opset=int(opset),
                                      output_path=str(path))
    return path


# --------------------------------------------------------------------------------------------
# CoMIR encoders
# --------------------------------------------------------------------------------------------


def _symmetric_indices(size: tf.Tensor, before: tf.Tensor, total: tf.Tensor) -> tf.Tensor:
    """Source indices of a signal of length ``size`` extended by ``before`` samples in front, to
    ``total`` samples, by mirror reflection with the edge repeated (``... 1 0 | 0 1 .. s-1 |
    s-1 s-2 ...``, NumPy's ``"symmetric"`` pad), repeating the reflection for any length."""
    i = tf.range(total) - before
    period = 2 * size
    j = tf.math.floormod(i, period)
    return tf.where(j >= size, period - 1 - j, j)


def pad_to_multiple(
    image: tf.Tensor, multiple: int, margin: int = 0
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """Pad the sides of ``[B, H, W, C]`` by symmetric reflection to multiples of ``multiple``,
    plus ``margin`` pixels of context on every side; the padding is split evenly before and
    after, as :func:`comir_tf.generate` does.

    Returns:
        ``(padded, top, left)``: the padded image and the offsets of the original in it.
    """
    out = image
    offsets = []
    for axis in (1, 2):
        size = tf.shape(out)[axis]
        pad = tf.math.floormod(-size, multiple) + 2 * margin
        before = pad // 2
        out = tf.gather(out, _symmetric_indices(size, before, size + pad), axis=axis)
        offsets.append(before)
    return out, offsets[0], offsets[1]


def comir_margin(multiple: int, margin: int | None = None) -> int:
    """The context margin :func:`comir_tf.generate` uses without tiles: by default
    ``max(multiple, 32)`` pixels, rounded up to a multiple of ``multiple // 2``."""
    half = max(multiple // 2, 1)
    margin = max(multiple, 32) if margin is None else int(margin)
    return -(-margin // half) * half


def export_comir_saved_model(
    models: Mapping[str, keras.Model],
    base_dir: str | os.PathLike,
    name: str = "comir",
    version: int | None = None,
    *,
    step: int | None = None,
    config_text: str | None = None,
    extra_meta: dict[str, Any] | None = None,
    margin: int | None = None,
) -> Path:
    """Export CoMIR encoders (``comir_tf.Tiramisu``), one signature per modality.

    Signature ``<modality>`` (the mapping's key): ``image [B, H, W, C]`` float32, any ``H`` and
    ``W``, intensities prepared as in training (scaled, log if configured) →
    ``comir [B, H, W, K]``. Inside, the image is padded by symmetric reflection up to the next
    multiple of ``2 ** len(down_blocks)`` plus a context margin on every side (half of the
    padding before, half after), encoded in inference mode and cropped back: the result equals
    :func:`comir_tf.generate` without tiles. The first modality is also ``serving_default``.

    Args:
        models: modality name → Tiramisu, e.g. ``{"modality_a": model_a, "modality_b": model_b}``.
        base_dir, name, version: as for :func:`export_saved_model`.
        step: the training step to record.
        config_text: the run's INI text to record.
        extra_meta: more JSON-able entries for ``model.json`` (e.g. the intensity preparation).
        margin: reflected context in pixels (see :func:`comir_margin`; default as
            :func:`comir_tf.generate`).

    Returns:
        The version folder written.

    Raises:
        ConfigError: for an empty ``models``, a modality name that is not an identifier or one
            clashing with ``serving_default``.
        DataError: as :func:`export_saved_model`.
    """
    if not models:
        raise ConfigError("models must name at least one modality encoder; received none.")
    model_dir, version = _prepare_target(base_dir, name, version)
    archive = keras.export.ExportArchive()
    configs = {}
    for modality, model in models.items():
        if not str(modality).isidentifier() or modality == SERVING_DEFAULT:
            raise ConfigError(
                f"modality names become signature names and must be identifiers other than "
                f"{SERVING_DEFAULT!r}; received {modality!r}."
            )
        spec = tf.TensorSpec([None, None, None, int(model.in_channels)], tf.float32, name="image")
        encoder = _comir_encoder(model, spec, margin)
        archive.add_endpoint(str(modality), encoder, input_signature=[spec])
        configs[str(modality)] = keras.saving.serialize_keras_object(model)
    description = {
        "models": configs,
        "meta": {**(extra_meta or {}),
                 "margin": {m: comir_margin(int(getattr(models[m], "multiple", 1)), margin)
                            for m in configs}},
        "training_step": step,
        "export": {"signatures": {m: {"inputs": ["image [?, ?, ?, C]"], "outputs": ["comir"]}
                                  for m in configs},
                   "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "tensorflow": tf.__version__},
    }
    _add_metadata_variables(archive, step, description)
    files = {"model.json": json.dumps(description, indent=2) + "\n"}
    if config_text is not None:
        files["config.ini"] = config_text
    return _write_archive(archive, model_dir, version, files)


def _comir_encoder(
    model: keras.Model, spec: tf.TensorSpec, margin: int | None
) -> Callable[[tf.Tensor], dict]:
    multiple = int(getattr(model, "multiple", 1))
    context = comir_margin(multiple, margin)

    def encode(image: tf.Tensor) -> dict[str, tf.Tensor]:
        image = tf.ensure_shape(image, spec.shape, name="check_image")
        with tf.control_dependencies([
            tf.debugging.assert_positive(tf.shape(image)[1:3],
                                         message="image must have at least one pixel per axis"),
        ]):
            image = tf.debugging.check_numerics(image, "image contains NaN or Inf")
        padded, top, left = pad_to_multiple(image, multiple, context)
        comir = model(padded, training=False)
        height, width = tf.shape(image)[1], tf.shape(image)[2]
        return {"comir": comir[:, top:top + height, left:left + width, :]}

    return encode


def export_comir_run(
    config_path: str | os.PathLike,
    base_dir: str | os.PathLike,
    name: str = "comir",
    version: int | None = None,
) -> Path:
    """Export the two encoders of a CoMIR training run (``[CoMIR]`` INI file).

    The signatures are ``modality_a`` (also ``serving_default``) and ``modality_b``; the
    intensity preparation of each (suffix, scale, log) is recorded in ``model.json``.

    Returns:
        The version folder written.

    Raises:
        ConfigError: for a bad INI file; DataError: without a checkpoint.
    """
    from comir_tf import config as comir_config
    from comir_tf.train import restore_models

    cfg = comir_config.load(config_path)
    model_a, model_b, prefix = restore_models(cfg)
    data = cfg["Data"]
    meta = {"checkpoint": str(prefix)}
    for key in ("suffix_a", "suffix_b", "scale_a", "scale_b", "log_a", "log_b"):
        meta[key] = data[key]
    config_file = Path(cfg["Train"]["run_dir"]) / "config.ini"
    return export_comir_saved_model(
        {"modality_a": model_a, "modality_b": model_b}, base_dir, name, version,
        step=_training_step(prefix),
        config_text=config_file.read_text(encoding="utf-8") if config_file.is_file() else None,
        extra_meta=meta,
    )
