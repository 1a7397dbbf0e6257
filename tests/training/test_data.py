"""The data of a kercr-train run (:mod:`kercr.training.data`)."""

from __future__ import annotations

import numpy as np
import pytest

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


def test_the_rim_weight_reaches_the_frames_of_every_source_and_is_refused_where_it_cannot_act(tmp_path, tiny_config):
    from astropy.io import fits

    from kercr.config import ConfigError
    from kercr.data.synthetic import make_frame

    data = make_training_data(tiny_config(rim_weight=4.0))
    assert data.train.source.rim_weight == 4.0
    w = np.concatenate([b[2] for b in data.validation_batches()])
    assert (w == 4).any() and set(np.unique(w)) <= {0.0, 1.0, 4.0}
    frames = tmp_path / "frames"
    frames.mkdir()
    for i in range(2):
        header = fits.Header({"EXPTIME": 3000.0, "GAIN": 4.0, "RDNOISE": 7.0, "SATURATE": 45000.0})
        fits.PrimaryHDU(make_frame(seed=i, shape=(256, 256)).clean_adu, header=header).writeto(frames / f"e{i}.fits")
    fits_data = make_training_data(tiny_config(data=str(frames), cr_rate_scale=5.0, rim_weight=4.0))
    assert fits_data.train.source.rim_weight == 4.0
    assert any((b[2] == 4).any() for b in fits_data.validation_batches())
    with pytest.raises(ConfigError, match="rim_weight=4 with loss='median_bce'"):
        tiny_config(rim_weight=4.0, loss="median_bce")
    shards = tmp_path / "shards"
    shards.mkdir()
    (shards / "prepare.json").write_text("{}")  # what marks a kercr-prepare folder
    with pytest.raises(ConfigError, match="shards hold their pixel weights"):
        make_training_data(tiny_config(data=str(shards), rim_weight=4.0))
