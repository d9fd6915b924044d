"""CentroidAlignNet and its segmentation loss: the soft centroid against scipy, the translation
against hand-placed segmentations (2-D and 3-D), serialisation, the label-0 batches and their
augmentation, the loss term, the config checks and a training run on the shared real data."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from scipy import ndimage

from labelreg import config, metrics, ops
from labelreg.data import PairedDataset
from labelreg.data.augment import augment_batch, step_seed
from labelreg.data.pipeline import CaseCache, make_train_dataset, normalise_intensity
from labelreg.engine import train
from labelreg.errors import ConfigError
from labelreg.export import registration as export
from labelreg.losses.label import dice_loss
from labelreg.methods.label_driven import LabelDriven
from labelreg.methods.runs import load_trained_run
from labelreg.networks import CentroidAlignNet, build_network
from tests.test_pipeline_e2e import ball_label, write_config, write_dataset

SHAPES = {2: ((17, 19), (21, 20)), 3: ((13, 15, 11), (16, 14, 12))}  # (fixed, moving)


# ---- soft centroid ---------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(9, 12), (7, 8, 10)])
def test_soft_centroid_equals_scipy_center_of_mass(rng, shape):
    p = rng.random((3, *shape, 1)).astype(np.float32)
    got = ops.soft_centroid(p, prior_mass=0.0).numpy()
    for b in range(3):
        np.testing.assert_allclose(got[b], ndimage.center_of_mass(p[b, ..., 0]), rtol=1e-5)


def test_soft_centroid_prior_mass_pulls_towards_the_centre(rng):
    shape = (9, 12, 5)
    empty = np.zeros((1, *shape, 1), np.float32)
    np.testing.assert_allclose(ops.soft_centroid(empty).numpy()[0], [4.0, 5.5, 2.0])
    p = np.zeros((1, *shape, 1), np.float32)
    p[0, 1, 2, 3] = 3.0 / 4.0  # mass 3/4 at (1, 2, 3) and the prior's 1 at the centre
    expected = (0.75 * np.array([1, 2, 3]) + np.array([4.0, 5.5, 2.0])) / 1.75
    np.testing.assert_allclose(ops.soft_centroid(p).numpy()[0], expected, rtol=1e-6)
    with pytest.raises(ValueError, match=r"\[B, \*S, 1\]"):
        ops.soft_centroid(np.zeros((1, 4, 4, 2), np.float32))
    with pytest.raises(ValueError, match="prior_mass"):
        ops.soft_centroid(empty, prior_mass=-1.0)


def test_soft_centroid_gradient_matches_finite_differences(rng):
    p = tf.constant(rng.random((1, 5, 6, 1)), tf.float64)
    theoretical, numerical = tf.test.compute_gradient(
        lambda x: ops.soft_centroid(x, prior_mass=0.5), [p])
    np.testing.assert_allclose(theoretical[0], numerical[0], atol=1e-6)


# ---- the network -----------------------------------------------------------------------------


def _net(ndim, **kwargs):
    return CentroidAlignNet(ndim=ndim, num_channel_initial=2, num_channel_segment=2, **kwargs)


def _random_pair(rng, ndim, batch=1):
    """A random ``(moving, fixed)`` pair of :data:`SHAPES` ``[ndim]`` (fixed, moving)."""
    fixed_shape, moving_shape = SHAPES[ndim]
    return (rng.random((batch, *moving_shape, 1)).astype(np.float32),
            rng.random((batch, *fixed_shape, 1)).astype(np.float32))


@pytest.mark.parametrize("ndim", [2, 3])
def test_untrained_network_applies_the_centroid_translation_of_its_segmentations(rng, ndim):
    fixed_shape, moving_shape = SHAPES[ndim]
    moving = rng.random((2, *moving_shape, 1)).astype(np.float32)
    fixed = rng.random((2, *fixed_shape, 1)).astype(np.float32)
    net = _net(ndim)
    out = net.forward([moving, fixed])
    assert out["ddf"].shape == (2, *fixed_shape, ndim)
    assert out["moving_segmentation"].shape == (2, *moving_shape, 1)
    assert out["fixed_segmentation"].shape == (2, *fixed_shape, 1)
    # LocalNet's heads start at zero: the DDF is the translation at every voxel.
    np.testing.assert_array_equal(out["ddf_local"].numpy(), 0.0)
    # The translation is the difference of the soft centroids of the segmentation-grid maps,
    # carried to each image's voxel indices.
    p_moving, p_fixed = (p.numpy() for p in net.segment(moving, fixed))
    for b in range(2):
        expected = (_on_image(_centroid_with_prior(p_moving[b, ..., 0]), moving_shape)
                    - _on_image(_centroid_with_prior(p_fixed[b, ..., 0]), fixed_shape))
        np.testing.assert_allclose(out["translation"].numpy()[b], expected, atol=1e-4)
        np.testing.assert_allclose(out["ddf"].numpy()[b].reshape(-1, ndim),
                                   np.broadcast_to(expected, (np.prod(fixed_shape), ndim)),
                                   atol=1e-4)
    np.testing.assert_array_equal(net([moving, fixed]).numpy(), out["ddf"].numpy())


@pytest.mark.parametrize("ndim", [2, 3])
def test_translation_jitter_shifts_training_translations_only(rng, ndim):
    fixed_shape, moving_shape = SHAPES[ndim]
    moving = rng.random((4, *moving_shape, 1)).astype(np.float32)
    fixed = rng.random((4, *fixed_shape, 1)).astype(np.float32)
    plain, jittered = _net(ndim), _net(ndim, translation_jitter=1.5)
    plain([moving, fixed])
    jittered([moving, fixed])
    for part in ("segment_moving", "segment_fixed", "local_net"):
        getattr(jittered, part).set_weights(getattr(plain, part).get_weights())
    # Inference never jitters.
    np.testing.assert_allclose(jittered.forward([moving, fixed])["ddf"].numpy(),
                               plain.forward([moving, fixed])["ddf"].numpy(), atol=1e-6)
    clean = plain.forward([moving, fixed], training=True)["translation"].numpy()
    shifts = []
    for _ in range(2):
        out = jittered.forward([moving, fixed], training=True)
        shift = out["translation"].numpy() - clean
        assert np.all(np.abs(shift) <= 1.5 + 1e-5)
        # The DDF composes the jittered translation (the one reported) with LocalNet.
        expected = out["ddf_local"].numpy() + out["translation"].numpy().reshape(
            (4,) + (1,) * ndim + (ndim,))
        np.testing.assert_allclose(out["ddf"].numpy(), expected, atol=1e-5)
        shifts.append(shift)
    assert np.abs(shifts[0]).max() > 0.1 and not np.allclose(shifts[0], shifts[1])
    with pytest.raises(ValueError, match="translation_jitter"):
        _net(ndim, translation_jitter=-1.0)


def _on_image(centroid: np.ndarray, image_shape) -> np.ndarray:
    """Half-pixel mapping of a segmentation-grid index onto the image grid (the grid is half
    the image's size, rounded)."""
    grid = np.array([max(1, round(s * 0.5)) for s in image_shape])
    return (centroid + 0.5) * np.array(image_shape) / grid - 0.5


def _centroid_with_prior(p: np.ndarray) -> np.ndarray:
    """NumPy reference of ``soft_centroid(prior_mass=1)``."""
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in p.shape], indexing="ij"), -1)
    centre = (np.array(p.shape) - 1) / 2
    return ((p[..., None] * grid).sum(tuple(range(p.ndim))) + centre) / (p.sum() + 1.0)


@pytest.mark.parametrize("ndim", [2, 3])
def test_perfect_segmentations_align_the_structure(ndim):
    """With segmentations equal to the true masks the DDF carries the moving ball onto the
    fixed one: the translation follows the warp's convention (moving index = x + ddf)."""
    fixed_shape, moving_shape = SHAPES[ndim]
    fixed_ball = ball_label(fixed_shape, (5,) * ndim, 3.0)[None, ..., None]
    moving_ball = ball_label(moving_shape, (9, 8, 7)[:ndim], 3.0)[None, ..., None]
    net = _net(ndim, segment_resolution=1.0)
    net([moving_ball, fixed_ball])
    # Logits of +-30 make the sigmoid the masks themselves (to 1e-13).
    net.segment = lambda moving, fixed, training=None: (
        tf.sigmoid(60.0 * (moving - 0.5)), tf.sigmoid(60.0 * (fixed - 0.5)))
    out = net.forward([moving_ball, fixed_ball])
    mass = fixed_ball.sum()  # both balls lie inside their grids: equal masses
    expected = (mass * (np.array((9, 8, 7)[:ndim]) - 5)
                + _centre(moving_shape) - _centre(fixed_shape)) / (mass + 1.0)
    np.testing.assert_allclose(out["translation"].numpy()[0], expected, atol=1e-4)
    warped = ops.warp(moving_ball, out["ddf"])
    assert metrics.dice(fixed_ball, warped).numpy()[0] > 0.95
    assert metrics.dice(fixed_ball, ops.warp(moving_ball, tf.zeros_like(out["ddf"]))).numpy()[0] \
        < 0.2


def _centre(shape):
    return (np.array(shape) - 1) / 2


def test_serialises_and_is_built_by_name(rng):
    fixed_shape, moving_shape = SHAPES[3]
    moving = rng.random((1, *moving_shape, 1)).astype(np.float32)
    fixed = rng.random((1, *fixed_shape, 1)).astype(np.float32)
    net = build_network("centroid_align", 3, fixed_shape=fixed_shape, num_channel_initial=2,
                        num_channel_segment=3, ddf_levels=[0, 2])
    assert isinstance(net, CentroidAlignNet)
    assert net.ddf_levels == (0, 2) and net.num_channel_segment == 3
    ddf = net([moving, fixed])
    clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(net))
    clone([moving, fixed])
    clone.set_weights(net.get_weights())
    np.testing.assert_allclose(clone([moving, fixed]).numpy(), ddf.numpy(), atol=1e-6)
    with pytest.raises(ValueError, match="num_channel_segment"):
        CentroidAlignNet(3, num_channel_segment=0)
    with pytest.raises(ValueError, match="segment_resolution"):
        CentroidAlignNet(3, segment_resolution=1.5)
    jittered = build_network("centroid_align", 3, fixed_shape=fixed_shape, num_channel_initial=2,
                             num_channel_segment=3, translation_jitter=2.5, segment_padding=2)
    clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(jittered))
    assert clone.translation_jitter == 2.5 and clone.segment_padding == 2


@pytest.mark.parametrize(("resolution", "moving_grid", "fixed_grid"),
                         [(0.5, (8, 7, 6), (6, 8, 6)), (1.0, (16, 14, 12), (13, 15, 11))])
def test_segmentation_resolution(rng, resolution, moving_grid, fixed_grid):
    fixed_shape, moving_shape = SHAPES[3]
    moving = rng.random((1, *moving_shape, 1)).astype(np.float32)
    fixed = rng.random((1, *fixed_shape, 1)).astype(np.float32)
    net = _net(3, segment_resolution=resolution)
    out = net.forward([moving, fixed])
    assert net.grids == {"moving": moving_grid, "fixed": fixed_grid,
                         "register": fixed_shape}
    # The U-Net reads the resized image; its probabilities come back on the image's grid.
    probability = tf.sigmoid(net.segment_moving(ops.resize(moving, moving_grid)))
    np.testing.assert_allclose(net.segment(moving, fixed)[0].numpy(), probability.numpy(),
                               atol=1e-6)
    np.testing.assert_allclose(out["moving_segmentation"].numpy(),
                               ops.resize(probability, moving_shape).numpy(), atol=1e-6)
    assert out["fixed_segmentation"].shape == (1, *fixed_shape, 1)
    # A moving image of another size is segmented on the same grid.
    other = rng.random((1, 20, 9, 15, 1)).astype(np.float32)
    assert net.segment(other, fixed)[0].shape == (1, *moving_grid, 1)


@pytest.mark.parametrize("ndim", [2, 3])
def test_register_resolution_carries_a_coarse_field_onto_the_fixed_grid(rng, ndim):
    fixed_shape = SHAPES[ndim][0]
    moving, fixed = _random_pair(rng, ndim)
    net = _net(ndim, register_resolution=0.5)
    net([moving, fixed])
    grid = tuple(max(1, round(s * 0.5)) for s in fixed_shape)
    assert net.grids["register"] == grid
    # LocalNet trains on the coarse grid: its input is the resized pair.
    seen = []
    real = net.local_net

    def affine_field(inputs, training=None):
        # An affine field u(g) = A g + b in voxels of the coarse grid, recorded inputs.
        seen.append([x.shape for x in inputs])
        index = np.stack(np.meshgrid(*[np.arange(g, dtype=np.float32) for g in grid],
                                     indexing="ij"), -1)
        return tf.constant((index @ matrix.T + offset)[None], tf.float32)

    matrix = rng.uniform(-0.2, 0.2, (ndim, ndim)).astype(np.float32)
    offset = rng.uniform(-1.0, 1.0, ndim).astype(np.float32)
    object.__setattr__(net, "local_net", affine_field)
    try:
        ddf = net.register(ops.resize(moving, fixed_shape), fixed).numpy()[0]
    finally:
        object.__setattr__(net, "local_net", real)
    assert seen == [[(1, *grid, 1), (1, *grid, 1)]]
    # Independent expectation: fixed voxel x sits at g = (x + 0.5) R / S - 0.5 of the coarse
    # grid; a displacement of u(g) coarse voxels is u(g) S / R fixed voxels. Linear resizing
    # is exact for an affine field between the outermost coarse centres.
    size, coarse = np.array(fixed_shape, np.float64), np.array(grid, np.float64)
    x = np.stack(np.meshgrid(*[np.arange(s) for s in fixed_shape], indexing="ij"), -1)
    g = (x + 0.5) * coarse / size - 0.5
    expected = (g @ matrix.T.astype(np.float64) + offset) * size / coarse
    inside = np.all((g >= 0) & (g <= coarse - 1), axis=-1)
    assert inside.sum() > 0.2 * inside.size
    np.testing.assert_allclose(ddf[inside], expected[inside], atol=1e-4)
    # At resolution 1 LocalNet sees the fixed grid, whatever the fixed size.
    full = _net(ndim)
    full([moving, fixed])
    assert full.grids["register"] == fixed_shape
    with pytest.raises(ValueError, match="register_resolution"):
        _net(ndim, register_resolution=0.0)
    clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(net))
    assert clone.register_resolution == 0.5


@pytest.mark.parametrize("ndim", [2, 3])
def test_segment_padding_repeats_the_edges_and_crops_the_logits(rng, ndim):
    fixed_shape, moving_shape = SHAPES[ndim]
    moving, fixed = _random_pair(rng, ndim, batch=2)
    net = _net(ndim, segment_padding=3)
    p_moving, p_fixed = net.segment(moving, fixed)
    for role, image, got in (("moving", moving, p_moving), ("fixed", fixed, p_fixed)):
        grid = net.grids[role]
        assert got.shape == (2, *grid, 1)
        small = ops.resize(image, grid).numpy()
        padded = np.pad(small, [(0, 0)] + [(3, 3)] * ndim + [(0, 0)], mode="edge")
        logits = getattr(net, f"segment_{role}")(padded).numpy()
        expected = 1.0 / (1.0 + np.exp(-logits[(slice(None),) + (slice(3, -3),) * ndim]))
        np.testing.assert_allclose(got.numpy(), expected, atol=1e-5)
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="segment_padding"):
            _net(ndim, segment_padding=bad)


# ---- data: label 0 beside the sampled label, augmented with it ------------------------------


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("data"))


def _paired(root: Path) -> PairedDataset:
    return PairedDataset(*(root / d for d in ("moving_images", "fixed_images", "moving_labels",
                                               "fixed_labels")))


def test_batches_carry_label_0_whatever_label_was_sampled(dataset):
    paired = _paired(dataset)
    cache = CaseCache(paired)
    batch = cache.batch([0, 1, 2], [1, 0, 1], segmentation_labels=True)
    for role in ("moving", "fixed"):
        labels = cache.moving_labels if role == "moving" else cache.fixed_labels
        for k, case in enumerate([0, 1, 2]):
            np.testing.assert_array_equal(batch[f"{role}_seg_label"][k, ..., 0],
                                          labels[case][..., 0])
    assert "moving_seg_label" not in cache.batch([0], [1])
    element = next(iter(make_train_dataset(paired, 2, seed=0, segmentation_labels=True)))
    assert element["moving_seg_label"].shape == element["moving_label"].shape
    assert element["fixed_seg_label"].shape == element["fixed_label"].shape


def test_augmentation_moves_label_0_with_its_image(dataset):
    cache = CaseCache(_paired(dataset))
    # Label index 0 is sampled, so the sampled label and label 0 are the same volume and
    # must come out of the augmentation identical, and equal to the run without label 0.
    batch = cache.batch([0, 3], [0, 0], segmentation_labels=True)
    seed = step_seed(5, 2)
    out = augment_batch(batch, 0.2, seed, translation=2.0)
    plain = augment_batch({k: v for k, v in batch.items() if "seg" not in k}, 0.2, seed,
                          translation=2.0)
    for role in ("moving", "fixed"):
        np.testing.assert_array_equal(out[f"{role}_seg_label"].numpy(),
                                      out[f"{role}_label"].numpy())
        np.testing.assert_array_equal(out[f"{role}_label"].numpy(),
                                      plain[f"{role}_label"].numpy())
        np.testing.assert_array_equal(out[f"{role}_image"].numpy(),
                                      plain[f"{role}_image"].numpy())
    assert not np.array_equal(out["moving_label"].numpy(), batch["moving_label"])


# ---- config and training ---------------------------------------------------------------------


def test_segmentation_weight_needs_the_segmenting_network(tmp_path, dataset):
    ini = write_config(tmp_path / "a.ini", dataset, Loss={"segmentation_weight": "1"})
    # The key is an option of centroid_align: a file with another network names its owner.
    with pytest.raises(ConfigError, match=r"\[Loss\] segmentation_weight = '1': an option of "
                                          r"network_type = centroid_align.*network_type = local"):
        config.load(ini)
    with pytest.raises(ConfigError, match=r"segmentation_weight"):
        config.load(write_config(tmp_path / "b.ini", dataset,
                                 Loss={"segmentation_weight": "-1"}))


HALF_GRID_NETWORK = {"network_type": "centroid_align", "num_channel_initial": "2",
                     "num_channel_segment": "2", "register_resolution": "0.5"}
TWO_PHASE_LOSS = {"segmentation_weight": "0.5", "segmentation_only_steps": "1"}


# Three traced graphs (two phases and the BatchNorm pass) and three checkpoints: make test-slow.
# The objectives of both phases are checked without training by the next test.
@pytest.mark.slow
def test_two_phase_training_with_frozen_segmentations_on_a_half_grid(tmp_path, dataset):
    # One run for both phases: step 1 trains the segmentations alone (segmentation_only_steps
    # = 1); steps 2-3 train LocalNet alone (freeze_segmentations), which registers on a grid
    # of half the fixed shape (register_resolution).
    network, loss = HALF_GRID_NETWORK, TWO_PHASE_LOSS
    ini = write_config(tmp_path / "run.ini", dataset, Network=network,
                       Loss={**loss, "freeze_segmentations": "true"},
                       Train={"total_iterations": "3", "freq_info_print": "1",
                              "freq_model_save": "1"})
    cfg = config.load(ini)
    result = train(cfg, log=lambda line: None)
    history = dict(result.history)
    assert set(history[1]) == {"segmentation_loss", "loss"}
    assert history[1]["loss"] == pytest.approx(0.5 * history[1]["segmentation_loss"], rel=1e-5)
    # The second phase logs the segmentation loss but leaves it out of the objective.
    for step in (2, 3):
        assert history[step]["loss"] == pytest.approx(
            history[step]["label_loss"] + 0.5 * history[step]["regulariser"], rel=1e-4)
        assert 0.0 < history[step]["segmentation_loss"] < 1.0
    run = load_trained_run(tmp_path / "run")
    assert isinstance(run.models["model"], CentroidAlignNet)
    assert run.models["model"].num_channel_segment == 2
    assert run.models["model"].register_resolution == 0.5
    # Between the checkpoints of steps 1 and 3, every segmentation variable (batch-norm
    # statistics included) is unchanged and LocalNet's weights moved.
    checkpoints = tmp_path / "run" / "checkpoints"

    def variables(step):
        reader = tf.train.load_checkpoint(str(checkpoints / f"model.ckpt-{step}"))
        return {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()
                if name.startswith("model/") and "OPTIMIZER_SLOT" not in name}

    first, last = variables(1), variables(3)
    segment = [name for name in first if "segment_" in name]
    local = [name for name in first if "local_net" in name]
    assert segment and local
    for name in segment:
        np.testing.assert_array_equal(first[name], last[name], err_msg=name)
    assert any(not np.array_equal(first[name], last[name]) for name in local)


def test_objectives_of_the_two_phases_with_frozen_and_unfrozen_segmentations(tmp_path, dataset):
    network, loss = HALF_GRID_NETWORK, TWO_PHASE_LOSS
    cfg = config.load(write_config(tmp_path / "run.ini", dataset, Network=network,
                                   Loss={**loss, "freeze_segmentations": "true"}))
    # The frozen objective sends no gradient to the segmentations.
    method = LabelDriven(cfg)
    method.prepare_data()
    method.models = method.build()
    assert method.schedule_restarts() == (1,)
    model = method.models["model"]
    batch = {**method.source.cache.batch([0, 1], [1, 1], segmentation_labels=True),
             "spacing": tf.ones([2, 3])}
    segment_vars = model.segment_moving.trainable_variables + model.segment_fixed.trainable_variables
    with tf.GradientTape() as tape:
        mean = tf.reduce_mean(method.phase_loss_terms(1)(batch)["loss"])
    assert all(g is None for g in tape.gradient(mean, segment_vars))

    # Unfrozen, the second phase's objective is the whole loss, and the method's term is the
    # mean of the two Dice losses of the network's segmentations, per pair.
    method = LabelDriven(config.load(write_config(tmp_path / "unfrozen.ini", dataset,
                                                  Network=network, Loss=loss)))
    method.prepare_data()
    method.models = method.build()
    assert method.phase_loss_terms(1) == method.loss_terms
    model = method.models["model"]
    out = model.forward([batch["moving_image"], batch["fixed_image"]], training=True)
    expected = 0.5 * (dice_loss(batch["moving_seg_label"], out["moving_segmentation"])
                      + dice_loss(batch["fixed_seg_label"], out["fixed_segmentation"]))
    assert float(expected[0]) != float(expected[1])  # per pair, not averaged over the batch
    local_vars = model.local_net.trainable_variables
    segment_vars = model.segment_moving.trainable_variables + model.segment_fixed.trainable_variables
    with tf.GradientTape() as tape:
        terms = method.loss_terms(batch)
        mean = tf.reduce_mean(terms["loss"])
    np.testing.assert_allclose(terms["segmentation_loss"].numpy(), expected.numpy(), rtol=1e-5)
    np.testing.assert_allclose(
        terms["loss"].numpy(), (terms["label_loss"] + 0.5 * terms["regulariser"]
                                + 0.5 * terms["segmentation_loss"]).numpy(), rtol=1e-4)
    gradients = tape.gradient(mean, local_vars + segment_vars)
    assert all(g is not None for g in gradients)
    # The first phase's objective is the same Dice loss from the segmentations alone: its
    # gradient reaches the segmentation U-Nets and not LocalNet, which it never runs.
    with tf.GradientTape() as tape:
        first = method.phase_loss_terms(0)(batch)
        mean = tf.reduce_mean(first["loss"])
    assert set(first) == {"segmentation_loss", "loss"}
    np.testing.assert_allclose(first["segmentation_loss"].numpy(), expected.numpy(), rtol=1e-5)
    np.testing.assert_allclose(first["loss"].numpy(), 0.5 * expected.numpy(), rtol=1e-5)
    segment = model.segment_fixed.trainable_variables
    gradients = tape.gradient(mean, local_vars + segment)
    assert all(g is None for g in gradients[:len(local_vars)])
    assert all(g is not None for g in gradients[len(local_vars):])
    assert any(float(tf.reduce_max(tf.abs(g))) > 0 for g in gradients[len(local_vars):])
    with pytest.raises(ConfigError, match=r"freeze_segmentations.*segmentation_only_steps > 0"):
        config.load(write_config(tmp_path / "bad.ini", dataset,
                                 Network={"network_type": "centroid_align"},
                                 Loss={"segmentation_weight": "1",
                                       "freeze_segmentations": "true"}))


def test_segmentation_only_steps_config_checks(tmp_path, dataset):
    network = {"network_type": "centroid_align"}
    with pytest.raises(ConfigError, match=r"segmentation_only_steps = '5'.*segmentation_weight"):
        config.load(write_config(tmp_path / "a.ini", dataset, Network=network,
                                 Loss={"segmentation_only_steps": "5"}))
    loss = {"segmentation_weight": "1", "segmentation_only_steps": "5"}
    with pytest.raises(ConfigError, match=r"fewer than \[Train\] total_iterations = 5"):
        config.load(write_config(tmp_path / "b.ini", dataset, Network=network, Loss=loss,
                                 Train={"total_iterations": "5"}))
    with pytest.raises(ConfigError, match=r"longer than \[Train\] warmup_steps = 5"):
        config.load(write_config(tmp_path / "c.ini", dataset, Network=network, Loss=loss,
                                 Train={"total_iterations": "20", "lr_schedule": "cosine",
                                        "warmup_steps": "5"}))
    cfg = config.load(write_config(tmp_path / "d.ini", dataset, Network=network, Loss=loss,
                                   Train={"total_iterations": "20", "lr_schedule": "cosine",
                                          "warmup_steps": "4"}))
    assert cfg["Loss"]["segmentation_only_steps"] == 5


@pytest.mark.slow
def test_one_step_on_the_shared_real_data(tmp_path, mrus_sample_dir):
    ini = write_config(tmp_path / "real.ini", Path(mrus_sample_dir),
                       Network={"network_type": "centroid_align", "num_channel_initial": "2",
                                "num_channel_segment": "2"},
                       Loss={"segmentation_weight": "1"},
                       Train={"total_iterations": "1", "minibatch_size": "2"})
    values = train(config.load(ini), log=lambda line: None).last_values
    assert 0.0 < values["segmentation_loss"] <= 1.0 and np.isfinite(values["loss"])


# The shipped configs register on the full grid; the half grid (trained in the default suite by
# the two-phase test above) is exported in `make test-slow`.
@pytest.mark.parametrize("register_resolution",
                         [1.0, pytest.param(0.5, marks=pytest.mark.slow)])
def test_exported_signature_returns_the_keras_ddf(tmp_path, rng, register_resolution):
    """The SavedModel of a centroid_align network (segmentations, centroids, translation and
    LocalNet inside the graph, on a coarser grid for the real-time config) returns the Keras
    model's DDF."""
    fixed_shape, moving_shape = SHAPES[3]
    net = _net(3, register_resolution=register_resolution)
    moving = rng.random((1, *moving_shape, 1)).astype(np.float32)
    fixed = rng.random((1, *fixed_shape, 1)).astype(np.float32)
    net([moving, fixed])
    # LocalNet's heads start at zero; random ones make its (resized) field part of the answer.
    for head in net.local_net.ddf_heads:
        for weight in head.weights:
            weight.assign(rng.normal(0, 0.05, weight.shape).astype(np.float32))
    path = export.export_model(net, tmp_path, "ca", moving_shape=moving_shape,
                               fixed_shape=fixed_shape, step=1)
    served = tf.saved_model.load(str(path)).signatures["serving_default"]
    got = served(moving_image=tf.constant(moving), fixed_image=tf.constant(fixed))["ddf"]
    expected = net([normalise_intensity(moving[0])[None], normalise_intensity(fixed[0])[None]])
    assert np.abs(expected.numpy()).max() > 0.1  # the translation really moves voxels
    assert np.abs(net.forward([moving, fixed])["ddf_local"].numpy()).max() > 0.05
    np.testing.assert_allclose(got.numpy(), expected.numpy(), atol=1e-4)


def test_the_shipped_mrus_recipe_uses_the_network_and_its_loss():
    cfg = config.load(Path(__file__).resolve().parents[1] / "configs" / "mrus.ini")
    assert cfg["Network"]["network_type"] == "centroid_align"
    assert cfg["Loss"]["segmentation_weight"] > 0
    # Two phases: the segmentations alone, then the whole network.
    assert 0 < cfg["Loss"]["segmentation_only_steps"] < cfg["Train"]["total_iterations"]
