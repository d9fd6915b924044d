"""The INI schema of learnsim (Grzech et al., CVPR 2022): variational Bayesian registration with
a learned similarity metric. No TensorFlow import, so a file is validated before it loads."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from labelreg import config
from labelreg.config import Config, Key, Schema

__all__ = ["load", "learnsim_schema"]


def learnsim_schema() -> Schema:
    """``[Data]`` (NIfTI pairs, atlas-based), ``[Metric]``, ``[Variational]``, ``[Train]``,
    ``[Inference]``."""
    return {
        "Method": config.method_section("learnsim"),
        "Data": {
            "dir_moving_image": Key("path", None, "Folder of moving images (NIfTI)."),
            "dir_fixed_image": Key("path", None, "Folder of fixed images, paired by name."),
            "dir_moving_label": Key("path", None, "Moving labels (evaluation only)."),
            "dir_fixed_label": Key("path", None, "Fixed labels (evaluation only)."),
            "atlas": Key("bool", True, "Atlas-based: every moving image is registered to the "
                         "first fixed image."),
            "normalise": Key("bool", True, "Min-max normalise each image to [0, 1]."),
            "synthetic_volumes": Key("bool", False, "Generate mono-modal atlas pairs into "
                                     "dir_synthetic on first use (the demo)."),
            "dir_synthetic": Key("path", None, "Folder of the generated pairs; when set, the "
                                 "four dir_* keys default to its sub-folders."),
            "synthetic_cases": Key("int", 8, "Generated pairs.", min=1),
            "synthetic_size": Key("int_list", (32, 32, 32), "Shape of the generated volumes.",
                                  min=8),
        },
        "Metric": {
            "term": Key("str", "ssd", "Data term on the learned features.",
                        choices=("ssd", "lcc")),
            "learnable": Key("bool", True, "Learn the metric (false: plain SSD / LCC, the "
                             "baseline)."),
            "features": Key("int_list", (4, 8, 8), "Channels of the encoder's convolutions.",
                            min=1),
            "negative_sigma_init": Key("float", 0.1, "Initial sigma of the negative fixed "
                                       "images' distribution.", min=1e-6),
            "negative_u_init": Key("float", 0.1, "Initial rank-1 factor of that distribution.",
                                   min=-1.0, max=1.0),
            "negative_learning_rate": Key("float", 1e-3, "Adam learning rate of the negatives' "
                                          "distribution.", min=0.0),
        },
        "Variational": {
            "iterations": Key("int", 1024, "Adam steps of each pair's posterior per training "
                              "step (and at inference).", min=1),
            "learning_rate": Key("float", 0.01, "Adam learning rate of the posterior.", min=0.0),
            "sigma_init": Key("float", 0.5, "Initial posterior sigma (voxels).", min=1e-6),
            "u_init": Key("float", 0.1, "Initial rank-1 factor of the posterior.", min=-10.0),
            "integration_steps": Key("int", 12, "Scaling-and-squaring steps.", min=0, max=20),
            "regulariser_weight": Key("float", 1.8, "w of 0.5 w sum |grad v|^2 (the paper: SSD "
                                      "1.8, LCC 2.8).", min=0.0),
            "sobolev_smoothness": Key("int", 3, "Half-width of the Sobolev kernel.", min=1),
            "sobolev_lambda": Key("float", 0.5, "Lambda of the Sobolev kernel.", min=0.0),
            "noise": Key("float", 0.1, "Uniform noise added to sampled displacements in "
                         "training, voxels.", min=0.0),
            "samples": Key("int", 5, "Posterior samples at inference (uncertainty map).", min=2),
        },
        "Train": config.train_section(learning_rate=1e-5, minibatch_size=1,
                                      total_iterations=50, freq_info_print=1,
                                      freq_model_save=10),
        "Inference": {
            "dir_moving_image": Key("path", None, "Moving test images; unset = [Data]'s."),
            "dir_fixed_image": Key("path", None, "Fixed test images; unset = [Data]'s."),
            "dir_moving_label": Key("path", None, "Moving test labels; unset = [Data]'s."),
            "dir_fixed_label": Key("path", None, "Fixed test labels; unset = [Data]'s."),
            "dir_save": Key("path", None, "Output folder; unset = <dir_run>/inference."),
            "learned": Key("bool", True, "Use the trained metric (false: the initial one, i.e. "
                           "plain SSD / LCC)."),
            "save_png": Key("bool", True, "Also write overlay.png per pair: the mid-planes of "
                            "fixed | moving | warped | checkerboard, with the first label's "
                            "contours when labels are given."),
        },
    }


def load(path: str | os.PathLike, overrides: Sequence[str] = ()) -> Config:
    """Parse and validate a learnsim INI file.

    Raises:
        ConfigError: any problem, naming the file, section, key and value.
    """
    cfg = config.parse_method(path, learnsim_schema(), overrides)
    data = cfg["Data"]
    if data["dir_synthetic"] is not None:
        for key, sub in (("dir_moving_image", "moving_images"), ("dir_fixed_image", "fixed_images"),
                         ("dir_moving_label", "moving_labels"),
                         ("dir_fixed_label", "fixed_labels")):
            if data[key] is None:
                cfg._replace("Data", key, Path(data["dir_synthetic"]) / sub)
    elif data["synthetic_volumes"]:
        raise config.fail(cfg, "Data", "dir_synthetic", "is required when synthetic_volumes = "
                          "true.")
    for key in ("dir_moving_image", "dir_fixed_image"):
        if cfg["Data"][key] is None:
            raise config.fail(cfg, "Data", key, "is required (a folder of NIfTI files).")
    inference = cfg["Inference"]
    for key in ("dir_moving_image", "dir_fixed_image", "dir_moving_label", "dir_fixed_label"):
        if inference[key] is None:
            cfg._replace("Inference", key, cfg["Data"][key])
    if len(cfg["Data"]["synthetic_size"]) != 3:
        raise config.fail(cfg, "Data", "synthetic_size", "expected 3 sizes (3-D volumes).")
    return cfg
