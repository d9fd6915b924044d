"""``python -m labelreg.evaluation config.ini [--set ...] [--checkpoint PATH] [--split
valid|inference] [--output CSV]``: gland Dice and landmark TRE of a trained registration network
per case, beside the identity (the figures are defined in :mod:`labelreg.scoring`, whose names
this module re-exports).

It registers every pair of the split and writes the per-case CSV (default
``<dir_run>/evaluation_<split>.csv``), then prints the table: the cases, then the median, first
and third quartile over cases of the gland Dice and the TRE, identity and registered side by
side, the same figures over all landmarks pooled, and the counted and lost landmarks.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from labelreg.cli import command_parser, run_command
from labelreg.config import Config
from labelreg.data.nifti import PairedDataset
from labelreg.data.splits import configured_validation
from labelreg.errors import ConfigError, DataError
from labelreg.logs import log_line
from labelreg.methods.registry import load_config
from labelreg.scoring import (  # noqa: F401 - re-exported: the library behind the command
    EVALUATION_COLUMNS,
    SUMMARY_FIGURES,
    THRESHOLD,
    CaseResult,
    EvaluationTable,
    LabelResult,
    evaluate,
    quartiles,
)

_ROLES = ("moving_image", "fixed_image", "moving_label", "fixed_label")

__all__ = ["EVALUATION_COLUMNS", "SUMMARY_FIGURES", "THRESHOLD", "CaseResult", "EvaluationTable",
           "LabelResult", "evaluate", "quartiles", "split_folders", "split_dataset",
           "run_evaluation", "main"]


# -- the command ---------------------------------------------------------------------------------


def split_folders(cfg: Config, split: str) -> dict[str, Path]:
    """The four folders of a split: ``valid`` (``[Data] dir_valid_*``) or ``inference``
    (``[Inference] dir_*``), as ``{role: folder}``.

    Raises:
        ConfigError: a folder of the split is not set (the message names every unset key).
    """
    if split == "valid":
        section = "Data"
        keys = {role: f"dir_valid_{role}" for role in _ROLES}
        hint = ("set them, or pass --split inference to evaluate the [Inference] folders")
    elif split == "inference":
        section = "Inference"
        keys = {role: f"dir_{role}" for role in _ROLES}
        hint = "evaluation needs the images and the labels of both sides"
    else:
        raise ValueError(f"split must be 'valid' or 'inference'; received {split!r}.")
    values = cfg[section] if section in cfg else {}
    missing = [key for key in keys.values() if values.get(key) is None]
    if missing:
        raise ConfigError(f"{cfg.path}: [{section}] {', '.join(missing)} "
                          f"{'is' if len(missing) == 1 else 'are'} not set; to evaluate the "
                          f"{split} split, {hint}.")
    return {role: Path(values[key]) for role, key in keys.items()}


def split_dataset(cfg: Config, split: str) -> PairedDataset:
    """The pairs of a split: :func:`split_folders`, except that ``valid`` of a config with
    ``[Data] valid_fraction`` is the validation cases its training set aside from the training
    folders (:func:`labelreg.data.splits.configured_validation`, the same cases).

    Raises:
        ConfigError: as :func:`split_folders`. DataError: unreadable data.
    """
    data = cfg["Data"] if "Data" in cfg else {}
    if split == "valid" and data.get("valid_fraction"):
        full = PairedDataset(*(data[f"dir_{role}"] for role in _ROLES))
        return configured_validation(full, cfg)[1]
    folders = split_folders(cfg, split)
    return PairedDataset(*(folders[role] for role in _ROLES))


def _default_checkpoint(cfg: Config) -> Path:
    if "Inference" in cfg and cfg["Inference"].get("file_model_saved") is not None:
        return Path(cfg["Inference"]["file_model_saved"])
    return Path(cfg["Train"]["dir_run"])


def run_evaluation(cfg: Config, split: str = "valid", checkpoint: str | os.PathLike | None = None,
                   output: str | os.PathLike | None = None,
                   log: Callable[[str], None] = print) -> tuple[EvaluationTable, Path]:
    """What the command does: evaluate a split with a trained run and write the CSV.

    Args:
        cfg: a validated config of a pairwise method (``labelreg``, ``image_driven``...).
        split: ``valid`` or ``inference`` (see :func:`split_dataset`).
        checkpoint: the trained run (anything :func:`labelreg.infer.load_trained_model`
            accepts); ``None``: ``[Inference] file_model_saved``, else ``[Train] dir_run``.
        output: the CSV; ``None``: ``<dir_run>/evaluation_<split>.csv``.
        log: where progress goes.

    The network computes in ``[Inference] precision`` (``--set Inference.precision=bfloat16``
    evaluates a bfloat16 deployment of the same weights).

    Returns:
        ``(table, csv path)``.

    Raises:
        ConfigError: the split's folders are not set.
        DataError: no checkpoint at ``checkpoint``, unreadable data, or data whose rank differs
            from the model's.
    """
    # Imported here, not at the top: a bad command line fails before TensorFlow loads.
    from labelreg.infer import load_trained_model
    from labelreg.networks.apply import inference_ddf
    from labelreg.networks.precision import with_precision

    paired = split_dataset(cfg, split)
    checkpoint = Path(checkpoint) if checkpoint is not None else _default_checkpoint(cfg)

    model, meta, prefix = load_trained_model(checkpoint)
    if getattr(model, "ndim", paired.ndim) != paired.ndim:
        raise DataError(f"{paired.fixed_image.directory}: {paired.ndim}-D images, but the model in "
                        f"{prefix} is {model.ndim}-D.")
    inference = cfg["Inference"] if "Inference" in cfg else {}
    # The arithmetic inference would use ([Inference] precision), so its Dice is what a
    # bfloat16 deployment gets.
    precision = inference.get("precision", "float32")
    model = with_precision(model, precision)
    log(f"evaluating {paired.num_cases} pair(s) of the {split} split with {prefix} "
        f"({precision})")
    table = evaluate(
        inference_ddf(model, inference), paired,
        spacing=paired.fixed_spacings(tuple(cfg["Data"].get("voxel_spacing", ()))),
        normalise=bool(meta.get("normalise", True)),
        batch_size=int(inference.get("minibatch_size", 1)),
        label_interpolation=inference.get("label_interpolation", "linear"), log=log)
    output = Path(output) if output is not None else \
        Path(cfg["Train"]["dir_run"]) / f"evaluation_{split}.csv"
    try:
        table.write_csv(output)
    except OSError as err:
        raise DataError(f"{output}: cannot write the evaluation table ({err}).") from err
    return table, output


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m labelreg.evaluation``; returns the exit code (0 done, 2 a configuration or
    data error, with the message on stderr)."""
    parser = command_parser(
        "python -m labelreg.evaluation",
        "Gland Dice and landmark TRE of a trained registration network, per case, beside the "
        "identity.", config_help="the INI file of the training run",
        set_help="override one setting (repeatable)")
    parser.add_argument("--checkpoint", default=None,
                        help="checkpoint prefix, checkpoints folder or run folder (default: "
                             "[Inference] file_model_saved, i.e. the config's run)")
    parser.add_argument("--split", choices=("valid", "inference"), default="valid",
                        help="the validation cases ([Data] dir_valid_* folders, or those "
                        "valid_fraction sets aside; default) or the [Inference] folders")
    parser.add_argument("--output", default=None,
                        help="the per-case CSV (default: <dir_run>/evaluation_<split>.csv)")

    def body(args) -> int:
        cfg = _load_config(args.config, args.overrides)
        table, output = run_evaluation(cfg, args.split, args.checkpoint, args.output,
                                       log=log_line)
        print(table.format())
        print(f"wrote {output}")
        return 0

    return run_command(parser, argv, body)


def _load_config(path: str, overrides: Sequence[str]) -> Config:
    """A validated config whose method registers image pairs from NIfTI folders."""
    if not Path(path).is_file():
        raise ConfigError(f"{path}: config file not found.")
    name, cfg = load_config(path, overrides)
    data: Mapping[str, Any] = cfg["Data"] if "Data" in cfg else {}
    if "dir_valid_moving_image" not in data:
        raise ConfigError(f"{path}: a {name} config; evaluation needs a method that registers "
                          "NIfTI image pairs ([Data] dir_* folders with labels).")
    return cfg


if __name__ == "__main__":
    sys.exit(main())
