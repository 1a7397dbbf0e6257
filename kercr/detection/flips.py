"""The four-flip average where it can change the mask: flips over candidate windows.

With ``tta`` kercr averages each pixel's score over the four flips of its tile (as is, rows
flipped, columns flipped, both; :func:`kercr.data.augment.flip_average`), which costs four network
passes. Almost every pixel of a CCD is sky or a source far below any CR threshold, and there the
three flipped views cannot lift the average over the threshold: a pixel whose single view scores
p < 0.003 (a logit under -5.8) would need the other three to average a logit over 2.7 (p > 0.94)
to reach the shipped model's threshold (logit 0.60). The gate is that low for the ranking at high
recall: int8 probabilities come in steps of 1/256, and 0.003 takes every pixel above zero, so
precision at 95 % recall, whose threshold lies near p = 0.01, is unchanged too. So
:func:`add_flips` runs the flipped views only where they can matter:

1. The identity view of the whole frame is predicted as usual (:func:`~kercr.detection.tiling.predict_tiled`).
2. *Candidates* are pixels whose single-view score reaches the gate (``tta_gate``, a probability;
   default :data:`DEFAULT_TTA_GATE`, or the model card's ``"tta_gate"``).
3. Each tile's core is cut into blocks of :data:`BLOCK` pixels (on the network's pooling grid);
   the blocks holding a candidate are predicted flipped three ways, each crop carrying the tile
   margin (the receptive-field radius) on every side, so the crop's core sees exactly what the
   tile's core saw. The crops run side by side in mosaics of the tile's shape (one network call
   for hundreds of them). Where a tile's candidate blocks would fill a mosaic of their own (a
   crowded field, a galaxy), the whole tile is flipped instead.
4. On those blocks the score becomes the four-view mean, added in
   :func:`~kercr.data.augment.flip_average`'s order: equal to the average every pixel gets with
   ``tta_gate=0`` (to the bit with LiteRT, within float32 round-off with Keras). Elsewhere it
   stays the single view's, which is below the gate.

The mask at the threshold is then the full average's (a pixel outside the windows would need the
improbable case above); probabilities under the gate are single-view values. On the seeded
2048 x 4096 synthetic CCD of ``benchmarks/bench_paired.py``, 2.3 % of the pixels lie in candidate
windows at the default gate, and a detection takes 4.4 s against 8.4 s with every pixel flipped
and 2.2 s without flips (BENCHMARKS.md, "Flips where they matter").
Models whose output is not local (GroupNormalization, attention, a fixed input) depend on the
whole tile, so they always get the full average.
"""

from __future__ import annotations

import math

import numpy as np

from kercr.data.augment import flipped_views
from kercr.detection.loading import round_up
from kercr.detection.tiling import axis_plan

__all__ = ["BLOCK", "DEFAULT_TTA_GATE", "add_flips", "gate_score"]

#: Default gate: pixels whose single-view CR probability reaches it get the four-flip average.
DEFAULT_TTA_GATE = 0.003
#: Side (pixels) of the candidate blocks; rounded up to the network's pooling multiple.
BLOCK = 8


def gate_score(gate: float, *, logits: bool) -> float:
    """The gate as a score: the logit of ``gate`` when the scores are logits, else ``gate`` itself."""
    if logits:
        return math.log(gate) - math.log1p(-gate)
    return float(gate)


def add_flips(normalized, score, predict, *, gate, tile, margin, multiple, batch_size, block=BLOCK) -> float:
    """Average ``score`` over the four flips where it reaches ``gate``; returns the averaged fraction.

    Parameters
    ----------
    normalized : numpy.ndarray, float32, shape (ny, nx)
        The normalized frame :func:`~kercr.detection.tiling.predict_tiled` predicted.
    score : numpy.ndarray, float32, shape (ny, nx)
        Its single-view scores from ``predict_tiled(normalized, predict, tile=tile, margin=margin,
        multiple=multiple, fixed=False, ...)``; modified in place.
    predict : callable
        The single-view predictor ``score`` came from ((B, H, W) -> (B, H, W)).
    gate : float
        Score (logit or probability, as ``score``) from which a pixel is a candidate.
    tile, margin, multiple : int
        The tiling ``score`` was made with (pixels).
    batch_size : int
        Tiles (or mosaics of crops, each of a tile's shape) per network call.
    block : int
        Candidate block side, pixels.

    Returns
    -------
    float
        Fraction of the frame's pixels that now hold the four-view average.
    """
    ny, nx = score.shape
    cy, core_y, ty, pad_y, after_y = axis_plan(ny, tile, margin, multiple, False)
    cx, core_x, tx, pad_x, after_x = axis_plan(nx, tile, margin, multiple, False)
    by = min(round_up(block, multiple), core_y)
    bx = min(round_up(block, multiple), core_x)
    per_mosaic = (ty // (by + 2 * margin)) * (tx // (bx + 2 * margin))
    # Blocks tile each tile's core from its origin; a core's last block may be cut short (its crop
    # still has the full size, reaching into the next core, whose pixels it does not write).
    ys = [(y, min(y + by, y0 + core_y, ny)) for y0 in range(0, min(cy * core_y, ny), core_y)
          for y in range(y0, min(y0 + core_y, ny), by)]
    xs = [(x, min(x + bx, x0 + core_x, nx)) for x0 in range(0, min(cx * core_x, nx), core_x)
          for x in range(x0, min(x0 + core_x, nx), bx)]
    rows = np.stack([(score[y:y_end] >= gate).any(axis=0) for y, y_end in ys])  # (block rows, nx)
    hit = np.stack([rows[:, x:x_end].any(axis=1) for x, x_end in xs], axis=1)  # (block rows, block cols)
    del rows
    tiles, blocks = [], []
    row_tile = np.array([y // core_y for y, _ in ys])
    col_tile = np.array([x // core_x for x, _ in xs])
    for i in range(cy):
        for j in range(cx):
            a, b = np.nonzero(row_tile == i)[0], np.nonzero(col_tile == j)[0]
            sub = hit[np.ix_(a, b)]
            if sub.sum() >= per_mosaic:  # the tile's crops would fill a tile-sized mosaic or more
                y0, x0 = i * core_y, j * core_x
                tiles.append((y0, x0, min(core_y, ny - y0), min(core_x, nx - x0)))
            else:
                for k, m in zip(*np.nonzero(sub)):
                    (y, y_end), (x, x_end) = ys[a[k]], xs[b[m]]
                    blocks.append((y, x, y_end - y, x_end - x))
    if not tiles and not blocks:
        return 0.0
    padded = np.pad(normalized, ((pad_y, after_y + by), (pad_x, after_x + bx)), mode="reflect")
    _average(padded, score, predict, tiles, (core_y, core_x), margin, batch_size)
    _average(padded, score, _in_mosaics(predict, (ty, tx), batch_size), blocks, (by, bx), margin,
             per_mosaic * batch_size)
    return sum(h * w for _, _, h, w in tiles + blocks) / score.size


def _in_mosaics(predict, shape, batch_size):
    """``predict`` for a stack of small crops, run as mosaics of ``shape`` (a tile's).

    The crops are laid side by side (the last mosaic's empty places and the strips left at the
    bottom and right are zeros). Each crop carries the receptive-field margin on every side and
    sits on the pooling grid (its sides are multiples), so its core is predicted exactly as if it
    were alone; a tile-shaped mosaic keeps the interpreter at the tiles' input shape (no
    reallocation), and one call runs hundreds of crops.
    """
    def run(crops):
        n, ch, cw = crops.shape
        ky, kx = shape[0] // ch, shape[1] // cw
        count = -(-n // (ky * kx))
        laid = np.zeros((count * ky * kx, ch, cw), np.float32)
        laid[:n] = crops
        mosaics = np.zeros((count, shape[0], shape[1]), np.float32)
        mosaics[:, :ky * ch, :kx * cw] = laid.reshape(count, ky, kx, ch, cw).transpose(0, 1, 3, 2, 4).reshape(
            count, ky * ch, kx * cw)
        out = np.concatenate([np.asarray(predict(mosaics[i:i + batch_size]), np.float32)
                              for i in range(0, count, batch_size)])
        out = out[:, :ky * ch, :kx * cw].reshape(count, ky, ch, kx, cw).transpose(0, 1, 3, 2, 4)
        return out.reshape(count * ky * kx, ch, cw)[:n]

    return run


def _average(padded, score, predict, regions, core, margin, per_call):
    """Replace ``score`` on ``regions`` (``(y, x, height, width)``, at most ``core`` in size) by the
    four-view mean of the ``core``-sized crops (plus ``margin`` on every side) at their origins."""
    hy, hx = core
    for start in range(0, len(regions), per_call):
        chunk = regions[start:start + per_call]
        crops = np.stack([padded[y:y + hy + 2 * margin, x:x + hx + 2 * margin] for y, x, _, _ in chunk])
        total = np.zeros((len(chunk), hy, hx), np.float32)
        for (y, x, h, w), t in zip(chunk, total):
            t[:h, :w] = score[y:y + h, x:x + w]
        views = 1
        for view in flipped_views(predict, crops):
            total += view[:, margin:margin + hy, margin:margin + hx]
            views += 1
        total /= np.float32(views)
        for (y, x, h, w), t in zip(chunk, total):
            score[y:y + h, x:x + w] = t[:h, :w]
