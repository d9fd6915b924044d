"""MONAI's ``Warp`` (PyTorch ``grid_sample``), timed the way ``bench_warp.py`` times labelreg.

Run by ``bench_warp.py --peer-python PYTHON`` in an environment that has ``torch`` and ``monai``
(neither is a dependency of this project). Prints one JSON line: milliseconds per call (median,
p99) for the forward pass, forward + backward to the DDF only, and forward + backward to both the
image and the DDF, on the same random ``[B, S, S, S, 1]`` volume and ``+-5`` voxel DDF.

    python benchmarks/peer_monai_warp.py --size 128 --batch 2 --repeats 10
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402
from _timing import time_call  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()

    import monai
    import torch
    from monai.networks.blocks import Warp

    torch.set_num_threads(os.cpu_count() or 1)
    rng = np.random.default_rng(0)
    shape = (args.batch, args.size, args.size, args.size, 1)
    # The same arrays as bench_warp.py, moved to PyTorch's channels-first layout.
    image = rng.normal(size=shape).astype(np.float32)
    ddf = rng.uniform(-5, 5, size=shape[:-1] + (3,)).astype(np.float32)
    image_t = torch.from_numpy(np.moveaxis(image, -1, 1).copy())
    ddf_t = torch.from_numpy(np.moveaxis(ddf, -1, 1).copy())
    warp = Warp(mode="bilinear", padding_mode="zeros")

    def forward() -> None:
        with torch.no_grad():
            warp(image_t, ddf_t)

    def backward(image_grad: bool) -> None:
        img = image_t.clone().requires_grad_(image_grad)
        d = ddf_t.clone().requires_grad_(True)
        torch.sum(torch.square(warp(img, d))).backward()

    times = {
        "forward": time_call(forward, repeats=args.repeats),
        "forward_backward_ddf": time_call(lambda: backward(False), repeats=args.repeats),
        "forward_backward_both": time_call(lambda: backward(True), repeats=args.repeats),
    }
    print(json.dumps({"monai": monai.__version__, "torch": torch.__version__,
                      "threads": torch.get_num_threads(), **times}))


if __name__ == "__main__":
    main()
