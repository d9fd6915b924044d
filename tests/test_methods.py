"""The method layer: a method added from this file alone trains, infers and exports through the
shared engine; INI files find their method; configs are checked before TensorFlow loads;
checkpoints written before the method layer still restore."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

from labelreg import config, ops
from labelreg._tf import tf
from labelreg.cli import infer_main, train_main
from labelreg.config import Key, method_section, parse, train_section
from labelreg.engine.checkpoints import (
    load_model_description,
    make_checkpoint,
    save_model_description,
)
from labelreg.errors import ConfigError, DataError
from labelreg.losses.registry import LOSSES, build_loss, register_loss
from labelreg.methods.base import Method
from labelreg.methods.registry import METHODS, method_name, register_method
from labelreg.methods.runs import load_trained_run
from labelreg.networks.apply import register_pair
from labelreg.networks.registry import NETWORKS

ROOT = Path(__file__).resolve().parents[1]

# --------------------------------------------------------------------------------------------
# A toy method, written as a contributor would add one: this file is its only edit.
# --------------------------------------------------------------------------------------------

SHAPE = (16, 16)


@keras.saving.register_keras_serializable(package="labelreg_tests")
class Translation(keras.Model):
    """A DDF that is one learned translation (voxels), whatever the pair."""

    def build(self, input_shape):
        self.shift = self.add_weight(shape=(2,), initializer="zeros", name="shift")

    def call(self, inputs):
        fixed = inputs[1]
        return tf.zeros_like(fixed[..., :1]) + tf.ones_like(fixed[..., :1]) * self.shift


def _blob(centre: tuple[float, float]) -> np.ndarray:
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in SHAPE], indexing="ij"), -1)
    return np.exp(-np.sum((grid - np.asarray(centre)) ** 2, -1) / 8.0).astype(np.float32)[..., None]


class TranslationOnly(Method):
    """Learns the translation that carries a moving blob onto a fixed one (SSD)."""

    name = "translation-test"

    @classmethod
    def load_config(cls, path, overrides=()):
        schema = {
            "Method": method_section(cls.name),
            "Toy": {"offset": Key("float_list", (2.0, -1.0), "True moving-fixed offset.")},
            "Train": train_section(learning_rate=0.2, minibatch_size=2, freq_info_print=5,
                                   freq_model_save=10, total_iterations=30),
        }
        cfg = parse(path, schema, overrides)
        config.derive_run_paths(cfg)
        config.check_train(cfg)
        return cfg

    def prepare_data(self):
        offset = self.cfg["Toy"]["offset"]
        self.fixed = np.stack([_blob((8.0, 8.0))] * 2)
        self.moving = np.stack([_blob((8.0 + offset[0], 8.0 + offset[1]))] * 2)

    def build(self):
        model = Translation()
        model([self.moving, self.fixed])
        return {"model": model}

    def train_dataset(self, seed, start_step, total_steps):
        batch = {"moving_image": self.moving, "fixed_image": self.fixed}
        return tf.data.Dataset.from_tensors(batch).repeat(total_steps - start_step)

    def loss_terms(self, batch):
        out = register_pair(lambda m, f: self.models["model"]([m, f]), batch["moving_image"],
                            batch["fixed_image"])
        ssd = tf.reduce_mean(tf.square(out["warped_moving_image"] - batch["fixed_image"]),
                             axis=[1, 2, 3])
        return {"loss": ssd, "shift_0": self.models["model"].shift[0] + 0 * ssd}

    def infer(self, overwrite=False):
        return [f"shift {self.models['model'].shift.numpy().tolist()}"]

    @classmethod
    def serving_endpoints(cls, models, meta, **options):
        model = models["model"]
        spec = tf.TensorSpec([None, *SHAPE, 1], tf.float32, name="image")

        def shift(image):
            return {"ddf": model([image, image])}

        return {"serving_default": (shift, [spec], ["ddf"])}


TOY_INI = """
[Method]
name = translation-test

[Toy]
offset = [2.0, -1.0]

[Train]
dir_run = run
"""


@pytest.fixture
def toy_method():
    register_method(TranslationOnly)
    yield TranslationOnly
    METHODS.remove(TranslationOnly.name)


def test_a_method_added_from_a_test_file_trains_infers_and_exports(toy_method, tmp_path,
                                                                  capsys):
    ini = tmp_path / "toy.ini"
    ini.write_text(TOY_INI)
    assert method_name(ini) == "translation-test"
    assert train_main([str(ini), "--set", "Train.total_iterations=10"]) == 0
    assert train_main([str(ini)]) == 0  # resumes at step 10
    out = capsys.readouterr().out
    assert "resumed from" in out and "step 11/30" in out
    run = load_trained_run(tmp_path / "run")
    assert run.method is toy_method and run.prefix.endswith("model.ckpt-30")
    shift = run.models["model"].shift.numpy()
    np.testing.assert_allclose(shift, [2.0, -1.0], atol=0.3)  # the offset was learned
    assert json.loads((tmp_path / "run" / "model.json").read_text())["method"] == toy_method.name

    # The CLI's inference and export go through the method's hooks.
    cfg = toy_method.load_config(ini)
    method = toy_method(cfg)
    method.models = run.models
    assert method.infer()[0].startswith("shift [")
    capsys.readouterr()
    assert infer_main([str(ini), "--export", str(tmp_path / "exports")]) == 0
    # Named after the INI file; a line says what is being exported before the wait.
    out = capsys.readouterr().out
    assert f"to {tmp_path / 'exports' / 'toy'}/" in out and out.index("exporting") < out.index(
        "exported")
    loaded = tf.saved_model.load(str(tmp_path / "exports" / "toy" / "1"))
    ddf = loaded.signatures["serving_default"](image=tf.zeros([1, *SHAPE, 1]))["ddf"].numpy()
    np.testing.assert_allclose(ddf[0, 3, 5], shift, rtol=1e-6)
    assert int(loaded.training_step[0]) == 30


def test_an_unknown_method_name_is_a_config_error(tmp_path):
    ini = tmp_path / "x.ini"
    ini.write_text("[Method]\nname = deepsimm\n")
    with pytest.raises(ConfigError, match=r"x.ini: \[Method\] name = 'deepsimm'.*labelreg, comir"):
        method_name(ini)


def test_files_find_their_method(tmp_path):
    plain = tmp_path / "plain.ini"
    plain.write_text("[Train]\ntotal_iterations = 3\n")
    comir = tmp_path / "comir.ini"
    comir.write_text("[CoMIR]\nchannels_a = 1\n")
    named = tmp_path / "named.ini"
    named.write_text("[Method]\nname = COMIR\n")
    assert method_name(plain) == "labelreg"  # label-reg's config_demo.ini has no [Method]
    assert method_name(comir) == "comir"
    assert method_name(named) == "comir"
    assert method_name(plain, ["Method.name=comir"]) == "comir"
    assert method_name(ROOT / "configs" / "demo.ini") == "labelreg"
    assert method_name(ROOT / "configs" / "comir.ini") == "comir"


# --------------------------------------------------------------------------------------------
# Configuration errors come before TensorFlow
# --------------------------------------------------------------------------------------------

_NO_TF = """
import sys
from labelreg.cli import infer_main, train_main
code = (train_main if sys.argv[2] == "train" else infer_main)([sys.argv[1]])
print(code, "tensorflow" in sys.modules)
"""


@pytest.mark.parametrize("text, fragment", [
    ("[Train]\nlearnin_rate = 1e-3\n", "learnin_rate"),
    ("[Network]\nnetwork_type = lokal\n", "lokal"),
    ("[Loss]\nimage_loss_type = lnc\n", "lnc"),
    ("[CoMIR]\ncritic = dot\n[Data]\ntrain_dir = x\n", "critic"),
    ("[CoMIR]\n[Data]\ntrain_dir = x\n[Train]\nsteps = -1\n", "total_iterations"),
])
@pytest.mark.parametrize("command", ["train", "infer"])
def test_a_config_error_is_reported_before_tensorflow_is_imported(tmp_path, text, fragment,
                                                                  command):
    ini = tmp_path / "bad.ini"
    ini.write_text(text)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", _NO_TF, str(ini), command], cwd=tmp_path,
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.stdout.split() == ["2", "False"], done.stderr
    assert "bad.ini" in done.stderr and fragment in done.stderr


# --------------------------------------------------------------------------------------------
# Registries
# --------------------------------------------------------------------------------------------


def test_a_registered_network_and_loss_are_ini_choices(tmp_path):
    from labelreg.networks import LocalNet

    class ToyScale:
        """A factory loss holding a 'feature network' (here a scale)."""

        def __init__(self, feature_network=None, scale=2.0):
            self.network, self.scale = feature_network, scale

        def __call__(self, fixed, warped):
            return self.scale * tf.reduce_mean(tf.square(fixed - warped), axis=[1, 2, 3])

    register_loss("toy-scaled-ssd", kind="image", factory=True)(ToyScale)
    NETWORKS.add("toy-local", LocalNet)
    try:
        ini = tmp_path / "x.ini"
        ini.write_text("[Network]\nnetwork_type = toy-local\n[Loss]\n"
                       "image_loss_type = toy-scaled-ssd\nimage_loss_weight = 1\n")
        cfg = config.load(ini)
        assert cfg["Network"]["network_type"] == "toy-local"
        loss = build_loss("toy-scaled-ssd", "image", scale=3.0)
        a, b = np.ones((1, 4, 4, 1), np.float32), np.zeros((1, 4, 4, 1), np.float32)
        np.testing.assert_allclose(loss(a, b).numpy(), [3.0])
        lncc7 = build_loss("lncc", "image", window=7)
        from labelreg.losses import lncc

        x = np.random.default_rng(0).random((2, 9, 9, 1)).astype(np.float32)
        y = np.random.default_rng(1).random((2, 9, 9, 1)).astype(np.float32)
        np.testing.assert_allclose(lncc7(x, y).numpy(), lncc(x, y, window=7).numpy())
    finally:
        LOSSES.remove("toy-scaled-ssd")
        NETWORKS.remove("toy-local")


# --------------------------------------------------------------------------------------------
# Checkpoints and descriptions written before the method layer
# --------------------------------------------------------------------------------------------


def _old_comir_run(run: Path):
    from labelreg.methods.comir import build_models

    ini = run.parent / "comir.ini"
    ini.write_text("[CoMIR]\ninit_filters = 4\ndown_blocks = [1]\nup_blocks = [1]\n"
                   "bottleneck_layers = 1\ngrowth_rate = 2\n[Data]\ntrain_dir = data\n"
                   f"patch_size = 16\n[Train]\nrun_dir = {run}\n")
    from comir_tf.config import load

    model_a, model_b = build_models(load(ini))
    for model in (model_a, model_b):  # weights no fresh model would have
        model.set_weights([w + 0.5 for w in model.get_weights()])
    # The former layout: Keras object graphs, and model.json without "method"/"models".
    checkpoint = tf.train.Checkpoint(model_a=model_a, model_b=model_b,
                                     step=tf.Variable(7, dtype=tf.int64))
    tf.train.CheckpointManager(checkpoint, str(run / "checkpoints"), 1,
                               checkpoint_name="comir.ckpt").save(7)
    (run / "model.json").write_text(json.dumps({
        "model_a": keras.saving.serialize_keras_object(model_a),
        "model_b": keras.saving.serialize_keras_object(model_b), "meta": {"patch_size": 16}}))
    return model_a, model_b


def test_a_comir_run_from_before_the_method_layer_still_restores(tmp_path):
    model_a, model_b = _old_comir_run(tmp_path / "run")
    run = load_trained_run(tmp_path / "run")
    assert run.method.name == "comir" and run.prefix.endswith("comir.ckpt-7")
    for old, new in ((model_a, run.models["model_a"]), (model_b, run.models["model_b"])):
        for w, v in zip(old.get_weights(), new.get_weights(), strict=True):
            np.testing.assert_array_equal(w, v)


def test_a_labelreg_run_description_from_before_the_method_layer_is_read(tmp_path):
    from labelreg.networks import LocalNet

    model = LocalNet(ndim=2, num_channel_initial=2)
    model([np.zeros((1, 8, 8, 1), np.float32)] * 2)
    make_checkpoint(model, step=tf.Variable(3, dtype=tf.int64)).save(
        str(tmp_path / "checkpoints" / "model.ckpt"))
    (tmp_path / "model.json").write_text(json.dumps({
        "model": keras.saving.serialize_keras_object(model),
        "meta": {"moving_shape": [8, 8], "fixed_shape": [8, 8]}}))
    description = load_model_description(tmp_path)
    assert description["method"] == "labelreg" and list(description["models"]) == ["model"]
    run = load_trained_run(tmp_path)
    for w, v in zip(model.get_weights(), run.models["model"].get_weights(), strict=True):
        np.testing.assert_array_equal(w, v)


def test_a_checkpoint_that_does_not_fit_is_refused_with_a_clear_message(tmp_path):
    from labelreg.networks import LocalNet

    narrow = LocalNet(ndim=2, num_channel_initial=2)
    wide = LocalNet(ndim=2, num_channel_initial=4)
    pair = [np.zeros((1, 8, 8, 1), np.float32)] * 2
    narrow(pair)
    wide(pair)
    make_checkpoint(narrow).save(str(tmp_path / "checkpoints" / "model.ckpt"))
    save_model_description(wide, tmp_path, moving_shape=[8, 8], fixed_shape=[8, 8])
    with pytest.raises(DataError, match=r"does not fit the model\(s\) \['model'\]"):
        load_trained_run(tmp_path)


def test_one_forward_and_warp(rng):
    moving = rng.random((2, 6, 7, 1)).astype(np.float32)
    label = rng.random((2, 6, 7, 3)).astype(np.float32)
    ddf = rng.normal(size=(2, 5, 4, 2)).astype(np.float32)
    out = register_pair(lambda m, f: tf.constant(ddf), moving, None, label, "nearest")
    np.testing.assert_array_equal(out["warped_moving_image"].numpy(),
                                  ops.warp(moving, ddf).numpy())
    np.testing.assert_array_equal(out["warped_label"].numpy(),
                                  ops.warp(label, ddf, interpolation="nearest").numpy())
    assert "warped_moving_image" not in register_pair(lambda m, f: ddf, moving, None,
                                                      warp_image=False)


def test_a_damaged_newest_checkpoint_falls_back_to_the_previous_one(toy_method, tmp_path,
                                                                    capsys):
    ini = tmp_path / "toy.ini"
    ini.write_text(TOY_INI)
    assert train_main([str(ini), "--set", "Train.total_iterations=20"]) == 0
    checkpoints = tmp_path / "run" / "checkpoints"
    data = sorted(checkpoints.glob("model.ckpt-20.data-*"))
    assert data and (checkpoints / "model.ckpt-10.index").is_file()
    for path in data:  # an interrupted write: the newest checkpoint's data cut short
        path.write_bytes(path.read_bytes()[: max(1, path.stat().st_size // 3)])
    capsys.readouterr()
    assert train_main([str(ini), "--set", "Train.total_iterations=25"]) == 0
    out = capsys.readouterr().out
    assert "skipping a damaged checkpoint" in out and "model.ckpt-20" in out
    assert "resumed from" in out and "model.ckpt-10 at step 10" in out
    assert load_trained_run(tmp_path / "run").prefix.endswith("model.ckpt-25")
