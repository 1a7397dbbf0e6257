"""Detection quality per frame class: plain, dominant-source and integer-valued synthetic frames (issue 22, point 2).

Usage::

    python benchmarks/frame_classes.py [--model default|PATH [PATH ...]] [--frames-per-class 6] [--seed 9001]
                                       [--runtime keras] [--tta|--no-tta] [--threshold P] [--tiny] [--out DIR]

Protocol
--------
Frames:
    ``SyntheticFrames(seed=9001, shape=(1024, 1024), variety="wide", cr_rate_scale=10,
    footprints=F, dominant_sources=1/3, integer_frames=1/3)``, the RAW frames of
    ``SyntheticFrames._make`` (ADU, bias and sky included, as a user passes them to
    ``kercr.detect``): a new random imager per frame, simulated CRs at 10 x DECam's dark rate and
    real dark-frame footprints (``F``: ``../shared/data/cr_footprints/cosmic_rays_itl_2017_even.fits``,
    half as many as the simulated CRs, as in training; without that file, simulated CRs only,
    and the output says so). Seed 9001: the training configs use seeds 0-5 and the reference
    table 20261124, so no model has seen these frames.
Classes (``SyntheticFrames.frame_class``, a random stream of its own):
    ``plain``: the imager's sky, stars, galaxies, defects and CRs (the same frame a set without
    the other classes makes); ``dominant``: plus one galaxy or nebula brighter than the sky's
    variance over 30-70 % of the field, with its photon noise
    (:func:`kercr.data.synthetic.dominant_source`), where one noise level per frame is wrong;
    ``integer``: a high-gain (10-30 e-/ADU), low-sky (at most 100 ADU) imager rounded to whole
    ADU, CRs included: a few ADU of quantized noise. Frames ``i = 0, 1, 2, ...`` are taken in
    order until ``--frames-per-class`` of each class are found.
Pixels:
    pooled per class over its frames (and over all classes, row ``all``); ignored pixels (the
    frame's ignore mask: hot pixels, bad columns, CR pixels fainter than their own noise, the
    training default ``faint_crs="ignore"``; and what ``detect`` ignores) are removed from
    positives and negatives alike.
Metrics:
    TPR at 0.01 % and 0.1 % FPR and precision at 95 % recall (:mod:`kercr.metrics`, exact, on the
    pooled pixels ranked by the logits of ``detect(keep_logits=True)``, else its probabilities);
    at the model's card threshold (``detect``'s mask): TPR, FPR, Dice, and where the false
    positives lie (issue 22's "fat masks": within 1 px of a CR, 8-connected, or elsewhere;
    ``real_frames.false_positive_split``), and how many of those elsewhere lie within 2 px of a
    saturated or bleed-trail pixel (``SyntheticFrames.saturated_pixels``: negatives that a model
    taught to flag bright straight tracks along the rows and columns may take for CRs; the real
    frames' data-quality masks exclude their trails, so only these frames show it).
Detection:
    ``kercr.detect(image, model=M, mask=ignore, runtime=R, keep_logits=True)``: the model card's
    threshold unless ``--threshold``, and four-flip averaging (``tta``) unless ``--tta/--no-tta``;
    ``--runtime`` default keras (whose scores rank every pixel).
Frame checks (in the output, per frame):
    gain, sky and noise (diff2) in ADU, whether every pixel is a whole number, and the spread of
    the local background (10th to 90th percentile of the 32-pixel block background map of
    :func:`kercr.data.normalization.local_background_noise`, in units of the frame's noise): a few
    tenths on plain frames, tens on dominant-source frames.
``--tiny``:
    256 x 256 frames, one per class unless ``--frames-per-class`` says otherwise (a smoke test).

Outputs ``DIR/frame_classes.json`` (``--out``, default ``runs/frame_classes``) and prints a markdown
table (rows: model x class). Seeded and deterministic.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from real_frames import false_positive_split, near_crs  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FOOTPRINTS = ROOT.parent / "shared" / "data" / "cr_footprints" / "cosmic_rays_itl_2017_even.fits"
CLASSES = ("plain", "dominant", "integer")
TEST_SEED = 9001  # training configs use seeds 0-5, the reference table 20261124
SHAPE, TINY_SHAPE = (1024, 1024), (256, 256)
CR_RATE_SCALE = 10.0
MAX_SCAN = 200  # frames looked at per wanted frame before giving up on a class
BLEED_MARGIN = 2  # px: false positives this close to a saturated or bleed-trail pixel count as on the trail


def frame_source(*, seed=TEST_SEED, shape=SHAPE, footprints=None):
    """The :class:`kercr.data.frames.SyntheticFrames` the classes are drawn from (a third of each)."""
    from kercr.data.frames import SyntheticFrames

    return SyntheticFrames(seed=seed, shape=shape, variety="wide", cr_rate_scale=CR_RATE_SCALE, footprints=footprints,
                           dominant_sources=1 / 3, integer_frames=1 / 3)


def class_frames(source, per_class):
    """``{class: [(i, image_adu, cr_mask, ignore)]}``: the first ``per_class`` frames of each class, in order.

    The raw frames of ``SyntheticFrames._make`` (float32 ADU, bool, bool); only the chosen
    frames are rendered (``frame_class`` is cheap).
    """
    chosen = {c: [] for c in CLASSES}
    for i in range(MAX_SCAN * per_class * len(CLASSES)):
        kind = source.frame_class(i)
        if len(chosen[kind]) < per_class:
            image, cr_mask, ignore, _ = source._make(i)
            chosen[kind].append((i, np.asarray(image, np.float32), np.asarray(cr_mask, bool), np.asarray(ignore, bool)))
        if all(len(v) == per_class for v in chosen.values()):
            return chosen
    raise RuntimeError(f"fewer than {per_class} frames of some class in the first {i + 1} frames: "
                       f"{ {k: len(v) for k, v in chosen.items()} }")


def bleed_pixels(source, i):
    """Pixels of frame ``i`` within :data:`BLEED_MARGIN` px of a saturated or bleed-trail pixel (bool)."""
    from kercr.data.masks import dilate_mask

    return dilate_mask(source.saturated_pixels(i), BLEED_MARGIN)


def frame_checks(source, i, image, ignore) -> dict:
    """What makes frame ``i`` its class: gain, sky, noise, whole ADU, spread of the local background."""
    from kercr.data.normalization import NormalizationConfig, local_background_noise, robust_sky_noise

    finite = np.isfinite(image)
    sky, noise, _ = robust_sky_noise(image, mask=ignore, config=NormalizationConfig(noise_estimator="diff2"))
    background, _, _, sigma = local_background_noise(image, mask=ignore, config=NormalizationConfig(block_size=32))
    p10, p90 = np.percentile(background[~ignore & finite], [10, 90])
    return {"index": int(i), "class": source.frame_class(i), "gain": float(source.frame_config(i).gain),
            "sky_adu": float(sky), "noise_adu": float(noise),
            "whole_adu": bool(np.all(image[finite] == np.round(image[finite]))),
            "background_spread": float((p90 - p10) / sigma)}


def class_metrics(truth, score, flagged, near, bleed) -> dict:
    """Pooled metrics of one class (1-D arrays, ignored pixels already removed).

    ``bleed``: pixels within :data:`BLEED_MARGIN` px of a saturated or bleed-trail pixel (the
    negatives a model trained on bright straight CR tracks may take for CRs); the false positives
    neither within 1 px of a CR nor on them are ``elsewhere_off_bleed``."""
    from kercr import metrics as M

    n_cr, n_neg = int(truth.sum()), int((~truth).sum())
    tp, fp = int((flagged & truth).sum()), int((flagged & ~truth).sum())
    row = {"cr_pixels": n_cr, "non_cr_pixels": n_neg, "tpr_at_fpr_1e-4": None, "tpr_at_fpr_1e-3": None,
           "precision_at_recall_0.95": None, "tpr_at_threshold": tp / n_cr if n_cr else None,
           "fpr_at_threshold": fp / max(n_neg, 1), "dice_at_threshold": 2 * tp / max(tp + fp + n_cr, 1),
           "false_positives_at_threshold": false_positive_split(truth, flagged, near)}
    off_rim = flagged & ~truth & ~near
    row["false_positives_at_threshold"].update(on_bleed=int((off_rim & bleed).sum()),
                                               elsewhere_off_bleed=int((off_rim & ~bleed).sum()))
    if n_cr and n_neg:
        row["tpr_at_fpr_1e-4"] = float(M.tpr_at_fpr(truth, score, 1e-4))
        row["tpr_at_fpr_1e-3"] = float(M.tpr_at_fpr(truth, score, 1e-3))
        row["precision_at_recall_0.95"] = float(M.precision_at_recall(truth, score, 0.95))
    return row


def score_model(model, frames, *, runtime="keras", tta=None, progress=None, detectors=None, bleed=None,
                threshold=None) -> dict:
    """Detect every frame with ``model`` and pool per class: ``{"threshold", "tta", "classes": {class: metrics}}``.

    ``detectors``: ``{i: (gain e-/ADU, read noise e-)}`` of the frames' imagers, what their headers
    would say (``detect(gain=, readnoise=)``; used by models with ``header_noise``). ``bleed``:
    ``{i: bool mask}``, :func:`bleed_pixels` of the frames (default: none). ``threshold``: the
    probability cut of the numbers "at threshold" (default: the model card's)."""
    from kercr.detection import detect, load_model

    loaded = load_model(model)
    pooled = {c: {"truth": [], "score": [], "flagged": [], "near": [], "bleed": []} for c in (*CLASSES, "all")}
    used_tta, ranked_by, t0 = None, "logits", time.perf_counter()
    for kind, items in frames.items():
        for i, image, truth, ignore in items:
            gain, readnoise = (detectors or {}).get(i, (None, None))
            res = detect(image, model=loaded, mask=ignore, runtime=runtime, tta=tta, keep_logits=True, gain=gain,
                         readnoise=readnoise, threshold=threshold)
            used_tta = res.tta
            score = res.logit if res.logit is not None else res.probability
            if res.logit is None:
                ranked_by = "probabilities"
            keep = ~(ignore | res.ignored)
            near = near_crs(truth)  # per frame, before pooling
            on_bleed = (bleed or {}).get(i, np.zeros_like(truth))
            for c in (kind, "all"):
                pooled[c]["truth"].append(truth[keep])
                pooled[c]["score"].append(score[keep])
                pooled[c]["flagged"].append(res.mask[keep])
                pooled[c]["near"].append(near[keep])
                pooled[c]["bleed"].append(on_bleed[keep])
            if progress:
                progress(f"{kind} frame {i}: {int((truth & keep).sum())} CR px, {int((res.mask & keep).sum())} flagged")
    classes = {c: class_metrics(*(np.concatenate(p[k]) for k in ("truth", "score", "flagged", "near", "bleed")))
               for c, p in pooled.items()}
    return {"threshold": float(loaded.threshold if threshold is None else threshold), "tta": bool(used_tta), "runtime": runtime, "ranked_by": ranked_by,
            "seconds": time.perf_counter() - t0, "classes": classes}


def _fmt(x, spec=".4f"):
    return "n/a" if x is None else format(x, spec)


def print_table(report):
    print("| model | class | frames | CR px | TPR@0.01% FPR | TPR@0.1% FPR | precision@95% recall "
          "| TPR / FPR @ threshold | Dice @ threshold | false positives @ threshold: within 1 px of a CR / elsewhere "
          f"(of which on bleed trails: within {BLEED_MARGIN} px of saturated or bleed-trail pixels) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, m in report["models"].items():
        for c, row in m["classes"].items():
            n = sum(len(v) for v in report["frames"].values()) if c == "all" else len(report["frames"][c])
            f = row["false_positives_at_threshold"]
            print(f"| {name} ({m['runtime']}{', flips' if m['tta'] else ''}, p >= {m['threshold']:.4g}) | {c} | {n} "
                  f"| {row['cr_pixels']:,} | {_fmt(row['tpr_at_fpr_1e-4'])} | {_fmt(row['tpr_at_fpr_1e-3'])} "
                  f"| {_fmt(row['precision_at_recall_0.95'])} | {_fmt(row['tpr_at_threshold'], '.3f')} / "
                  f"{row['fpr_at_threshold']:.1e} | {row['dice_at_threshold']:.4f} "
                  f"| {f['near_cr']:,} ({f['share_near_cr']:.0%}) / {f['elsewhere']:,} ({f['on_bleed']:,}) |")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", nargs="+", default=["default"],
                        help="kercr models: default, run directories or .keras files (one table row per class each)")
    parser.add_argument("--frames-per-class", type=int, default=None, metavar="N",
                        help="frames of each class (default 6; 1 with --tiny)")
    parser.add_argument("--seed", type=int, default=TEST_SEED, help="SyntheticFrames seed (default 9001: no "
                        "training config uses it)")
    parser.add_argument("--runtime", default="keras")
    parser.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                        help="four-flip averaging (default: the model card's choice)")
    parser.add_argument("--threshold", type=float, default=None,
                        help="probability cut of the numbers at threshold (default: each model card's; one cut "
                        "for models without a card, or to compare them at the same one)")
    parser.add_argument("--tiny", action="store_true", help="256 x 256 frames, 1 per class (a smoke test)")
    parser.add_argument("--out", default="runs/frame_classes")
    args = parser.parse_args(argv)
    per_class = args.frames_per_class if args.frames_per_class is not None else (1 if args.tiny else 6)
    if per_class < 1:
        parser.error(f"--frames-per-class {per_class}: give 1 or more")
    shape = TINY_SHAPE if args.tiny else SHAPE

    footprints, note = None, None
    if FOOTPRINTS.is_file():
        from kercr.data.frames import load_footprints

        footprints = load_footprints(FOOTPRINTS)
    else:
        note = f"{FOOTPRINTS} not found: simulated CRs only (no real footprints)"
        print(f"[frame_classes] {note}", file=sys.stderr)
    source = frame_source(seed=args.seed, shape=shape, footprints=footprints)
    frames = class_frames(source, per_class)
    report = {"seed": args.seed, "shape": list(shape), "frames_per_class": per_class, "variety": "wide",
              "cr_rate_scale": CR_RATE_SCALE, "footprints": str(FOOTPRINTS) if footprints else None, "note": note,
              "frames": {c: [dict(frame_checks(source, i, image, ignore), cr_pixels=int((truth & ~ignore).sum()),
                                  ignored_pixels=int(ignore.sum()))
                             for i, image, truth, ignore in items] for c, items in frames.items()},
              "models": {}}
    detectors = {i: (source.frame_config(i).gain, source.frame_config(i).readnoise_e)
                 for items in frames.values() for i, *_ in items}
    bleed = {i: bleed_pixels(source, i) for items in frames.values() for i, *_ in items}
    for model in args.model:
        report["models"][str(model)] = score_model(
            model, frames, runtime=args.runtime, tta=args.tta, detectors=detectors, bleed=bleed, threshold=args.threshold,
            progress=lambda msg, m=model: print(f"  [{m}] {msg}", file=sys.stderr, flush=True))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "frame_classes.json").write_text(json.dumps(report, indent=2))
    print(f"{per_class} frame(s) per class of {shape[0]} x {shape[1]} px, seed {args.seed}"
          + (f"; {note}" if note else "; simulated CRs and real footprints") + "; ignored pixels excluded")
    print_table(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
