"""learnsim (Grzech et al., CVPR 2022): variational Bayesian registration with a learned
similarity metric, as a method of the shared engine.

Each training step takes a batch of pairs (atlas-based by default: every moving image against the
first fixed image) and

1. fits each pair's Gaussian posterior over a stationary velocity field
   (:class:`labelreg.variational.SVFPosterior`, warm-started from the pair's previous fit) with
   ``[Variational] iterations`` Adam steps of the negative ELBO
   ``(D1 + D2)/2 + (R1 + R2)/2 - [H + (Q1 + Q2)/2]`` on two antithetic samples, in one compiled
   loop; the data term ``D`` is the learned SSD or LCC of :mod:`labelreg.losses.learnsim` on the
   image warped by the Sobolev-smoothed, integrated sample (plus uniform noise);
2. takes one contrastive step on the metric encoder (``[Train] learning_rate``, 1e-5) and on a
   learnable low-rank Gaussian of "negative" fixed images around the fixed image
   (``[Metric] negative_learning_rate``, 1e-3): ``mean(D(F) - D(F~1)/2 - D(F~2)/2)``.

The encoder and the negatives' distribution are the checkpointed models; the posteriors are kept
in memory per pair (a resumed run starts them afresh). Inference fits each test pair's posterior
with the frozen metric and writes the mean DDF, a few samples, the per-voxel standard deviation of
the displacement (the uncertainty map), the warped image and labels, and ``metrics.csv``.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import keras
import nibabel as nib
import numpy as np

from labelreg import metrics, ops
from labelreg._tf import tf
from labelreg.data import PairedDataset
from labelreg.data.pipeline import normalise_intensity
from labelreg.errors import DataError
from labelreg.files import nifti_image, write_csv, write_png
from labelreg.item_outputs import ItemOutputs, raise_if_failed
from labelreg.losses.learnsim import learned_lcc, learned_ssd
from labelreg.methods.base import Endpoint, Method
from labelreg.methods.runs import load_trained_run
from labelreg.networks.learnsim import SimilarityEncoder
from labelreg.ops.sobolev import sobolev_smooth
from labelreg.pair_inference import InferencePair, NiftiInferencePairs
from labelreg.variational import SVFPosterior, transformation, velocity_regulariser
from labelreg.visualise import overlay_figure

__all__ = ["LearnSim", "NegativeImages", "METRIC_COLUMNS"]

METRIC_COLUMNS = ("case", "dice_before", "dice", "asd_mm_before", "asd_mm",
                  "non_diffeomorphic_voxels", "seconds")


@keras.saving.register_keras_serializable(package="labelreg")
class NegativeImages(keras.Model):
    """A low-rank Gaussian of "negative" fixed images around a fixed image (learnsim's ``q_f``).

    ``F~ = clip(F +- (sigma * eps + x * u), 0, 1)``, two antithetic samples, ``sigma`` and ``u``
    learnable fields (``log sigma^2 <= 0``, ``u`` in [-1, 1], enforced by :meth:`constrain`).

    Args:
        shape: the spatial shape of the fixed image.
        sigma_init: initial ``sigma``.
        u_init: initial ``u``.
    """

    def __init__(self, shape: Sequence[int], sigma_init: float = 0.1, u_init: float = 0.1,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.field_shape = tuple(int(s) for s in shape)
        self.sigma_init, self.u_init = float(sigma_init), float(u_init)
        self.log_var = self.add_weight(
            shape=(*self.field_shape, 1), name="log_var",
            initializer=keras.initializers.Constant(2.0 * np.log(self.sigma_init)))
        self.u = self.add_weight(shape=(*self.field_shape, 1), name="u",
                                 initializer=keras.initializers.Constant(self.u_init))
        self.built = True  # the weights depend on the configured shape only

    def call(self, fixed: tf.Tensor, seed: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        eps_seed, x_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
        eps = tf.random.stateless_normal(tf.shape(fixed), eps_seed)
        x = tf.random.stateless_normal(tf.concat([tf.shape(fixed)[:1],
                                                  tf.ones_like(tf.shape(fixed)[1:])], 0), x_seed)
        d = tf.exp(0.5 * self.log_var) * eps + x * self.u
        return tf.clip_by_value(fixed + d, 0.0, 1.0), tf.clip_by_value(fixed - d, 0.0, 1.0)

    def constrain(self) -> None:
        self.log_var.assign(tf.minimum(self.log_var, 0.0))
        self.u.assign(tf.clip_by_value(self.u, -1.0, 1.0))

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "shape": list(self.field_shape),
                "sigma_init": self.sigma_init, "u_init": self.u_init}


class LearnSim(Method):
    """``[Method] name = learnsim``."""

    name = "learnsim"
    feature_network_key = "encoder"


    # -- data -----------------------------------------------------------------------------------

    def _ensure_data(self) -> None:
        data = self.cfg["Data"]
        if data["synthetic_volumes"]:
            from labelreg.data.synthetic_volumes import write_synthetic_volumes

            write_synthetic_volumes(data["dir_synthetic"], cases=data["synthetic_cases"],
                                    size=tuple(data["synthetic_size"]))

    def _read(self, section: str) -> tuple[PairedDataset, np.ndarray, np.ndarray]:
        keys = self.cfg[section]
        with_labels = keys["dir_moving_label"] is not None and keys["dir_fixed_label"] is not None
        paired = PairedDataset(keys["dir_moving_image"], keys["dir_fixed_image"],
                               keys["dir_moving_label"] if with_labels else None,
                               keys["dir_fixed_label"] if with_labels else None)
        prepare = normalise_intensity if self.cfg["Data"]["normalise"] else (lambda x: x)
        moving = np.stack([prepare(paired.read("moving_image", i)[..., 0])
                           for i in range(paired.num_cases)])[..., None].astype(np.float32)
        if tuple(paired.moving_shape) != tuple(paired.fixed_shape):
            # The posterior lives on one grid: moving images (and labels) are resampled to the
            # fixed grid, covering the same field of view, as the networks see them.
            self.log(f"resampling moving images {tuple(paired.moving_shape)} to the fixed grid "
                     f"{tuple(paired.fixed_shape)}")
            moving = ops.resize(moving, tuple(paired.fixed_shape)).numpy()
        count = 1 if self.cfg["Data"]["atlas"] else paired.num_cases
        fixed = np.stack([prepare(paired.read("fixed_image", i)[..., 0])
                          for i in range(count)])[..., None].astype(np.float32)
        return paired, moving, fixed

    def prepare_data(self) -> None:
        self._ensure_data()
        self.paired, self.moving, self.fixed = self._read("Data")
        batch = int(self.cfg["Train"]["minibatch_size"])
        if batch > self.paired.num_cases:
            raise DataError(f"[Train] minibatch_size = {batch} exceeds the "
                            f"{self.paired.num_cases} pairs of {self.cfg['Data']['dir_moving_image']}.")

    def describe_data(self) -> str:
        atlas = ", atlas-based" if self.cfg["Data"]["atlas"] else ""
        return f"{self.paired.num_cases} pairs{atlas}"

    def _fixed_for(self, cases: np.ndarray) -> np.ndarray:
        return self.fixed[np.zeros_like(cases) if self.cfg["Data"]["atlas"] else cases]

    # -- models ---------------------------------------------------------------------------------

    def build(self) -> dict[str, keras.Model]:
        shape = self.moving.shape[1:-1]
        metric = self.cfg["Metric"]
        encoder = SimilarityEncoder(ndim=len(shape), features=tuple(metric["features"]))
        encoder(tf.zeros([1, *shape, 1]))
        negatives = NegativeImages(shape, metric["negative_sigma_init"], metric["negative_u_init"])
        return {"encoder": encoder, "negatives": negatives}

    def trained_models(self) -> tuple[str, ...]:
        return ("encoder", "negatives") if self.cfg["Metric"]["learnable"] else ()

    def learning_rates(self) -> dict[str, float]:
        return {"negatives": float(self.cfg["Metric"]["negative_learning_rate"])}

    def meta(self) -> dict[str, Any]:
        return {"shape": list(self.moving.shape[1:-1]), "term": self.cfg["Metric"]["term"]}

    @classmethod
    def rebuild(cls, description: Mapping[str, Any]) -> dict[str, keras.Model]:
        models = super().rebuild(description)
        shape = description["meta"]["shape"]
        models["encoder"](tf.zeros([1, *shape, 1]))
        return models

    # -- the variational fit --------------------------------------------------------------------

    def data_term(self, encoder: Any) -> Callable[[tf.Tensor, tf.Tensor], tf.Tensor]:
        """``(fixed, warped) -> [B]``: the learned (or, without ``encoder``, plain) SSD / LCC."""
        term = learned_ssd if self.cfg["Metric"]["term"] == "ssd" else learned_lcc
        return lambda fixed, warped: term(encoder, fixed, warped)

    def _warp_sample(self, moving: tf.Tensor, v: tf.Tensor, noise: float, seed: tf.Tensor
                     ) -> tuple[tf.Tensor, tf.Tensor]:
        var = self.cfg["Variational"]
        smooth = sobolev_smooth(v, var["sobolev_smoothness"], var["sobolev_lambda"])
        ddf = transformation(smooth, steps=var["integration_steps"], smooth=False)
        if noise > 0:
            ddf = ddf + tf.random.stateless_uniform(tf.shape(ddf), seed, -noise, noise)
        return ops.warp(moving, ddf), smooth

    def make_fit(self, posterior: SVFPosterior, data: Callable, noise: float
                 ) -> Callable[[tf.Tensor, tf.Tensor, tf.Tensor], dict[str, tf.Tensor]]:
        """One compiled loop of ``[Variational] iterations`` Adam steps on ``posterior``."""
        var = self.cfg["Variational"]
        optimizer = keras.optimizers.Adam(learning_rate=float(var["learning_rate"]))
        optimizer.build(posterior.trainable_variables)
        # Its state at the start (the learning rate is one of its variables, too).
        initial = [tf.constant(v.numpy()) for v in optimizer.variables]
        weight = float(var["regulariser_weight"])

        def objective(moving, fixed, seed):
            s1, s2 = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
            v1, v2 = posterior.sample(s1)
            # Both antithetic samples in one batch of 2B: one integration, warp and data term
            # in the graph instead of two (half the graph to build, larger convolutions).
            warped, smooth = self._warp_sample(tf.concat([moving, moving], 0),
                                               tf.concat([v1, v2], 0), noise, s2)
            d = _mean_of_halves(data(tf.concat([fixed, fixed], 0), warped))
            r = _mean_of_halves(velocity_regulariser(smooth, weight))
            h = posterior.entropy() + (posterior.quadratic(v1) + posterior.quadratic(v2)) / 2.0
            return d, r, h

        iterations = int(var["iterations"])

        # An explicit tf.while_loop, not a Python loop over tf.range: AutoGraph would make the
        # same loop but also rewrite every nested call (warps, filters) at each trace.
        @tf.function(autograph=False)
        def fit(moving: tf.Tensor, fixed: tf.Tensor, seed: tf.Tensor) -> dict[str, tf.Tensor]:
            for variable, value in zip(optimizer.variables, initial, strict=True):
                variable.assign(value)  # a fresh Adam for every batch

            def step(i, *_):
                with tf.GradientTape() as tape:
                    d, r, h = objective(moving, fixed, tf.stack([seed[0], seed[1] + i]))
                    loss = tf.reduce_sum(d + r - h)
                grads = tape.gradient(loss, posterior.trainable_variables)
                optimizer.apply_gradients(zip(grads, posterior.trainable_variables, strict=True))
                return i + 1, d, r, h

            zeros = tf.zeros([tf.shape(moving)[0]])
            _, d, r, h = tf.while_loop(lambda i, *_: i < iterations, step,
                                       (tf.constant(0, tf.int64), zeros, zeros, zeros))
            return {"loss": tf.reduce_mean(d + r - h), "data": tf.reduce_mean(d),
                    "regulariser": tf.reduce_mean(r), "entropy": tf.reduce_mean(h),
                    "sigma": tf.reduce_mean(posterior.sigma)}

        return fit

    # -- the training step ----------------------------------------------------------------------

    def train_dataset(self, seed: int, start_step: int, total_steps: int) -> tf.data.Dataset:
        batch, count = int(self.cfg["Train"]["minibatch_size"]), self.paired.num_cases

        def cases(step: tf.Tensor) -> dict[str, tf.Tensor]:
            pick = tf.random.stateless_uniform([batch], tf.stack([tf.cast(seed, tf.int64), step]),
                                               0, count, dtype=tf.int64)
            return {"case_index": pick, "step": step}

        return tf.data.Dataset.range(start_step + 1, total_steps + 1).map(cases)

    def custom_train_step(self, optimizers: Mapping[str, Any]):
        batch = int(self.cfg["Train"]["minibatch_size"])
        shape = self.moving.shape[1:-1]
        var = self.cfg["Variational"]
        self.posterior = SVFPosterior((batch, *shape, len(shape)), var["sigma_init"], var["u_init"])
        learnable = self.cfg["Metric"]["learnable"]
        encoder = self.models["encoder"]
        fit = self.make_fit(self.posterior, self.data_term(encoder if learnable else None),
                            float(var["noise"]))
        self._cache: dict[int, list[np.ndarray]] = {}
        metric_step = self._make_metric_step(optimizers) if learnable else None

        def step(item: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
            cases = item["case_index"].numpy()
            moving = tf.constant(self.moving[cases])
            fixed = tf.constant(self._fixed_for(cases))
            self._load_posteriors(cases)
            seed = tf.stack([tf.constant(int(self.cfg["Train"]["seed"]), tf.int64),
                             tf.cast(item["step"], tf.int64) * 100003])
            out = fit(moving, fixed, seed)
            self._store_posteriors(cases)
            if metric_step is not None:
                out = {**out, **metric_step(moving, fixed, seed + 7)}
            return out

        return step

    def _load_posteriors(self, cases: np.ndarray) -> None:
        """Each pair's last fit (warm start), or the initial posterior for a new pair."""
        var = self.cfg["Variational"]
        field = tuple(self.posterior.mu.shape[1:])
        fresh = (np.zeros(field, np.float32),
                 np.full(field, 2.0 * np.log(var["sigma_init"]), np.float32),
                 np.full(field, var["u_init"], np.float32))
        for k, variable in enumerate((self.posterior.mu, self.posterior.log_var,
                                      self.posterior.u)):
            variable.assign(np.stack([self._cache[int(c)][k] if int(c) in self._cache
                                      else fresh[k] for c in cases]))

    def _store_posteriors(self, cases: np.ndarray) -> None:
        arrays = [v.numpy() for v in (self.posterior.mu, self.posterior.log_var, self.posterior.u)]
        for i, case in enumerate(cases):
            self._cache[int(case)] = [a[i] for a in arrays]

    def _make_metric_step(self, optimizers: Mapping[str, Any]):
        encoder, negatives = self.models["encoder"], self.models["negatives"]
        data = self.data_term(encoder)
        pairs = [(optimizers["encoder"], encoder.trainable_variables),
                 (optimizers["negatives"], negatives.trainable_variables)]
        variables = [v for _, group in pairs for v in group]

        # Python loops over Python lists only: no AutoGraph rewriting to pay for.
        @tf.function(autograph=False)
        def metric_step(moving: tf.Tensor, fixed: tf.Tensor, seed: tf.Tensor):
            s1, s2 = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
            v, _ = self.posterior.sample(s1)
            warped, _ = self._warp_sample(moving, tf.stop_gradient(v), 0.0, s2)
            warped = tf.stop_gradient(warped)
            with tf.GradientTape() as tape:
                negative1, negative2 = negatives(fixed, s2)
                real = data(fixed, warped)
                loss = tf.reduce_mean(real - data(negative1, warped) / 2.0
                                      - data(negative2, warped) / 2.0)
            grads = tape.gradient(loss, variables)
            start = 0
            for optimizer, group in pairs:
                optimizer.apply_gradients(zip(grads[start:start + len(group)], group,
                                              strict=True))
                start += len(group)
            negatives.constrain()
            return {"metric_loss": loss, "data_real": tf.reduce_mean(real)}

        return metric_step

    # -- inference ------------------------------------------------------------------------------

    def infer(self, overwrite: bool = False) -> list[str]:
        """Fit each test pair's posterior with the frozen metric and write, per pair folder
        (the contract of :mod:`labelreg.item_outputs`: staged, skipped when complete unless
        ``overwrite``, a bad pair listed in ``failed.csv`` while the others are written), the
        mean DDF, ``[Variational] samples`` sampled DDFs, the per-voxel standard deviation of
        the displacement, the warped image and labels and the pair's ``metrics.csv``.

        Raises:
            PartialFailure: some pairs failed, the others were written.
        """
        self._ensure_data()
        inference = self.cfg["Inference"]
        samples = int(self.cfg["Variational"]["samples"])
        labelled = inference["dir_fixed_label"] is not None
        expected = ["ddf.nii.gz", "ddf_std.nii.gz", "warped_image.nii.gz",
                    *[f"ddf_sample_{k}.nii.gz" for k in range(samples)]]
        if labelled:
            expected += ["warped_label.nii.gz", "metrics.csv"]
        if inference["save_png"]:
            expected.append("overlay.png")
        outputs = ItemOutputs(inference["dir_save"], expected, overwrite=overwrite, log=self.log)
        outputs.check()
        pairs = NiftiInferencePairs({**inference, "dir_moving_label": inference["dir_moving_label"]
                                     if labelled else None})
        run = load_trained_run(self.cfg["Train"]["dir_run"])
        encoder = run.models["encoder"] if (inference["learned"] and
                                            self.cfg["Metric"]["learnable"]) else None
        if pairs.fixed_shape is None:
            raise DataError(f"{inference['dir_fixed_image']}: no readable fixed image.")
        shape = pairs.fixed_shape
        var = self.cfg["Variational"]
        posterior = SVFPosterior((1, *shape, len(shape)), var["sigma_init"], var["u_init"])
        fit = self.make_fit(posterior, self.data_term(encoder), 0.0)
        normalise = bool(self.cfg["Data"]["normalise"])
        atlas = pairs.load(pairs.names[0], normalise) if self.cfg["Data"]["atlas"] else None
        outputs.open()
        todo = outputs.plan(pairs.names)
        for count, name in enumerate(todo, start=1):
            try:
                pair = pairs.load(name, normalise)
                result = self._fit_pair(pair, atlas or pair, pairs.names.index(name),
                                        posterior, fit)
            except Exception as err:  # noqa: BLE001 - the pair is lost, not the run
                outputs.fail(name, err)
                continue
            if outputs.write(name, functools.partial(self._write_pair, **result)):
                self.log(f"registered {count}/{len(todo)} in {result['row']['seconds']:.1f} s")
        result = outputs.finish(pairs.names, METRIC_COLUMNS if labelled else None)
        lines = [f"wrote {len(result.cases)} registered pair(s) to {result.dir_save}"]
        if result.rows:
            mean = {k: result.mean(k, None) for k in METRIC_COLUMNS[1:]}
            lines.append(f"mean over pairs: Dice before {mean['dice_before']:.3f}, after "
                         f"{mean['dice']:.3f}; ASD {mean['asd_mm_before']:.2f} -> "
                         f"{mean['asd_mm']:.2f} mm; {mean['seconds']:.1f} s per pair")
        return raise_if_failed(result, lines)

    def _fit_pair(self, pair: InferencePair, fixed_pair: InferencePair, case: int,
                  posterior: SVFPosterior, fit: Callable[..., Any]) -> dict[str, Any]:
        """Fit one pair's posterior and compute its outputs (arrays in the fixed grid)."""
        start = time.perf_counter()
        var = self.cfg["Variational"]
        shape = fixed_pair.fixed.shape
        moving = pair.moving[None, ..., None].astype(np.float32)
        if moving.shape[1:-1] != shape:
            # The posterior lives on one grid: moving images (and labels) are resampled to the
            # fixed grid, covering the same field of view, as the networks see them.
            moving = ops.resize(moving, shape).numpy()
        moving = tf.constant(moving)
        fixed = tf.constant(fixed_pair.fixed[None, ..., None].astype(np.float32))
        posterior.reset()
        fit(moving, fixed, tf.constant([int(self.cfg["Train"]["seed"]), case], tf.int64))

        def ddf_of(v: tf.Tensor) -> tf.Tensor:
            smooth = sobolev_smooth(v, var["sobolev_smoothness"], var["sobolev_lambda"])
            return transformation(smooth, steps=var["integration_steps"], smooth=False)

        mean_ddf = ddf_of(posterior.mu)
        samples = []
        for k in range((int(var["samples"]) + 1) // 2):
            for v in posterior.sample(tf.constant([case, 1000 + k], tf.int64)):
                samples.append(ddf_of(v).numpy()[0])
        samples = np.stack(samples[: int(var["samples"])])
        row = {"case": pair.name, "seconds": time.perf_counter() - start,
               "non_diffeomorphic_voxels": int(np.sum(
                   metrics.jacobian_determinant(mean_ddf).numpy() <= 0))}
        result = {"mean_ddf": mean_ddf.numpy()[0], "samples": samples,
                  "warped": ops.warp(moving, mean_ddf).numpy()[0, ..., 0],
                  "overlay": None,
                  "affine": fixed_pair.affine, "header": fixed_pair.header,
                  "warped_labels": None, "row": row}
        if pair.moving_label is not None and fixed_pair.fixed_label is not None:
            n = len(shape)
            labels = pair.moving_label
            if labels.shape[:n] != shape:
                labels = ops.resize(labels[None], shape).numpy()[0]
            stacked = np.moveaxis(labels, -1, 0)[..., None]
            target = np.moveaxis(fixed_pair.fixed_label, -1, 0)[..., None]
            ddf = np.repeat(mean_ddf.numpy(), len(stacked), axis=0)
            after = ops.warp(stacked, ddf).numpy()
            result["warped_labels"] = np.moveaxis(after[..., 0], 0, -1)
            spacing = fixed_pair.spacing
            row.update({
                "dice_before": float(metrics.dice(target, stacked).numpy().mean()),
                "dice": float(metrics.dice(target, after).numpy().mean()),
                "asd_mm_before": float(np.nanmean(metrics.average_surface_distance(
                    target, stacked, spacing=spacing).numpy())),
                "asd_mm": float(np.nanmean(metrics.average_surface_distance(
                    target, after, spacing=spacing).numpy())),
            })
        if self.cfg["Inference"]["save_png"]:
            first = {}
            if result["warped_labels"] is not None:
                first = {"fixed_label": target[0, ..., 0], "moving_label": stacked[0, ..., 0],
                         "warped_label": after[0, ..., 0]}
            result["overlay"] = overlay_figure(
                fixed_pair.fixed, moving.numpy()[0, ..., 0], result["warped"],
                spacing=fixed_pair.spacing, **first)
        return result

    @staticmethod
    def _write_pair(folder: Path, mean_ddf: np.ndarray, samples: np.ndarray, warped: np.ndarray,
                    affine: np.ndarray, header: Any, warped_labels: np.ndarray | None,
                    row: dict[str, Any], overlay: np.ndarray | None = None) -> None:
        """One pair's files (see :meth:`infer`) into its staging ``folder``."""
        def save(name: str, data: np.ndarray) -> None:
            nib.save(nifti_image(data, affine, header), folder / name)

        save("ddf.nii.gz", mean_ddf)
        save("ddf_std.nii.gz", samples.std(axis=0))
        for k, sample in enumerate(samples):
            save(f"ddf_sample_{k}.nii.gz", sample)
        save("warped_image.nii.gz", warped)
        if warped_labels is not None:
            save("warped_label.nii.gz", warped_labels)
            write_csv(folder / "metrics.csv", [row], METRIC_COLUMNS)
        if overlay is not None:
            write_png(folder / "overlay.png", overlay)

    @classmethod
    def serving_endpoints(cls, models: Mapping[str, keras.Model], meta: Mapping[str, Any],
                          **options: Any) -> dict[str, Endpoint]:
        """``serving_default``: the learned metric's feature map, ``image [B, *S, 1]`` ->
        ``features [B, *S, 1]`` (registration itself is an optimisation per pair)."""
        encoder = models["encoder"]
        n = len(meta["shape"])
        spec = tf.TensorSpec([None] * (n + 1) + [1], tf.float32, name="image")
        return {"serving_default": (lambda image: {"features": encoder(image)}, [spec],
                                    ["features"])}


def _mean_of_halves(values: tf.Tensor) -> tf.Tensor:
    """``[2B] -> [B]``: the mean of the two antithetic samples of each pair."""
    first, second = tf.split(values, 2, axis=0)
    return (first + second) / 2.0
