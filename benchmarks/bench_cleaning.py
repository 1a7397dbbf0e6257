"""Speed of :func:`kercr.data.clean_image` on a full DECam-sized CCD (one core, numpy/scipy only).

Usage::

    python benchmarks/bench_cleaning.py [--shape 4096 2048] [--cr-fraction 0.01] [--repeats 3] [--seed 0]
                                        [--network RUNTIME [RUNTIME ...]] [--threads N]

A synthetic 4096 x 2048 frame (``kercr.data.make_frame``) gets a CR mask of short random tracks
(1-2 pixels wide, 1-25 long) covering ``--cr-fraction`` of its pixels; the tracks' pixels are
replaced in the image by the truth plus a bright deposit. Prints, for every method and for
``dilate`` 0 and 1, the best of ``--repeats`` wall times, the pixels replaced per second, and the
median absolute error of the replaced pixels against the frame without CRs, in units of the
frame's noise (a sanity number: the photometric benchmark of issue 24 is a separate script).
``--network tflite-float16 keras`` adds the shipped inpainting network
(:func:`kercr.detection.inpainting.inpaint`, ``clean="network"``) in those runtimes, with
``--threads`` LiteRT threads (default 2; Keras takes TensorFlow's own), loading and the first call
untimed.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from kercr.data.cleaning import CLEAN_METHODS, clean_image, cleaning_mask  # noqa: E402
from kercr.data.normalization import robust_sky_noise  # noqa: E402
from kercr.data.synthetic import make_frame  # noqa: E402


def track_mask(shape, fraction: float, rng) -> np.ndarray:
    """Random straight tracks (1-25 px long, 1-2 px wide) until ``fraction`` of the pixels are covered."""
    mask = np.zeros(shape, bool)
    ny, nx = shape
    while mask.mean() < fraction:
        n = 200
        y0, x0 = rng.uniform(0, ny, n), rng.uniform(0, nx, n)
        length = rng.integers(1, 26, n)
        angle = rng.uniform(0, np.pi, n)
        width = rng.integers(1, 3, n)
        t = np.arange(25)[None, :]
        keep = t < length[:, None]
        for w in (0, 1):
            ys = np.rint(y0[:, None] + t * np.sin(angle)[:, None] + w * np.cos(angle)[:, None]).astype(int)
            xs = np.rint(x0[:, None] + t * np.cos(angle)[:, None] - w * np.sin(angle)[:, None]).astype(int)
            ok = keep & (w < width[:, None]) & (ys >= 0) & (ys < ny) & (xs >= 0) & (xs < nx)
            mask[ys[ok], xs[ok]] = True
    return mask


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", type=int, nargs=2, default=(4096, 2048), metavar=("NY", "NX"))
    parser.add_argument("--cr-fraction", type=float, default=0.01, help="fraction of CR pixels (default 0.01)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per setting; the best is printed")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--network", nargs="+", default=(), metavar="RUNTIME",
                        help="also time the inpainting network in these runtimes (tflite-float16, keras)")
    parser.add_argument("--threads", type=int, default=2, help="LiteRT threads for --network (default 2)")
    args = parser.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    frame = make_frame(seed=args.seed, shape=tuple(args.shape))
    truth = frame.clean_adu
    cr = track_mask(truth.shape, args.cr_fraction, rng) & ~frame.ignore_mask
    image = truth.copy()
    _, noise, _ = robust_sky_noise(truth, mask=frame.ignore_mask)
    image[cr] += rng.uniform(5, 500, int(cr.sum())).astype(np.float32) * np.float32(noise)
    print(f"frame {truth.shape[0]} x {truth.shape[1]}, {cr.mean() * 100:.2f} % CR pixels ({int(cr.sum())}), "
          f"noise {noise:.2f} ADU")
    clean_image(image[:256, :256], cr[:256, :256])  # warm-up: imports
    print(f"{'method':>8} {'dilate':>6} {'replaced':>9} {'seconds':>8} {'Mpix replaced/s':>16} {'med |err|/noise':>16}")
    for method in CLEAN_METHODS:
        for dilate in (0, 1):
            best = np.inf
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                out = clean_image(image, cr, ignore=frame.ignore_mask, method=method, dilate=dilate)
                best = min(best, time.perf_counter() - t0)
            replaced = cleaning_mask(cr, ignore=frame.ignore_mask, dilate=dilate, image=image)
            err = np.median(np.abs(out[replaced] - truth[replaced])) / noise
            print(f"{method:>8} {dilate:>6} {int(replaced.sum()):>9} {best:>8.3f} "
                  f"{replaced.sum() / best / 1e6:>16.2f} {err:>16.3f}")
    for runtime in args.network:
        from kercr.detection.inpainting import inpaint

        for dilate in (0, 1):
            replaced = cleaning_mask(cr, ignore=frame.ignore_mask, dilate=dilate, image=image)
            inpaint(image, replaced, ignore=frame.ignore_mask, runtime=runtime, num_threads=args.threads)  # warm-up
            best = np.inf
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                out = inpaint(image, replaced, ignore=frame.ignore_mask, runtime=runtime, num_threads=args.threads)
                best = min(best, time.perf_counter() - t0)
            err = np.median(np.abs(out[replaced] - truth[replaced])) / noise
            label = f"net:{runtime.removeprefix('tflite-')}"
            print(f"{label:>8} {dilate:>6} {int(replaced.sum()):>9} {best:>8.3f} "
                  f"{replaced.sum() / best / 1e6:>16.2f} {err:>16.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
