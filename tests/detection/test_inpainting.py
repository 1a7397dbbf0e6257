"""kercr.detection.inpainting: only the masked pixels change; the shipped network cleans CRs to within the noise."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from kercr.data import KercrDataError
from kercr.detection import detect
from kercr.detection.inpainting import inpaint
from kercr.model_files import write_normalization
from kercr.training.inpainting import INPAINT_NORMALIZATION


@pytest.fixture(scope="module")
def untrained(tmp_path_factory):
    """An untrained inpainting network saved as a run folder (its values are arbitrary)."""
    from kercr.models import build_inpainter

    run = tmp_path_factory.mktemp("inpainter")
    build_inpainter().save(run / "inpainter.keras")
    write_normalization(run, INPAINT_NORMALIZATION)
    return str(run / "inpainter.keras")


def test_only_the_masked_pixels_change_and_ignored_ones_stay(untrained):
    rng = np.random.default_rng(1)
    image = rng.normal(300.0, 8.0, (300, 420)).astype(np.float32)
    image[5, 5] = np.nan
    mask = np.zeros(image.shape, bool)
    mask[100:103, 50:90] = mask[290:300, 400:420] = mask[5, 5] = mask[200, 200] = True
    ignore = np.zeros_like(mask)
    ignore[200, 200] = True
    before = image.copy()
    out = inpaint(image, mask, ignore=ignore, model=untrained)
    np.testing.assert_array_equal(image, before)  # the input is not modified
    assert out.dtype == np.float32 and out.shape == image.shape
    changed = ~((out == image) | (np.isnan(out) & np.isnan(image)))
    assert changed.any() and not (changed & ~mask).any()  # nothing outside the mask
    assert np.isnan(out[5, 5]) and out[200, 200] == image[200, 200]  # NaN and ignored pixels kept
    assert np.isfinite(out[mask & ~ignore & np.isfinite(image)]).all()
    np.testing.assert_array_equal(inpaint(image, np.zeros_like(mask), model=untrained), image)


@pytest.mark.parametrize("mask, message", [
    (np.zeros((10, 10), bool), r"mask has shape \(10, 10\) but the image \(20, 20\)"),
    (np.full((20, 20), 0.5), "mask has dtype float64; pass a boolean mask"),
    (np.ones((20, 20), bool), "every pixel of the image is ignored or to be replaced"),
])
def test_bad_masks_are_named(untrained, mask, message):
    with pytest.raises(KercrDataError, match=message):
        inpaint(np.ones((20, 20), np.float32), mask, model=untrained)


def test_a_detector_input_is_not_an_inpainter(tiny):
    with pytest.raises(KercrDataError, match="takes 1 input channel"):
        inpaint(np.ones((20, 20), np.float32), np.eye(20, dtype=bool), model=str(tiny))


def test_the_shipped_network_cleans_crs_on_sky_to_within_the_noise():
    """Synthetic sky with CR tracks: replaced pixels within about the noise of the truth, and
    at least as close as the masked median of kercr.data.clean_image."""
    from kercr.data import clean_image

    pytest.importorskip("kercr.weights").default_inpainter_path()
    rng = np.random.default_rng(7)
    truth = rng.normal(1000.0, 12.0, (256, 256)).astype(np.float32)
    yy, xx = np.mgrid[:256, :256]
    truth += (4000.0 * np.exp(-((yy - 128) ** 2 + (xx - 100) ** 2) / 18.0)).astype(np.float32)  # a star
    mask = np.zeros(truth.shape, bool)
    mask[40, 20:90] = mask[60:140, 200] = mask[126:131, 96:104] = True  # the last one crosses the star's core
    image = np.where(mask, truth + 800.0, truth).astype(np.float32)
    net = inpaint(image, mask)
    med = clean_image(image, mask)
    err_net, err_med = np.abs(net - truth)[mask], np.abs(med - truth)[mask]
    sky = mask & (np.hypot(yy - 128, xx - 100) > 15)
    assert np.median(np.abs(net - truth)[sky]) < 12.0  # within one sigma on the sky
    assert np.median(err_net) <= 1.2 * np.median(err_med)


def test_the_shipped_network_cleans_crs_on_bright_smooth_light_to_within_the_noise():
    """CRs on a galaxy and on the bright half of a frame, 200 sigma above the frame's sky: before, the
    network gave -60 and -460 ADU on average (its asinh-stretched input loses the level there)."""
    pytest.importorskip("kercr.weights").default_inpainter_path()
    n = 384
    yy, xx = np.mgrid[:n, :n]
    for k, level in enumerate((2000 * np.exp(-((yy - 192) ** 2 + (xx - 192) ** 2) / (2 * 90.0 ** 2)),
                               np.where(yy >= 192, 2000.0, 0.0))):
        rng = np.random.default_rng(40 + k)
        truth = (1000 + level + rng.normal(0, 10, (n, n))).astype(np.float32)
        mask = np.zeros((n, n), bool)
        for _ in range(60):
            y, x = rng.integers(10, n - 10), rng.integers(10, n - 10)
            mask[y, x:x + 3] = True
        err = (inpaint(np.where(mask, truth + 5000, truth).astype(np.float32), mask) - truth)[mask]
        # (the median: a CR on the step's edge, where the smooth level cannot follow, may be off by more)
        assert abs(np.median(err)) < 5.0 and np.median(np.abs(err)) < 10.0, (k, np.median(err), np.median(np.abs(err)))


def test_detect_cleans_with_the_network(tmp_path, untrained, monkeypatch):
    import kercr.detection.inpainting as module

    calls = []
    monkeypatch.setattr(module, "inpaint", lambda image, mask, ignore=None, **_: calls.append(mask.sum()) or
                        np.where(mask, -1.0, image).astype(np.float32))
    image = np.random.default_rng(2).normal(300.0, 8.0, (120, 140)).astype(np.float32)
    image[60, 20:80] += 500.0
    result = detect(image, clean="network", clean_dilate=1)
    assert result.clean_method == "network" and calls and calls[0] == result.dilated_mask(1).sum() > 0
    assert (result.clean[result.dilated_mask(1)] == -1.0).all()
    with pytest.raises(KercrDataError, match="'nets' does not exist; choose one of: median, mean, idw, network"):
        detect(image, clean="nets")


def test_the_inpainter_converts_to_tflite_and_runs_in_litert(untrained):
    """Exportable like the detectors: a float32 TFLite file whose output matches Keras."""
    pytest.importorskip("ai_edge_litert")
    from ai_edge_litert.interpreter import Interpreter

    from kercr.detection.inpainting import _keras_network
    from kercr.export.tflite import convert

    network = _keras_network(Path(untrained))[0]
    interpreter = Interpreter(model_content=convert(network, tile=64))
    interpreter.allocate_tensors()
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    assert list(inp["shape"]) == [1, 64, 64, 2]
    x = np.random.default_rng(3).normal(size=(1, 64, 64, 2)).astype(np.float32)
    x[..., 1] = x[..., 1] > 1
    interpreter.set_tensor(inp["index"], x)
    interpreter.invoke()
    np.testing.assert_allclose(interpreter.get_tensor(out["index"]), np.asarray(network.predict_on_batch(x)),
                               atol=1e-4)


@pytest.fixture(scope="module")
def prebuilt(tmp_path_factory, untrained):
    """The untrained network with its float16 LiteRT file and card (kercr.weights.ship.prebuild_inpainter)."""
    pytest.importorskip("ai_edge_litert")
    from kercr.weights.ship import prebuild_inpainter

    folder = tmp_path_factory.mktemp("prebuilt")
    for name in ("inpainter.keras", "normalization.json"):
        shutil.copyfile(Path(untrained).with_name(name), folder / name)
    card = prebuild_inpainter(folder / "inpainter.keras", parity_frames=1)
    return folder / "inpainter.keras", card


def test_the_prebuilt_litert_file_is_what_auto_runs_and_gives_keras_values(prebuilt):
    path, card = prebuilt
    from kercr.detection.inpainting import load_inpainter

    assert card["runtime"] == "tflite-float16" and card["geometry"]["input_multiple"] == 2
    entry = card["tflite"]["tflite-float16"]
    assert (path.parent / entry["file"]).is_file() and entry["parity_vs_keras"]["max_abs_delta"] < 0.05
    auto, keras = load_inpainter(str(path)), load_inpainter(str(path), "keras")
    assert auto.runtime == "tflite-float16" and keras.runtime == "keras"
    assert (auto.margin, auto.multiple) == (keras.margin, keras.multiple)
    rng = np.random.default_rng(4)
    image = rng.normal(500.0, 10.0, (200, 300)).astype(np.float32)
    mask = np.zeros(image.shape, bool)
    mask[50, 10:200] = mask[120:190, 250] = True
    lite, ref = inpaint(image, mask, model=str(path)), inpaint(image, mask, model=str(path), runtime="keras")
    assert not np.array_equal(lite, image)
    np.testing.assert_array_equal(lite[~mask], image[~mask])
    np.testing.assert_allclose(lite[mask], ref[mask], atol=0.05 * 10.0)  # 0.05 noise units at most
    from kercr.export.litert import TFLiteRunner

    runner = TFLiteRunner(path.with_name(entry["file"]), num_threads=1)
    assert runner.channels == 2 and runner.predict(np.zeros((24, 32, 2), np.float32)).shape == (24, 32)
    with pytest.raises(ValueError, match=r"inputs have shape \(24, 32\); this model takes 2 channels"):
        runner.predict(np.zeros((24, 32), np.float32))


def test_a_litert_file_of_another_network_is_not_used(tmp_path, prebuilt, caplog):
    path, card = prebuilt
    from kercr.detection.inpainting import load_inpainter

    for name in ("inpainter.keras", "normalization.json", "inpainter.json", card["tflite"]["tflite-float16"]["file"]):
        shutil.copyfile(path.with_name(name), tmp_path / name)
    changed = json.loads((tmp_path / "inpainter.json").read_text())
    changed["tflite"]["tflite-float16"]["source_sha256"] = "0" * 64
    (tmp_path / "inpainter.json").write_text(json.dumps(changed))
    assert load_inpainter(str(tmp_path)).runtime == "keras"
    assert "(SHA-256 differs); running Keras instead. Rebuild it: python -m kercr.weights.ship --inpainter" \
        in caplog.text
    with pytest.raises(KercrDataError, match="has no prebuilt tflite-float16 file; its runtimes: keras"):
        load_inpainter(str(tmp_path), "tflite-float16")
    with pytest.raises(KercrDataError, match="runtime='gpu' for the inpainting network; choose one of: auto, keras"):
        inpaint(np.ones((20, 20), np.float32), np.eye(20, dtype=bool), model=str(tmp_path), runtime="gpu")


def test_sparse_masks_use_small_tiles_and_give_the_same_values(untrained, monkeypatch):
    import kercr.detection.inpainting as module

    rng = np.random.default_rng(6)
    image = rng.normal(200.0, 6.0, (400, 520)).astype(np.float32)
    mask = np.zeros(image.shape, bool)
    mask[30, 40:46] = mask[300:304, 480] = mask[399, 0:3] = True  # three short CRs, one on the edge
    dense = mask.copy()
    dense[::40, ::40] = True  # a CR pixel in every 64-pixel tile
    margin, multiple = module.load_inpainter(untrained).margin, 2
    sparse_plan, dense_plan = module._tile_plan(mask, margin, multiple), module._tile_plan(dense, margin, multiple)
    assert len(sparse_plan[0]) <= 4 and sparse_plan[3] <= 64  # a few small tiles (a CR may cross a core edge)
    assert dense_plan[3] > 128  # large tiles where every tile holds a CR
    small = inpaint(image, mask, model=untrained)
    monkeypatch.setattr(module, "INPAINT_TILES", (256,))
    large = inpaint(image, mask, model=untrained)
    np.testing.assert_array_equal(small[~mask], image[~mask])
    np.testing.assert_allclose(small[mask], large[mask], rtol=1e-5, atol=1e-3)
