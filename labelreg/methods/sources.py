"""Data sources of the pairwise methods: where image pairs come from, for training, validation,
pictures and inference, as one object per data format.

A :class:`PairSource` is chosen once from the config (:meth:`PairwiseMethod.data_source
<labelreg.methods.pairwise.PairwiseMethod.data_source>`); the method then asks it for what it
needs and holds no branch on the format. Two formats exist:

- :class:`NiftiPairs`: label-reg's four folders of NIfTI files paired by file name, with
  label-reg's two-stage label sampling and affine augmentation; validation is the gland Dice
  and landmark TRE of :func:`labelreg.scoring.evaluate`; inference writes one folder per
  pair (:mod:`labelreg.pair_inference`).
- :class:`TiffStacks`: 2-D TIFF stacks of microscopy sequences (DeepSim's layout), frame pairs
  within ``max_offset`` for training and consecutive frames for validation and inference.

A source for a new format is one class with the methods of :class:`PairSource`, entered in
:data:`SOURCES` under its ``[Data] format`` name.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tifffile

from labelreg import metrics, ops
from labelreg._tf import tf
from labelreg.config import Config
from labelreg.data import PairedDataset, make_eval_batches, make_train_dataset
from labelreg.data.augment import augment_batch, step_seed
from labelreg.data.pipeline import CaseCache
from labelreg.data.splits import configured_validation
from labelreg.data.stacks import configured_train_dataset, make_stack_eval_pairs, open_stacks
from labelreg.engine.summaries import middle_slice_panel
from labelreg.errors import ConfigError, DataError
from labelreg.files import write_csv, write_png
from labelreg.item_outputs import ItemFailure, ItemOutputs, raise_if_failed
from labelreg.networks.apply import network_ddf, register_pair
from labelreg.pair_inference import infer as infer_pairs
from labelreg.scoring import evaluate
from labelreg.visualise import overlay_figure

__all__ = ["PairSource", "NiftiPairs", "TiffStacks", "SOURCES", "source_for",
           "STACK_METRIC_COLUMNS", "jacobian_statistics"]

#: ``(ddf_function)``: ``[moving, fixed] -> ddf`` of the trained network.
DDFFunction = Callable[[Sequence[tf.Tensor]], tf.Tensor]

STACK_METRIC_COLUMNS = (
    "sequence", "frame", "dice_before", "dice", "dice_foreground_before", "dice_foreground",
    "hausdorff95_before", "hausdorff95", "folding_ratio", "jacobian_mean", "jacobian_std",
    "log_jacobian_var",
)


def jacobian_statistics(ddf: np.ndarray) -> dict[str, float]:
    """:func:`labelreg.metrics.jacobian_statistics` of one DDF ``[1, *S, n]`` as floats."""
    return {k: float(v.numpy()[0]) for k, v in metrics.jacobian_statistics(ddf).items()}


class PairSource:
    """The data of a pairwise method in one format.

    Args:
        cfg: the method's validated settings (``[Data]``, ``[Train]``, ``[Inference]``).
        log: where progress lines go.
    """

    def __init__(self, cfg: Config, log: Callable[[str], None] = print) -> None:
        self.cfg = cfg
        self.log = log
        self.valid: Any = None

    def prepare(self) -> None:
        """Read and check the training (and validation) data, before any run folder exists.

        Raises:
            DataError: unreadable or inconsistent data; ConfigError: settings the data
                contradict.
        """
        raise NotImplementedError

    def describe(self) -> str:
        """What is trained on, for the first progress line (e.g. ``16 pairs``)."""
        raise NotImplementedError

    def case_names(self, indices: Sequence[int]) -> list[str]:
        """The names of the training cases at ``indices`` (for messages)."""
        raise NotImplementedError

    @property
    def normalise(self) -> bool:
        """Whether each image is min-max normalised (stored with the model for inference)."""
        raise NotImplementedError

    @property
    def moving_shape(self) -> tuple[int, ...]:
        """Spatial shape of the training moving images."""
        raise NotImplementedError

    @property
    def fixed_shape(self) -> tuple[int, ...]:
        """Spatial shape of the training fixed images."""
        raise NotImplementedError

    def train_dataset(self, seed: int, start_step: int, stop_step: int | None = None,
                      segmentation_labels: bool = False) -> tf.data.Dataset:
        """Training batches (dicts) of steps ``start_step .. stop_step - 1`` (``None``: endless),
        a pure function of ``(seed, step)``; with
        ``segmentation_labels`` they also carry each image's label 0 (``moving_seg_label``,
        ``fixed_seg_label``) for a network that segments."""
        raise NotImplementedError

    def preprocess(self, batch: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        """Per-batch work outside the gradient tape (augmentation); adds ``spacing [B, n]``."""
        raise NotImplementedError

    @property
    def segmentation_classes(self) -> int:
        """Classes of :meth:`segmentation_samples`' one-hot labels, background included."""
        raise NotImplementedError

    def segmentation_samples(self, batch: dict[str, tf.Tensor]
                             ) -> list[tuple[tf.Tensor, tf.Tensor]]:
        """The images of a training batch (of ``train_dataset(..., segmentation_labels=True)``
        after :meth:`preprocess`) with their one-hot segmentation targets, for a network that
        learns to segment both modalities (DeepSim's feature extractor).

        Returns:
            ``[(image [B, *S_r, 1], label [B, *S_r, K]), ...]``, one per image role (moving,
            fixed); the shapes of the roles may differ.
        """
        raise NotImplementedError

    def segmentation_validation(self) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
        """``(role, image [1, *S, 1], one-hot label [1, *S, K])`` of every validation image;
        nothing without validation data."""
        raise NotImplementedError

    def recalibration_inputs(self, limit: int) -> Iterator[list[np.ndarray]]:
        """Up to ``limit`` ``[moving, fixed]`` batches of training images as inference sees
        them, for re-estimating BatchNorm averages."""
        raise NotImplementedError

    def validate(self, ddf_function: DDFFunction) -> dict[str, float]:
        """Validation figures (``{}`` without validation data)."""
        raise NotImplementedError

    def pictures(self, ddf_function: DDFFunction) -> dict[str, np.ndarray]:
        """``{tag: [H, W, 3] in [0, 1]}`` of one registered pair for TensorBoard."""
        raise NotImplementedError

    def infer(self, load_models: Callable[[], dict[str, Any]],
              overwrite: bool = False) -> list[str]:
        """Register the configured test items and write their outputs through the contract of
        :mod:`labelreg.item_outputs`; returns the summary lines. ``load_models()`` gives the
        trained models; it is called once the output folder is known to be writable.

        Raises:
            PartialFailure: some items failed, the others were written.
        """
        raise NotImplementedError


class NiftiPairs(PairSource):
    """label-reg's NIfTI folders (``[Data] dir_*``), see the module docstring."""

    def prepare(self) -> None:
        data, train = self.cfg["Data"], self.cfg["Train"]
        self.paired = PairedDataset(data["dir_moving_image"], data["dir_fixed_image"],
                                    data["dir_moving_label"], data["dir_fixed_label"])
        self.valid = None
        if data.get("valid_fraction"):
            self.paired, self.valid = configured_validation(self.paired, self.cfg)
        batch_size = int(train["minibatch_size"])
        if batch_size > self.paired.num_cases:
            raise DataError(
                f"[Train] minibatch_size = {batch_size} exceeds the {self.paired.num_cases} "
                f"training cases in {data['dir_moving_image']}."
            )
        ndim = len(self.paired.fixed_shape)
        flips = list(data["flip_axes"])
        if any(axis >= ndim for axis in flips) or len(set(flips)) != len(flips):
            raise ConfigError(
                f"{self.cfg.path}: [Data] flip_axes = {flips}: expected distinct spatial axes "
                f"in [0, {ndim}) of the {ndim}-D images in {data['dir_moving_image']}.")
        if data["dir_valid_moving_image"] is not None and data["dir_valid_moving_label"]:
            self.valid = PairedDataset(
                data["dir_valid_moving_image"], data["dir_valid_fixed_image"],
                data["dir_valid_moving_label"], data["dir_valid_fixed_label"])
        self.spacing_table = tf.constant(self.paired.fixed_spacings(tuple(data["voxel_spacing"])))
        # Every training file is read (and checked) now, so unreadable data end the run before
        # a run folder exists; the training stream reuses what was read.
        self.cache = CaseCache(self.paired, normalise=self.normalise)
        self._valid_cache = None

    def describe(self) -> str:
        if self.cfg["Data"].get("valid_fraction") and self.valid is not None:
            # The validation cases are named so a reader of the log knows what chose the
            # checkpoint; the split is a pure function of the config, so it is also reproducible.
            return (f"{self.paired.num_cases} pairs; {self.valid.num_cases} set aside for "
                    f"validation ([Data] valid_fraction): {', '.join(self.valid.names)}")
        return f"{self.paired.num_cases} pairs"

    def case_names(self, indices: Sequence[int]) -> list[str]:
        return [self.paired.names[int(i)] for i in indices]

    @property
    def normalise(self) -> bool:
        return bool(self.cfg["Data"]["normalise"])

    @property
    def moving_shape(self) -> tuple[int, ...]:
        return tuple(self.paired.moving_shape)

    @property
    def fixed_shape(self) -> tuple[int, ...]:
        return tuple(self.paired.fixed_shape)

    def train_dataset(self, seed: int, start_step: int, stop_step: int | None = None,
                      segmentation_labels: bool = False) -> tf.data.Dataset:
        return make_train_dataset(self.paired, int(self.cfg["Train"]["minibatch_size"]), seed,
                                  start_step=start_step, stop_step=stop_step,
                                  normalise=self.normalise,
                                  cache=getattr(self, "cache", None),
                                  segmentation_labels=segmentation_labels,
                                  label0_probability=self.cfg["Data"].get("label0_probability"))

    def preprocess(self, batch: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        data = self.cfg["Data"]
        if data["augmentation"]:
            seed = step_seed(int(self.cfg["Train"]["seed"]), batch["step"])
            # Under several replicas a batch is a slice of the global batch; its samples take
            # the transforms of their positions in it, as on one device.
            batch = augment_batch(batch, float(data["affine_scale"]), seed,
                                  sample_index=batch.get("sample_index"),
                                  num_samples=int(self.cfg["Train"]["minibatch_size"]),
                                  translation=float(data["translation"]),
                                  intensity_gamma=float(data["intensity_gamma"]),
                                  intensity_noise=float(data["intensity_noise"]),
                                  flip_axes=tuple(data["flip_axes"]))
        return {**batch, "spacing": tf.gather(self.spacing_table, batch["case_index"])}

    def _valid_cases(self) -> CaseCache:
        """The validation cases, read on first use and kept: validation runs at every
        checkpoint on the same files."""
        if self._valid_cache is None:
            self._valid_cache = CaseCache(self.valid, normalise=self.normalise)
        return self._valid_cache

    @property
    def segmentation_classes(self) -> int:
        return 2  # background and the gland (label 0)

    def segmentation_samples(self, batch: dict[str, tf.Tensor]
                             ) -> list[tuple[tf.Tensor, tf.Tensor]]:
        """Each image with its label 0 (the gland) as ``[background, gland]``; the augmented
        labels are resampled linearly, so they are binarised at 0.5 first."""
        samples = []
        for role in ("moving", "fixed"):
            gland = tf.cast(batch[f"{role}_seg_label"] >= 0.5, tf.float32)
            samples.append((batch[f"{role}_image"], tf.concat([1.0 - gland, gland], axis=-1)))
        return samples

    def segmentation_validation(self) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
        if self.valid is None or not self.valid.has_labels:
            return
        for batch in make_eval_batches(self.valid, 1, normalise=self.normalise, label_index=0,
                                       cache=self._valid_cases()):
            for role in ("moving", "fixed"):
                gland = (np.asarray(batch[f"{role}_label"]) >= 0.5).astype(np.float32)
                yield role, batch[f"{role}_image"], np.concatenate([1.0 - gland, gland], -1)

    def recalibration_inputs(self, limit: int) -> Iterator[list[np.ndarray]]:
        label_index = 0 if self.paired.has_labels else None
        batch_size = int(self.cfg["Train"]["minibatch_size"])
        # The training cases are already in memory (prepare): no file is read again.
        for i, batch in enumerate(make_eval_batches(self.paired, batch_size,
                                                    normalise=self.normalise,
                                                    label_index=label_index,
                                                    cache=getattr(self, "cache", None))):
            if i == limit:
                return
            yield [batch["moving_image"], batch["fixed_image"]]

    def validate(self, ddf_function: DDFFunction) -> dict[str, float]:
        """Registration accuracy on the validation pairs (:func:`labelreg.scoring.evaluate`).

        Returns:
            ``{}`` without validation data, else ``dice``: the median over cases of the gland
            (label 0) Dice; ``tre_mm``: the median over cases of the mean landmark TRE in mm
            (labels 1..; NaN when no case has a landmark found); ``dice_mean``: the mean Dice
            over every label of every case; ``centroid_distance_mm``: the mean centroid
            distance (mm) over every label with a centroid. Labels are warped linearly and
            binarised at 0.5.
        """
        if self.valid is None:
            return {}
        table = evaluate(ddf_function, self.valid,
                         spacing=self.valid.fixed_spacings(tuple(self.cfg["Data"]["voxel_spacing"])),
                         normalise=self.normalise,
                         batch_size=int(self.cfg["Train"]["minibatch_size"]),
                         cache=self._valid_cases())
        summary = table.summary()
        return {"dice": summary["dice_median"], "tre_mm": summary["tre_mm_median"],
                **table.label_means()}

    def pictures(self, ddf_function: DDFFunction) -> dict[str, np.ndarray]:
        """The first case's gland (label 0), middle slice: fixed | moving | warped."""
        paired = self.paired
        batch = next(make_eval_batches(paired, 1, normalise=self.normalise,
                                       label_index=0 if paired.has_labels else None,
                                       cache=getattr(self, "cache", None)))
        out = register_pair(ddf_function, batch["moving_image"], batch["fixed_image"],
                            batch.get("moving_label"))
        fixed_shape = paired.fixed_shape
        moving_resized = ops.resize(batch["moving_image"], fixed_shape).numpy()[0, ..., 0]
        labels = {}
        if paired.has_labels:
            labels = {
                "fixed_label": batch["fixed_label"][0, ..., 0],
                "moving_label": ops.resize(batch["moving_label"], fixed_shape).numpy()[0, ..., 0],
                "warped_label": out["warped_label"].numpy()[0, ..., 0],
            }
        picture = middle_slice_panel(batch["fixed_image"][0, ..., 0], moving_resized,
                                     out["warped_moving_image"].numpy()[0, ..., 0], **labels)
        return {"middle_slice/fixed_moving_warped": picture}

    def infer(self, load_models: Callable[[], dict[str, Any]],
              overwrite: bool = False) -> list[str]:
        """:func:`labelreg.pair_inference.infer` on ``[Inference]``, which restores the network
        of ``[Inference] file_model_saved`` itself (at the precision of ``[Inference]
        precision``) once the output folder is checked."""
        result = infer_pairs(self.cfg, log=self.log, overwrite=overwrite)
        lines = [f"wrote {len(result.cases)} registered pair(s) to {result.dir_save}"]
        if result.rows:
            lines.append(
                f"gland (label 0) Dice, mean over pairs: before {result.mean('dice_before'):.3f}, "
                f"after {result.mean('dice'):.3f}; centroid distance, mean: before "
                f"{result.mean('centroid_distance_mm_before'):.2f} mm, after "
                f"{result.mean('centroid_distance_mm'):.2f} mm")
        return raise_if_failed(result, lines)


class TiffStacks(PairSource):
    """2-D TIFF stacks (``[Data] format = tiff_stack``), see the module docstring. Images are
    scaled by their bit depth only, and distances are in pixels."""

    def prepare(self) -> None:
        self.stacks = open_stacks(self.cfg["Data"], "train_sequences")
        self.valid = open_stacks(self.cfg["Data"], "valid_sequences",
                                 num_classes=self.stacks.num_classes)
        batch_size = int(self.cfg["Train"]["minibatch_size"])
        if batch_size > len(self.stacks.pairs("consecutive")):
            raise DataError(f"[Train] minibatch_size = {batch_size} exceeds the frame pairs of "
                            f"{self.cfg['Data']['dir_stacks']}.")

    def describe(self) -> str:
        return f"frame pairs of {', '.join(self.cfg['Data']['train_sequences'])}"

    def case_names(self, indices: Sequence[int]) -> list[str]:
        return [f"pair {int(i)}" for i in indices]

    @property
    def normalise(self) -> bool:
        return False

    @property
    def moving_shape(self) -> tuple[int, ...]:
        return tuple(self.stacks.shape)

    @property
    def fixed_shape(self) -> tuple[int, ...]:
        return tuple(self.stacks.shape)

    def train_dataset(self, seed: int, start_step: int, stop_step: int | None = None,
                      segmentation_labels: bool = False) -> tf.data.Dataset:
        return configured_train_dataset(self.cfg["Data"], self.stacks,
                                        self.cfg["Train"]["minibatch_size"], seed, start_step,
                                        stop_step)

    def preprocess(self, batch: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        # The stack pipeline augments each pair itself; distances are in pixels.
        size = tf.shape(batch["moving_image"])[:1]
        return {**batch, "spacing": tf.ones(tf.concat([size, [2]], axis=0))}

    @property
    def segmentation_classes(self) -> int:
        return int(self.stacks.num_classes)

    def segmentation_samples(self, batch: dict[str, tf.Tensor]
                             ) -> list[tuple[tf.Tensor, tf.Tensor]]:
        """Both frames of each pair with their one-hot class labels."""
        return [(batch[f"{role}_image"], batch[f"{role}_label"]) for role in ("moving", "fixed")]

    def segmentation_validation(self) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
        """The second frame of every consecutive validation pair."""
        if self.valid is None:
            return
        for pair in make_stack_eval_pairs(self.valid):
            yield "frame", pair["fixed_image"], pair["fixed_label"]

    def recalibration_inputs(self, limit: int) -> Iterator[list[np.ndarray]]:
        for i, pair in enumerate(make_stack_eval_pairs(self.stacks)):
            if i == limit:
                return
            yield [pair["moving_image"], pair["fixed_image"]]

    @staticmethod
    def _registered(ddf_function: DDFFunction, stacks: Any) -> Iterator[tuple[dict, dict]]:
        for pair in make_stack_eval_pairs(stacks):
            yield pair, register_pair(ddf_function, pair["moving_image"], pair["fixed_image"],
                                      pair["moving_label"], label_interpolation="nearest")

    def validate(self, ddf_function: DDFFunction) -> dict[str, float]:
        """``dice``: the mean over consecutive validation frame pairs of the mean per-class Dice
        (background included); ``{}`` without validation stacks."""
        if self.valid is None:
            return {}
        dices = [float(tf.reduce_mean(metrics.dice_per_class(pair["fixed_label"],
                                                             out["warped_label"])))
                 for pair, out in self._registered(ddf_function, self.valid)]
        return {"dice": float(np.mean(dices))}

    def pictures(self, ddf_function: DDFFunction) -> dict[str, np.ndarray]:
        pair, out = next(self._registered(ddf_function, self.valid or self.stacks))
        picture = middle_slice_panel(
            pair["fixed_image"][0, ..., 0], pair["moving_image"][0, ..., 0],
            out["warped_moving_image"].numpy()[0, ..., 0], _foreground(pair["fixed_label"]),
            _foreground(pair["moving_label"]), _foreground(out["warped_label"]))
        return {"middle_slice/fixed_moving_warped": picture}

    def _open_test_stacks(self, outputs: ItemOutputs) -> Any:
        """The test stacks (``valid_sequences``); a sequence whose files cannot be read fails
        as one item named after it, and the others are registered."""
        data = self.cfg["Data"]
        try:
            return open_stacks(data, "valid_sequences")
        except DataError:
            pass
        good = []
        for name in data["valid_sequences"]:
            try:
                _open_one(data, [name])
            except DataError as err:
                outputs.fail(name, ItemFailure("", str(err)))
            else:
                good.append(name)
        return _open_one(data, good) if good else None

    def infer(self, load_models: Callable[[], dict[str, Any]],
              overwrite: bool = False) -> list[str]:
        """Register the consecutive frames of ``valid_sequences`` (the test stacks) and write,
        per frame pair ``<sequence>_<frame>/``, the DDF, warped image and warped labels as TIFF,
        the pair's ``metrics.csv`` and ``overlay.png`` (``[Inference] save_png``); the whole
        ``metrics.csv`` is rebuilt from the pair folders."""
        inference = self.cfg["Inference"]
        save_png = bool(inference.get("save_png", True))
        expected = ["ddf.tif", "warped_image.tif", "warped_label.tif", "metrics.csv"]
        outputs = ItemOutputs(inference["dir_save"], expected + ["overlay.png"] * save_png,
                              overwrite=overwrite, log=self.log, noun="frame pair")
        outputs.check()
        if not self.cfg["Data"]["valid_sequences"]:
            raise ConfigError(f"{self.cfg.path}: [Data] valid_sequences is empty; nothing to "
                              "register.")
        outputs.open()
        stacks = self._open_test_stacks(outputs)
        pairs = ({_frame_pair_name(pair): pair for pair in make_stack_eval_pairs(stacks)}
                 if stacks is not None else {})
        todo = outputs.plan(pairs)
        self.log(f"registering {len(todo)} frame pair(s)")
        ddf_function = network_ddf(load_models()["model"])
        for count, name in enumerate(todo, start=1):
            pair = pairs[name]
            try:
                out = register_pair(ddf_function, pair["moving_image"], pair["fixed_image"],
                                    pair["moving_label"], label_interpolation="nearest")
            except Exception as err:  # noqa: BLE001 - the pair is lost, not the run
                outputs.fail(name, err)
                continue
            outputs.write(name, lambda folder, pair=pair, out=out: _write_frame_pair(
                folder, pair, out, save_png))
            if count % 10 == 0 or count == len(todo):
                self.log(f"processed {count}/{len(todo)}")
        names = [*pairs, *(item.case for item in outputs.failed if item.case not in pairs)]
        result = outputs.finish(names, STACK_METRIC_COLUMNS, text_columns=("sequence",),
                                int_columns=("frame",))
        lines = [f"wrote {len(result.cases)} registered frame pair(s) to {result.dir_save}"]
        if result.rows:
            lines.append(
                f"mean Dice over frame pairs (classes incl. background): before "
                f"{result.mean('dice_before', None):.3f}, after {result.mean('dice', None):.3f}; "
                f"folding ratio {result.mean('folding_ratio', None):.4f}")
        return raise_if_failed(result, lines)


def _open_one(data: Any, names: Sequence[str]) -> Any:
    return open_stacks({**data, "valid_sequences": tuple(names)}, "valid_sequences")


def _foreground(label: Any) -> np.ndarray:
    """Any non-background class of a one-hot label ``[1, H, W, K]`` as ``[H, W]``."""
    return 1.0 - np.asarray(label)[0, ..., 0]


def _frame_pair_name(pair: dict[str, Any]) -> str:
    return f"{pair['case_name'][0]}_{int(pair['moving_frame'][0]):03d}"


def _write_frame_pair(folder: Path, pair: dict[str, Any], out: dict[str, tf.Tensor],
                      save_png: bool) -> None:
    """The files of one registered frame pair (see :meth:`TiffStacks.infer`)."""
    ddf = out["ddf"].numpy()
    warped = out["warped_moving_image"].numpy()[0, ..., 0].astype(np.float32)
    tifffile.imwrite(folder / "ddf.tif", ddf[0].astype(np.float32))
    tifffile.imwrite(folder / "warped_image.tif", warped)
    warped_classes = np.argmax(out["warped_label"].numpy()[0], axis=-1)
    tifffile.imwrite(folder / "warped_label.tif", warped_classes.astype(np.uint8))
    write_csv(folder / "metrics.csv", [_frame_pair_row(pair, out, ddf)], STACK_METRIC_COLUMNS)
    if save_png:
        write_png(folder / "overlay.png", overlay_figure(
            pair["fixed_image"][0, ..., 0], pair["moving_image"][0, ..., 0], warped,
            _foreground(pair["fixed_label"]), _foreground(pair["moving_label"]),
            _foreground(out["warped_label"])))


def _frame_pair_row(pair: dict[str, Any], out: dict[str, tf.Tensor], ddf: np.ndarray
                    ) -> dict[str, Any]:
    fixed = tf.constant(pair["fixed_label"], tf.float32)
    before_dice = metrics.dice_per_class(fixed, tf.constant(pair["moving_label"],
                                                            tf.float32)).numpy()[0]
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


#: ``[Data] format`` -> the source class; a config without the key reads NIfTI pairs.
SOURCES: dict[str, type[PairSource]] = {"nifti": NiftiPairs, "tiff_stack": TiffStacks}


def source_for(cfg: Config, log: Callable[[str], None] = print) -> PairSource:
    """The source of ``cfg``'s ``[Data] format`` (``nifti`` when the schema has no such key).

    Raises:
        ConfigError: a format no source reads.
    """
    fmt = cfg["Data"].get("format", "nifti")
    if fmt not in SOURCES:
        raise ConfigError(f"{cfg.path}: [Data] format = {fmt!r}: no data source reads it; "
                          f"expected one of {', '.join(SOURCES)}.")
    return SOURCES[fmt](cfg, log)

