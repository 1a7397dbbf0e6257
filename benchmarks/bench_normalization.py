"""Time of the one normalization on a full 2048 x 4096 frame: one noise per frame against the
per-pixel maps (``noise_model="local"`` and ``"relative"``).

Usage::

    python benchmarks/bench_normalization.py [--repeats 5] [--shape 4096 2048]

Prints the median wall time of ``kercr.data.normalize`` for each configuration (one thread: numpy
is not threaded here) on a synthetic DECam-like frame, and what that costs against the shipped
model's detection time at its measured speed (BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv=None) -> int:
    from kercr.data.normalization import NormalizationConfig, normalize
    from kercr.data.synthetic import make_frame

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--shape", type=int, nargs=2, default=(4096, 2048))
    args = parser.parse_args(argv)
    frame = make_frame(seed=0, shape=tuple(args.shape))
    image, ignore = frame.image_adu, frame.ignore_mask
    configs = {
        "global, diff2 (the shipped model)": NormalizationConfig(noise_estimator="diff2", asinh_softening=10.0),
        "local maps, 32-px blocks": NormalizationConfig(noise_estimator="diff2", asinh_softening=10.0,
                                                        noise_model="local"),
        "relative maps, 32-px blocks (smaller axis, nearest edges)": NormalizationConfig(
            noise_estimator="diff2", asinh_softening=10.0, noise_model="relative", local_axis="smaller",
            local_edges="nearest"),
        "relative maps, gated at 5 noise units": NormalizationConfig(
            noise_estimator="diff2", asinh_softening=10.0, noise_model="relative", local_axis="smaller",
            local_edges="nearest", local_gate=5.0),
    }
    mpix = image.size / 1e6
    print(f"| normalization of a {args.shape[0]} x {args.shape[1]} frame | median s | Mpix/s |")
    print("|---|---:|---:|")
    for name, config in configs.items():
        times = []
        for _ in range(args.repeats + 1):
            t0 = time.perf_counter()
            normalize(image, mask=ignore, config=config)
            times.append(time.perf_counter() - t0)
        median = float(np.median(times[1:]))
        print(f"| {name} | {median:.3f} | {mpix / median:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
