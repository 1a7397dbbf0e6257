"""Cleaning CR pixels on bright smooth light: the inpainting network against the masked median.

Five 384 x 384 frames of a 1000 ADU sky with 10 ADU Gaussian noise, each with one kind of smooth
light added: none, +300 ADU everywhere, +2000 ADU everywhere, a Gaussian galaxy (peak +2000 ADU,
sd 90 px) and a step (+2000 ADU over the lower half). 60 CR hits of 3 pixels (+5000 ADU) at seeded
positions are cleaned with the true mask by ``kercr.detection.inpainting.inpaint`` (the shipped
network) and by ``kercr.data.clean_image`` (median); printed: the mean and the median error at
the CR pixels against the frame without CRs, and the median |error|, in ADU (the noise is 10).

Usage::

    python benchmarks/clean_levels.py [--level-block N]   (N: the network's level blocks; 0: none)
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

N = 384


def frames():
    """``(label, smooth light)`` of the five frames, in ADU."""
    import numpy as np

    yy, xx = np.mgrid[:N, :N]
    return [("sky only", np.zeros((N, N))),
            ("flat +300 everywhere", np.full((N, N), 300.0)),
            ("flat +2000 everywhere", np.full((N, N), 2000.0)),
            ("galaxy, peak +2000, sd 90 px", 2000 * np.exp(-((yy - 192) ** 2 + (xx - 192) ** 2) / (2 * 90.0 ** 2))),
            ("step, +2000 over the lower half", np.where(yy >= 192, 2000.0, 0.0))]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--level-block", type=int, default=None,
                        help="block side of the smooth level the network's input loses (default: the shipped "
                             "LEVEL_BLOCK; 0: none, as before session 29)")
    args = parser.parse_args(argv)
    import numpy as np

    import kercr.detection.inpainting as inpainting
    from kercr.data import clean_image

    if args.level_block == 0:
        inpainting._smooth_level = lambda img, hidden: np.zeros(img.shape, np.float32)
    elif args.level_block is not None:
        inpainting.LEVEL_BLOCK = args.level_block
    print(f"level blocks: {'none' if args.level_block == 0 else f'{inpainting.LEVEL_BLOCK} px'}")
    print("| frame | network: mean / median error, median abs | median cleaning: mean / median error, median abs |")
    print("|---|---|---|")
    for seed, (label, level) in enumerate(frames(), 1):
        rng = np.random.default_rng(seed)
        truth = (1000 + level + rng.normal(0, 10, (N, N))).astype(np.float32)
        mask = np.zeros((N, N), bool)
        for _ in range(60):
            y, x = rng.integers(10, N - 10), rng.integers(10, N - 10)
            mask[y, x:x + 3] = True
        image = np.where(mask, truth + 5000, truth).astype(np.float32)
        rows = []
        for cleaned in (inpainting.inpaint(image, mask), clean_image(image, mask)):
            err = (cleaned - truth)[mask]
            rows.append(f"{err.mean():+.1f} / {np.median(err):+.1f}, {np.median(np.abs(err)):.1f}")
        print(f"| {label} | {rows[0]} | {rows[1]} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
