"""The ``[Data]`` keys of the training augmentation of NIfTI pairs
(:func:`labelreg.data.augment.augment_batch`), declared beside it without TensorFlow so that a
file is checked before TensorFlow loads. A method whose data are NIfTI pairs puts them in its
``[Data]`` section."""

from __future__ import annotations

from labelreg.config import Key

__all__ = ["AUGMENTATION_KEYS"]

AUGMENTATION_KEYS: dict[str, Key] = {
    "augmentation": Key(
        "bool", True, "Random affine augmentation of moving and fixed pairs in training."
    ),
    "affine_scale": Key(
        "float", 0.1, "Largest inward move of a corner of [-1, 1]^n in the random affine.",
        min=0.0, max=0.5,
    ),
    "translation": Key(
        "float", 0.0, "Largest random shift (voxels, per axis) added to the random affine "
        "of each image, drawn independently for moving and fixed; 0 = label-reg's "
        "augmentation.", min=0.0, max=64.0,
    ),
    "intensity_gamma": Key(
        "float", 0.0, "Random gamma curve on each training image, over its own range: "
        "log(gamma) uniform in [-intensity_gamma, intensity_gamma], independently for "
        "moving and fixed (labels unchanged); 0 = none.", min=0.0, max=2.0,
    ),
    "intensity_noise": Key(
        "float", 0.0, "Largest standard deviation of the Gaussian noise added to each "
        "training image, as a fraction of its intensity range (uniform in [0, "
        "intensity_noise] per image); 0 = none.", min=0.0, max=1.0,
    ),
    "flip_axes": Key(
        "int_list", (), "Spatial axes (0-based) along which each training pair is "
        "mirrored with probability 1/2, both images and labels together (for anatomy "
        "roughly symmetric about the axis); empty = none.", min=0, max=2,
    ),
}
