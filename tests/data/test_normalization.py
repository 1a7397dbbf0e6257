"""The one normalization: robust statistics, invariance to units and sky, serialization."""

import dataclasses
import json

import numpy as np
import pytest

from kercr.data.errors import KercrDataError
from kercr.data.normalization import (NormalizationConfig, NormalizationParams, denormalize, frame_noise, input_maps,
                                      normalize, robust_sky_noise)


@pytest.fixture
def frame():
    rng = np.random.default_rng(1)
    img = 500.0 + 12.0 * rng.standard_normal((300, 200))
    img[100:103, 50:80] += 3000.0  # a CR-like streak and a star: outliers for the statistics
    img[200:210, 150:160] += 20000.0
    return img.astype(np.float32)


def test_robust_statistics_ignore_outliers(frame):
    sky, noise, n = robust_sky_noise(frame)
    assert sky == pytest.approx(500.0, abs=1.0)
    assert noise == pytest.approx(12.0, rel=0.05)
    assert n > 1000


def test_invariant_to_units_and_sky(frame):
    base, p = normalize(frame)
    in_electrons, pe = normalize(frame * 4.0)  # gain 4 e-/ADU
    with_sky, ps = normalize(frame + 2500.0)
    np.testing.assert_allclose(in_electrons, base, atol=1e-3)
    np.testing.assert_allclose(with_sky, base, atol=0.02)
    assert pe.noise == pytest.approx(4 * p.noise, rel=1e-6) and ps.sky == pytest.approx(p.sky + 2500, abs=0.5)
    assert base.dtype == np.float32 and base.shape == frame.shape


def test_output_range_nan_and_input_untouched(frame):
    img = frame.copy()
    img[5, 5] = np.nan
    before = img.copy()
    out, params = normalize(img)
    np.testing.assert_array_equal(img, before)  # not modified (NaN compares equal here)
    assert out[5, 5] == 0.0 and np.isfinite(out).all()
    assert out.max() == pytest.approx(1000.0) and out.min() >= -10.0
    assert np.median(out) == pytest.approx(0.0, abs=0.05)
    assert out[101, 60] == pytest.approx((img[101, 60] - params.sky) / params.noise, rel=1e-5)
    np.testing.assert_allclose(denormalize(out, params)[101, 60], img[101, 60], rtol=1e-5)


def test_mask_excludes_pixels_from_statistics():
    img = np.full((100, 100), 10.0) + np.random.default_rng(0).standard_normal((100, 100))
    img[:, :60] += 1000.0  # most of the frame is a bright region, masked
    mask = np.zeros(img.shape, bool)
    mask[:, :60] = True
    sky, _, _ = robust_sky_noise(img, mask=mask)
    assert sky == pytest.approx(10.0, abs=0.3)


def test_params_json_roundtrip(frame):
    _, params = normalize(frame, config=NormalizationConfig(clip_max=500.0))
    d = json.loads(params.to_json())
    assert d["method"] == "sky_mad_linear_v1" and d["clip_max"] == 500.0
    again = NormalizationParams.from_dict(d)
    assert again == params
    assert NormalizationConfig.from_dict(params.config.to_dict()) == params.config


def test_bad_inputs():
    with pytest.raises(KercrDataError, match="2-D"):
        normalize(np.zeros(10))
    with pytest.raises(KercrDataError, match="constant"):
        normalize(np.ones((50, 50)))
    with pytest.raises(KercrDataError, match="all NaN or masked"):
        normalize(np.full((50, 50), np.nan))
    with pytest.raises(KercrDataError, match="clip_min"):
        NormalizationConfig(clip_min=5, clip_max=1)


def test_asinh_softening_compresses_bright_values_and_round_trips(frame):
    linear, _ = normalize(frame)
    config = NormalizationConfig(asinh_softening=10.0)
    stretched, params = normalize(frame, config=config)
    np.testing.assert_allclose(stretched, 10.0 * np.arcsinh(linear / 10.0), rtol=1e-5, atol=1e-5)
    noise = np.abs(linear) < 3
    np.testing.assert_allclose(stretched[noise], linear[noise], atol=0.15)  # ~linear within the noise
    assert stretched.max() < 60 < linear.max()  # the star (1000 sigma after clipping) is compressed
    assert np.all(np.diff(np.sort(stretched.ravel())) >= 0)
    back = denormalize(stretched, params)
    unclipped = linear < 1000
    np.testing.assert_allclose(back[unclipped], frame[unclipped], rtol=1e-4, atol=0.05)
    assert NormalizationConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    assert NormalizationConfig.from_dict({k: v for k, v in NormalizationConfig().to_dict().items()
                                          if k != "asinh_softening"}).asinh_softening is None  # older files
    with pytest.raises(KercrDataError, match="asinh_softening"):
        NormalizationConfig(asinh_softening=0.0)


# --- the noise estimators ----------------------------------------------------------------------

DIFF2 = NormalizationConfig(noise_estimator="diff2")


def _halo_frame(seed=2, sigma=10.0):
    """Sky 200 + white noise ``sigma`` + a bright star's broad halo covering most of the frame."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:128, :128]
    halo = 100.0 * np.exp(-((x - 64.0) ** 2 + (y - 64.0) ** 2) / (2 * 30.0**2))  # 10 sigma, 30 px wide
    return (200.0 + halo + sigma * rng.standard_normal((128, 128))).astype(np.float32)


def test_diff2_noise_is_not_inflated_by_a_star_halo():
    image = _halo_frame()
    _, mad, _ = robust_sky_noise(image)
    _, diff2, _ = robust_sky_noise(image, config=DIFF2)
    assert mad > 15.0  # the halo inflates the MAD of the pixel values
    assert diff2 == pytest.approx(10.0, rel=0.08)
    normalized, params = normalize(image, config=DIFF2)
    assert params.noise == diff2 and params.config.noise_estimator == "diff2"


def test_diff2_noise_is_unbiased_on_white_noise_and_honours_mask_and_nan(frame):
    rng = np.random.default_rng(3)
    white = (300.0 + 7.0 * rng.standard_normal((400, 300))).astype(np.float32)
    assert robust_sky_noise(white, config=DIFF2)[1] == pytest.approx(7.0, rel=0.02)
    assert robust_sky_noise(frame, config=DIFF2)[1] == pytest.approx(12.0, rel=0.05)  # CR streak and star clipped
    hot = white.copy()
    hot[:250] += 30.0 * rng.standard_normal((250, 300)).astype(np.float32)  # a noisy region, masked or NaN
    mask = np.zeros(hot.shape, bool)
    mask[:250] = True
    assert robust_sky_noise(hot, config=DIFF2)[1] > 10.0
    assert robust_sky_noise(hot, mask=mask, config=DIFF2)[1] == pytest.approx(7.0, rel=0.03)
    hot[mask] = np.nan
    assert robust_sky_noise(hot, config=DIFF2)[1] == pytest.approx(7.0, rel=0.03)


def test_the_clipped_std_estimator_reads_integer_frames_where_the_mad_is_quantized(frame):
    """Raw frames of a high-gain, low-sky imager: whole ADU with a noise of 0.5-3 ADU (and a few
    CRs). The MAD of the differences jumps between half-integers (and is 0 at 0.5 ADU, where the
    unclipped std takes over); the clipped standard deviation follows the noise."""
    std = NormalizationConfig(noise_estimator="diff2_std")
    rng = np.random.default_rng(6)
    worst_mad = 0.0
    for sigma in (0.5, 0.6, 0.75, 1.0, 1.3, 1.6, 2.0, 3.0):
        image = np.round(100.3 + sigma * rng.standard_normal((512, 512)))
        image[rng.integers(0, 512, 40), rng.integers(0, 512, 40)] += 2_000.0  # CR pixels
        true = np.round(100.3 + sigma * rng.standard_normal((512, 512))).std()
        assert robust_sky_noise(image, config=std)[1] == pytest.approx(true, rel=0.03), sigma
        worst_mad = max(worst_mad, abs(robust_sky_noise(image, config=DIFF2)[1] / true - 1))
    assert worst_mad > 0.2  # the test can fail: the MAD-based estimator is off by more
    # Continuous data: both estimators read the same noise.
    white = (300.0 + 7.0 * rng.standard_normal((400, 300))).astype(np.float32)
    assert robust_sky_noise(white, config=std)[1] == pytest.approx(7.0, rel=0.02)
    assert robust_sky_noise(frame, config=std)[1] == pytest.approx(robust_sky_noise(frame, config=DIFF2)[1], rel=0.05)


def _galaxy_covered(rng, gain=4.0, readnoise=6.0, sky=2000.0):
    """A frame (ADU, sky included) whose left 40 % is under 3,000 ADU of galaxy light with its
    photon noise: its measured noise (1.2x) is above the sky's Poisson-plus-read noise, which the
    header gives."""
    x = np.mgrid[:256, :256][1]
    light = np.where(x < 100, 3000.0, 0.0)  # ADU
    level = sky + light
    image = level + rng.standard_normal(level.shape) * np.sqrt(level / gain + (readnoise / gain) ** 2)
    return image.astype(np.float32), float(np.sqrt(sky / gain + (readnoise / gain) ** 2))


def test_header_noise_takes_the_modelled_noise_within_its_band_and_the_measured_noise_outside(frame):
    config = NormalizationConfig(noise_estimator="diff2", header_noise=(0.9, 1.6))
    image, model = _galaxy_covered(np.random.default_rng(7))
    _, measured, _ = robust_sky_noise(image, config=config)
    assert measured > 1.1 * model  # the galaxy's noise and texture enter the measurement
    assert normalize(image, config=config, gain=4.0, readnoise=6.0)[1].noise == pytest.approx(model, rel=0.01)
    # Unknown gain, a model the measurement is far from (a sky-subtracted frame), no band: measured.
    assert normalize(image, config=config)[1].noise == measured
    assert normalize(image - 2000.0, config=config, gain=4.0, readnoise=6.0)[1].noise == pytest.approx(measured,
                                                                                                        rel=1e-6)
    plain = NormalizationConfig(noise_estimator="diff2")
    np.testing.assert_array_equal(normalize(image, config=plain, gain=4.0, readnoise=6.0)[0],
                                  normalize(image, config=plain)[0])
    assert frame_noise(100.0, 5.0, gain=None, readnoise=6.0, band=(0.9, 1.6)) == 5.0
    # The relative maps scale the modelled frame noise; their own fallback stays measured.
    relative = dataclasses.replace(config, noise_model="relative", local_gate=5.0, local_min_blocks=3)
    background, noise = input_maps(image, config=relative, gain=4.0, readnoise=6.0)
    assert np.median(noise[:, 150:]) == pytest.approx(model, rel=0.02)  # the sky beside the galaxy
    np.testing.assert_array_equal(normalize(image, config=relative, gain=4.0, readnoise=6.0)[0],
                                  ((image - background) / noise).clip(-10, 1000).astype(np.float32))


def test_header_noise_is_checked_and_saved():
    config = NormalizationConfig(header_noise=[0.9, 1.6])
    assert config.header_noise == (0.9, 1.6)
    assert NormalizationConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    older = {k: v for k, v in NormalizationConfig().to_dict().items() if k != "header_noise"}
    assert NormalizationConfig.from_dict(older).header_noise is None  # saved models: measured, as before
    for bad in ((1.6, 0.9), (0, 1), "0.9", (0.9,), (0.9, float("inf"))):
        with pytest.raises(KercrDataError, match="header_noise"):
            NormalizationConfig(header_noise=bad)
    with pytest.raises(KercrDataError, match="'local' maps"):
        NormalizationConfig(noise_model="local", header_noise=(0.9, 1.6))


def test_diff2_noise_keeps_noise_correlated_along_one_axis():
    # Noise smoothed along x only (as along a spectrum's slit): first differences along x read
    # low; differences two apart, on the axis where the noise is white, see the full noise.
    rng = np.random.default_rng(4)
    white = rng.standard_normal((300, 302))
    image = (white[:, 1:-1] + white[:, :-2] + white[:, 2:]) / np.sqrt(3)  # std 1, correlated along x
    assert robust_sky_noise(image, config=DIFF2)[1] == pytest.approx(1.0, rel=0.03)


def test_noise_estimator_is_saved_and_checked():
    assert NormalizationConfig.from_dict(json.loads(json.dumps(DIFF2.to_dict()))) == DIFF2
    older = {k: v for k, v in NormalizationConfig().to_dict().items() if k != "noise_estimator"}
    assert NormalizationConfig.from_dict(older).noise_estimator == "mad"  # models saved before the option
    with pytest.raises(KercrDataError, match="noise_estimator='std'.*'diff2'"):
        NormalizationConfig(noise_estimator="std")
    with pytest.raises(KercrDataError, match="5 x 5 pixels at least"):
        robust_sky_noise(np.ones((40, 2)) + np.arange(80).reshape(40, 2), config=DIFF2)


# --- noise_model="local": background and noise maps ---------------------------------------------

LOCAL = NormalizationConfig(noise_model="local", noise_estimator="diff2")


def _galaxy_frame(seed=0, shape=(512, 384), gain=2.0, rn_e=5.0, sky_e=100.0):
    """ADU frame with a galaxy over much of the field; returns (image, true per-pixel noise in ADU)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[: shape[0], : shape[1]]
    electrons = sky_e + 4000.0 * np.exp(-np.hypot(y - 200, x - 150) / 120.0)
    image = (electrons + rng.standard_normal(shape) * np.sqrt(electrons + rn_e**2)) / gain
    return image.astype(np.float32), np.sqrt(electrons + rn_e**2) / gain


def test_local_noise_map_follows_the_poisson_noise_of_a_galaxy():
    from kercr.data.normalization import local_background_noise

    image, true_noise = _galaxy_frame()
    background, noise, sky, sigma = local_background_noise(image, config=LOCAL)
    ratio = noise / true_noise
    # The noise changes 4x across the frame; the map follows it to a few per cent everywhere.
    assert true_noise.max() / true_noise.min() > 3.5
    inner = ratio[32:-32, 32:-32]
    assert 0.92 < np.percentile(inner, 1) and np.percentile(inner, 99) < 1.08  # low at the cusp
    # In the outer ring of blocks the 3 x 3 block median (reflected at the edge) takes the next
    # block inward: on a steep gradient that reads up to ~25 % high.
    assert 0.9 < np.percentile(ratio, 1) and np.percentile(ratio, 99) < 1.25
    assert background.shape == noise.shape == image.shape and noise.dtype == np.float32
    normalized, params = normalize(image, config=LOCAL)
    # The faint corner sits at its own background with about unit noise; with one sky and noise
    # per frame (the galaxy's), it is pushed to the clip. (In the outer ring of blocks the
    # background, like the noise, can read one block inward: see above.)
    corner = normalized[-96:-32, -96:-32]
    assert abs(np.median(corner)) < 0.3 and 0.8 < corner.std() < 1.6
    globally, _ = normalize(image, config=NormalizationConfig(noise_estimator="diff2"))
    assert np.median(globally[-64:, -64:]) < -5
    assert params.config.noise_model == "local" and params.noise == pytest.approx(sigma)


def test_the_smaller_axis_is_not_inflated_by_row_structure_and_nearest_edges_read_their_own_blocks():
    from kercr.data.normalization import local_background_noise

    rng = np.random.default_rng(5)
    image = rng.normal(100.0, 5.0, (256, 256)).astype(np.float32)
    image += (6.0 * rng.standard_normal((1, 256)).cumsum(1)).astype(np.float32)  # structure along rows
    larger = local_background_noise(image, config=LOCAL)[1]
    smaller = local_background_noise(image, config=dataclasses.replace(LOCAL, local_axis="smaller"))[1]
    assert np.median(smaller) == pytest.approx(5.0, rel=0.05) and np.median(larger) > 1.3 * 5.0
    # A steep gradient: the outer ring of blocks reads its own noise with "nearest", not the next block inward's.
    galaxy, true_noise = _galaxy_frame()
    reflect = local_background_noise(galaxy, config=LOCAL)[1] / true_noise
    nearest = local_background_noise(galaxy, config=dataclasses.replace(LOCAL, local_edges="nearest"))[1] / true_noise
    assert np.percentile(np.abs(nearest - 1), 99) < np.percentile(np.abs(reflect - 1), 99)
    with pytest.raises(KercrDataError, match="local_axis='mean' is not one of"):
        NormalizationConfig(local_axis="mean")
    with pytest.raises(KercrDataError, match="local_edges='wrap' is not one of"):
        NormalizationConfig(local_edges="wrap")


def test_local_noise_is_not_quantized_on_integer_frames():
    rng = np.random.default_rng(3)
    gain, electrons = 15.0, 450.0
    image = np.round((electrons + rng.standard_normal((256, 256)) * np.sqrt(electrons + 25.0)) / gain)
    truth = np.sqrt(np.sqrt(electrons + 25.0) ** 2 / gain**2 + 1 / 12)  # rounding adds 1/12 ADU^2
    _, params = normalize(image.astype(np.float32), config=LOCAL)
    assert params.noise == pytest.approx(truth, rel=0.04)
    # the MAD of pixel differences is quantized on the same frame
    assert robust_sky_noise(image, config=NormalizationConfig(noise_estimator="diff2"))[1] < 0.8 * truth


def test_local_noise_honours_masks_nan_and_odd_sizes_and_keeps_the_input():
    image, _ = _galaxy_frame(shape=(100, 77))
    image[10:50, 5:40] = np.nan  # more than a whole block
    mask = np.zeros(image.shape, bool)
    mask[60:70, 60:70] = True
    image[60:70, 60:70] = 1e6  # masked: must not move the maps
    before = image.copy()
    out, _ = normalize(image, mask=mask, config=LOCAL)
    assert np.array_equal(image, before, equal_nan=True)
    assert np.all(np.isfinite(out)) and np.all(out[10:50, 5:40] == 0.0)
    from kercr.data.normalization import local_background_noise

    _, noise, _, _ = local_background_noise(image, mask=mask, config=LOCAL)
    _, noise_unmasked, _, _ = local_background_noise(np.where(mask, image[0, 0], image), config=LOCAL)
    assert np.all(np.isfinite(noise)) and noise.min() > 0
    assert np.abs(noise / noise_unmasked - 1).max() < 0.3  # a 1e6 block does not leak into the map
    small, _ = normalize(np.random.default_rng(0).standard_normal((20, 13)).astype(np.float32), config=LOCAL)
    assert small.shape == (20, 13) and 0.7 < small.std() < 1.3


def test_models_saved_before_the_noise_model_normalize_as_before(frame):
    old = {k: v for k, v in NormalizationConfig(noise_estimator="diff2").to_dict().items()
           if k not in ("noise_model", "block_size")}  # a normalization.json written before this option
    config = NormalizationConfig.from_dict(old)
    assert config.noise_model == "global"
    a, _ = normalize(frame, config=config)
    sky, noise, _ = robust_sky_noise(frame, config=config)
    np.testing.assert_array_equal(a, np.clip((frame - np.float32(sky)) * np.float32(1 / noise), -10, 1000))


def test_noise_model_and_block_size_are_checked():
    with pytest.raises(KercrDataError, match="noise_model"):
        NormalizationConfig(noise_model="pixel")
    with pytest.raises(KercrDataError, match="block_size"):
        NormalizationConfig(noise_model="local", block_size=4)
    assert NormalizationConfig.from_dict(LOCAL.to_dict()) == LOCAL


# --- noise_model="relative": the background map, the frame's noise scaled by the block noise map

RELATIVE = NormalizationConfig(noise_model="relative", noise_estimator="diff2", local_axis="smaller",
                               local_edges="nearest")


def test_relative_noise_keeps_the_global_input_where_sky_and_noise_are_flat():
    """A plain field or a cutout of a few blocks: the input the shipped model was trained on."""
    image = np.random.default_rng(7).normal(300.0, 6.0, (200, 150)).astype(np.float32)
    image[50, 40:60] += 400.0  # a CR
    glob, gparams = normalize(image, config=dataclasses.replace(RELATIVE, noise_model="global"))
    rel, params = normalize(image, config=RELATIVE)
    assert (params.sky, params.noise) == (gparams.sky, gparams.noise)
    # the block estimates scatter by a few per cent around their median; no more
    assert np.abs(rel - glob).max() < 0.1 * np.abs(glob).max()
    assert np.percentile(np.abs(rel / np.where(glob == 0, 1, glob) - 1)[np.abs(glob) > 1], 99) < 0.1


def test_relative_noise_measures_each_pixel_against_its_own_background_and_noise_on_a_galaxy():
    image, true_noise = _galaxy_frame()
    rel, params = normalize(image, config=RELATIVE)
    glob, gparams = normalize(image, config=dataclasses.replace(RELATIVE, noise_model="global"))
    # The faint corner sits at its own background with about unit noise; with one sky and noise
    # per frame (the galaxy's) it is pushed to the clip.
    corner = (slice(-96, -32), slice(-96, -32))
    assert abs(np.median(rel[corner])) < 0.3 and 0.8 < rel[corner].std() < 1.3
    assert np.median(glob[corner]) < -5
    # Unit noise on the galaxy too (pixel differences two apart, which its smooth light does not
    # change), where the frame's one noise (read over the whole frame) makes it 1.3 and more.
    def noise_of(a, sl):
        return np.std(a[sl][:, 2:] - a[sl][:, :-2]) / np.sqrt(2)

    for sl in [(slice(150, 200), slice(100, 150)), (slice(250, 300), slice(200, 250))]:
        assert 0.85 < noise_of(rel, sl) < 1.15 and noise_of(glob, sl) > 1.25
    # It is the local input with the noise map rescaled to the frame's one noise at its median.
    from kercr.data.normalization import local_background_noise

    local, _ = normalize(image, config=dataclasses.replace(RELATIVE, noise_model="local"))
    sigma = local_background_noise(image, config=RELATIVE)[3]
    inside = (local > -5) & (local < 500)
    np.testing.assert_allclose(rel[inside] * (gparams.noise / sigma), local[inside], rtol=1e-5, atol=1e-5)
    assert (params.sky, params.noise) == (gparams.sky, gparams.noise)
    assert NormalizationConfig.from_dict(RELATIVE.to_dict()) == RELATIVE


def test_relative_noise_honours_masks_nan_and_keeps_the_input():
    image, _ = _galaxy_frame(shape=(100, 77))
    image[10:50, 5:40] = np.nan
    mask = np.zeros(image.shape, bool)
    mask[60:70, 60:70] = True
    image[60:70, 60:70] = 1e6
    before = image.copy()
    out, _ = normalize(image, mask=mask, config=RELATIVE)
    assert np.array_equal(image, before, equal_nan=True)
    assert np.all(np.isfinite(out)) and np.all(out[10:50, 5:40] == 0.0)
    # masked pixels count as NaN ones do: the 1e6 block moves neither the frame's noise nor the maps
    as_nan, _ = normalize(np.where(mask, np.nan, image), config=RELATIVE)
    np.testing.assert_allclose(out[~mask], as_nan[~mask], rtol=1e-6)
    assert np.abs(out[~mask]).max() < 100


# --- local_gate: the maps only where the background departs from the frame's sky

GATED = dataclasses.replace(RELATIVE, local_gate=5.0)
GLOBAL_DIFF2 = NormalizationConfig(noise_estimator="diff2", asinh_softening=RELATIVE.asinh_softening)


def test_gated_relative_noise_is_the_global_input_beside_a_compact_galaxy():
    """A compact galaxy (10 noise units at its peak, 30 px sigma) moves the 32-px background map
    by about 2 noise units: the ungated input subtracts part of it, the gated one keeps the one
    sky and noise of the frame."""
    rng = np.random.default_rng(11)
    y, x = np.mgrid[:256, :256]
    image = (300.0 + 60.0 * np.exp(-0.5 * np.hypot(y - 128, x - 128) ** 2 / 30.0**2)
             + rng.normal(0.0, 6.0, (256, 256))).astype(np.float32)
    image[100, 120:124] += 500.0  # a CR on the galaxy's flank
    glob, gparams = normalize(image, config=dataclasses.replace(RELATIVE, noise_model="global"))
    ungated, _ = normalize(image, config=RELATIVE)
    gated, params = normalize(image, config=GATED)
    assert np.abs(ungated - glob)[118:138, 118:138].mean() > 1.0  # it can fail: the ungated map moves
    np.testing.assert_allclose(gated, glob, rtol=1e-6, atol=1e-5)
    assert (params.sky, params.noise) == (gparams.sky, gparams.noise)


def test_gated_relative_noise_is_the_relative_input_on_a_large_galaxy_and_blends_between():
    from kercr.data.normalization import local_background_noise

    image, _ = _galaxy_frame()
    gated, _ = normalize(image, config=GATED)
    ungated, _ = normalize(image, config=RELATIVE)
    glob, _ = normalize(image, config=dataclasses.replace(RELATIVE, noise_model="global"))
    sky, noise, _ = robust_sky_noise(image, config=GATED)
    background, noise_map, _, median = local_background_noise(image, config=GATED)
    d = np.abs(background.astype(np.float64) - sky) / noise
    full, none = d >= 2 * GATED.local_gate + 0.01, d <= GATED.local_gate - 0.01
    assert full.mean() > 0.3 and none.mean() > 0.05  # both regimes are on the frame
    np.testing.assert_allclose(gated[full], ungated[full], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(gated[none], glob[none], rtol=1e-5, atol=1e-5)
    # Between, a linear blend of the background and of the noise ratio.
    g = np.clip(d / GATED.local_gate - 1, 0, 1)
    want = (image - (sky + g * (background - sky))) / (noise * (1 + g * (noise_map / median - 1)))
    want = GATED.asinh_softening * np.arcsinh(np.clip(want, -10, 1000) / GATED.asinh_softening) \
        if GATED.asinh_softening else np.clip(want, -10, 1000)
    blend = ~full & ~none
    assert blend.mean() > 0.01
    np.testing.assert_allclose(gated[blend], want[blend], rtol=1e-4, atol=1e-4)
    # The faint corner is off the frame's sky (the galaxy's), so it keeps its own background there.
    corner = (slice(-96, -32), slice(-96, -32))
    assert abs(np.median(gated[corner])) < 0.3 and 0.8 < gated[corner].std() < 1.3


def _full_frame_maps(image, mask, config):
    """``normalize``'s per-pixel input as first written: the full-frame maps (:func:`input_maps`,
    made over the whole frame in one pass), then ``(image - background) / noise`` in float32. The
    relative blend itself is tested against its float64 formula above."""
    from kercr.data.normalization import _stretch

    background, noise_map = input_maps(image, mask=mask, config=config)
    out = image.astype(np.float32, copy=True)
    out -= background
    out /= noise_map
    return _stretch(out, config)


def test_input_maps_are_the_background_and_noise_of_every_input():
    """Global (and a frame too small for maps): one sky and noise everywhere; gated relative on a
    large galaxy: the maps, the frame's values where the gate is shut; the input is untouched."""
    image, true_noise = _galaxy_frame()
    keep = image.copy()
    background, noise = input_maps(image, config=GLOBAL_DIFF2)
    sky, sigma, _ = robust_sky_noise(image, config=GLOBAL_DIFF2)
    assert background.dtype == noise.dtype == np.float32 and background.shape == image.shape
    assert np.all(background == np.float32(sky)) and np.all(noise == np.float32(sigma))
    np.testing.assert_allclose(_full_frame_maps(image, None, GLOBAL_DIFF2), normalize(image, config=GLOBAL_DIFF2)[0],
                               rtol=1e-6, atol=1e-6)
    background, noise = input_maps(image, config=GATED)
    sky_only = background == np.float32(sky)  # the gate shut: the frame's sky and noise
    assert 0.1 < sky_only.mean() < 0.5 and np.all(noise[sky_only] == np.float32(sigma))
    # elsewhere the noise of each pixel's own background, the galaxy's photon noise (a 3x range)
    assert np.median(np.abs(noise / true_noise - 1)[~sky_only]) < 0.06 and noise.max() > 2.5 * noise.min()
    small = dataclasses.replace(GATED, local_min_blocks=10**3)
    for a, b in zip(input_maps(image, config=small), input_maps(image, config=GLOBAL_DIFF2)):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(image, keep)


@pytest.mark.parametrize("config", [dataclasses.replace(RELATIVE, noise_model="local"), RELATIVE, GATED,
                                    dataclasses.replace(GATED, block_size=33, local_axis="larger")],
                         ids=["local", "relative", "gated", "gated-33px-larger"])
def test_the_maps_made_a_strip_at_a_time_give_the_full_frame_input_to_the_bit(monkeypatch, config):
    """normalize measures the block grids and applies the maps MAP_CHUNK_ROWS rows at a time, and
    skips the maps on rows where the gate is shut: the float32 input is the one-pass result, bit for
    bit, whatever the strip (one block row, a few, the whole frame)."""
    import kercr.data.normalization as normalization

    rng = np.random.default_rng(5)
    y, x = np.mgrid[:700, :300]
    light = 300.0 * np.exp(-0.5 * np.hypot(y - 580, x - 150) ** 2 / 60.0**2)  # a galaxy low on the frame
    image = (300.0 + light + rng.normal(0.0, 1.0, light.shape) * np.sqrt(36.0 + light)).astype(np.float32)
    image[17, 5], image[400, 3:9] = np.nan, np.inf
    mask = np.zeros(image.shape, bool)
    mask[650:680, 100:140] = True
    monkeypatch.setattr(normalization, "MAP_CHUNK_ROWS", 10**6)  # one strip: the grids as first measured
    want = _full_frame_maps(image, mask, config)
    grids = normalization.local_block_grids(image, mask=mask, config=config)
    if config.local_gate is not None:  # both kinds of rows are on the frame (it can fail)
        sky, noise, _ = robust_sky_noise(image, mask=mask, config=config)
        shut = ~normalization._gate_may_open(grids[0], sky, noise, config.local_gate, image.shape[0],
                                             config.block_size)
        assert 0.2 < shut.mean() < 0.8
        flat = normalization._stretch((image - np.float32(sky)) / np.float32(noise), config)
        np.testing.assert_array_equal(want[shut], flat[shut])  # the gate is shut there: the frame's sky and noise
    for rows in (1, config.block_size, 3 * config.block_size + 5, 10**6):
        monkeypatch.setattr(normalization, "MAP_CHUNK_ROWS", rows)
        for a, b in zip(normalization.local_block_grids(image, mask=mask, config=config), grids):
            np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(normalize(image, mask=mask, config=config)[0], want)


@pytest.mark.parametrize("shape", [(5, 60), (6, 6), (20, 7), (40, 33), (97, 130)])
@pytest.mark.parametrize("dtype", [np.float32, np.int16])
def test_the_strips_give_the_one_pass_input_on_small_and_integer_frames(monkeypatch, shape, dtype):
    """Frames of a few rows (down to the 5 the statistics need) or less than a block, integer
    pixels, no mask: the strips and the one-pass maps agree to the bit."""
    import kercr.data.normalization as normalization

    image = np.random.default_rng(shape[0]).normal(200.0, 5.0, shape)
    image[: shape[0] // 2] += np.linspace(0.0, 300.0, shape[1])  # a background that opens the gate
    image = image.astype(dtype)
    for config in (dataclasses.replace(GATED, block_size=9), dataclasses.replace(RELATIVE, block_size=9),
                   dataclasses.replace(RELATIVE, noise_model="local", block_size=9)):
        monkeypatch.setattr(normalization, "MAP_CHUNK_ROWS", 10**6)
        want = _full_frame_maps(image, None, config)
        grids = normalization.local_block_grids(image, config=config)
        monkeypatch.setattr(normalization, "MAP_CHUNK_ROWS", 1)
        for a, b in zip(normalization.local_block_grids(image, config=config), grids):
            np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(normalize(image, config=config)[0], want)


def test_local_gate_is_checked_and_saved():
    with pytest.raises(KercrDataError, match="local_gate.*relative"):
        NormalizationConfig(local_gate=5.0)
    for bad in (0, -1.0, float("nan"), float("inf"), True, "5"):
        with pytest.raises(KercrDataError, match="local_gate"):
            dataclasses.replace(RELATIVE, local_gate=bad)
    assert NormalizationConfig.from_dict(GATED.to_dict()) == GATED
    numpy_scalars = dataclasses.replace(GATED, local_gate=np.float32(5.0), local_min_blocks=np.int64(3))
    assert type(numpy_scalars.local_gate) is float and type(numpy_scalars.local_min_blocks) is int
    assert json.loads(json.dumps(numpy_scalars.to_dict()))["local_min_blocks"] == 3
    with pytest.raises(KercrDataError, match="local_min_blocks"):
        dataclasses.replace(GATED, local_min_blocks=np.float64(3.0))
    # A sidecar written before either option existed loads as the ungated relative input, every frame mapped.
    saved_before = {k: v for k, v in RELATIVE.to_dict().items() if k not in ("local_gate", "local_min_blocks")}
    old = NormalizationConfig.from_dict(saved_before)
    assert old == RELATIVE and (old.local_gate, old.local_min_blocks) == (None, None)
    image, _ = _galaxy_frame(shape=(80, 200))
    np.testing.assert_array_equal(normalize(image, config=old)[0], normalize(image, config=RELATIVE)[0])


def test_local_min_blocks_gives_small_frames_the_global_input():
    """A frame of fewer blocks than ``local_min_blocks`` on a side gets one sky and noise; a
    larger one keeps the maps."""
    image, _ = _galaxy_frame(shape=(80, 200))  # 2.5 x 6.25 blocks of 32 px
    config = dataclasses.replace(GATED, local_min_blocks=3)
    small, _ = normalize(image, config=config)
    glob, _ = normalize(image, config=dataclasses.replace(RELATIVE, noise_model="global"))
    gated, _ = normalize(image, config=GATED)
    np.testing.assert_array_equal(small, glob)
    assert np.abs(gated - glob).max() > 1.0  # it can fail: without the rule the maps move this frame
    big, _ = _galaxy_frame()
    np.testing.assert_array_equal(normalize(big, config=config)[0], normalize(big, config=GATED)[0])
    with pytest.raises(KercrDataError, match="local_min_blocks"):
        dataclasses.replace(GATED, local_min_blocks=0)
    with pytest.raises(KercrDataError, match="local_min_blocks.*relative"):
        NormalizationConfig(local_min_blocks=3)
    assert NormalizationConfig.from_dict(config.to_dict()) == config


def test_normalize_refuses_a_probability_map_as_mask_and_a_complex_image():
    image = np.random.default_rng(0).normal(100.0, 5.0, (64, 64)).astype(np.float32)
    with pytest.raises(KercrDataError, match="mask has dtype float64; pass a boolean mask"):
        normalize(image, mask=np.full(image.shape, 0.4))
    with pytest.raises(KercrDataError, match="pass a real-valued image"):
        normalize(image + 1j)
    normalize(image, mask=np.zeros(image.shape, np.uint8))  # 0/1 integers are a mask


def test_normalization_constants_are_checked():
    with pytest.raises(KercrDataError, match="nan_fill=nan must be a finite number"):
        NormalizationConfig(nan_fill=float("nan"))
    with pytest.raises(KercrDataError, match="n_iter=2.5 a whole number"):
        NormalizationConfig(n_iter=2.5)
