"""Issue 22.3 ("fat masks"): how bright are the false positives next to CRs, and can the pixel's own
significance remove them?

Usage::

    python benchmarks/rim_significance.py [--model default] [--repeats 10] [--runtime tflite-int8]

The frames, injections and pooling of ``benchmarks/real_frames.py`` (as-is variant; ignored pixels
removed; the model card's flips). For every pixel it also takes its significance ``z``: the image
minus the model's background over its noise, in noise units, before the asinh stretch (what the
network sees, un-stretched: :func:`kercr.data.normalization.normalize` with the model's
normalization and the frame's ignore mask). It prints, at the pooled 0.01 % FPR threshold:

1. the pooled TPR at 0.01 % FPR and precision at 95 % recall, the false positives there and the share
   on the rim (non-CR pixels within 1 px of a CR, 8-connected: ``real_frames.near_crs``);
2. percentiles of ``z`` for the rim false positives, the other false positives, the CR pixels found
   and those missed;
3. per ``z`` bin, the share of rim pixels and of the other non-CR pixels flagged;
4. the pooled metrics when each score is multiplied by a gate on ``z``
   (``clip(0.5 + (z - a) / 2, 0.5, 1)``: halved at ``z <= a``, kept at ``z >= a + 1``), a post-hoc
   rule that would cut flags on pixels no brighter than their background.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import real_frames as rf  # noqa: E402

Z_BINS = (-np.inf, 1, 2, 3, 4, 6, 10, np.inf)
GATES = (0.0, 1.0, 2.0, 3.0)


def pooled(model, repeats: int, runtime: str):
    """Pooled (truth, score, z, rim) over the real frames' injections."""
    from kercr.data.frames import load_footprints
    from kercr.data.normalization import normalize
    from kercr.detection import detect, load_model

    loaded = load_model(model)
    stamps = load_footprints(rf.SHARED / "cr_footprints" / "cosmic_rays_itl_2017_even.fits")
    frames, stamps = rf.vary(rf.real_frames(), stamps, "as-is")
    parts = {"truth": [], "score": [], "z": [], "rim": []}
    soft = loaded.normalization.asinh_softening
    for _, _, img, truth, _, ignore, _, _, _ in rf.injected(frames, stamps, repeats, 0):
        res = detect(img, model=loaded, runtime=runtime, mask=ignore)
        keep = ~(ignore | res.ignored)
        x, _ = normalize(img, mask=ignore, config=loaded.normalization)
        z = np.sinh(x / soft) * soft if soft else x
        for key, value in (("truth", truth), ("score", res.probability), ("z", z), ("rim", rf.near_crs(truth))):
            parts[key].append(value[keep])
    return {k: np.concatenate(v) for k, v in parts.items()}, loaded


def main(argv=None) -> int:
    from kercr.evaluation import pooled_metrics

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--runtime", default="tflite-int8")
    args = parser.parse_args(argv)
    if not (rf.SHARED / "cr_footprints").is_dir():
        print(f"[rim_significance] {rf.SHARED} not found: no real frames to score")
        return 0
    data, loaded = pooled(args.model, args.repeats, args.runtime)
    truth, score, z, rim = data["truth"], data["score"].astype(np.float64), data["z"], data["rim"]

    def metrics(s):
        k = pooled_metrics(truth, s, None, threshold=loaded.threshold, logits=False)
        return k["tpr_at_fpr_1e-4"], k["precision_at_recall_0.95"], k["threshold_at_fpr_1e-4"]

    tpr, precision, cut = metrics(score)
    fp = ~truth & (score >= cut)
    print(f"{args.model} ({args.runtime}), {args.repeats} repeats: {truth.size:,} pixels, {truth.sum():,} CR; "
          f"TPR at 0.01 % FPR {tpr:.4f}, precision at 95 % recall {precision:.4f}; at that cut (p >= {cut:.4f}) "
          f"{fp.sum()} false positives, {(fp & rim).sum() / max(fp.sum(), 1):.0%} on the rim\n")
    print("| pixels | n | z: 5th | 25th | median | 75th | 95th percentile |\n|---|---:|---:|---:|---:|---:|---:|")
    for name, sel in (("rim false positives", fp & rim), ("other false positives", fp & ~rim),
                      ("CR pixels found", truth & (score >= cut)), ("CR pixels missed", truth & (score < cut))):
        q = np.percentile(z[sel], [5, 25, 50, 75, 95]) if sel.any() else [np.nan] * 5
        print(f"| {name} | {sel.sum():,} | " + " | ".join(f"{v:.2f}" for v in q) + " |")
    print("\n| z | rim pixels | flagged | other non-CR pixels | flagged |\n|---|---:|---:|---:|---:|")
    for lo, hi in zip(Z_BINS[:-1], Z_BINS[1:]):
        a, b = rim & ~truth & (z >= lo) & (z < hi), ~rim & ~truth & (z >= lo) & (z < hi)
        print(f"| {lo:g} to {hi:g} | {a.sum():,} | {np.mean(score[a] >= cut) if a.any() else 0:.4f} | {b.sum():,} | "
              f"{np.mean(score[b] >= cut) if b.any() else 0:.6f} |")
    print("\n| score x gate on z | TPR at 0.01 % FPR | precision at 95 % recall |\n|---|---:|---:|")
    print(f"| none | {tpr:.4f} | {precision:.4f} |")
    for a in GATES:
        gated = metrics(score * np.clip(0.5 + (z - a) / 2, 0.5, 1.0))
        print(f"| halved at z <= {a:g}, kept at z >= {a + 1:g} | {gated[0]:.4f} | {gated[1]:.4f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
