"""kercr.export.tf_normalization: the TF graph of the normalization against the numpy definition.

The global noise model is compared bit for bit at the end of this file; most tests are of
``noise_model="local"``, and ``"relative"`` (the global statistics and the local noise map) is
compared on the same frames.

Every comparison runs the graph through ``tf.function`` with an unknown (batch, H, W, 1) input,
as the served SavedModel does, so the block padding is computed at run time. The served-model
test exports a small run directory (normalization.json with noise_model="local") with kercr-export
and compares the SavedModel with ``model(normalize(image))``, and checks that the TFLite parity
report was measured on the local normalization.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

import keras  # noqa: E402

import kercr  # noqa: E402
from kercr.data.normalization import NormalizationConfig, local_background_noise, normalize  # noqa: E402
from kercr.export import tf_normalization  # noqa: E402

LOCAL = NormalizationConfig(noise_model="local")
#: Non-default global constants; sample_size=500 makes the subsample step > 1 on 64 x 128 images.
SIDECAR = NormalizationConfig(clip_min=-5.0, clip_max=300.0, n_iter=3, sample_size=500, nan_fill=-1.0)
#: max |TF - numpy| / max(1, |numpy|) allowed; measured up to 8e-7 (float32 sums in the clipped std).
RTOL = 2e-6


def _galaxy_frame(rng, shape=(192, 160)):
    """White noise (sigma = sqrt(level), in e-) on a sky gradient and a big bright galaxy."""
    y, x = np.mgrid[: shape[0], : shape[1]].astype(np.float64)
    cy, cx, r = 0.55 * shape[0], 0.45 * shape[1], 0.15 * (shape[0] + shape[1])
    level = 400 + 0.8 * x + 0.5 * y + 30_000 * np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * r ** 2))
    image = level + rng.normal(0, 1, shape) * np.sqrt(level)
    image[shape[0] // 4, 10:13] += 5_000  # a CR
    return image.astype(np.float32)


def _integer_frame(rng, shape=(96, 128)):
    """Integer ADU with 0.4 ADU of noise: most differences are 0, so block MADs are 0 (std fallback)."""
    image = np.round(rng.normal(20.0, 0.4, shape))
    image[rng.integers(0, shape[0], 20), rng.integers(0, shape[1], 20)] += 300
    return image.astype(np.float32)


def _nan_frame(rng, shape=(160, 130)):
    """NaN regions (a whole 32 x 32 block, a band of rows, a corner) and an inf pixel."""
    image = rng.normal(1000, 20, shape).astype(np.float32)
    image[:32, 32:64] = np.nan  # exactly one block: its statistics come from its neighbours
    image[70:75, :] = np.nan
    image[120:, 100:] = np.nan
    image[5, 5] = np.inf
    return image


@pytest.fixture(scope="module")
def graph():
    """``normalize_batch`` as the SavedModel traces it: one graph for every height and width
    (one per config, kept for the module: tracing costs a second or two)."""
    graphs = {}

    def build(config):
        if config not in graphs:
            graphs[config] = tf.function(lambda x: tf_normalization.normalize_batch(x, config),
                                         input_signature=[tf.TensorSpec([None, None, None, 1], tf.float32)])
        return graphs[config]
    return build


def _compare(fn, images, config):
    got = fn(tf.constant(np.stack(images)[..., None])).numpy()[..., 0]
    want = np.stack([normalize(image, config=config)[0] for image in images])
    assert got.shape == want.shape and got.dtype == np.float32
    relative = np.abs(got.astype(np.float64) - want) / np.maximum(1.0, np.abs(want))
    assert relative.max() <= RTOL, f"max relative difference {relative.max():.3g}"
    return got, want


@pytest.mark.parametrize("frame", [_galaxy_frame, _integer_frame, _nan_frame])
@pytest.mark.parametrize("config", [LOCAL, dataclasses.replace(LOCAL, block_size=16, asinh_softening=10.0),
                                    dataclasses.replace(LOCAL, local_axis="smaller", local_edges="nearest"),
                                    dataclasses.replace(LOCAL, noise_model="relative", noise_estimator="diff2",
                                                        local_axis="smaller", local_edges="nearest",
                                                        asinh_softening=10.0),
                                    dataclasses.replace(LOCAL, noise_model="relative", noise_estimator="diff2",
                                                        local_axis="smaller", local_edges="nearest",
                                                        local_gate=2.0),
                                    dataclasses.replace(LOCAL, noise_model="relative", noise_estimator="diff2",
                                                        local_axis="smaller", local_edges="nearest",
                                                        local_gate=2.0, local_min_blocks=4)],
                         ids=["linear", "asinh", "smaller-nearest", "relative", "relative-gated", "min-blocks"])
def test_local_graph_matches_numpy(graph, frame, config):
    rng = np.random.default_rng(0)
    images = [frame(rng), frame(rng)]  # a batch: each image on its own maps
    images[1] = images[1] * np.float32(3.0) + np.float32(200.0)
    fn = graph(config)
    got, want = _compare(fn, images, config)
    # It can fail: the global normalization (what the graph did before) gives another answer.
    glob = np.stack([normalize(image, config=dataclasses.replace(config, noise_model="global", local_gate=None,
                                                                 local_min_blocks=None))[0]
                     for image in images])
    if config.local_gate is None or frame is _galaxy_frame:
        assert np.abs(glob - want).max() > 0.05
    else:  # the gate leaves frames without large structure with the global input
        np.testing.assert_allclose(want, glob, rtol=1e-5, atol=1e-5)
    if frame is _nan_frame:
        assert np.all(got[:, 70:75] == config.nan_fill)


def test_local_min_blocks_sends_small_frames_to_the_global_input_in_the_graph(graph):
    """Under ``local_min_blocks`` blocks on a side (strictly), the graph gives the global input; at it, the maps."""
    gated = dataclasses.replace(LOCAL, noise_model="relative", noise_estimator="diff2", local_axis="smaller",
                                local_edges="nearest", local_gate=2.0)
    config = dataclasses.replace(gated, local_min_blocks=6)  # 6 x 32 = 192 px
    glob = dataclasses.replace(gated, noise_model="global", local_gate=None)
    fn = graph(config)
    rng = np.random.default_rng(3)
    small, at = _galaxy_frame(rng, (192, 160)), _galaxy_frame(rng, (192, 192))
    got_small, _ = _compare(fn, [small], config)
    np.testing.assert_allclose(got_small[0], normalize(small, config=glob)[0], rtol=RTOL, atol=RTOL)
    assert np.abs(got_small[0] - normalize(small, config=gated)[0]).max() > 0.05  # it can fail: the maps differ
    got_at, _ = _compare(fn, [at], config)
    np.testing.assert_allclose(got_at[0], normalize(at, config=gated)[0], rtol=RTOL, atol=RTOL)
    assert np.abs(got_at[0] - normalize(at, config=glob)[0]).max() > 0.05
    assert fn.experimental_get_tracing_count() == 1


def test_odd_and_small_sizes_share_one_graph(graph):
    """100 x 77 (not whole blocks) and 20 x 13 (under one block) run in the graph traced once."""
    rng = np.random.default_rng(1)
    fn = graph(LOCAL)
    for shape in [(100, 77), (20, 13), (64, 64), (33, 95)]:
        images = [(rng.normal(50, 5, shape) + 0.3 * np.arange(shape[1])).astype(np.float32) for _ in range(2)]
        _compare(fn, images, LOCAL)
    assert fn.experimental_get_tracing_count() == 1


@pytest.mark.parametrize("shape, block", [((192, 160), 32), ((100, 77), 33), ((40, 70), 8)])
@pytest.mark.parametrize("axis, edges", [("larger", "reflect"), ("smaller", "nearest")])
def test_maps_match_numpy(shape, block, axis, edges):
    """The background map is exact; the noise map is off by float32 rounding only."""
    config = dataclasses.replace(LOCAL, block_size=block, local_axis=axis, local_edges=edges)
    image = _galaxy_frame(np.random.default_rng(2), shape)
    image[: block, : block] = np.nan
    fn = tf.function(lambda x: tf_normalization.local_background_noise(x, config),
                     input_signature=[tf.TensorSpec([None, None], tf.float32)])
    background, noise = (t.numpy() for t in fn(tf.constant(image)))
    want_background, want_noise, _, _ = local_background_noise(image, config=config)
    np.testing.assert_array_equal(background, want_background)
    np.testing.assert_allclose(noise, want_noise, rtol=1e-6, atol=0)
    assert noise.max() > 1.5 * noise.min()  # a map, not a constant: the galaxy raises the noise


def test_bilinear_weights_are_numpys_in_a_graph():
    """Grappler turns ``x / 33.0`` into ``x * (1 / 33.0)`` (one ulp off for some x); the weights
    must still be numpy's to the bit, else the maps move by an ulp here and there."""
    fn = tf.function(lambda n: tf_normalization._interpolation(n, 4, 33)[2],
                     input_signature=[tf.TensorSpec([], tf.int32)])
    pos = np.clip((np.arange(1000, dtype=np.float64) + 0.5) / 33 - 0.5, 0.0, 3.0)
    np.testing.assert_array_equal(fn(tf.constant(1000)).numpy(), pos - np.minimum(np.floor(pos), 2))


def test_all_nan_image_raises_in_the_graph(graph):
    fn = graph(LOCAL)
    with pytest.raises(tf.errors.InvalidArgumentError, match="all NaN"):
        fn(tf.constant(np.full((1, 64, 64, 1), np.nan, np.float32)))


def test_global_path_is_unchanged(graph):
    """noise_model="global" still ignores the block statistics (bit-for-bit test: test_exporter.py)."""
    image = _galaxy_frame(np.random.default_rng(3))
    config = NormalizationConfig(noise_estimator="diff2")
    got = graph(config)(tf.constant(image[None, ..., None])).numpy()[0, ..., 0]
    np.testing.assert_array_equal(got, normalize(image, config=config)[0])


def test_kercr_export_of_a_local_noise_run_serves_raw_pixels(tmp_path, monkeypatch):
    """kercr-export of a run directory whose normalization.json says noise_model="local": the
    SavedModel serves ``model(normalize(image))``; parity.json is measured on that normalization."""
    pytest.importorskip("ai_edge_litert")
    import kercr.export.parity as parity
    from kercr.cli.export import main

    config = dataclasses.replace(LOCAL, block_size=16, clip_max=500.0)
    run = tmp_path / "run"
    run.mkdir()
    model = kercr.build_model("deepcr_2_4")
    model.save(run / "best.keras")
    (run / "normalization.json").write_text(json.dumps(config.to_dict()))
    seen = []

    def spy(image, *, mask=None, config=None):
        seen.append(config.noise_model)
        return normalize(image, mask=mask, config=config)

    monkeypatch.setattr(parity, "normalize", spy)
    out = tmp_path / "models"
    assert main([str(run), "--out", str(out), "--formats", "savedmodel,tflite", "--quantize", "none",
                 "--tile", "32", "--validation-patches", "4", "--version", "1"]) == 0
    version = out / "kercr" / "1"
    report = json.loads((version / "parity.json").read_text())
    assert seen and set(seen) == {"local"}  # the parity patches went through the local normalization
    assert report["savedmodel"]["passed"] and report["tflite"]["float32"]["passed"]
    assert json.loads((version / "normalization.json").read_text())["noise_model"] == "local"

    serve = tf.saved_model.load(str(version)).signatures["serving_default"]
    rng = np.random.default_rng(4)
    a = _galaxy_frame(rng, (96, 80))  # not the export tile, not whole blocks of 16 across
    b = _nan_frame(rng, (96, 80))
    served = serve(image=tf.constant(np.stack([a, b])[..., None]))["cr_probability"].numpy()[..., 0]
    model = keras.saving.load_model(run / "best.keras")
    for got, image in zip(served, (a, b)):
        normalized = normalize(image, config=config)[0]
        want = np.asarray(model(normalized[None, ..., None], training=False))[0, ..., 0]
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
        glob = normalize(image, config=dataclasses.replace(config, noise_model="global"))[0]
        other = np.asarray(model(glob[None, ..., None], training=False))[0, ..., 0]
        assert np.abs(other - got).max() > 1e-3  # the global normalization is told apart


@pytest.mark.parametrize("config", [NormalizationConfig(noise_estimator="diff2_std"),
                                    dataclasses.replace(LOCAL, noise_model="relative", noise_estimator="diff2_std",
                                                        local_gate=5.0, local_min_blocks=3)])
def test_the_clipped_std_estimator_matches_numpy_in_the_graph(config):
    """noise_estimator="diff2_std" (integer-valued data): the graph's float32 sums round unlike
    numpy's, so the frame noise agrees to ~1e-6 relative, not bit for bit."""
    from kercr.export.tf_normalization import normalize_batch

    rng = np.random.default_rng(5)
    fn = tf.function(lambda x: normalize_batch(x, config))
    for shape in [(64, 64), (63, 65), (300, 200)]:
        images = np.stack([rng.normal(1000, 20, shape), np.round(rng.normal(100.3, 0.5, shape)),
                           _galaxy_frame(rng, shape)]).astype(np.float32)
        images[0, 3, 5] = np.nan
        got = fn(tf.constant(images[..., None])).numpy()[..., 0]
        want = np.stack([normalize(image, config=config)[0] for image in images])
        np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5, err_msg=str(shape))


def _covered(rng, shape=(192, 160)):
    """ADU with 2,000 ADU of sky, gain 4, read noise 6 e-, galaxy light over the left 40 %."""
    x = np.mgrid[: shape[0], : shape[1]][1]
    level = 2000.0 + np.where(x < 0.4 * shape[1], 3000.0, 0.0)
    return (level + rng.standard_normal(shape) * np.sqrt(level / 4.0 + 2.25)).astype(np.float32)


HEADER = NormalizationConfig(noise_estimator="diff2", header_noise=(0.9, 1.6))


@pytest.mark.parametrize("config", [HEADER, dataclasses.replace(HEADER, noise_model="relative", local_gate=5.0,
                                                                local_min_blocks=3)])
def test_header_noise_in_the_graph_is_numpys(config):
    """Each image's gain and read noise (0 gain or negative read noise: unknown) set its frame noise
    as in numpy; the global path to the bit, the relative maps to float32 rounding."""
    from kercr.export.tf_normalization import normalize_batch

    rng = np.random.default_rng(8)
    images = np.stack([_covered(rng), _covered(rng), _covered(rng), _covered(rng) - 2000.0])
    gains, noises = np.array([4.0, 0.0, 4.0, 4.0], np.float32), np.array([6.0, 6.0, -1.0, 6.0], np.float32)
    fn = tf.function(lambda x, g, r: normalize_batch(x, config, g, r))
    got = fn(tf.constant(images[..., None]), tf.constant(gains), tf.constant(noises)).numpy()[..., 0]
    want = np.stack([normalize(image, config=config, gain=g if g > 0 else None, readnoise=r if r >= 0 else None)[0]
                     for image, g, r in zip(images, gains, noises)])
    if config.noise_model == "global":
        np.testing.assert_array_equal(got, want)
    else:
        np.testing.assert_allclose(got, want, rtol=RTOL, atol=RTOL)
    measured = normalize(images[0], config=config)[0]
    assert np.abs(want[0] - measured).max() > 0.1  # the header noise changed the input


def test_a_header_noise_savedmodel_takes_each_images_gain_and_read_noise(tmp_path):
    from kercr.export.savedmodel import write_savedmodel

    model = kercr.build_model("deepcr_2_4")
    write_savedmodel(model, tmp_path / "sm", config=HEADER, multiple=4)
    serve = tf.saved_model.load(str(tmp_path / "sm")).signatures["serving_default"]
    assert set(serve.structured_input_signature[1]) == {"image", "gain", "readnoise"}
    image = _covered(np.random.default_rng(9), (64, 64))
    for gain, want in ((4.0, normalize(image, config=HEADER, gain=4.0, readnoise=6.0)[0]),
                       (0.0, normalize(image, config=HEADER)[0])):
        got = serve(image=tf.constant(image[None, ..., None]), gain=tf.constant([gain]),
                    readnoise=tf.constant([6.0]))["cr_probability"].numpy()[0, ..., 0]
        expected = np.asarray(model(want[None, ..., None], training=False))[0, ..., 0]
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
    write_savedmodel(model, tmp_path / "plain", config=NormalizationConfig(noise_estimator="diff2"), multiple=4)
    plain = tf.saved_model.load(str(tmp_path / "plain")).signatures["serving_default"]
    assert set(plain.structured_input_signature[1]) == {"image"}  # models without it: one input, as before


# --------------------------------------------------------------------------------------------
# The global noise model (one sky and noise per image)
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("config", [NormalizationConfig(), SIDECAR, NormalizationConfig(sample_size=100, n_iter=0),
                                    NormalizationConfig(noise_estimator="diff2"),
                                    NormalizationConfig(noise_estimator="diff2", sample_size=100, asinh_softening=10.0)])
def test_tf_normalization_matches_numpy_bit_for_bit(config):
    from kercr.export.tf_normalization import normalize_batch

    rng = np.random.default_rng(0)
    fn = tf.function(lambda x: normalize_batch(x, config))
    for shape in [(64, 64), (63, 65), (17, 33), (300, 200)]:  # odd and even pixel counts, subsample steps
        images = (rng.normal(1000, 20, (3, *shape)) + 50 * rng.standard_cauchy((3, *shape))).astype(np.float32)
        images[0, 3, 5], images[1, 0, 0] = np.nan, np.inf
        images[2] = np.round(images[2] / 40) * 40  # quantized: MAD 0, numpy falls back to the std
        got = fn(tf.constant(images[..., None])).numpy()[..., 0]
        want = np.stack([normalize(image, config=config)[0] for image in images])
        if config.asinh_softening is None:
            np.testing.assert_array_equal(got, want, err_msg=str(shape))
        else:  # TF's asinh may differ from numpy's in the last float32 bit
            np.testing.assert_allclose(got, want, rtol=2e-6, atol=2e-6, err_msg=str(shape))


def test_tf_normalization_applies_the_asinh_stretch_like_numpy():
    from kercr.export.tf_normalization import normalize_batch

    config = NormalizationConfig(asinh_softening=10.0)
    rng = np.random.default_rng(1)
    images = (rng.normal(1000, 20, (2, 64, 64)) + 50 * rng.standard_cauchy((2, 64, 64))).astype(np.float32)
    got = tf.function(lambda x: normalize_batch(x, config))(tf.constant(images[..., None])).numpy()[..., 0]
    want = np.stack([normalize(image, config=config)[0] for image in images])
    assert np.abs(want).max() < 70  # stretched: 1000 sigma -> ~53
    np.testing.assert_allclose(got, want, rtol=2e-6, atol=2e-6)


def test_tf_median_even_count_averages_middle_values():
    from kercr.export.tf_normalization import median

    assert median(tf.constant([4.0, 1.0, 3.0, 2.0], tf.float64)).numpy() == 2.5
    assert median(tf.constant([5.0, 1.0, 3.0], tf.float64)).numpy() == 3.0
    assert median(tf.constant([7.0], tf.float64)).numpy() == 7.0

