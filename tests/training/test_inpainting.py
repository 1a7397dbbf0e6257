"""kercr.training.inpainting: the examples hold exactly the CR pixels and their truth; a run writes its files."""

from __future__ import annotations

import json

import numpy as np
import pytest

from kercr.data.normalization import normalize, normalize_like
from kercr.training.inpainting import INPAINT_NORMALIZATION, InpaintingConfig, inpainting_examples, train_inpainter

TINY = InpaintingConfig(frames=3, val_frames=1, frame_shape=(256, 256), patch=32, patches_per_frame=8, epochs=1,
                        footprints=None)


def test_examples_blank_the_pixels_to_replace_and_weigh_only_them():
    x, y, w = inpainting_examples(TINY, [0, 1])
    assert x.shape[1:] == (32, 32, 2) and y.shape == w.shape == (len(x), 32, 32, 1) and len(x) == 16
    mask = x[..., 1] > 0
    np.testing.assert_array_equal(mask, w[..., 0] > 0)  # the loss sees the replaced pixels and nothing else
    assert (x[..., 0][mask] == 0).all()  # their values are hidden from the network
    assert mask[:, 16, 16].all()  # every patch is centred on one of them
    # Elsewhere the input is the frame with its CRs, the target the same frame without them:
    # equal off the CRs (no CR there), different on them.
    off = ~mask
    assert np.mean(np.isclose(x[..., 0][off], y[..., 0][off], atol=1e-5)) > 0.97
    assert np.median(np.abs(x[..., 0][mask] - y[..., 0][mask])) > 0  # the blanked pixels are not the truth


def test_normalize_like_uses_the_other_frames_sky_and_noise():
    rng = np.random.default_rng(0)
    image = rng.normal(500, 10, (64, 64)).astype(np.float32)
    normalized, params = normalize(image, config=INPAINT_NORMALIZATION)
    np.testing.assert_allclose(normalize_like(image, params), normalized, atol=1e-6)
    np.testing.assert_allclose(normalize_like(image + 10 * params.noise, params)[0, 0],
                               10 * np.arcsinh((image[0, 0] - params.sky) / params.noise / 10 + 1), rtol=1e-4)


def test_a_tiny_run_writes_a_loadable_network_and_its_normalization(tmp_path):
    metrics = train_inpainter(TINY, tmp_path / "run")
    run = tmp_path / "run"
    for name in ("inpainter.keras", "normalization.json", "history.json", "metrics.json"):
        assert (run / name).is_file(), name
    assert json.loads((run / "normalization.json").read_text())["clip_max"] is None
    assert metrics["train_patches"] == 16 and metrics["val_patches"] == 8 and np.isfinite(metrics["best_val_loss"])
    from kercr.detection.inpainting import load_inpainter

    net = load_inpainter(str(run))
    assert net.runtime == "keras" and net.normalization == INPAINT_NORMALIZATION and net.multiple == 2
    assert net.margin >= 8 and net.predict(np.zeros((1, 16, 16, 2), np.float32)).shape == (1, 16, 16)


def test_too_few_validation_frames_are_refused(capsys):
    from kercr.training.inpainting import main

    with pytest.raises(SystemExit):
        main(["--out", "x", "--frames", "2", "--val-frames", "2"])
    assert "--val-frames 2 must be between 1 and --frames - 1" in capsys.readouterr().err
