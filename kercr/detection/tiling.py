"""Tiling a normalized frame: overlapping tiles, predicted in batches, their cores stitched.

The frame is reflect-padded by the overlap margin on every side (and up to the tile grid), cut
into overlapping tiles of equal shape, and each tile's central part (the tile minus ``overlap``
pixels on each side) is kept; the kept parts tile the frame exactly, so there is no averaging and
no seam. With ``overlap`` at least the network's receptive-field radius (the default) and tile
origins on the network's pooling grid, the tiled prediction equals a prediction of the whole
padded frame in one piece up to float32 round-off (~1e-6).
"""

from __future__ import annotations

import logging
import math
import numbers

import numpy as np

from kercr.detection.loading import LoadedModel, round_up

__all__ = ["DEFAULT_TILE", "DEFAULT_TFLITE_TILE", "axis_plan", "check_batch_size", "check_tiling", "predict_tiled"]

logger = logging.getLogger(__name__)

#: Default tile side (pixels) of the convolutional models in Keras; see benchmarks/bench_detect.py.
DEFAULT_TILE = 512
#: Default tile side (pixels) in LiteRT: the same masks as 512 (tiles do not change the output),
#: no slower, and the shipped model's peak RSS on a 2k x 4k CCD falls from 0.61 to 0.48 GB
#: (BENCHMARKS.md, "A light detection runtime").
DEFAULT_TFLITE_TILE = 384


def axis_plan(n: int, tile: int, margin: int, multiple: int, fixed: bool):
    """Tiles along one axis: (number, core, tile size, pad before, pad after)."""
    core_max = tile - 2 * margin
    count = max(1, math.ceil(n / core_max))
    # Spread the frame evenly over the tiles instead of padding the last one with reflections.
    core = core_max if fixed else min(core_max, round_up(math.ceil(n / count), multiple))
    size = core + 2 * margin
    return count, core, size, margin, count * core + margin - n


def predict_tiled(normalized, predict, *, tile, margin, multiple, fixed, batch_size):
    """``predict`` over overlapping tiles of a normalized (ny, nx) frame, their cores stitched.

    Returns ``(score, (tile height, tile width), number of tiles)``; ``score`` is float32 (ny, nx).
    """
    ny, nx = normalized.shape
    cy, core_y, ty, pby, pay = axis_plan(ny, tile, margin, multiple, fixed)
    cx, core_x, tx, pbx, pax = axis_plan(nx, tile, margin, multiple, fixed)
    padded = np.pad(normalized, ((pby, pay), (pbx, pax)), mode="reflect")
    out = np.empty((cy * core_y, cx * core_x), np.float32)
    origins = [(i * core_y, j * core_x) for i in range(cy) for j in range(cx)]
    for start in range(0, len(origins), batch_size):
        chunk = origins[start:start + batch_size]
        batch = np.stack([padded[y:y + ty, x:x + tx] for y, x in chunk])
        prob = predict(batch)
        for (y, x), p in zip(chunk, prob):
            out[y:y + core_y, x:x + core_x] = p[margin:margin + core_y, margin:margin + core_x]
    return out[:ny, :nx], (ty, tx), len(origins)


def check_batch_size(batch_size) -> None:
    """ValueError for a ``batch_size`` (tiles per network call) below 1; None is the runtime's default."""
    if batch_size is not None and int(batch_size) < 1:
        raise ValueError(f"batch_size={batch_size} must be >= 1 (or None: 4 with TFLite, 1 with Keras).")


def check_tiling(loaded: LoadedModel, tile, overlap, runtime="keras"):
    """``(tile, margin)`` in pixels for ``loaded``: the caller's values checked, or the defaults
    (the default tile depends on the ``runtime``, ``"keras"`` or a ``"tflite-*"`` one)."""
    multiple = loaded.multiple
    for key, value in (("tile", tile), ("overlap", overlap)):
        if value is not None and (isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral)):
            raise ValueError(f"{key}={value!r} must be a whole number of pixels (None: the model's default).")
    if loaded.fixed_size is not None:
        if tile is not None and int(tile) != loaded.fixed_size:
            raise ValueError(f"{loaded.name} takes a fixed {loaded.fixed_size} x {loaded.fixed_size} input; "
                             f"tile={tile} is not possible. Leave tile=None.")
        tile = loaded.fixed_size
        margin = loaded.default_overlap if overlap is None else int(overlap)
        if not 0 <= margin < tile // 2:
            raise ValueError(f"overlap={overlap} must be in [0, {tile // 2}) pixels for a {tile}-pixel tile.")
        return tile, margin
    margin = loaded.default_overlap if overlap is None else round_up(int(overlap), multiple)
    if overlap is not None and int(overlap) < 0:
        raise ValueError(f"overlap={overlap} must be >= 0 pixels.")
    if overlap is not None and margin < loaded.rf_radius:
        logger.warning("overlap %d px is below the receptive-field radius %d px of %s: tiles will show seams.",
                       margin, loaded.rf_radius, loaded.name)
    default = DEFAULT_TILE if runtime == "keras" else DEFAULT_TFLITE_TILE
    tile = default if tile is None else round_up(int(tile), multiple)
    if tile - 2 * margin < multiple:
        raise ValueError(f"tile={tile} leaves no core after an overlap of {margin} px on each side; pass "
                         f"tile >= {2 * margin + multiple} or a smaller overlap.")
    return tile, margin
