"""Exceptions raised by the kercr data core.

Every message names the file (when there is one), the problem and the fix, so a user can act on it
without reading the source.
"""

from __future__ import annotations

__all__ = ["KercrDataError", "FITSFileNotFoundError", "FITSFormatError", "UndetectableImageError"]


class KercrDataError(ValueError):
    """Bad input to the kercr data core (wrong shape, bad value, bad configuration)."""


class FITSFileNotFoundError(KercrDataError, FileNotFoundError):
    """A FITS file that kercr was asked to read does not exist."""


class FITSFormatError(KercrDataError):
    """A file exists but is not a usable FITS image (not FITS, no image data, not 2-D, ...)."""


class UndetectableImageError(KercrDataError):
    """An image with nothing to detect in: constant, every pixel ignored, or too few good pixels to
    estimate its noise (a dead amplifier, an all-NaN or fully saturated CCD, a 1-pixel strip).
    ``kercr-detect`` writes an empty mask marked ``KCRSTAT`` for such a CCD of a multi-CCD file."""
