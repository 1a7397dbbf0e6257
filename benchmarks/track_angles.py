"""How much of a straight CR track is found, by its angle to the pixel grid and its brightness.

Long, narrow CR tracks (muons at grazing incidence) cross the CCD at any angle. This script lays
15-pixel tracks (Gaussian profile across, sigma 0.6 px; :func:`track`) at eight angles from 0 deg
(along a row) to 90 deg (along a column), three of each at random sub-pixel positions, on a flat
sky of 1000 ADU with Poisson noise (gain 4 e-/ADU) and 6 e- read noise, one 512 x 512 frame per
peak brightness, and prints for each the fraction of the track's core pixels (model value above
30 % of the peak) that the model flags at its default threshold, and that astroscrappy flags (its
defaults with the frame's gain, read noise and no saturation) when it is installed (``pip install
-e ".[test]"``). No saturation level is given, so nothing is excluded.

Usage::

    python benchmarks/track_angles.py [--model default] [--peaks 300 1000 3000 8000 20000] [--seed 0]
        [--runtime tflite-int8 --tta on]   (a run directory: the default's runtime and flips)
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ANGLES = (0, 3, 8, 20, 45, 70, 87, 90)
SHAPE = (512, 512)
LENGTH = 15.0
SKY_ADU, GAIN, READNOISE_E = 1000.0, 4.0, 6.0


def track(shape, y0, x0, angle_deg, length, peak, sigma=0.6):
    """A straight track from (y0, x0) at ``angle_deg`` to the rows, ``length`` px long, ``peak`` ADU on its axis."""
    import numpy as np

    yy, xx = np.mgrid[: shape[0], : shape[1]].astype(float)
    t = np.deg2rad(angle_deg)
    along = (xx - x0) * np.cos(t) + (yy - y0) * np.sin(t)
    across = -(xx - x0) * np.sin(t) + (yy - y0) * np.cos(t)
    return peak * np.exp(-across**2 / (2 * sigma**2)) * ((along >= 0) & (along <= length))


def frame(peak, seed):
    """(image in ADU, {angle: core mask}) of one frame: three tracks per angle on a 4 x 6 grid of cells."""
    import numpy as np

    rng = np.random.default_rng([seed, int(peak)])
    signal = np.zeros(SHAPE)
    cores = {a: np.zeros(SHAPE, bool) for a in ANGLES}
    cells = [(r, c) for r in range(6) for c in range(4)]
    for k, (r, c) in enumerate(cells):
        angle = ANGLES[k % len(ANGLES)]
        y0, x0 = 20 + 80 * r + rng.uniform(0, 20), 30 + 120 * c + rng.uniform(0, 20)
        t = track(SHAPE, y0, x0, angle, LENGTH, peak)
        signal += t
        cores[angle] |= t > 0.3 * peak
    electrons = rng.poisson((SKY_ADU + signal) * GAIN) + rng.normal(0, READNOISE_E, SHAPE)
    return (electrons / GAIN).astype(np.float32), cores


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="default", help="a shipped model's name, a .keras file or a run directory")
    parser.add_argument("--peaks", type=float, nargs="+", default=[300, 1000, 3000, 8000, 20000],
                        help="track peaks above the sky, ADU")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--runtime", default="auto",
                        help="kercr.detect's runtime (default auto: the card's; give tflite-int8 for a run directory)")
    parser.add_argument("--tta", choices=("card", "on", "off"), default="card",
                        help="the four flips: the card's choice (default), or on / off (a run directory has no card)")
    args = parser.parse_args(argv)

    import numpy as np

    import kercr

    try:
        import astroscrappy
    except ImportError:
        astroscrappy = None
    header = "| peak (ADU) | detector | " + " | ".join(f"{a} deg" for a in ANGLES) + " |"
    print(header + "\n|" + "---|" * (2 + len(ANGLES)))
    for peak in args.peaks:
        image, cores = frame(peak, args.seed)
        result = kercr.detect(image, model=args.model, gain=GAIN, readnoise=READNOISE_E, runtime=args.runtime,
                              tta=None if args.tta == "card" else args.tta == "on")
        rows = [(f"kercr {args.model}", result.mask)]
        if astroscrappy is not None:
            crmask, _ = astroscrappy.detect_cosmics(image, gain=GAIN, readnoise=READNOISE_E, satlevel=1e9)
            rows.append(("astroscrappy", crmask))
        for name, mask in rows:
            print(f"| {peak:g} | {name} | " + " | ".join(f"{mask[cores[a]].mean():.2f}" for a in ANGLES) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
