"""Metrics: streaming Keras metrics and exact numpy evaluation against brute force."""

import keras
import numpy as np
import pytest

from kercr.metrics import (
    DiceCoefficient,
    PrecisionAtRecall,
    TPRAtFPR,
    best_dice,
    dice_score,
    pr_curve,
    precision_at_recall,
    roc_curve,
    threshold_at_fpr,
    tpr_at_fpr,
)


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-np.asarray(z, dtype=np.float64)))


# Hand case: 10 non-CR pixels, 4 CR pixels, scores as logits. One negative ties with the lowest
# positive at logit 3. ROC vertices: (0, 1/4), (0, 2/4), (0, 3/4), then the tie -> (1/10, 1).
NEG_LOGITS = np.array([-9, -8, -7, -6, -5, -4, -3, -2, -1, 3], dtype=np.float64)
POS_LOGITS = np.array([3, 4, 5, 6], dtype=np.float64)
HAND_TRUE = np.r_[np.zeros(10), np.ones(4)].astype(bool)
HAND_SCORE = _sigmoid(np.r_[NEG_LOGITS, POS_LOGITS]).astype(np.float32)


# ------------------------------------------------------------------ brute-force references
def _brute_roc(y, s):
    y = y.astype(bool)
    fpr, tpr, thr = [0.0], [0.0], [np.inf]
    for t in np.unique(s)[::-1]:
        pred = s >= t
        tpr.append(np.sum(pred & y) / np.sum(y))
        fpr.append(np.sum(pred & ~y) / np.sum(~y))
        thr.append(t)
    return np.array(fpr), np.array(tpr), np.array(thr)


def _brute_tpr_at_fpr(y, s, target):
    fpr, tpr, _ = _brute_roc(y, s)
    i = max(j for j in range(len(fpr)) if fpr[j] <= target)
    if i == len(fpr) - 1:
        return tpr[i]
    return tpr[i] + (tpr[i + 1] - tpr[i]) * (target - fpr[i]) / (fpr[i + 1] - fpr[i])


def _brute_precision_at_recall(y, s, target):
    y = y.astype(bool)
    for t in np.unique(s)[::-1]:
        pred = s >= t
        if np.sum(pred & y) / np.sum(y) >= target:
            return np.sum(pred & y) / np.sum(pred)
    raise AssertionError("unreachable")


def _brute_best_dice(y, s):
    y = y.astype(bool)
    best, best_t = -1.0, None
    for t in np.unique(s)[::-1]:
        pred = s >= t
        d = 2 * np.sum(pred & y) / (np.sum(pred) + np.sum(y))
        if d > best:
            best, best_t = d, t
    return best, best_t


def _random_case(seed, n=3000, decimals=2):
    rng = np.random.default_rng(seed)
    y = rng.random(n) < 0.1
    s = np.where(y, rng.normal(1.0, 1.0, n), rng.normal(-1.0, 1.0, n))
    s = np.round(_sigmoid(s), decimals)  # rounding creates many ties
    return y, s


# ------------------------------------------------------------------ numpy functions
def test_hand_case_tpr_threshold_precision():
    assert tpr_at_fpr(HAND_TRUE, HAND_SCORE, 0.05) == pytest.approx(0.875)
    assert tpr_at_fpr(HAND_TRUE, HAND_SCORE, 0.0) == pytest.approx(0.75)
    assert tpr_at_fpr(HAND_TRUE, HAND_SCORE, 0.1) == pytest.approx(1.0)
    t = threshold_at_fpr(HAND_TRUE, HAND_SCORE, 0.05)
    assert HAND_SCORE[-1] > t > HAND_SCORE[9]  # just above the tie at logit 3
    assert np.sum(HAND_SCORE[HAND_TRUE] >= t) == 3 and np.sum(HAND_SCORE[~HAND_TRUE] >= t) == 0
    # recall 0.95 of 4 -> all 4 CRs -> threshold at the tie: TP 4, FP 1.
    assert precision_at_recall(HAND_TRUE, HAND_SCORE, 0.95) == pytest.approx(0.8)
    assert precision_at_recall(HAND_TRUE, HAND_SCORE, 0.5) == pytest.approx(1.0)
    # Best Dice: at logit 4, TP 3 FP 0 -> 6/7; at the tie (logit 3), TP 4 FP 1 -> 8/9 wins.
    d, thr = best_dice(HAND_TRUE, HAND_SCORE)
    assert d == pytest.approx(8 / 9)
    assert thr == pytest.approx(HAND_SCORE[9])


def test_hand_case_roc_curve():
    fpr, tpr, thr = roc_curve(HAND_TRUE, HAND_SCORE)
    np.testing.assert_allclose(tpr[:5], [0, 0.25, 0.5, 0.75, 1.0])
    np.testing.assert_allclose(fpr[:5], [0, 0, 0, 0, 0.1])
    assert fpr[-1] == 1.0 and tpr[-1] == 1.0 and thr[0] == np.inf
    assert len(fpr) == 14  # 13 distinct scores + the origin


def test_dice_score_hand_case_and_ignore():
    y = np.array([[1, 1, 0], [0, 0, 0], [0, 1, 0]], bool)
    pred = np.array([[1, 0, 1], [0, 0, 0], [0, 1, 1]], bool)
    assert dice_score(y, pred) == pytest.approx(2 * 2 / (3 + 4))
    ignore = np.zeros_like(y)
    ignore[2, 2] = True  # drop one false positive
    assert dice_score(y, pred, ignore=ignore) == pytest.approx(4 / 6)
    assert dice_score(np.zeros((2, 2)), np.zeros((2, 2))) == 1.0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_against_brute_force_with_ties(seed):
    y, s = _random_case(seed)
    fpr, tpr, thr = roc_curve(y, s)
    bf, bt, bthr = _brute_roc(y, s)
    np.testing.assert_allclose(fpr, bf, atol=1e-12)
    np.testing.assert_allclose(tpr, bt, atol=1e-12)
    np.testing.assert_array_equal(thr, bthr)
    for target in (0.0, 1e-3, 0.01, 0.037, 0.2, 0.5, 1.0):
        assert tpr_at_fpr(y, s, target) == pytest.approx(
            _brute_tpr_at_fpr(y, s, target), abs=1e-6
        )
        t = threshold_at_fpr(y, s, target)
        pred = s >= t
        assert np.sum(pred & ~y) / np.sum(~y) <= target
        feasible = bt[bf <= target].max()
        assert np.sum(pred & y) / np.sum(y) == pytest.approx(feasible, abs=1e-12)
    for target in (0.1, 0.5, 0.95, 1.0):
        assert precision_at_recall(y, s, target) == pytest.approx(
            _brute_precision_at_recall(y, s, target), abs=1e-6
        )
    d, t = best_dice(y, s)
    bd, btt = _brute_best_dice(y, s)
    assert d == pytest.approx(bd, abs=1e-12) and t == btt
    precision, recall, pthr = pr_curve(y, s)
    pred_counts = np.array([np.sum(s >= v) for v in pthr])
    tp_counts = np.array([np.sum((s >= v) & y) for v in pthr])
    np.testing.assert_allclose(precision, tp_counts / pred_counts, atol=1e-12)
    np.testing.assert_allclose(recall, tp_counts / y.sum(), atol=1e-12)


def test_ignore_excludes_pixels():
    y, s = _random_case(5)
    rng = np.random.default_rng(55)  # not 5: that stream drew the labels
    ignore = rng.random(y.size) < 0.2
    y_mod, s_mod = y.copy(), s.copy()
    s_mod[ignore & ~y] = 1.0  # would be top-scored false positives if counted
    y_mod[ignore] = True
    keep = ~ignore
    for fn in (tpr_at_fpr, precision_at_recall):
        assert fn(y_mod, s_mod, ignore=ignore) == pytest.approx(fn(y[keep], s[keep]), abs=1e-12)
    assert tpr_at_fpr(y_mod, s_mod, 0.01, ignore=ignore) != pytest.approx(
        tpr_at_fpr(y_mod, s_mod, 0.01), abs=1e-3
    )
    assert best_dice(y_mod, s_mod, ignore=ignore) == best_dice(y[keep], s[keep])
    np.testing.assert_array_equal(
        roc_curve(y_mod, s_mod, ignore=ignore)[1], roc_curve(y[keep], s[keep])[1]
    )


def test_ignored_pixels_may_hold_nan_scores_and_flag_labels():
    y, s = _random_case(6)
    ignore = np.zeros(y.size, bool)
    ignore[:5] = True
    labels, scores = y.astype(np.uint8), s.copy()
    labels[:5], scores[:5] = 2, np.nan  # a flag value and a NaN probability where the frame is ignored
    keep = ~ignore
    for fn in (tpr_at_fpr, precision_at_recall, best_dice):
        assert fn(labels, scores, ignore=ignore) == fn(y[keep], s[keep])
    assert dice_score(labels, scores > 0.5, ignore=ignore) == dice_score(y[keep], s[keep] > 0.5)
    with pytest.raises(ValueError, match="binary"):  # without ignore they still count, and are refused
        tpr_at_fpr(labels, s)


def test_empty_positives_and_bad_input_raise_clear_errors():
    s = np.linspace(0, 1, 10)
    with pytest.raises(ValueError, match="No CR"):
        tpr_at_fpr(np.zeros(10), s)
    y = np.zeros(10)
    y[3] = 1
    with pytest.raises(ValueError, match="No CR"):
        roc_curve(y, s, ignore=y.astype(bool))
    with pytest.raises(ValueError, match="binary"):
        tpr_at_fpr(np.full(10, 0.5), s)
    with pytest.raises(ValueError, match="NaN"):
        tpr_at_fpr(y, np.where(y > 0, np.nan, s))
    with pytest.raises(ValueError, match="shape"):
        best_dice(y, s[:5])
    with pytest.raises(ValueError, match="percent"):
        tpr_at_fpr(y, s, fpr=5.0)


def test_histogram_roc_matches_exact_within_resolution():
    rng = np.random.default_rng(3)
    y = rng.random(200_000) < 0.05
    z = np.where(y, rng.normal(3.0, 2.0, y.size), rng.normal(-5.0, 2.0, y.size))
    s = _sigmoid(z).astype(np.float32)
    fpr_h, tpr_h, thr_h = roc_curve(y, s, bins=4096)
    assert len(fpr_h) == 4097 and thr_h[0] == np.inf
    exact = tpr_at_fpr(y, s, 1e-3)
    i = np.searchsorted(fpr_h, 1e-3, side="right") - 1
    approx = tpr_h[i] + (tpr_h[i + 1] - tpr_h[i]) * (1e-3 - fpr_h[i]) / (fpr_h[i + 1] - fpr_h[i])
    assert approx == pytest.approx(exact, abs=2e-3)


# ------------------------------------------------------------------ streaming metrics
def test_dice_coefficient_hand_case_streaming_and_ignore():
    y = np.array([[1, 1, 0], [0, 0, 0], [0, 1, 0]], "float32")[None, ..., None]
    p = np.array([[0.9, 0.4, 0.7], [0.1, 0.2, 0.0], [0.3, 0.5, 0.6]], "float32")[None, ..., None]
    m = DiceCoefficient()
    m.update_state(y, p)
    assert float(m.result()) == pytest.approx(4 / 7)  # TP 2, FP 2, FN 1
    m.update_state(y, p)  # pooled counts: same ratio
    assert float(m.result()) == pytest.approx(4 / 7)
    m.reset_state()
    assert float(m.result()) == 1.0
    w = np.ones_like(y)
    w[0, 2, 2] = 0.0  # drop the FP at p = 0.6
    w[0, 0, 0] = 0.3  # median-weight-like value: counts as 1 when used as a mask
    m.update_state(y, p, sample_weight=w)
    assert float(m.result()) == pytest.approx(4 / 6)
    weighted = DiceCoefficient(weights_as_mask=False)
    weighted.update_state(y, p, sample_weight=w[..., 0])
    assert float(weighted.result()) == pytest.approx(2 * 1.3 / (2 * 1.3 + 1 + 1))


def test_tpr_and_precision_streaming_hand_case():
    y = HAND_TRUE.astype("float32").reshape(1, 2, 7, 1)
    p = HAND_SCORE.reshape(1, 2, 7, 1)
    m = TPRAtFPR(fpr=0.05)
    m.update_state(y, p)
    assert float(m.result()) == pytest.approx(0.875, abs=1e-6)
    for target, expected in ((0.0, 0.75), (0.1, 1.0), (1.0, 1.0)):
        other = TPRAtFPR(fpr=target)
        other.update_state(y, p)
        assert float(other.result()) == pytest.approx(expected, abs=1e-6)
    pr = PrecisionAtRecall(recall=0.95)
    pr.update_state(y, p)
    assert float(pr.result()) == pytest.approx(0.8, abs=1e-6)
    pr50 = PrecisionAtRecall(recall=0.5)
    pr50.update_state(y, p)
    assert float(pr50.result()) == pytest.approx(1.0, abs=1e-6)
    # Ignoring the negative that ties with a CR removes the only false positive.
    w = np.ones_like(y)
    w.reshape(-1)[9] = 0.0
    m.reset_state()
    m.update_state(y, p, sample_weight=w)
    assert float(m.result()) == pytest.approx(1.0, abs=1e-6)
    assert float(TPRAtFPR().result()) == 0.0


def test_streaming_tpr_at_fpr_agrees_with_numpy():
    rng = np.random.default_rng(7)
    n = 400_000
    y = rng.random(n) < 0.03
    z = np.where(y, rng.normal(3.0, 3.0, n), rng.normal(-6.0, 2.0, n))
    s = _sigmoid(z).astype(np.float32)
    ignore = rng.random(n) < 0.05
    m = TPRAtFPR(fpr=1e-4)
    yb = y.astype("float32").reshape(4, 100, 1000, 1)
    sb = s.reshape(4, 100, 1000, 1)
    wb = (~ignore).astype("float32").reshape(4, 100, 1000)
    for i in range(4):  # four batches, pooled
        m.update_state(yb[i : i + 1], sb[i : i + 1], sample_weight=wb[i : i + 1])
    exact = tpr_at_fpr(y, s, 1e-4, ignore=ignore)
    # TPR carried by one logit bin (width 40 / 4096) around the operating point.
    thr = threshold_at_fpr(y, s, 1e-4, ignore=ignore)
    zt = np.log(thr / (1 - thr))
    pos = z[y & ~ignore]
    bin_mass = np.mean(np.abs(pos - zt) < 40 / 4096)
    assert bin_mass < 0.005
    assert float(m.result()) == pytest.approx(exact, abs=bin_mass + 1e-4)
    assert 0.3 < exact < 0.95  # a non-trivial operating point


@pytest.mark.parametrize(
    "metric",
    [
        DiceCoefficient(threshold=0.3, weights_as_mask=False),
        TPRAtFPR(fpr=1e-3, num_bins=1024, logit_min=-10.0, logit_max=12.0),
        PrecisionAtRecall(recall=0.9),
    ],
)
def test_metric_config_round_trip(metric):
    config = keras.saving.serialize_keras_object(metric)
    assert config["registered_name"].startswith("kercr>")
    restored = keras.saving.deserialize_keras_object(config)
    assert type(restored) is type(metric)
    assert restored.get_config() == metric.get_config()


def test_weighted_metrics_in_fit_and_keras_file(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4, 8, 8, 1)).astype("float32")
    y = (x > 1.0).astype("float32")
    w = np.ones((4, 8, 8, 1), "float32")
    w[:, :2] = 0.0
    inputs = keras.Input((None, None, 1))
    outputs = keras.layers.Conv2D(1, 1, activation="sigmoid")(inputs)
    model = keras.Model(inputs, outputs)
    model.compile(
        optimizer="sgd",
        loss="binary_crossentropy",
        weighted_metrics=[DiceCoefficient(), TPRAtFPR(fpr=0.05), PrecisionAtRecall()],
    )
    logs = model.evaluate(x, y, sample_weight=w, batch_size=2, verbose=0, return_dict=True)
    pred = model.predict(x, verbose=0)
    ignore = w == 0
    assert logs["dice"] == pytest.approx(dice_score(y, pred >= 0.5, ignore=ignore), abs=1e-6)
    assert logs["tpr_at_fpr"] == pytest.approx(
        tpr_at_fpr(y, pred, 0.05, ignore=ignore), abs=0.05
    )
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    names = [m.name for m in loaded.metrics]
    assert "compile_metrics" in names or any("dice" in n for n in names)


def test_threshold_at_fpr_of_8_bit_scores_does_not_wrap_round():
    """With more than the allowed negatives at the top level, the cut is above it: 256 for uint8 (before,
    255 + 1 wrapped to 0 in uint8 and every pixel was flagged)."""
    truth = np.zeros(1000, bool)
    truth[:10] = True
    for dtype, top in ((np.uint8, 255), (np.int8, 127)):
        score = np.full(1000, top, dtype)
        assert threshold_at_fpr(truth, score, 1e-4) == top + 1.0


def test_the_probability_threshold_keeps_the_fpr_in_float32_as_the_detector_computes_it():
    """The threshold for 0.01 % FPR as a probability: before, the float64 sigmoid of the logit cut rounded
    in float32 to the probability of the first negative left out, so a probability runtime flagged it."""
    from kercr.evaluation.pooled import pooled_metrics

    rng = np.random.default_rng(3)
    truth = rng.random(1_000_000) < 0.01
    logits = np.where(truth, rng.normal(6, 2, truth.size), rng.normal(-4, 2, truth.size)).astype(np.float32)
    metrics = pooled_metrics(truth, logits, logits=True)
    probability = np.float32(1.0) / (np.float32(1.0) + np.exp(-logits))  # as kercr.detect makes it, float32
    negatives = (~truth).sum()
    flagged_by_logit = ((logits >= metrics["logit_threshold_at_fpr_1e-4"]) & ~truth).sum()
    flagged_by_probability = ((probability >= metrics["threshold_at_fpr_1e-4"]) & ~truth).sum()
    assert flagged_by_probability <= 1e-4 * negatives and flagged_by_logit <= 1e-4 * negatives
    assert flagged_by_probability == flagged_by_logit
