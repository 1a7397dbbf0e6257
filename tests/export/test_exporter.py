"""kercr.export.exporter (export_model): the version directory, its manifest and parity report, errors.

One small export (deepcr_2_4, 64 x 64 tiles, every format and quantization) is shared by the
layout and parity tests; every registry architecture, at small widths, is exported in every format
once (the TransUNets at their fixed tile, the convolutional models at a tile and run at another
size). The formats themselves have their own files: test_savedmodel.py, test_tflite.py (conversion),
test_litert.py (the interpreter), test_lowering.py, test_tf_normalization.py; the command line is in
tests/cli/test_export.py.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
pytest.importorskip("ai_edge_litert")

import keras  # noqa: E402

import kercr  # noqa: E402
from kercr.data.normalization import NormalizationConfig, normalize  # noqa: E402
from kercr.export import ExportError, export_model  # noqa: E402
from kercr.export.litert import TFLiteRunner  # noqa: E402
from tests.export._shared import SIDECAR, TILE, keras_reference, raw_tile  # noqa: E402

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


# --- parity ---------------------------------------------------------------------------------------

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
    ("deepcr_2_4", {"formats": ["savedmodel"], "quantize": ["int8", "float16"]}, "applies to TFLite files"),
    ("deepcr_2_4", {"seed": -2}, r"seed=-2 must be an integer in \[0, 2\*\*32\)"),
    ("deepcr_2_4", {"fpr": 5.0}, r"fpr=5.0 must be a number in \(0, 1\)"),
    ("deepcr_2_4", {"cr_rate_per_s": -5.0}, r"cr_rate_per_s=-5.0 must be a number"),
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


def test_files_where_the_versions_go_are_named_or_passed_over(tmp_path):
    from kercr.export.exporter import next_version

    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "kercr").write_text("a file")
    with pytest.raises(ExportError, match="is a file, where the model's version folders go"):
        export_model("deepcr_2_4", tmp_path / "models", tile=TILE)
    (tmp_path / "m" / "kercr").mkdir(parents=True)
    (tmp_path / "m" / "kercr" / "1").write_text("not a version")
    assert next_version(tmp_path / "m" / "kercr") == 2


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
    (folder / "model.json").write_text(json.dumps({"threshold": 0.625, "logit_threshold": 0.51, "tta": True}))
    result = export_model(folder / "model.keras", tmp_path / "models", quantize=["none", "int8"], tile=TILE,
                          calibration_patches=4, validation_patches=2)
    manifest = json.loads((result.path / "export.json").read_text())
    assert manifest["tta"] is True and result.parity["tta"] is True
    # The card's threshold goes beside the artifacts: what kercr.detect cuts at (served users had only 0.5).
    point = manifest["operating_point"]
    assert (point["threshold"], point["logit_threshold"], point["source"], point["card_tta"]) == (0.625, 0.51, "card",
                                                                                                  True)
    image = raw_tile(seed=5)
    normalized, _ = normalize(image, config=SIDECAR)
    x = normalized[None, :, :, None]
    expected = 1 / (1 + np.exp(-flip_average(logit_model(model).predict_on_batch, x)[0, :, :, 0]))
    plain = keras_reference(model, image)
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
        image = raw_tile(seed=30 + k, shape=shape) + np.float32(300.0 * k)
        image[5, 7] = np.nan  # a bad pixel: normalization fills it, in the graph and in numpy alike
        expected = keras_reference(model, image, NormalizationConfig())
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
