"""End-to-end tests of a tiny CoMIR run: config, training, resume, generation, evaluation."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import tifffile

from comir_tf.config import COMIR_SCHEMA, load, schema_docs
from comir_tf.evaluate import main as evaluate_main
from labelreg.cli import infer_main, train_main
from labelreg.engine import train
from labelreg.errors import ConfigError
from labelreg.methods.comir import build_models, restore_models

ROOT = Path(__file__).resolve().parents[1]

TINY_INI = """
[CoMIR]
channels_a = 1
channels_b = 3
latent_channels = 1
init_filters = 8
down_blocks = [1, 1]
up_blocks = [1, 1]
bottleneck_layers = 1
growth_rate = 6
compression = 1.0
dropout = 0.0

[Data]
train_dir = data/train
test_dir = data/test
patch_size = 32
blur_sigma = 1.0
noise_std = 0.02
synthetic = true
synthetic_train_pairs = 4
synthetic_test_pairs = 2
synthetic_size = 64

[Train]
dir_run = run
total_iterations = 20
minibatch_size = 4
learning_rate = 0.05
freq_model_save = 10
freq_info_print = 1
# TensorFlow's op determinism is a process-wide switch; the tests leave it off so that they
# do not change the rest of the session (the CPU kernels used here are deterministic anyway).
deterministic = false

[Evaluate]
methods = [comir, raw_mse]
max_pairs = 1
patch_fraction = 0.6
angle_step = 90
"""


def _write_ini(folder: Path, text: str = TINY_INI) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "comir.ini"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One 20-step run shared by the tests below: (config path, result)."""
    path = _write_ini(tmp_path_factory.mktemp("comir"))
    result = train(load(path), log=lambda line: None)
    return path, result


def test_training_lowers_the_loss_and_writes_the_run_folder(trained):
    path, result = trained
    assert result.first_step == 0 and result.last_step == 20 and not result.interrupted
    losses = [values["loss"] for _, values in result.history]
    assert len(losses) == 20
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5])
    run = result.run_dir
    assert result.checkpoint.endswith("comir.ckpt-20")
    assert (run / "checkpoints" / "comir.ckpt-10.index").exists()
    # the resolved config parses back
    assert load(run / "config.ini")["Train"]["total_iterations"] == 20
    description = json.loads((run / "model.json").read_text())
    assert description["method"] == "comir"
    assert description["models"]["model_a"]["config"]["in_channels"] == 1
    assert description["models"]["model_b"]["config"]["in_channels"] == 3
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    assert set(result.validation) == {"positive_mse", "info_nce", "relative_positive_mse",
                                      "top1_accuracy", "logit_margin"}
    assert 0.0 <= result.validation["top1_accuracy"] <= 1.0
    assert {"top1_accuracy", "logit_margin"} <= set(result.last_values)


def test_restore_loads_every_weight(trained):
    path, _ = trained
    cfg = load(path)
    fresh_a, _ = build_models(cfg)
    model_a, model_b, checkpoint = restore_models(cfg)
    assert checkpoint.endswith("comir.ckpt-20")
    # All weights (BatchNorm statistics included) come from the checkpoint, none from the
    # random initialisation.
    changed = [not np.array_equal(w, f) for w, f in zip(model_a.get_weights(),
                                                         fresh_a.get_weights(), strict=True)]
    assert all(changed)


# A second full CoMIR training (20 steps); the trainer's resume equality is also tested on a
# label-driven run in the default suite (make test-slow).
@pytest.mark.slow
def test_ctrl_c_saves_and_the_resumed_run_equals_the_uninterrupted_one(trained, tmp_path):
    path, _ = trained
    text = TINY_INI.replace("data/train", str(path.parent / "data/train")).replace(
        "data/test", str(path.parent / "data/test"))
    ini = _write_ini(tmp_path, text)

    def interrupting(line: str) -> None:
        if line.startswith("step 3/"):  # Ctrl-C while step 3 is being reported
            raise KeyboardInterrupt

    first = train(load(ini), log=interrupting)
    assert first.interrupted and first.last_step == 3
    assert first.checkpoint.endswith("comir.ckpt-3")
    second = train(load(ini), log=lambda line: None)
    assert second.first_step == 3 and second.last_step == 20
    # Sampling and augmentation depend only on (seed, step) and the ops are deterministic, so
    # the resumed run ends with the weights of the uninterrupted one.
    straight_a, straight_b, _ = restore_models(load(path))
    again_a, again_b, _ = restore_models(load(ini))
    for straight, again in ((straight_a, again_a), (straight_b, again_b)):
        for w, v in zip(straight.get_weights(), again.get_weights(), strict=True):
            np.testing.assert_allclose(w, v, rtol=1e-5, atol=1e-6)
    # A finished run has nothing left to do.
    assert train(load(ini), log=lambda line: None).first_step == 20


def test_inference_writes_comirs_of_the_input_size(trained):
    path, result = trained
    assert infer_main([str(path)]) == 0
    out = result.run_dir / "comirs"
    tiffs = sorted(out.glob("*_comir.tif"))
    assert [p.name for p in tiffs] == ["pair_000_BF_comir.tif", "pair_000_SHG_comir.tif",
                                       "pair_001_BF_comir.tif", "pair_001_SHG_comir.tif"]
    for tiff in tiffs:
        comir = tifffile.imread(tiff)
        assert comir.dtype == np.float32 and comir.shape == (64, 64)
        assert np.all(np.isfinite(comir))
        assert tiff.with_suffix(".png").exists()


def test_evaluation_reports_every_method(trained):
    path, result = trained
    assert evaluate_main([str(path)]) == 0
    folder = result.run_dir / "evaluation"
    with open(folder / "evaluation.csv", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 1
    assert set(rows[0]) >= {"pair", "angle", "initial_error", "comir_error", "raw_mse_success"}
    assert abs(float(rows[0]["angle"])) <= 30.0
    summary = json.loads((folder / "evaluation.json").read_text())
    assert set(summary["methods"]) == {"comir", "raw_mse"}
    for values in summary["methods"].values():
        assert 0.0 <= values["success_rate"] <= 1.0


def test_demo_config_is_valid():
    cfg = load(ROOT / "configs" / "comir.ini")
    assert cfg["Data"]["synthetic"] and cfg["Data"]["train_dir"].is_absolute()
    assert cfg["Data"]["patch_size"] % 2 ** len(cfg["CoMIR"]["down_blocks"]) == 0


@pytest.mark.parametrize(
    "override, message",
    [
        ("Data.patch_size=30", r"patch_size = 30: expected a multiple of 2\*\*len"),
        ("CoMIR.up_blocks=[1]", "must have the same length"),
        ("Inference.tile=18", "tile = 18"),
        ("CoMIR.critic=dot", "critic"),
    ],
)
def test_config_errors_name_the_key(tmp_path, override, message):
    path = _write_ini(tmp_path)
    with pytest.raises(ConfigError, match=message):
        load(path, [override])
    assert train_main([str(path), "--set", override]) == 2


def test_config_without_comir_section_is_rejected(tmp_path):
    path = _write_ini(tmp_path, "[Data]\ntrain_dir = x\n")
    with pytest.raises(ConfigError, match=r"missing section \[CoMIR\]"):
        load(path)


def test_schema_docs_list_every_key_and_docs_are_current():
    docs = schema_docs()
    for section, keys in COMIR_SCHEMA.items():
        assert f"### [{section}]" in docs
        for key in keys:
            assert f"| `{key}` |" in docs
    # docs/comir.md carries the generated tables (python -m comir_tf.config docs/comir.md).
    assert docs in (ROOT / "docs" / "comir.md").read_text(encoding="utf-8")


def test_public_names_resolve():
    import comir_tf

    for name in comir_tf.__all__:
        assert getattr(comir_tf, name) is not None
    assert comir_tf.Tiramisu.__module__ == "comir_tf.tiramisu"
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        comir_tf.nothing  # noqa: B018


def test_former_train_key_names_are_read_with_a_note(tmp_path):
    old = TINY_INI.replace("dir_run =", "run_dir =").replace("total_iterations =", "steps =")
    cfg = load(_write_ini(tmp_path, old))
    assert cfg["Train"]["total_iterations"] == 20
    assert cfg["Train"]["dir_run"] == tmp_path / "run"
    assert any("steps is deprecated" in note and "total_iterations" in note
               for note in cfg.notes)
    both = TINY_INI.replace("dir_run = run", "dir_run = run\nrun_dir = other")
    with pytest.raises(ConfigError, match="dir_run is set twice"):
        load(_write_ini(tmp_path / "both", both))
