"""Options declared by components: a network registered from this file with an INI option of its
own trains from an INI that sets it, with no edit to any module; a key of a component the file
does not select fails before TensorFlow loads, naming the component."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import keras
import pytest

from labelreg.config import ComponentOptions, Key
from labelreg.errors import ConfigError
from labelreg.methods.registry import load_config
from labelreg.networks.registry import NETWORKS, register_network
from tests.test_pipeline_e2e import write_config, write_dataset

ROOT = Path(__file__).resolve().parents[1]

TOY_OPTIONS = ComponentOptions(
    keys={"Network": {"toy_scale": Key("float", 1.0, "Factor of the toy DDF.", min=0.0),
                      "toy_width": Key("int", 2, "Channels of the toy convolution.", min=1)},
          "Loss": {"toy_note": Key("str", "none", "A [Loss] option of the toy network.")}},
    check=lambda cfg: None,
)


@pytest.fixture
def toy_network():
    @register_network("toy_scaled", options=TOY_OPTIONS)
    @keras.saving.register_keras_serializable(package="labelreg_tests")
    class ToyScaled(keras.Model):
        """``toy_scale * conv([moving resized, fixed])``: a DDF of the fixed shape."""

        seen: list[dict] = []

        def __init__(self, ndim=3, toy_scale=1.0, toy_width=2, **kwargs):
            super().__init__(**kwargs)
            ToyScaled.seen.append({"toy_scale": toy_scale, "toy_width": toy_width})
            self.ndim, self.toy_scale, self.toy_width = ndim, toy_scale, toy_width
            self.hidden = keras.layers.Conv3D(toy_width, 3, padding="same")
            self.head = keras.layers.Conv3D(ndim, 3, padding="same")

        def call(self, inputs, training=None):
            from labelreg import ops

            moving, fixed = inputs
            moving = ops.resize(moving, fixed.shape[1:-1])
            stacked = keras.ops.concatenate([moving, fixed], axis=-1)
            return self.toy_scale * self.head(self.hidden(stacked))

        def get_config(self):
            return {**super().get_config(), "ndim": self.ndim, "toy_scale": self.toy_scale,
                    "toy_width": self.toy_width}

    yield ToyScaled
    NETWORKS.remove("toy_scaled")


def test_a_toy_network_with_its_own_option_trains_from_an_ini(toy_network, tmp_path):
    from labelreg.engine import train

    data = write_dataset(tmp_path / "data", num_cases=2)
    ini = write_config(tmp_path / "toy.ini", data,
                       Network={"network_type": "toy_scaled", "num_channel_initial": "0",
                                "toy_scale": "2.5"},
                       Loss={"toy_note": "kept"})
    name, cfg = load_config(ini)
    assert cfg["Network"]["toy_scale"] == 2.5 and cfg["Network"]["toy_width"] == 2
    assert cfg["Loss"]["toy_note"] == "kept"
    result = train(cfg, log=lambda line: None)
    assert result.last_step == 3
    # The option reached the constructor; the key left at its default was not passed.
    assert toy_network.seen[0] == {"toy_scale": 2.5, "toy_width": 2}
    assert "toy_scaled" in __import__("labelreg.methods.label_driven_config",
                                      fromlist=["x"]).generated_docs()


def test_a_bad_option_value_of_the_selected_network(toy_network, tmp_path):
    data = write_dataset(tmp_path / "data", num_cases=2)
    ini = write_config(tmp_path / "toy.ini", data,
                       Network={"network_type": "toy_scaled", "toy_width": "0"})
    with pytest.raises(ConfigError, match=r"\[Network\] toy_width = '0'.*>= 1|\[Network\] "
                                          r"toy_width"):
        load_config(ini)


@pytest.mark.parametrize("section, key, value", [
    ("Network", "num_channel_segment", "4"), ("Loss", "segmentation_weight", "1"),
    ("Network", "depth", "3"),
])
def test_an_option_of_an_unselected_network_names_its_owner(tmp_path, section, key, value):
    data = write_dataset(tmp_path / "data", num_cases=2)
    ini = write_config(tmp_path / "x.ini", data, **{section: {key: value}})
    owner = "unet" if key == "depth" else "centroid_align"
    with pytest.raises(ConfigError, match=rf"\[{section}\] {key} = '{value}': an option of "
                                          rf"network_type = {owner} \(this file has "
                                          r"network_type = local\)"):
        load_config(ini)
    # Selecting the owner (here by an override) makes the key valid.
    if owner == "centroid_align":
        _, cfg = load_config(ini, ["Network.network_type=centroid_align"])
        assert cfg[section][key] == type(cfg[section][key])(value)


def test_a_misspelt_option_fails_before_tensorflow_loads(tmp_path):
    data = write_dataset(tmp_path / "data", num_cases=2)
    ini = write_config(tmp_path / "x.ini", data, Network={"network_type": "centroid_align",
                                                           "num_channel_segmnt": "4"})
    start = time.perf_counter()
    run = subprocess.run([sys.executable, str(ROOT / "training.py"), str(ini)],
                         capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert run.returncode == 2
    assert "num_channel_segmnt" in run.stderr and "Did you mean 'num_channel_segment'" in \
        run.stderr
    assert time.perf_counter() - start < 3.0  # TensorFlow alone takes ~3.5 s to import


def test_centroid_align_checks_run_with_its_options(tmp_path):
    data = write_dataset(tmp_path / "data", num_cases=2)
    ini = write_config(tmp_path / "x.ini", data, Network={"network_type": "centroid_align"},
                       Loss={"freeze_segmentations": "true"})
    with pytest.raises(ConfigError, match=r"freeze_segmentations.*segmentation_only_steps > 0"):
        load_config(ini)


def test_global_transform_reaches_the_affine_stage(tmp_path):
    """[Network] global_transform is declared once (networks/affine_options.py) for the two
    networks with an affine stage (global and composite: tests/test_networks.py builds both
    with it); the method builds the composite with it, and another network names its
    owners."""
    from labelreg.methods.label_driven import LabelDriven

    data = write_dataset(tmp_path / "data", num_cases=2)
    ini = write_config(tmp_path / "x.ini", data, Network={
        "network_type": "composite", "num_channel_initial": "2",
        "global_transform": "translation"})
    _, cfg = load_config(ini)
    assert cfg["Network"]["global_transform"] == "translation"
    method = LabelDriven(cfg, log=lambda line: None)
    method.prepare_data()
    assert method.network_arguments()["transform"] == "translation"
    assert method.build()["model"].regressor.transform == "translation"
    with pytest.raises(ConfigError, match=r"global_transform = 'shear'.*Choices|"
                                          r"global_transform = 'shear'.*expected one of"):
        load_config(ini, ["Network.global_transform=shear"])
    with pytest.raises(ConfigError, match=r"global_transform = 'translation': an option of "
                                          r"network_type = (global|composite)"):
        load_config(ini, ["Network.network_type=local"])
