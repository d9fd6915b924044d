"""learnsim through training.py and inference.py on generated atlas pairs: the per-pair
variational fit, the contrastive metric step, and the uncertainty outputs."""

from __future__ import annotations

import csv
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import tensorflow as tf

from labelreg.cli import infer_main, train_main
from labelreg.data.synthetic_volumes import write_synthetic_volumes
from labelreg.engine import train
from labelreg.methods.registry import get_method, load_config
from labelreg.methods.runs import load_trained_run
from labelreg.variational import SVFPosterior

INI = """
[Method]
name = learnsim

[Data]
synthetic_volumes = true
dir_synthetic = {data}
synthetic_cases = 3
synthetic_size = [16, 16, 12]

[Metric]
term = {term}
learnable = {learnable}

[Variational]
iterations = 15
learning_rate = 0.05
samples = 4

[Train]
total_iterations = 2
minibatch_size = 2
learning_rate = 1e-3
dir_run = {run}
"""


def _ini(folder: Path, term: str = "ssd", learnable: str = "true") -> Path:
    path = folder / f"learnsim_{term}_{learnable}.ini"
    path.write_text(INI.format(data=folder / "data", run=folder / f"run_{term}_{learnable}",
                               term=term, learnable=learnable))
    return path


def test_generated_atlas_pairs(tmp_path):
    folder = write_synthetic_volumes(tmp_path, cases=2, size=(20, 18, 16), structures=2)
    fixed = [nib.load(folder / "fixed_images" / f"case00{i}.nii.gz").get_fdata() for i in (0, 1)]
    np.testing.assert_array_equal(fixed[0], fixed[1])  # one atlas
    moving = nib.load(folder / "moving_images" / "case000.nii.gz").get_fdata()
    labels = nib.load(folder / "moving_labels" / "case000.nii.gz").get_fdata()
    assert moving.shape == (20, 18, 16) and labels.shape == (20, 18, 16, 2)
    assert 0 < np.abs(moving - fixed[0]).mean() < 0.2 and set(np.unique(labels)) <= {0.0, 1.0}


@pytest.fixture(scope="module")
def learned(tmp_path_factory):
    """A two-step learnsim run (the metric learned), shared by the tests that read it."""
    folder = tmp_path_factory.mktemp("learnsim")
    ini = _ini(folder)
    name, cfg = load_config(ini)
    method = get_method(name)(cfg, log=lambda line: None)
    return folder, ini, method, train(method)


def test_learnsim_trains_infers_and_learns_the_metric(learned):
    tmp_path, ini, method, result = learned
    assert result.last_step == 2 and np.isfinite(result.last_values["loss"])
    assert result.last_values["sigma"] > 0
    cached = np.stack([values[1] for values in method._cache.values()])  # log sigma^2
    assert np.all(np.isfinite(cached))
    # The contrastive step changed the encoder from its initial (identity) weights.
    from labelreg.networks.learnsim import SimilarityEncoder

    run = load_trained_run(tmp_path / "run_ssd_true")
    fresh = SimilarityEncoder(ndim=3)
    image = np.random.default_rng(0).random((1, 16, 16, 12, 1)).astype(np.float32)
    assert np.abs(run.models["encoder"](image) - fresh(image)).max() > 1e-4
    assert np.abs(fresh(image) - image).max() < 1e-4  # the encoder starts as the identity

    assert infer_main([str(ini)]) == 0
    out = tmp_path / "run_ssd_true" / "inference"
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert len(rows) == 3
    for row in rows:
        assert 0 <= float(row["dice"]) <= 1 and int(row["non_diffeomorphic_voxels"]) >= 0
    std = nib.load(out / "case000" / "ddf_std.nii.gz").get_fdata()
    assert std.shape == (16, 16, 12, 3) and np.all(std >= 0) and std.max() > 0
    assert (out / "case000" / "ddf_sample_0.nii.gz").is_file()
    assert (out / "case000" / "overlay.png").stat().st_size > 0


@pytest.mark.parametrize("term", ["ssd", "lcc"])
def test_the_posterior_fit_lowers_the_objective(tmp_path, term):
    ini = _ini(tmp_path, term=term, learnable="false")
    name, cfg = load_config(ini, ["Variational.iterations=1"])
    method = get_method(name)(cfg, log=lambda line: None)
    method.prepare_data()
    method.models = method.build()
    posterior = SVFPosterior((1, 16, 16, 12, 3), 0.5, 0.1)
    fit = method.make_fit(posterior, method.data_term(None), 0.0)
    moving = tf.constant(method.moving[:1])
    fixed = tf.constant(method.fixed[:1])
    values = []
    for i in range(30):
        values.append(float(fit(moving, fixed, tf.constant([0, i], tf.int64))["loss"]))
        # fit() restarts Adam each call but keeps the posterior: successive calls continue.
    assert np.mean(values[-5:]) < np.mean(values[:5])
    assert float(tf.reduce_min(posterior.sigma)) > 0


def test_the_baseline_metric_is_not_trained(tmp_path):
    ini = _ini(tmp_path, learnable="false")
    assert train_main([str(ini)]) == 0
    run = load_trained_run(tmp_path / "run_ssd_false")
    image = np.random.default_rng(1).random((1, 16, 16, 12, 1)).astype(np.float32)
    assert np.abs(run.models["encoder"](image) - image).max() < 1e-4


def test_vxm_with_the_frozen_learned_metric(tmp_path, learned):
    """"VXM + learnt": the trained metric as the image loss of a U-Net registration network."""
    learnsim = learned[0]
    encoder = load_trained_run(learnsim / "run_ssd_true").models["encoder"]
    before = [w.copy() for w in encoder.get_weights()]
    data = learnsim / "data"
    vxm = tmp_path / "vxm.ini"
    vxm.write_text(f"""
[Method]
name = image_driven

[Data]
dir_moving_image = {data}/moving_images
dir_fixed_image = {data}/fixed_images
augmentation = false

[Network]
num_channel_initial = 4
depth = 2

[Loss]
image_loss_type = learnsim
feature_extractor = {learnsim}/run_ssd_true
regulariser_weight = 1.0

[Train]
total_iterations = 2
minibatch_size = 2
dir_run = {tmp_path}/vxm
""")
    name, cfg = load_config(vxm)
    method = get_method(name)(cfg, log=lambda line: None)
    result = train(method)
    assert np.isfinite(result.last_values["image_loss"])
    for w, v in zip(before, method.extractor.get_weights(), strict=True):
        np.testing.assert_array_equal(w, v)
