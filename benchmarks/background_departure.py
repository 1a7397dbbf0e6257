"""How far the block background map departs from the frame's one sky, in noise units, per frame.

Usage::

    python benchmarks/background_departure.py [--block-size 32] [--per-class 4]

For each real frame of ``benchmarks/real_frames.py`` (as they are, and its ``galaxy`` variant)
and the first ``--per-class`` synthetic frames of each class of ``benchmarks/frame_classes.py``:
the frame's sky and noise (``robust_sky_noise``, the shipped ``diff2`` estimator) and the block
background map ``B`` of ``local_background_noise`` (``local_axis="smaller"``,
``local_edges="nearest"``, as the relative input uses it), both on the unignored pixels. Prints
the departure ``d = |B - sky| / noise``: its median over source pixels
(:func:`kercr.data.sources.source_map`), and the share of all unignored pixels with ``d`` above 1, 2, 3, 5
and 10. A background map used only where ``d`` is large (``NormalizationConfig.local_gate``)
leaves the cutouts with the one sky per frame and moves the large galaxies; this is the figure
that picks the gate. No model is run; about 10 s on one core.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

LEVELS = (1, 2, 3, 5, 10)


def departure(image, ignore, block_size):
    """``(d, sky, noise)``: ``|B - sky| / noise`` per pixel (float32) and the frame's sky and noise."""
    from kercr.data.normalization import NormalizationConfig, local_background_noise, robust_sky_noise

    config = NormalizationConfig(noise_estimator="diff2", noise_model="relative", block_size=block_size,
                                 local_axis="smaller", local_edges="nearest")
    sky, noise, _ = robust_sky_noise(image, mask=ignore, config=config)
    background, _, _, _ = local_background_noise(image, mask=ignore, config=config)
    return np.abs(background - np.float32(sky)) / np.float32(noise), sky, noise


def row(name, image, ignore, block_size):
    from kercr.data.sources import source_map

    d, _, _ = departure(image, ignore, block_size)
    good = ~ignore & np.isfinite(image)
    on = source_map(image, mask=ignore) & good
    median = np.median(d[on]) if on.any() else float("nan")
    cells = [name if len(name) <= 48 else name[:8] + "..." + name[-37:], f"{median:.2f}", f"{on[good].mean():.3f}"]
    cells += [f"{(d[good] > k).mean():.3f}" for k in LEVELS]
    return "| " + " | ".join(cells) + " |"


def main(argv=None) -> int:
    import real_frames as rf
    import frame_classes as fc

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--block-size", type=int, default=32)
    parser.add_argument("--per-class", type=int, default=4)
    args = parser.parse_args(argv)
    print("| frame | median d on sources | source share | " + " | ".join(f"d > {k}" for k in LEVELS) + " |")
    print("|---" * (3 + len(LEVELS)) + "|")
    frames = rf.real_frames()
    for frame in frames:
        print(row(frame.name, frame.image, frame.ignore, args.block_size), flush=True)
    for frame in rf.vary(frames, None, "galaxy")[0]:
        print(row("galaxy:" + frame.name, frame.image, frame.ignore, args.block_size), flush=True)
    footprints = None
    if fc.FOOTPRINTS.is_file():
        from kercr.data.frames import load_footprints

        footprints = load_footprints(fc.FOOTPRINTS)
    for kind, chosen in fc.class_frames(fc.frame_source(footprints=footprints), args.per_class).items():
        for i, image, _, ignore in chosen:
            print(row(f"synthetic {kind} {i}", image, ignore, args.block_size), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
