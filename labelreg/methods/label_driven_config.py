"""The INI schema of label-driven registration (``[Method] name = labelreg``, the default of any
file); imports no TensorFlow, so a file is validated before TensorFlow loads.

The schema accepts label-reg's ``config_demo.ini`` unchanged. A network with options of its own
(``network_type = centroid_align``) adds them to ``[Network]`` and ``[Loss]`` when the file
selects it (:mod:`labelreg.config.components`); the augmentation keys of ``[Data]`` come from
:mod:`labelreg.data.augment_options`.

``python -m labelreg.methods.label_driven_config docs/config.md`` rewrites the reference page.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path

from labelreg import config
from labelreg.config import Config, Key, Schema, Selector
from labelreg.data.augment_options import AUGMENTATION_KEYS
from labelreg.losses.registry import available_losses
from labelreg.networks.registry import NETWORKS

__all__ = ["load", "label_driven_schema", "cross_check", "SELECTORS", "SECTION_DOCS",
           "generated_docs", "update_docs"]

#: The keys that select a component whose options join the schema.
SELECTORS = (Selector("Network", "network_type", NETWORKS),)

SECTION_DOCS = {
    "Method": "Which method the file configures; optional here (a file without it, or without "
    "another method's own section, is label-driven registration).",
    "Data": "Training data: four folders of NIfTI files paired by file name (label-reg's layout), "
    "an optional validation set, and preprocessing.",
    "Network": "The registration network.",
    "Loss": "Label similarity (weak supervision), deformation regulariser and an optional image "
    "similarity.",
    "Train": "Optimisation, logging and checkpoints.",
    "Inference": "Registering test pairs with a trained model.",
}



def label_driven_schema() -> Schema:
    """The schema of label-driven registration without the options of the selected
    components (:data:`SELECTORS` adds them); built on each use from the registries, so a
    network or loss registered at run time is a valid choice from then on."""
    label_losses = available_losses("label")
    regularisers = available_losses("regulariser")
    image_losses = ("none", *[n for n in available_losses("image") if n != "none"])
    return {
        "Method": config.method_section("labelreg"),
        "Data": {
            "dir_moving_image": Key("path", None, "Folder of moving (e.g. MR) images."),
            "dir_fixed_image": Key("path", None, "Folder of fixed (e.g. ultrasound) images."),
            "dir_moving_label": Key(
                "path", None, "Folder of moving labels (3-D or 4-D NIfTI, one label per 4th index)."
            ),
            "dir_fixed_label": Key(
                "path", None, "Folder of fixed labels, same names and label counts as the moving."
            ),
            "dir_valid_moving_image": Key(
                "path", None, "Validation moving images (optional; unset = no validation)."
            ),
            "dir_valid_fixed_image": Key("path", None, "Validation fixed images (optional)."),
            "dir_valid_moving_label": Key("path", None, "Validation moving labels (optional)."),
            "dir_valid_fixed_label": Key("path", None, "Validation fixed labels (optional)."),
            "normalise": Key(
                "bool", True, "Min-max normalise each image to [0, 1] (a constant image becomes 0)."
            ),
            **AUGMENTATION_KEYS,
            "voxel_spacing": Key(
                "float_list", (), "Voxel size in mm per axis; empty = read from the NIfTI header.",
                min=0.0,
            ),
            "demo_data": Key(
                "path", None, "When set, the deterministic demo dataset is generated into this "
                "folder on first use (configs/demo.ini); unset for real data.",
            ),
            "label0_probability": Key(
                "float", None, "How often the training pair's sampled label is label 0 (the "
                "gland); the other labels (landmarks) share the rest uniformly. Unset = "
                "label-reg's uniform draw over a case's labels (label 0 one time in L).",
                min=0.0, max=1.0,
            ),
            "case_groups": Key(
                "path", None, "CSV of case,group rows (e.g. a patient per case; python -m "
                "labelreg.data.patients writes one): python -m labelreg.crossval keeps each "
                "group's cases together in its folds and inner validation splits, and "
                "valid_fraction sets whole groups aside; unset = every case its own group.",
            ),
            "valid_fraction": Key(
                "float", 0.0, "Share of the training cases set aside as the validation set "
                "(validation curve, keep_best), whole case_groups groups at a time, drawn with "
                "[Train] seed; instead of dir_valid_*. 0 = none.",
                min=0.0, max=0.9,
            ),
        },
        "Network": {
            "network_type": Key(
                "str", "local", "Registration network (a name of the networks registry).",
                choices=tuple(NETWORKS),
            ),
            "num_channel_initial": Key(
                "int", 0, "Channels of the first layer; 0 = the network's own default (local: 32).",
                min=0,
            ),
            "ddf_levels": Key(
                "int_list", (0, 1, 2, 3, 4), "Resolution levels summed into the DDF (0 = full).",
                min=0, max=4,
            ),
            "moving_input": Key(
                "str", "resize", "How the network sees a moving image of another shape: resize "
                "(stretched to the fixed shape, label-reg) or identity (placed on the fixed grid "
                "as the zero DDF warps it, so the offset between the two input channels is the "
                "displacement to predict).", choices=("resize", "identity"),
            ),
        },
        "Loss": {
            "similarity_type": Key(
                "str", "dice", "Label similarity loss.", choices=label_losses
            ),
            "similarity_scales": Key(
                "int_list", (0, 1, 2, 4, 8, 16),
                "Gaussian sigmas (voxels) of the multi-scale label loss; 0 = unsmoothed.",
                min=0,
            ),
            "centroid_weight": Key(
                "float", 0.0, "Weight per mm of the soft centroid distance between the sampled "
                "fixed label and the warped moving label, added to the label loss (0 = "
                "label-reg's objective).", min=0.0,
            ),
            "regulariser_type": Key(
                "str", "bending", "Deformation regulariser.", choices=regularisers
            ),
            "regulariser_weight": Key("float", 0.5, "Weight of the regulariser.", min=0.0),
            "image_loss_type": Key(
                "str", "none", "Image similarity loss added to the label loss.",
                choices=image_losses,
            ),
            "image_loss_weight": Key(
                "float", 0.0, "Weight of the image loss (> 0 exactly when a type is set).", min=0.0
            ),
        },
        "Train": config.train_section(),
        "Inference": {
            "file_model_saved": Key(
                "path", None, "Checkpoint to load; unset = [Train] file_model_save."
            ),
            "dir_moving_image": Key("path", None, "Folder of moving test images."),
            "dir_fixed_image": Key("path", None, "Folder of fixed test images."),
            "dir_save": Key("path", None, "Output folder; unset = <dir_run>/inference."),
            "dir_moving_label": Key(
                "path", None, "Moving test labels to warp (optional; unset = no label warping)."
            ),
            "dir_fixed_label": Key(
                "path", None, "Fixed test labels for Dice/distance metrics (optional)."
            ),
            "minibatch_size": Key("int", 1, "Pairs per inference batch.", min=1),
            "precision": Key(
                "str", "float32", "Arithmetic of the network at inference: float32, or bfloat16 "
                "(bfloat16 convolutions; the DDF and the warp stay float32).",
                choices=("float32", "bfloat16"),
            ),
            "save_png": Key("bool", True, "Also write PNG overlays of the middle slices."),
            "label_interpolation": Key(
                "str", "linear", "Warping of labels (linear output is thresholded at 0.5 for "
                "metrics).", choices=("linear", "nearest"),
            ),
        },
    }



def cross_check(cfg: Config) -> None:
    """Checks of label-driven keys against each other (see :func:`load`)."""
    for section, key in (("Loss", "similarity_scales"), ("Network", "ddf_levels")):
        values = cfg[section][key]
        if not values:
            raise config.fail(cfg, section, key, "expected at least one value.")
        if len(set(values)) != len(values):
            raise config.fail(cfg, section, key, "expected distinct values.")
    spacing = cfg["Data"]["voxel_spacing"]
    if spacing and (len(spacing) not in (2, 3) or min(spacing) <= 0):
        raise config.fail(
            cfg, "Data", "voxel_spacing", "expected empty, or 2 or 3 sizes in mm, each > 0."
        )

    loss = cfg["Loss"]
    if loss["image_loss_type"] != "none" and loss["image_loss_weight"] <= 0:
        raise config.fail(
            cfg, "Loss", "image_loss_weight",
            f"expected > 0 because image_loss_type = {loss['image_loss_type']} (or set "
            "image_loss_type = none).",
        )
    if loss["image_loss_type"] == "none" and loss["image_loss_weight"] > 0:
        raise config.fail(
            cfg, "Loss", "image_loss_weight",
            "has no effect because image_loss_type = none; set an image loss type or weight 0.",
        )

    if cfg.has_section("Data"):
        data = cfg["Data"]
        for key in ("dir_moving_image", "dir_fixed_image"):
            if data[key] is None:
                raise config.fail(cfg, "Data", key, "is required for training (a folder of NIfTI files).")
        config.check_pair(cfg, "Data", "dir_moving_label", "dir_fixed_label")
        config.check_pair(cfg, "Data", "dir_valid_moving_image", "dir_valid_fixed_image")
        config.check_pair(cfg, "Data", "dir_valid_moving_label", "dir_valid_fixed_label")
        if data["dir_valid_moving_label"] is not None and data["dir_valid_moving_image"] is None:
            raise config.fail(
                cfg, "Data", "dir_valid_moving_image",
                "must be set when validation labels are given.",
            )
        check_valid_fraction(cfg)
        if data["dir_moving_label"] is None and loss["image_loss_type"] == "none":
            raise config.fail(
                cfg, "Data", "dir_moving_label",
                "no labels and no image loss: nothing to train on; set the label folders or "
                "[Loss] image_loss_type.",
            )

    if cfg.has_section("Inference"):
        inference = cfg["Inference"]
        for key in ("dir_moving_image", "dir_fixed_image"):
            if inference[key] is None:
                raise config.fail(cfg, "Inference", key, "is required for inference.")
        if inference["dir_fixed_label"] is not None and inference["dir_moving_label"] is None:
            raise config.fail(
                cfg, "Inference", "dir_moving_label",
                "must be set when dir_fixed_label is (label metrics need both).",
            )



def check_valid_fraction(cfg: Config) -> None:
    """``[Data] valid_fraction`` > 0 needs labels (validation scores them) and no
    ``dir_valid_*`` folders (one validation set or the other)."""
    data = cfg["Data"]
    if not data["valid_fraction"]:
        return
    if data["dir_valid_moving_image"] is not None:
        raise config.fail(cfg, "Data", "valid_fraction",
                          "sets validation cases aside from the training folders, but "
                          "dir_valid_moving_image is set too; use one of them.")
    if data["dir_moving_label"] is None:
        raise config.fail(cfg, "Data", "valid_fraction",
                          "needs dir_moving_label and dir_fixed_label: validation scores the "
                          "warped labels.")


#: The folders each command reads, as ``(section, key)``: checked by :func:`check_inputs`
#: before TensorFlow is imported.
INPUT_FOLDERS: dict[str, tuple[tuple[str, str], ...]] = {
    "train": tuple(("Data", f"dir_{split}{role}") for split in ("", "valid_")
                   for role in ("moving_image", "fixed_image", "moving_label", "fixed_label")),
    "infer": tuple(("Inference", f"dir_{role}") for role in (
        "moving_image", "fixed_image", "moving_label", "fixed_label")),
}


def check_inputs(cfg: Config, command: str) -> None:
    """Every set input folder of ``command`` (``"train"`` or ``"infer"``) exists, so a missing
    one is reported in a second, naming its key, instead of after TensorFlow has loaded.

    Folders of a demo dataset not generated yet (``[Data] demo_data``) are not checked: the
    method generates them on first use.

    Raises:
        ConfigError: naming the file, section, key and folder.
    """
    demo = cfg["Data"].get("demo_data") if cfg.has_section("Data") else None
    if demo is not None and not os.path.isdir(demo):
        return
    for section, key in INPUT_FOLDERS.get(command, ()):
        if not cfg.has_section(section) or key not in cfg[section]:
            continue
        folder = cfg[section][key]
        if folder is not None and not os.path.isdir(folder):
            raise config.fail(cfg, section, key, f"folder not found: {folder}")


def load(path: str | os.PathLike, overrides: Sequence[str] = ()) -> Config:
    """Parse a label-driven INI file and check keys against each other.

    Fills the defaults that depend on other keys (``[Train] dir_run``, ``dir_tensorboard``,
    ``[Inference] file_model_saved``, ``dir_save``), then checks: learning rate > 0; non-empty,
    distinct scales and DDF levels; a voxel spacing of 2 or 3 positive sizes; an image loss has a
    weight > 0 and a weight has a loss; a present ``[Data]`` names its image folders, label and
    validation folders come in moving/fixed pairs, and there are labels or an image loss; a
    present ``[Inference]`` names its image folders.

    Args:
        path: the INI file (label-reg's ``config_demo.ini`` is accepted unchanged).
        overrides: ``"Section.key=value"`` strings.

    Returns:
        The validated :class:`Config`.

    Raises:
        ConfigError: on any problem, naming file, section, key and value.
    """
    cfg = config.parse_method(path, label_driven_schema(), overrides, selectors=SELECTORS)
    cross_check(cfg)
    return cfg



_BEGIN = "<!-- BEGIN GENERATED: python -m labelreg.methods.label_driven_config docs/config.md -->"
_END = "<!-- END GENERATED -->"


def generated_docs() -> str:
    """The generated block of ``docs/config.md`` (between its markers): every section, then the
    options of each network that declares some."""
    return (f"{_BEGIN}\n\n{config.schema_markdown(label_driven_schema(), SECTION_DOCS)}\n"
            f"{config.components_markdown(SELECTORS)}\n{_END}")


def update_docs(path: str | os.PathLike) -> Path:
    """Rewrite the generated block of a Markdown file (``docs/config.md``) from the schema."""
    return config.replace_generated_block(path, generated_docs(), _BEGIN, _END)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(config.docs_command(sys.argv[1:], update_docs,
                                 "labelreg.methods.label_driven_config"))
