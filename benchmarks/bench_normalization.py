"""Time and memory of the one normalization on a full 2048 x 4096 frame: one noise per frame against
the per-pixel maps (``noise_model="local"`` and ``"relative"``).

Usage::

    python benchmarks/bench_normalization.py [--repeats 5] [--shape 4096 2048]

Prints, for each configuration, the median wall time of ``kercr.data.normalize`` (one thread: numpy
is not threaded here) and the peak of the memory it allocates beyond its input (``tracemalloc``,
which numpy reports to; the float32 output included), on two synthetic DECam-like frames (seed 0):
as made (``plain``), and with one galaxy or nebula over about half the field added
(``dominant``: :func:`kercr.data.sources.dominant_source`, cover 0.5, seed 1), where the gate of
``local_gate`` opens.
"""

from __future__ import annotations

import argparse
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv=None) -> int:
    from kercr.data.normalization import NormalizationConfig, normalize
    from kercr.data.sources import dominant_source
    from kercr.data.synthetic import make_frame

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--shape", type=int, nargs=2, default=(4096, 2048))
    args = parser.parse_args(argv)
    frame = make_frame(seed=0, shape=tuple(args.shape))
    meta = frame.meta
    source_e = dominant_source(frame.image_adu.shape, np.random.default_rng(1), cover=0.5,
                               sky_var_e=meta["sky_adu"] * meta["gain"] + meta["readnoise_e"] ** 2)
    frames = {"plain": frame.image_adu, "dominant": frame.image_adu + (source_e / meta["gain"]).astype(np.float32)}
    ignore = frame.ignore_mask
    configs = {
        "global, diff2 (the previous default, `global`)": NormalizationConfig(noise_estimator="diff2",
                                                                              asinh_softening=10.0),
        "local maps, 32-px blocks": NormalizationConfig(noise_estimator="diff2", asinh_softening=10.0,
                                                        noise_model="local"),
        "relative maps, 32-px blocks (smaller axis, nearest edges)": NormalizationConfig(
            noise_estimator="diff2", asinh_softening=10.0, noise_model="relative", local_axis="smaller",
            local_edges="nearest"),
        "relative maps, gated at 5 noise units (the shipped default)": NormalizationConfig(
            noise_estimator="diff2", asinh_softening=10.0, noise_model="relative", local_axis="smaller",
            local_edges="nearest", local_gate=5.0, local_min_blocks=3),
    }
    mpix = frame.image_adu.size / 1e6
    print(f"| normalization of a {args.shape[0]} x {args.shape[1]} frame | frame | median s | Mpix/s | peak MB |")
    print("|---|---|---:|---:|---:|")
    for name, config in configs.items():
        for label, image in frames.items():
            times = []
            for _ in range(args.repeats + 1):
                t0 = time.perf_counter()
                normalize(image, mask=ignore, config=config)
                times.append(time.perf_counter() - t0)
            tracemalloc.start()
            normalize(image, mask=ignore, config=config)
            peak = tracemalloc.get_traced_memory()[1] / 1e6
            tracemalloc.stop()
            median = float(np.median(times[1:]))
            print(f"| {name} | {label} | {median:.3f} | {mpix / median:.1f} | {peak:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
