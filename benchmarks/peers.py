"""The peers' released models on kercr's test frames: Cosmic-CoNN and deepCR, scored exactly as kercr is.

Usage::

    pip install torch==2.13.0 cosmic-conn==0.6.1 deepCR==0.3.1   # not kercr dependencies: this benchmark's only
    python benchmarks/peers.py [--model default|PATH] [--repeats 10] [--first-repeat K]
                               [--peers cosmic-conn deepcr-decam]
                               [--variants as-is binned bright-sky galaxy integer] [--no-reference] [--reference-frames 4]
                               [--first-reference-frame K]
                               [--threads 2] [--out DIR]

What it answers: the detection issue's accuracy bar is Cosmic-CoNN's ground-imaging model on its
own held-out set (0.90 TPR at 0.01 % FPR). That number comes from different frames, CRs and
labels, so it cannot be set beside kercr's proxy score. This runs the peers' own released
models on the proxy itself: the same frames, the same injected footprints (same seeds), the same
ignored pixels, the same pooled metrics as ``benchmarks/real_frames.py``, with kercr's model
(``--model``; the shipped one by default, with its card's defaults: four flips, Keras runtime, as
in ``real_frames.py``) in the same table:
on the real frames as they are, binned 2 x 2 and under a bright sky (``real_frames.py --variant``),
and on the reference table's three cpu-scale test sets (synthetic DECam-like frames: simulated
CRs, real footprints with simulated CRs, and footprints only), where the peers get the raw ADU
frames and kercr runs ``detect()`` on them (the user's path, not the table's tiles).

Peers (their released weights, shipped inside their PyPI packages; nothing is downloaded):
    - ``cosmic-conn``: Cosmic-CoNN 0.6.1, ``init_model("ground_imaging")``, ``detect_cr`` as its
      README calls it (the frame as it is; the model subtracts the median itself; stamps of 1024).
    - ``deepcr-decam``: deepCR 0.3.1, ``deepCR(mask="decam")``, ``clean(binary=False)``
      (stamps of 256, as the package advises).
    Both are given the frame four ways: in ADU or in electrons (ADU x gain), each as it is or
    with its median sky subtracted. Neither package states the unit or the sky its ground model
    expects, so each peer is credited with the best of the four. Frames are reflect-padded to
    the size each network needs (see ``_padded``).
    Their last layer is a sigmoid; it is replaced by the identity while they run, so pixels are
    ranked by logit (a float32 sigmoid ties every confident pixel at 1.0, which would cost the
    peers at 0.01 % FPR through no fault of their networks). Dice and TPR / FPR are then taken
    at the peers' own default threshold, p >= 0.5 (logit 0).
Pixels:
    the real frames' ignore masks (data-quality flags grown by 2 px; the GMOS frame's own CRs
    grown by 3 px) plus anything kercr's ``detect`` ignored (non-finite or saturated pixels), so
    every detector is scored on the same pixels.

Writes ``DIR/peers.json`` and prints a table. With ``../shared/data`` absent, or a peer's package
missing, it says so; a missing peer is skipped.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parent))
from real_frames import SHARED, VARIANTS, VISIBLE_SNR, injected, real_frames, vary  # noqa: E402

PEERS = ("cosmic-conn", "deepcr-decam")
UNITS = ("ADU", "electrons", "ADU, sky subtracted", "electrons, sky subtracted")


@contextlib.contextmanager
def _logits(peer):
    """Swap the peer's final sigmoid for the identity while it runs (to rank by logit)."""
    import torch

    if peer == "cosmic-conn":
        from cosmic_conn.dl_framework import unet as module
        original = module.torch.sigmoid
        target, name = torch, "sigmoid"
    else:
        from deepCR import unet_batchnorm as module
        original = module.sigmoid
        target, name = module, "sigmoid"
    setattr(target, name, lambda x: x)
    try:
        yield
    finally:
        setattr(target, name, original)


def _padded(image, multiple, run):
    """``run`` on ``image`` reflect-padded at the bottom and right to a multiple of ``multiple``, cropped back.

    Cosmic-CoNN crops a frame to a multiple of 16 and leaves the rest of its mask at zero (logit 0
    here, p 0.5); deepCR pads with zeros, a cliff on a frame whose sky is not subtracted. Padding
    by reflection first, as kercr does, gives both peers every pixel.
    """
    h, w = image.shape
    padded = np.pad(image, ((0, -h % multiple), (0, -w % multiple)), mode="reflect")
    return np.asarray(run(np.ascontiguousarray(padded, np.float32)), np.float32)[:h, :w]


def load_peer(peer, threads):
    """A function ``image (float32, given units) -> logit map (float32)`` for ``peer``."""
    if peer not in PEERS:
        raise ValueError(f"unknown peer {peer!r}: choose from {', '.join(PEERS)}")
    import torch

    torch.set_num_threads(threads)
    if peer == "cosmic-conn":
        from cosmic_conn import init_model

        model = init_model("ground_imaging")

        def run(image):
            with _logits(peer):
                return _padded(image, 16, lambda x: model.detect_cr(x, ret_numpy=True))
    else:
        from deepCR import deepCR

        model = deepCR(mask="decam", device="CPU")

        def run(image):
            with _logits(peer):
                return _padded(image, 4, lambda x: model.clean(x, binary=False, inpaint=False, segment=True, patch=256))
    return run


def scores_row(truth, score, *, logit_cut, faint=None, on_source=None, rim=None):
    """Pooled metrics of one detector (``score``: logits), the same entries as real_frames.py's.

    ``faint`` (CR pixels left out of the "visible" row), ``on_source`` and ``rim`` (the 1-px ring
    around the CRs) add those breakdowns when given.
    """
    from kercr.evaluation import pooled_metrics

    row = pooled_metrics(truth, score, None, threshold=0.5, logits=True, logit_threshold=logit_cut)
    cut = row["logit_threshold_at_fpr_1e-4"]
    if faint is not None:
        row["visible"] = pooled_metrics(truth, score, faint, threshold=0.5, logits=True, logit_threshold=logit_cut)
    if on_source is not None:
        for where, sel in (("on_sources", on_source), ("on_sky", ~on_source)):
            row[f"tpr_at_fpr_1e-4_{where}"] = float((score[truth & sel] >= cut).mean()) if (truth & sel).any() else None
    if rim is not None:
        false_pos = ~truth & (score >= cut)
        row["share_of_false_positives_on_rim"] = float((false_pos & rim).sum() / max(false_pos.sum(), 1))
    at = score >= logit_cut
    row["tpr_at_threshold"] = float((at & truth).sum() / truth.sum())
    row["fpr_at_threshold"] = float((at & ~truth).sum() / (~truth).sum())
    return row


def score_frames(items, runners, loaded, *, with_kercr=True, progress=None):
    """Score kercr's model and every peer variant on ``items``; ``{detector: row}`` of pooled metrics.

    ``items`` yields dicts with ``image`` (ADU, float32), ``truth`` and ``ignore`` (bool), ``gain``
    (e-/ADU) and optionally ``snr`` and ``on_source`` (for the visible and by-background rows).
    Pixels that kercr's ``detect`` ignores (non-finite, saturated) are left out for every detector.
    """
    from kercr.detection import detect

    kercr_cut = float(np.log(loaded.threshold) - np.log1p(-loaded.threshold))
    columns = {"kercr": []} | {f"{p} ({u})": [] for p in runners for u in UNITS}
    seconds = {k: 0.0 for k in columns}
    pixels = 0
    truths, snrs, sources, rims = [], [], [], []
    for item in items:
        img, truth, ignore, gain = item["image"], item["truth"], item["ignore"], item["gain"]
        t = time.perf_counter()
        res = detect(img, model=loaded, runtime="keras", mask=ignore, keep_logits=True)
        seconds["kercr"] += time.perf_counter() - t
        pixels += img.size
        keep = ~(ignore | res.ignored)
        columns["kercr"].append(res.logit[keep])
        clean = np.where(np.isfinite(img), img, np.nanmedian(img)).astype(np.float32)
        sky = np.float32(np.median(clean[~ignore]))
        for peer, run in runners.items():
            for unit in UNITS:
                scaled = (clean - sky if "sky" in unit else clean) * np.float32(gain if "electrons" in unit else 1.0)
                t = time.perf_counter()
                columns[f"{peer} ({unit})"].append(run(scaled)[keep])
                seconds[f"{peer} ({unit})"] += time.perf_counter() - t
        truths.append(truth[keep])
        if "snr" in item:
            snrs.append(item["snr"][keep])
        if "on_source" in item:
            sources.append(item["on_source"][keep])
        rims.append((ndimage.binary_dilation(truth, structure=np.ones((3, 3))) & ~truth)[keep])
        if progress:
            progress(item)
    truth = np.concatenate(truths)
    extra = {"rim": np.concatenate(rims)}
    if snrs:
        extra["faint"] = truth & (np.concatenate(snrs) < VISIBLE_SNR)
    if sources:
        extra["on_source"] = np.concatenate(sources)
    rows = {}
    for key, parts in columns.items():
        if key == "kercr" and not with_kercr:
            continue
        rows[key] = scores_row(truth, np.concatenate(parts), logit_cut=kercr_cut if key == "kercr" else 0.0, **extra)
        rows[key]["threshold"] = float(loaded.threshold) if key == "kercr" else 0.5
        rows[key]["mpix_per_s"] = pixels / 1e6 / max(seconds[key], 1e-9)
    counts = {"cr_pixels": int(truth.sum()), "non_cr_pixels": int((~truth).sum())}
    if "faint" in extra:
        counts["visible_cr_pixels"] = int((truth & ~extra["faint"]).sum())
    return rows, counts


def best_variants(rows):
    """``{peer: variant}``: each peer's input variant with the highest TPR at 0.01 % FPR."""
    best = {}
    for key, row in rows.items():
        if key == "kercr":
            continue
        peer = key.split(" (")[0]
        if peer not in best or row["tpr_at_fpr_1e-4"] > rows[best[peer]]["tpr_at_fpr_1e-4"]:
            best[peer] = key
    return best


def print_table(title, rows, counts):
    print(f"\n{title}: {counts['cr_pixels']:,} CR pixels"
          + (f" ({counts['visible_cr_pixels']:,} visible)" if "visible_cr_pixels" in counts else "")
          + f" and {counts['non_cr_pixels']:,} others")
    print("| detector | TPR@0.01% FPR | TPR@0.1% FPR | precision@95% recall | visible: TPR@0.01% / 0.1%, P@95R "
          "| on sources / sky @0.01% | FPs on the rim | Dice @ own threshold (TPR / FPR) |")
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    for key, k in rows.items():
        v = k.get("visible")
        vis = (f"{v['tpr_at_fpr_1e-4']:.4f} / {v['tpr_at_fpr_1e-3']:.4f}, {v['precision_at_recall_0.95']:.4f}"
               if v else "")
        src = (f"{k['tpr_at_fpr_1e-4_on_sources']:.3f} / {k['tpr_at_fpr_1e-4_on_sky']:.3f}"
               if k.get("tpr_at_fpr_1e-4_on_sources") is not None else "")
        print(f"| {key} | {k['tpr_at_fpr_1e-4']:.4f} | {k['tpr_at_fpr_1e-3']:.4f} | "
              f"{k['precision_at_recall_0.95']:.4f} | "
              f"{vis} | {src} | {k['share_of_false_positives_on_rim']:.0%} | {k['dice']:.4f} "
              f"({k['tpr_at_threshold']:.3f} / {k['fpr_at_threshold']:.1e}, p >= {k['threshold']:.4g}) |")


def real_frame_items(repeats, variant="as-is", first=0):
    """The real-frame proxy's injected frames (under ``variant``: real_frames.vary) as :func:`score_frames` items."""
    from kercr.data.frames import load_footprints

    frames, stamps = vary(real_frames(), load_footprints(SHARED / "cr_footprints" / "cosmic_rays_itl_2017_even.fits"),
                          variant)
    for name, r, img, truth, snr, ignore, gain, _, on_source in injected(frames, stamps, repeats, first):
        yield dict(name=f"{name} repeat {r}", image=img, truth=truth, ignore=ignore, gain=gain, snr=snr,
                   on_source=on_source)


def reference_items(frames, first=0):
    """The reference table's cpu-scale test sets (``{set: items}``): raw ADU frames, truth, ignore."""
    from reference_table import GAIN, RECIPES, TestData

    data = TestData(RECIPES["cpu"], frames, first_frame=first)
    return {name: [dict(name=f"{name} {i}", image=f["raw"], truth=f["truth"], ignore=f["ignore"], gain=GAIN)
                   for i, f in enumerate(sets, start=first)] for name, sets in data.sets.items()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="default", help="kercr model: default, a run folder or a .keras file")
    parser.add_argument("--repeats", type=int, default=10, help="injections per real frame")
    parser.add_argument("--first-repeat", type=int, default=0, metavar="K",
                        help="seed of the first injection (real_frames.py --first-repeat)")
    parser.add_argument("--peers", nargs="+", default=list(PEERS), choices=PEERS)
    parser.add_argument("--threads", type=int, default=2, help="torch threads for the peers")
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=["as-is", "binned", "bright-sky"],
                        help="real-frame variants to score (real_frames.py --variant; default as-is binned "
                             "bright-sky, the sets of earlier runs)")
    parser.add_argument("--reference", action=argparse.BooleanOptionalAction, default=True,
                        help="also score the reference table's cpu-scale test sets (synthetic frames)")
    parser.add_argument("--reference-frames", type=int, default=4, help="test frames per reference set")
    parser.add_argument("--first-reference-frame", type=int, default=0, metavar="K",
                        help="first reference test frame (reference_table.py --first-test-frame)")
    parser.add_argument("--out", default="runs/peers")
    args = parser.parse_args(argv)
    if args.first_repeat < 0:
        parser.error(f"--first-repeat {args.first_repeat}: give a seed of 0 or more")
    if args.first_reference_frame < 0:
        parser.error(f"--first-reference-frame {args.first_reference_frame}: give a frame index of 0 or more")
    if not (SHARED / "decam_cp").is_dir():
        print(f"[peers] {SHARED}/decam_cp not found: nothing to measure", file=sys.stderr)
        return 0
    runners = {}
    for peer in args.peers:
        try:
            runners[peer] = load_peer(peer, args.threads)
        except ImportError as exc:
            print(f"[peers] {peer} skipped: {exc} (pip install torch cosmic-conn deepCR)", file=sys.stderr)
    from kercr.detection import load_model

    loaded = load_model(args.model)
    report = {"kercr": {"model": str(args.model), "runtime": "keras", "tta": bool(loaded.card.get("tta", False))},
              "repeats": args.repeats, "first_repeat": args.first_repeat, "sets": {}}
    sets = {"real frames" + ("" if v == "as-is" else f", {v}"):
            list(real_frame_items(args.repeats, v, args.first_repeat)) for v in args.variants}
    if args.reference:
        sets |= reference_items(args.reference_frames, args.first_reference_frame)
    for name, items in sets.items():
        rows, counts = score_frames(items, runners, loaded,
                                    progress=lambda it: print(f"  {it['name']}", file=sys.stderr, flush=True))
        report["sets"][name] = dict(counts, rows=rows, best_variant=best_variants(rows))
        print_table(name, rows, counts)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "peers.json").write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
