"""The INI options of ``network_type = unet`` (:class:`labelreg.networks.unet.UNet`, VoxelMorph's
registration U-Net), declared without TensorFlow."""

from __future__ import annotations

from labelreg.config import ComponentOptions, Key

__all__ = ["OPTIONS"]

OPTIONS = ComponentOptions(
    docs="A U-Net predicting the DDF (or a velocity field) from the stacked pair.",
    keys={"Network": {
        "integration_steps": Key("int", 0, "0 = a DDF; > 0 = the network predicts a velocity "
                                 "field integrated by this many scaling-and-squaring steps "
                                 "(diffeomorphic).", min=0, max=16),
        "use_batch_norm": Key("bool", False, "Batch normalisation in the U-Net's blocks."),
        "depth": Key("int", 4, "Down-sampling steps of the U-Net.", min=1, max=6),
    }},
)
