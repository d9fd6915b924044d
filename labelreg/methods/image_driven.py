"""Image-driven (unsupervised) registration, with any image similarity, DeepSim included
(Czolbe, Krause, Feragen, MIDL 2021).

The network sees the image pair; the loss compares the fixed image with the warped moving image
(``[Loss] image_loss_type``, a loss-registry name with ``image_loss_options``), plus
``regulariser_weight`` (DeepSim's lambda) times the regulariser and an optional supervised label
term; labels otherwise only evaluate. A factory similarity that needs a feature network
(``deepsim``) receives the frozen network of ``[Loss] feature_extractor``: it is held outside the
trained models, so its weights never change and are not part of this run's checkpoints.

Data are NIfTI pairs (the shared pairwise base) or 2-D TIFF stacks, DeepSim's microscopy
sequences: training pairs are random frames within ``max_offset`` of each other, validation and
test pairs consecutive frames.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tifffile

from labelreg import metrics
from labelreg._tf import tf
from labelreg.data.stacks import configured_train_dataset, make_stack_eval_pairs, open_stacks
from labelreg.engine.checkpoints import load_trained_run
from labelreg.engine.summaries import middle_slice_panel
from labelreg.errors import ConfigError
from labelreg.infer import publish_staged, write_metrics_csv
from labelreg.losses.registry import LOSSES, build_loss, get_label_loss, get_regulariser
from labelreg.methods import image_driven_config
from labelreg.methods.pairwise import PairwiseMethod
from labelreg.networks.apply import register_pair

__all__ = ["ImageDriven", "STACK_METRIC_COLUMNS", "jacobian_statistics"]

STACK_METRIC_COLUMNS = (
    "sequence", "frame", "dice_before", "dice", "dice_foreground_before", "dice_foreground",
    "hausdorff95_before", "hausdorff95", "folding_ratio", "jacobian_mean", "jacobian_std",
    "log_jacobian_var",
)


def jacobian_statistics(ddf: np.ndarray) -> dict[str, float]:
    """:func:`labelreg.metrics.jacobian_statistics` of one DDF ``[1, *S, n]`` as floats."""
    return {k: float(v.numpy()[0]) for k, v in metrics.jacobian_statistics(ddf).items()}


class ImageDriven(PairwiseMethod):
    """``[Method] name = image_driven``: unsupervised registration by image similarity."""

    name = "image_driven"
    config_loader = "labelreg.methods.image_driven_config:load"
    network_argument_names = {"inner_similarity": "similarity"}


    @property
    def stack_mode(self) -> bool:
        return self.cfg["Data"]["format"] == "tiff_stack"

    # -- data -----------------------------------------------------------------------------------

    def prepare_data(self) -> None:
        if not self.stack_mode:
            super().prepare_data()
            return
        self.stacks = open_stacks(self.cfg["Data"], "train_sequences")
        self.valid = open_stacks(self.cfg["Data"], "valid_sequences",
                                 num_classes=self.stacks.num_classes)
        self.spacing_table = tf.ones([1, 2])  # pixels

    def describe_data(self) -> str:
        if self.stack_mode:
            return f"frame pairs of {', '.join(self.cfg['Data']['train_sequences'])}"
        return super().describe_data()

    @property
    def normalise(self) -> bool:
        # TIFF stacks are scaled by their bit depth only; NIfTI pairs follow [Data] normalise.
        return False if self.stack_mode else super().normalise

    @property
    def moving_shape(self) -> tuple[int, ...]:
        return tuple(self.stacks.shape) if self.stack_mode else super().moving_shape

    @property
    def fixed_shape(self) -> tuple[int, ...]:
        return tuple(self.stacks.shape) if self.stack_mode else super().fixed_shape

    def train_dataset(self, seed: int, start_step: int, total_steps: int) -> tf.data.Dataset:
        if not self.stack_mode:
            return super().train_dataset(seed, start_step, total_steps)
        return configured_train_dataset(self.cfg["Data"], self.stacks,
                                        self.cfg["Train"]["minibatch_size"], seed, start_step)

    def preprocess(self, batch: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        if not self.stack_mode:
            return super().preprocess(batch)
        # The stack pipeline augments each pair itself; distances are in pixels.
        size = tf.shape(batch["moving_image"])[:1]
        return {**batch, "spacing": tf.ones(tf.concat([size, [2]], axis=0))}

    # -- model and objective --------------------------------------------------------------------

    def build(self) -> dict[str, keras.Model]:
        models = super().build()
        loss = self.cfg["Loss"]
        options = image_driven_config.parse_options(self.cfg, "Loss", "image_loss_options")
        # A factory similarity (deepsim) owns a feature network; plain functions take none.
        if loss["feature_extractor"] is not None and LOSSES.info(loss["image_loss_type"])[
                "factory"]:
            run = load_trained_run(loss["feature_extractor"])
            self.extractor = run.models[run.method.feature_network_key]
            self.extractor.trainable = False  # frozen: not trained, not in this run's checkpoint
            options["feature_extractor"] = self.extractor
        try:
            self.image_loss = build_loss(loss["image_loss_type"], "image", **options)
        except (ConfigError, TypeError, ValueError) as err:
            raise ConfigError(f"{self.cfg.path}: [Loss] image_loss_options: {err}") from err
        self.image_weight = float(loss["image_loss_weight"])
        self.regulariser = get_regulariser(loss["regulariser_type"])
        self.regulariser_weight = float(loss["regulariser_weight"])
        if loss["label_loss_weight"] > 0:
            self.label_loss = get_label_loss(loss["label_loss_type"],
                                             scales=tuple(loss["similarity_scales"]))
            self.label_weight = float(loss["label_loss_weight"])
        return models

    # -- checkpoints, inference -----------------------------------------------------------------

    def before_save(self) -> None:
        if not self.stack_mode:
            super().before_save()
            return
        from labelreg.engine.batchnorm import recalibrate_batch_norm

        pairs = list(make_stack_eval_pairs(self.stacks))[:32]
        recalibrate_batch_norm(self.models["model"],
                               ([p["moving_image"], p["fixed_image"]] for p in pairs))

    def _stack_scores(self, stacks) -> list[dict[str, Any]]:
        rows = []
        for pair in make_stack_eval_pairs(stacks):
            out = register_pair(self.ddf_function(), pair["moving_image"], pair["fixed_image"],
                                pair["moving_label"], label_interpolation="nearest")
            rows.append((pair, out))
        return rows

    def validate(self) -> dict[str, float]:
        if not self.stack_mode:
            return super().validate() if self.valid is not None else {}
        if self.valid is None:
            return {}
        dices = [float(tf.reduce_mean(metrics.dice_per_class(pair["fixed_label"], out["warped_label"])))
                 for pair, out in self._stack_scores(self.valid)]
        return {"dice": float(np.mean(dices))}

    def pictures(self) -> dict[str, np.ndarray]:
        if not self.stack_mode:
            return super().pictures()
        pair = next(iter(make_stack_eval_pairs(self.valid or self.stacks)))
        out = register_pair(self.ddf_function(), pair["moving_image"], pair["fixed_image"],
                            pair["moving_label"], label_interpolation="nearest")

        def fore(label: Any) -> np.ndarray:  # any non-background class
            return 1.0 - np.asarray(label)[0, ..., 0]

        picture = middle_slice_panel(
            pair["fixed_image"][0, ..., 0], pair["moving_image"][0, ..., 0],
            out["warped_moving_image"].numpy()[0, ..., 0], fore(pair["fixed_label"]),
            fore(pair["moving_label"]), fore(out["warped_label"]))
        return {"middle_slice/fixed_moving_warped": picture}

    def infer(self, overwrite: bool = False) -> list[str]:
        if not self.stack_mode:
            return super().infer(overwrite)
        return self._infer_stacks()

    def _infer_stacks(self) -> list[str]:
        """Register the consecutive frames of ``valid_sequences`` (the test stacks) and write,
        per pair, the DDF, warped image and warped labels as TIFF, and ``metrics.csv``."""
        inference = self.cfg["Inference"]
        stacks = open_stacks(self.cfg["Data"], "valid_sequences")
        if stacks is None:
            raise ConfigError(f"{self.cfg.path}: [Data] valid_sequences is empty; nothing to "
                              "register.")
        self.models = load_trained_run(inference["file_model_saved"]).models
        dir_save = Path(inference["dir_save"])
        dir_save.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{dir_save.name}.partial-", dir=dir_save.parent))
        rows = []
        try:
            for pair, out in self._stack_scores(stacks):
                name = f"{pair['case_name'][0]}_{int(pair['moving_frame'][0]):03d}"
                folder = staging / name
                folder.mkdir()
                ddf = out["ddf"].numpy()
                tifffile.imwrite(folder / "ddf.tif", ddf[0].astype(np.float32))
                tifffile.imwrite(folder / "warped_image.tif",
                                 out["warped_moving_image"].numpy()[0, ..., 0].astype(np.float32))
                warped_classes = np.argmax(out["warped_label"].numpy()[0], axis=-1)
                tifffile.imwrite(folder / "warped_label.tif", warped_classes.astype(np.uint8))
                rows.append(self._pair_row(pair, out, ddf))
            write_metrics_csv(staging / "metrics.csv", rows, STACK_METRIC_COLUMNS)
            publish_staged(staging, dir_save)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        mean = {k: float(np.mean([r[k] for r in rows])) for k in ("dice_before", "dice",
                                                                  "folding_ratio")}
        return [f"wrote {len(rows)} registered frame pair(s) to {dir_save}",
                f"mean Dice (classes incl. background): before {mean['dice_before']:.3f}, "
                f"after {mean['dice']:.3f}; folding ratio {mean['folding_ratio']:.4f}"]

    @staticmethod
    def _pair_row(pair: dict[str, Any], out: dict[str, tf.Tensor], ddf: np.ndarray
                  ) -> dict[str, Any]:
        fixed = tf.constant(pair["fixed_label"], tf.float32)
        before_dice = metrics.dice_per_class(fixed, tf.constant(pair["moving_label"], tf.float32)).numpy()[0]
        after_dice = metrics.dice_per_class(fixed, out["warped_label"]).numpy()[0]
        hd = {}
        for when, label in (("before", pair["moving_label"]), ("after", out["warped_label"])):
            fore_fixed = 1.0 - pair["fixed_label"][..., :1]
            fore = 1.0 - np.asarray(label)[..., :1]
            hd[when] = float(metrics.hausdorff95(fore_fixed, fore).numpy()[0])
        return {"sequence": str(pair["case_name"][0]), "frame": int(pair["moving_frame"][0]),
                "dice_before": float(before_dice.mean()), "dice": float(after_dice.mean()),
                "dice_foreground_before": float(before_dice[1:].mean()),
                "dice_foreground": float(after_dice[1:].mean()),
                "hausdorff95_before": hd["before"], "hausdorff95": hd["after"],
                **jacobian_statistics(ddf)}

