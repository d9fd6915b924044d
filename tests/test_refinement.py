"""Test-time refinement (labelreg.refinement) and its place in CentroidAlignNet's inference."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from labelreg import ops
from labelreg.losses.deform import bending_energy
from labelreg.losses.label import multi_scale_dice_loss
from labelreg.networks import CentroidAlignNet
from labelreg.networks.apply import inference_ddf, network_ddf
from labelreg.refinement import refine_ddf, refinement_loss


def _ball(shape, centre, radius):
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), -1)
    distance = np.linalg.norm(grid - np.asarray(centre, np.float64), axis=-1)
    # A soft edge one voxel wide, like a network's probabilities.
    return np.clip(radius + 0.5 - distance, 0.0, 1.0).astype(np.float32)[None, ..., None]


SHAPES = {2: (24, 26), 3: (16, 18, 17)}


@pytest.mark.parametrize("ndim", [2, 3])
def test_the_loss_is_the_documented_sum_and_its_gradient_matches_finite_differences(rng, ndim):
    shape = SHAPES[ndim]
    fixed = _ball(shape, np.array(shape) / 2, 5)
    moving = _ball(shape, np.array(shape) / 2 + 1.5, 5)
    ddf = tf.constant(rng.normal(0, 0.3, (1, *shape, ndim)), tf.float32)
    delta = tf.constant(rng.normal(0, 0.3, (1, *shape, ndim)), tf.float32)
    loss = refinement_loss(delta, ddf, moving, fixed, 0.7, scales=(0.0, 1.0))
    expected = (multi_scale_dice_loss(fixed, ops.warp(moving, ddf + delta), scales=(0.0, 1.0))
                + 0.7 * bending_energy(delta))
    np.testing.assert_allclose(loss.numpy(), expected.numpy(), rtol=1e-6)
    with tf.GradientTape() as tape:
        tape.watch(delta)
        value = tf.reduce_sum(refinement_loss(delta, ddf, moving, fixed, 0.7, (0.0, 1.0)))
    grad = tape.gradient(value, delta).numpy()
    # Central differences in float64 on a few voxels where the gradient is largest.
    flat = np.argsort(np.abs(grad).ravel())[-4:]
    base = delta.numpy().astype(np.float64)
    for index in flat:
        step = np.zeros(base.size)
        step[index] = 1e-2
        step = step.reshape(base.shape)
        plus = refinement_loss(tf.constant(base + step, tf.float32), ddf, moving, fixed, 0.7,
                               (0.0, 1.0))
        minus = refinement_loss(tf.constant(base - step, tf.float32), ddf, moving, fixed, 0.7,
                                (0.0, 1.0))
        numeric = (float(plus.numpy().sum()) - float(minus.numpy().sum())) / 2e-2
        assert grad.ravel()[index] == pytest.approx(numeric, rel=0.05, abs=1e-5)


def test_one_step_is_adams_first_step(rng):
    shape = SHAPES[2]
    fixed = _ball(shape, (12, 13), 6)
    moving = _ball(shape, (13, 14), 6)
    ddf = tf.zeros((1, *shape, 2))
    with tf.GradientTape() as tape:
        delta = tf.zeros_like(ddf)
        tape.watch(delta)
        loss = tf.reduce_sum(refinement_loss(delta, ddf, moving, fixed, 0.5))
    grad = tape.gradient(loss, delta).numpy()
    # Adam's first step: m̂ = g, v̂ = g², so δ = -lr g / (|g| + ε).
    expected = -0.2 * grad / (np.abs(grad) + 1e-7)
    np.testing.assert_allclose(refine_ddf(ddf, moving, fixed, 1, 0.2, 0.5).numpy(), expected,
                               atol=1e-5)
    assert refine_ddf(ddf, moving, fixed, 0) is not None
    np.testing.assert_array_equal(refine_ddf(ddf, moving, fixed, 0).numpy(), ddf.numpy())
    with pytest.raises(ValueError, match="steps >= 0"):
        refine_ddf(ddf, moving, fixed, -1)


@pytest.mark.parametrize("ndim", [2, 3])
def test_refinement_recovers_a_shift_of_the_segmentations(ndim):
    shape = SHAPES[ndim]
    shift = np.array([1.5, -1.0, 1.0][:ndim])
    centre = np.array(shape) / 2
    fixed = _ball(shape, centre, 5)
    moving = _ball(shape, centre + shift, 5)  # moving(x + shift) = fixed(x)
    ddf = tf.zeros((1, *shape, ndim))
    before = 1 - multi_scale_dice_loss(fixed, ops.warp(moving, ddf), scales=(0.0,)).numpy()[0]
    refined = refine_ddf(ddf, moving, fixed, 150, learning_rate=0.1, bending_weight=0.5)
    after = 1 - multi_scale_dice_loss(fixed, ops.warp(moving, refined), scales=(0.0,)).numpy()[0]
    assert after > before + 0.1 and after > 0.9
    inside = fixed[0, ..., 0] > 0.5
    mean_shift = refined.numpy()[0][inside].mean(axis=0)
    np.testing.assert_allclose(mean_shift, shift, atol=0.35)


def test_centroid_align_inference_ddf_refines_only_when_asked(rng):
    fixed_shape, moving_shape = (12, 14, 11), (13, 12, 14)
    moving = rng.random((1, *moving_shape, 1)).astype(np.float32)
    fixed = rng.random((1, *fixed_shape, 1)).astype(np.float32)
    net = CentroidAlignNet(3, num_channel_initial=2, num_channel_segment=2)
    plain = network_ddf(net)(moving, fixed).numpy()
    np.testing.assert_array_equal(inference_ddf(net, {"refine_steps": 0})(moving, fixed).numpy(),
                                  plain)
    settings = {"refine_steps": 3, "refine_learning_rate": 0.05, "refine_bending_weight": 0.5}
    out = net.forward([moving, fixed], training=False)
    expected = refine_ddf(out["ddf"], out["moving_segmentation"], out["fixed_segmentation"], 3,
                          0.05, 0.5).numpy()
    np.testing.assert_allclose(inference_ddf(net, settings)(moving, fixed).numpy(), expected,
                               atol=1e-6)
    assert np.abs(expected - plain).max() > 1e-3
    # A network without the hook is run as it is.
    assert inference_ddf(lambda pair, training=False: pair[1], {"refine_steps": 3})(
        moving, fixed) is fixed


def test_evaluation_and_inference_use_the_configured_refinement(tmp_path):
    from labelreg.evaluation import run_evaluation
    from labelreg.infer import infer
    from labelreg.methods.registry import load_config
    from tests.conftest import save_untrained_run
    from tests.test_pipeline_e2e import write_config, write_dataset

    data = write_dataset(tmp_path / "data", num_cases=2)
    network = {"network_type": "centroid_align", "num_channel_initial": "2",
               "num_channel_segment": "2"}
    ini = write_config(tmp_path / "run.ini", data, Network=network,
                       Inference={"minibatch_size": "2"})
    save_untrained_run(ini)
    tables = {}
    for steps in (0, 5):
        _, cfg = load_config(ini, [f"Inference.refine_steps={steps}",
                                   f"Inference.dir_save={tmp_path / f'out{steps}'}"])
        table, _ = run_evaluation(cfg, "inference", output=tmp_path / f"eval{steps}.csv",
                                  log=lambda line: None)
        tables[steps] = [case.dice for case in table.rows]
        infer(cfg)
    # The untrained network's segmentations overlap the glands a little: aligning them moves
    # the gland Dice, in the evaluation and in inference's outputs alike.
    assert tables[0] != tables[5]
    import nibabel as nib

    ddf = {steps: np.asarray(nib.load(tmp_path / f"out{steps}" / "case00" / "ddf.nii.gz").dataobj)
           for steps in (0, 5)}
    assert np.abs(ddf[0] - ddf[5]).max() > 1e-3


def test_refinement_after_the_compiled_losses_were_traced_for_any_batch():
    # The warp and the bending energy are compiled functions that keep their traces; once
    # traced for an unknown batch size (as in a training step), their gradients lose the
    # static batch size, and the refinement's loop must still see one shape on every turn.
    shape = (1, 24, 26)
    spec = [tf.TensorSpec([None, *shape[1:], 1]), tf.TensorSpec([None, *shape[1:], 2])]
    tf.function(lambda m, d: ops.warp(m, d) + bending_energy(d)[:, None, None, None],
                input_signature=spec)(tf.zeros((2, *shape[1:], 1)), tf.zeros((2, *shape[1:], 2)))
    out = refine_ddf(tf.zeros((*shape, 2)), _ball(shape[1:], (12, 13), 5),
                     _ball(shape[1:], (12, 14), 5), 2)
    assert out.shape == (*shape, 2)


def test_the_ini_defaults_are_refine_ddfs_defaults():
    import inspect

    from labelreg.networks.centroid_align_options import OPTIONS

    keys = OPTIONS.keys["Inference"]
    signature = inspect.signature(refine_ddf).parameters
    assert keys["refine_learning_rate"].default == signature["learning_rate"].default
    assert keys["refine_bending_weight"].default == signature["bending_weight"].default
    assert keys["refine_steps"].default == 0
