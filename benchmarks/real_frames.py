"""Detection quality on REAL frames with real dark-frame CRs injected (a proxy for issue 6.5's held-out set).

Usage::

    python benchmarks/real_frames.py [--model default|PATH] [--repeats 20] [--first-repeat K] [--runtime R]
                                     [--tta|--no-tta] [--tta-gate P] [--threshold T]
                                     [--variant as-is|binned|bright-sky|galaxy|integer] [--out DIR]

Protocol
--------
Frames (real sky, stars, galaxies, noise and detector defects from two imagers):
    - every DECam Community Pipeline cutout in ``../shared/data/decam_cp/`` (``*_ooi_*``, ADU,
      sky not subtracted, 0.263 "/px, gain 4 e-/ADU when the header has none), with its
      data-quality mask: every flagged pixel (bad, saturated, bleed, CR, ...) grown by 2 pixels is
      ignored;
    - astroscrappy's GMOS-N cutout (``gmos.fits``, gain 1.933, 0.146 "/px binned 2x2 -> 0.29),
      whose own two CRs (astroscrappy's detection, grown by 3 pixels) are ignored.
CRs:
    real footprints from LSST ITL dark frames (``../shared/data/cr_footprints/``, electrons,
    converted with each frame's gain), placed by :func:`kercr.data.footprints.inject_footprints`
    (random stamp, rotation/flip, position) at one footprint per 2,500 pixels; each frame is
    injected ``--repeats`` times with different seeds (seed = repeat index, from ``--first-repeat``,
    default 0: another start gives injections no earlier run has scored) and every repeat is
    detected separately. These footprints are also in the default model's training set (in
    different frames); the backgrounds are what is new.
Variants (``--variant``, :func:`vary`; default ``as-is``):
    ``binned``: frames and footprints summed in 2 x 2 blocks (other pixel scales, undersampling);
    ``bright-sky``: 5,000 ADU of sky and its Poisson noise added (a raw frame's bright sky);
    ``galaxy``: one galaxy or nebula covering 30-70 % of the frame
    (:func:`kercr.data.synthetic.dominant_source`, seeded per frame) added with its Poisson noise,
    its peak capped so that nothing saturates: one noise level per frame is then wrong over much
    of the field; the "visible" noise of a pixel includes the source's photon noise;
    ``integer``: each frame re-expressed as a high-gain, low-sky imager's raw data: a gain G >= 10
    e-/ADU that makes the sky noise about 1.5 ADU, ``(image - sky) x gain / G + 50`` ADU, the
    footprints injected at gain G and the frame rounded to whole ADU after the injection (CRs
    included); astroscrappy gets gain G and a read noise that matches the frame's noise. Both keep
    the ignore masks (:func:`vary`).
Pixels and metrics:
    pooled over all frames and repeats, ignored pixels removed from positives and negatives:
    TPR at 0.01 % and 0.1 % FPR, precision at 95 % recall (from the pooled ROC / PR curves of the
    detect() probabilities), Dice and TPR/FPR at the model card's threshold. A second row counts
    only the "visible" CR pixels (injected charge >= 3 x the frame's robust noise); the fainter
    CR pixels are then left out of positives and negatives alike. Last, the TPR at the pooled
    0.01 % FPR threshold is split between CR pixels on sources (stars, galaxies, halos:
    :func:`kercr.data.synthetic.source_map` of the frame before injection) and on the sky, and
    within each by injected charge over the frame's noise. A diagnostic of where the false
    positives at that threshold lie: the share that touch a CR (the 1-pixel rim around the
    injected footprints, which carries no injected charge), and the TPR at 0.01 % FPR if that
    rim were left out of the negatives (for diagnosis only: the rim is part of the protocol).
    The same split at the card's threshold (issue 22's "fat masks": false positives within 1 px
    of a CR, 8-connected, against those elsewhere, with the false-positive rate of each).
    Per frame: the TPR at the pooled 0.01 % FPR threshold (one threshold for every frame, as a
    pipeline runs), of all and of the visible CR pixels, and the weakest frame among those with
    at least 100 CR pixels over the repeats (the held-out set is judged on its weakest frame too).
Detection:
    ``kercr.detect`` with each frame's gain and read noise (as its header would give them, or none
    with ``--no-header``; only a model with ``header_noise`` uses them) and the model's defaults unless told otherwise: the card's threshold and its
    four-flip averaging (``tta``; on for the shipped model), and ``--runtime`` (default keras, whose
    scores rank every pixel; the card's int8 coarsens low probabilities).
Baseline:
    astroscrappy (L.A.Cosmic) defaults with each frame's gain and read noise (DECam 7 e-, GMOS
    4.24 e-; under a variant, the variant's: :func:`vary`) and the ignored pixels as ``inmask``:
    one operating point (TPR, FPR, Dice).

Outputs ``DIR/real_frames.json`` and prints a table. With ``../shared/data`` absent it says so and exits 0.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np
from scipy import ndimage

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
VISIBLE_SNR = 3.0  # "visible" CR pixels: injected charge >= 3 x the frame's noise
SNR_BINS = (0, 1, 2, 3, 5, 10, 20, np.inf)  # injected charge over noise, for the breakdown


class Frame(NamedTuple):
    """One test frame: ``image`` (ny, nx) float32 in ADU, ``ignore`` (ny, nx) bool, ``gain`` e-/ADU and
    ``readnoise`` e- (astroscrappy's), ``noise_adu`` (float or (ny, nx) map; None: the frame's robust
    noise, measured by :func:`injected`) and ``whole_adu`` (True: the frame is rounded to whole ADU
    after the CRs are injected, as raw data are)."""

    name: str
    image: np.ndarray
    ignore: np.ndarray
    gain: float
    readnoise: float
    noise_adu: object = None
    whole_adu: bool = False


def real_frames():
    """``[Frame]`` of the real test frames (no noise given: :func:`injected` measures it)."""
    from astropy.io import fits

    from kercr.data import read_ccd

    frames = []
    for path in sorted(SHARED.glob("decam_cp/**/*_ooi_*.fits")):
        ccd = read_ccd(path, 1)
        dq = read_ccd(path.with_name(path.name.replace("_ooi_", "_ood_")), 1).data
        ignore = ndimage.binary_dilation(dq > 0, iterations=2)
        frames.append(Frame(f"decam/{path.parent.name}/{path.name}", np.asarray(ccd.data, np.float32), ignore,
                            float(ccd.gain or 4.0), 7.0))
    try:
        import astroscrappy
    except ImportError:
        astroscrappy = None
    if astroscrappy is not None:
        gmos = Path(astroscrappy.__file__).parent / "tests" / "data" / "gmos.fits"
        if gmos.is_file():
            with fits.open(gmos) as hdul:
                data = hdul["SCI"].data.astype(np.float32)
                sky = hdul["SKYFIT"].data
            truth, _ = astroscrappy.detect_cosmics(data, inbkg=sky, readnoise=4.24, gain=1.933)
            frames.append(Frame("gmos/astroscrappy", data, ndimage.binary_dilation(truth, iterations=3), 1.933, 4.24))
    return frames


VARIANTS = ("as-is", "binned", "bright-sky", "galaxy", "integer")
BRIGHT_SKY_ADU = 5000.0  # sky added by the "bright-sky" variant, ADU (20,000 e- at DECam's gain of 4)
GALAXY_MAX_ADU = 30000.0  # "galaxy": frame + source stays below this (DECam saturates at 33,000-50,000 ADU)
GALAXY_TRIES = 50  # "galaxy": sources drawn until one covers 30 % of the frame under that cap
INTEGER_NOISE_ADU = 1.5  # "integer": the sky noise of the re-expressed frame, ADU (before rounding)
INTEGER_MIN_GAIN = 10.0  # "integer": the least gain, e-/ADU
INTEGER_SKY_ADU = 50.0  # "integer": the sky level of the re-expressed frame, ADU


def _bin2(a, reduce):
    """2 x 2 blocks of ``a`` (cropped to even), combined by ``reduce`` over the block (sum or any)."""
    ny, nx = (a.shape[0] // 2) * 2, (a.shape[1] // 2) * 2
    return reduce(a[:ny, :nx].reshape(ny // 2, 2, nx // 2, 2), axis=(1, 3))


def _sky_noise(frame):
    """``(sky, noise)`` of a frame in ADU: sigma-clipped median and the diff2 noise (pixel differences
    two apart, which stars and galaxies do not inflate, unlike the MAD of the pixel values)."""
    from kercr.data.normalization import NormalizationConfig, robust_sky_noise

    config = NormalizationConfig(noise_estimator="diff2")
    sky, noise, _ = robust_sky_noise(frame.image, mask=frame.ignore, config=config)
    return sky, noise


def _mad_noise(frame):
    """The frame's robust noise in ADU as the protocol measures it ("visible" CR pixels)."""
    from kercr.data.normalization import robust_sky_noise

    return robust_sky_noise(frame.image, mask=frame.ignore)[1]


def vary(frames, stamps, variant):
    """The test frames and footprints under a ``variant`` of the protocol: ``(frames, stamps)``.

    ``as-is``: unchanged. ``binned``: every frame summed in 2 x 2 blocks (half the sampling:
    DECam 0.53 "/px, GMOS 0.58 "/px; a block is ignored if any pixel in it was; read noise x 2, as
    for binning in software) and every footprint summed the same way before it is injected, which
    is how a binned CCD records a CR. ``bright-sky``: :data:`BRIGHT_SKY_ADU` of sky added with
    its Poisson noise (seeded per frame), as in a raw frame under a bright sky; the footprints
    are unchanged, so more of every CR is under the noise.

    ``galaxy``: one :func:`kercr.data.synthetic.dominant_source` per frame (rng ``[i, 20261204]``),
    a galaxy or nebula brighter than the sky's variance (the frame's diff2 noise squared, in e-)
    over 30-70 % of the frame, added with its Poisson noise in ADU at the frame's gain. Its peak
    is capped so that no unignored pixel passes :data:`GALAXY_MAX_ADU` (nothing saturates); a
    source that the cap leaves covering less than 30 % (a cuspy Sersic profile on a bright sky)
    is drawn again from the same stream (at most :data:`GALAXY_TRIES` times). The "visible"
    noise of a pixel is the frame's robust noise and the source's photon noise in quadrature
    (``noise_adu`` map); gain and read noise are the frame's (astroscrappy models the source's
    noise from the data itself).

    ``integer``: a high-gain, low-sky imager's raw frame: gain ``G = max(10, noise x gain / 1.5)``
    e-/ADU (noise: the diff2 sky noise, so the new sky noise is about 1.5 ADU),
    ``(image - sky) x gain / G + 50`` ADU (the charge above the sky unchanged), left unrounded
    here: :func:`injected` rounds to whole ADU after the CRs are added at gain ``G``
    (``whole_adu``). The "visible" noise is the frame's robust noise x gain / G with the rounding
    (1/12 ADU^2) added; astroscrappy gets gain G and the read noise with which its noise model,
    ``sqrt(level x G + readnoise^2)`` at the 50 ADU level, gives the frame's noise (0 where the
    50 ADU alone give more: then it overestimates the noise by at most sqrt(50 / G) / 1.5, 1.5x
    at G = 10).

    Every variant keeps the ignore masks. The input frames are not modified.
    """
    if variant == "as-is":
        return frames, stamps
    frames = [Frame(*f) for f in frames]
    if variant == "binned":
        out = [Frame(f.name, _bin2(f.image.astype(np.float64), np.sum).astype(np.float32), _bin2(f.ignore, np.any),
                     f.gain, 2 * f.readnoise) for f in frames]
        binned = []
        for stamp in stamps:
            pad = np.pad(stamp, ((0, stamp.shape[0] % 2), (0, stamp.shape[1] % 2)))
            binned.append(_bin2(pad, np.sum).astype(stamp.dtype))
        return out, binned
    if variant == "bright-sky":
        out = []
        for i, f in enumerate(frames):
            rng = np.random.default_rng([i, 20261125])
            sky = rng.poisson(BRIGHT_SKY_ADU * f.gain, size=f.image.shape) / f.gain
            out.append(f._replace(image=(f.image + sky).astype(np.float32)))
        return out, stamps
    if variant == "galaxy":
        from kercr.data.synthetic import DOMINANT_COVER, dominant_source

        out = []
        for i, f in enumerate(frames):
            _, noise = _sky_noise(f)
            sky_var_e = (noise * f.gain) ** 2
            good = ~f.ignore & np.isfinite(f.image)
            max_peak_e = max(GALAXY_MAX_ADU - float(f.image[good].max()), 0.0) * f.gain
            rng = np.random.default_rng([i, 20261204])
            best = None
            for _ in range(GALAXY_TRIES):  # a cuspy galaxy capped below saturation may cover too little
                source_e = dominant_source(f.image.shape, rng, sky_var_e=sky_var_e, max_peak_e=max_peak_e)
                cover = float((source_e > sky_var_e).mean())
                if best is None or cover > best[0]:
                    best = (cover, source_e.astype(np.float64))
                if cover >= DOMINANT_COVER[0]:
                    break
            source_e = best[1]
            image = f.image + rng.poisson(source_e) / f.gain
            noise_map = np.sqrt((_mad_noise(f) * f.gain) ** 2 + source_e) / f.gain
            out.append(f._replace(image=image.astype(np.float32), noise_adu=noise_map.astype(np.float32)))
        return out, stamps
    if variant == "integer":
        out = []
        for f in frames:
            sky, noise = _sky_noise(f)
            g = max(INTEGER_MIN_GAIN, noise * f.gain / INTEGER_NOISE_ADU)
            image = (f.image.astype(np.float64) - sky) * (f.gain / g) + INTEGER_SKY_ADU
            rounded_noise = np.hypot(noise * f.gain / g, np.sqrt(1 / 12))
            readnoise = np.sqrt(max((rounded_noise * g) ** 2 - INTEGER_SKY_ADU * g, 0.0))
            visible = np.hypot(_mad_noise(f) * f.gain / g, np.sqrt(1 / 12))
            out.append(Frame(f.name, image.astype(np.float32), f.ignore, g, float(readnoise), float(visible), True))
        return out, stamps
    raise ValueError(f"unknown variant {variant!r}: choose from {', '.join(VARIANTS)}")


def injected(frames, stamps, repeats, first=0):
    """Yield ``(name, repeat, image, truth, snr, ignore, gain, readnoise, on_source)`` with footprints injected.

    ``snr``: injected charge over the frame's noise (its ``noise_adu``, else its robust noise; 0
    off the CRs); "visible" CR pixels have ``snr >= 3``. ``on_source``: pixels on stars, galaxies
    and halos of the frame before injection. A ``whole_adu`` frame is rounded to whole ADU after
    the injection.
    """
    from kercr.data.footprints import inject_footprints
    from kercr.data.synthetic import source_map

    for frame in frames:
        name, image, ignore, gain, readnoise, noise_adu, whole_adu = Frame(*frame)
        n = max(1, image.size // 2500)
        if noise_adu is None:
            noise_adu = _mad_noise(Frame(*frame))
        noise_e = np.float32(noise_adu * gain) if np.ndim(noise_adu) == 0 else (noise_adu * gain).astype(np.float32)
        on_source = source_map(image, mask=ignore)
        for r in range(first, first + repeats):
            img, electrons, truth = inject_footprints(image, stamps, n=n, gain=gain,
                                                      rng=np.random.default_rng([r, image.size]))
            if whole_adu:
                img = np.round(img)
            yield name, r, img, truth, electrons / noise_e, ignore, gain, readnoise, on_source


_FRAME = {}  # the gain and read noise of the frame being detected, for header_noise()


def header_noise(low, high):
    """What-if (``--header-noise LOW HIGH``): the normalization's frame noise replaced by the
    Poisson-plus-read-noise model of the frame's header, ``sqrt(sky / gain + (rn / gain)^2)`` ADU,
    wherever the measured noise is ``low``-``high`` times the model (a patch of
    ``kercr.data.normalization.robust_sky_noise`` for this process; the package does not do it)."""
    import kercr.data.normalization as normalization

    measured = normalization.robust_sky_noise

    def patched(image, *, mask=None, config=None):
        sky, noise, n = measured(image, mask=mask, config=config)
        gain, readnoise = _FRAME.get("gain"), _FRAME.get("readnoise")
        if gain and readnoise:
            model = float(np.sqrt(max(sky, 0.0) / gain + (readnoise / gain) ** 2))
            if low <= noise / model <= high:
                return sky, model, n
        return sky, noise, n

    normalization.robust_sky_noise = patched


def near_crs(truth):
    """Pixels within 1 px of a CR pixel (8-connected) that are not CR pixels: the rim of a frame's CRs (bool)."""
    from kercr.data.cleaning import dilate_mask

    truth = np.asarray(truth, bool)
    return dilate_mask(truth, 1) & ~truth


def false_positive_split(truth, flagged, near) -> dict:
    """Where the false positives of a detection lie: within 1 px of a CR or elsewhere (issue 22, "fat masks").

    Parameters
    ----------
    truth, flagged, near : numpy.ndarray of bool, same shape
        CR pixels, the detector's CR pixels and :func:`near_crs` of the truth (computed per frame
        before pooling), ignored pixels already removed.

    Returns
    -------
    dict
        ``false_positives``; ``near_cr`` and ``elsewhere`` (their counts); ``share_near_cr``;
        ``fpr_near_cr`` and ``fpr_elsewhere`` (false positives over the non-CR pixels of each
        region) and ``near_cr_pixels``.
    """
    truth, flagged, near = (np.asarray(a, bool) for a in (truth, flagged, near))
    fp = flagged & ~truth
    n_near, n_else = int((fp & near).sum()), int((fp & ~near).sum())
    pixels_near, pixels_else = int((near & ~truth).sum()), int((~near & ~truth).sum())
    return {"false_positives": n_near + n_else, "near_cr": n_near, "elsewhere": n_else,
            "share_near_cr": n_near / max(n_near + n_else, 1), "near_cr_pixels": pixels_near,
            "fpr_near_cr": n_near / max(pixels_near, 1), "fpr_elsewhere": n_else / max(pixels_else, 1)}


WEAKEST_MIN_CR_PIXELS = 100  # a frame's TPR counts for "the weakest frame" from this many CR pixels


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--threshold", type=float, help="default: the model card's")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--first-repeat", type=int, default=0, metavar="K",
                        help="seed of the first injection (default 0; another K gives unseen injections)")
    parser.add_argument("--runtime", default="keras")
    parser.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                        help="four-flip averaging (default: the model card's choice)")
    parser.add_argument("--tta-gate", type=float, default=None, metavar="P",
                        help="flip only the windows of pixels with single-view p >= P (default: the card's, "
                             "else 0.003); 0 flips every pixel")
    parser.add_argument("--variant", choices=VARIANTS, default="as-is",
                        help="the frames as they are, binned 2 x 2, under a bright sky, with a galaxy covering "
                             "30-70 %% of the frame, or as a high-gain imager's integer frames (see vary())")
    parser.add_argument("--header-noise", type=float, nargs=2, metavar=("LOW", "HIGH"),
                        help="what-if: the frame's noise from its GAIN and RDNOISE (sqrt(sky / gain + (rn / gain)^2) "
                             "ADU) wherever the measured noise is LOW-HIGH times that (header_noise())")
    parser.add_argument("--no-header", action="store_true",
                        help="what-if: detect without each frame's gain and read noise, as for a file whose "
                             "header has no GAIN or RDNOISE (astroscrappy still gets them)")
    parser.add_argument("--out", default="runs/real_frames")
    args = parser.parse_args(argv)
    if args.no_header and args.header_noise:
        parser.error("--no-header and --header-noise contradict each other: --header-noise uses the header's gain "
                     "and read noise; give one of them")
    if args.first_repeat < 0:
        parser.error(f"--first-repeat {args.first_repeat}: give a seed of 0 or more")
    if not (SHARED / "decam_cp").is_dir():
        print(f"[real_frames] {SHARED}/decam_cp not found: nothing to measure", file=sys.stderr)
        return 0

    from kercr.data.frames import load_footprints
    from kercr.evaluation import pooled_metrics
    from kercr.detection import detect, load_model

    if args.header_noise:
        header_noise(*args.header_noise)
    loaded = load_model(args.model)
    threshold = args.threshold if args.threshold is not None else loaded.threshold
    stamps = load_footprints(SHARED / "cr_footprints" / "cosmic_rays_itl_2017_even.fits")
    frames, stamps = vary(real_frames(), stamps, args.variant)
    truths, scores, snrs, sources, rims, names, per_frame = [], [], [], [], [], [], {}
    lac = {"tp": 0, "fp": 0, "fn": 0, "neg": 0, "seconds": 0.0, "pixels": 0}
    try:
        import astroscrappy
    except ImportError:
        astroscrappy = None
    t0 = time.perf_counter()
    items = injected(frames, stamps, args.repeats, args.first_repeat)
    for name, r, img, truth, snr, ignore, gain, readnoise, on_source in items:
        _FRAME.update(gain=gain, readnoise=readnoise)
        header = {} if args.no_header else {"gain": gain, "readnoise": readnoise}  # as a header gives them
        res = detect(img, model=loaded, threshold=threshold, runtime=args.runtime, mask=ignore, tta=args.tta,
                     tta_gate=args.tta_gate, **header)
        tta, gate = res.tta, res.tta_gate
        ign = ignore | res.ignored
        truths.append(truth[~ign])
        scores.append(res.probability[~ign])
        snrs.append(snr[~ign])
        sources.append(on_source[~ign])
        rims.append(near_crs(truth)[~ign])
        names.append(name)
        f = per_frame.setdefault(name, {"cr": 0, "found": 0, "fp": 0, "neg": 0})
        f["cr"] += int((truth & ~ign).sum())
        f["found"] += int((truth & res.mask & ~ign).sum())
        f["fp"] += int((~truth & res.mask & ~ign).sum())
        f["neg"] += int((~truth & ~ign).sum())
        if astroscrappy is not None:
            t = time.perf_counter()
            m, _ = astroscrappy.detect_cosmics(img, inmask=ign, gain=gain, readnoise=readnoise)
            lac["seconds"] += time.perf_counter() - t
            lac["pixels"] += img.size
            lac["tp"] += int((m & truth & ~ign).sum())
            lac["fp"] += int((m & ~truth & ~ign).sum())
            lac["fn"] += int((~m & truth & ~ign).sum())
            lac["neg"] += int((~truth & ~ign).sum())
    truth, score, snr = np.concatenate(truths), np.concatenate(scores), np.concatenate(snrs)
    faint = truth & (snr < VISIBLE_SNR)
    on_source = np.concatenate(sources)
    kercr = pooled_metrics(truth, score, None, threshold=threshold, logits=False)
    cut = kercr["threshold_at_fpr_1e-4"]
    by_background = {}
    for where, sel in (("on_sources", on_source), ("on_sky", ~on_source)):
        row = by_background[where] = {"cr_pixels": int((truth & sel).sum()), "tpr_at_fpr_1e-4": None, "by_snr": {}}
        if row["cr_pixels"]:
            row["tpr_at_fpr_1e-4"] = float((score[truth & sel] >= cut).mean())
        for lo, hi in zip(SNR_BINS[:-1], SNR_BINS[1:]):
            px = truth & sel & (snr >= lo) & (snr < hi)
            if px.any():
                row["by_snr"][f"{lo:g}-{hi:g}"] = {"cr_pixels": int(px.sum()), "tpr": float((score[px] >= cut).mean())}
    # Each frame's TPR at the pooled 0.01 % FPR threshold: one threshold for all, as a pipeline uses.
    for name, f in per_frame.items():
        mine = [(t, s, q) for n, t, s, q in zip(names, truths, scores, snrs) if n == name]
        f["tpr_at_pooled_fpr_1e-4"] = (sum(int((s[t] >= cut).sum()) for t, s, _ in mine)
                                       / max(sum(int(t.sum()) for t, _, _ in mine), 1))
        f["visible_cr"] = sum(int((t & (q >= VISIBLE_SNR)).sum()) for t, _, q in mine)
        f["visible_tpr_at_pooled_fpr_1e-4"] = (sum(int((s[t & (q >= VISIBLE_SNR)] >= cut).sum()) for t, s, q in mine)
                                               / max(f["visible_cr"], 1))
    # The weakest frame among those with enough CR pixels for the fraction to mean something.
    counted = [n for n, f in per_frame.items() if f["cr"] >= WEAKEST_MIN_CR_PIXELS] or list(per_frame)
    weakest = min(counted, key=lambda n: per_frame[n]["tpr_at_pooled_fpr_1e-4"])
    rim = np.concatenate(rims)
    false_pos = ~truth & (score >= cut)
    off_rim = np.sort(score[~truth & ~rim])
    rim_cut = off_rim[-max(1, int(1e-4 * off_rim.size))]
    rim_report = {"rim_pixels": int(rim.sum()), "false_positives": int(false_pos.sum()),
                  "share_of_false_positives_on_rim": float((false_pos & rim).sum() / max(false_pos.sum(), 1)),
                  "tpr_at_fpr_1e-4_without_rim": float((score[truth] >= rim_cut).mean())}
    fat_mask = false_positive_split(truth, score >= threshold, rim)
    visible = pooled_metrics(truth, score, faint, threshold=threshold, logits=False)
    at = score >= threshold
    kercr.update(tpr_at_threshold=float((at & truth).sum() / truth.sum()),
                 fpr_at_threshold=float((at & ~truth).sum() / (~truth).sum()), threshold=threshold)
    report = {"model": str(args.model), "variant": args.variant, "header": not args.no_header, "runtime": args.runtime, "tta": tta, "tta_gate": gate,
              "repeats": args.repeats, "first_repeat": args.first_repeat, "frames": len(frames),
              "cr_pixels": int(truth.sum()), "visible_cr_pixels": int((truth & ~faint).sum()),
              "non_cr_pixels": int((~truth).sum()), "kercr": kercr, "kercr_visible_crs": visible,
              "kercr_by_background": by_background, "false_positives_at_1e-4": rim_report,
              "false_positives_at_threshold": fat_mask, "per_frame": per_frame, "weakest_frame": weakest,
              "seconds": time.perf_counter() - t0}
    if astroscrappy is not None:
        tp, fp, fn = lac["tp"], lac["fp"], lac["fn"]
        report["astroscrappy"] = {"tpr": tp / max(tp + fn, 1), "fpr": fp / max(lac["neg"], 1),
                                  "dice": 2 * tp / max(2 * tp + fp + fn, 1),
                                  "mpix_per_s": lac["pixels"] / 1e6 / max(lac["seconds"], 1e-9)}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "real_frames.json").write_text(json.dumps(report, indent=2))
    k = kercr
    print(f"{len(frames)} real frames x {args.repeats} injections: {report['cr_pixels']:,} CR "
          f"({report['visible_cr_pixels']:,} visible) and "
          f"{report['non_cr_pixels']:,} other pixels (ignored pixels excluded)")
    print("| detector | TPR@0.01% FPR | TPR@0.1% FPR | precision@95% recall | Dice @ threshold | TPR / FPR @ threshold |")
    print("|---|---|---|---|---|---|")
    print(f"| kercr {args.model} ({args.runtime}{f', flips (gate {gate:g})' if tta else ''}) | {k['tpr_at_fpr_1e-4']:.4f} | {k['tpr_at_fpr_1e-3']:.4f} | "
          f"{k['precision_at_recall_0.95']:.4f} | {k['dice']:.4f} | {k['tpr_at_threshold']:.4f} / "
          f"{k['fpr_at_threshold']:.2e} (p >= {threshold:.4g}) |")
    v = visible
    print(f"| kercr, visible CR pixels only | {v['tpr_at_fpr_1e-4']:.4f} | {v['tpr_at_fpr_1e-3']:.4f} | "
          f"{v['precision_at_recall_0.95']:.4f} | {v['dice']:.4f} | |")
    for where, row in by_background.items():
        if row["tpr_at_fpr_1e-4"] is not None:
            print(f"| kercr, CR pixels {where.replace('_', ' ')} ({row['cr_pixels']:,}) | {row['tpr_at_fpr_1e-4']:.4f} | | | | |")
    print("TPR at the pooled 0.01 % FPR threshold by injected charge / noise:")
    for where, row in by_background.items():
        print(f"  {where}: " + ", ".join(f"{k} {v['tpr']:.2f} ({v['cr_pixels']})" for k, v in row["by_snr"].items()))
    print(f"False positives at the 0.01 % FPR threshold: {rim_report['share_of_false_positives_on_rim']:.0%} touch a CR "
          f"(the 1-px rim of the footprints); TPR at 0.01 % FPR with that rim left out of the negatives: "
          f"{rim_report['tpr_at_fpr_1e-4_without_rim']:.4f} (diagnostic)")
    print(f"False positives at the card's threshold (p >= {threshold:.4g}): {fat_mask['false_positives']:,}, "
          f"{fat_mask['share_near_cr']:.0%} within 1 px of a CR ({fat_mask['near_cr']:,}; FPR there "
          f"{fat_mask['fpr_near_cr']:.2e}) and {fat_mask['elsewhere']:,} elsewhere "
          f"(FPR {fat_mask['fpr_elsewhere']:.2e})")
    if "astroscrappy" in report:
        a = report["astroscrappy"]
        print(f"| astroscrappy defaults | n/a | n/a | n/a | {a['dice']:.4f} | {a['tpr']:.4f} / {a['fpr']:.2e} |")
    for name, f in per_frame.items():
        print(f"  {name}: found {f['found'] / max(f['cr'], 1):.3f} of {f['cr']} CR px, {f['fp']} false of {f['neg']}; "
              f"TPR {f['tpr_at_pooled_fpr_1e-4']:.3f} at the pooled 0.01 % FPR threshold "
              f"({f['visible_tpr_at_pooled_fpr_1e-4']:.3f} of its {f['visible_cr']} visible CR px)")
    print(f"Weakest frame of >= {WEAKEST_MIN_CR_PIXELS} CR pixels at the pooled 0.01 % FPR threshold: {weakest} "
          f"({per_frame[weakest]['tpr_at_pooled_fpr_1e-4']:.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
