"""Tests of labelreg.export: SavedModels for TF-Serving, checked in a fresh TensorFlow-only process,
with saved_model_cli (TF1-style loader) and against the Keras model; versions; ONNX; CoMIR."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from labelreg import export
from labelreg._tf import tf
from labelreg.data.pipeline import normalise_intensity
from labelreg.engine.checkpoints import save_run
from labelreg.errors import ConfigError, DataError
from labelreg.networks import LocalNet

VENV_BIN = Path(sys.executable).parent
SAVED_MODEL_CLI = VENV_BIN / "saved_model_cli"

#: Trained shapes (moving larger than fixed, as MR/US) and shapes the network never saw.
TRAINED = {2: {"moving": (20, 22), "fixed": (17, 19)},
           3: {"moving": (12, 14, 10), "fixed": (9, 11, 13)}}
UNSEEN = {2: {"moving": (15, 25), "fixed": (21, 13)},
          3: {"moving": (9, 17, 11), "fixed": (13, 7, 15)}}
STEP = 7
CONFIG_TEXT = "[Train]\nlearning_rate = 1e-5\n"


def subprocess_env() -> dict[str, str]:
    """A TensorFlow-only process as a server runs it, with the settings each export's README
    tells a server to use."""
    from labelreg.export.publish import SERVER_ENVIRONMENT

    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",
                                                            "TF_ENABLE_ONEDNN_OPTS")}
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    env.update(SERVER_ENVIRONMENT)
    return env


def tiny_model(ndim: int, seed: int = 0) -> LocalNet:
    """A LocalNet (c=4) with non-zero DDF heads and non-trivial batch-norm statistics."""
    model = LocalNet(ndim=ndim, num_channel_initial=4)
    shapes = TRAINED[ndim]
    model([np.zeros((1, *shapes["moving"], 1), np.float32),
           np.zeros((1, *shapes["fixed"], 1), np.float32)])
    rng = np.random.default_rng(seed)
    for head in model.ddf_heads:
        for weight in head.weights:
            weight.assign(rng.normal(0.0, 0.05, weight.shape).astype(np.float32))
    for weight in model.weights:
        if weight.path.endswith("moving_mean"):
            weight.assign(rng.normal(0.0, 0.1, weight.shape).astype(np.float32))
        elif weight.path.endswith("moving_variance"):
            weight.assign(rng.uniform(0.5, 2.0, weight.shape).astype(np.float32))
    return model


def scipy_warp(image: np.ndarray, ddf: np.ndarray) -> np.ndarray:
    """Independent warp: map_coordinates(order=1, grid-constant) per sample and channel."""
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in ddf.shape[1:-1]], indexing="ij"), -1)
    out = np.zeros(ddf.shape[:-1] + image.shape[-1:], np.float32)
    for b in range(image.shape[0]):
        coords = np.moveaxis(grid + ddf[b], -1, 0)
        for c in range(image.shape[-1]):
            out[b, ..., c] = ndimage.map_coordinates(image[b, ..., c].astype(np.float64), coords,
                                                     order=1, mode="grid-constant")
    return out


def carry_to_sent_grids(ddf_net: np.ndarray, fixed_sent: tuple[int, ...],
                        moving_sent: tuple[int, ...], moving_trained: tuple[int, ...]) -> np.ndarray:
    """The documented mapping, written with scipy: half-pixel correspondence of the grids."""
    n = ddf_net.shape[-1]
    fixed_trained = ddf_net.shape[1:-1]
    x = np.stack(np.meshgrid(*[np.arange(s, dtype=np.float64) for s in fixed_sent],
                             indexing="ij"), -1)
    y = (x + 0.5) * np.array(fixed_trained) / np.array(fixed_sent) - 0.5
    out = np.zeros((ddf_net.shape[0], *fixed_sent, n), np.float32)
    for b in range(ddf_net.shape[0]):
        sampled = np.stack([ndimage.map_coordinates(ddf_net[b, ..., d].astype(np.float64),
                                                    np.moveaxis(y, -1, 0), order=1,
                                                    mode="nearest") for d in range(n)], -1)
        moving = y + sampled
        out[b] = (moving + 0.5) * np.array(moving_sent) / np.array(moving_trained) - 0.5 - x
    return out


def scipy_resize(image: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Linear resize with half-pixel centres and edge replication, written with scipy."""
    axes = [(np.arange(o) + 0.5) * i / o - 0.5 for i, o in zip(image.shape[1:-1], shape,
                                                               strict=True)]
    coords = np.stack(np.meshgrid(*axes, indexing="ij"), 0)
    out = np.zeros((image.shape[0], *shape, image.shape[-1]), np.float32)
    for b in range(image.shape[0]):
        for c in range(image.shape[-1]):
            out[b, ..., c] = ndimage.map_coordinates(image[b, ..., c].astype(np.float64), coords,
                                                     order=1, mode="nearest")
    return out


def keras_register(model: LocalNet, moving: np.ndarray, fixed: np.ndarray, ndim: int) -> np.ndarray:
    """The DDF the serving signature should return, from the Keras model and scipy."""
    moving_n = np.stack([normalise_intensity(m) for m in moving])
    fixed_n = np.stack([normalise_intensity(f) for f in fixed])
    trained = TRAINED[ndim]
    same_fixed = fixed.shape[1:-1] == trained["fixed"]
    fixed_net = fixed_n if same_fixed else scipy_resize(fixed_n, trained["fixed"])
    ddf_net = model([moving_n, fixed_net], training=False).numpy()
    if same_fixed and moving.shape[1:-1] == trained["moving"]:
        return ddf_net
    return carry_to_sent_grids(ddf_net, fixed.shape[1:-1], moving.shape[1:-1], trained["moving"])


def write_run(run_dir: Path, model: LocalNet, ndim: int) -> None:
    """A training run folder as training.py leaves it (model.json, checkpoints/, config.ini)."""
    save_run(model, run_dir, step=tf.Variable(STEP, dtype=tf.int64),
             moving_shape=list(TRAINED[ndim]["moving"]), fixed_shape=list(TRAINED[ndim]["fixed"]),
             network_type="local", normalise=True)
    (run_dir / "config.ini").write_text(CONFIG_TEXT)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Both tiny models exported, with inputs and Keras reference outputs.

    The 2-D model goes through a training run folder and :func:`export.export_saved_model` into a
    model folder that already holds versions 1 and 3; the 3-D one is exported from memory with
    :func:`export.export_model`.
    """
    base = tmp_path_factory.mktemp("models")
    run_dir = tmp_path_factory.mktemp("run")
    rng = np.random.default_rng(42)
    cases = {}
    for ndim in (2, 3):
        model = tiny_model(ndim)
        if ndim == 2:
            write_run(run_dir, model, ndim)
            (base / "tiny2" / "1").mkdir(parents=True)
            (base / "tiny2" / "3").mkdir()
            (base / "tiny2" / "3" / "saved_model.pb").write_bytes(b"keep me")
            path = export.export_saved_model(run_dir, base, "tiny2")
        else:
            path = export.export_model(
                model, base, f"tiny{ndim}", moving_shape=TRAINED[ndim]["moving"],
                fixed_shape=TRAINED[ndim]["fixed"], step=STEP, config_text=CONFIG_TEXT)
        mov_shape, fix_shape = TRAINED[ndim]["moving"], TRAINED[ndim]["fixed"]
        moving = (rng.random((2, *mov_shape, 1)) * 0.9 + 0.05).astype(np.float32)
        fixed = (rng.random((2, *fix_shape, 1)) * 0.5).astype(np.float32)
        labels = (rng.random((2, *mov_shape, 3)) > 0.6).astype(np.float32)
        ddf = keras_register(model, moving, fixed, ndim)
        odd_moving = rng.random((1, *UNSEEN[ndim]["moving"], 1)).astype(np.float32)
        odd_fixed = rng.random((1, *UNSEEN[ndim]["fixed"], 1)).astype(np.float32)
        cases[ndim] = {
            "path": path, "model": model,
            "inputs": {"moving": moving, "fixed": fixed, "labels": labels,
                       "odd_moving": odd_moving, "odd_fixed": odd_fixed},
            "ddf": ddf, "warped": scipy_warp(moving, ddf), "warped_labels": scipy_warp(labels, ddf),
            "odd_ddf": keras_register(model, odd_moving, odd_fixed, ndim),
        }
    return cases


FRESH_PROCESS = textwrap.dedent("""
    import json, sys
    import numpy as np
    import tensorflow as tf

    def call(fn, **kw):
        try:
            return {k: v.numpy() for k, v in fn(**{a: tf.constant(b) for a, b in kw.items()}).items()}
        except Exception as err:  # the test reads the message
            return type(err).__name__ + ": " + str(err)

    report = {"labelreg_imported": any(m.startswith("labelreg") for m in sys.modules)}
    arrays = {}
    for ndim, folder in json.loads(sys.argv[1]).items():
        x = np.load(folder + "/inputs.npz")
        loaded = tf.saved_model.load(folder)
        sig = loaded.signatures
        report[ndim] = {"signatures": sorted(sig.keys()),
                        "step": int(loaded.training_step[0].numpy()),
                        "description": json.loads(loaded.model_description[0].numpy().decode())}
        outs = {
            "sd": call(sig["serving_default"], moving_image=x["moving"], fixed_image=x["fixed"]),
            "wl": call(sig["warp_labels"], moving_label=x["labels"], ddf=x["ddf"]),
            "rl": call(sig["register_with_labels"], moving_image=x["moving"],
                       fixed_image=x["fixed"], moving_label=x["labels"]),
            "odd": call(sig["serving_default"], moving_image=x["odd_moving"],
                        fixed_image=x["odd_fixed"]),
        }
        for group, values in outs.items():
            for name, value in values.items():
                arrays[f"{ndim}_{group}_{name}"] = value
        bad_channels = np.concatenate([x["moving"], x["moving"]], axis=-1)
        nan_fixed = x["fixed"].copy()
        nan_fixed[0, 1] = np.nan
        report[ndim]["errors"] = {
            "rank": call(sig["serving_default"], moving_image=x["moving"][..., 0],
                         fixed_image=x["fixed"]),
            "channels": call(sig["serving_default"], moving_image=bad_channels,
                             fixed_image=x["fixed"]),
            "batch": call(sig["serving_default"], moving_image=x["moving"][:1],
                          fixed_image=x["fixed"]),
            "nan": call(sig["serving_default"], moving_image=x["moving"], fixed_image=nan_fixed),
            "label_grid": call(sig["register_with_labels"], moving_image=x["moving"],
                               fixed_image=x["fixed"], moving_label=x["labels"][:, 1:]),
            "ddf_components": call(sig["warp_labels"], moving_label=x["labels"],
                                   ddf=x["ddf"][..., :1]),
        }
    np.savez(sys.argv[2], **arrays)
    print(json.dumps(report))
""")


@pytest.fixture(scope="module")
def fresh_process(exported, tmp_path_factory):
    """Every signature of both SavedModels called in one process that imports only TensorFlow."""
    folders = {}
    for ndim, case in exported.items():
        np.savez(case["path"] / "inputs.npz", ddf=case["ddf"], **case["inputs"])
        folders[str(ndim)] = str(case["path"])
    out = tmp_path_factory.mktemp("fresh") / "outputs.npz"
    done = subprocess.run(
        [sys.executable, "-c", FRESH_PROCESS, json.dumps(folders), str(out)],
        capture_output=True, text=True, env=subprocess_env(), cwd=out.parent, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    for case in exported.values():  # leave the version folders as exported
        (case["path"] / "inputs.npz").unlink()
    return report, dict(np.load(out))


def test_fresh_process_imports_only_tensorflow(fresh_process):
    report, _ = fresh_process
    assert report["labelreg_imported"] is False


@pytest.mark.parametrize("ndim", [2, 3])
def test_signatures_match_the_keras_model(fresh_process, exported, ndim):
    report, arrays = fresh_process
    case = exported[ndim]
    assert report[str(ndim)]["signatures"] == sorted(export.SIGNATURE_NAMES)
    assert np.abs(case["ddf"]).max() > 0.2  # the test model really moves voxels

    def close(name: str, want: np.ndarray) -> None:
        got = arrays[f"{ndim}_{name}"]
        assert got.shape == want.shape, name
        assert np.abs(got - want).max() <= 1e-5, name

    close("sd_ddf", case["ddf"])
    close("sd_warped_moving_image", case["warped"])
    close("wl_warped_label", case["warped_labels"])
    close("rl_ddf", case["ddf"])
    close("rl_warped_moving_image", case["warped"])
    close("rl_warped_label", case["warped_labels"])


@pytest.mark.parametrize("ndim", [2, 3])
def test_unseen_sizes_come_back_at_the_fixed_size(fresh_process, exported, ndim):
    _, arrays = fresh_process
    case = exported[ndim]
    fixed_shape = UNSEEN[ndim]["fixed"]
    assert arrays[f"{ndim}_odd_ddf"].shape == (1, *fixed_shape, ndim)
    assert arrays[f"{ndim}_odd_warped_moving_image"].shape == (1, *fixed_shape, 1)
    # The documented grid mapping, computed independently with scipy.
    np.testing.assert_allclose(arrays[f"{ndim}_odd_ddf"], case["odd_ddf"], atol=1e-4)
    np.testing.assert_allclose(arrays[f"{ndim}_odd_warped_moving_image"],
                               scipy_warp(case["inputs"]["odd_moving"], case["odd_ddf"]),
                               atol=1e-4)


@pytest.mark.parametrize("ndim", [2, 3])
def test_bad_inputs_fail_with_named_errors(fresh_process, ndim):
    errors = fresh_process[0][str(ndim)]["errors"]
    n = ndim
    free = ",".join(["?"] * (n + 1))
    assert "Shape of tensor moving_image" in errors["rank"]
    assert f"expected shape [{free},1]" in errors["rank"]
    assert "Shape of tensor moving_image" in errors["channels"]
    assert "moving_image and fixed_image must have the same batch size" in errors["batch"]
    assert "fixed_image contains NaN or Inf" in errors["nan"]
    assert "moving_label must have the batch and spatial shape of moving_image" in (
        errors["label_grid"])
    assert "Shape of tensor ddf" in errors["ddf_components"]


def test_each_version_folder_says_how_to_serve_it(exported):
    for case in exported.values():
        text = (case["path"] / "README.md").read_text()
        assert "TF_ENABLE_ONEDNN_OPTS=1" in text and "serving_default" in text
        assert "moving_image" in text and "tensorflow/serving" in text


@pytest.mark.parametrize("ndim", [2, 3])
def test_metadata_is_inside_the_saved_model_and_its_assets(fresh_process, exported, ndim):
    meta = fresh_process[0][str(ndim)]
    assert meta["step"] == STEP
    description = meta["description"]
    assert description["meta"]["fixed_shape"] == list(TRAINED[ndim]["fixed"])
    assert description["meta"]["moving_shape"] == list(TRAINED[ndim]["moving"])
    assert description["method"] == "labelreg"
    assert description["models"]["model"]["class_name"] == "LocalNet"
    assert description["models"]["model"]["config"]["num_channel_initial"] == 4
    assets = exported[ndim]["path"] / "assets.extra" / "labelreg"
    assert json.loads((assets / "model.json").read_text()) == description
    assert (assets / "config.ini").read_text() == CONFIG_TEXT
    assert description["export"]["signatures"]["warp_labels"]["outputs"] == ["warped_label"]


def run_cli(*args: str) -> str:
    done = subprocess.run([str(SAVED_MODEL_CLI), *args], capture_output=True, text=True,
                          env=subprocess_env(), timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def signature_block(text: str, name: str) -> str:
    start = text.index(f"signature_def['{name}']")
    end = text.find("signature_def[", start + 1)
    return text[start:end if end > 0 else len(text)]


EXPECTED_SIGNATURES = {  # {signature: ({input: channels}, {output: channels})}; ndim = DDF's
    "serving_default": ({"moving_image": 1, "fixed_image": 1},
                        {"ddf": "ndim", "warped_moving_image": 1}),
    "warp_labels": ({"moving_label": -1, "ddf": "ndim"}, {"warped_label": -1}),
    "register_with_labels": ({"moving_image": 1, "fixed_image": 1, "moving_label": -1},
                             {"ddf": "ndim", "warped_moving_image": 1, "warped_label": -1}),
}


@pytest.mark.parametrize("ndim", [2, 3])
def test_signature_defs_are_what_tf_serving_reads(exported, ndim):
    """The signature defs of saved_model.pb (what TF-Serving and ``saved_model_cli show`` read):
    the predict method, every input and output by name, float32, free batch and spatial sizes."""
    from tensorflow.core.protobuf import saved_model_pb2

    proto = saved_model_pb2.SavedModel()
    proto.ParseFromString((exported[ndim]["path"] / "saved_model.pb").read_bytes())
    (meta_graph,) = proto.meta_graphs
    assert list(meta_graph.meta_info_def.tags) == ["serve"]
    for name, (inputs, outputs) in EXPECTED_SIGNATURES.items():
        signature = meta_graph.signature_def[name]
        assert signature.method_name == "tensorflow/serving/predict"
        for found, tensors in ((signature.inputs, inputs), (signature.outputs, outputs)):
            assert sorted(found) == sorted(tensors), name
            for tensor, channels in tensors.items():
                info = found[tensor]
                assert info.dtype == tf.float32.as_datatype_enum
                dims = [d.size for d in info.tensor_shape.dim]
                assert dims == [-1] * (ndim + 1) + [ndim if channels == "ndim" else channels]


# A fresh saved_model_cli process each (6-10 s; the same defs are read in-process above).
@pytest.mark.slow
@pytest.mark.parametrize("ndim", [2, 3])
def test_saved_model_cli_show_lists_the_signatures(exported, ndim):
    text = run_cli("show", "--all", "--dir", str(exported[ndim]["path"]))
    free = ", ".join(["-1"] * (ndim + 1))
    for name, (inputs, outputs) in EXPECTED_SIGNATURES.items():
        block = signature_block(text, name)
        assert "Method name is: tensorflow/serving/predict" in block
        for kind, tensors in (("inputs", inputs), ("outputs", outputs)):
            found = sorted(line.split("'")[1] for line in block.splitlines()
                           if line.strip().startswith(f"{kind}["))
            assert found == sorted(tensors), (name, kind)
            for tensor, channels in tensors.items():
                entry = block[block.index(f"{kind}['{tensor}']"):]
                assert entry.splitlines()[1].strip() == "dtype: DT_FLOAT"
                channels = ndim if channels == "ndim" else channels
                assert entry.splitlines()[2].strip() == f"shape: ({free}, {channels})"


# A fresh saved_model_cli process (6-10 s); the fixture fresh_process runs every signature of
# both exports in a TensorFlow-only process in the default suite.
@pytest.mark.slow
def test_saved_model_cli_run_serving_default(exported, tmp_path):
    case = exported[3]
    np.save(tmp_path / "moving.npy", case["inputs"]["moving"][:1])
    np.save(tmp_path / "fixed.npy", case["inputs"]["fixed"][:1])
    run_cli("run", "--dir", str(case["path"]), "--tag_set", "serve", "--signature_def",
            "serving_default", "--inputs",
            f"moving_image={tmp_path / 'moving.npy'};fixed_image={tmp_path / 'fixed.npy'}",
            "--outdir", str(tmp_path / "out"))
    ddf = np.load(tmp_path / "out" / "ddf.npy")
    warped = np.load(tmp_path / "out" / "warped_moving_image.npy")
    assert np.abs(ddf - case["ddf"][:1]).max() <= 1e-5
    assert np.abs(warped - case["warped"][:1]).max() <= 1e-5


def test_normalise_intensity_matches_the_training_pipeline(rng):
    images = rng.normal(3.0, 2.0, size=(3, 6, 7, 5, 1)).astype(np.float32)
    images[2] = 4.0  # constant image -> zeros
    got = export.normalise_intensity(tf.constant(images)).numpy()
    for b in range(3):
        np.testing.assert_array_equal(got[b], normalise_intensity(images[b]))


# --------------------------------------------------------------------------------------------
# From a training run folder; versions
# --------------------------------------------------------------------------------------------


def test_export_from_a_run_folder_takes_the_next_version(exported):
    path = exported[2]["path"]
    model_dir = path.parent
    assert path == model_dir / "4"
    assert (model_dir / "3" / "saved_model.pb").read_bytes() == b"keep me"
    assert sorted(p.name for p in model_dir.iterdir()) == ["1", "3", "4"]  # no staging left
    assert (path / "saved_model.pb").is_file() and (path / "variables").is_dir()
    description = json.loads((path / "assets.extra" / "labelreg" / "model.json").read_text())
    assert description["training_step"] == STEP
    assert description["meta"]["network_type"] == "local"
    assert description["meta"]["checkpoint"].endswith("ckpt-1")
    assert description["export"]["jit_compile"] is False
    assert b"_XlaMustCompile" not in (path / "saved_model.pb").read_bytes()
    # Every weight stored once (tracking the Keras model too would double this).
    weights = sum(int(np.prod(w.shape)) * 4 for w in exported[2]["model"].weights)
    stored = sum(f.stat().st_size for f in (path / "variables").glob("variables.data-*"))
    assert weights <= stored < 1.2 * weights


def test_an_existing_version_is_never_overwritten(exported, tmp_path):
    case = exported[2]
    base = case["path"].parent.parent
    before = sorted(p.name for p in case["path"].parent.iterdir())
    with pytest.raises(DataError, match="version 3 already exists"):
        export.export_model(case["model"], base, "tiny2", 3, moving_shape=TRAINED[2]["moving"],
                            fixed_shape=TRAINED[2]["fixed"])
    assert sorted(p.name for p in case["path"].parent.iterdir()) == before


def test_version_helpers_and_argument_checks(tmp_path):
    assert export.list_versions(tmp_path / "missing") == []
    assert export.next_version(tmp_path / "missing") == 1
    for name in ("2", "10", "notes", ".export-x"):
        (tmp_path / name).mkdir()
    assert export.list_versions(tmp_path) == [2, 10]
    assert export.next_version(tmp_path) == 11
    model = LocalNet(ndim=2, num_channel_initial=2)
    with pytest.raises(ValueError, match="is not built; call it once"):
        export.export_model(model, tmp_path, "m", moving_shape=(8, 8), fixed_shape=(8, 8))
    model([np.zeros((1, 8, 8, 1), np.float32), np.zeros((1, 8, 8, 1), np.float32)])
    with pytest.raises(ConfigError, match="version must be a positive integer"):
        export.export_model(model, tmp_path, "m", 0, moving_shape=(8, 8), fixed_shape=(8, 8))
    with pytest.raises(ConfigError, match="name must be a plain folder name"):
        export.export_model(model, tmp_path, "a/b", moving_shape=(8, 8), fixed_shape=(8, 8))
    with pytest.raises(ConfigError, match="label_interpolation must be one of"):
        export.export_model(model, tmp_path, "m", moving_shape=(8, 8), fixed_shape=(8, 8),
                            label_interpolation="cubic")
    with pytest.raises(ConfigError, match="the network is 2-D"):
        export.export_model(model, tmp_path, "m", moving_shape=(8, 8, 8), fixed_shape=(8, 8, 8))
    with pytest.raises(DataError, match="no checkpoint found"):
        export.export_saved_model(tmp_path / "no-run", tmp_path, "m")


# --------------------------------------------------------------------------------------------
# ONNX (optional extra) and CoMIR encoders
# --------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_onnx_export_matches_the_keras_model(tmp_path, rng):
    import onnxruntime

    model = tiny_model(2, seed=5)
    write_run(tmp_path / "run", model, 2)
    path = export.export_onnx(tmp_path / "run", tmp_path / "tiny.onnx", opset=17)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["moving_image", "fixed_image"]
    assert [o.name for o in session.get_outputs()] == ["ddf", "warped_moving_image"]
    for shapes in (TRAINED[2], UNSEEN[2]):
        moving = rng.random((2, *shapes["moving"], 1)).astype(np.float32)
        fixed = rng.random((2, *shapes["fixed"], 1)).astype(np.float32)
        ddf, warped = session.run(None, {"moving_image": moving, "fixed_image": fixed})
        want = keras_register(model, moving, fixed, 2)
        assert ddf.shape == want.shape
        assert np.abs(ddf - want).max() <= 1e-4
        assert np.abs(warped - scipy_warp(moving, want)).max() <= 1e-4


COMIR_INI = """
[CoMIR]
channels_a = 1
channels_b = 3
latent_channels = 2
init_filters = 4
down_blocks = [1, 1]
up_blocks = [1, 1]
bottleneck_layers = 1
growth_rate = 2
dropout = 0.1

[Data]
train_dir = data
patch_size = 16
scale_a = 255
log_b = true

[Train]
dir_run = run
"""


def test_comir_run_exports_one_signature_per_modality(tmp_path, rng):
    from comir_tf import config as comir_config
    from comir_tf.generate import generate
    from labelreg.engine.checkpoints import save_run
    from labelreg.methods.comir import CoMIR, build_models

    ini = tmp_path / "comir.ini"
    ini.write_text(COMIR_INI)
    cfg = comir_config.load(ini)
    model_a, model_b = build_models(cfg)
    models = {"model_a": model_a, "model_b": model_b}
    save_run(models, tmp_path / "run", method="comir", step=tf.Variable(11, dtype=tf.int64),
             **CoMIR(cfg).meta())

    path = export.export_saved_model(tmp_path / "run", tmp_path / "exports")
    assert path == tmp_path / "exports" / "comir" / "1"
    loaded = tf.saved_model.load(str(path))
    assert sorted(loaded.signatures.keys()) == ["modality_a", "modality_b", "serving_default"]
    assert int(loaded.training_step[0]) == 11
    meta = json.loads(loaded.model_description[0].numpy().decode())["meta"]
    assert (meta["scale_a"], meta["log_b"], meta["suffix_a"]) == (255.0, True, "_SHG")
    assert meta["margin"] == {"modality_a": 32, "modality_b": 32}
    for modality, model in (("modality_a", model_a), ("modality_b", model_b)):
        for height, width in ((8, 12), (13, 6)):  # multiples of 4, and odd sizes
            image = rng.random((2, height, width, model.in_channels)).astype(np.float32)
            got = loaded.signatures[modality](image=tf.constant(image))["comir"].numpy()
            want = generate(model, image).numpy()
            assert got.shape == (2, height, width, 2)
            assert np.abs(want).max() > 0.01
            assert np.abs(got - want).max() <= 1e-5
    with pytest.raises(tf.errors.InvalidArgumentError, match="Shape of tensor image"):
        loaded.signatures["modality_b"](image=tf.zeros((1, 8, 8, 1)))


def test_symmetric_padding_matches_numpy(rng):
    from comir_tf.generate import comir_margin, pad_to_multiple

    image = rng.random((1, 3, 5, 2)).astype(np.float32)
    padded, top, left = pad_to_multiple(tf.constant(image), 8)
    assert (int(top), int(left)) == (2, 1)
    want = np.pad(image, ((0, 0), (2, 3), (1, 2), (0, 0)), mode="symmetric")
    np.testing.assert_array_equal(padded.numpy(), want)
    # A margin larger than the image repeats the reflection, as NumPy does.
    padded, top, left = pad_to_multiple(tf.constant(image), 4, margin=6)
    assert (int(top), int(left)) == (6, 7)
    want = np.pad(image, ((0, 0), (6, 7), (7, 8), (0, 0)), mode="symmetric")
    np.testing.assert_array_equal(padded.numpy(), want)
    assert comir_margin(4) == 32 and comir_margin(64) == 64
    assert comir_margin(8, 5) == 8
