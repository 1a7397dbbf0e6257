"""The data of a kercr-train run (:mod:`kercr.training.data`)."""

from __future__ import annotations

import numpy as np

from kercr.training.data import make_training_data


def test_the_alpha_floor_reaches_plain_sky_and_the_validation_set_fit_holds(tiny_config):
    # At alpha 0 the median weight of plain sky is exactly 0, which everywhere means "ignored": such
    # pixels never came back as alpha rose. And fit() holds data.val, which set_alpha must update.
    data = make_training_data(tiny_config(loss="median_bce"))
    held = data.val
    x, y, w = (np.concatenate(a) for a in zip(*data.validation_batches()))
    assert w.min() == 0 and (w > 0).mean() > 0.9  # the ignored pixels only
    ignored = w == 0
    data.set_alpha(1.0)
    assert data.val is held
    w1 = np.concatenate([b[2] for b in held])
    assert np.all(w1[~ignored] == 1.0) and np.all(w1[ignored] == 0.0)
