"""The memory options of ``[Train]``: gradient checkpointing gives the same loss and gradients
as plain training, and mixed bfloat16 gives the same loss within bfloat16's precision, through
the networks and through ``training.py``'s trainer."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from labelreg._tf import tf
from labelreg.engine import train
from labelreg.methods.registry import get_method, load_config
from labelreg.networks.registry import build_network
from labelreg.networks.remat import remat_scope
from tests.test_pipeline_e2e import write_config, write_dataset


def _loss_and_gradients(network: str, shape: tuple[int, ...], remat: bool, **kwargs):
    keras.utils.set_random_seed(4)
    with remat_scope(remat):
        model = build_network(network, ndim=len(shape), fixed_shape=shape, **kwargs)
    rng = np.random.default_rng(0)
    moving = tf.constant(rng.random((2, *shape, 1), np.float32))
    fixed = tf.constant(rng.random((2, *shape, 1), np.float32))
    model([moving, fixed])
    for variable in model.trainable_variables:  # zero-initialised heads would hide the decoder
        if np.all(variable.numpy() == 0):
            variable.assign(0.01 * tf.random.stateless_normal(variable.shape, [1, 2]))

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            ddf = model([moving, fixed], training=True)
            loss = tf.reduce_mean(tf.square(ddf - 0.3))
        return loss, tape.gradient(loss, model.trainable_variables)

    loss, grads = step()
    return model, float(loss), [g.numpy() for g in grads]


# LocalNet in 2-D repeats the 3-D case's blocks (make test-slow).
@pytest.mark.parametrize(("network", "shape", "kwargs"), [
    pytest.param("local", (16, 16, 16), {"num_channel_initial": 4}, id="localnet-3d"),
    pytest.param("local", (24, 20), {"num_channel_initial": 4}, id="localnet-2d",
                 marks=pytest.mark.slow),
    pytest.param("global", (16, 16, 16), {"num_channel_initial": 4}, id="globalnet-3d"),
    pytest.param("unet", (16, 16, 16), {"num_channel_initial": 4}, id="unet-3d"),
])
def test_gradient_checkpointing_gives_the_same_loss_and_gradients(network, shape, kwargs):
    plain, loss, grads = _loss_and_gradients(network, shape, False, **kwargs)
    checkpointed, loss_remat, grads_remat = _loss_and_gradients(network, shape, True, **kwargs)
    assert not getattr(plain, "checkpointing", False)
    # Recomputing the blocks runs the same arithmetic again: the loss agrees to float32
    # rounding; a gradient may differ by the rounding of a differently fused recomputation.
    np.testing.assert_allclose(loss_remat, loss, rtol=1e-6)
    # Relative to the largest gradient: some (a batch-norm offset feeding another batch norm)
    # are exactly zero in exact arithmetic and only rounding noise here.
    scale = max(float(np.max(np.abs(g))) for g in grads)
    for g, h in zip(grads, grads_remat, strict=True):
        assert float(np.max(np.abs(g - h))) <= 1e-4 * scale


def _run(tmp_path, data, name: str, **train_keys: str):
    ini = write_config(tmp_path / f"{name}.ini", data, Train={
        "total_iterations": "2", "freq_info_print": "1", "freq_model_save": "2",
        "validate": "false", "seed": "2", "file_model_save": str(tmp_path / name / "model.ckpt"),
        **train_keys})
    method_name, cfg = load_config(ini)
    return train(get_method(method_name)(cfg, log=lambda line: None))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("data"))


# Three trainings, one emulating bfloat16 on CPUs without it; the networks' own checkpointing
# equivalence is tested above in the default suite (make test-slow).
@pytest.mark.slow
def test_trainer_options_keep_the_loss(tmp_path, dataset):
    plain = _run(tmp_path, dataset, "plain")
    remat = _run(tmp_path, dataset, "remat", gradient_checkpointing="true")
    mixed = _run(tmp_path, dataset, "mixed", precision="mixed_bfloat16")
    first = plain.history[0][1]["loss"]
    # Same weights and batch at step 1: checkpointing changes nothing but the rounding of
    # recomputed sums; bfloat16 convolutions (8 significant bits) move the loss by well under 2%.
    assert remat.history[0][1]["loss"] == pytest.approx(first, rel=1e-5)
    assert mixed.history[0][1]["loss"] == pytest.approx(first, rel=2e-2)
    assert all(np.isfinite(r.last_values["loss"]) for r in (plain, remat, mixed))
