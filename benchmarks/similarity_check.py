"""Does an image similarity prefer the right alignment of real MR/TRUS pairs?

Run: ``.venv/bin/python benchmarks/similarity_check.py configs/mrus.ini [--split valid]
[--run RUN] [--similarities ssd lncc gncc nmi mind] [--extractor RUN] [--far 30]``.

An image-driven registration can only learn what its similarity rewards. For every pair of a
split this scores each similarity (lower is better, as the losses are defined) at three
alignments of the moving image on the fixed grid:

- **identity**: the zero displacement (what an image-driven network starts from);
- **centroid**: the translation that aligns the two gland labels' centroids (from the labels,
  a good global position that no image-driven method is told);
- **recipe**: the DDF of a trained label-driven run (``--run``, default the config's
  ``[Inference] file_model_saved``), which lands the landmarks at the TRE the results give.

It prints, per similarity, the median loss at each alignment and the share of pairs where the
better alignment scores lower than the identity. A similarity that does not prefer the centroid
or recipe alignment on most pairs gives a registration network nothing to learn from, however
long it trains. The images are min-max normalised to [0, 1], as training reads them.

Preferring the right alignment to the identity is not enough: a network follows the loss
wherever it is lower. The last column is the share of pairs where one of six far translations
(``--far`` mm along each axis, both ways, from the identity) scores lower than the centroid
alignment; a similarity with a high share there drifts away during training. ``--extractor``
adds DeepSim with a trained ``deepsim_features`` run, comparing its encoder features
(``deepsim``) and its segmentation output (``deepsim_seg``, ``compare=segmentation``).
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
from _timing import cpu_line  # noqa: E402

import labelreg  # noqa: E402, F401  (before TensorFlow: oneDNN)
from labelreg import ops  # noqa: E402
from labelreg._tf import tf  # noqa: E402

ALIGNMENTS = ("identity", "centroid", "recipe")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config")
    parser.add_argument("--split", choices=("valid", "inference"), default="valid")
    parser.add_argument("--run", default=None, help="trained label-driven run (default: the "
                        "config's [Inference] file_model_saved)")
    parser.add_argument("--similarities", nargs="+", default=["ssd", "lncc", "gncc", "nmi", "mind"])
    parser.add_argument("--extractor", default=None, help="a deepsim_features run folder: also "
                        "score DeepSim's features and its segmentation output")
    parser.add_argument("--far", type=float, default=30.0,
                        help="length in mm of the far translations (default 30)")
    args = parser.parse_args(argv)
    print(cpu_line())

    from labelreg.data.pipeline import read_case
    from labelreg.evaluation import split_dataset
    from labelreg.infer import load_trained_model
    from labelreg.losses.registry import build_loss
    from labelreg.methods.registry import load_config
    from labelreg.networks.apply import inference_ddf

    _, cfg = load_config(args.config)
    paired = split_dataset(cfg, args.split)
    model, _, prefix = load_trained_model(args.run or cfg["Inference"]["file_model_saved"])
    recipe = inference_ddf(model, {})
    losses = {name: build_loss(name, "image") for name in args.similarities}
    if args.extractor:
        from labelreg.methods.runs import load_trained_run

        extractor = load_trained_run(args.extractor).models["model"]
        losses["deepsim"] = build_loss("deepsim", "image", feature_extractor=extractor)
        losses["deepsim_seg"] = build_loss("deepsim", "image", feature_extractor=extractor,
                                           compare="segmentation")
    scores = {name: {a: [] for a in (*ALIGNMENTS, "far")} for name in losses}
    spacing = paired.fixed_spacings(tuple(cfg["Data"]["voxel_spacing"]))
    print(f"{paired.num_cases} pairs of the {args.split} split; recipe DDF from {prefix}")
    for case in range(paired.num_cases):
        moving, fixed, moving_label, fixed_label = (
            read_case(paired, role, case) for role in
            ("moving_image", "fixed_image", "moving_label", "fixed_label"))
        moving_t = tf.constant(moving[None, ..., None])
        fixed_t = tf.constant(fixed[None, ..., None])
        # The label-weighted mean voxel index of each gland (no prior mass: the plain centroid).
        shift = (ops.soft_centroid(moving_label[None, ..., :1], prior_mass=0.0)
                 - ops.soft_centroid(fixed_label[None, ..., :1], prior_mass=0.0))[0].numpy()
        ddfs = {
            "identity": tf.zeros((1, *fixed.shape, fixed.ndim)),
            "centroid": tf.constant(np.broadcast_to(shift, (1, *fixed.shape, fixed.ndim)),
                                    tf.float32),
            "recipe": recipe(moving_t, fixed_t),
        }
        for alignment, ddf in ddfs.items():
            warped = ops.warp(moving_t, ddf)
            for name, loss in losses.items():
                scores[name][alignment].append(float(loss(fixed_t, warped)[0]))
        far = {name: [] for name in losses}
        for axis in range(fixed.ndim):
            for sign in (1.0, -1.0):
                offset = np.zeros(fixed.ndim, np.float32)
                offset[axis] = sign * args.far / float(spacing[case][axis])
                warped = ops.warp(moving_t, tf.constant(
                    np.broadcast_to(offset, (1, *fixed.shape, fixed.ndim)), tf.float32))
                for name, loss in losses.items():
                    far[name].append(float(loss(fixed_t, warped)[0]))
        for name, values in far.items():
            scores[name]["far"].append(min(values))

    far_column = f"{args.far:g} mm shift < centroid"
    print(f"{'similarity':<12}" + "".join(f"{a + ' (median)':>20}" for a in ALIGNMENTS)
          + f"{'centroid < identity':>22}{'recipe < identity':>20}{far_column:>26}")
    for name, by in scores.items():
        values = {a: np.array(v) for a, v in by.items()}
        better = {a: np.mean(values[a] < values["identity"]) for a in ("centroid", "recipe")}
        drift = np.mean(values["far"] < values["centroid"])
        print(f"{name:<12}" + "".join(f"{np.median(values[a]):>20.5f}" for a in ALIGNMENTS)
              + f"{better['centroid']:>21.0%} {better['recipe']:>19.0%} {drift:>25.0%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
