"""Throughput of kercr's synthetic DECam-like frame generator (one core, numpy only).

Usage::

    python benchmarks/bench_data_synthetic.py [--frames 5] [--shape 4096 2048] [--seed 0]

Prints seconds per frame and frames per second for full frames, plus a
patch-cutting rate (128 patches of 256 x 256 per frame).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from kercr.data.patches import make_patches  # noqa: E402
from kercr.data.synthetic import make_frame  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=5, help="frames to time (after one warm-up frame)")
    parser.add_argument("--shape", type=int, nargs=2, default=(4096, 2048), metavar=("NY", "NX"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    shape = tuple(args.shape)
    make_frame(seed=args.seed, shape=shape)  # warm-up: imports, caches
    times, patch_times, crs = [], [], []
    for i in range(args.frames):
        t0 = time.perf_counter()
        frame = make_frame(seed=args.seed + 1 + i, shape=shape)
        t1 = time.perf_counter()
        make_patches(frame.image_adu, frame.cr_mask, frame.ignore_mask, patch_size=256, seed=i)
        t2 = time.perf_counter()
        times.append(t1 - t0)
        patch_times.append(t2 - t1)
        crs.append(frame.meta["n_cosmic_rays"])
    t = np.array(times)
    print(f"shape {shape}, {args.frames} frames, seed {args.seed}")
    print(f"make_frame: {t.mean():.3f} s/frame (min {t.min():.3f}, max {t.max():.3f}) -> {1 / t.mean():.2f} frames/s")
    print(f"make_patches (128 x 256^2, 3 arrays): {np.mean(patch_times) * 1e3:.1f} ms/frame")
    print(f"mean CR events per frame: {np.mean(crs):.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
