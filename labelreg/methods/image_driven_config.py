"""The INI schema of image-driven (unsupervised) registration and of the DeepSim feature
extractor; imports no TensorFlow, so a file is validated before TensorFlow loads.

Image-driven registration (``[Method] name = image_driven``) trains a registration network from
the images alone: the loss compares the fixed image with the warped moving image with any
registered image similarity (``ssd``, ``lncc``, ``gncc``, ``nmi``, ``mind``, ``deepsim``...),
plus a regulariser and an optional supervised label term; labels otherwise only evaluate. Data
are NIfTI pairs (as label-driven registration) or 2-D TIFF stacks (DeepSim's microscopy
sequences: consecutive frames are registered).

The DeepSim feature extractor (``[Method] name = deepsim_features``) is a segmentation U-Net
trained on the frames of TIFF stacks and their class labels, or on both images of NIfTI pairs
and their label 0; its encoder features make the ``deepsim`` similarity (``[Loss]
feature_extractor`` names its run folder).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from typing import Any

from labelreg import config
from labelreg.config import Config, Key, Schema, Selector
from labelreg.losses.registry import LOSSES
from labelreg.methods import label_driven_config

__all__ = ["load", "load_features", "image_driven_schema", "features_schema",
           "parse_options", "STACK_KEYS"]

_FORMATS = ("nifti", "tiff_stack")

#: The keys that select a component whose options join the schema: the network, and the image
#: similarity (deepsim and learnsim own ``[Loss] feature_extractor``).
SELECTORS = (*label_driven_config.SELECTORS, Selector("Loss", "image_loss_type", LOSSES))

#: ``[Data]`` keys of TIFF-stack data (shared by both methods).
STACK_KEYS: dict[str, Key] = {
    "format": Key("str", "nifti", "Data format: NIfTI pair folders or 2-D TIFF stacks "
                  "(<dir_stacks>/images/<seq>.tif and labels-class/<seq>.tif).",
                  choices=_FORMATS),
    "dir_stacks": Key("path", None, "TIFF stacks folder (format = tiff_stack)."),
    "synthetic_stacks": Key("bool", False, "Generate synthetic stacks into dir_stacks on first "
                            "use (the demo; the published datasets cannot be downloaded)."),
    "synthetic_frames": Key("int", 24, "Frames per generated stack.", min=2),
    "synthetic_size": Key("int_list", (128, 128), "Frame shape (H, W) of generated stacks.",
                          min=16),
    "synthetic_motion": Key("float", 2.0, "Motion between generated frames (1: about 1-1.5 "
                            "pixels at 128 x 128).", min=0.0),
    "train_sequences": Key("str_list", ("01",), "Stack names used for training."),
    "valid_sequences": Key("str_list", (), "Stack names used for validation (consecutive "
                           "frames); empty = none."),
    "max_offset": Key("int", 2, "Training pairs: a random partner within this many frames.",
                      min=1),
    "rotation": Key("float", 180.0, "Augmentation: largest rotation, degrees (TIFF stacks).",
                    min=0.0, max=180.0),
    "scale_range": Key("float_list", (0.8, 1.2), "Augmentation: isotropic scale range "
                       "(TIFF stacks).", min=0.1),
    "flip": Key("bool", True, "Augmentation: random flips (TIFF stacks)."),
}


def _replace(key: Key, **changes: Any) -> Key:
    return dataclasses.replace(key, **changes)


def image_driven_schema() -> Schema:
    """label-reg's sections with the image term first, plus the TIFF-stack keys."""
    base = label_driven_config.label_driven_schema()
    data = {**base["Data"], **STACK_KEYS}
    # The keys of a network with options of its own (unet, gradirn, centroid_align) join
    # [Network] when the file selects it (label_driven_config.SELECTORS).
    network = {**base["Network"],
               "network_type": _replace(base["Network"]["network_type"], default="unet")}
    image_names = tuple(n for n in base["Loss"]["image_loss_type"].choices if n != "none")
    loss = {
        "image_loss_type": Key("str", "ssd", "Image similarity of fixed and warped moving "
                               "image (a name of the loss registry).", choices=image_names),
        "image_loss_weight": Key("float", 1.0, "Weight of the image similarity.", min=0.0),
        "image_loss_options": Key("str_list", (), "Options of the image similarity as "
                                  "name=value, e.g. [window=9] for lncc, [bins=64, "
                                  "sample_fraction=0.1] for nmi."),
        "regulariser_type": _replace(base["Loss"]["regulariser_type"], default="gradient-l2"),
        "regulariser_weight": _replace(base["Loss"]["regulariser_weight"], default=0.01,
                                       doc="Weight of the regulariser (DeepSim's lambda)."),
        "label_loss_type": Key("str", "dice", "Optional supervised label term.",
                               choices=base["Loss"]["similarity_type"].choices),
        "label_loss_weight": Key("float", 0.0, "Weight of the label term; 0 = labels only "
                                 "evaluate (unsupervised).", min=0.0),
        "similarity_scales": base["Loss"]["similarity_scales"],
    }
    return {
        "Method": config.method_section("image_driven"),
        "Data": data,
        "Network": network,
        "Loss": loss,
        "Train": config.train_section(learning_rate=1e-4, minibatch_size=4),
        "Inference": base["Inference"],
    }


def parse_options(cfg: Config, section: str, key: str) -> dict[str, Any]:
    """``[name=value, ...]`` as a dict of ints, floats, booleans or strings (never evaluated).

    Raises:
        ConfigError: for an item without ``=``, naming the file, section and key.
    """
    options: dict[str, Any] = {}
    for item in cfg[section][key]:
        name, sep, text = str(item).partition("=")
        if not sep or not name.strip():
            raise config.fail(cfg, section, key, f"expected items name=value; received {item!r}.")
        text = text.strip()
        value: Any = text
        lowered = text.lower()
        if lowered in ("true", "false"):
            value = lowered == "true"
        else:
            for kind in (int, float):
                try:
                    value = kind(text)
                    break
                except ValueError:
                    continue
        options[name.strip()] = value
    return options


def _check_data(cfg: Config) -> None:
    data = cfg["Data"]
    if data["format"] == "tiff_stack":
        if data["dir_stacks"] is None:
            raise config.fail(cfg, "Data", "dir_stacks", "is required when format = tiff_stack.")
        if not data["train_sequences"]:
            raise config.fail(cfg, "Data", "train_sequences", "expected at least one stack.")
        low, high = (tuple(data["scale_range"]) + (None, None))[:2]
        if len(data["scale_range"]) != 2 or low > high:
            raise config.fail(cfg, "Data", "scale_range", "expected [low, high], low <= high.")
    elif cfg.has_section("Data"):
        for key in ("dir_moving_image", "dir_fixed_image"):
            if data[key] is None:
                raise config.fail(cfg, "Data", key, "is required for training (a folder of "
                                  "NIfTI files).")
        label_driven_config.check_valid_fraction(cfg)


def check_inputs(cfg: Config, command: str) -> None:
    """Every set input folder of ``command`` exists (NIfTI pairs: as
    :func:`label_driven_config.check_inputs`; TIFF stacks: ``[Data] dir_stacks`` unless the
    synthetic stacks are still to be generated).

    Raises:
        ConfigError: naming the file, section, key and folder.
    """
    data = cfg["Data"] if cfg.has_section("Data") else {}
    if data.get("format") == "tiff_stack":
        folder = data["dir_stacks"]
        if folder is not None and not data["synthetic_stacks"] and not os.path.isdir(folder):
            raise config.fail(cfg, "Data", "dir_stacks", f"folder not found: {folder}")
        return
    label_driven_config.check_inputs(cfg, command)


def load(path: str | os.PathLike, overrides: Sequence[str] = ()) -> Config:
    """Parse and validate an image-driven registration INI file.

    Raises:
        ConfigError: any problem, naming the file, section, key and value.
    """
    cfg = config.parse_method(path, image_driven_schema(), overrides, selectors=SELECTORS)
    _check_data(cfg)
    parse_options(cfg, "Loss", "image_loss_options")
    return cfg


def features_schema() -> Schema:
    """The DeepSim feature extractor: a segmentation U-Net on TIFF-stack frames, or on both
    images of NIfTI pairs with their label 0 (the gland of the MR/TRUS data)."""
    base = label_driven_config.label_driven_schema()
    return {
        "Method": config.method_section("deepsim_features"),
        "Data": {**base["Data"], **STACK_KEYS,
                 "format": _replace(STACK_KEYS["format"], default="tiff_stack")},
        "Network": {
            "channels": Key("int_list", (64, 128, 256), "Encoder channels (the paper: 64 128 256 "
                            "in 2-D, 32 64 128 in 3-D); decoder mirrored.", min=1),
            "batch_norm": Key("bool", True, "Batch normalisation in the encoder stages."),
            "dropout": Key("float", 0.5, "Channel dropout after each stage; 0 = none.",
                           min=0.0, max=0.95),
            "autoencoder": Key("bool", False, "The autoencoder variant (no skips, sigmoid head, "
                               "mean squared error) instead of segmentation."),
        },
        "Train": config.train_section(learning_rate=1e-4, minibatch_size=4),
        "Inference": {"dir_save": base["Inference"]["dir_save"]},
    }


def load_features(path: str | os.PathLike, overrides: Sequence[str] = ()) -> Config:
    """Parse and validate a DeepSim feature-extractor INI file.

    Raises:
        ConfigError: any problem, naming the file, section, key and value.
    """
    cfg = config.parse_method(path, features_schema(), overrides)
    if not cfg["Network"]["channels"]:
        raise config.fail(cfg, "Network", "channels", "expected at least one stage.")
    _check_data(cfg)
    return cfg


_BEGIN = "<!-- BEGIN GENERATED: python -m labelreg.methods.image_driven_config docs/image_driven.md -->"
_END = "<!-- END GENERATED -->"


def generated_docs() -> str:
    """The generated block of ``docs/image_driven.md``: both schemas as tables."""
    body = (
        "### `image_driven`\n\n" + config.schema_markdown(image_driven_schema())
        + "\n" + config.components_markdown(SELECTORS)
        + "\n### `deepsim_features`\n\n" + config.schema_markdown(features_schema())
    )
    return f"{_BEGIN}\n\n{body}\n{_END}"


def update_docs(path: str | os.PathLike) -> None:
    """Rewrite (or append) the generated block of a Markdown file."""
    config.replace_generated_block(path, generated_docs(), _BEGIN, _END)


if __name__ == "__main__":  # pragma: no cover
    import sys

    sys.exit(config.docs_command(sys.argv[1:], update_docs,
                                 "labelreg.methods.image_driven_config"))
