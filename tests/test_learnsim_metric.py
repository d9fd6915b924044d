"""learnsim's similarity metric: the encoder (parameter count, Dirac initialisation, replicate
padding, serialisation) and the data terms (NumPy references, identity at initialisation, masks,
frozen and trainable use as an image loss)."""

from __future__ import annotations

import itertools

import keras
import numpy as np
import pytest

from labelreg import ops
from labelreg._tf import tf
from labelreg.losses.learnsim import LearnedSimilarity, learned_lcc, learned_ssd
from labelreg.losses.registry import build_loss
from labelreg.networks.learnsim import (
    DiracConv,
    ScaledDirac,
    SimilarityEncoder,
    replicate_pad,
)

SHAPES = {2: (12, 10), 3: (10, 9, 8)}
NDIMS = [2, 3]


def make_encoder(ndim, seed=5, **kwargs):
    enc = SimilarityEncoder(ndim, seed=seed, **kwargs)
    enc(np.zeros((1, *SHAPES[ndim], 1), np.float32))
    return enc


def images(rng, ndim, batch=2):
    """Two random images in [0, 1] and a mask with a zeroed corner block."""
    shape = (batch, *SHAPES[ndim], 1)
    fixed = rng.random(shape, dtype=np.float32)
    warped = rng.random(shape, dtype=np.float32)
    mask = np.ones(shape, np.float32)
    mask[(slice(None), *(slice(0, 4),) * ndim)] = 0.0
    return fixed, warped, mask


# --------------------------------------------------------------------------------------------
# NumPy references
# --------------------------------------------------------------------------------------------


def np_box_sum(x, window):
    """Sum over the centred window of every voxel, edge-padded: explicit shifted sums."""
    ndim = x.ndim - 2
    r = window // 2
    padded = np.pad(x, [(0, 0)] + [(r, r)] * ndim + [(0, 0)], mode="edge")
    out = np.zeros_like(x, dtype=np.float64)
    for offset in itertools.product(range(window), repeat=ndim):
        index = tuple(slice(o, o + s) for o, s in zip(offset, x.shape[1:-1], strict=True))
        out += padded[(slice(None), *index)]
    return out


def np_ssd(f, w, mask=None):
    z = 0.5 * (f.astype(np.float64) - w) ** 2
    z = z if mask is None else z * mask
    return z.reshape(len(z), -1).sum(1)


def np_lcc(f, w, mask=None, window=3):
    f, w = f.astype(np.float64), w.astype(np.float64)
    n = window ** (f.ndim - 2)
    df = f - np_box_sum(f, window) / n
    dw = w - np_box_sum(w, window) / n
    cross = np_box_sum(df * dw, window)
    var_f = np_box_sum(df * df, window)
    var_w = np_box_sum(dw * dw, window)
    z = cross**2 / (var_f * var_w + 1e-5)
    z = z if mask is None else z * mask
    return -z.reshape(len(z), -1).sum(1)


# --------------------------------------------------------------------------------------------
# Encoder
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ndim, count", [(2, 928), (3, 2728)])
def test_parameter_count(ndim, count):
    enc = make_encoder(ndim)
    assert enc.count_params() == count
    assert sum(int(np.prod(w.shape)) for w in enc.trainable_weights) == count
    k = 3**ndim
    assert [tuple(b.kernel.shape) for b in enc.blocks] == [
        (*(3,) * ndim, 1, 4),
        (*(3,) * ndim, 4, 8),
        (*(3,) * ndim, 8, 8),
    ]
    assert count == (k * 4 + 4) + (k * 32 + 8) + (k * 64 + 8) + 8


@pytest.mark.parametrize("ndim", NDIMS)
def test_dirac_initialisation_and_identity_for_non_negative_images(ndim, rng):
    enc = make_encoder(ndim)
    centre = (1,) * ndim
    for block in enc.blocks:
        kernel = block.kernel.numpy()
        tap = kernel[centre]  # [in, out]
        assert (tap >= 0).all()
        np.testing.assert_allclose(tap.sum(axis=-1), 1.0, rtol=1e-6)
        others = kernel.copy()
        others[centre] = 0.0
        assert 0 < np.abs(others).max() < 1e-6  # noise of scale 1e-7
        assert 0 < np.abs(block.bias.numpy()).max() < 1e-6
    agg = enc.aggregation.numpy()
    assert agg.shape == (8, 1)
    assert 0 < np.abs(agg - 1.0).max() < 1e-6

    x = rng.random((2, *SHAPES[ndim], 1), dtype=np.float32)
    out = enc(x).numpy()
    assert out.shape == x.shape
    np.testing.assert_allclose(out, x, atol=1e-5)
    features = enc.encode(x).numpy()
    assert features.shape == (2, *SHAPES[ndim], 8)
    assert (features > -1e-6).all()
    np.testing.assert_allclose(features.sum(-1, keepdims=True), x, atol=1e-5)


def test_seeds_make_initial_weights_reproducible():
    a, b, c = make_encoder(2, seed=1), make_encoder(2, seed=1), make_encoder(2, seed=2)
    for wa, wb, wc in zip(a.weights, b.weights, c.weights, strict=True):
        np.testing.assert_array_equal(wa.numpy(), wb.numpy())
        assert not np.array_equal(wa.numpy(), wc.numpy())
    # Global seeding covers seed=None.
    keras.utils.set_random_seed(3)
    d = make_encoder(2, seed=None)
    keras.utils.set_random_seed(3)
    e = make_encoder(2, seed=None)
    for wd, we in zip(d.weights, e.weights, strict=True):
        np.testing.assert_array_equal(wd.numpy(), we.numpy())


@pytest.mark.parametrize("ndim", NDIMS)
def test_replicate_pad_matches_numpy_edge(ndim, rng):
    x = rng.standard_normal((2, *SHAPES[ndim], 3)).astype(np.float32)
    want = np.pad(x, [(0, 0)] + [(2, 2)] * ndim + [(0, 0)], mode="edge")
    np.testing.assert_array_equal(replicate_pad(tf.constant(x), 2).numpy(), want)
    # Dynamic spatial sizes, inside a traced function.
    spec = tf.TensorSpec([None] * (ndim + 1) + [3], tf.float32)
    padded = tf.function(lambda t: replicate_pad(t, 2), input_signature=[spec])(x)
    np.testing.assert_array_equal(padded.numpy(), want)
    # crop_border undoes the padding and otherwise equals the NumPy slice.
    np.testing.assert_array_equal(ops.crop_border(tf.constant(want), 2).numpy(), x)
    np.testing.assert_array_equal(ops.crop_border(tf.constant(x), 1).numpy(),
                                  x[(slice(None),) + (slice(1, -1),) * ndim])
    np.testing.assert_array_equal(ops.crop_border(tf.constant(x), 0).numpy(), x)


@pytest.mark.parametrize("ndim", NDIMS)
def test_block_border_equals_edge_padded_convolution(ndim, rng):
    """A hand-set kernel: every output voxel, border ones included, matches NumPy."""
    enc = make_encoder(ndim)
    block = enc.blocks[1]  # 4 -> 8
    kernel = rng.standard_normal(block.kernel.shape).astype(np.float32)
    bias = rng.standard_normal(block.bias.shape).astype(np.float32)
    block.kernel.assign(kernel)
    block.bias.assign(bias)
    x = rng.standard_normal((2, *SHAPES[ndim], 4)).astype(np.float32)
    got = block(x).numpy()

    padded = np.pad(x, [(0, 0)] + [(1, 1)] * ndim + [(0, 0)], mode="edge").astype(np.float64)
    want = np.zeros((*x.shape[:-1], 8)) + bias
    for offset in itertools.product(range(3), repeat=ndim):
        index = tuple(slice(o, o + s) for o, s in zip(offset, SHAPES[ndim], strict=True))
        want += padded[(slice(None), *index)] @ kernel[offset]
    want = np.where(want > 0, want, 0.2 * want)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    # A zero-padded ("same") convolution differs at the border, so the test tells them apart.
    same = tf.nn.convolution(x, kernel, padding="SAME").numpy() + bias
    same = np.where(same > 0, same, 0.2 * same)
    assert np.abs(same - got).max() > 0.1
    interior = (slice(None), *(slice(1, -1),) * ndim)
    np.testing.assert_allclose(same[interior], got[interior], rtol=1e-4, atol=1e-4)
    # The encoder's features go through the same blocks.
    h = enc.blocks[0](x[..., :1])
    np.testing.assert_allclose(enc.encode(x[..., :1]).numpy(), enc.blocks[2](block(h)).numpy())


@pytest.mark.parametrize("ndim", NDIMS)
def test_config_round_trip_and_keras_file(ndim, rng, tmp_path):
    enc = make_encoder(ndim, features=(3, 5), slope=0.1, init_scale=1e-6)
    for block in enc.blocks:  # move away from the initialisation
        block.kernel.assign(rng.standard_normal(block.kernel.shape).astype(np.float32) * 0.2)
    config = enc.get_config()
    assert config["features"] == [3, 5] and config["slope"] == 0.1 and config["ndim"] == ndim
    clone = SimilarityEncoder.from_config(config)
    assert clone.get_config() == config
    x = rng.random((1, *SHAPES[ndim], 1), dtype=np.float32)
    clone(x)
    assert clone.count_params() == enc.count_params()

    path = str(tmp_path / "learnsim.keras")
    enc.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded, SimilarityEncoder)
    np.testing.assert_array_equal(loaded(x).numpy(), enc(x).numpy())
    np.testing.assert_array_equal(loaded.encode(x).numpy(), enc.encode(x).numpy())
    block = DiracConv.from_config(enc.blocks[0].get_config())
    assert block.get_config() == enc.blocks[0].get_config()


def test_bad_arguments():
    with pytest.raises(ValueError, match="ndim must be 2 or 3"):
        SimilarityEncoder(ndim=4)
    with pytest.raises(ValueError, match="features must be a non-empty sequence"):
        SimilarityEncoder(features=())
    with pytest.raises(ValueError, match=r"features=\(4, 0\)"):
        SimilarityEncoder(features=(4, 0))
    with pytest.raises(ValueError, match="init_scale must be a finite number"):
        SimilarityEncoder(init_scale=-1.0)
    with pytest.raises(ValueError, match="seed must be None or a non-negative integer"):
        SimilarityEncoder(seed=1.5)
    with pytest.raises(ValueError, match="kernel_size must be odd"):
        DiracConv(2, 4, kernel_size=2)
    with pytest.raises(ValueError, match="odd sizes"):
        ScaledDirac()((2, 2, 1, 4))
    with pytest.raises(ValueError, match="odd sizes"):
        ScaledDirac()((4,))
    with pytest.raises(ValueError, match="must have rank 5"):
        SimilarityEncoder(3)(np.zeros((1, 8, 8, 1), np.float32))


# --------------------------------------------------------------------------------------------
# Data terms
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ndim", NDIMS)
def test_plain_terms_match_numpy(ndim, rng):
    fixed, warped, mask = images(rng, ndim)
    for m in (None, mask):
        np.testing.assert_allclose(
            learned_ssd(None, fixed, warped, m).numpy(), np_ssd(fixed, warped, m), rtol=1e-5
        )
        for window in (3, 5):
            np.testing.assert_allclose(
                learned_lcc(None, fixed, warped, m, window=window).numpy(),
                np_lcc(fixed, warped, m, window),
                rtol=1e-4,
            )
    value = learned_lcc(None, fixed, fixed).numpy()
    assert value.shape == (2,) and value.dtype == np.float32
    # Identical non-flat images: about -1 per voxel (each window's squared correlation is 1).
    n = np.prod(SHAPES[ndim])
    assert (value < -0.9 * n).all() and (value > -1.0001 * n).all()
    np.testing.assert_allclose(learned_ssd(None, fixed, fixed).numpy(), 0.0)


@pytest.mark.parametrize("ndim", NDIMS)
@pytest.mark.parametrize("term", ["ssd", "lcc"])
def test_learned_terms_equal_plain_terms_at_initialisation(ndim, term, rng):
    enc = make_encoder(ndim)
    fixed, warped, mask = images(rng, ndim)
    fn = learned_ssd if term == "ssd" else learned_lcc
    for m in (None, mask):
        plain = fn(None, fixed, warped, m).numpy()
        learned = fn(enc, fixed, warped, m).numpy()
        np.testing.assert_allclose(learned, plain, rtol=1e-4)
        frozen = LearnedSimilarity(enc, term=term)(fixed, warped, m).numpy()
        np.testing.assert_allclose(frozen, learned, rtol=1e-6)
        default_mask = LearnedSimilarity(enc, term=term, mask=m, frozen=False)(fixed, warped)
        np.testing.assert_allclose(default_mask.numpy(), learned, rtol=1e-6)


@pytest.mark.parametrize("term", ["ssd", "lcc"])
def test_mask_restricts_the_sum(term, rng):
    ndim = 3
    fixed, warped, mask = images(rng, ndim)
    fn = learned_ssd if term == "ssd" else learned_lcc
    full = fn(None, fixed, warped).numpy()
    np.testing.assert_allclose(fn(None, fixed, warped, np.ones_like(mask)).numpy(), full)
    inside = fn(None, fixed, warped, mask).numpy()
    outside = fn(None, fixed, warped, 1.0 - mask).numpy()
    assert np.all(np.abs(outside) > 0) and np.all(np.abs(inside) < np.abs(full))
    np.testing.assert_allclose(inside + outside, full, rtol=1e-5)
    # A one-sample mask broadcasts over the batch.
    np.testing.assert_allclose(fn(None, fixed, warped, mask[:1]).numpy(), inside, rtol=1e-6)
    if term == "ssd":
        # Voxel-wise: changing the warped image where the mask is 0 changes nothing.
        edited = np.where(mask > 0, warped, 5.0).astype(np.float32)
        np.testing.assert_allclose(fn(None, fixed, edited, mask).numpy(), inside, rtol=1e-6)


def test_bad_loss_arguments(rng):
    fixed, warped, mask = images(rng, 2)
    with pytest.raises(ValueError, match="term must be one of"):
        LearnedSimilarity(None, term="ncc")
    with pytest.raises(ValueError, match="window must be an odd integer"):
        learned_lcc(None, fixed, warped, window=4)
    with pytest.raises(ValueError, match="mask must have shape"):
        learned_ssd(None, fixed, warped, mask[:, :6])
    with pytest.raises(ValueError, match="must have the same shape"):
        learned_ssd(None, fixed, warped[:, :6])
    with pytest.raises(TypeError, match="encoder must be None"):
        LearnedSimilarity("encoder")


# --------------------------------------------------------------------------------------------
# As a loss: frozen and trainable
# --------------------------------------------------------------------------------------------


def smooth_pair(rng, shape):
    """A smooth image in [0, 1] and a copy shifted by two voxels along the first axis."""
    x = rng.random((1, *shape, 1)).astype(np.float32)
    for axis in range(1, len(shape) + 1):
        x = (x + np.roll(x, 1, axis) + np.roll(x, -1, axis)) / 3.0
    x = (x - x.min()) / (x.max() - x.min())
    return x, np.roll(x, 2, axis=1)


@pytest.mark.parametrize("term", ["ssd", "lcc"])
def test_frozen_encoder_is_untouched_while_a_ddf_is_optimised(term, rng):
    ndim = 2
    enc = make_encoder(ndim)
    for block in enc.blocks:  # a trained-looking metric, so that its gradients would be large
        block.kernel.assign_add(rng.standard_normal(block.kernel.shape).astype(np.float32) * 0.1)
    before = [w.numpy().copy() for w in enc.weights]
    loss_fn = LearnedSimilarity(enc, term=term)
    fixed, moving = smooth_pair(rng, SHAPES[ndim])
    ddf = tf.Variable(tf.zeros([1, *SHAPES[ndim], ndim]))
    optimizer = keras.optimizers.Adam(0.05)
    values = []
    with ops.xla_disabled():
        for _ in range(4):
            with tf.GradientTape() as tape:  # watches every variable read, the encoder's too
                loss = tf.reduce_sum(loss_fn(fixed, ops.warp(moving, ddf)))
            values.append(float(loss))
            # The tape did read the encoder's weights; the loss hands it no gradient for them.
            assert len(tape.watched_variables()) == len(enc.trainable_variables) + 1
            *encoder_grads, grad = tape.gradient(loss, [*enc.trainable_variables, ddf])
            assert len(encoder_grads) == 7 and all(g is None for g in encoder_grads)
            assert np.isfinite(grad.numpy()).all() and float(tf.reduce_max(tf.abs(grad))) > 0
            optimizer.apply_gradients([(grad, ddf)])
    assert float(tf.reduce_max(tf.abs(ddf))) > 0.05
    assert values[-1] < values[0]
    assert enc.trainable  # the loss does not change the flag
    for a, b in zip(before, enc.weights, strict=True):
        np.testing.assert_array_equal(a, b.numpy())


def test_frozen_gradient_matches_unfrozen_for_the_image_and_in_graph_mode(rng):
    enc = make_encoder(3)
    fixed, warped, mask = images(rng, 3, batch=1)
    frozen = LearnedSimilarity(enc, term="lcc", mask=mask)
    free = LearnedSimilarity(enc, term="lcc", mask=mask, frozen=False)
    w = tf.constant(warped)

    def grad_of(fn, image):
        with tf.GradientTape() as tape:
            tape.watch(image)
            loss = tf.reduce_sum(fn(fixed, image))
        return tape.gradient(loss, image)

    g_frozen, g_free = grad_of(frozen, w), grad_of(free, w)
    assert float(tf.reduce_max(tf.abs(g_frozen))) > 0
    np.testing.assert_allclose(g_frozen.numpy(), g_free.numpy(), rtol=1e-4, atol=1e-6)

    @tf.function
    def encoder_grads_are_none(f, image):
        with tf.GradientTape() as tape:  # graph mode: the tape watches the variables it reads
            loss = tf.reduce_sum(frozen(f, image))
        return [g is None for g in tape.gradient(loss, enc.trainable_variables)]

    assert all(encoder_grads_are_none(tf.constant(fixed), w))


@pytest.mark.parametrize("term", ["ssd", "lcc"])
def test_unfrozen_loss_trains_the_encoder(term, rng):
    ndim = 3
    enc = make_encoder(ndim)
    fixed, warped, _ = images(rng, ndim)
    loss_fn = LearnedSimilarity(enc, term=term, frozen=False)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(loss_fn(fixed, warped))
    grads = tape.gradient(loss, enc.trainable_variables)
    assert len(grads) == 7
    for g in grads:
        assert g is not None
        assert np.isfinite(g.numpy()).all()
    assert any(float(tf.reduce_max(tf.abs(g))) > 0 for g in grads)
    before = enc.aggregation.numpy().copy()
    keras.optimizers.SGD(1e-3).apply_gradients(zip(grads, enc.trainable_variables, strict=True))
    assert not np.array_equal(before, enc.aggregation.numpy())


def test_registered_as_a_factory_image_loss(rng):
    enc = make_encoder(2)
    fixed, warped, mask = images(rng, 2)
    loss = build_loss("learnsim", "image", encoder=enc, term="lcc", window=3)
    assert isinstance(loss, LearnedSimilarity) and loss.term == "lcc" and loss.frozen
    np.testing.assert_allclose(
        loss(fixed, warped).numpy(), learned_lcc(enc, fixed, warped).numpy(), rtol=1e-6
    )
    baseline = build_loss("learnsim", "image", encoder=None, term="ssd", mask=mask > 0)
    np.testing.assert_allclose(baseline(fixed, warped).numpy(), np_ssd(fixed, warped, mask))
