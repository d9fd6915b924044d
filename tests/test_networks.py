"""Networks: shapes (2-D/3-D, odd sizes, different moving/fixed shapes), initial values, blocks
against independent references, parameter counts, composition, registry and input errors."""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest
import tensorflow as tf
from scipy import ndimage

from labelreg import ops
from labelreg.errors import ConfigError
from labelreg.networks import (
    CompositeNet,
    GlobalNet,
    LocalNet,
    UNet,
    UNetBackbone,
    available_networks,
    build_network,
    get_network,
    register_network,
)
from labelreg.networks.layers import (
    Encoder,
    TransposedConv,
    additive_upsampling,
)

# Tiny widths keep the suite fast; one test below uses label-reg's real width.
SMALL = {
    LocalNet: {"num_channel_initial": 4},
    GlobalNet: {"num_channel_initial": 4},
    CompositeNet: {"num_channel_initial": 4, "num_channel_initial_global": 4},
    UNet: {"num_channel_initial": 4, "depth": 3},
}
NETS = list(SMALL)
# (fixed, moving) spatial shapes: even and equal; odd and different.
SHAPES = {
    3: [((8, 8, 8), (8, 8, 8)), ((17, 19, 15), (21, 20, 18))],
    2: [((16, 16), (16, 16)), ((17, 19), (21, 20))],
}
CASES = [(nd, fixed, moving) for nd in (2, 3) for fixed, moving in SHAPES[nd]]


def make_pair(rng, fixed_shape, moving_shape, batch=2, channels=1):
    moving = rng.random((batch, *moving_shape, channels), dtype=np.float32)
    fixed = rng.random((batch, *fixed_shape, 1), dtype=np.float32)
    return moving, fixed


def ceil_halvings(shape, times):
    out = tuple(shape)
    for _ in range(times):
        out = tuple(math.ceil(s / 2) for s in out)
    return out


# --------------------------------------------------------------------------------------------
# Shapes and initial values
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("net_cls", NETS, ids=lambda c: c.__name__)
@pytest.mark.parametrize("ndim,fixed_shape,moving_shape", CASES)
def test_output_shape_and_zero_at_init(rng, net_cls, ndim, fixed_shape, moving_shape):
    moving, fixed = make_pair(rng, fixed_shape, moving_shape)
    net = net_cls(ndim=ndim, **SMALL[net_cls])
    ddf = net([moving, fixed])
    assert tuple(ddf.shape) == (2, *fixed_shape, ndim)
    assert ddf.dtype == tf.float32
    # Zero-initialised heads (LocalNet, UNet) and the identity affine (GlobalNet) give an
    # exactly zero field, in both batch-norm modes.
    np.testing.assert_array_equal(ddf.numpy(), 0.0)
    np.testing.assert_array_equal(net([moving, fixed], training=True).numpy(), 0.0)


@pytest.mark.parametrize("net_cls", [GlobalNet, CompositeNet], ids=lambda c: c.__name__)
@pytest.mark.parametrize("ndim", [2, 3])
def test_theta_is_exact_identity_at_init(rng, net_cls, ndim):
    fixed_shape, moving_shape = SHAPES[ndim][1]
    moving, fixed = make_pair(rng, fixed_shape, moving_shape, batch=3)
    net = net_cls(ndim=ndim, fixed_shape=fixed_shape, **SMALL[net_cls])
    theta = net.theta([moving, fixed])
    expected = np.concatenate([np.eye(ndim), np.zeros((ndim, 1))], axis=1)
    np.testing.assert_array_equal(theta.numpy(), np.broadcast_to(expected, (3, ndim, ndim + 1)))
    out = net.forward([moving, fixed])
    np.testing.assert_array_equal(out["theta"].numpy(), theta.numpy())
    np.testing.assert_array_equal(out["ddf"].numpy(), 0.0)


def test_multichannel_moving_image(rng):
    moving, fixed = make_pair(rng, (12, 10), (9, 14), channels=3)
    net = LocalNet(ndim=2, num_channel_initial=4)
    assert tuple(net([moving, fixed]).shape) == (2, 12, 10, 2)
    # The first convolution sees the 3 moving channels and the fixed one.
    assert tuple(net.encoder.down_blocks[0].conv0.conv.kernel.shape) == (7, 7, 4, 4)


def test_dict_input_equals_list_input(rng):
    moving, fixed = make_pair(rng, (12, 10), (9, 14))
    net = LocalNet(ndim=2, num_channel_initial=4, ddf_levels=(0, 2))
    net([moving, fixed])
    perturb_heads(net, rng)
    a = net([moving, fixed])
    b = net({"moving_image": moving, "fixed_image": fixed})
    np.testing.assert_array_equal(a.numpy(), b.numpy())


@pytest.mark.parametrize("ndim,shape", [(3, (17, 19, 15)), (2, (33, 20))])
def test_encoder_levels(rng, ndim, shape):
    x = rng.random((1, *shape, 2), dtype=np.float32)
    bottom, skips = Encoder(ndim, 3)(x)
    for k, skip in enumerate(skips):
        assert tuple(skip.shape) == (1, *ceil_halvings(shape, k), 3 * 2**k)
    assert tuple(bottom.shape) == (1, *ceil_halvings(shape, 4), 48)


@pytest.mark.parametrize("levels", [(0,), (2, 4), (1, 3), (4,)])
def test_localnet_builds_up_blocks_down_to_finest_level(rng, levels):
    net = LocalNet(ndim=2, num_channel_initial=2, ddf_levels=levels)
    moving, fixed = make_pair(rng, (13, 11), (13, 11))
    assert tuple(net([moving, fixed]).shape) == (2, 13, 11, 2)
    assert net.up_levels == tuple(range(3, min(levels) - 1, -1))
    assert len(net.ddf_heads) == len(levels)


# --------------------------------------------------------------------------------------------
# Blocks against independent references
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("out_shape", [(9, 7, 6), (8, 8, 5), (5, 6), (11, 4)])
def test_transposed_conv_is_adjoint_of_same_strided_conv(rng, out_shape):
    """<conv(y), x> == <y, conv_transpose(x)> for the SAME stride-2 convolution from y's grid."""
    ndim = len(out_shape)
    in_shape = ceil_halvings(out_shape, 1)
    layer = TransposedConv(ndim, filters=3)
    x = rng.standard_normal((2, *in_shape, 5)).astype(np.float32)
    y = rng.standard_normal((2, *out_shape, 3)).astype(np.float32)
    tx = layer(x, y).numpy()
    assert tx.shape == (2, *out_shape, 3)
    # The forward convolution with the same kernel maps the 3 channels back to 5.
    conv_y = tf.nn.convolution(y, layer.kernel, strides=2, padding="SAME").numpy()
    assert conv_y.shape == x.shape
    np.testing.assert_allclose(np.sum(conv_y * x), np.sum(y * tx), rtol=1e-4)


@pytest.mark.parametrize("out_shape", [(9, 7, 6), (8, 8, 4), (7, 10)])
def test_transposed_conv_matches_keras_with_front_crop(rng, out_shape):
    """Same kernel in keras' ConvTranspose ("same", output 2 * in): crop 2*in - s in front."""
    ndim = len(out_shape)
    in_shape = ceil_halvings(out_shape, 1)
    ours = TransposedConv(ndim, filters=2)
    x = rng.standard_normal((1, *in_shape, 4)).astype(np.float32)
    like = np.zeros((1, *out_shape, 1), np.float32)
    got = ours(x, like).numpy()
    cls = keras.layers.Conv2DTranspose if ndim == 2 else keras.layers.Conv3DTranspose
    ref_layer = cls(2, 3, strides=2, padding="same", use_bias=False)
    ref_layer.build((1, *in_shape, 4))
    ref_layer.kernel.assign(ours.kernel)
    ref = ref_layer(x).numpy()
    crop = tuple(slice(2 * i - s, 2 * i) for i, s in zip(in_shape, out_shape, strict=True))
    np.testing.assert_allclose(got, ref[(slice(None), *crop)], atol=1e-5)


@pytest.mark.parametrize("in_shape,out_shape", [((3, 4, 2), (5, 8, 3)), ((4, 3), (7, 6))])
def test_additive_upsampling_against_scipy(rng, in_shape, out_shape):
    x = rng.random((1, *in_shape, 4)).astype(np.float32)
    got = additive_upsampling(x, np.zeros((1, *out_shape, 2), np.float32)).numpy()
    zoom = [o / i for o, i in zip(out_shape, in_shape, strict=True)]

    def up(c):
        return ndimage.zoom(x[0, ..., c].astype(np.float64), zoom, order=1, mode="nearest",
                            grid_mode=True)

    ref = np.stack([up(0) + up(2), up(1) + up(3)], axis=-1)
    assert got.shape == (1, *out_shape, 2)
    np.testing.assert_allclose(got[0], ref, atol=1e-5)


# --------------------------------------------------------------------------------------------
# Parameter counts (hand-derived from label-reg's layer list)
# --------------------------------------------------------------------------------------------


def encoder_trainable(c, ndim, in_channels=2):
    """Four down blocks (conv 7^n/3^n, conv, conv) and the bottom conv, each with a BN beta."""
    k, k7 = 3**ndim, 7**ndim
    nc = [c * 2**i for i in range(5)]
    total, cin = 0, in_channels
    for i in range(4):
        total += (k7 if i == 0 else k) * cin * nc[i] + 2 * k * nc[i] ** 2 + 3 * nc[i]
        cin = nc[i]
    return total + k * nc[3] * nc[4] + nc[4]


def localnet_trainable(c, ndim, in_channels=2, levels=(0, 1, 2, 3, 4)):
    k = 3**ndim
    nc = [c * 2**i for i in range(5)]
    total = encoder_trainable(c, ndim, in_channels)
    for i in range(min(levels), 4):  # up blocks: deconv + conv + conv, each with a BN beta
        total += k * nc[i + 1] * nc[i] + 2 * k * nc[i] ** 2 + 3 * nc[i]
    return total + sum(k * nc[i] * ndim + ndim for i in levels)  # DDF heads with bias


def test_localnet_default_width_parameter_count_and_zero_ddf(rng):
    net = LocalNet(ndim=3)  # label-reg's width: 32
    moving, fixed = make_pair(rng, (16, 16, 16), (16, 16, 16), batch=1)
    ddf = net([moving, fixed])
    np.testing.assert_array_equal(ddf.numpy(), 0.0)
    trainable = sum(int(np.prod(w.shape)) for w in net.trainable_weights)
    assert trainable == localnet_trainable(32, 3) == 18_906_351  # label-reg: "about 18.9 M"
    # Non-trainable: the moving mean and variance of every batch-norm channel.
    assert net.count_params() - trainable == 2 * sum(
        int(np.prod(w.shape)) for w in net.weights if "beta" in w.path
    )


@pytest.mark.parametrize("ndim,levels", [(2, (0,)), (3, (1, 4)), (2, (0, 1, 2, 3, 4))])
def test_localnet_parameter_count_small(rng, ndim, levels):
    net = LocalNet(ndim=ndim, num_channel_initial=3, ddf_levels=levels)
    moving, fixed = make_pair(rng, (9,) * ndim, (9,) * ndim, batch=1)
    net([moving, fixed])
    trainable = sum(int(np.prod(w.shape)) for w in net.trainable_weights)
    assert trainable == localnet_trainable(3, ndim, levels=levels)


def test_globalnet_default_width_parameter_count(rng):
    shape = (47, 63, 44)  # label-reg's example: a 3x4x3x128 bottleneck
    net = GlobalNet(ndim=3, fixed_shape=shape)
    moving, fixed = make_pair(rng, shape, (30, 30, 30), batch=1)
    net([moving, fixed])
    dense = (3 * 4 * 3 * 128) * 12 + 12
    trainable = sum(int(np.prod(w.shape)) for w in net.trainable_weights)
    assert trainable == encoder_trainable(8, 3) + dense
    assert 0.6e6 < trainable < 0.7e6  # label-reg: "about 0.65 M"


# --------------------------------------------------------------------------------------------
# CompositeNet composes its fields
# --------------------------------------------------------------------------------------------


def perturb_heads(net, rng, scale=0.05):
    """Give the zero-initialised DDF heads small random weights (a non-trivial field)."""
    for head in net.ddf_heads:
        head.kernel.assign(scale * rng.standard_normal(head.kernel.shape).astype(np.float32))
        head.bias.assign(scale * rng.standard_normal(head.bias.shape).astype(np.float32))


@pytest.mark.parametrize("ndim", [2, 3])
def test_composite_is_true_composition(rng, ndim):
    fixed_shape = (14, 15, 13)[:ndim]
    moving_shape = (16, 14, 13)[:ndim]
    net = CompositeNet(ndim=ndim, fixed_shape=fixed_shape, num_channel_initial=4,
                       num_channel_initial_global=4)
    # A linear intensity: linear interpolation reproduces it exactly inside the grid, so one
    # resampling by the composed field equals two successive resamplings there.
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in moving_shape], indexing="ij"), -1)
    slope = np.array([0.3, -0.2, 0.1][:ndim])
    moving = (grid @ slope + 5.0)[None, ..., None].astype(np.float32)
    fixed = rng.random((1, *fixed_shape, 1), dtype=np.float32)
    net([moving, fixed])
    n = ndim
    theta = np.concatenate([np.eye(n) * 0.97, np.full((n, 1), 0.6)], axis=1)
    theta[0, 1] = 0.03
    net.regressor.dense.bias.assign(net.regressor.bias_for_theta(theta))
    perturb_heads(net.local_net, rng)
    # The local field is linear in its head's weights: scale it to about 1.5 voxels at most.
    head = net.local_net.ddf_heads[0]
    factor = 1.5 / np.abs(net.forward([moving, fixed])["ddf_local"].numpy()).max()
    head.kernel.assign(head.kernel * factor)
    head.bias.assign(head.bias * factor)
    out = net.forward([moving, fixed])
    ddf, loc = out["ddf"].numpy(), out["ddf_local"].numpy()
    np.testing.assert_allclose(out["theta"].numpy()[0], theta, atol=1e-6)
    assert 1.0 < np.abs(loc).max() < 2.0  # the local field is not trivial

    one_step = net.warp(moving, ddf).numpy()
    two_steps = ops.warp(ops.warp(moving, out["ddf_global"]), out["ddf_local"]).numpy()
    # Where every sample of both paths stays inside the grids (with a margin for the corners
    # interpolated in the intermediate image), both equal the linear image.
    fgrid = np.stack(np.meshgrid(*[np.arange(s) for s in fixed_shape], indexing="ij"), -1)
    p = fgrid + ddf[0]
    q = fgrid + loc[0]
    inside = np.all((p >= 1.5) & (p <= np.array(moving_shape) - 2.5), -1)
    inside &= np.all((q >= 0) & (q <= np.array(fixed_shape) - 1), -1)
    assert inside.mean() > 0.3
    np.testing.assert_allclose(one_step[0, ..., 0][inside], two_steps[0, ..., 0][inside],
                               atol=1e-4)
    np.testing.assert_allclose(one_step[0, ..., 0][inside], (p @ slope + 5.0)[inside], atol=1e-4)
    # Analytic: ddf(x) = loc(x) + A (x + loc(x)) + t - (x + loc(x)).
    a, t = theta[:, :n], theta[:, n]
    expected = loc[0] + (q @ a.T + t - q)
    np.testing.assert_allclose(ddf[0][inside], expected[inside], atol=1e-4)
    # ... which is not the sum of the two fields label-reg used.
    assert np.abs(ddf - (out["ddf_global"].numpy() + loc)).max() > 1e-3


# --------------------------------------------------------------------------------------------
# UNet
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ndim,shape", [(2, (13, 18)), (3, (9, 12, 7))])
@pytest.mark.parametrize("pooling", [True, False])
def test_unet_backbone_features_and_output(rng, ndim, shape, pooling):
    net = UNetBackbone(ndim=ndim, num_channel_initial=3, depth=3, out_channels=4,
                       out_activation="softmax", pooling=pooling, use_batch_norm=not pooling)
    image = rng.random((2, *shape, 1), dtype=np.float32)
    out = net(image).numpy()
    assert out.shape == (2, *shape, 4)
    np.testing.assert_allclose(out.sum(-1), 1.0, atol=1e-5)  # softmax over classes
    assert out.std() > 0  # Glorot output (zero_init_output=False) is not constant
    feats = net.encode(image)
    assert [tuple(f.shape) for f in feats] == [
        (2, *ceil_halvings(shape, d), 3 * 2**d) for d in range(4)
    ]


def test_unet_registration_out_channels_and_errors(rng):
    moving, fixed = make_pair(rng, (10, 12), (11, 9))
    net = UNet(ndim=2, num_channel_initial=2, depth=2, out_channels=5, zero_init_output=False)
    out = net([moving, fixed])
    assert tuple(out.shape) == (2, 10, 12, 5)
    assert np.abs(out.numpy()).max() > 0
    assert net.backbone.out_channels == 5
    with pytest.raises(ValueError, match="out_activation"):
        UNet(ndim=2, out_activation="not-an-activation")
    with pytest.raises(ValueError, match="depth"):
        UNetBackbone(ndim=2, depth=0)
    with pytest.raises(ValueError, match=r"image must have rank 4.*\(2, 5, 5, 5, 1\)"):
        UNetBackbone(ndim=2).encode(np.zeros((2, 5, 5, 5, 1), np.float32))


# --------------------------------------------------------------------------------------------
# Ill inputs and ill arguments
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("net_cls", NETS, ids=lambda c: c.__name__)
def test_wrong_rank_names_argument_and_both_shapes(net_cls):
    net = net_cls(ndim=3, **SMALL[net_cls])
    moving = np.zeros((2, 8, 8, 1), np.float32)  # a 2-D image to a 3-D network
    fixed = np.zeros((2, 8, 8, 8, 1), np.float32)
    with pytest.raises(ValueError, match=r"moving_image must have rank 5") as err:
        net([moving, fixed])
    assert "(2, 8, 8, 1)" in str(err.value) and "(2, 8, 8, 8, 1)" in str(err.value)
    with pytest.raises(ValueError, match=r"fixed_image must have rank 5.*\(2, 8, 8, 8, 1\)"):
        net([fixed, moving])


@pytest.mark.parametrize("net_cls", NETS, ids=lambda c: c.__name__)
def test_mismatched_batch(net_cls):
    net = net_cls(ndim=2, **SMALL[net_cls])
    moving = np.zeros((2, 8, 8, 1), np.float32)
    fixed = np.zeros((3, 8, 8, 1), np.float32)
    with pytest.raises(ValueError, match=r"same batch size.*moving_image shape \(2, 8, 8, 1\)"
                       r".*fixed_image shape \(3, 8, 8, 1\)"):
        net([moving, fixed])


@pytest.mark.parametrize("net_cls", NETS, ids=lambda c: c.__name__)
@pytest.mark.parametrize("which", ["moving_image", "fixed_image"])
def test_nan_input(net_cls, which):
    net = net_cls(ndim=2, **SMALL[net_cls])
    pair = {"moving_image": np.zeros((1, 8, 8, 1), np.float32),
            "fixed_image": np.zeros((1, 8, 8, 1), np.float32)}
    pair[which][0, 3, 4, 0] = np.nan
    with pytest.raises(ValueError, match=rf"{which} contains 1 NaN or Inf"):
        net([pair["moving_image"], pair["fixed_image"]])
    with pytest.raises(ValueError, match=rf"{which} contains 1 NaN or Inf"):
        net([tf.constant(pair["moving_image"]), tf.constant(pair["fixed_image"])])


def test_not_a_pair():
    net = LocalNet(ndim=2, num_channel_initial=2)
    x = np.zeros((1, 8, 8, 1), np.float32)
    with pytest.raises(ValueError, match=r"expects a pair \[moving_image, fixed_image\].*3"):
        net([x, x, x])
    with pytest.raises(ValueError, match="missing \\['fixed_image'\\]"):
        net({"moving_image": x})


@pytest.mark.parametrize("net_cls", [GlobalNet, CompositeNet], ids=lambda c: c.__name__)
def test_global_fixed_shape_is_enforced(net_cls):
    net = net_cls(ndim=2, fixed_shape=(12, 10), **SMALL[net_cls])
    x = np.zeros((1, 12, 11, 1), np.float32)
    with pytest.raises(ValueError, match=r"spatial shape \(12, 10\).*fixed_image shape "
                                         r"\(1, 12, 11, 1\)"):
        net([x, x])


def test_global_fixed_shape_from_first_call_and_alias(rng):
    net = GlobalNet(ndim=2, num_channel_initial=2)
    assert net.get_config()["fixed_shape"] is None
    moving, fixed = make_pair(rng, (12, 10), (7, 9))
    net([moving, fixed])
    assert net.get_config()["fixed_shape"] == [12, 10]
    assert GlobalNet(ndim=2, image_shape=(5, 6)).fixed_shape == (5, 6)
    with pytest.raises(ValueError, match="fixed_shape and image_shape"):
        GlobalNet(ndim=2, fixed_shape=(5, 6), image_shape=(6, 5))
    with pytest.raises(ValueError, match=r"fixed_shape must be 2 positive integers.*\(5, 6, 7\)"):
        GlobalNet(ndim=2, fixed_shape=(5, 6, 7))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"ndim": 4}, "ndim must be 2 or 3; received ndim=4"),
        ({"ndim": 3, "num_channel_initial": 0}, "num_channel_initial must be a positive integer"),
        ({"ndim": 3, "ddf_levels": (0, 5)}, r"ddf_levels.*received ddf_levels=\(0, 5\)"),
        ({"ndim": 3, "ddf_levels": ()}, "ddf_levels must be a non-empty"),
        ({"ndim": 3, "ddf_levels": (1, 1)}, "distinct"),
    ],
)
def test_bad_constructor_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LocalNet(**kwargs)


# --------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------


def test_get_network_names():
    assert get_network("local") is LocalNet
    assert get_network(" Global ") is GlobalNet
    assert get_network("COMPOSITE") is CompositeNet
    assert get_network("unet") is UNet
    assert set(available_networks()) >= {"local", "global", "composite", "unet"}
    with pytest.raises(ConfigError, match=r"unknown network type 'lokal'.*composite, global"):
        get_network("lokal")


def test_build_network(rng):
    net = build_network("global", 2, (12, 10), num_channel_initial=2)
    assert isinstance(net, GlobalNet) and net.fixed_shape == (12, 10)
    assert net.num_channel_initial == 2
    local = build_network("local", 3, (8, 8, 8), num_channel_initial=2, ddf_levels=[0, 1])
    assert isinstance(local, LocalNet) and local.ddf_levels == (0, 1) and local.ndim == 3
    comp = build_network("composite", 2, [9, 9], num_channel_initial=2,
                         num_channel_initial_global=2)
    assert comp.fixed_shape == (9, 9) and comp.num_channel_initial == 2
    with pytest.raises(ConfigError, match=r"'local'.*does not take.*\['num_channel'\]"):
        build_network("local", 3, (8, 8, 8), num_channel=2)
    with pytest.raises(ValueError, match="fixed_shape must be 3 positive integers"):
        build_network("global", 3, (8, 8))
    with pytest.raises(ValueError, match="ndim must be 2 or 3"):
        build_network("local", 1, None)


def test_register_network():
    @register_network("tiny-local-for-test")
    class TinyLocal(LocalNet):
        pass

    try:
        assert get_network("Tiny-Local-For-Test") is TinyLocal
        net = build_network("tiny-local-for-test", 2, None, num_channel_initial=2)
        assert isinstance(net, TinyLocal)
        with pytest.raises(ValueError, match="already registered"):
            register_network("local")(TinyLocal)
    finally:
        # Registered names are INI choices (and the generated docs list them): leave none.
        from labelreg.networks.registry import NETWORKS

        NETWORKS.remove("tiny-local-for-test")


@pytest.mark.parametrize("ndim", [2, 3])
def test_affine_head_parametrisation_round_trips_and_is_centred(rng, ndim):
    shape = (14, 15, 13)[:ndim]
    net = GlobalNet(ndim=ndim, fixed_shape=shape, num_channel_initial=4)
    pair = [rng.random((1, *shape, 1), dtype=np.float32)] * 2
    net(pair)
    head = net.regressor
    n = ndim
    theta = np.concatenate([np.eye(n) + 0.05 * rng.standard_normal((n, n)),
                            rng.uniform(-3, 3, (n, 1))], axis=1)
    head.dense.bias.assign(head.bias_for_theta(theta))
    np.testing.assert_allclose(net.theta(pair).numpy()[0], theta, atol=1e-5)
    # A change of the diagonal output alone scales about the grid centre: the centre voxel
    # does not move, and a unit output moves the last voxel by h / sqrt(F) voxels.
    head.dense.bias.assign(np.zeros(n * (n + 1), np.float32))
    raw = np.zeros((n, n + 1), np.float32)
    raw[0, 0] = 1.0
    head.dense.bias.assign(raw.reshape(-1))
    got = net.theta(pair).numpy()[0]
    centre = (np.array(shape) - 1) / 2
    features = head._num_features(shape)
    np.testing.assert_allclose(got[:, :n] @ centre + got[:, n], centre, atol=1e-5)
    np.testing.assert_allclose(got[0, 0] - 1.0, 1.0 / np.sqrt(features), rtol=1e-5)


@pytest.mark.parametrize("ndim", [2, 3])
def test_translation_only_affine_stage_moves_every_voxel_by_the_same_vector(rng, ndim):
    """global_transform = translation: whatever the head outputs, A = I and the DDF is one
    constant vector, t = H tau (h the half extents); the choice survives get_config, and the
    composite's global stage follows it."""
    shape = (14, 15, 13)[:ndim]
    pair = [rng.random((1, *shape, 1), dtype=np.float32)] * 2
    net = GlobalNet(ndim=ndim, fixed_shape=shape, num_channel_initial=4, transform="translation")
    net(pair)
    head = net.regressor
    n = ndim
    raw = rng.standard_normal((n, n + 1)).astype(np.float32)  # a scaling and shear as well
    head.dense.bias.assign(raw.reshape(-1))
    head.dense.kernel.assign(rng.normal(0, 0.01, head.dense.kernel.shape).astype(np.float32))
    out = net.forward(pair)
    theta = out["theta"].numpy()[0]
    np.testing.assert_array_equal(theta[:, :n], np.eye(n))
    ddf = out["ddf"].numpy()[0]
    np.testing.assert_allclose(ddf, np.broadcast_to(theta[:, n], ddf.shape), atol=1e-5)
    assert np.abs(theta[:, n]).max() > 0.1
    # The translation is the affine head's own: t = H tau with the same tau.
    affine = GlobalNet(ndim=ndim, fixed_shape=shape, num_channel_initial=4)
    affine(pair)
    affine.set_weights(net.get_weights())
    bottom, _ = head.encoder(net.network_input(*pair))
    tau = (head.dense(tf.reshape(bottom, [1, -1])).numpy()[0]
           / np.sqrt(head._num_features(shape))).reshape(n, n + 1)[:, n]
    np.testing.assert_allclose(theta[:, n], tau * np.array(shape) / 2, rtol=1e-4, atol=1e-5)
    assert not np.allclose(affine.theta(pair).numpy()[0][:, :n], np.eye(n), atol=1e-3)
    clone = GlobalNet.from_config(net.get_config())
    assert clone.transform == "translation" and clone.get_config() == net.get_config()
    composite = CompositeNet(ndim=ndim, fixed_shape=shape, num_channel_initial=4,
                             num_channel_initial_global=4, transform="translation")
    assert composite.regressor.transform == "translation"
    assert CompositeNet.from_config(composite.get_config()).transform == "translation"
    with pytest.raises(ValueError, match="transform must be one of .*received transform='rigid'"):
        GlobalNet(ndim=ndim, transform="rigid")


@pytest.mark.parametrize("ndim", [2, 3])
def test_identity_moving_input_is_the_zero_ddf_warp(rng, ndim):
    from labelreg.networks.layers import identity_placed, pair_input

    fixed_shape = (9, 12, 7)[:ndim]
    # One axis longer, one shorter, one equal: a crop, a zero pad and a pass-through.
    moving_shape = (13, 8, 7)[:ndim]
    moving = rng.random((2, *moving_shape, 1), dtype=np.float32)
    fixed = rng.random((2, *fixed_shape, 1), dtype=np.float32)
    placed = identity_placed(tf.constant(moving), tf.constant(fixed)).numpy()
    expected = ops.warp(moving, np.zeros((2, *fixed_shape, ndim), np.float32)).numpy()
    np.testing.assert_array_equal(placed, expected)
    both = pair_input(tf.constant(moving), tf.constant(fixed), "identity").numpy()
    np.testing.assert_array_equal(both[..., 1], fixed[..., 0])
    with pytest.raises(ValueError, match="moving_input"):
        pair_input(tf.constant(moving), tf.constant(fixed), "crop")


@pytest.mark.parametrize("name", ["local", "global", "composite", "unet"])
def test_moving_input_reaches_every_network_and_round_trips(rng, name):
    fixed_shape, moving_shape = (16, 16), (20, 12)
    moving = rng.random((1, *moving_shape, 1), dtype=np.float32)
    fixed = rng.random((1, *fixed_shape, 1), dtype=np.float32)
    net = build_network(name, 2, fixed_shape=fixed_shape, num_channel_initial=2,
                        moving_input="identity")
    assert net.moving_input == "identity"
    net([moving, fixed])
    clone = type(net).from_config(net.get_config())
    assert clone.moving_input == "identity"
    # The input differs from the resized one, so a network with non-zero outputs sees it.
    resized = build_network(name, 2, fixed_shape=fixed_shape, num_channel_initial=2)
    assert resized.moving_input == "resize"
    with pytest.raises(ValueError, match="moving_input"):
        build_network(name, 2, fixed_shape=fixed_shape, moving_input="stretch")


def test_gradirn_refuses_identity_moving_input():
    with pytest.raises(ValueError, match="GraDIRN descends on the moving image resized"):
        build_network("gradirn", 2, moving_input="identity")
