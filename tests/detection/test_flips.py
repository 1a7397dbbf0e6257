"""kercr.detection.flips: the four flips on candidate windows give the full average where it matters."""

from __future__ import annotations

import numpy as np
import pytest

from kercr.data import NormalizationConfig
from kercr.detection import LoadedModel, detect
from kercr.detection.flips import DEFAULT_TTA_GATE, add_flips, gate_score
from kercr.detection import resolve_tta_gate


def _frame_with_crs(shape=(333, 517), seed=11):
    """Sky, two stars and a few CR tracks and dots crossing tile borders (odd sides on purpose)."""
    rng = np.random.default_rng(seed)
    image = rng.normal(400.0, 9.0, shape).astype(np.float32)
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    for y, x in ((80, 120), (250, 400)):
        image += (3000.0 * np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / 8.0)).astype(np.float32)
    image[40:200, 130] += 250.0
    image[300, 10:300] += 180.0
    for y, x in rng.integers(5, min(shape) - 5, (12, 2)):
        image[y, x] += rng.uniform(60.0, 400.0)
    return image


@pytest.mark.parametrize("runtime", ["tflite-int8", "keras"])
def test_candidate_windows_give_the_full_average_and_the_same_mask(runtime):
    if runtime.startswith("tflite"):
        pytest.importorskip("ai_edge_litert")
    image = _frame_with_crs()
    full = detect(image, tta=True, tta_gate=0, runtime=runtime, tile=128, keep_logits=True)
    gated = detect(image, tta=True, runtime=runtime, tile=128, keep_logits=True)
    assert gated.tta_gate == DEFAULT_TTA_GATE and full.tta_gate == 0.0 and full.tta_fraction == 1.0
    assert 0.0 < gated.tta_fraction < 0.5 and full.n_tiles == gated.n_tiles > 4
    np.testing.assert_array_equal(gated.mask, full.mask)
    assert gated.n_cr_pixels > 200  # the tracks are found, so the windows were used
    # Every candidate pixel holds the four-flip mean: to the bit in LiteRT, within round-off in Keras.
    candidate = gated.logit >= gate_score(DEFAULT_TTA_GATE, logits=True)
    if runtime.startswith("tflite"):
        np.testing.assert_array_equal(gated.logit[candidate], full.logit[candidate])
    else:
        np.testing.assert_allclose(gated.logit[candidate], full.logit[candidate], atol=2e-5, rtol=0)
    # Elsewhere the score is the single view's: below the gate, and far below the threshold.
    assert (gated.logit[~candidate] < gate_score(DEFAULT_TTA_GATE, logits=True)).all()
    assert full.probability[~candidate].max() < gated.threshold


def test_a_crowded_tile_is_flipped_whole():
    """With every pixel a candidate, each tile's blocks would cost more than the tile: whole tiles, exact."""
    pytest.importorskip("ai_edge_litert")
    image = _frame_with_crs()[:200, :260]
    full = detect(image, tta=True, tta_gate=0, tile=128, keep_logits=True)
    # int8 probabilities never go below 1/512, so a gate under it makes every pixel a candidate.
    everywhere = detect(image, tta=True, tta_gate=1e-6, tile=128, keep_logits=True)
    assert everywhere.tta_fraction == 1.0
    np.testing.assert_array_equal(everywhere.logit, full.logit)


def test_add_flips_averages_exactly_the_candidates_blocks_with_their_own_pixels():
    """With the identity as the network, a block's four-view mean is (score + 3 x input) / 4 at its
    own pixels: any crop misplaced in the frame or in a mosaic, or flipped back wrongly, shows."""
    rng = np.random.default_rng(0)
    normalized = rng.normal(size=(100, 140)).astype(np.float32)
    score = np.full(normalized.shape, -10.0, np.float32)
    # The frame is two tiles of 120 x 90 (cores 100 x 70 plus 10-pixel margins); blocks of 8 from
    # each core's origin, so a core's last block is short: rows 96-99, columns 64-69.
    for y, x in ((3, 3), (98, 68), (50, 70)):
        score[y, x] = 1.0
    before = score.copy()
    calls = []

    def identity(x):
        calls.append(x.shape)
        return x.copy()

    fraction = add_flips(normalized, score, identity, gate=0.0, tile=128, margin=10, multiple=2, batch_size=4)
    regions = [(slice(0, 8), slice(0, 8)), (slice(96, 100), slice(64, 70)), (slice(48, 56), slice(70, 78))]
    expected = before.copy()
    for r in regions:
        expected[r] = (before[r] + 3 * normalized[r]) / 4
    np.testing.assert_allclose(score, expected, rtol=0, atol=1e-6)
    assert fraction == pytest.approx((64 + 24 + 64) / score.size)
    assert calls == [(1, 120, 90)] * 3  # three flips, each one mosaic of the tiles' shape
    untouched = np.full_like(score, -10.0)
    assert add_flips(normalized, untouched, identity, gate=0.0, tile=128, margin=10, multiple=2,
                     batch_size=4) == 0.0 and len(calls) == 3 and (untouched == -10.0).all()


def _carded(card, *, local=True, fixed_size=None):
    return LoadedModel(None, name="test-model", path=None, normalization=NormalizationConfig(),
                       normalization_source="default", threshold=0.5, threshold_source="card", card=card,
                       multiple=2, fixed_size=fixed_size, rf_radius=10, local=local)


def test_the_gate_is_the_callers_else_the_cards_and_non_local_models_flip_everything():
    assert resolve_tta_gate(None, _carded({})) == DEFAULT_TTA_GATE
    assert resolve_tta_gate(None, _carded({"tta_gate": 0.05})) == 0.05
    assert resolve_tta_gate(0.2, _carded({"tta_gate": 0.05})) == 0.2
    assert resolve_tta_gate(0, _carded({})) == 0.0
    assert resolve_tta_gate(0.05, _carded({}, local=False)) == 0.0  # GroupNorm / attention: whole tiles
    assert resolve_tta_gate(0.05, _carded({}, fixed_size=64)) == 0.0
    for bad in (1.0, -0.1, True, "0.1"):
        with pytest.raises(ValueError, match=r"pass a probability in \[0, 1\)"):
            resolve_tta_gate(bad, _carded({}))


def test_without_flips_there_is_no_gate(frame):
    pytest.importorskip("ai_edge_litert")
    plain = detect(frame.image_adu, tta=False)
    assert plain.tta_gate is None and plain.tta_fraction is None
