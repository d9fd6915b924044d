"""The INI schema of a CoMIR run (``configs/comir.ini``).

A CoMIR INI file is recognised by its ``[CoMIR]`` section; ``training.py``, ``inference.py`` and
``python -m comir_tf.evaluate`` read it with :func:`load`. Every key, its type, default and
meaning is listed in :data:`COMIR_SCHEMA` (and, as tables, in ``docs/comir.md``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from labelreg.config import (
    REQUIRED,
    Config,
    Key,
    Schema,
    method_section,
    parse_method,
    replace_generated_block,
    schema_markdown,
    train_section,
)
from labelreg.errors import ConfigError

__all__ = [
    "CRITICS", "RENAMED_KEYS",
    "COMIR_SCHEMA", "COMIR_SECTION_DOCS", "load", "schema_docs", "update_docs", "METHODS",
    "DEFAULT_METHODS",
]

#: Registration methods the evaluation command can compare (``comir_sift`` needs OpenCV).
METHODS = ("comir", "raw_mse", "raw_mi", "comir_sift")
DEFAULT_METHODS = ("comir", "raw_mse", "raw_mi")

#: CoMIR's ``[Train]`` key names before the shared trainer, still read (with a note).
RENAMED_KEYS = {
    ("Train", "run_dir"): "dir_run",
    ("Train", "steps"): "total_iterations",
    ("Train", "batch_size"): "minibatch_size",
    ("Train", "save_every"): "freq_model_save",
    ("Train", "log_every"): "freq_info_print",
    ("Train", "max_checkpoints"): "max_checkpoints_to_keep",
}

#: The critics of the InfoNCE loss (``comir_tf.contrastive``).
CRITICS = ("mse", "cosine", "l1", "l2", "linf", "huber", "corr")

COMIR_SCHEMA: Schema = {
    "Method": method_section("comir"),
    "CoMIR": {
        "channels_a": Key("int", 1, "Channels of modality A's images (1 for SHG).", min=1),
        "channels_b": Key("int", 3, "Channels of modality B's images (3 for RGB brightfield).",
                          min=1),
        "latent_channels": Key("int", 1, "Channels of the CoMIR (the shared representation).",
                               min=1),
        "init_filters": Key("int", 32, "Filters of the Tiramisu's 3x3 stem convolution.", min=1),
        "down_blocks": Key("int_list", (4, 4, 4, 4, 4, 4),
                           "Dense layers per down block (its length is the number of poolings).",
                           min=1),
        "up_blocks": Key("int_list", (4, 4, 4, 4, 4, 4),
                         "Dense layers per up block (same length as down_blocks).", min=1),
        "bottleneck_layers": Key("int", 4, "Dense layers in the bottleneck block.", min=1),
        "growth_rate": Key("int", 12, "Channels added by each dense layer.", min=1),
        "compression": Key("float", 0.75, "Channel factor of each transition down.", min=0.01,
                           max=1.0),
        "dropout": Key("float", 0.2, "Dropout rate of the dense layers and transitions.", min=0.0,
                       max=0.95),
        "critic": Key("str", "mse", "Similarity between two patches in the InfoNCE loss.",
                      choices=CRITICS),
        "tau": Key("float", 0.5, "Temperature of the InfoNCE loss.", min=1e-6),
        "l1_decay": Key("float", 1e-4, "Weight of the L1 activation decay (1 + sum|x|)/numel.",
                        min=0.0),
        "l2_decay": Key("float", 1e-4, "Weight of the L2 activation decay (1 + sum x^2)/numel.",
                        min=0.0),
        "equivariance": Key("bool", True, "Train with random C4 rotations (k*90 degrees, per "
                            "sample and modality, undone after the network)."),
    },
    "Data": {
        "train_dir": Key("path", REQUIRED, "Folder of aligned training pairs "
                         "<id><suffix_a>.<ext> / <id><suffix_b>.<ext> (ext tif, tiff or png)."),
        "test_dir": Key("path", None, "Folder of aligned test pairs, same layout (inference, "
                        "validation and evaluation)."),
        "suffix_a": Key("str", "_SHG", "File-name suffix of modality A (before the extension)."),
        "suffix_b": Key("str", "_BF", "File-name suffix of modality B (before the extension)."),
        "scale_a": Key("float", 0.0, "Divide modality A by this; 0 = by the integer type's "
                       "maximum (float images unchanged).", min=0.0),
        "scale_b": Key("float", 0.0, "Divide modality B by this; 0 = by the integer type's "
                       "maximum (float images unchanged).", min=0.0),
        "log_a": Key("bool", False, "Apply log(1 + x) to modality A after scaling (SHG)."),
        "log_b": Key("bool", False, "Apply log(1 + x) to modality B after scaling."),
        "patch_size": Key("int", 128, "Side of the square training patches, in pixels.", min=8),
        "flip": Key("bool", True, "Random horizontal flips (probability 0.5)."),
        "rotate": Key("bool", True, "Random rotations by any angle, reflection-padded."),
        "blur_sigma": Key("float", 0.0, "Largest Gaussian blur sigma in pixels (0 = no blur).",
                          min=0.0, max=8.0),
        "blur_probability": Key("float", 0.5, "Probability of blurring a patch (per modality).",
                                min=0.0, max=1.0),
        "noise_std": Key("float", 0.0, "Largest std of additive Gaussian noise (0 = none).",
                         min=0.0),
        "synthetic": Key("bool", False, "Write synthetic aligned pairs into train_dir and "
                         "test_dir on first use (the demo)."),
        "synthetic_train_pairs": Key("int", 24, "Number of synthetic training pairs.", min=1),
        "synthetic_test_pairs": Key("int", 12, "Number of synthetic test pairs.", min=1),
        "synthetic_size": Key("int", 256, "Side of the synthetic images, in pixels.", min=32),
        "synthetic_seed": Key("int", 0, "Seed of the synthetic images.", min=0),
    },
    "Train": train_section(
        dir_run="runs/comir", total_iterations=736, minibatch_size=32,
        learning_rate=1e-2, optimizer="sgd", momentum=0.9, weight_decay=1e-5, clip_norm=1.0,
        deterministic=True, freq_model_save=100, freq_info_print=10,
    ),
    "Inference": {
        "output_dir": Key("path", None, "Where CoMIRs are written (unset: <run_dir>/comirs)."),
        "tile": Key("int", 0, "Tile side for large images, a multiple of 2**len(down_blocks) "
                    "(0 = whole image at once).", min=0),
        "margin": Key("int", -1, "Context margin around each tile in pixels (-1 = automatic).",
                      min=-1),
        "write_png": Key("bool", True, "Also write an 8-bit PNG preview of every CoMIR."),
    },
    "Evaluate": {
        "output_dir": Key("path", None, "Where the evaluation CSV and JSON go (unset: "
                          "<run_dir>/evaluation)."),
        "methods": Key("str_list", DEFAULT_METHODS, "Registration methods to compare.", choices=METHODS),
        "seed": Key("int", 1, "Seed of the known random rigid transforms.", min=0),
        "max_rotation": Key("float", 30.0, "Largest rotation of the known transforms, degrees.",
                            min=0.0, max=180.0),
        "max_translation": Key("float", 0.12, "Largest translation per axis, as a fraction of "
                               "the patch side.", min=0.0, max=0.5),
        "patch_fraction": Key("float", 0.55, "Side of the evaluated square patch as a fraction "
                              "of the smaller image side.", min=0.1, max=1.0),
        "success_fraction": Key("float", 0.12, "Success if the mean corner error is below this "
                                "fraction of the patch side (the paper: 100 px of 834 px).",
                                min=0.0),
        "angle_step": Key("float", 30.0, "Spacing of the multi-start angles, degrees.",
                          min=1.0, max=180.0),
        "levels": Key("int", 0, "Pyramid levels of the rigid registration (0 = automatic: "
                      "coarsest side of 32 to 63 pixels).", min=0, max=8),
        "max_pairs": Key("int", 0, "Evaluate at most this many test pairs (0 = all).", min=0),
    },
}

COMIR_SECTION_DOCS = {
    "CoMIR": "The two Tiramisu networks (one per modality, same architecture) and the "
             "contrastive loss. The defaults are the CoMIR paper's biomedical configuration.",
    "Data": "Aligned image pairs and the training augmentation.",
    "Method": "Optional: `name = comir` (a file with a [CoMIR] section is a CoMIR run anyway).",
    "Train": "The shared trainer's keys (see docs/config.md), with CoMIR's defaults: SGD as in "
             "the paper, one optimiser per network, gradient clipping and weight decay. The "
             "former names run_dir, steps, batch_size, save_every, log_every and max_checkpoints "
             "are still read, with a note to rename them.",
    "Inference": "`python inference.py comir.ini`: the CoMIR of every test image.",
    "Evaluate": "`python -m comir_tf.evaluate comir.ini`: rigid registration of known random "
                "transforms, on CoMIRs and on the raw images.",
}


def load(path: str | os.PathLike, overrides: Sequence[str] = ()) -> Config:
    """Parse and validate a CoMIR INI file (it must have a ``[CoMIR]`` section).

    Raises:
        ConfigError: any problem, naming the file, section, key and value.
    """
    cfg = parse_method(path, COMIR_SCHEMA, overrides, renamed=RENAMED_KEYS,
                       checkpoint_name="comir.ckpt")
    train = cfg["Train"]
    if train["minibatch_size"] < 2:
        raise ConfigError(
            f"{cfg.path}: [Train] minibatch_size = {train['minibatch_size']}: expected at least 2 "
            "(the contrastive loss needs negative pairs)."
        )
    if not cfg.has_section("CoMIR"):
        raise ConfigError(f"{cfg.path}: missing section [CoMIR]; a CoMIR config needs it.")
    comir = cfg["CoMIR"]
    if len(comir["down_blocks"]) != len(comir["up_blocks"]):
        raise ConfigError(
            f"{cfg.path}: [CoMIR] down_blocks = {list(comir['down_blocks'])} and up_blocks = "
            f"{list(comir['up_blocks'])} must have the same length (one up block per skip)."
        )
    if not comir["down_blocks"]:
        raise ConfigError(f"{cfg.path}: [CoMIR] down_blocks: expected at least one block.")
    multiple = 2 ** len(comir["down_blocks"])
    patch = cfg["Data"]["patch_size"]
    if patch % multiple:
        raise ConfigError(
            f"{cfg.path}: [Data] patch_size = {patch}: expected a multiple of "
            f"2**len(down_blocks) = {multiple}."
        )
    tile = cfg["Inference"]["tile"]
    if tile and tile % multiple:
        raise ConfigError(
            f"{cfg.path}: [Inference] tile = {tile}: expected 0 or a multiple of "
            f"2**len(down_blocks) = {multiple}."
        )
    if cfg["Data"]["synthetic"] and cfg["Data"]["test_dir"] is None:
        raise ConfigError(
            f"{cfg.path}: [Data] synthetic = true needs [Data] test_dir (where the synthetic test "
            "pairs are written)."
        )
    return cfg


def schema_docs() -> str:
    """Markdown tables of :data:`COMIR_SCHEMA` (the reference in ``docs/comir.md``)."""
    return schema_markdown(COMIR_SCHEMA, COMIR_SECTION_DOCS)


_BEGIN = "<!-- BEGIN GENERATED: comir_tf.config.schema_docs -->"
_END = "<!-- END GENERATED -->"


def update_docs(path: str | os.PathLike) -> str:
    """Rewrite the generated block of ``docs/comir.md`` from the schema; returns the new text.

    Run ``python -m comir_tf.config docs/comir.md`` after changing the schema.
    """
    block = f"{_BEGIN}\n\n{schema_docs()}\n{_END}"
    return replace_generated_block(path, block, _BEGIN, _END).read_text(encoding="utf-8")


if __name__ == "__main__":  # pragma: no cover
    import sys

    from labelreg.config import docs_command

    sys.exit(docs_command(sys.argv[1:], update_docs, "comir_tf.config"))
