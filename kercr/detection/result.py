"""The result of :func:`kercr.detect`: mask, probability, provenance and the cleaned image."""

from __future__ import annotations

import dataclasses

import numpy as np
from astropy.io import fits

from kercr._version import __version__
from kercr.data.cleaning import dilate_mask
from kercr.data.fits_write import ascii_card
from kercr.data.normalization import NormalizationParams

__all__ = ["DetectionResult"]


@dataclasses.dataclass(frozen=True, eq=False)
class DetectionResult:
    """CR detection of one frame.

    Attributes
    ----------
    probability : numpy.ndarray, shape (ny, nx), float32
        CR probability in [0, 1]; 0 on ignored pixels.
    mask : numpy.ndarray, shape (ny, nx), bool
        ``probability >= threshold``; False on ignored pixels.
    threshold : float
        Probability threshold used.
    ignored : numpy.ndarray, shape (ny, nx), bool
        Pixels excluded: non-finite, saturated (``exclude_saturated``) and the caller's mask.
    model_name : str
        ``"default"``, the ``.keras`` path, or ``"<instance NAME>"``.
    runtime : str
        The runtime that ran (``"auto"`` resolved).
    tta : bool
        Whether the prediction is the average over the four flips of each tile.
    tta_gate : float or None
        With ``tta``: the single-view probability from which a pixel's window got the four flips
        (0: every pixel did; :mod:`kercr.detection.flips`); None without ``tta``.
    tta_fraction : float or None
        With ``tta``: the fraction of the frame's pixels whose score is the four-flip mean (the
        others keep their single view's, below the gate); None without ``tta``.
    tile : tuple of int
        Tile shape (height, width) in pixels actually predicted.
    overlap : int
        Margin in pixels discarded on each side of every tile.
    n_tiles : int
        Number of tiles predicted.
    normalization : NormalizationParams
        Constants and the frame's measured sky and noise (image units).
    gain, readnoise, saturation : float or None
        e-/ADU, electrons, image units: the values used (argument, else header, else None).
    logit_threshold : float or None
        The logit the mask was cut at, when the runtime gives logits (else None).
    logit : numpy.ndarray or None
        float32 logits of :attr:`probability` (ignored pixels: the lowest float32), with ``keep_logits=True`` and
        a runtime that gives logits (Keras, or any with ``tta``); else None. They rank confident
        pixels that the float32 probability rounds to 1.0 alike.
    clean : numpy.ndarray or None
        With ``detect(..., clean=METHOD)``: the image as float32 in its own units, the pixels of
        ``dilated_mask(clean_dilate)`` replaced by :func:`kercr.data.clean_image` (every other
        pixel, NaN and ignored ones included, as the input bit for bit); else None.
    clean_method : str or None
        The cleaning method (``"median"``, ``"mean"``, ``"idw"``), or None.
    clean_dilate : int
        Pixels the mask was grown by (3 x 3 square) before cleaning.
    """

    probability: np.ndarray
    mask: np.ndarray
    threshold: float
    ignored: np.ndarray
    model_name: str
    runtime: str
    tile: tuple
    overlap: int
    n_tiles: int
    normalization: NormalizationParams
    gain: float | None = None
    readnoise: float | None = None
    saturation: float | None = None
    tta: bool = False
    tta_gate: float | None = None
    tta_fraction: float | None = None
    logit_threshold: float | None = None
    logit: np.ndarray | None = None
    clean: np.ndarray | None = None
    clean_method: str | None = None
    clean_dilate: int = 0
    _ccd: object = dataclasses.field(default=None, repr=False)  # the CCDData detected, for to_ccddata

    @property
    def n_cr_pixels(self) -> int:
        """Number of flagged pixels."""
        return int(np.count_nonzero(self.mask))

    def dilated_mask(self, iterations: int = 1) -> np.ndarray:
        """:attr:`mask` grown by ``iterations`` pixels (3 x 3 structuring element), never into ignored pixels."""
        return dilate_mask(self.mask, iterations) & ~self.ignored

    def to_ccddata(self):
        """The cleaned frame as a new ``CCDData``, as ccdproc's ``cosmicray_lacosmic`` returns it.

        Needs ``kercr.detect(ccd, clean=METHOD)`` on an ``astropy.nddata.CCDData``.

        Returns
        -------
        astropy.nddata.CCDData
            A copy of the input: ``data`` is :attr:`clean` (float32, the input's unit); ``mask``
            is the input's mask OR the replaced pixels (``dilated_mask(clean_dilate)``); the
            uncertainty, WCS and flags are the input's (the uncertainty of replaced pixels is not
            recomputed: the mask flags them); the header gains ``KCRVER`` (kercr version),
            ``KCRMODEL``, ``KCRTHR`` (threshold), ``KCRCLEAN`` (method), ``KCRCDIL`` (dilation,
            pixels) and ``KCRNCLN`` (pixels replaced). The input is not modified.

        Raises
        ------
        ValueError
            No cleaned image (``clean=None``), or the input was not a ``CCDData``.
        """
        if self.clean is None:
            raise ValueError("this detection has no cleaned image; run kercr.detect(ccd, clean='median') "
                             "(or 'mean', 'idw') first.")
        if self._ccd is None:
            raise ValueError("to_ccddata needs the detection of an astropy CCDData; use result.clean for other "
                             "inputs, or detect CCDData(image, unit=...) instead.")
        out = self._ccd.copy()
        out.data = self.clean.copy()
        replaced = self.dilated_mask(self.clean_dilate)
        out.mask = replaced if out.mask is None else np.asarray(out.mask, dtype=bool) | replaced
        cards = {
            "KCRVER": (__version__, "kercr version"),
            "KCRMODEL": (ascii_card(self.model_name)[-60:], "kercr model"),
            "KCRTHR": (float(self.threshold), "CR probability threshold"),
            "KCRCLEAN": (self.clean_method, "kercr CR cleaning method"),
            "KCRCDIL": (int(self.clean_dilate), "CR mask dilation before cleaning, pixels"),
            "KCRNCLN": (int(replaced.sum()), "pixels replaced by cleaning"),
        }
        is_header = isinstance(out.meta, fits.Header)
        for key, (value, comment) in cards.items():
            out.meta[key] = (value, comment) if is_header else value
        return out
