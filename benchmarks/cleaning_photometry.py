"""Cleaned images scored by photometry (issue 24, point 4).

Synthetic frames with exact truth (the same frame without its CRs), or with ``--real R`` the real
frames of ``benchmarks/real_frames.py`` (DECam Community Pipeline cutouts and astroscrappy's GMOS
frame) with ``R`` injections each of real dark-frame CR footprints (its seeds), the frame before
the injection as the truth (:func:`real_cases`), are cleaned by:

* ``kercr``: the mask of ``--model`` (default: the shipped default model; ``kercr.detect``), cleaned with
  :func:`kercr.data.clean_image` by ``median`` and ``idw`` and by the inpainting network
  (``network``, :func:`kercr.detection.inpainting.inpaint`), ``dilate`` 0 and 1 (one detection per
  frame; the cleanings are what ``kercr.detect(..., clean=METHOD, clean_dilate=N)`` returns);
* ``true mask``: kercr's cleanings (the network's too, unless ``--no-model``) with the TRUE CR
  mask, an upper bound on what cleaning can do;
* ``astroscrappy``: ``detect_cosmics`` with ``cleantype="meanmask"`` and ``"medmask"``
  (bias-subtracted input with its sky, the frame's gain and read noise, the ignore and saturated
  pixels in ``inmask``; its cleaned image, bias added back);
* ``uncleaned``: the CR-hit image itself, as a reference;
* ``deepCR``: deepCR 0.3.1's released DECam mask model (``deepCR(mask="decam")``, the one
  ``benchmarks/peers.py`` runs) at its default threshold, p > 0.5, cleaned by
  ``clean(image, threshold=0.5, inpaint=True, segment=True, patch=256)``, its mask inpainted two ways:
  its only released inpainting model, ``ACS-WFC-F606W-2-32`` (trained on HST ACS/WFC F606W;
  deepCR ships none for ground data), and its default without one (``inpaint=None``: a 5 x 5
  median of the unmasked pixels, ``inpaint(image, mask)`` on the same mask). Its input: the frame
  in ADU as it is (``DEEPCR_UNIT``; ``--deepcr-unit``: of peers.py's four inputs, the best mask at
  p 0.5 on frames 0-1, Dice 0.79; electrons 0.73; either one sky-subtracted 0.02-0.06),
  non-finite pixels set to the median, reflect-padded to a multiple of 4 (as peers.py); the
  inpainted image is turned back into ADU and the ignored, saturated and non-finite pixels keep
  their values. deepCR needs torch, not a kercr dependency (``pip install torch==2.13.0
  deepCR==0.3.1``); when it is not importable the rows are skipped with a note.

Metrics against the CR-free truth:

1. Error of the true CR pixels (not ignored) in units of the local noise
   ``sqrt(max(truth - bias, 0) gain + readnoise^2) / gain`` (ADU), on sky and on sources
   (:func:`kercr.data.synthetic.source_map` of the truth): median |error| and 90th percentile.
2. Aperture photometry of sources hit by CRs: local maxima of the (Gaussian-smoothed) truth more
   than 20 sky sigma above the sky, a circular aperture of radius 2 FWHM (3-10 px) wholly inside
   the frame with no ignored, saturated or non-finite pixel, kept when it holds at least one true CR
   pixel. Flux error = (flux(cleaned) - flux(truth)) / Poisson flux error of the aperture
   (sqrt of the summed pixel variances of the truth); median |error| and 90th percentile. The
   same for the sources no CR hit ("not hit"), where any change is a false positive's damage.

Seeded and deterministic. Usage::

    .venv/bin/python benchmarks/cleaning_photometry.py [--frames 8] [--out runs/cleaning_photometry]
    .venv/bin/python benchmarks/cleaning_photometry.py --real 10 [--out runs/cleaning_photometry_real]
    .venv/bin/python benchmarks/cleaning_photometry.py --tiny --no-model   # a test: 256 px, 1 frame
    (``--no-model`` skips kercr's and deepCR's models; ``--no-deepcr`` deepCR's only)
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
FOOTPRINTS = ROOT.parent / "shared" / "data" / "cr_footprints" / "cosmic_rays_itl_2017_even.fits"
SEED = 9101
KERCR_CLEANINGS = (("median", 0), ("median", 1), ("idw", 0), ("idw", 1), ("network", 0), ("network", 1))
TRUE_CLEANINGS = ("median", "mean", "idw")
SCRAPPY_CLEANINGS = ("meanmask", "medmask")
DETECTION_SIGMA = 20.0
TINY_FRAME = 10  # a 256-pixel frame with a bright CR on a star (aperture error ~20 sigma uncleaned)
ADC_MAX = 65535.0 - 1.0  # a 16-bit ADC's ceiling (less rounding)
DEEPCR_MASK = "decam"  # deepCR's released ground-imaging mask model (as benchmarks/peers.py)
DEEPCR_THRESHOLD = 0.5  # deepCR's default threshold (peers.py: p >= 0.5)
DEEPCR_INPAINTERS = (("ACS-WFC-F606W-2-32", "inpaint model ACS-WFC-F606W-2-32"), (None, "5x5 median mask"))
DEEPCR_UNITS = ("ADU", "electrons", "ADU, sky subtracted", "electrons, sky subtracted")
REAL_RADIUS = 8.0  # aperture radius on the real frames, px: 2 FWHM of 1" seeing at 0.263 "/px
DEEPCR_UNIT = "ADU"  # deepCR's best of the four at p 0.5 (Dice 0.79 against 0.73, 0.06, 0.02; frames 0-1)


def make_source(size: int):
    """The benchmark's :class:`SyntheticFrames` (real ITL footprints when the shared table is there)."""
    from kercr.data.frames import SyntheticFrames, load_footprints

    footprints = load_footprints(FOOTPRINTS) if FOOTPRINTS.exists() else None
    source = SyntheticFrames(seed=SEED, shape=(size, size), variety="wide", cr_rate_scale=10,
                             footprints=footprints, extended_sources=3, on_source_fraction=0.3)
    return source, footprints is not None


def noise_adu(truth, config):
    """Per-pixel noise of the CR-free frame in ADU."""
    electrons = np.maximum(truth.astype(np.float64) - config.bias_adu, 0) * config.gain
    return np.sqrt(electrons + config.readnoise_e ** 2) / config.gain


def saturated_pixels(image, truth, config):
    """Pixels at the saturation level or the 16-bit ADC's ceiling, in the image or the truth."""
    level = min(config.bias_adu + config.saturation_adu, ADC_MAX)
    return (image >= level) | (truth >= level)


def astroscrappy_clean(image, ignore, saturated, config, cleantype):
    """astroscrappy's cleaned image (ADU, bias included) and its CR mask."""
    import astroscrappy

    data = np.asarray(image, np.float32) - np.float32(config.bias_adu)
    bad = ignore | saturated | ~np.isfinite(data)
    crmask, clean = astroscrappy.detect_cosmics(np.where(bad, 0, data).astype(np.float32), inmask=bad,
                                                gain=float(config.gain), readnoise=float(config.readnoise_e),
                                                satlevel=np.inf, sepmed=True, cleantype=cleantype, verbose=False)
    clean = np.where(bad, image, clean + np.float32(config.bias_adu)).astype(np.float32)
    return clean, crmask & ~bad


def load_deepcr(threads=2):
    """``{row name: deepCR model}`` (mask ``decam``, each inpainter), or None with a note when not importable."""
    try:
        import torch
        from deepCR import deepCR
    except ImportError as exc:
        print(f"[cleaning_photometry] deepCR skipped: {exc} (pip install torch==2.13.0 deepCR==0.3.1)")
        return None
    torch.set_num_threads(threads)
    return {f"deepCR {DEEPCR_MASK}, {label}": deepCR(mask=DEEPCR_MASK, inpaint=inpaint, device="CPU")
            for inpaint, label in DEEPCR_INPAINTERS}


def deepcr_clean(models, image, ignore, saturated, config, unit=DEEPCR_UNIT):
    """``{row name: (cleaned image (ADU, bias included), CR mask (p > 0.5), seconds)}`` for each deepCR model.

    The first model's ``clean(..., inpaint=True)`` gives the mask and its inpainting; the others
    inpaint that same mask with ``inpaint(image, mask)`` (the mask network is the same ``decam``).
    ``image`` is given to deepCR in ``unit``.
    """
    bad = ignore | saturated | ~np.isfinite(image)
    finite = np.where(np.isfinite(image), image, np.nanmedian(image)).astype(np.float32)
    sky = np.float32(np.median(finite[~bad])) if "sky" in unit else np.float32(0)
    factor = np.float32(config.gain if "electrons" in unit else 1.0)
    h, w = image.shape
    x = np.ascontiguousarray(np.pad((finite - sky) * factor, ((0, -h % 4), (0, -w % 4)), mode="reflect"), np.float32)
    out, mask = {}, None
    for name, model in models.items():
        t0 = time.perf_counter()
        if mask is None:
            mask, cleaned = model.clean(x, threshold=DEEPCR_THRESHOLD, inpaint=True, binary=True, segment=True,
                                        patch=256)
            mask = np.asarray(mask, np.float32)
        else:
            cleaned = model.inpaint(x, mask)
        cleaned = np.asarray(cleaned, np.float64)[:h, :w] / factor + sky
        out[name] = (np.where(bad, image, cleaned).astype(np.float32), (mask[:h, :w] > 0.5) & ~bad,
                     time.perf_counter() - t0)
    return out


def find_apertures(truth, bad, noise, config, radius):
    """``[(y, x)]`` centres of compact sources on the truth, their apertures clean and inside the frame.

    Local maxima of the Gaussian-smoothed truth more than 20 sky sigma above the frame's sky and
    more than 20 times the peak pixel's own noise above the median of an annulus around it (so the
    noise bumps of a bright galaxy are not taken for stars).
    """
    from scipy import ndimage

    good = ~bad
    sky = float(np.median(truth[good]))
    sky_noise = float(np.median(noise[good]))
    smooth = ndimage.gaussian_filter(np.where(good, truth, sky).astype(np.float64), 1.0)
    size = 2 * int(radius) + 1
    peaks = (smooth == ndimage.maximum_filter(smooth, size=size)) & (smooth - sky > DETECTION_SIGMA * sky_noise)
    ny, nx = truth.shape
    r = int(np.ceil(radius))
    outer = r + 6
    d = np.arange(-outer, outer + 1)
    dist = np.hypot(*np.meshgrid(d, d, indexing="ij"))
    annulus = (dist > r + 2) & (dist <= outer)
    disk = _disk(radius)
    centres = []
    for y, x in zip(*np.nonzero(peaks)):
        if not (outer <= y < ny - outer and outer <= x < nx - outer):
            continue
        if bad[y - r:y + r + 1, x - r:x + r + 1][disk].any():
            continue
        win = (slice(y - outer, y + outer + 1), slice(x - outer, x + outer + 1))
        ring = truth[win][annulus & good[win]]
        if ring.size and smooth[y, x] - np.median(ring) > DETECTION_SIGMA * noise[y, x]:
            centres.append((int(y), int(x)))
    return centres


def _disk(radius):
    r = int(np.ceil(radius))
    d = np.arange(-r, r + 1)
    return np.hypot(*np.meshgrid(d, d, indexing="ij")) <= radius


def aperture_errors(cleaned, truth, cr_mask, noise, centres, radius, hit=True):
    """Flux errors (cleaned - truth) / Poisson error for the apertures holding a true CR pixel
    (``hit=False``: for those holding none, where any change is a false positive's)."""
    disk, r = _disk(radius), int(np.ceil(radius))
    out = []
    for y, x in centres:
        win = (slice(y - r, y + r + 1), slice(x - r, x + r + 1))
        if cr_mask[win][disk].any() != hit:
            continue
        diff = float((cleaned[win][disk].astype(np.float64) - truth[win][disk].astype(np.float64)).sum())
        out.append(diff / float(np.sqrt((noise[win][disk] ** 2).sum())))
    return out


def _stats(values):
    values = np.abs(np.asarray(values, np.float64))
    if values.size == 0:
        return {"median": None, "p90": None, "n": 0}
    return {"median": float(np.median(values)), "p90": float(np.percentile(values, 90)), "n": int(values.size)}


def _clean(image, mask, ignore, method, dilate):
    """``kercr.data.clean_image``, or the inpainting network for ``method="network"`` (what
    ``kercr.detect(..., clean=method, clean_dilate=dilate)`` returns for that mask)."""
    from kercr.data.cleaning import clean_image, cleaning_mask

    if method == "network":
        from kercr.detection.inpainting import inpaint

        return inpaint(image, cleaning_mask(mask, ignore=ignore, dilate=dilate, image=image), ignore=ignore)
    return clean_image(image, mask, ignore=ignore, method=method, dilate=dilate)


class Case(NamedTuple):
    """One frame to clean: ``image`` (ADU, with CRs), the true ``cr_mask``, ``ignore`` (bool), the
    CR-free ``truth`` (ADU), its per-pixel ``noise`` (ADU), ``config`` (``bias_adu``, ``gain``,
    ``readnoise_e``, ``saturation_adu``), the aperture ``radius`` (px) and a log ``line``."""

    name: str
    image: np.ndarray
    cr_mask: np.ndarray
    ignore: np.ndarray
    truth: np.ndarray
    noise: np.ndarray
    config: object
    radius: float
    line: str


def synthetic_cases(frames, size, first):
    """:class:`Case` of the benchmark's synthetic frames ``first, ..., first + frames - 1``."""
    source, _ = make_source(size)
    for i in range(first, first + frames):
        image, cr_mask, ignore, truth = source._make(i)
        config = source.frame_config(i)
        fwhm = float(np.mean(config.seeing_range)) / float(config.pixel_scale)
        radius = float(np.clip(2 * fwhm, 3, 10))
        yield Case(f"synthetic {i}", image, cr_mask, ignore, truth, noise_adu(truth, config), config, radius,
                   f"frame {i}: gain {config.gain:.2f}, read noise {config.readnoise_e:.1f} e-, bias "
                   f"{config.bias_adu:.0f}, aperture radius {radius:.1f} px")


def real_cases(repeats, first=0):
    """:class:`Case` of ``benchmarks/real_frames.py``'s real frames (DECam CP cutouts, astroscrappy's GMOS
    frame) with its injected dark-frame footprints (the same seeds), the frame before injection as
    the truth.

    Their noise: the frame's sky noise (pixel differences two apart) and the photon noise of the
    signal above its median sky in quadrature, ADU. Bias 0 (the frames are bias-subtracted), no
    saturation level (their data-quality masks, in ``ignore``, flag saturated pixels). The aperture
    radius is :data:`REAL_RADIUS` (2 FWHM of 1" seeing at DECam's 0.263 "/px).
    """
    import sys
    from types import SimpleNamespace

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from real_frames import _sky_noise, injected, real_frames

    from kercr.data.frames import load_footprints

    frames = real_frames()
    stamps = load_footprints(FOOTPRINTS)
    by_name = {f.name: f for f in frames}
    for name, r, img, cr_mask, _, ignore, gain, readnoise, _ in injected(frames, stamps, repeats, first):
        frame = by_name[name]
        sky, sky_noise = _sky_noise(frame)
        truth = frame.image
        noise = np.sqrt(sky_noise ** 2 + np.maximum(np.nan_to_num(truth) - sky, 0) / gain)
        config = SimpleNamespace(bias_adu=0.0, gain=gain, readnoise_e=readnoise, saturation_adu=np.inf)
        yield Case(f"{name} #{r}", img.astype(np.float32), cr_mask, ignore | ~np.isfinite(truth), truth, noise,
                   config, REAL_RADIUS, f"{name} #{r}: gain {gain:.2f}, read noise {readnoise:.1f} e-")


def run(*, frames=8, size=1024, first=0, model=True, detector="default", runtime="auto", deepcr=True,
        deepcr_unit=DEEPCR_UNIT, threads=2, real=0, log=print):
    """Score every cleaner on ``frames`` synthetic frames (or, with ``real=R``, on the real frames
    with ``R`` injections each); the JSON-ready result."""
    from kercr.data.cleaning import clean_image
    from kercr.data.synthetic import source_map

    cases = real_cases(real) if real else synthetic_cases(frames, size, first)
    cleaners = ["uncleaned"] + [f"true mask, {m}" for m in TRUE_CLEANINGS]
    if model:
        cleaners += ["true mask, network"] + [f"kercr default, {m}, dilate {d}" for m, d in KERCR_CLEANINGS]
    cleaners += [f"astroscrappy, {c}" for c in SCRAPPY_CLEANINGS]
    deepcr_models = load_deepcr(threads) if model and deepcr else None
    if deepcr_models:
        cleaners += list(deepcr_models)
    acc = {c: {"sky": [], "source": [], "aperture": [], "unhit": []} for c in cleaners}
    flagged = {c: 0 for c in cleaners}
    timing = {c: 0.0 for c in cleaners}
    n_cr = n_ap = n_frames = 0
    for case in cases:
        image, cr_mask, ignore, truth, noise, config, radius = (case.image, case.cr_mask, case.ignore, case.truth,
                                                                case.noise, case.config, case.radius)
        saturated = saturated_pixels(image, truth, config)
        bad = ignore | saturated | ~np.isfinite(image) | ~np.isfinite(truth)
        on_source = source_map(truth, mask=bad)
        crs = cr_mask & ~bad
        centres = find_apertures(truth, bad, noise, config, radius)
        outputs = {"uncleaned": (image, np.zeros_like(cr_mask), 0.0)}
        for m in TRUE_CLEANINGS:
            t0 = time.perf_counter()
            outputs[f"true mask, {m}"] = (clean_image(image, cr_mask, ignore=bad, method=m), cr_mask & ~bad,
                                          time.perf_counter() - t0)
        if model:
            import kercr

            t0 = time.perf_counter()
            outputs["true mask, network"] = (_clean(image, cr_mask, bad, "network", 0), cr_mask & ~bad,
                                             time.perf_counter() - t0)
            t0 = time.perf_counter()
            result = kercr.detect(image, model=detector, mask=ignore, runtime=runtime,
                                  saturation=config.bias_adu + config.saturation_adu)
            t_detect = time.perf_counter() - t0
            skip = result.ignored if getattr(result, "ignored", None) is not None else ignore
            for m, d in KERCR_CLEANINGS:
                t0 = time.perf_counter()
                cleaned = _clean(image, result.mask, skip, m, d)
                outputs[f"kercr default, {m}, dilate {d}"] = (cleaned, cleaned != image.astype(np.float32),
                                                              t_detect + time.perf_counter() - t0)
        for c in SCRAPPY_CLEANINGS:
            t0 = time.perf_counter()
            cleaned, crmask = astroscrappy_clean(image, ignore, saturated, config, c)
            outputs[f"astroscrappy, {c}"] = (cleaned, crmask, time.perf_counter() - t0)
        if deepcr_models:
            outputs |= deepcr_clean(deepcr_models, image, ignore, saturated, config, deepcr_unit)
        for name, (cleaned, replaced, seconds) in outputs.items():
            err = (cleaned.astype(np.float64) - truth) / noise
            acc[name]["sky"].append(err[crs & ~on_source])
            acc[name]["source"].append(err[crs & on_source])
            acc[name]["aperture"] += aperture_errors(cleaned, truth, crs, noise, centres, radius)
            acc[name]["unhit"] += aperture_errors(cleaned, truth, crs, noise, centres, radius, hit=False)
            flagged[name] += int(np.count_nonzero(replaced))
            timing[name] += seconds
        n_cr += int(crs.sum())
        n_ap_frame = len(aperture_errors(image, truth, crs, noise, centres, radius))
        n_ap += n_ap_frame
        n_frames += 1
        log(f"{case.line}, {int(crs.sum())} CR px ({int((crs & on_source).sum())} on sources), "
            f"{len(centres)} sources, {n_ap_frame} hit")
    rows = {}
    for name in cleaners:
        rows[name] = {
            "cr_pixels_sky": _stats(np.concatenate(acc[name]["sky"])),
            "cr_pixels_source": _stats(np.concatenate(acc[name]["source"])),
            "aperture": _stats(acc[name]["aperture"]),
            "aperture_not_hit": _stats(acc[name]["unhit"]),
            "replaced_pixels": flagged[name],
            "seconds": timing[name],
        }
    if real:
        described = {"n": n_frames, "real": True, "injections_per_frame": real,
                     "frames": "benchmarks/real_frames.py's real frames (as-is) with its injected ITL dark-frame "
                               "footprints", "aperture_radius_px": REAL_RADIUS,
                     "true_cr_pixels": n_cr, "hit_apertures": n_ap}
    else:
        described = {"n": frames, "first": first, "shape": [size, size], "seed": SEED, "variety": "wide",
                     "cr_rate_scale": 10, "extended_sources": 3, "on_source_fraction": 0.3,
                     "real_footprints": FOOTPRINTS.exists(), "true_cr_pixels": n_cr, "hit_apertures": n_ap}
    return {
        "benchmark": "cleaning_photometry",
        "model": detector if model else None,
        "frames": described,
        "units": "errors in units of the CR-free noise (pixels) or of the Poisson flux error (apertures); "
                 "median and 90th percentile of |error|",
        "inpainter_runtime": _inpainter_runtime() if model else None,
        "deepcr": ({"mask": DEEPCR_MASK, "threshold": DEEPCR_THRESHOLD, "unit": deepcr_unit, "patch": 256,
                    "inpainters": [i or "none (5x5 median mask)" for i, _ in DEEPCR_INPAINTERS]}
                   if deepcr_models else None),
        "not_run": ({} if deepcr_models or not (model and deepcr)
                    else {"deepCR": "torch / deepCR not importable"}),
        "cleaners": rows,
    }


def _inpainter_runtime() -> str:
    """The runtime the network rows used (``inpaint``'s ``"auto"``: the card's LiteRT file, else Keras)."""
    from kercr.detection.inpainting import load_inpainter

    return load_inpainter("default").runtime


def _fmt(value):
    return "-" if value is None else f"{value:.2f}"


def markdown(result) -> str:
    lines = ["| cleaner | CR px sky median | sky p90 | CR px source median | source p90 | aperture median | "
             "aperture p90 | apertures | not-hit median | not-hit p90 | not-hit apertures |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, row in result["cleaners"].items():
        s, o, a, u = row["cr_pixels_sky"], row["cr_pixels_source"], row["aperture"], row["aperture_not_hit"]
        lines.append(f"| {name} | {_fmt(s['median'])} | {_fmt(s['p90'])} | {_fmt(o['median'])} | {_fmt(o['p90'])} "
                     f"| {_fmt(a['median'])} | {_fmt(a['p90'])} | {a['n']} "
                     f"| {_fmt(u['median'])} | {_fmt(u['p90'])} | {u['n']} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=8, help="synthetic frames (default 8)")
    parser.add_argument("--size", type=int, default=1024, help="frame side in pixels (default 1024)")
    parser.add_argument("--first", type=int, default=0, help="index of the first frame (default 0)")
    parser.add_argument("--tiny", action="store_true",
                        help=f"a test: one 256-pixel frame (index {TINY_FRAME}, a frame with a CR on a star)")
    parser.add_argument("--no-model", action="store_true",
                        help="skip kercr's and deepCR's models (true mask and astroscrappy)")
    parser.add_argument("--deepcr", action=argparse.BooleanOptionalAction, default=True,
                        help="score deepCR's inpainting when torch and deepCR are importable (default yes)")
    parser.add_argument("--deepcr-unit", choices=DEEPCR_UNITS, default=DEEPCR_UNIT,
                        help=f"the frame as deepCR is given it (default {DEEPCR_UNIT})")
    parser.add_argument("--threads", type=int, default=2, help="torch threads for deepCR (default 2)")
    parser.add_argument("--runtime", default="auto", help="kercr.detect runtime (default auto)")
    parser.add_argument("--model", default="default",
                        help="kercr's detector: a shipped model's name (default: the default model), e.g. global, "
                             "or a model file")
    parser.add_argument("--real", type=int, default=0, metavar="R",
                        help="score the real frames of benchmarks/real_frames.py instead, with R injections each "
                             "(needs ../shared/data)")
    parser.add_argument("--out", default="runs/cleaning_photometry", help="output folder")
    args = parser.parse_args(argv)
    if args.real and not FOOTPRINTS.exists():
        print(f"[cleaning_photometry] {FOOTPRINTS} not found: no real frames to score")
        return 0
    frames, size, first = (1, 256, TINY_FRAME) if args.tiny else (args.frames, args.size, args.first)
    result = run(frames=frames, size=size, first=first, model=not args.no_model, detector=args.model,
                 runtime=args.runtime, deepcr=args.deepcr, deepcr_unit=args.deepcr_unit, threads=args.threads,
                 real=args.real)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "cleaning_photometry.json").write_text(json.dumps(result, indent=2) + "\n")
    table = markdown(result)
    (out / "cleaning_photometry.md").write_text(table + "\n")
    print(table)
    print(f"wrote {out / 'cleaning_photometry.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
