"""Image-driven registration and the DeepSim feature extractor through training.py and
inference.py: TIFF stacks and NIfTI pairs, every image similarity, the frozen extractor."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import tifffile

from labelreg.cli import infer_main, train_main
from labelreg.data.synthetic_stacks import write_synthetic_stacks
from labelreg.engine import train
from labelreg.errors import ConfigError
from labelreg.methods.image_driven import STACK_METRIC_COLUMNS, jacobian_statistics
from labelreg.methods.registry import load_config
from labelreg.methods.runs import load_trained_run

FEATURES_INI = """
[Method]
name = deepsim_features

[Data]
format = tiff_stack
dir_stacks = {stacks}
train_sequences = [01]
valid_sequences = [02]
rotation = 20

[Network]
channels = [4, 8]
dropout = 0.1

[Train]
total_iterations = 6
minibatch_size = 2
learning_rate = 1e-3
freq_info_print = 1
freq_model_save = 3
dir_run = {run}
"""

REGISTRATION_INI = """
[Method]
name = image_driven

[Data]
format = tiff_stack
dir_stacks = {stacks}
train_sequences = [01]
valid_sequences = [02]
rotation = 10

[Network]
num_channel_initial = 4
depth = 2

[Loss]
image_loss_type = {similarity}
regulariser_weight = 0.01
{extra}

[Train]
total_iterations = {steps}
minibatch_size = 2
learning_rate = 3e-3
freq_info_print = 1
freq_model_save = 100
dir_run = {run}

[Inference]
dir_save = {run}/inference
"""


@pytest.fixture(scope="module")
def stacks(tmp_path_factory) -> Path:
    return write_synthetic_stacks(tmp_path_factory.mktemp("stacks"), sequences=("01", "02"),
                                  frames=8, size=(64, 64), motion=4.0)


@pytest.fixture(scope="module")
def features_run(stacks, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("features")
    ini = folder / "features.ini"
    ini.write_text(FEATURES_INI.format(stacks=stacks, run=folder / "run"))
    assert train_main([str(ini)]) == 0
    return folder / "run"


def _registration_ini(folder: Path, stacks: Path, similarity: str, steps: int = 4,
                      extra: str = "") -> Path:
    ini = folder / f"{similarity}.ini"
    ini.write_text(REGISTRATION_INI.format(stacks=stacks, similarity=similarity, steps=steps,
                                           run=folder / f"run_{similarity}", extra=extra))
    return ini


def test_feature_extractor_trains_and_reports_dice_per_class(features_run, capsys):
    run = load_trained_run(features_run)
    assert run.method.name == "deepsim_features"
    assert [f.shape[-1] for f in run.models["model"].features(np.zeros((1, 64, 64, 1)))] == [4, 8]
    ini = features_run.parent / "features.ini"
    assert infer_main([str(ini)]) == 0
    out = capsys.readouterr().out
    assert "dice_class_0" in out and "dice_class_2" in out


def test_deepsim_registration_keeps_the_extractor_frozen(features_run, stacks, tmp_path):
    ini = _registration_ini(tmp_path, stacks, "deepsim",
                            extra=f"feature_extractor = {features_run}")
    name, cfg = load_config(ini)
    before = [w.copy() for w in load_trained_run(features_run).models["model"].get_weights()]
    from labelreg.methods.registry import get_method

    method = get_method(name)(cfg, log=lambda line: None)
    result = train(method)
    assert result.last_step == 4 and np.isfinite(result.last_values["image_loss"])
    after = method.extractor.get_weights()
    for w, v in zip(before, after, strict=True):
        np.testing.assert_array_equal(w, v)  # bit-identical, BatchNorm statistics included
    # The extractor is not part of the registration run's checkpoint.
    run = load_trained_run(result.run_dir)
    assert list(run.models) == ["model"]
    import tensorflow as tf

    names = [n for n, _ in tf.train.list_variables(result.checkpoint)]
    assert not any("stage" in n.lower() for n in names if n.startswith("model/")), names[:5]


# Every similarity is checked against its formula in tests/test_losses_image.py; end to end
# through training.py and inference.py, SSD and MIND in the default suite, the others in make
# test-slow.
@pytest.mark.parametrize("similarity", [
    "ssd", pytest.param("lncc", marks=pytest.mark.slow), pytest.param("gncc", marks=pytest.mark.slow),
    pytest.param("nmi", marks=pytest.mark.slow), "mind"])
def test_each_similarity_trains_and_infers_on_stacks(similarity, stacks, tmp_path):
    ini = _registration_ini(tmp_path, stacks, similarity, steps=3)
    assert train_main([str(ini)]) == 0
    assert infer_main([str(ini)]) == 0
    out = tmp_path / f"run_{similarity}" / "inference"
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert len(rows) == 7 and list(rows[0]) == list(STACK_METRIC_COLUMNS)  # frames 0..7 of 02
    for row in rows:
        assert 0.0 <= float(row["dice"]) <= 1.0 and 0.0 <= float(row["folding_ratio"]) <= 1.0
    pair = out / f"02_{int(rows[0]['frame']):03d}"
    assert tifffile.imread(pair / "ddf.tif").shape == (64, 64, 2)
    assert tifffile.imread(pair / "warped_image.tif").shape == (64, 64)
    assert tifffile.imread(pair / "warped_label.tif").dtype == np.uint8


def _overfit_one_pair(stacks: Path, folder: Path, similarity: str, weight: float,
                      steps: int) -> tuple[list[float], float, float]:
    """Train on one repeated frame pair (no augmentation): the image losses logged at every
    step, and the foreground Dice of that pair before and after."""
    from labelreg import metrics
    from labelreg.methods.registry import get_method
    from labelreg.networks.apply import register_pair

    ini = _registration_ini(folder, stacks, similarity, steps=steps)
    name, cfg = load_config(ini, [f"Loss.regulariser_weight={weight}",
                                  "Train.learning_rate=1e-2"])
    method = get_method(name)(cfg, log=lambda line: None)
    method.prepare_data()
    from labelreg.data.stacks import make_stack_eval_pairs

    pair = next(iter(make_stack_eval_pairs(method.source.stacks, batch_size=2)))
    pair = {k: v for k, v in pair.items() if k in ("moving_image", "fixed_image",
                                                  "moving_label", "fixed_label")}
    method.train_dataset = lambda seed, start, total: __import__("tensorflow").data.Dataset \
        .from_tensors(pair).repeat(total - start)
    method.prepare_data = lambda: None
    result = train(method)

    def foreground_dice(ddf_fn) -> float:
        out = register_pair(ddf_fn, pair["moving_image"], pair["fixed_image"],
                            pair["moving_label"], label_interpolation="nearest")
        return float(np.mean(metrics.dice_per_class(pair["fixed_label"],
                                                    out["warped_label"])[:, 1:]))

    before = foreground_dice(lambda m, f: np.zeros((*m.shape[:-1], 2), np.float32))
    after = foreground_dice(method.ddf_function())
    return [values["image_loss"] for _, values in result.history], before, after


def test_a_short_training_lowers_the_loss_and_raises_dice(stacks, tmp_path):
    losses, before, after = _overfit_one_pair(stacks, tmp_path, "ssd", 0.005, 120)
    assert np.mean(losses[-20:]) < 0.8 * np.mean(losses[:20])
    assert after > before, (before, after)


@pytest.mark.slow
@pytest.mark.parametrize("similarity, weight", [
    ("lncc", 0.25), ("gncc", 0.25), ("nmi", 0.5), ("mind", 0.03125)])
def test_each_similarity_lowers_its_loss_and_raises_dice(stacks, tmp_path, similarity, weight):
    losses, before, after = _overfit_one_pair(stacks, tmp_path, similarity, weight, 120)
    assert np.mean(losses[-20:]) < np.mean(losses[:20])
    assert after > before, (before, after)


def test_configuration_errors_name_the_key(stacks, tmp_path):
    ini = _registration_ini(tmp_path, stacks, "deepsim")
    with pytest.raises(ConfigError, match="feature_extractor.*required for image_loss_type = "
                                          "deepsim"):
        load_config(ini)
    ini = _registration_ini(tmp_path, stacks, "lncc", extra="image_loss_options = [window]")
    with pytest.raises(ConfigError, match="image_loss_options.*name=value"):
        load_config(ini)
    # feature_extractor is an option of the learned similarities only.
    ini = _registration_ini(tmp_path, stacks, "ssd", extra=f"feature_extractor = {tmp_path}")
    with pytest.raises(ConfigError, match=r"\[Loss\] feature_extractor = .*an option of "
                                          r"image_loss_type = deepsim.*image_loss_type = ssd"):
        load_config(ini)
    ini = _registration_ini(tmp_path, stacks, "nmi", extra="image_loss_options = [window=3]")
    assert train_main([str(ini)]) == 2  # reported as a config error naming the option


def test_jacobian_statistics_of_known_fields():
    zero = np.zeros((1, 8, 8, 2), np.float32)
    stats = jacobian_statistics(zero)
    assert stats["jacobian_mean"] == pytest.approx(1.0) and stats["folding_ratio"] == 0.0
    assert stats["jacobian_std"] == pytest.approx(0.0, abs=1e-6)
    grid = np.stack(np.meshgrid(np.arange(8.0), np.arange(8.0), indexing="ij"), -1)
    fold = np.stack([-2.0 * grid[..., 0], np.zeros_like(grid[..., 1])], -1)[None]
    fold = fold.astype(np.float32)  # a mirror, x0 -> -x0: det -1 everywhere
    assert jacobian_statistics(fold)["folding_ratio"] == 1.0


def test_image_driven_on_nifti_pairs_without_training_labels(tmp_path):
    from tests.test_pipeline_e2e import write_dataset

    data = write_dataset(tmp_path / "data", num_cases=3)
    ini = tmp_path / "nifti.ini"
    ini.write_text(f"""
[Method]
name = image_driven

[Data]
dir_moving_image = {data}/moving_images
dir_fixed_image = {data}/fixed_images

[Network]
num_channel_initial = 4
depth = 2
integration_steps = 4

[Loss]
image_loss_type = lncc
image_loss_options = [window=5]

[Train]
total_iterations = 3
minibatch_size = 2
freq_info_print = 1
dir_run = {tmp_path}/run

[Inference]
dir_moving_image = {data}/moving_images
dir_fixed_image = {data}/fixed_images
dir_moving_label = {data}/moving_labels
dir_fixed_label = {data}/fixed_labels
""")
    assert train_main([str(ini)]) == 0
    run = load_trained_run(tmp_path / "run")
    assert run.models["model"].integration_steps == 4  # the diffeomorphic mode
    assert infer_main([str(ini)]) == 0
    rows = list(csv.DictReader((tmp_path / "run" / "inference" / "metrics.csv").open()))
    assert len(rows) == 6 and all(0.0 <= float(r["dice"]) <= 1.0 for r in rows)


def test_the_autoencoder_variant_trains(stacks, tmp_path):
    ini = tmp_path / "ae.ini"
    ini.write_text(FEATURES_INI.format(stacks=stacks, run=tmp_path / "run")
                   .replace("dropout = 0.1", "dropout = 0.1\nautoencoder = true")
                   .replace("total_iterations = 6", "total_iterations = 2"))
    name, cfg = load_config(ini)
    result = train(cfg, log=lambda line: None)
    assert result.last_step == 2 and set(result.validation) == {"mse"}
    model = load_trained_run(tmp_path / "run").models["model"]
    out = model(np.zeros((1, 64, 64, 1), np.float32)).numpy()
    assert out.shape == (1, 64, 64, 1) and np.all((out >= 0) & (out <= 1))


def test_docs_list_every_key_and_are_current():
    from labelreg.methods import image_driven_config

    docs = (Path(__file__).resolve().parents[1] / "docs" / "image_driven.md").read_text()
    assert image_driven_config.generated_docs() in docs, (
        "regenerate: python -m labelreg.methods.image_driven_config docs/image_driven.md")
    for schema in (image_driven_config.image_driven_schema(),
                   image_driven_config.features_schema()):
        for keys in schema.values():
            for key in keys:
                assert f"| `{key}` |" in docs


NIFTI_FEATURES_INI = """
[Method]
name = deepsim_features

[Data]
format = nifti
dir_moving_image = {data}/moving_images
dir_fixed_image = {data}/fixed_images
dir_moving_label = {data}/moving_labels
dir_fixed_label = {data}/fixed_labels
dir_valid_moving_image = {data}/moving_images
dir_valid_fixed_image = {data}/fixed_images
dir_valid_moving_label = {data}/moving_labels
dir_valid_fixed_label = {data}/fixed_labels

[Network]
channels = [4, 8]
dropout = 0

[Train]
total_iterations = {steps}
minibatch_size = 2
learning_rate = 1e-2
freq_info_print = 10
freq_model_save = {steps}
dir_run = {run}
"""


def test_feature_extractor_segments_the_gland_of_both_images_of_nifti_pairs(tmp_path):
    """NIfTI pairs: both images of a case (moving 16^3, fixed 14x15x13, sides that are not
    multiples of 4) learn their label 0 as background / foreground in one 3-D network; the
    validation reports the gland Dice per image role."""
    from tests.test_pipeline_e2e import FIXED, MOVING, write_dataset

    data = write_dataset(tmp_path / "data", num_cases=3)
    ini = tmp_path / "features.ini"
    ini.write_text(NIFTI_FEATURES_INI.format(data=data, run=tmp_path / "run", steps=20))
    name, cfg = load_config(ini)
    result = train(cfg, log=lambda line: None)
    assert result.last_step == 20
    values = result.validation
    assert {"dice_class_1", "moving_dice_class_1", "fixed_dice_class_1"} <= set(values)
    # The gland is a bright ball in both images: 20 steps reach 0.80-0.84 in each.
    assert values["moving_dice_class_1"] > 0.7 and values["fixed_dice_class_1"] > 0.7, values
    model = load_trained_run(tmp_path / "run").models["model"]
    assert model.ndim == 3
    for shape in (MOVING, FIXED):
        assert model(np.zeros((1, *shape, 1), np.float32)).shape == (1, *shape, 2)
        sizes = [tuple(f.shape[1:-1]) for f in model.features(np.zeros((1, *shape, 1)))]
        assert sizes == [tuple(-(-s // 2) for s in shape), tuple(-(-s // 4) for s in shape)]

    # A deepsim registration with this extractor on MR/TRUS (configs/deepsim_mrus.ini: 3-D,
    # segmentations compared, a translation stage) trains in the docs-pages test (slow suite).
