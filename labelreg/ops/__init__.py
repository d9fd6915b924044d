"""Spatial operations: warping, affine maps, composition, resizing and filtering.

Every function accepts NumPy arrays or tensors, channels-last ``[B, *S, C]`` with 2 or 3 spatial
axes, and returns a float32 ``tf.Tensor``.
"""

from labelreg.ops.affine import affine_to_ddf, identity_affine, random_affine, resample_affine
from labelreg.ops.checks import check_ddf, check_finite, check_image, check_integer, check_number
from labelreg.ops.filters import gaussian_filter, gaussian_kernel1d, separable_filter
from labelreg.ops.grid import reference_grid, soft_centroid
from labelreg.ops.integrate import compose, integrate_svf
from labelreg.ops.jit import xla_disabled, xla_enabled
from labelreg.ops.padding import crop_border, replicate_pad
from labelreg.ops.resize import resize
from labelreg.ops.sobolev import sobolev_kernel_1d, sobolev_smooth
from labelreg.ops.warp import sample, warp

__all__ = [
    "warp",
    "sample",
    "resample_affine",
    "affine_to_ddf",
    "random_affine",
    "identity_affine",
    "compose",
    "integrate_svf",
    "reference_grid",
    "soft_centroid",
    "resize",
    "gaussian_kernel1d",
    "gaussian_filter",
    "separable_filter",
    "replicate_pad",
    "crop_border",
    "sobolev_kernel_1d",
    "sobolev_smooth",
    "check_image",
    "check_ddf",
    "check_finite",
    "check_integer",
    "check_number",
    "xla_enabled",
    "xla_disabled",
]
