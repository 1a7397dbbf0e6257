"""Every script under benchmarks/ parses with the Python that runs the tests.

Most benchmarks run for minutes and are not run by the suite; this catches what would stop them
before they start (a syntax only newer Pythons accept, say) on the Python CI uses.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SCRIPTS = sorted((Path(__file__).resolve().parents[2] / "benchmarks").glob("*.py"))


def test_there_are_benchmark_scripts():
    assert any(p.name == "bench_detect.py" for p in SCRIPTS)


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_benchmark_script_parses(script):
    ast.parse(script.read_text(), filename=str(script))


def _kercr_imports(script):
    """``(line, module, name)`` of every ``from kercr... import name`` in ``script``, functions included,
    but for the fallbacks under ``except ImportError:`` (golden_outputs.py also runs older kercrs)."""
    tree = ast.parse(script.read_text(), filename=str(script))
    fallbacks = {id(inner) for handler in ast.walk(tree) if isinstance(handler, ast.ExceptHandler)
                 and "ImportError" in ast.unparse(handler.type or ast.Name("BaseException")) for inner in ast.walk(handler)}
    for node in ast.walk(tree):
        if id(node) in fallbacks:
            continue
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == "kercr":
            for alias in node.names:
                yield node.lineno, node.module, alias.name


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_every_kercr_name_a_benchmark_imports_exists(script):
    """A benchmark imports kercr inside main() (so that --help stays light): a module moved by a
    redesign only shows when someone runs it, minutes in (bench_interpreters.py imported
    kercr.export.tflite.TFLiteRunner, which had moved to kercr.export.litert)."""
    import importlib
    import warnings

    missing = []
    for line, module, name in _kercr_imports(script):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                found = importlib.import_module(module)
        except ImportError as err:
            missing.append(f"line {line}: {module} ({err})")
            continue
        if name != "*" and not hasattr(found, name):
            try:
                importlib.import_module(f"{module}.{name}")
            except ImportError:
                missing.append(f"line {line}: {module}.{name}")
    assert not missing, f"{script.name} imports what kercr does not have: {missing}"


def _load_script(name):
    """benchmarks/NAME.py as a module, with benchmarks/ on sys.path for the scripts it imports; undone after."""
    import importlib.util
    import sys

    folder = str(SCRIPTS[0].parent)
    sys.path.insert(0, folder)
    spec = importlib.util.spec_from_file_location(name, SCRIPTS[0].parent / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        while folder in sys.path:  # a script may put its folder on the path itself
            sys.path.remove(folder)
        sys.modules.pop("real_frames", None)


@pytest.fixture()
def peers():
    """benchmarks/peers.py as a module (it imports real_frames.py beside it)."""
    yield from _load_script("peers")


@pytest.fixture()
def real_frames():
    """benchmarks/real_frames.py as a module."""
    yield from _load_script("real_frames")


@pytest.fixture()
def frame_classes():
    """benchmarks/frame_classes.py as a module (it imports real_frames.py beside it)."""
    yield from _load_script("frame_classes")


def test_peers_padding_gives_the_network_a_multiple_and_every_pixel_back(peers):
    """Cosmic-CoNN crops to a multiple of 16 and deepCR pads with zeros; the benchmark reflect-pads for both."""
    import numpy as np

    image = np.arange(37 * 50, dtype=np.float32).reshape(37, 50)
    seen = []

    def run(x):
        seen.append(x.shape)
        return x * 2

    out = peers._padded(image, 16, run)
    assert seen == [(48, 64)]
    assert out.shape == image.shape and out.dtype == np.float32
    np.testing.assert_array_equal(out, image * 2)  # every pixel the network's, none left at zero
    assert peers._padded(image[:32, :48], 16, run).shape == (32, 48) and seen[-1] == (32, 48)


def test_peers_credits_each_peer_with_its_best_input_variant(peers):
    rows = {"kercr": {"tpr_at_fpr_1e-4": 0.9},
            "cosmic-conn (ADU)": {"tpr_at_fpr_1e-4": 0.3}, "cosmic-conn (electrons)": {"tpr_at_fpr_1e-4": 0.4},
            "deepcr-decam (ADU, sky subtracted)": {"tpr_at_fpr_1e-4": 0.6},
            "deepcr-decam (electrons)": {"tpr_at_fpr_1e-4": 0.1}}
    assert peers.best_variants(rows) == {"cosmic-conn": "cosmic-conn (electrons)",
                                         "deepcr-decam": "deepcr-decam (ADU, sky subtracted)"}
    with pytest.raises(ValueError, match="unknown peer"):
        peers.load_peer("lacosmic", 1)


def test_real_frame_variants_bin_frames_and_footprints_alike_and_add_a_seeded_sky(peers):
    """real_frames.py --variant: binned frames get binned footprints (charge kept); bright sky is seeded and additive."""
    import sys

    import numpy as np

    vary = sys.modules["real_frames"].vary
    rng = np.random.default_rng(0)
    image = rng.normal(100, 5, (9, 12)).astype(np.float32)
    ignore = np.zeros((9, 12), bool)
    ignore[3, 5] = True
    stamp = np.array([[0, 80, 0], [0, 200, 60]], np.float32)
    frames = [("f", image, ignore, 4.0, 7.0)]
    before = image.copy()

    assert vary(frames, [stamp], "as-is") == (frames, [stamp])
    (binned,), (bstamp,) = vary(frames, [stamp], "binned")
    name, img, ign, gain, rn = binned[:5]
    assert not binned.whole_adu and binned.noise_adu is None  # measured by injected(), as for the frames as they are
    assert img.shape == (4, 6) and ign.shape == (4, 6) and (gain, rn) == (4.0, 14.0)
    np.testing.assert_allclose(img[1, 2], image[2:4, 4:6].sum(), rtol=1e-6)
    assert ign[1, 2] and ign.sum() == 1  # a block with one ignored pixel is ignored
    assert bstamp.shape == (1, 2) and bstamp.sum() == stamp.sum()  # the same charge, in half the pixels

    (bright,), _ = vary(frames, [stamp], "bright-sky")
    (again,), _ = vary(frames, [stamp], "bright-sky")
    np.testing.assert_array_equal(bright[1], again[1])
    added = bright[1] - image
    assert abs(added.mean() - 5000) < 50 and 20 < added.std() < 60  # 5,000 ADU with Poisson noise at gain 4
    np.testing.assert_array_equal(image, before)  # the input frames are not modified
    with pytest.raises(ValueError, match="unknown variant"):
        vary(frames, [stamp], "dark")


def _sky_frame(noise_adu, shape=(120, 100), gain=4.0, seed=0):
    """A flat 300 ADU sky with Gaussian noise and one ignored pixel, as real_frames.vary takes it."""
    import numpy as np

    image = np.random.default_rng(seed).normal(300, noise_adu, shape).astype(np.float32)
    ignore = np.zeros(shape, bool)
    ignore[7, 9] = True
    return ("f", image, ignore, gain, 7.0)


def test_real_frame_galaxy_variant_adds_a_seeded_source_over_30_to_70_percent_without_saturating(real_frames):
    import numpy as np
    from scipy import ndimage

    frame = _sky_frame(10.0)
    before = frame[1].copy()
    (gal,), stamps = real_frames.vary([frame], [], "galaxy")
    (again,), _ = real_frames.vary([frame], [], "galaxy")
    np.testing.assert_array_equal(gal.image, again.image)  # seeded per frame
    np.testing.assert_array_equal(frame[1], before)  # the input is not modified
    assert stamps == [] and gal.ignore is frame[2] and (gal.gain, gal.readnoise) == (4.0, 7.0) and not gal.whole_adu
    added = (gal.image - frame[1]).astype(np.float64)
    sky_var_e = (10.0 * 4.0) ** 2
    # the source (its photon noise averaged out over 5 x 5 px) exceeds the sky's variance on 30-70 % of the frame
    cover = (ndimage.uniform_filter(added, 5) * 4.0 > sky_var_e).mean()
    assert 0.25 < cover < 0.75
    assert gal.image[~gal.ignore].max() < real_frames.GALAXY_MAX_ADU
    # the "visible" noise map carries the source's photon noise: higher where the source is bright
    assert gal.noise_adu.shape == frame[1].shape
    bright = added > np.percentile(added, 90)
    assert gal.noise_adu[bright].mean() > 1.5 * gal.noise_adu.min() and gal.noise_adu.min() >= 9.0


def test_real_frame_integer_variant_is_whole_adu_after_injection_at_the_new_gain(real_frames):
    import numpy as np

    frame = _sky_frame(10.0)  # 40 e- of noise: G = 40 / 1.5 = 26.7 e-/ADU
    (integer,), _ = real_frames.vary([frame], [], "integer")
    assert abs(integer.gain - 40.0 / 1.5) < 1.0 and integer.whole_adu and integer.ignore is frame[2]
    assert abs(np.median(integer.image) - 50.0) < 0.5 and abs(integer.image.std() - 1.5) < 0.1
    assert not np.all(integer.image == np.round(integer.image))  # rounded only after the CRs are injected
    (low,), _ = real_frames.vary([_sky_frame(1.0)], [], "integer")  # 4 e- of noise: the least gain, 10
    assert low.gain == 10.0 and low.image.std() < 0.6

    stamp = np.full((3, 4), 2000.0, np.float32)  # electrons
    (name, r, img, truth, snr, ignore, gain, readnoise, _), = real_frames.injected([integer], [stamp], 1)
    assert np.all(img == np.round(img))  # whole ADU, CRs included
    assert gain == integer.gain and truth.sum() > 0
    # the charge is added at gain G: 2000 e- / 26.7 = 75 ADU a pixel (rounding: +-0.5)
    np.testing.assert_allclose((img - integer.image)[truth], 2000.0 / integer.gain, atol=0.51)
    # "visible" SNR: charge over the frame's noise in e- (about 1.5 ADU x G, and the rounding)
    np.testing.assert_allclose(snr[truth], 2000.0 / (integer.noise_adu * integer.gain), rtol=1e-5)
    assert 1.4 < integer.noise_adu < 1.7


def test_real_frame_variants_on_the_real_frames(real_frames):
    """On the real DECam/GMOS cutouts: galaxies cover 30-70 % of each frame; integer frames stay whole when injected."""
    import numpy as np
    from scipy import ndimage

    if not (real_frames.SHARED / "decam_cp").is_dir() or not (real_frames.SHARED / "cr_footprints").is_dir():
        pytest.skip(f"{real_frames.SHARED} (real frames and footprints) not found")
    from kercr.data.frames import load_footprints

    frames = real_frames.real_frames()
    stamps = load_footprints(real_frames.SHARED / "cr_footprints" / "cosmic_rays_itl_2017_even.fits")
    galaxies, _ = real_frames.vary(frames, stamps, "galaxy")
    covers = []
    for f, g in zip(frames, galaxies):
        _, noise = real_frames._sky_noise(real_frames.Frame(*f))
        smooth = ndimage.uniform_filter((g.image - f[1]).astype(np.float64), 5) * f[3]
        covers.append((smooth > (noise * f[3]) ** 2).mean())
        assert g.image[~g.ignore].max() < real_frames.GALAXY_MAX_ADU
    assert 0.3 <= np.median(covers) <= 0.7 and min(covers) > 0.2 and max(covers) < 0.8
    integers, _ = real_frames.vary(frames, stamps, "integer")
    assert all(f.gain >= 10 for f in integers)
    for name, r, img, truth, *_ in real_frames.injected(integers, stamps, 1):
        assert np.all(img[np.isfinite(img)] == np.round(img[np.isfinite(img)])), name


def test_frame_classes_scores_each_class_on_frames_of_that_class(frame_classes, tmp_path):
    """frame_classes.py --tiny: three classes (and all) with consistent metrics, each frame of its class."""
    import json

    import kercr

    path = tmp_path / "tiny.keras"
    kercr.build_model("deepcr_2_4").save(path)
    assert frame_classes.main(["--tiny", "--model", str(path), "--out", str(tmp_path / "out")]) == 0
    report = json.loads((tmp_path / "out" / "frame_classes.json").read_text())
    assert report["shape"] == [256, 256] and report["seed"] == 9001
    frames = report["frames"]
    assert sorted(frames) == sorted(frame_classes.CLASSES) and all(len(v) == 1 for v in frames.values())
    assert all(f["class"] == c for c, items in frames.items() for f in items)
    (plain,), (dominant,), (integer,) = frames["plain"], frames["dominant"], frames["integer"]
    assert integer["whole_adu"] and not plain["whole_adu"] and not dominant["whole_adu"]
    assert 10 <= integer["gain"] <= 30
    assert dominant["background_spread"] > 5 * max(plain["background_spread"], 1.0)
    (row,) = report["models"].values()
    assert set(row["classes"]) == {*frame_classes.CLASSES, "all"}
    assert row["classes"]["all"]["cr_pixels"] == sum(row["classes"][c]["cr_pixels"] for c in frame_classes.CLASSES)
    for c, m in row["classes"].items():
        assert m["cr_pixels"] > 0
        if c != "all":
            assert m["cr_pixels"] == frames[c][0]["cr_pixels"]  # the frame's unignored CR pixels, all scored
        # The numbers at the threshold follow from the pixel counts; TPR rises with the FPR allowed.
        fp = m["false_positives_at_threshold"]
        tp = round(m["tpr_at_threshold"] * m["cr_pixels"])
        assert m["fpr_at_threshold"] == pytest.approx(fp["false_positives"] / m["non_cr_pixels"], rel=1e-12), c
        assert m["dice_at_threshold"] == pytest.approx(2 * tp / (tp + fp["false_positives"] + m["cr_pixels"]),
                                                       rel=1e-12), c
        assert m["tpr_at_fpr_1e-4"] <= m["tpr_at_fpr_1e-3"] and m["precision_at_recall_0.95"] is not None, c
        assert fp["near_cr"] + fp["elsewhere"] == fp["false_positives"]
        assert fp["on_bleed"] + fp["elsewhere_off_bleed"] == fp["elsewhere"]
        if fp["false_positives"]:
            assert fp["share_near_cr"] == pytest.approx(fp["near_cr"] / fp["false_positives"], rel=1e-12), c
    # "all" pools the classes' pixels.
    for key in ("non_cr_pixels",):
        assert row["classes"]["all"][key] == sum(row["classes"][c][key] for c in frame_classes.CLASSES)
    assert row["classes"]["all"]["false_positives_at_threshold"]["false_positives"] == sum(
        row["classes"][c]["false_positives_at_threshold"]["false_positives"] for c in frame_classes.CLASSES)
    # seeded: the same frames again
    again = frame_classes.class_frames(frame_classes.frame_source(shape=(256, 256)), 1)
    assert [i for i, *_ in again["integer"]] == [integer["index"]]
    # --threshold replaces the card's cut: at 0 every scored pixel is flagged.
    assert frame_classes.main(["--tiny", "--model", str(path), "--threshold", "0", "--out", str(tmp_path / "t0")]) == 0
    (row0,) = json.loads((tmp_path / "t0" / "frame_classes.json").read_text())["models"].values()
    assert row0["threshold"] == 0 and row0["classes"]["all"]["fpr_at_threshold"] == 1.0


def test_class_metrics_counts_false_positives_on_bleed_trails_apart(frame_classes):
    import numpy as np

    truth = np.zeros(10, bool)
    truth[0] = True
    near = np.zeros(10, bool)
    near[1] = True  # the CR's rim
    bleed = np.zeros(10, bool)
    bleed[[1, 2, 3]] = True  # pixel 1 is both: it counts as near the CR
    flagged = np.zeros(10, bool)
    flagged[[0, 1, 2, 5]] = True
    fp = frame_classes.class_metrics(truth, flagged.astype(float), flagged, near, bleed)["false_positives_at_threshold"]
    assert (fp["near_cr"], fp["elsewhere"], fp["on_bleed"], fp["elsewhere_off_bleed"]) == (1, 2, 1, 1)


def test_false_positive_split_counts_the_rim_of_each_cr(real_frames):
    import numpy as np

    truth = np.zeros((6, 8), bool)
    truth[2, 3] = True
    flagged = truth.copy()
    flagged[1, 4] = flagged[3, 3] = True  # touch the CR (diagonal and below)
    flagged[5, 7] = True  # elsewhere
    near = real_frames.near_crs(truth)
    assert near.sum() == 8 and not near[2, 3]
    split = real_frames.false_positive_split(truth, flagged, near)
    assert (split["near_cr"], split["elsewhere"], split["false_positives"]) == (2, 1, 3)
    assert split["share_near_cr"] == pytest.approx(2 / 3) and split["fpr_near_cr"] == pytest.approx(2 / 8)
    assert split["fpr_elsewhere"] == pytest.approx(1 / 39)


@pytest.fixture()
def device_training():
    """benchmarks/device_training.py, imported by name (its frame makers are spawned processes,
    which pickle its functions by module name)."""
    import importlib
    import sys

    folder = str(SCRIPTS[0].parent)
    sys.path.insert(0, folder)
    try:
        yield importlib.import_module("device_training")
    finally:
        sys.path.remove(folder)
        sys.modules.pop("device_training", None)


def test_device_training_stores_exactly_the_frames_a_run_reads(device_training, tmp_path):
    """The frame store must hold every frame kercr-train would read, or a run there would make
    frames itself (slow) -- and the stored frames must be the ones kercr-train makes."""
    import numpy as np

    from kercr.config import resolve_config
    from kercr.data.frames import SyntheticFrames
    from kercr.training_data import make_training_data

    flags = dict(frames=12, frame_shape=[128, 128], patch_size=64, batch_size=4, patches_per_frame=8,
                 epochs=3, steps_per_epoch=5, validation_steps=2, noise_model="local", integer_frames=0.5,
                 tensorboard_images=0, out=str(tmp_path / "run"))
    config = resolve_config({}, flags)
    read = []
    made = SyntheticFrames.frame

    def spy(self, i):
        read.append(i)
        return made(self, i)

    SyntheticFrames.frame = spy
    try:
        data = make_training_data(config)
        for epoch in range(config.epochs):
            for b in range(config.steps_per_epoch):
                data.train[b]
            data.train.on_epoch_end()
    finally:
        SyntheticFrames.frame = made
    planned = device_training.frames_read(config)
    assert set(read) == set(planned) and len(planned) == len(set(planned))
    # the store serves the same arrays kercr-train makes
    argv = ["--frames", "12", "--frame-shape", "128", "128", "--patch-size", "64", "--batch-size", "4",
            "--patches-per-frame", "8", "--epochs", "3", "--steps-per-epoch", "5", "--validation-steps", "2",
            "--noise-model", "local", "--integer-frames", "0.5", "--tensorboard-images", "0",
            "--out", str(tmp_path / "run")]
    assert device_training.resolve(argv) == config
    device_training.make_store(argv, config, tmp_path / "store", jobs=1)
    device_training.use_store(tmp_path / "store")
    try:
        from kercr.training_data import synthetic_source

        source = synthetic_source(config)
        fresh = made(synthetic_source(config), planned[0])
        stored = source.frame(planned[0])
        for a, b in zip(stored, fresh):
            np.testing.assert_array_equal(a, b)
    finally:
        from kercr.data import frames

        frames._CachedFrames.frame = made


@pytest.fixture()
def noise_channel():
    """benchmarks/noise_channel.py as a module (it imports frame_classes.py and real_frames.py beside it)."""
    yield from _load_script("noise_channel")
    import sys

    sys.modules.pop("frame_classes", None)


def test_noise_channel_sees_the_patches_of_the_division_run_with_two_channels(noise_channel):
    """Issue 22.1's channel arm: the frames, patches, flips, truth and weights of kercr-train's run
    for the same config; channel 0 the one-noise input, channel 1 log2 of the divisor's noise."""
    import numpy as np

    from kercr.config import resolve_config
    from kercr.data.normalization import input_maps, normalize
    from kercr.training.data import make_training_data

    config = resolve_config({"variety": "wide", "frames": 4, "frame_shape": [192, 160], "patch_size": 64,
                             "batch_size": 4, "steps_per_epoch": 2, "validation_steps": 1, "cr_rate_scale": 40.0,
                             "dominant_sources": 0.5, "asinh_softening": 10.0, "noise_estimator": "diff2",
                             "noise_model": "relative", "local_axis": "smaller", "local_edges": "nearest",
                             "local_gate": 5.0, "block_size": 16, "local_min_blocks": 3})
    division, channel = make_training_data(config), noise_channel.channel_training_data(config)
    for a, b in ((division.train[1], channel.train[1]), (division.val[0], channel.val[0])):
        assert a[0].shape[-1] == 1 and b[0].shape[-1] == 2
        np.testing.assert_array_equal(a[1], b[1])  # the same truth and weights, patch for patch
        np.testing.assert_array_equal(a[2], b[2])
        assert np.isfinite(b[0]).all() and np.abs(b[0][..., 1]).max() < 4
    source = channel.train.source
    cfg = config.normalization_config()
    i = next(i for i in range(50) if source.base.frame_class(i) == "dominant")  # a galaxy over 30-70 % of it
    image_adu, _, ignore, _ = source.base._make(i)
    x = noise_channel.two_channels(image_adu, ignore, cfg)
    _, params = normalize(image_adu, mask=ignore, config=noise_channel.image_config(cfg))
    background, noise = input_maps(image_adu, mask=ignore, config=cfg)
    np.testing.assert_allclose(2.0 ** x[..., 1] * params.noise, noise, rtol=1e-5)
    # channel 0: the division input's numerator over the frame's one noise (asinh-stretched)
    soft, z = cfg.asinh_softening, (image_adu - background) / params.noise
    inside = (z > cfg.clip_min) & (z < cfg.clip_max)  # not clipped
    assert inside.mean() > 0.99
    np.testing.assert_allclose((np.sinh(x[..., 0] / soft) * soft)[inside], z[inside], rtol=1e-4, atol=1e-3)
    shut = noise == np.float32(params.noise)  # where the gate is shut, the division input itself
    assert 0.05 < (~shut).mean() < 0.95
    division, _ = normalize(image_adu, mask=ignore, config=cfg)
    np.testing.assert_allclose(x[..., 0][shut], division[shut], rtol=1e-5, atol=1e-5)
    assert np.all(x[..., 1][shut] == 0)


def test_noise_channel_train_starts_a_fresh_run_and_records_its_input(noise_channel, tmp_path):
    """The script's own command on a tiny config: a two-channel run folder with input.json beside it."""
    import json

    config = tmp_path / "tiny.toml"
    config.write_text('model = "deepcr_2_4"\nvariety = "wide"\npatch_size = 64\nbatch_size = 4\nframes = 3\n'
                      'frame_shape = [192, 160]\ncr_rate_scale = 40.0\nasinh_softening = 10.0\n'
                      'noise_estimator = "diff2"\nnoise_model = "relative"\nlocal_gate = 5.0\nblock_size = 16\n')
    out = tmp_path / "run"
    assert noise_channel.main(["train", "--config", str(config), "--out", str(out), "--epochs", "1",
                               "--steps-per-epoch", "2", "--validation-steps", "1"]) == 0
    assert json.loads((out / "input.json").read_text())["input"] == "channel"
    assert json.loads((out / "config.json").read_text())["model_options"] == {"channels": 2}
    assert (out / "metrics.json").is_file()
    from kercr.training import data, run

    assert run.make_training_data is data.make_training_data  # kercr-train's own data again
