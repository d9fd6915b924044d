"""GraDIRN as a network of image-driven registration: training.py, inference.py, and a
SavedModel whose signature runs the unrolled steps (inner gradient included) from its own
graph. That an export loads in a process that imports only TensorFlow is checked for every
network in tests/test_export.py."""

from __future__ import annotations

import numpy as np

from labelreg._tf import tf
from labelreg.cli import infer_main, train_main
from labelreg.data.stacks import StackDataset, make_stack_eval_pairs
from labelreg.data.synthetic_stacks import write_synthetic_stacks
from labelreg.methods.runs import load_trained_run

INI = """
[Method]
name = image_driven

[Data]
format = tiff_stack
dir_stacks = {stacks}
train_sequences = [01]
valid_sequences = [02]

[Network]
network_type = gradirn
num_levels = 2
num_repeat = 2
inner_similarity = {inner}

[Loss]
image_loss_type = {loss}
regulariser_weight = 0.01

[Train]
total_iterations = 3
minibatch_size = 2
learning_rate = 1e-4
freq_info_print = 1
dir_run = {run}

[Inference]
dir_save = {run}/inference
"""


def test_gradirn_trains_infers_and_exports_with_its_inner_gradient(tmp_path):
    stacks = write_synthetic_stacks(tmp_path / "stacks", frames=5, size=(32, 32))
    ini = tmp_path / "gradirn.ini"
    ini.write_text(INI.format(stacks=stacks, run=tmp_path / "run", inner="ncc", loss="gncc"))
    assert train_main([str(ini)]) == 0
    assert infer_main([str(ini)]) == 0
    assert (tmp_path / "run" / "inference" / "metrics.csv").is_file()
    assert infer_main([str(ini), "--export", str(tmp_path / "exports")]) == 0

    model = load_trained_run(tmp_path / "run").models["model"]
    assert type(model).__name__ == "GraDIRN" and model.similarity == "ncc"
    pair = next(iter(make_stack_eval_pairs(
        StackDataset(stacks / "images", stacks / "labels-class", ["02"]), batch_size=2)))
    # The SavedModel is traced without XLA (TF-Serving's stock server runs none), so compare
    # with the Keras model run the same way; with the XLA warp the two differ by float rounding
    # amplified through the unrolled steps (at most about 1e-5 voxels).
    from labelreg import ops

    with ops.xla_disabled():
        want = model([pair["moving_image"], pair["fixed_image"]], training=False).numpy()
    xla = model([pair["moving_image"], pair["fixed_image"]], training=False).numpy()
    np.testing.assert_allclose(xla, want, atol=1e-4, rtol=0)
    loaded = tf.saved_model.load(str(tmp_path / "exports" / "gradirn" / "1"))
    got = loaded.signatures["serving_default"](
        moving_image=tf.constant(pair["moving_image"]),
        fixed_image=tf.constant(pair["fixed_image"]))["ddf"].numpy()
    assert np.abs(want).max() > 1e-3  # a real displacement, not zeros
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)


def test_the_correction_init_key_reaches_every_level(tmp_path):
    from labelreg.methods.registry import get_method, load_config

    stacks = write_synthetic_stacks(tmp_path / "stacks", frames=3, size=(16, 16))
    ini = tmp_path / "gradirn.ini"
    text = INI.format(stacks=stacks, run=tmp_path / "run", inner="nmi", loss="nmi")
    ini.write_text(text.replace("inner_similarity = nmi",
                                "inner_similarity = nmi\ncorrection_init = zero"))
    name, cfg = load_config(str(ini))
    method = get_method(name)(cfg, log=lambda line: None)
    method.prepare_data()
    model = method.build()["model"]
    assert model.correction_init == "zero" and model.similarity == "nmi"
    assert all(step.correction_init == "zero" for step in model.steps)


def test_the_shipped_mrus_config_descends_on_nmi_from_the_plain_descent():
    from pathlib import Path

    from labelreg.methods.registry import load_config

    name, cfg = load_config(str(Path(__file__).resolve().parents[1] / "configs" / "gradirn_mrus.ini"))
    assert name == "image_driven"
    network = cfg["Network"]
    assert network["network_type"] == "gradirn" and network["inner_similarity"] == "nmi"
    assert network["correction_init"] == "zero"
    assert cfg["Loss"]["image_loss_type"] == "deepsim"
