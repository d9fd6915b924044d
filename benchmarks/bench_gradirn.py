"""GraDIRN against the same number of plain gradient-descent steps and against LocalNet, on
generated 2-D frame pairs (``configs/gradirn.ini``).

Each network is trained for the same number of steps on SSD + 0.01 * diffusion; "plain
gradient descent" is GraDIRN with its CNN corrections switched off and its step sizes at their
initial value (the 9 unrolled SSD descent steps alone). Printed per model: mean SSD and Dice
(classes including background, and foreground only) over the consecutive test pairs, training
steps per second and registrations per second.

    python benchmarks/bench_gradirn.py [--steps 300] [--out runs/bench_gradirn]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from benchmarks._timing import cpu_line  # noqa: E402
from labelreg import metrics  # noqa: E402
from labelreg._tf import tf  # noqa: E402
from labelreg.data.stacks import make_stack_eval_pairs, open_stacks  # noqa: E402
from labelreg.engine import train  # noqa: E402
from labelreg.methods.registry import load_config  # noqa: E402
from labelreg.methods.runs import load_trained_run  # noqa: E402
from labelreg.networks.apply import network_ddf, register_pair  # noqa: E402


def evaluate(model, pairs) -> dict[str, float]:
    """Mean SSD and Dice after registration, and registrations per second."""
    ssd, dice, fore = [], [], []
    ddf_fn = tf.function(network_ddf(model), reduce_retracing=True)
    register_pair(ddf_fn, pairs[0]["moving_image"], pairs[0]["fixed_image"])  # trace
    start = time.perf_counter()
    for pair in pairs:
        out = register_pair(ddf_fn, pair["moving_image"], pair["fixed_image"],
                            pair["moving_label"], label_interpolation="nearest")
        ssd.append(float(tf.reduce_mean(tf.square(out["warped_moving_image"]
                                                  - pair["fixed_image"]))))
        per_class = metrics.dice_per_class(pair["fixed_label"], out["warped_label"]).numpy()
        dice.append(per_class.mean())
        fore.append(per_class[:, 1:].mean())
    rate = len(pairs) / (time.perf_counter() - start)
    return {"ssd": float(np.mean(ssd)), "dice": float(np.mean(dice)),
            "fore": float(np.mean(fore)), "pairs_per_s": rate}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--out", default=str(ROOT / "runs" / "bench_gradirn"))
    args = parser.parse_args(argv)
    print(cpu_line())
    out = Path(args.out)
    config = ROOT / "configs" / "gradirn.ini"
    common = [f"Train.total_iterations={args.steps}", f"Train.freq_model_save={args.steps}",
              f"Data.dir_stacks={out / 'stacks'}", "Train.freq_info_print=1000000"]
    _, cfg = load_config(config, common)
    pairs = list(make_stack_eval_pairs(open_stacks(cfg["Data"], "valid_sequences")))
    identity = {"ssd": float(np.mean([np.mean((p["moving_image"] - p["fixed_image"]) ** 2)
                                      for p in pairs]))}
    rows = {}
    for name, network in (("GraDIRN", ["Network.network_type=gradirn"]),
                          ("LocalNet", ["Network.network_type=local",
                                        "Network.num_channel_initial=16",
                                        # the file's GraDIRN options leave with GraDIRN
                                        "Network.num_levels=", "Network.num_repeat=",
                                        "Network.inner_similarity="])):
        _, cfg = load_config(config, [*common, *network, f"Train.dir_run={out / name}"])
        result = train(cfg, log=lambda line: None)
        model = load_trained_run(out / name).models["model"]
        rows[name] = {**evaluate(model, pairs), "steps_per_s": 1.0 / result.seconds_per_step,
                      "parameters": model.count_params()}
        if name == "GraDIRN":
            plain = load_trained_run(out / name).models["model"]
            _plain_descent(plain)
            rows["plain GD (9 steps)"] = {**evaluate(plain, pairs), "steps_per_s": float("nan"),
                                          "parameters": 0}
    before = np.mean([metrics.dice_per_class(p["fixed_label"], p["moving_label"]).numpy().mean()
                      for p in pairs])
    print(f"{args.steps} training steps, 128 x 128 frame pairs, batch 4, 2 CPU cores; "
          f"identity: SSD {identity['ssd']:.5f}, Dice {before:.4f}")
    print(f"{'model':<20}{'params':>9}{'SSD after':>11}{'Dice':>8}{'fg Dice':>9}"
          f"{'train steps/s':>15}{'pairs/s':>9}")
    for name, row in rows.items():
        print(f"{name:<20}{row['parameters']:>9,}{row['ssd']:>11.5f}{row['dice']:>8.4f}"
              f"{row['fore']:>9.4f}{row['steps_per_s']:>15.2f}{row['pairs_per_s']:>9.1f}")
    return 0


def _plain_descent(model) -> None:
    """Switch GraDIRN's CNN corrections off and reset its step sizes to their initial value."""
    for layer in model._flatten_layers(include_self=False):
        if type(layer).__name__ == "GradientStep":
            layer.tau.assign(tf.ones_like(layer.tau) * layer.tau_init)
            for variable in layer.convs[-1].weights:
                variable.assign(tf.zeros_like(variable))


if __name__ == "__main__":
    sys.exit(main())
