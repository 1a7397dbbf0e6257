"""kercr.export: TF Serving SavedModel, TFLite variants, parity reports, CLI and error handling.

One small export (deepcr_2_4, 64 x 64 tiles, every format and quantization) is shared by most
tests; every registry architecture, at small widths, is exported in every format once (the
TransUNets at their fixed tile, the convolutional models at a tile and run at another size).
"""

from __future__ import annotations

import hashlib
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
pytest.importorskip("ai_edge_litert")

import keras  # noqa: E402

import kercr  # noqa: E402
from kercr.data.normalization import NormalizationConfig, normalize  # noqa: E402
from kercr.export import ExportError, export_model, load_profile  # noqa: E402
from kercr.export.parity import synthetic_patches  # noqa: E402
from kercr.export.savedmodel import rest_body_to_kwargs, rest_response  # noqa: E402
from kercr.export.litert import TFLiteRunner  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
TILE = 64
# Non-default constants, so the tests see that the sidecar (not the default) reaches the graph;
# sample_size=500 makes the subsample step > 1 on 64 x 128 images.
SIDECAR = NormalizationConfig(clip_min=-5.0, clip_max=300.0, n_iter=3, sample_size=500, nan_fill=-1.0)
VARIANTS = ("float32", "float16", "dynamic", "int8")


def _save_model(folder: Path, name="deepcr_2_4", **overrides) -> Path:
    keras.utils.set_random_seed(0)
    model = kercr.build_model(name, **overrides)
    folder.mkdir(parents=True, exist_ok=True)
    model.save(folder / "best.keras")
    return folder


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A training-run-like dir (best.keras + normalization.json) exported with every option."""
    run = _save_model(tmp_path_factory.mktemp("run"))
    (run / "normalization.json").write_text(json.dumps(SIDECAR.to_dict()))
    out = tmp_path_factory.mktemp("models")
    result = export_model(run, out, formats=["savedmodel", "tflite"], quantize=["none", "float16", "dynamic", "int8"],
                          tile=TILE, calibration_patches=8, validation_patches=4, seed=0)
    model = keras.saving.load_model(run / "best.keras")
    return result, model, out


@pytest.fixture(scope="module")
def serving(exported):
    result, _, _ = exported
    return tf.saved_model.load(str(result.path)).signatures["serving_default"]


def _raw_tile(seed=3, shape=(TILE, TILE)):
    patches = synthetic_patches(1, tile=max(shape), seed=seed)
    return patches.image_adu[0][: shape[0], : shape[1]].copy()


def _keras_reference(model, image, config=SIDECAR):
    normalized, _ = normalize(image, config=config)
    return np.asarray(model(normalized[None, :, :, None], training=False))[0, :, :, 0]


# --- layout -------------------------------------------------------------------------------------

def test_layout_manifest_and_no_partial_dirs(exported):
    result, _, out = exported
    assert result.path == out / "kercr" / "1"
    expected = {"saved_model.pb", "variables/variables.index", "parity.json", "export.json", "normalization.json",
                *(f"tflite/kercr_{v}.tflite" for v in VARIANTS)}
    assert expected <= set(result.files)
    assert sorted(p.name for p in (out / "kercr").iterdir()) == ["1"]  # no hidden temporary dir left
    manifest = json.loads((result.path / "export.json").read_text())
    assert manifest["tile"] == TILE and manifest["input_multiple"] == 2 and manifest["fixed_tile"] is False
    assert manifest["normalization"] == SIDECAR.to_dict()
    assert manifest["normalization_source"].endswith("normalization.json")
    assert json.loads((result.path / "normalization.json").read_text()) == SIDECAR.to_dict()
    int8 = result.path / "tflite" / "kercr_int8.tflite"
    assert manifest["files"]["tflite/kercr_int8.tflite"]["sha256"] == hashlib.sha256(int8.read_bytes()).hexdigest()


# --- SavedModel ---------------------------------------------------------------------------------

def test_signature_names_shapes_dtypes(serving):
    args, kwargs = serving.structured_input_signature
    assert args == ()
    assert list(kwargs) == ["image"]
    assert kwargs["image"].dtype == tf.float32
    assert kwargs["image"].shape.as_list() == [None, None, None, 1]
    assert list(serving.structured_outputs) == ["cr_probability"]
    assert serving.structured_outputs["cr_probability"].dtype == tf.float32


def test_served_raw_pixels_equal_normalize_plus_keras(exported, serving):
    _, model, _ = exported
    a = _raw_tile(seed=3, shape=(TILE, 2 * TILE))  # dynamic H, W: not the export tile
    b = _raw_tile(seed=4, shape=(TILE, 2 * TILE)) + np.float32(750.0)  # another sky level in the same batch
    a[10, 17] = np.nan
    batch = np.stack([a, b])[..., None]
    served = serving(image=tf.constant(batch))["cr_probability"].numpy()
    assert served.shape == (2, TILE, 2 * TILE, 1) and served.dtype == np.float32
    for i, image in enumerate((a, b)):
        expected = _keras_reference(model, image)
        np.testing.assert_allclose(served[i, :, :, 0], expected, rtol=0, atol=1e-5)
    assert np.all(np.isfinite(served))
    # The comparison can fail: the default constants or no normalization give other answers.
    unnormalized = np.asarray(model(np.nan_to_num(batch[:1]), training=False))[0, :, :, 0]
    assert np.abs(unnormalized - served[0, :, :, 0]).max() > 1e-3
    default = _keras_reference(model, a, NormalizationConfig())
    assert np.abs(default - served[0, :, :, 0]).max() > 1e-5


def test_served_graph_errors(serving):
    with pytest.raises(tf.errors.InvalidArgumentError, match="constant"):
        serving(image=tf.constant(np.full((1, TILE, TILE, 1), 7.0, np.float32)))
    with pytest.raises(tf.errors.InvalidArgumentError, match="all NaN"):
        serving(image=tf.constant(np.full((1, TILE, TILE, 1), np.nan, np.float32)))
    with pytest.raises(tf.errors.InvalidArgumentError, match="multiples of 2"):
        serving(image=tf.constant(_raw_tile(shape=(TILE - 1, TILE))[None, :, :, None]))


def test_rest_bodies_row_and_columnar(exported, serving):
    _, model, _ = exported
    a, b = _raw_tile(seed=5), _raw_tile(seed=6) + np.float32(100.0)
    a[0, 0] = np.nan
    direct = serving(image=tf.constant(np.stack([a, b])[..., None]))["cr_probability"].numpy()
    bodies = {
        "row": json.dumps({"signature_name": "serving_default", "instances": [a[..., None].tolist(), b[..., None].tolist()]}),
        "row_named": json.dumps({"instances": [{"image": a[..., None].tolist()}, {"image": b[..., None].tolist()}]}),
        "columnar": json.dumps({"inputs": {"image": np.stack([a, b])[..., None].tolist()}}),
        "columnar_bare": json.dumps({"inputs": np.stack([a, b])[..., None].tolist()}),
    }
    assert "NaN" in bodies["row"]  # JSON NaN travels as a NaN pixel
    for kind, body in bodies.items():
        kwargs = rest_body_to_kwargs(body, serving)
        assert list(kwargs) == ["image"] and kwargs["image"].shape == (2, TILE, TILE, 1), kind
        outputs = serving(**kwargs)
        np.testing.assert_array_equal(outputs["cr_probability"].numpy(), direct, err_msg=kind)
    response = rest_response(outputs, row_format=True)
    assert np.asarray(response["predictions"]).shape == (2, TILE, TILE, 1)
    assert np.asarray(rest_response(outputs, row_format=False)["outputs"]).shape == (2, TILE, TILE, 1)
    np.testing.assert_allclose(np.asarray(response["predictions"][0])[..., 0], _keras_reference(model, a), atol=1e-5)


def test_the_serving_request_in_the_export_readme_is_accepted(serving):
    # export/README.md's request-building snippet, run as written: its body must parse as one tile.
    import contextlib
    import io
    import re

    text = (REPO / "export" / "README.md").read_text()
    snippet = re.search(r"python - <<'PY' > request.json\n(.*?)\nPY\n", text, re.S).group(1)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(snippet, {})
    kwargs = rest_body_to_kwargs(out.getvalue(), serving)
    assert kwargs["image"].shape == (1, 256, 256, 1)


@pytest.mark.parametrize("body, message", [
    ({"instances": [[1.0]], "inputs": [[1.0]]}, "exactly one"),
    ({"instances": [{"img": [[[1.0]]]}]}, "do not match"),
    ({"instances": [[[[1.0]], [[1.0], [2.0]]]]}, "convert"),
    ({"inputs": {"image": [[1.0, 2.0]]}}, "shape"),
    ([1, 2], "JSON object"),
])
def test_rest_body_errors(serving, body, message):
    with pytest.raises(ValueError, match=message):
        rest_body_to_kwargs(body, serving)


def test_saved_model_cli_show(exported):
    result, _, _ = exported
    cli = Path(sys.executable).with_name("saved_model_cli")
    if not cli.exists():
        pytest.skip("saved_model_cli is not installed beside this Python")
    shown = subprocess.run([str(cli), "show", "--dir", str(result.path), "--all"], capture_output=True, text=True,
                           check=True, timeout=120).stdout
    block = shown.split("signature_def['serving_default']:")[1].split("signature_def[")[0]
    assert "inputs['image'] tensor_info:" in block
    assert "outputs['cr_probability'] tensor_info:" in block
    assert block.count("dtype: DT_FLOAT") == 2
    assert block.count("shape: (-1, -1, -1, 1)") == 2
    assert "Method name is: tensorflow/serving/predict" in block


# --- TFLite -------------------------------------------------------------------------------------

@pytest.mark.parametrize("variant, atol", [("float32", 1e-4), ("float16", 2e-2), ("dynamic", 5e-2), ("int8", 0.5)])
def test_tflite_variants_run_in_litert(exported, variant, atol):
    from ai_edge_litert.interpreter import Interpreter

    result, model, _ = exported
    path = result.path / "tflite" / f"kercr_{variant}.tflite"
    interpreter = Interpreter(model_path=str(path), num_threads=2)
    interpreter.allocate_tensors()
    (inp,), (out,) = interpreter.get_input_details(), interpreter.get_output_details()
    assert inp["dtype"] == np.float32 and list(inp["shape"]) == [1, TILE, TILE, 1]
    assert list(inp["shape_signature"]) == [1, -1, -1, 1]
    assert interpreter.get_signature_list() == {"serving_default": {"inputs": ["image"], "outputs": ["cr_probability"]}}
    normalized, _ = normalize(_raw_tile(seed=7), config=SIDECAR)
    interpreter.set_tensor(inp["index"], normalized[None, :, :, None])
    interpreter.invoke()
    got = interpreter.get_tensor(out["index"])[0, :, :, 0]
    expected = np.asarray(model(normalized[None, :, :, None], training=False))[0, :, :, 0]
    assert np.all((got >= 0) & (got <= 1))
    assert np.abs(got - expected).max() <= atol
    if variant == "int8":
        dtypes = {d["dtype"] for d in interpreter.get_tensor_details()}
        assert np.int8 in dtypes  # activations really are int8 inside
        assert np.abs(got - expected).max() > 1e-4  # and quantization really happened


def test_tflite_resizes_at_run_time(exported):
    result, model, _ = exported
    runner = TFLiteRunner(result.path / "tflite" / "kercr_float32.tflite", num_threads=2)
    assert runner.resizable
    image = _raw_tile(seed=8, shape=(TILE, 2 * TILE))
    got = runner.predict_raw(image, config=SIDECAR)
    assert got.shape == (TILE, 2 * TILE) and runner.shape == (1, TILE, 2 * TILE, 1)
    np.testing.assert_allclose(got, _keras_reference(model, image), atol=1e-4)


@pytest.mark.parametrize("variant", ["float32", "int8"])
def test_parallel_runner_splits_batches_and_gives_the_single_interpreters_output(exported, variant):
    from kercr.export.litert import ParallelTFLiteRunner

    result, _, _ = exported
    path = result.path / "tflite" / f"kercr_{variant}.tflite"
    single = TFLiteRunner(path, num_threads=1)
    pool = ParallelTFLiteRunner(path, num_threads=2)
    assert pool.workers == 2 and ParallelTFLiteRunner(path, num_threads=1).workers == 1
    assert ParallelTFLiteRunner(path, num_threads=8).workers == 2  # two interpreters of 4 threads
    batch = np.stack([normalize(_raw_tile(seed=20 + k), config=SIDECAR)[0] for k in range(3)])
    calls = []
    for runner in pool.runners:  # record which images each interpreter gets
        runner.predict = (lambda f: lambda x: calls.append(len(x)) or f(x))(runner.predict)
    expected = single.predict(batch)
    got = pool.predict(batch)  # 3 images: 2 to one interpreter, 1 to the other, in order
    assert sorted(calls) == [1, 2]
    assert got.dtype == np.float32 and got.shape == batch.shape
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(pool.predict(batch[..., None]), expected[..., None])
    np.testing.assert_array_equal(pool.predict(batch[0]), expected[0])  # one image: one interpreter
    with pytest.raises(ValueError, match="num_threads=0"):
        ParallelTFLiteRunner(path, num_threads=0)


def test_parity_report(exported):
    result, _, _ = exported
    parity = json.loads((result.path / "parity.json").read_text())
    assert parity == result.parity
    assert parity["trained"] is True and parity["tile"] == TILE
    assert parity["savedmodel"]["passed"] and parity["savedmodel"]["max_abs_delta_p"] <= 1e-5
    assert set(parity["tflite"]) == set(VARIANTS)
    float32 = parity["tflite"]["float32"]
    assert float32["passed"] and float32["max_abs_delta_p"] <= 1e-4 and float32["flipped_pixels"] == 0
    for variant, report in parity["tflite"].items():
        assert report["pixels"] == 4 * TILE * TILE and report["cr_pixels"] > 0
        for metric in ("tpr_at_fpr", "dice"):
            r = report[metric]
            assert math.isclose(r["delta"], r["export"] - r["keras"], abs_tol=1e-12), (variant, metric)
        assert report["file"] == f"tflite/kercr_{variant}.tflite"
    int8 = parity["tflite"]["int8"]
    assert int8["max_abs_delta_p"] > float32["max_abs_delta_p"]
    step = int8["int8_input_quantization"]
    assert step["scale"] > 0 and step["min"] < 0 < step["max"]
    assert "noise units" in int8["loss_note"]
    ops = parity["tflite"]["float32"]["ops"]
    assert ops["xnnpack_partitions"] >= 1 and ops["xnnpack"]["CONV_2D"] == 7  # XNNPACK runs every float conv
    assert "CONV_2D" not in ops["tflite_kernels"]


# --- errors and atomicity ---------------------------------------------------------------------

def test_unreadable_model_file_leaves_nothing(tmp_path):
    bad = tmp_path / "run" / "best.keras"
    bad.parent.mkdir()
    bad.write_bytes(b"this is not a zip archive")
    out = tmp_path / "models"
    with pytest.raises(ExportError, match=r"cannot load the Keras model .*best\.keras"):
        export_model(bad.parent, out)
    assert not out.exists()


@pytest.mark.parametrize("source, options, message", [
    ("no_such_model", {}, "registry names"),
    ("missing/dir/model.keras", {}, "does not exist"),
    ("deepcr_2_4", {"tile": 63}, "multiple of 2"),
    ("deepcr_2_4", {"formats": ["onnx"]}, "unknown format"),
    ("deepcr_2_4", {"quantize": ["int4"]}, "unknown quantization"),
    ("deepcr_2_4", {"version": 0}, "positive integer"),
    ("deepcr_2_4", {"name": "../x"}, "name"),
])
def test_bad_options(tmp_path, source, options, message):
    out = tmp_path / "models"
    with pytest.raises(ExportError, match=message):
        export_model(source, out, **options)
    assert not out.exists()


def test_run_dir_without_model_and_bad_sidecar(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ExportError, match="neither best.keras nor model.keras"):
        export_model(tmp_path / "empty", tmp_path / "models")
    run = _save_model(tmp_path / "run")
    (run / "normalization.json").write_text(json.dumps({"clip_max": 10.0, "colour": "red"}))
    with pytest.raises(ExportError, match="unknown normalization key"):
        export_model(run, tmp_path / "models")
    assert not (tmp_path / "models").exists()


def test_existing_version_is_refused_and_kept(tmp_path):
    version = tmp_path / "models" / "kercr" / "3"
    version.mkdir(parents=True)
    (version / "keep.txt").write_text("old")
    with pytest.raises(ExportError, match="already exists"):
        export_model("deepcr_2_4", tmp_path / "models", version=3, tile=TILE)
    assert (version / "keep.txt").read_text() == "old"
    assert sorted(p.name for p in version.parent.iterdir()) == ["3"]


def test_failure_mid_export_removes_partial_output(tmp_path, monkeypatch):
    import kercr.export.exporter as exporter

    def broken(*args, **kwargs):
        raise ExportError("simulated TFLite failure")

    monkeypatch.setattr(exporter, "_export_tflite", broken)
    out = tmp_path / "models"
    (out / "kercr" / "1").mkdir(parents=True)
    with pytest.raises(ExportError, match="simulated"):
        export_model("deepcr_2_4", out, tile=TILE, validation_patches=1)  # SavedModel is written, then it fails
    assert sorted(p.name for p in (out / "kercr").iterdir()) == ["1"]  # no version 2, no hidden partial dir
    deep = tmp_path / "new" / "deeper" / "models"  # the folders a failed export made go too
    with pytest.raises(ExportError, match="simulated"):
        export_model("deepcr_2_4", deep, tile=TILE, validation_patches=1, formats=("tflite",))
    assert not (tmp_path / "new").exists()


# --- CLI and profiles ---------------------------------------------------------------------------

def test_cli_with_profile(tmp_path, capsys):
    from kercr.cli.export import main

    out = tmp_path / "models"
    rc = main(["deepcr_2_4", "--out", str(out), "--profile", str(REPO / "export" / "serving.toml"),
               "--tile", str(TILE), "--validation-patches", "2", "--name", "cr", "--version", "7"])
    assert rc == 0
    version = out / "cr" / "7"
    assert (version / "saved_model.pb").is_file() and not (version / "tflite").exists()
    assert json.loads((version / "export.json").read_text())["formats"] == ["savedmodel"]
    assert "exported to" in capsys.readouterr().out
    capsys.readouterr()
    assert main(["deepcr_2_4", "--out", str(out), "--name", "cr", "--version", "7", "--tile", str(TILE)]) == 1
    err = capsys.readouterr().err  # the existing version: one line, no traceback
    assert err.startswith("kercr-export: error: ") and err.count("\n") == 1 and "7" in err


def test_shipped_profiles_are_valid():
    names = sorted(p.name for p in (REPO / "export").glob("*.toml"))
    assert {"serving.toml", "edge.toml", "cpu-fast.toml"} <= set(names)
    assert load_profile(REPO / "export" / "edge.toml")["quantize"][0] == "int8"
    assert load_profile(REPO / "export" / "serving.toml")["formats"] == ["savedmodel"]


def test_profile_errors(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('formats = ["tflite"]\nquantise = ["int8"]\n')
    with pytest.raises(ExportError, match="unknown key"):
        load_profile(bad)
    bad.write_text("tile = 'big'\n")
    with pytest.raises(ExportError, match="tile"):
        load_profile(bad)
    with pytest.raises(ExportError, match="cannot read profile"):
        load_profile(tmp_path / "missing.toml")


# --- the TF re-implementation of normalize ------------------------------------------------------

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


# --- four-flip average ----------------------------------------------------------------------------

def test_a_card_with_flips_exports_the_flip_average_in_every_format(tmp_path):
    from kercr.cli.export import main
    from kercr.data.augment import flip_average
    from kercr.models import logit_model

    folder = tmp_path / "shipped"
    folder.mkdir()
    keras.utils.set_random_seed(0)
    model = kercr.build_model("deepcr_2_4")
    model.save(folder / "model.keras")
    (folder / "normalization.json").write_text(json.dumps(SIDECAR.to_dict()))
    (folder / "model.json").write_text(json.dumps({"threshold": 0.5, "tta": True}))  # as the shipped card
    result = export_model(folder / "model.keras", tmp_path / "models", quantize=["none", "int8"], tile=TILE,
                          calibration_patches=4, validation_patches=2)
    manifest = json.loads((result.path / "export.json").read_text())
    assert manifest["tta"] is True and result.parity["tta"] is True
    image = _raw_tile(seed=5)
    normalized, _ = normalize(image, config=SIDECAR)
    x = normalized[None, :, :, None]
    expected = 1 / (1 + np.exp(-flip_average(logit_model(model).predict_on_batch, x)[0, :, :, 0]))
    plain = _keras_reference(model, image)
    assert np.abs(expected - plain).max() > 1e-3  # the flips change the output of a random-weight net
    serve = tf.saved_model.load(str(result.path)).signatures["serving_default"]
    served = serve(image=tf.constant(image[None, :, :, None]))["cr_probability"].numpy()[0, :, :, 0]
    np.testing.assert_allclose(served, expected, atol=1e-5, rtol=0)
    lite = TFLiteRunner(result.path / "tflite" / "kercr_float32.tflite").predict(normalized[None])[0]
    np.testing.assert_allclose(lite, expected, atol=1e-4, rtol=0)
    int8 = TFLiteRunner(result.path / "tflite" / "kercr_int8.tflite").predict(normalized[None])[0]
    assert int8.shape == expected.shape and np.abs(int8 - expected).mean() < 0.05
    # --no-tta exports the plain network from the same file.
    assert main([str(folder / "model.keras"), "--out", str(tmp_path / "models"), "--formats", "savedmodel",
                 "--tile", str(TILE), "--validation-patches", "2", "--no-tta"]) == 0
    plain_dir = tmp_path / "models" / "kercr" / "2"
    assert json.loads((plain_dir / "export.json").read_text())["tta"] is False
    served = tf.saved_model.load(str(plain_dir)).signatures["serving_default"](
        image=tf.constant(image[None, :, :, None]))["cr_probability"].numpy()[0, :, :, 0]
    np.testing.assert_allclose(served, plain, atol=1e-5, rtol=0)


# --- every registry architecture (issue 25) -------------------------------------------------------

# Builder options that shrink the registry's architectures for a fast export. Each architecture gets
# the ones its builder takes, so one registered later is tested without editing this test: at these
# widths when it shares the option names, else at its preset width (slower, still covered).
SMALL_OPTIONS = {
    "filters": (8, 16), "groups": 4,  # the UNet family: 2 levels; GroupNorm with 2 and 4 channels a group
    "input_size": 32, "encoder_filters": (4, 4, 8, 8), "resnet_blocks": (1, 1, 1),
    "resnet_width": 32,  # the R50 encoder's GroupNorm has 32 groups
    "hidden_dim": 8, "num_heads": 2, "num_layers": 1, "mlp_dim": 8, "decoder_stem_filters": 8,
    "decoder_filters": (4, 4, 4, 4),
}
DYNAMIC_TILE = 32
# Loose bounds on the mean |delta p| of the quantized variants of a random-weight net: they show the
# variant computes the same function, not its accuracy (parity.json reports TPR and Dice deltas).
QUANTIZED_MEAN_DELTA = {"float16": 1e-2, "dynamic": 0.1, "int8": 0.25}


def _small_options(name):
    from kercr.models import get_spec

    taken = get_spec(name).options()
    return {key: value for key, value in SMALL_OPTIONS.items() if key in taken}


@pytest.mark.parametrize("name", kercr.list_models())
def test_every_registry_architecture_exports_to_savedmodel_and_every_tflite_variant(tmp_path, name):
    options = _small_options(name)
    run = _save_model(tmp_path / "run", name, **options)
    model = keras.saving.load_model(run / "best.keras")
    fixed = model.input_shape[1]
    tile = fixed or DYNAMIC_TILE
    if fixed:  # a TransUNet's position embedding fixes its tile
        with pytest.raises(ExportError, match=f"fixed {tile} x {tile} input"):
            export_model(run, tmp_path / "models", tile=2 * tile)
    result = export_model(run, tmp_path / "models", quantize=["none", "float16", "dynamic", "int8"], tile=tile,
                          calibration_patches=2, validation_patches=2)
    float32 = result.parity["tflite"]["float32"]
    assert float32["passed"] and float32["exact"]["max_abs_delta_p"] <= 1e-4
    serve = tf.saved_model.load(str(result.path)).signatures["serving_default"]
    assert serve.structured_input_signature[1]["image"].shape.as_list() == [None, fixed, fixed, 1]
    runners = {v: TFLiteRunner(result.path / "tflite" / f"kercr_{v}.tflite", num_threads=1) for v in VARIANTS}
    for variant, runner in runners.items():
        ops = result.parity["tflite"][variant]["ops"]
        assert not any(op.startswith(("Flex", "CUSTOM")) for op in {**ops["xnnpack"], **ops["tflite_kernels"]})
        assert runner.resizable is (fixed is None) and runner.shape == (1, tile, tile, 1), variant
    if fixed:
        with pytest.raises(ValueError, match="fixed input shape"):
            runners["float32"].predict(np.zeros((2 * tile, 2 * tile), np.float32))
    # At the export tile, and where the architecture allows it, at a size it was not exported at.
    shapes = [(tile, tile)] if fixed else [(tile, tile), (tile, 2 * tile)]
    for k, shape in enumerate(shapes):
        image = _raw_tile(seed=30 + k, shape=shape) + np.float32(300.0 * k)
        image[5, 7] = np.nan  # a bad pixel: normalization fills it, in the graph and in numpy alike
        expected = _keras_reference(model, image, NormalizationConfig())
        served = serve(image=tf.constant(image[None, :, :, None]))["cr_probability"].numpy()[0, :, :, 0]
        np.testing.assert_allclose(served, expected, atol=1e-5, rtol=0, err_msg=f"SavedModel {shape}")
        normalized, _ = normalize(image, config=NormalizationConfig())
        for variant, runner in runners.items():
            got = runner.predict(normalized)
            assert got.shape == shape and np.all((got >= 0) & (got <= 1)), (variant, shape)
            if variant == "float32":
                np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0, err_msg=f"float32 {shape}")
            else:
                assert np.abs(got - expected).mean() <= QUANTIZED_MEAN_DELTA[variant], (variant, shape)
    int8_dtypes = {d["dtype"] for d in runners["int8"].interpreter.get_tensor_details()}
    assert np.int8 in int8_dtypes  # full-integer: the activations are int8 inside


def test_nearest_upsampling_lowering_keeps_the_channel_count_and_the_values():
    """The plain UNet's cause: Keras' nearest UpSampling2D (two tf.repeat) loses the channel count in
    the converter, whose next Conv2D then needs Flex ops; the lowering converts and gives the same pixels."""
    from kercr.export.lowering import NearestUpSampling2D, for_tflite
    from kercr.export.tflite import _Converted, convert

    inputs = keras.Input((None, None, 1))
    x = keras.layers.Conv2D(3, 1, name="widen")(inputs)
    x = keras.layers.UpSampling2D((2, 3), interpolation="nearest", name="up")(x)
    model = keras.Model(inputs, keras.layers.Conv2D(1, 3, padding="same", name="mix")(x))
    lowered = for_tflite(model)
    assert isinstance(lowered.get_layer("up"), NearestUpSampling2D)
    assert lowered.get_layer("mix") is model.get_layer("mix")  # same layer, same variables
    x = np.random.default_rng(0).normal(size=(2, 6, 5, 1)).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(lowered(x)), np.asarray(model(x)))
    module = _Converted(model, [1, None, None, 1])  # the Keras graph as it is: the failure
    with pytest.raises(Exception, match="ERROR_NEEDS_FLEX_OPS"):
        tf.lite.TFLiteConverter.from_concrete_functions([module.serve.get_concrete_function()], module).convert()
    flatbuffer = convert(model, tile=8)
    ops = TFLiteRunner(flatbuffer).ops()
    assert "RESIZE_NEAREST_NEIGHBOR" in {**ops["xnnpack"], **ops["tflite_kernels"]}
    for image in x:  # (6, 5) -> (12, 15), not the tile it was converted at
        np.testing.assert_allclose(_invoke(flatbuffer, image[None]), np.asarray(model(image[None])), atol=1e-6)


def _invoke(flatbuffer, batch, *, delegates=True):
    """Output of a TFLite model on one (1, H, W, C) input, resized to it (any output shape)."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    resolver = OpResolverType.AUTO if delegates else OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    interpreter = Interpreter(model_content=flatbuffer, experimental_op_resolver_type=resolver)
    interpreter.resize_tensor_input(0, list(batch.shape))
    interpreter.allocate_tensors()
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], batch)
    interpreter.invoke()
    return interpreter.get_tensor(interpreter.get_output_details()[0]["index"])


def test_group_norm_lowering_makes_the_tflite_statistics_accurate():
    """cosmic_conn's cause: a GroupNorm mean over 256 x 256 x C/G values, summed in float32 one by one
    (TFLite's builtin MEAN, TensorFlow at batch 1), is off by ~1e-4 relative; in stages it is not."""
    from kercr.export.parity import float64_twin
    from kercr.export.tflite import _Converted, convert

    inputs = keras.Input((None, None, 1))
    x = keras.layers.Conv2D(8, 1, name="widen")(inputs)
    model = keras.Model(inputs, keras.layers.GroupNormalization(2, name="gn")(x))
    image = np.random.default_rng(0).normal(0.5, 1.0, size=(1, 256, 256, 1)).astype(np.float32)
    image[:, ::37, ::41] += 300.0  # CR-like outliers, as normalized frames have
    exact = np.asarray(float64_twin(model)(image))

    def tflite_error(flatbuffer):  # TFLite's own kernels, which sum a MEAN one value after another
        return np.abs(_invoke(flatbuffer, image, delegates=False) - exact).max() / np.abs(exact).max()

    module = _Converted(model, [1, None, None, 1])  # the Keras graph as it is
    as_is = tflite_error(tf.lite.TFLiteConverter.from_concrete_functions(
        [module.serve.get_concrete_function()], module).convert())
    lowered = tflite_error(convert(model, tile=256))
    assert lowered < 2e-6 and as_is > 10 * lowered, (as_is, lowered)


def test_a_failed_float32_parity_says_what_was_measured_and_what_to_do(tmp_path, monkeypatch):
    import kercr.export.tflite as tflite

    real = tflite.convert

    def wrong_weights(model, **kwargs):  # a converter that changed the computation
        keras.utils.set_random_seed(1)
        return real(kercr.build_model("deepcr_2_4"), **kwargs)

    monkeypatch.setattr(tflite, "convert", wrong_weights)
    out = tmp_path / "models"
    with pytest.raises(ExportError) as err:
        export_model("deepcr_2_4", out, formats=["tflite"], tile=TILE, validation_patches=1)
    message = str(err.value)
    for part in ("TFLite float32 parity failed for registry:deepcr_2_4", "1 synthetic 64 x 64 validation patches",
                 "exact output (Keras in float64)", "tolerance 0.0001", "--runtime keras", "--formats savedmodel",
                 "--quantize float16,dynamic,int8"):
        assert part in message, part
    assert "report this as a kercr bug" not in message
    assert not out.exists()
