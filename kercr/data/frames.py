"""Frame sources: normalized frames with exact CR truth and pixel weights (numpy only).

A frame source gives ``frame(key) -> (image, mask, weight)``, float32 (ny, nx) arrays: the image
normalized with :func:`kercr.data.normalization.normalize` over the whole frame (as at
inference), the CR truth (0/1) and pixel weights (0 on ignored pixels: hot pixels, bad columns,
bad pixels, NaN, synthetic CR pixels fainter than their noise; 1 elsewhere, or Cosmic-CoNN median
weights). A source may give more than one input map, ``frame(key) -> (*inputs, mask, weight)``:
the loaders cut every map at the same place and stack the inputs as channels, in order.
``exposure_ids()`` lists the exposures, and ``frames_of(id)`` (where an exposure holds
several frames) their frame keys, so data sets are split by exposure, never by frame or patch.

- :class:`SyntheticFrames`: kercr's embedded DECam-like exposures, made on demand;
- :class:`FITSFrames`: a directory of FITS files (clean frames get injected CRs);
- :class:`kercr.data.lco.LCOFrames`: the LCO CR dataset released with Cosmic-CoNN.

Frame ``i`` is a pure function of ``(seed, i)``. The Keras ``PyDataset`` loaders over these
sources are in :mod:`kercr.data.loader`.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import zlib
from pathlib import Path

import numpy as np

from kercr.config import FAINT_CRS, FITS_SUFFIXES  # one definition of the choices, shared with the CLI
from kercr.data.augment import decam_dq_ignore, make_training_example
from kercr.data.cosmic_rays import CosmicRayModel, bright_tracks, inject_cosmic_rays
from kercr.data.errors import KercrDataError
from kercr.data.fits_io import iter_ccds, list_ccd_extensions, read_ccd
from kercr.data.footprints import extract_footprints, inject_footprints, read_footprint_table
from kercr.data.normalization import NormalizationConfig, normalize
from kercr.data.patches import make_patches
from kercr.data.synthetic import VARIETIES, SyntheticConfig, dominant_source, make_frame, random_instrument, source_map
from kercr.data.synthetic import extended_sources as render_extended_sources
from kercr.data.pixel_weights import check_rim_weight, median_weight_map, weigh_rim

__all__ = ["SyntheticFrames", "FITSFrames", "frame_keys", "load_footprints", "patch_batches"]

logger = logging.getLogger(__name__)

#: CR pixels with less charge than this many times their pixel's noise get weight 0 in training.
FAINT_CR_SNR = 1.0
#: What training does with CR pixels fainter than ``FAINT_CR_SNR`` x noise (:class:`SyntheticFrames`):
#: :data:`kercr.config.FAINT_CRS`.


class _CachedFrames:
    """Keeps the last ``cache`` prepared frames: consecutive batches reuse one frame.

    ``rim_weight`` (every source): the loss weight of the non-CR pixels that touch a CR
    (:func:`kercr.data.pixel_weights.weigh_rim`; 1, the default, leaves them at 1).
    """

    def __init__(self, *, seed: int, median_weights: bool, normalization: NormalizationConfig | None, cache: int,
                 rim_weight: float = 1.0):
        self.seed, self.median_weights, self.cache = int(seed), bool(median_weights), int(cache)
        self.normalization = normalization
        self.rim_weight = check_rim_weight(rim_weight)
        self._cache: dict = {}
        self._detectors: dict = {}  # key -> (gain e-/ADU, read noise e-) that _make knew, for header_noise

    def frame(self, i):
        """``(image, mask, weight)`` float32 (ny, nx) arrays of frame ``i``; weight 0 on ignored pixels."""
        if i not in self._cache:
            image_adu, cr_mask, ignore, clean_adu = self._make(i)
            gain, readnoise = self._detectors.pop(i, (None, None))
            bad = np.asarray(ignore, bool) | ~np.isfinite(image_adu)
            image, _ = normalize(image_adu, mask=bad, config=self.normalization, gain=gain, readnoise=readnoise)
            if self.median_weights:
                # The median of aligned CR-free exposures is the clean frame itself.
                weight = median_weight_map([clean_adu] * 3, alpha=0.0, mask=bad).astype(np.float32)
                # Weight 0 means "ignored" everywhere downstream (the alpha floor, the metrics); plain
                # sky, whose median weight at alpha 0 is exactly 0, still counts once alpha rises.
                np.maximum(weight, MIN_COUNTED_WEIGHT, out=weight)
            else:
                weight = np.ones(image.shape, np.float32)
            weight[bad] = 0.0
            if self.rim_weight != 1:
                weight = weigh_rim(weight, cr_mask, self.rim_weight)
            if len(self._cache) >= self.cache:
                self._cache.pop(next(iter(self._cache)))
            self._cache[i] = (image, np.asarray(cr_mask, np.float32), weight)
        return self._cache[i]


#: The least weight of a pixel that is not ignored (weight 0 marks ignored pixels).
MIN_COUNTED_WEIGHT = np.float32(1e-6)


class SyntheticFrames(_CachedFrames):
    """Synthetic DECam-like exposures (:func:`kercr.data.synthetic.make_frame`) made on demand.

    Parameters
    ----------
    seed : int
    shape : tuple of int
        Frame shape (ny, nx) in pixels.
    cr_rate_scale : float
        CR rate as a multiple of DECam's dark rate.
    median_weights : bool
        Weights from the clean frame (Cosmic-CoNN's median weighting) instead of ones.
    footprints : list of numpy.ndarray, optional
        Real CR footprints (electrons) added on top of the simulated CRs.
    footprint_fraction : float
        Real footprints per frame as a fraction of the expected simulated CR count.
    extended_sources : float
        Mean number of large smooth sources (galaxies tens to hundreds of pixels across, diffuse
        light; :func:`kercr.data.synthetic.extended_sources`) added per 1024 x 1024 pixels, with
        their photon noise. 0: none (the frames of earlier kercr versions).
    on_source_fraction : float
        Fraction of the real footprints centred on sources (stars, galaxies, halos:
        :func:`kercr.data.synthetic.source_map` of the clean frame) instead of anywhere, so the
        model sees CR hits on bright backgrounds. 0: placed uniformly.
    variety : {"decam", "wide"}
        ``"decam"``: every frame from DECam's camera (:class:`SyntheticConfig` defaults);
        ``"wide"``: every frame from a new random imager
        (:func:`kercr.data.synthetic.random_instrument`: sampling, sky, gain, noise, bias,
        sensor), for models that must work on any CCD.
    sky_e_range : (float, float) or None
        ``variety="wide"`` only: the sky level range in e- per pixel (log-uniform, capped at 30 %
        of each imager's saturation). None: 3 e- to the cap. A higher floor (e.g. 30 e-) puts
        more frames on bright skies, where CR tracks are faint against the sky noise.
    cr_threshold_e : float or None
        Simulated CRs keep only pixels with more than this charge (e-), in the image and the
        truth alike, so their edges match those of footprints harvested from dark frames (about
        50 e- for imSim's ITL table). None: half the read noise (CR wings down to the noise).
    faint_crs : {"ignore", "negative", "positive"}
        CR pixels whose charge is below ``FAINT_CR_SNR`` (1) times the pixel's noise look exactly
        like noise. ``"ignore"`` (default) leaves them out of the loss, so a model's output there
        is never corrected: it learns to flag the noise pixels next to every bright CR.
        ``"negative"`` labels them not-CR (a model flags only pixels with visible charge);
        ``"positive"`` labels them CR like any other CR pixel (the truth of an injection
        benchmark), so a model learns how likely a noise-like pixel next to a CR is to be one.
    dominant_sources : float
        Fraction of frames that hold one galaxy or nebula covering 30-70 % of the field
        (:func:`kercr.data.synthetic.dominant_source`, with its photon noise), where one noise
        level per frame is wrong. 0: none.
    integer_frames : float
        Fraction of frames from a high-gain (10-30 e-/ADU), low-sky (at most 100 ADU above the
        bias) imager, rounded to integer ADU as raw data are: the noise is a few ADU and
        quantized. 0: none.
    rim_weight : float
        Loss weight of the non-CR pixels touching a CR pixel of the truth (8-connected;
        :func:`kercr.data.pixel_weights.weigh_rim`). 1 (default): like any other pixel.
    bright_tracks : float
        Mean number of straight, heavily ionizing CR tracks (:func:`kercr.data.cosmic_rays.bright_tracks`:
        8-60 px long, half of them within 10 degrees of a row or a column) added per 1024 x 1024
        pixels, their most probable charge per pixel of length 100 to 2000 times the sky noise and
        below 70 % of saturation; a track pixel that saturates all the same is ignored.
        Bleed trails and bad columns, bright lines along the grid too, are negatives; without
        such tracks a model learns to leave every bright line along the grid unmasked. 0: none.

    Saturated and bleed-trail pixels are negatives in the weights (their truth is known); hot
    pixels, bad columns, CR hits on saturated pixels and (by default) CR pixels whose charge is
    below ``FAINT_CR_SNR`` (1) times the pixel's noise are ignored (weight 0).
    """

    def __init__(self, *, seed, shape=(4096, 2048), cr_rate_scale=1.0, median_weights=False,
                 normalization=None, cache=2, footprints=None, footprint_fraction=0.5, variety="decam",
                 extended_sources=0.0, on_source_fraction=0.0, sky_e_range=None, cr_threshold_e=None,
                 faint_crs="ignore", dominant_sources=0.0, integer_frames=0.0, rim_weight=1.0, bright_tracks=0.0):
        super().__init__(seed=seed, median_weights=median_weights, normalization=normalization, cache=cache,
                         rim_weight=rim_weight)
        if variety not in VARIETIES:
            raise KercrDataError(f"variety={variety!r} is not one of {VARIETIES}.")
        if not extended_sources >= 0:
            raise KercrDataError(f"extended_sources={extended_sources!r} must be >= 0 (sources per 1024 x 1024 "
                                 "pixels, e.g. 3), or 0 for none.")
        if not 0 <= on_source_fraction <= 1:
            raise KercrDataError(f"on_source_fraction={on_source_fraction!r} must be in [0, 1], e.g. 0.3.")
        if not footprint_fraction >= 0 or not np.isfinite(footprint_fraction):
            raise KercrDataError(f"footprint_fraction={footprint_fraction!r} must be a finite number >= 0 (real "
                                 "footprints per simulated CR, e.g. 0.5).")
        self.extended_sources, self.on_source_fraction = float(extended_sources), float(on_source_fraction)
        if sky_e_range is not None:
            if variety != "wide":
                raise KercrDataError(f"sky_e_range={sky_e_range!r} sets the sky of the random imagers of "
                                     "variety='wide'; DECam-like frames take their sky from the band and exposure "
                                     "time. Use variety='wide' or leave sky_e_range unset.")
            try:
                lo, hi = (float(v) for v in sky_e_range)
            except (TypeError, ValueError):
                lo = hi = float("nan")
            if not 0 < lo < hi:
                raise KercrDataError(f"sky_e_range={sky_e_range!r} must be two sky levels in e- per pixel, "
                                     "0 < low < high, e.g. [30, 1e6] (the high end is capped at 30 % of saturation).")
            sky_e_range = (lo, hi)
        self.sky_e_range = sky_e_range
        if cr_threshold_e is not None and not _positive(cr_threshold_e):
            raise KercrDataError(f"cr_threshold_e={cr_threshold_e!r} must be a positive charge in e- (e.g. 50, the "
                                 "edge of imSim's ITL footprints), or unset for half the read noise.")
        self.cr_threshold_e = None if cr_threshold_e is None else float(cr_threshold_e)
        if faint_crs not in FAINT_CRS:
            raise KercrDataError(f"faint_crs={faint_crs!r} is not one of {FAINT_CRS}: 'ignore' leaves CR pixels fainter "
                                 "than the noise out of the loss, 'negative' labels them not-CR, 'positive' CR.")
        self.faint_crs = faint_crs
        for name, value in (("dominant_sources", dominant_sources), ("integer_frames", integer_frames)):
            if not 0 <= value <= 1:
                raise KercrDataError(f"{name}={value!r} must be a fraction of the frames in [0, 1], e.g. 0.2.")
        self.dominant_sources, self.integer_frames = float(dominant_sources), float(integer_frames)
        if not (np.isfinite(bright_tracks) and bright_tracks >= 0):
            raise KercrDataError(f"bright_tracks={bright_tracks!r} must be a number of tracks per 1024 x 1024 pixels "
                                 ">= 0, e.g. 4, or 0 for none.")
        self.bright_tracks = float(bright_tracks)
        self.shape = tuple(int(s) for s in shape)
        self.footprints, self.footprint_fraction = footprints, float(footprint_fraction)
        self.variety, self.cr_rate_scale = variety, float(cr_rate_scale)
        base = SyntheticConfig()
        self.config = dataclasses.replace(
            base, cr_model=dataclasses.replace(base.cr_model, rate_per_s=base.cr_model.rate_per_s * cr_rate_scale))

    def exposure_ids(self, n: int) -> list[int]:
        return list(range(int(n)))

    def frame_class(self, i) -> str:
        """``"dominant"``, ``"integer"`` or ``"plain"``: the class of frame ``i`` (own random stream,
        so frames of runs without these classes are unchanged)."""
        u = np.random.default_rng([self.seed, 99991, int(i)]).uniform()
        if u < self.dominant_sources:
            return "dominant"
        if u < self.dominant_sources + self.integer_frames:
            return "integer"
        return "plain"

    def frame_config(self, i) -> SyntheticConfig:
        """The :class:`SyntheticConfig` frame ``i`` is made with."""
        if self.variety == "decam":
            config = self.config
        else:
            config = random_instrument(np.random.default_rng([self.seed, 15485863, int(i)]),
                                       cr_rate_scale=self.cr_rate_scale, sky_e_range=self.sky_e_range)
        if self.frame_class(i) == "integer":
            # a high-gain imager at a low sky: a few ADU of noise, quantized
            rng = np.random.default_rng([self.seed, 7727, int(i)])
            gain = float(np.exp(rng.uniform(np.log(10.0), np.log(30.0))))
            saturation = float(min(config.saturation_adu * config.gain / gain, 65535.0 - config.bias_adu))
            config = dataclasses.replace(config, gain=gain, saturation_adu=saturation,
                                         sky_e_range=(3.0 * gain, 100.0 * gain))
        if self.cr_threshold_e is not None:
            config = dataclasses.replace(config, cr_threshold_e=self.cr_threshold_e)
        return config

    def _base_frame(self, i, config: SyntheticConfig):
        """The :func:`kercr.data.synthetic.make_frame` exposure that frame ``i`` is built on."""
        return make_frame(seed=np.random.SeedSequence([self.seed, 7919, int(i)]), shape=self.shape, config=config)

    def saturated_pixels(self, i) -> np.ndarray:
        """Saturated and bleed-trail pixels of frame ``i`` (bool, the frame's shape).

        They are negatives in the pixel weights (see the class docstring), so a benchmark can ask
        how many of a detector's false positives lie on them: the pixels that
        :func:`kercr.data.synthetic.make_frame` saturated and bled, run again for this (about a
        second for 1024 x 1024 px).
        """
        return self._base_frame(i, self.frame_config(i)).saturated_mask

    def _make(self, i):
        config = self.frame_config(i)
        self._detectors[i] = (config.gain, config.readnoise_e)  # what the imager's header would say
        f = self._base_frame(i, config)
        image, cr_mask, cr_e, clean = f.image_adu, f.cr_mask, f.cr_electrons, f.clean_adu
        if self.extended_sources > 0:
            # Large smooth sources with their photon noise, on the image and on the clean frame alike.
            rng = np.random.default_rng([self.seed, 130363, int(i)])
            sky_noise_e = np.sqrt((f.meta["sky_adu"] - config.bias_adu) * config.gain + config.readnoise_e**2)
            n = rng.poisson(self.extended_sources * np.prod(self.shape) / 1024**2)
            source_e = render_extended_sources(self.shape, rng, n=int(n), noise_e=sky_noise_e,
                                               max_peak_e=0.5 * config.saturation_adu * config.gain)
            image, clean = _add_source(image, clean, source_e, rng=rng, gain=config.gain)
        kind = self.frame_class(i)
        if kind == "dominant":
            rng = np.random.default_rng([self.seed, 611953, int(i)])
            sky_var_e = (f.meta["sky_adu"] - config.bias_adu) * config.gain + config.readnoise_e**2
            source_e = dominant_source(self.shape, rng, sky_var_e=sky_var_e,
                                       max_peak_e=0.5 * config.saturation_adu * config.gain)
            image, clean = _add_source(image, clean, source_e, rng=rng, gain=config.gain)
        saturation = config.saturation_adu + config.bias_adu  # ADU, with the bias
        if self.footprints:
            # Real footprints on top of the simulated CRs: footprint_fraction of the frame's CRs.
            rng = np.random.default_rng([self.seed, 104729, int(i)])
            n = rng.poisson(self.footprint_fraction * config.cr_model.expected_count(self.shape, f.meta["cr_exptime"]))
            n_on = rng.binomial(int(n), self.on_source_fraction) if self.on_source_fraction > 0 else 0
            if n_on:  # CR hits on stars, galaxies and halos (not on saturated or bad pixels)
                where = source_map(clean, mask=f.ignore_mask)
                image, electrons, mask = inject_footprints(image, self.footprints, n=n_on, gain=f.meta["gain"],
                                                           rng=rng, saturation=saturation, where=where)
                cr_mask, cr_e = cr_mask | mask, cr_e + electrons
            image, electrons, mask = inject_footprints(image, self.footprints, n=int(n) - n_on, gain=f.meta["gain"],
                                                       rng=rng, saturation=saturation)
            cr_mask, cr_e = cr_mask | mask, cr_e + electrons
        if self.bright_tracks > 0:  # own random stream: the frames of runs without them are unchanged
            rng = np.random.default_rng([self.seed, 2750159, int(i)])
            n = rng.poisson(self.bright_tracks * np.prod(self.shape) / 1024**2)
            sky_noise_e = np.sqrt(max(f.meta["sky_adu"] - config.bias_adu, 0.0) * config.gain + config.readnoise_e**2)
            cap = 0.7 * config.saturation_adu * config.gain
            threshold = config.cr_threshold_e if config.cr_threshold_e is not None else 0.5 * config.readnoise_e
            tracks = bright_tracks(self.shape, n=int(n), rng=rng, model=config.cr_model, threshold_e=threshold,
                                   peak_e=(min(100 * sky_noise_e, cap), min(2000 * sky_noise_e, cap)))
            image = inject_cosmic_rays(image, tracks.electrons, gain=f.meta["gain"], saturation=saturation)
            cr_mask, cr_e = cr_mask | tracks.mask, cr_e + tracks.electrons
            # A track pixel that reached saturation (on a source, or the Landau tail on a diagonal) is a
            # saturated straight line, like a bleed trail (a negative): ignored, as CR hits on saturated
            # pixels are.
            saturated_tracks = tracks.mask & (image >= saturation)
        else:
            saturated_tracks = False
        # CR pixels whose charge is below the pixel's own noise (sky + source + read noise) look
        # exactly like noise: by default they are left out of the loss (faint_crs chooses).
        noise_e = np.sqrt(np.maximum((clean - config.bias_adu) * config.gain, 0) + config.readnoise_e**2)
        faint = cr_mask & (cr_e < FAINT_CR_SNR * noise_e)
        if self.faint_crs == "negative":  # labelled not-CR: only pixels with visible charge are CRs
            cr_mask, faint = cr_mask & ~faint, np.zeros_like(faint)
        elif self.faint_crs == "positive":  # labelled CR, like every other CR pixel
            faint = np.zeros_like(faint)
        ignore = (f.ignore_mask & ~(f.saturated_mask & ~cr_mask)) | faint | saturated_tracks
        if kind == "integer":  # raw data: whole ADU
            image, clean = np.round(image), np.round(clean)
        return image, cr_mask, ignore, clean


def _add_source(image, clean, source_e, *, rng, gain):
    """``image`` and ``clean`` (ADU) plus a noiseless source (e-) with its photon noise, alike in both."""
    source_e = source_e + rng.standard_normal(source_e.shape, dtype=np.float32) * np.sqrt(source_e)
    source_adu = source_e * np.float32(1 / gain)
    return image + source_adu, clean + source_adu


class FITSFrames(_CachedFrames):
    """CCD frames from a directory of FITS files (each CCD extension is a frame).

    A file with a ``CRMASK`` extension is labelled (its first other image extension, with an
    optional ``IGNORE`` extension). Any other file holds clean frames: each CCD gets simulated
    CRs injected (gain, read noise, saturation and exposure time from its header), so every label
    is exact. Frames are keyed ``(path, extension)``; the exposure id is the file.

    DECam Community Pipeline folders: a ``*_ooi_*`` image's data-quality map ``*_ood_*`` (the same
    name with ``ood``) gives its ignore mask (bad, saturated, bleed, real CR pixels:
    :func:`kercr.data.augment.decam_dq_ignore`), and the ``*_ood_*`` and ``*_oow_*`` (weight) files
    themselves are not frames.
    """

    def __init__(self, directory, *, seed, cr_rate_scale=1.0, median_weights=False, normalization=None, cache=2,
                 footprints=None, rim_weight=1.0):
        super().__init__(seed=seed, median_weights=median_weights, normalization=normalization, cache=cache,
                         rim_weight=rim_weight)
        self.footprints = footprints
        directory = Path(directory)
        fits_files = sorted(p for p in directory.iterdir()
                            if p.name.lower().endswith(FITS_SUFFIXES) and not p.name.startswith("."))
        self.paths = [p for p in fits_files if not _CP_PLANE.search(p.name)]
        if len(self.paths) < len(fits_files):
            logger.info("%s: %d DECam CP data-quality / weight files (*_ood_*, *_oow_*) are not frames; the "
                        "data-quality maps give their images' ignore masks", directory,
                        len(fits_files) - len(self.paths))
        if not self.paths:
            raise KercrDataError(
                f"{directory}: no FITS files (*.fits, *.fits.fz, *.fz) found; point --data at a directory "
                "of clean CCD frames, of files with a CRMASK extension, or of kercr-prepare shards."
            )
        self.cr_rate_scale = float(cr_rate_scale)
        self._frames, self._warned = {}, set()
        for path in self.paths:
            listed = list_ccd_extensions(path)
            names = [n for _, n in listed]
            images = [n for n in names if n not in ("CRMASK", "IGNORE")]
            if not images:
                raise KercrDataError(f"{path}: no 2-D image extension (only {names or 'tables'}); training needs "
                                     "CCD images. Remove the file from --data, or add its image.")
            self._frames[str(path)] = images[:1] if "CRMASK" in names else [idx for idx, _ in listed]

    def exposure_ids(self, n=None) -> list[str]:
        return [str(p) for p in self.paths]

    def frames_of(self, exposure_id) -> list:
        return [(exposure_id, ext) for ext in self._frames[exposure_id]]

    def _make(self, key):
        path, ext = key
        names = [n for _, n in list_ccd_extensions(path)]
        ccd = read_ccd(path, ext)
        self._detectors[key] = (ccd.gain, ccd.readnoise)  # unknown stays unknown: the noise is then measured
        if "CRMASK" in names:
            mask = read_ccd(path, "CRMASK").data > 0
            ignore = read_ccd(path, "IGNORE").data > 0 if "IGNORE" in names else np.zeros_like(mask)
            return ccd.data, mask, ignore, ccd.data
        if ccd.exptime is None:
            raise KercrDataError(f"{path}[{ext}]: no EXPTIME in the header, needed to simulate CRs; add it.")
        for value, card, assumed in ((ccd.gain, "GAIN", 4.0), (ccd.readnoise, "RDNOISE", 7.0)):
            if value is None and (path, ext, card) not in self._warned:  # once per frame, not per epoch
                self._warned.add((path, ext, card))
                logger.warning("%s[%s]: no %s in the header; assuming DECam's %g (add the card for other imagers)",
                               path, ext, card, assumed)
        # Seeded by the file and extension names through a stable hash (Python's hash() of a str
        # changes from one process to the next): the same CRs in every run, resume and worker.
        rng = np.random.default_rng([self.seed, zlib.crc32(f"{Path(path).name}[{ext}]".encode())])
        base = CosmicRayModel()
        ex = make_training_example(
            ccd.data, gain=ccd.gain or 4.0, readnoise_e=ccd.readnoise or 7.0, exptime=ccd.exptime,
            saturation_adu=ccd.saturation, rng=rng, sky_scale_range=(0.0, 0.0), footprints=self.footprints,
            ignore_mask=_data_quality_ignore(path, ext, ccd.data.shape),
            cr_model=dataclasses.replace(base, rate_per_s=base.rate_per_s * self.cr_rate_scale),
        )
        return ex.image_adu, ex.cr_mask, ex.ignore_mask, ccd.data


#: DECam Community Pipeline planes beside an ``_ooi_`` image: data quality (``ood``) and weight (``oow``).
_CP_PLANE = re.compile(r"_oo[dw]_", re.IGNORECASE)


def _data_quality_ignore(path, ext, shape):
    """The ignore mask of a DECam CP ``*_ooi_*`` image from its ``*_ood_*`` data-quality map, or None
    when there is none beside it."""
    name = Path(path).name
    if "_ooi_" not in name.lower():
        return None
    i = name.lower().index("_ooi_")
    dq_path = Path(path).with_name(f"{name[:i]}_ood_{name[i + 5:]}")
    if not dq_path.exists():
        return None
    dq = read_ccd(dq_path, ext).data
    if dq.shape != shape:
        raise KercrDataError(f"{dq_path}[{ext}] has shape {dq.shape}, its image {path} {shape}; pass the data-quality "
                             "map of that image, or move it out of --data.")
    return decam_dq_ignore(np.nan_to_num(dq).astype(np.int64))


def _positive(value) -> bool:
    """True if ``value`` reads as a finite positive number."""
    try:
        return bool(np.isfinite(float(value)) and float(value) > 0)
    except (TypeError, ValueError):
        return False


def load_footprints(path) -> list[np.ndarray]:
    """Real CR footprints (stamps in electrons) from a footprint table or a folder of darks.

    Parameters
    ----------
    path : path
        A FITS footprint table in the format of imSim's ``cosmic_rays_itl_2017.fits`` (columns
        ``fp_id``, ``x0``, ``y0``, ``pixel_values``), or a directory of bias-subtracted dark
        frames from which footprints are harvested (:func:`kercr.data.footprints.extract_footprints`,
        gain from each header).
    """
    path = Path(path)
    if path.is_dir():
        stamps = []
        for f in sorted(p for p in path.iterdir() if p.name.lower().endswith(FITS_SUFFIXES)):
            for ccd in iter_ccds(f):
                stamps += extract_footprints(ccd.data, gain=ccd.gain or 1.0)
    else:
        stamps = read_footprint_table(path)
    if not stamps:
        raise KercrDataError(f"{path}: no CR footprints found; pass a footprint table or a folder of dark frames.")
    return stamps


def _stack(patches):
    """Per-array patch lists ``(*inputs, mask, weight)`` -> ``(x, y, w)`` batches, float32: ``x``
    (B, P, P, len(inputs)) with the inputs as channels in order, ``y`` and ``w`` (B, P, P, 1)."""
    *inputs, y, w = (np.ascontiguousarray(np.stack(list(p))[..., None], dtype=np.float32) for p in patches)
    return (inputs[0] if len(inputs) == 1 else np.concatenate(inputs, axis=-1)), y, w


def frame_keys(source, exposure_ids):
    if hasattr(source, "frames_of"):
        return [k for e in exposure_ids for k in source.frames_of(e)]
    return list(exposure_ids)


def patch_batches(source, exposure_ids, *, n_batches, batch_size, patch_size, seed):
    """A fixed list of ``(x, y, w)`` batches cut from the frames of ``exposure_ids`` (validation);
    frames of several input maps give ``x`` one channel per map."""
    keys = frame_keys(source, exposure_ids)
    n = n_batches * batch_size
    per_frame = -(-n // len(keys))
    patches = []
    for k, key in enumerate(keys):
        cut, _ = make_patches(*source.frame(key), patch_size=patch_size, n_patches=per_frame,
                              mode="random", seed=np.random.default_rng([seed, 1000, k]))
        patches.extend(zip(*cut))
    patches = patches[:n]
    return [_stack(zip(*patches[b * batch_size:(b + 1) * batch_size])) for b in range(len(patches) // batch_size)]
