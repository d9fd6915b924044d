"""The INI options of the learned image similarities (``image_loss_type = deepsim`` or
``learnsim``, :mod:`labelreg.losses.deepsim` and :mod:`labelreg.losses.learnsim`), declared
without TensorFlow so that a file is checked before TensorFlow loads: the run folder of the
frozen network the similarity is made of."""

from __future__ import annotations

from labelreg.config import ComponentOptions, Config, Key, fail

__all__ = ["DEEPSIM_OPTIONS", "LEARNSIM_OPTIONS"]


def _extractor_required(cfg: Config) -> None:
    loss = cfg["Loss"]
    if loss["feature_extractor"] is None:
        raise fail(cfg, "Loss", "feature_extractor",
                   f"is required for image_loss_type = {loss['image_loss_type']} (the run folder "
                   "written by `python training.py configs/deepsim_features.ini`, or a learnsim "
                   "run for learnsim).")


def _options(doc: str) -> ComponentOptions:
    return ComponentOptions(
        keys={"Loss": {"feature_extractor": Key("path", None, doc)}}, check=_extractor_required,
        docs="A similarity made of a trained network, kept frozen (not trained, not in the "
             "registration run's checkpoints).")


DEEPSIM_OPTIONS = _options("Run folder of a trained feature extractor (deepsim_features); "
                           "required.")
LEARNSIM_OPTIONS = _options("Run folder of a trained learnsim metric (its encoder); required.")
