"""CoMIR (Pielawski, Wetzer et al., NeurIPS 2020) as a method of the shared engine.

Two Tiramisus, one per modality (``model_a``, ``model_b``), are trained on aligned patch pairs
with :func:`comir_tf.contrastive.comir_loss_terms` (InfoNCE plus activation decay, random C4
turns). The shared trainer gives each network its own optimiser (``[Train] optimizer = sgd``
by default, as the paper), clips each network's gradients to ``clip_norm`` and adds
``weight_decay``. Inference writes the CoMIR of every test image; export writes one signature
per modality (:func:`comir_tf.generate.encoder_signature`).

The model, loss, data, generation and rigid registration live in :mod:`comir_tf`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import keras
import numpy as np

from comir_tf.contrastive import comir_loss_terms, contrastive_terms
from comir_tf.data import centre_crops, ensure_data, make_patch_dataset, read_pairs
from comir_tf.generate import comir_margin, encoder_signature, generate, write_comir
from comir_tf.tiramisu import Tiramisu
from labelreg._tf import tf
from labelreg.config import Config
from labelreg.engine.step import make_train_step as make_engine_step
from labelreg.methods.base import Endpoint, Method
from labelreg.methods.runs import load_trained_run

__all__ = ["CoMIR", "build_models", "restore_models", "make_train_step"]

_PREPARATION_KEYS = ("suffix_a", "suffix_b", "scale_a", "scale_b", "log_a", "log_b")


def build_models(cfg: Config) -> tuple[Tiramisu, Tiramisu]:
    """The two Tiramisus of ``[CoMIR]`` (modality A, modality B), weights created."""
    c = cfg["CoMIR"]
    common = dict(out_channels=c["latent_channels"], init_filters=c["init_filters"],
                  down_blocks=tuple(c["down_blocks"]), up_blocks=tuple(c["up_blocks"]),
                  bottleneck_layers=c["bottleneck_layers"], growth_rate=c["growth_rate"],
                  compression=c["compression"], dropout=c["dropout"])
    model_a = Tiramisu(c["channels_a"], name="comir_a", **common)
    model_b = Tiramisu(c["channels_b"], name="comir_b", **common)
    for model in (model_a, model_b):
        model.build((None, None, None, model.in_channels))
    return model_a, model_b


def restore_models(cfg: Config) -> tuple[keras.Model, keras.Model, str]:
    """Both trained networks of a CoMIR config's run folder (latest checkpoint).

    Returns:
        ``(model_a, model_b, checkpoint_prefix)``.

    Raises:
        DataError: when the run folder holds no checkpoint.
    """
    run = load_trained_run(cfg["Train"]["dir_run"])
    return run.models["model_a"], run.models["model_b"], run.prefix


def make_train_step(
    model_a: keras.Model,
    model_b: keras.Model,
    optimizer_a: keras.optimizers.Optimizer,
    optimizer_b: keras.optimizers.Optimizer,
    critic: str = "mse",
    tau: float = 0.5,
    l1_decay: float = 1e-4,
    l2_decay: float = 1e-4,
    equivariance: bool = True,
    weight_decay: float = 1e-5,
    clip_norm: float = 1.0,
) -> Callable[[dict[str, tf.Tensor]], dict[str, tf.Tensor]]:
    """The shared engine's compiled step for two CoMIR networks, outside a training run (for
    experiments and benchmarks).

    Returns:
        ``step(batch) -> {"loss", "info_nce", "decay", "positive_mse",
        "relative_positive_mse", "top1_accuracy", "logit_margin", "grad_norm_a",
        "grad_norm_b"}`` (scalars; ``grad_norm_*`` are the norms before clipping; the
        others as in :func:`comir_tf.contrastive.comir_loss_terms`).
    """
    def loss(batch: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        return comir_loss_terms(model_a, model_b, batch, critic=critic, tau=tau,
                                l1_decay=l1_decay, l2_decay=l2_decay, equivariance=equivariance)

    groups = {"a": (optimizer_a, model_a.trainable_variables),
              "b": (optimizer_b, model_b.trainable_variables)}
    return make_engine_step(loss, groups, clip_norm=clip_norm, weight_decay=weight_decay)


def _picture(model_a: keras.Model, model_b: keras.Model, a: np.ndarray, b: np.ndarray
             ) -> np.ndarray:
    """``[H, 4W, 3]`` in [0, 1]: image A | image B | CoMIR A | CoMIR B (first channels)."""
    def show(x: np.ndarray) -> np.ndarray:
        x = x[..., :3] if x.shape[-1] >= 3 else np.repeat(x[..., :1], 3, axis=-1)
        lo, hi = float(x.min()), float(x.max())
        return (x - lo) / (hi - lo) if hi > lo else np.zeros_like(x)

    z_a = model_a(a[None], training=False).numpy()[0]
    z_b = model_b(b[None], training=False).numpy()[0]
    # Both CoMIRs on a common intensity scale, so that agreement is visible.
    both = show(np.concatenate([z_a, z_b], axis=1))
    return np.concatenate([show(a), show(b), both], axis=1).astype(np.float32)


class CoMIR(Method):
    """``[Method] name = comir``, or any INI file with a ``[CoMIR]`` section."""

    name = "comir"
    checkpoint_name = "comir.ckpt"


    # -- training -------------------------------------------------------------------------------

    def prepare_data(self) -> None:
        ensure_data(self.cfg)
        self.pairs = read_pairs(self.cfg, "train_dir")
        self.valid_batch = None
        if self.cfg["Data"]["test_dir"]:
            valid = read_pairs(self.cfg, "test_dir")
            if len(valid) >= 1:
                batch_size = int(self.cfg["Train"]["minibatch_size"])
                crops_a, crops_b = centre_crops(valid, self.cfg["Data"]["patch_size"])
                self.valid_batch = (crops_a[:batch_size], crops_b[:batch_size])

    def describe_data(self) -> str:
        return f"{len(self.pairs)} pairs, batch {self.cfg['Train']['minibatch_size']}"

    def build(self) -> dict[str, keras.Model]:
        model_a, model_b = build_models(self.cfg)
        return {"model_a": model_a, "model_b": model_b}

    def train_dataset(self, seed: int, start_step: int, total_steps: int) -> tf.data.Dataset:
        data = self.cfg["Data"]
        return make_patch_dataset(
            self.pairs, data["patch_size"], int(self.cfg["Train"]["minibatch_size"]), seed,
            start_step=start_step, stop_step=total_steps, flip=data["flip"],
            rotate=data["rotate"], blur_sigma=data["blur_sigma"],
            blur_probability=data["blur_probability"], noise_std=data["noise_std"])

    def loss_terms(self, batch: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        c = self.cfg["CoMIR"]
        return comir_loss_terms(self.models["model_a"], self.models["model_b"], batch,
                                critic=c["critic"], tau=c["tau"], l1_decay=c["l1_decay"],
                                l2_decay=c["l2_decay"], equivariance=c["equivariance"])

    def validate(self) -> dict[str, float]:
        """On centre crops of the first ``minibatch_size`` test pairs, in inference mode: the
        positive pairs' CoMIR distance and, with at least two pairs, the InfoNCE loss and the
        retrieval measures (``relative_positive_mse``, ``top1_accuracy``, ``logit_margin``;
        see :func:`comir_tf.contrastive.retrieval_metrics`)."""
        if self.valid_batch is None:
            return {}
        c = self.cfg["CoMIR"]
        z_a = self.models["model_a"](self.valid_batch[0], training=False)
        z_b = self.models["model_b"](self.valid_batch[1], training=False)
        if len(self.valid_batch[0]) < 2:  # no negatives
            return {"positive_mse": float(tf.reduce_mean(tf.square(z_a - z_b)))}
        terms = contrastive_terms(z_a, z_b, c["critic"], c["tau"])
        keys = ("positive_mse", "info_nce", "relative_positive_mse", "top1_accuracy",
                "logit_margin")
        return {key: float(terms[key]) for key in keys}

    def pictures(self) -> dict[str, np.ndarray]:
        if self.valid_batch is None or not self.cfg["Train"]["validate"]:
            return {}
        return {"comir/images_a_b_comirs_a_b": _picture(
            self.models["model_a"], self.models["model_b"], self.valid_batch[0][0],
            self.valid_batch[1][0])}

    def meta(self) -> dict[str, Any]:
        data = self.cfg["Data"]
        return {key: data[key] for key in (*_PREPARATION_KEYS, "patch_size")}

    # -- inference and export -------------------------------------------------------------------

    def infer(self, overwrite: bool = False) -> list[str]:
        """Write the CoMIR of every test image (float32 TIFF and PNG preview)."""
        cfg = self.cfg
        ensure_data(cfg)
        pairs = read_pairs(cfg, "test_dir")
        model_a, model_b, checkpoint = restore_models(cfg)
        inf, data = cfg["Inference"], cfg["Data"]
        out_dir = Path(inf["output_dir"] or Path(cfg["Train"]["dir_run"]) / "comirs")
        margin = None if inf["margin"] < 0 else inf["margin"]
        self.log(f"CoMIRs of {len(pairs)} test pairs with {checkpoint} -> {out_dir}")
        for i, name in enumerate(pairs.names):
            for model, image, suffix in ((model_a, pairs.images_a[i], data["suffix_a"]),
                                         (model_b, pairs.images_b[i], data["suffix_b"])):
                comir = generate(model, image, tile=inf["tile"] or None, margin=margin)
                written = write_comir(comir, out_dir / f"{name}{suffix}_comir.tif",
                                      png=inf["write_png"])
                self.log("wrote " + ", ".join(str(p) for p in written))
        return [f"wrote the CoMIRs of {len(pairs)} test pair(s) to {out_dir}"]

    @classmethod
    def serving_endpoints(
        cls, models: Mapping[str, keras.Model], meta: Mapping[str, Any],
        margin: int | None = None, **options: Any,
    ) -> dict[str, Endpoint]:
        """``modality_a`` (also ``serving_default``) and ``modality_b``: ``image [B, H, W, C]``
        prepared as in training (the preparation is recorded in ``model.json``) ->
        ``comir [B, H, W, K]``, equal to :func:`comir_tf.generate` without tiles."""
        if options:
            raise TypeError(f"CoMIR export takes no option(s) {sorted(options)}.")
        return {f"modality_{key[-1]}": encoder_signature(models[key], margin)
                for key in ("model_a", "model_b")}

    @classmethod
    def rebuild(cls, description: Mapping[str, Any]) -> dict[str, keras.Model]:
        models = super().rebuild(description)
        for model in models.values():
            model.build((None, None, None, model.in_channels))
        return models

    @classmethod
    def export_meta(cls, models: Mapping[str, keras.Model], margin: int | None = None,
                    **options: Any) -> dict[str, Any]:
        """The context margin of each modality's signature, in pixels."""
        return {"margin": {f"modality_{key[-1]}": comir_margin(int(getattr(m, "multiple", 1)),
                                                                margin)
                           for key, m in models.items()}}
