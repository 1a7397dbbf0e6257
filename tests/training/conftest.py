"""Fixtures of the training tests: a run configuration small enough to train in seconds."""

from __future__ import annotations

import pytest

from kercr.config import resolve_config


@pytest.fixture
def tiny_config(tmp_path):
    """``tiny_config(**options)``: a resolved TrainConfig of a 2-level, 4-filter deepCR net on four
    256 x 256 synthetic frames (3 steps of 4 patches of 64 px per epoch, 2 epochs), run directory
    ``tmp_path / "run"``; ``options`` override any of it."""
    def make(**kw):
        options = dict(model="deepcr_2_4", patch_size=64, batch_size=4, frames=4, frame_shape=[256, 256],
                       cr_rate_scale=50.0, steps_per_epoch=3, validation_steps=2, epochs=2, out=str(tmp_path / "run"))
        options.update(kw)
        return resolve_config({}, options)

    return make
