"""Tests of the bfloat16 path: networks under ``mixed_bfloat16``, ``with_precision`` copies,
the policy scope, a mixed-precision gradient step and the bfloat16 SavedModel export.

How close a bfloat16 DDF is to the float32 one. bfloat16 keeps 8 significant bits, so every
rounding changes a value by up to 2**-8 ≈ 0.4% of itself (about 2.4 decimal digits). A DDF is
the end of a chain of ~10-25 rounded convolutions, batch norms and sums whose errors add up
roughly like a random walk (sqrt(20) x 0.4% ≈ 2%), so the bound is RELATIVE to the DDF's own
scale, not a fixed number of voxels: the root-mean-square difference must stay below 3% of the
DDF's root-mean-square, and the largest difference below 5% of the largest displacement.
Measured on these tiny networks: up to 1.1% and 1.6%. GraDIRN is held to the RMS bound only:
its unrolled steps feed the DDF back through warps of the images, so the few voxels on a steep
image edge can differ by more (up to 12% of the largest displacement measured, at 0.5% RMS).
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import keras
import numpy as np
import pytest

from labelreg import export, ops
from labelreg._tf import tf
from labelreg.engine.checkpoints import make_checkpoint, restore_checkpoint
from labelreg.errors import ConfigError
from labelreg.networks.layers import UpResBlock, conv_layer, resize_like
from labelreg.networks.precision import (
    PRECISIONS,
    model_precision,
    policy_name,
    precision_scope,
    with_precision,
)
from labelreg.networks.registry import build_network
from tests.test_export import TRAINED, keras_register, tiny_model, write_run

RMS_TOLERANCE = 0.03  # of the DDF's RMS; see the module docstring
MAX_TOLERANCE = 0.05  # of the largest displacement

NETWORKS = {
    "local": {"num_channel_initial": 4},
    "global": {"num_channel_initial": 4},
    "composite": {"num_channel_initial": 4, "num_channel_initial_global": 4},
    "unet": {"num_channel_initial": 4, "depth": 2},
    "gradirn": {"channels": 4, "num_levels": 2, "num_repeat": 1},
    "centroid_align": {"num_channel_initial": 4, "num_channel_segment": 4},
}
#: The 3-D cases of the networks made of others (composite: global + local; centroid_align:
#: U-Nets + LocalNet; GraDIRN's unrolled steps) repeat their parts' 3-D cases under a
#: bfloat16 that CPUs without bfloat16 hardware emulate slowly: make test-slow.
SLOW_3D = {"composite", "gradirn", "centroid_align"}
CASES = [pytest.param(name, ndim, marks=pytest.mark.slow) if ndim == 3 and name in SLOW_3D
         else (name, ndim) for name in NETWORKS for ndim in (2, 3)]


def pair(ndim: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A random pair at the tiny trained shapes (moving larger than fixed, odd sizes)."""
    rng = np.random.default_rng(seed)
    return (rng.random((2, *TRAINED[ndim]["moving"], 1)).astype(np.float32),
            rng.random((2, *TRAINED[ndim]["fixed"], 1)).astype(np.float32))


def make(name: str, ndim: int) -> keras.Model:
    """An unbuilt network of the registry at the tiny fixed shape."""
    return build_network(name, ndim, fixed_shape=TRAINED[ndim]["fixed"], **NETWORKS[name])


@functools.cache
def float32_network(name: str, ndim: int) -> keras.Model:
    """A built float32 network whose output heads are random, so its DDF is not zero."""
    keras.utils.set_random_seed(3)
    model = make(name, ndim)
    model(list(pair(ndim)))
    rng = np.random.default_rng(7)
    for weight in model.weights:
        # LocalNet's and UNet's heads and the affine kernel start at zero.
        if any(key in weight.path for key in ("ddf_", "head")):
            weight.assign(rng.normal(0.0, 0.05, weight.shape).astype(np.float32))
        elif "affine/kernel" in weight.path:
            # The affine head divides its outputs by sqrt(fan-in): a larger draw gives a
            # transform of a few voxels.
            weight.assign(rng.normal(0.0, 0.3, weight.shape).astype(np.float32))
    return model


def conv_layers(model: keras.Model) -> list[keras.Layer]:
    return [layer for layer in model._flatten_layers(include_self=False)
            if isinstance(layer, keras.layers.Conv2D | keras.layers.Conv3D)]


# --------------------------------------------------------------------------------------------
# Networks under mixed_bfloat16
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "ndim"), CASES)
def test_network_builds_and_runs_under_mixed_bfloat16(name, ndim):
    moving, fixed = pair(ndim)
    with precision_scope("mixed_bfloat16"):
        model = make(name, ndim)
        ddf = model([moving, fixed])
    assert ddf.dtype == tf.float32
    assert ddf.shape == (2, *TRAINED[ndim]["fixed"], ndim)
    assert np.all(np.isfinite(ddf.numpy()))
    outputs = model.forward([moving, fixed])
    assert outputs["ddf"].dtype == tf.float32
    assert model_precision(model) == "mixed_bfloat16"
    convs = conv_layers(model)
    assert convs and all(c.compute_dtype == "bfloat16" for c in convs)
    assert {v.dtype for v in model.weights} == {"float32"}
    if name in ("global", "composite"):
        # The affine head is float32 whatever the policy, and starts at the exact identity.
        assert outputs["theta"].dtype == tf.float32
        assert model.regressor.dense.compute_dtype == "float32"
        identity = np.concatenate([np.eye(ndim), np.zeros((ndim, 1))], axis=1)
        np.testing.assert_array_equal(outputs["theta"].numpy(), np.stack([identity] * 2))
    if name == "local":
        np.testing.assert_array_equal(ddf.numpy(), 0.0)  # zero heads: exactly zero in bf16 too


def test_up_sampling_keeps_the_bfloat16_features_dtype():
    """The UpResBlock failure: resizing returned float32 next to bfloat16 features."""
    with precision_scope("mixed_bfloat16"):
        block = UpResBlock(3, 4)
        x = tf.random.uniform((1, 3, 4, 2, 8))
        skip = tf.random.uniform((1, 5, 7, 3, 4))  # odd sizes: ceil(s / 2) == x's grid
        out = block(x, skip)
    assert out.dtype == tf.bfloat16
    assert out.shape == (1, 5, 7, 3, 4)
    low = tf.cast(x, tf.bfloat16)
    assert resize_like(low, skip).dtype == tf.bfloat16
    # The interpolation runs in float32; only its result is rounded to bfloat16.
    np.testing.assert_array_equal(resize_like(low, skip).numpy(),
                                  tf.cast(ops.resize(tf.cast(low, tf.float32), (5, 7, 3)),
                                          tf.bfloat16).numpy())


def test_float32_networks_still_take_any_float_input():
    """The networks no longer autocast their inputs; they still accept float64 arrays."""
    model = float32_network("local", 2)
    moving, fixed = pair(2)
    want = model([moving, fixed]).numpy()
    got = model([moving.astype(np.float64), fixed.astype(np.float64)])
    assert got.dtype == tf.float32
    np.testing.assert_array_equal(got.numpy(), want)


# --------------------------------------------------------------------------------------------
# with_precision
# --------------------------------------------------------------------------------------------


def relative_differences(got: np.ndarray, want: np.ndarray) -> tuple[float, float]:
    """(RMS difference / RMS of ``want``, max difference / max |want|)."""
    diff = np.abs(got - want)
    rms = float(np.sqrt(np.mean(diff**2) / np.mean(want**2)))
    return rms, float(diff.max() / np.abs(want).max())


@pytest.mark.parametrize(("name", "ndim"), CASES)
def test_with_precision_copies_the_weights_and_the_ddf_stays_close(name, ndim):
    model = float32_network(name, ndim)
    moving, fixed = pair(ndim, seed=1)
    want = model([moving, fixed]).numpy()
    before = [v.numpy() for v in model.weights]

    fast = with_precision(model, "bfloat16")
    assert fast is not model
    assert type(fast) is type(model)
    assert model_precision(fast) == "mixed_bfloat16"
    assert model_precision(model) == "float32"  # the original is untouched
    assert keras.config.dtype_policy().name == "float32"
    assert [v.path for v in fast.weights] == [v.path for v in model.weights]
    for original, copied, kept in zip(model.weights, fast.weights, before, strict=True):
        assert copied.dtype == "float32"
        np.testing.assert_array_equal(copied.numpy(), original.numpy())
        np.testing.assert_array_equal(original.numpy(), kept)

    got = fast([moving, fixed])
    assert got.dtype == tf.float32
    assert np.abs(want).max() > 0.02  # a DDF that is not zero
    rms, largest = relative_differences(got.numpy(), want)
    assert 0.0 < rms < RMS_TOLERANCE, (rms, largest)  # > 0: it really computed in bfloat16
    if name != "gradirn":
        assert largest < MAX_TOLERANCE, (rms, largest)

    # And back: a float32 copy of the bfloat16 copy is the original network again.
    again = with_precision(fast, "float32")
    assert model_precision(again) == "float32"
    np.testing.assert_array_equal(again([moving, fixed]).numpy(), want)


def test_with_precision_arguments():
    model = float32_network("local", 2)
    assert with_precision(model, "float32") is model
    fast = with_precision(model, "mixed_bfloat16")
    assert with_precision(fast, "bfloat16") is fast
    with pytest.raises(ConfigError, match="precision must be one of"):
        with_precision(model, "float16")
    with pytest.raises(ValueError, match="not built"):
        with_precision(make("local", 2), "bfloat16")
    # Built on other shapes on request (LocalNet takes any grid).
    moving, fixed = pair(3)
    other = with_precision(float32_network("local", 3), "bfloat16",
                           input_shape=[[None, 8, 8, 8, 1], [None, 6, 6, 6, 1]])
    assert other([moving, fixed]).shape == (2, *TRAINED[3]["fixed"], 3)


def test_checkpoints_restore_across_precisions(tmp_path):
    """The variables are float32 under both policies, so one checkpoint serves both."""
    model = float32_network("local", 3)
    prefix = make_checkpoint(model).save(str(tmp_path / "ckpt"))
    moving, fixed = pair(3)
    with precision_scope("mixed_bfloat16"):
        mixed = make("local", 3)
        mixed([moving, fixed])
    restore_checkpoint(mixed, prefix)  # checks that every variable matched
    for a, b in zip(model.weights, mixed.weights, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert model_precision(mixed) == "mixed_bfloat16"


# --------------------------------------------------------------------------------------------
# precision_scope
# --------------------------------------------------------------------------------------------


def test_precision_names():
    assert PRECISIONS == ("float32", "bfloat16", "mixed_bfloat16")
    assert policy_name("float32") == "float32"
    assert policy_name(" BFloat16 ") == "mixed_bfloat16"
    assert policy_name("mixed_bfloat16") == "mixed_bfloat16"
    for bad in ("float16", "mixed_float16", "", None, 32):
        with pytest.raises(ConfigError, match="precision must be one of"):
            policy_name(bad)


def test_precision_scope_restores_the_policy_even_on_error():
    assert keras.config.dtype_policy().name == "float32"
    with precision_scope("bfloat16") as policy:
        assert policy == "mixed_bfloat16"
        assert keras.config.dtype_policy().name == "mixed_bfloat16"
        with precision_scope("float32"):
            assert keras.config.dtype_policy().name == "float32"
        assert keras.config.dtype_policy().name == "mixed_bfloat16"
    assert keras.config.dtype_policy().name == "float32"

    with pytest.raises(RuntimeError, match="inside"):
        with precision_scope("mixed_bfloat16"):
            raise RuntimeError("inside")
    assert keras.config.dtype_policy().name == "float32"

    with pytest.raises(ConfigError):
        with precision_scope("half"):
            pass  # pragma: no cover - the scope fails before its body
    assert keras.config.dtype_policy().name == "float32"

    # Restores what was there, not float32.
    keras.config.set_dtype_policy("mixed_float16")
    try:
        with precision_scope("mixed_bfloat16"):
            pass
        assert keras.config.dtype_policy().name == "mixed_float16"
    finally:
        keras.config.set_dtype_policy("float32")


# --------------------------------------------------------------------------------------------
# Mixed-precision training
# --------------------------------------------------------------------------------------------


# The 3-D step repeats the 2-D one's layers under emulated bfloat16: make test-slow.
@pytest.mark.parametrize("ndim", [2, pytest.param(3, marks=pytest.mark.slow)])
def test_a_gradient_step_under_mixed_bfloat16_gives_finite_float32_gradients(ndim):
    moving, fixed = pair(ndim)
    keras.utils.set_random_seed(0)
    with precision_scope("mixed_bfloat16"):
        model = build_network("local", ndim, num_channel_initial=4)
        model([moving, fixed])
        optimizer = keras.optimizers.Adam(1e-3)
    rng = np.random.default_rng(0)
    for head in model.ddf_heads:  # zero heads would stop every gradient below them
        for weight in head.weights:
            weight.assign(rng.normal(0.0, 0.05, weight.shape).astype(np.float32))
    variables = model.trainable_variables
    before = [v.numpy() for v in variables]
    with tf.GradientTape() as tape:
        ddf = model([moving, fixed], training=True)
        warped = ops.warp(moving, ddf)
        loss = tf.reduce_mean((warped - fixed) ** 2) + 0.1 * tf.reduce_mean(ddf**2)
    assert ddf.dtype == warped.dtype == loss.dtype == tf.float32
    grads = tape.gradient(loss, variables)
    assert all(v.dtype == "float32" for v in variables)
    assert all(g is not None and g.dtype == tf.float32 for g in grads)
    assert all(np.all(np.isfinite(g.numpy())) for g in grads)
    norms = {v.path.split("/", 1)[1]: float(tf.norm(g)) for v, g in zip(variables, grads,
                                                                         strict=True)}
    assert norms["encoder/down_0/conv0/conv/kernel"] > 0.0
    assert all(norms[f"ddf_{k}/{w}"] > 0.0 for k in range(5) for w in ("kernel", "bias"))
    optimizer.apply_gradients(zip(grads, variables, strict=True))
    assert all(v.dtype == "float32" for v in variables)
    assert all(np.all(np.isfinite(v.numpy())) for v in variables)
    # Every variable with a gradient moved (in 3-D one batch-norm offset has none: the 1x1x1
    # bottom grid's batch statistics cancel it, in float32 too).
    for v, g, b in zip(variables, grads, before, strict=True):
        assert np.array_equal(v.numpy(), b) == (float(tf.norm(g)) == 0.0), v.path


@pytest.mark.parametrize("ndim", [2, 3])
def test_bfloat16_gradients_match_float32(ndim):
    """The bfloat16 backward pass gives the float32 gradient to bfloat16 rounding.

    Batch norm runs on fixed statistics (``training=False``) so that the two passes compute the
    same function: with batch statistics, subtracting the batch mean from bfloat16 features
    amplifies their roundings, and the gradients then differ by ~10-40% on these tiny grids
    (1x1x1 at the bottom in 3-D) without either being wrong. The tiny 3-D grids have axes
    smaller than the kernel, where TensorFlow's bfloat16 ``Conv3DBackpropFilter`` returned
    garbage, and every DDF head has a bias summed over the whole grid, where ``BiasAddGrad``
    stalled in bfloat16 (see ``labelreg.networks.layers._BFloat16SafeConv``).
    """
    model = float32_network("local", ndim)
    fast = with_precision(model, "bfloat16")
    moving, fixed = pair(ndim, seed=2)
    weights = 1.0 + 0.5 * np.random.default_rng(9).normal(
        size=(2, *TRAINED[ndim]["fixed"], ndim)).astype(np.float32)
    grads = []
    for network in (model, fast):
        with tf.GradientTape() as tape:
            ddf = network([moving, fixed], training=False)
            loss = tf.reduce_sum(ddf * weights)
        grads.append([g.numpy().astype(np.float64)
                      for g in tape.gradient(loss, network.trainable_variables)])
    want, got = (np.concatenate([g.ravel() for g in gs]) for gs in grads)
    assert np.all(np.isfinite(got))
    assert np.linalg.norm(got - want) < 0.1 * np.linalg.norm(want)
    for variable, g32, g16 in zip(model.trainable_variables, *grads, strict=True):
        if variable.path.endswith("bias"):  # one sum over the grid: float32 accumulation
            np.testing.assert_allclose(g16, g32, rtol=0.02, err_msg=variable.path)


def test_small_3d_grids_and_biases_get_correct_bfloat16_gradients():
    with precision_scope("mixed_bfloat16"):
        conv = conv_layer(3, 32, 3, use_bias=True)
        x = tf.constant(np.random.default_rng(0).normal(size=(1, 2, 2, 2, 32)), tf.float32)
        conv.build(x.shape)
    with tf.GradientTape() as tape:
        out = conv(x)
        loss = tf.reduce_sum(tf.cast(out, tf.float32) * tf.cast(x, tf.float32)[..., :1])
    kernel_grad, bias_grad = tape.gradient(loss, [conv.kernel, conv.bias])
    with tf.GradientTape() as tape:
        reference = tf.nn.conv3d(x, conv.kernel, [1] * 5, "SAME") + conv.bias
        loss = tf.reduce_sum(reference * x[..., :1])
    want_kernel, want_bias = tape.gradient(loss, [conv.kernel, conv.bias])
    assert out.dtype == tf.bfloat16
    np.testing.assert_allclose(kernel_grad.numpy(), want_kernel.numpy(),
                               atol=0.02 * float(tf.reduce_max(tf.abs(want_kernel))))
    np.testing.assert_allclose(bias_grad.numpy(), want_bias.numpy(), rtol=0.02)

    # A bias under 2 x 64 x 64 voxels: its gradient is the voxel count, 8192, exactly.
    with precision_scope("mixed_bfloat16"):
        conv = conv_layer(2, 3, 3, use_bias=True)
        x = tf.zeros((2, 64, 64, 1))
        conv.build(x.shape)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(tf.cast(conv(x), tf.float32))
    np.testing.assert_array_equal(tape.gradient(loss, conv.bias).numpy(), 8192.0)


# --------------------------------------------------------------------------------------------
# Export
# --------------------------------------------------------------------------------------------


def bfloat16_ops(loaded) -> set[str]:
    """The op types of the loaded SavedModel's functions that compute in bfloat16."""
    graph_def = loaded.signatures["serving_default"].graph.as_graph_def()
    types = set()
    for function in graph_def.library.function:
        for node in function.node_def:
            if node.attr["T"].type == tf.bfloat16.as_datatype_enum:
                types.add(node.op)
    return types


@pytest.fixture(scope="module")
def bfloat16_exports(tmp_path_factory):
    """Tiny LocalNets exported in bfloat16: 2-D from a run folder, 3-D from memory."""
    base = tmp_path_factory.mktemp("models")
    cases = {}
    for ndim in (2, 3):
        model = tiny_model(ndim)
        if ndim == 2:
            run_dir = tmp_path_factory.mktemp("run")
            write_run(run_dir, model, ndim)
            path = export.export_saved_model(run_dir, base, "tiny2", precision="bfloat16")
        else:
            path = export.export_model(model, base, "tiny3", moving_shape=TRAINED[3]["moving"],
                                       fixed_shape=TRAINED[3]["fixed"], precision="bfloat16")
        cases[ndim] = {"path": path, "model": model}
    return cases


# Two bfloat16 exports, emulated and slow on CPUs without bfloat16 hardware (make test-slow).
@pytest.mark.slow
@pytest.mark.parametrize("ndim", [2, 3])
def test_the_bfloat16_saved_model_answers_close_to_float32(bfloat16_exports, ndim):
    case = bfloat16_exports[ndim]
    loaded = tf.saved_model.load(str(case["path"]))
    rng = np.random.default_rng(5)
    moving = (rng.random((2, *TRAINED[ndim]["moving"], 1)) * 200.0).astype(np.float32)
    fixed = (rng.random((2, *TRAINED[ndim]["fixed"], 1)) * 50.0).astype(np.float32)
    out = loaded.signatures["serving_default"](moving_image=tf.constant(moving),
                                               fixed_image=tf.constant(fixed))
    assert out["ddf"].dtype == tf.float32
    assert out["warped_moving_image"].dtype == tf.float32
    want = keras_register(case["model"], moving, fixed, ndim)
    assert np.abs(want).max() > 0.2
    rms, largest = relative_differences(out["ddf"].numpy(), want)
    assert 0.0 < rms < RMS_TOLERANCE and largest < MAX_TOLERANCE, (rms, largest)
    # The convolutions really are bfloat16 in the SavedModel's graph.
    assert {"Conv2D" if ndim == 2 else "Conv3D"} <= bfloat16_ops(loaded)

    description = json.loads(loaded.model_description[0].numpy().decode())
    assert description["meta"]["precision"] == "mixed_bfloat16"
    assets = case["path"] / "assets.extra" / "labelreg" / "model.json"
    assert json.loads(assets.read_text())["meta"]["precision"] == "mixed_bfloat16"


def test_a_float32_export_records_its_precision(tmp_path):
    model = tiny_model(2)
    path = export.export_model(model, tmp_path, "tiny", moving_shape=TRAINED[2]["moving"],
                               fixed_shape=TRAINED[2]["fixed"])
    meta = json.loads((path / "assets.extra" / "labelreg" / "model.json").read_text())["meta"]
    assert meta["precision"] == "float32"
    assert not bfloat16_ops(tf.saved_model.load(str(path)))
    with pytest.raises(ConfigError, match="precision must be one of"):
        export.export_model(model, tmp_path, "bad", moving_shape=TRAINED[2]["moving"],
                            fixed_shape=TRAINED[2]["fixed"], precision="float16")


@pytest.mark.slow
def test_a_trained_network_exported_in_bfloat16_moves_voxels_by_less_than_a_tenth(tmp_path):
    """The bound the serving guide gives for a bfloat16 export, on a trained network rather than
    random weights: the demo recipe trained 100 steps, exported in both precisions from the same
    checkpoint, answers one test pair with DDFs whose per-voxel difference vectors have a 95th
    percentile length under 0.1 voxel on a CPU with bfloat16 instructions (oneDNN accumulates
    in float32). Where TensorFlow emulates bfloat16 (an AVX2-only CPU) the rounding is coarser:
    0.15-0.35 voxel on the AMD EPYC, under 0.5."""
    import shutil

    import nibabel as nib

    from labelreg.cpu import bfloat16_hardware
    from labelreg.engine import train
    from labelreg.methods.registry import load_config

    root = Path(__file__).resolve().parent.parent
    (tmp_path / "configs").mkdir()
    shutil.copy(root / "configs" / "demo.ini", tmp_path / "configs" / "demo.ini")
    _, cfg = load_config(tmp_path / "configs" / "demo.ini",
                         ["Train.total_iterations=100", "Train.freq_model_save=100"])
    train(cfg, log=lambda line: None)
    run = tmp_path / "runs" / "demo"
    answers = {}
    case = sorted((tmp_path / "demo_data" / "test" / "moving_images").iterdir())[0].name
    images = {key: nib.load(tmp_path / "demo_data" / "test" / f"{key}_images" / case)
              .get_fdata().astype(np.float32)[None, ..., None] for key in ("moving", "fixed")}
    for precision in ("float32", "bfloat16"):
        path = export.export_saved_model(run, tmp_path / "exports", precision, precision=precision)
        out = tf.saved_model.load(str(path)).signatures["serving_default"](
            moving_image=tf.constant(images["moving"]), fixed_image=tf.constant(images["fixed"]))
        answers[precision] = out["ddf"].numpy()
    moved = np.linalg.norm(answers["float32"], axis=-1)
    assert np.percentile(moved, 95) > 1.0  # the network was trained: it moves voxels
    differs = np.linalg.norm(answers["bfloat16"] - answers["float32"], axis=-1)
    bound = 0.1 if bfloat16_hardware() else 0.5
    assert 0.0 < np.percentile(differs, 95) < bound, np.percentile(differs, 95)
