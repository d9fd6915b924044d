"""The INI options of ``network_type = centroid_align`` (:mod:`labelreg.networks.centroid_align`),
declared without TensorFlow so that a file is checked before TensorFlow loads: the network's
``[Network]`` constructor arguments and the ``[Loss]`` settings of the objective it contributes
(``CentroidAlignNet.training_objective``)."""

from __future__ import annotations

from labelreg.config import ComponentOptions, Config, Key, fail

__all__ = ["OPTIONS"]


def _check(cfg: Config) -> None:
    loss = cfg["Loss"]
    only = loss["segmentation_only_steps"]
    if loss["freeze_segmentations"] and only <= 0:
        raise fail(cfg, "Loss", "freeze_segmentations",
                   "keeps the segmentations of the first phase, so it needs "
                   "segmentation_only_steps > 0; set false or a first phase.")
    if only <= 0:
        return
    if loss["segmentation_weight"] <= 0:
        raise fail(cfg, "Loss", "segmentation_only_steps",
                   "trains the segmentations on their loss, so it needs segmentation_weight "
                   "> 0; set 0 or a weight.")
    train = cfg["Train"]
    total, warmup = train["total_iterations"], train["warmup_steps"]
    if only >= total:
        raise fail(cfg, "Loss", "segmentation_only_steps",
                   f"expected fewer than [Train] total_iterations = {total}.")
    if train["lr_schedule"] == "cosine" and min(only, total - only) <= warmup:
        raise fail(cfg, "Loss", "segmentation_only_steps",
                   f"expected both phases (this many steps, and total_iterations - it = "
                   f"{total - only}) longer than [Train] warmup_steps = {warmup}, as each "
                   "runs the cosine schedule on its own.")


OPTIONS = ComponentOptions(
    docs="CentroidAlignNet segments the structure in each image with a small U-Net, translates "
         "by the centroids of the segmentations and refines with a LocalNet.",
    keys={
        "Network": {
            "num_channel_segment": Key(
                "int", 8, "Width of each segmentation U-Net.", min=1),
            "segment_resolution": Key(
                "float", 0.5, "Scale per axis at which the U-Nets segment (1 = full "
                "resolution).", min=0.05, max=1.0),
            "segment_padding": Key(
                "int", 0, "Voxels of the segmentation grid by which each image's edge values "
                "are repeated on every side before its U-Net (cut from the output), so a gland "
                "cut by the field of view is not cut short by the U-Net; 0 = none.",
                min=0, max=64),
            "register_resolution": Key(
                "float", 1.0, "Scale per axis of the grid LocalNet registers on (its DDF is "
                "scaled and resized back onto the fixed grid); 1 = the fixed grid; 0.5 costs "
                "an eighth of LocalNet's arithmetic, for a real-time model.",
                min=0.05, max=1.0),
            "translation_jitter": Key(
                "float", 0.0, "Largest random shift (voxels, per axis) added to the centroid "
                "translation in training, so the LocalNet learns to correct the centroid error "
                "of unseen cases; 0 = none.", min=0.0, max=64.0),
        },
        "Inference": {
            "refine_steps": Key(
                "int", 0, "Test-time refinement: Adam steps per pair that align the network's "
                "own two segmentations (multi-scale Dice, warped moving against fixed) by a "
                "smooth correction of its DDF, in inference.py and labelreg.evaluation (not in "
                "the exported SavedModel, nor in training's validation); 0 = none.",
                min=0, max=100000),
            "refine_learning_rate": Key(
                "float", 0.1, "Adam's step size of the refinement (voxels).", min=1e-6),
            "refine_bending_weight": Key(
                "float", 0.5, "Weight of the bending energy of the refinement's correction.",
                min=0.0),
        },
        "Loss": {
            "segmentation_weight": Key(
                "float", 0.0, "Weight of the soft Dice loss of each segmentation against its "
                "image's label 0 (the gland in label-reg's data); 0 trains the segmentations "
                "through the registration loss alone.", min=0.0),
            "segmentation_only_steps": Key(
                "int", 0, "Training steps, at the start, in which the segmentations train alone "
                "on their Dice loss (the LocalNet is neither run nor changed); the full "
                "objective follows, and the learning-rate schedule starts again there; 0 = "
                "none.", min=0),
            "freeze_segmentations": Key(
                "bool", False, "After segmentation_only_steps, keep the segmentations as the "
                "first phase left them (no gradient, batch norm in inference mode) and train "
                "the LocalNet alone; false = train the whole network."),
        },
    },
    check=_check,
)
