"""Registration networks (Keras 3 models, 2-D and 3-D).

- :class:`LocalNet`, :class:`GlobalNet`, :class:`CompositeNet`: label-reg's networks;
- :class:`CentroidAlignNet`: a translation from the centroids of a segmentation of each image,
  then a LocalNet;
- :class:`UNet`: a VoxelMorph-style U-Net registration network, and :class:`UNetBackbone`, the
  same U-Net on a single image;
- :class:`GraDIRN`: unrolled multi-resolution gradient descent with learned CNN corrections;
- :class:`DeepSimUNet`: DeepSim's segmentation U-Net, whose encoder features make the ``deepsim``
  similarity (not a registration network);
- :func:`get_network`, :func:`build_network`, :func:`register_network`: the INI-name registry;
- :mod:`labelreg.networks.precision`: bfloat16 arithmetic (``precision_scope`` to build a network
  under the ``mixed_bfloat16`` policy, ``with_precision`` for a bfloat16 copy of a trained one).

Every registration network maps ``[moving_image, fixed_image]`` to a DDF ``[B, *S_fix, n]``
applied as ``labelreg.ops.warp(moving_image, ddf)``.
"""

from __future__ import annotations

from labelreg.networks.registry import (
    available_networks,
    build_network,
    get_network,
    register_network,
)
from labelreg.registry import lazy_attributes

# Imported on first access, so that the name registry (and with it config validation) does not
# load TensorFlow.
_CLASSES = {
    "LocalNet": "localnet",
    "GlobalNet": "globalnet",
    "CompositeNet": "composite",
    "CentroidAlignNet": "centroid_align",
    "UNet": "unet",
    "UNetBackbone": "unet",
    "RegistrationModel": "layers",
    "DeepSimUNet": "deepsim",
    "GraDIRN": "gradirn",
    "SimilarityEncoder": "learnsim",
}

__all__ = [
    *_CLASSES,
    "get_network",
    "build_network",
    "register_network",
    "available_networks",
]


__getattr__ = lazy_attributes("labelreg.networks", _CLASSES)
