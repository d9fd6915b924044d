"""Registration evaluation on known random rigid transforms, as in the CoMIR paper's table.

For every aligned test pair ``(A, B)``:

1. the reference is the centre ``S x S`` patch of A (``S = patch_fraction * min(H, W)``);
2. a known rigid transform is drawn (rotation uniform in +-``max_rotation`` degrees,
   translation uniform in +-``max_translation * S`` pixels per axis) and B is resampled through it
   into an ``S x S`` "transformed patch" (the corners come from B's real surroundings, as when
   the paper cut its transformed patches from the larger slide);
3. each method registers the transformed patch onto the reference patch:
   ``comir`` (the CoMIRs of both patches, MSE), ``raw_mse`` (the raw patches in gray, z-scored,
   MSE), ``raw_mi`` (the raw patches in gray, min-max scaled, mutual information) and
   ``comir_sift`` (SIFT + RANSAC on the CoMIRs; needs OpenCV), all but SIFT with the same
   optimiser (:func:`comir_tf.register.register_rigid`);
4. the error is the mean distance between where the recovered and the true transform send the
   four corners of the reference patch, and a registration succeeds when the error is below
   ``success_fraction * S`` (the paper: 100 px on 834 px patches, i.e. 12 %).

Writes ``evaluation.csv`` (one row per pair) and ``evaluation.json`` (the summary) into
``[Evaluate] output_dir``. Run it with ``python -m comir_tf.evaluate configs/comir.ini``.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from labelreg.config import Config
from labelreg.errors import DataError

__all__ = ["known_transform", "evaluate", "main"]


def known_transform(image_b: np.ndarray, size: int, angle: float,
                    translation: tuple[float, float]) -> tuple[np.ndarray, np.ndarray, tuple]:
    """Cut the transformed ``size x size`` patch out of B and the true registration matrix.

    The transformed patch is ``B_t(p) = B(c + R(angle) (p - c_S) + t)``, with ``c`` the centre of
    the reference crop in B and ``c_S`` the patch centre. Registering ``B_t`` onto the reference
    patch must recover the inverse map, returned as a 2x3 matrix in
    :mod:`comir_tf.register`'s convention (reference patch -> transformed patch).

    Returns:
        ``(patch [size, size, C], true_matrix [2, 3], (top, left))`` where ``(top, left)`` is the
        reference crop's corner.
    """
    from comir_tf.register import rigid_matrix, warp_rigid

    height, width = image_b.shape[:2]
    top, left = (height - size) // 2, (width - size) // 2
    patch_shape = (size, size)
    # Patch pixel -> B pixel: rotate about the patch centre, move to the crop's place, translate.
    to_b = rigid_matrix(angle, (left + translation[0], top + translation[1]), patch_shape)
    patch = warp_rigid(image_b, to_b, patch_shape, fill_mode="nearest").numpy()
    # In patch coordinates the transformed patch shows the reference at G(p) = R(p - c) + c + t;
    # the registration wants G's inverse.
    forward = np.vstack([rigid_matrix(angle, translation, patch_shape), [0.0, 0.0, 1.0]])
    return patch, np.linalg.inv(forward)[:2], (top, left)


def _gray(image: np.ndarray) -> np.ndarray:
    return np.mean(image, axis=-1, keepdims=True)


def _zscore(image: np.ndarray) -> np.ndarray:
    return (image - image.mean()) / max(float(image.std()), 1e-6)


def _minmax(image: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(image, [0.5, 99.5])
    return np.clip((image - lo) / max(float(hi - lo), 1e-6), 0.0, 1.0)


def evaluate(cfg: Config, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the evaluation described by ``[Evaluate]`` and write its CSV and JSON.

    Returns:
        The summary: per method the success rate, mean and median error (pixels and fraction
        of the side), plus the settings and the initial (identity) errors.

    Raises:
        DataError: missing test pairs or checkpoint.
        ImportError: ``comir_sift`` requested without OpenCV.
    """
    from comir_tf.data import ensure_data, read_pairs
    from comir_tf.generate import generate
    from comir_tf.register import corner_error, register_rigid, register_sift
    from labelreg.methods.runs import load_trained_run

    ev, train_cfg = cfg["Evaluate"], cfg["Train"]
    methods = tuple(ev["methods"])
    if not methods:
        raise DataError(f"{cfg.path}: [Evaluate] methods is empty; nothing to evaluate.")
    if "comir_sift" in methods:
        try:
            import cv2  # noqa: F401
        except ImportError as err:
            raise ImportError(
                f"{cfg.path}: [Evaluate] methods includes comir_sift, which needs OpenCV; "
                "install it with `pip install 'labelreg[opencv]'` or remove comir_sift."
            ) from err
    ensure_data(cfg)
    pairs = read_pairs(cfg, "test_dir")
    models = None
    if any(m.startswith("comir") for m in methods):
        run = load_trained_run(train_cfg["dir_run"])
        models = (run.models["model_a"], run.models["model_b"])
        log(f"CoMIR networks from {run.prefix}")
    out_dir = Path(ev["output_dir"] or Path(train_cfg["dir_run"]) / "evaluation")
    out_dir.mkdir(parents=True, exist_ok=True)
    count = len(pairs) if not ev["max_pairs"] else min(len(pairs), ev["max_pairs"])
    rng = np.random.default_rng(ev["seed"])
    levels = ev["levels"] or None
    rows: list[dict[str, Any]] = []
    for i in range(count):
        image_a, image_b = pairs.images_a[i], pairs.images_b[i]
        size = int(ev["patch_fraction"] * min(image_a.shape[:2]))
        if size < 16:
            raise DataError(
                f"test pair {pairs.names[i]!r}: a {ev['patch_fraction']} patch of "
                f"{image_a.shape[:2]} is under 16 pixels; raise [Evaluate] patch_fraction."
            )
        angle = float(rng.uniform(-ev["max_rotation"], ev["max_rotation"]))
        shift = tuple(float(v) for v in rng.uniform(-1, 1, 2) * ev["max_translation"] * size)
        moved, truth, (top, left) = known_transform(image_b, size, angle, shift)
        reference = image_a[top:top + size, left:left + size]
        identity = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
        row: dict[str, Any] = {
            "pair": pairs.names[i], "side": size, "angle": angle, "tx": shift[0], "ty": shift[1],
            "initial_error": corner_error(identity, truth, (size, size)),
        }
        comirs = None
        if models is not None:
            comirs = (generate(models[0], reference).numpy(), generate(models[1], moved).numpy())
        for method in methods:
            if method == "comir":
                result = register_rigid(*comirs, cost="mse", angle_step=ev["angle_step"],
                                        levels=levels)
            elif method == "raw_mse":
                result = register_rigid(_zscore(_gray(reference)), _zscore(_gray(moved)),
                                        cost="mse", angle_step=ev["angle_step"], levels=levels)
            elif method == "raw_mi":
                result = register_rigid(_minmax(_gray(reference)), _minmax(_gray(moved)),
                                        cost="mi", angle_step=ev["angle_step"], levels=levels)
            else:
                try:
                    result = register_sift(*comirs)
                except DataError:
                    result = None
            error = (corner_error(result.matrix, truth, (size, size)) if result is not None
                     else math.inf)
            row[f"{method}_error"] = error
            row[f"{method}_success"] = bool(error < ev["success_fraction"] * size)
        rows.append(row)
        log(f"pair {i + 1}/{count} {row['pair']}: rotation {angle:+.1f} deg, translation "
            f"({shift[0]:+.1f}, {shift[1]:+.1f}) px of {size}; initial error "
            f"{row['initial_error']:.1f} px; "
            + ", ".join(f"{m} {row[f'{m}_error']:.2f} px" for m in methods))

    summary: dict[str, Any] = {
        "pairs": count,
        "success_criterion": f"mean corner error < {ev['success_fraction']} x side",
        "initial_error_mean": float(np.mean([r["initial_error"] for r in rows])),
        "methods": {},
    }
    for method in methods:
        errors = np.array([r[f"{method}_error"] for r in rows])
        fractions = errors / np.array([r["side"] for r in rows])
        summary["methods"][method] = {
            "success_rate": float(np.mean([r[f"{method}_success"] for r in rows])),
            "mean_error_px": float(np.mean(errors)),
            "median_error_px": float(np.median(errors)),
            "median_error_fraction": float(np.median(fractions)),
        }
    with open(out_dir / "evaluation.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    (out_dir / "evaluation.json").write_text(json.dumps(summary, indent=2) + "\n",
                                             encoding="utf-8")
    log(format_summary(summary))
    log(f"wrote {out_dir / 'evaluation.csv'} and {out_dir / 'evaluation.json'}")
    return summary


def format_summary(summary: dict[str, Any]) -> str:
    """The summary as a small text table."""
    lines = [f"{summary['pairs']} pairs, success = {summary['success_criterion']}; initial "
             f"mean error {summary['initial_error_mean']:.1f} px",
             f"{'method':<12}{'success':>10}{'mean px':>12}{'median px':>12}"]
    for method, values in summary["methods"].items():
        lines.append(f"{method:<12}{values['success_rate']:>10.1%}"
                     f"{values['mean_error_px']:>12.2f}{values['median_error_px']:>12.2f}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m comir_tf.evaluate config.ini [--set Section.key=value ...]``."""
    from labelreg.cli import command_parser, run_command
    from labelreg.errors import LabelregError
    from labelreg.logs import get_logger, log_line

    parser = command_parser(
        "python -m comir_tf.evaluate",
        "Register known random rigid transforms of the test pairs with CoMIRs and with the raw "
        "images; report errors and success rates.",
        config_help="a CoMIR INI file (with a [CoMIR] section)",
        set_help="override one setting (repeatable)")

    def body(args) -> int:
        from comir_tf.config import load

        summary = evaluate(load(args.config, args.overrides), log=log_line)
        # evaluate() logs its summary table with the progress lines; --quiet hides those but
        # not the result.
        if not get_logger().isEnabledFor(logging.INFO):
            print(format_summary(summary))
        return 0

    return run_command(parser, argv, body, errors=(LabelregError, ImportError))


if __name__ == "__main__":
    sys.exit(main())
