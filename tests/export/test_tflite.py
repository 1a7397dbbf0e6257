"""kercr.export.tflite: conversion to TFLite in four precisions, run in the LiteRT interpreter.

A tiny untrained ``deepcr_2_4`` is converted once per module in every precision (int8 calibrated on
synthetic patches); the outputs are compared with Keras on the same normalized input.
"""

from __future__ import annotations

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
pytest.importorskip("ai_edge_litert")

import keras  # noqa: E402

import kercr  # noqa: E402
from kercr.data.normalization import normalize  # noqa: E402
from kercr.export.litert import TFLiteRunner  # noqa: E402
from kercr.export.parity import normalized_patches, synthetic_patches  # noqa: E402
from kercr.export.tflite import QUANTIZE_MODES, VARIANT_NAMES, convert  # noqa: E402
from tests.export._shared import SIDECAR, TILE, keras_reference, raw_tile  # noqa: E402



@pytest.fixture(scope="module")
def converted():
    """``(model, {variant: flatbuffer})``: a tiny model and its four TFLite conversions at a 64-pixel tile."""
    keras.utils.set_random_seed(0)
    model = kercr.build_model("deepcr_2_4")
    representative = normalized_patches(synthetic_patches(8, tile=TILE, seed=0).image_adu, SIDECAR)
    return model, {VARIANT_NAMES[q]: convert(model, tile=TILE, quantize=q, representative=representative)
                   for q in QUANTIZE_MODES}


def test_the_variants_are_what_their_names_say(converted):
    _, flatbuffers = converted
    dtypes = {v: {d["dtype"].__name__ for d in TFLiteRunner(f).interpreter.get_tensor_details()}
              for v, f in flatbuffers.items()}
    assert len(flatbuffers["float16"]) < len(flatbuffers["float32"])
    assert "float16" in dtypes["float16"] and "int8" in dtypes["int8"]
    assert not {"float16", "int8"} & dtypes["float32"]
    # (the dynamic variant quantizes only weight tensors of 1,024 values or more: none in this tiny net)


@pytest.mark.parametrize("quantize, representative, message", [
    ("int4", None, "quantize='int4'; choose from none, float16, dynamic, int8"),
    ("int8", None, "int8 quantization needs a representative set of normalized patches"),
    ("int8", [], "the representative set for int8 calibration is empty"),
])
def test_bad_conversions_are_named(quantize, representative, message):
    with pytest.raises(ValueError, match=message):
        convert(kercr.build_model("deepcr_2_4"), tile=TILE, quantize=quantize, representative=representative)


@pytest.mark.parametrize("variant, atol", [("float32", 1e-4), ("float16", 2e-2), ("dynamic", 5e-2), ("int8", 0.5)])
def test_tflite_variants_run_in_litert(converted, variant, atol):
    from ai_edge_litert.interpreter import Interpreter

    model, flatbuffers = converted
    interpreter = Interpreter(model_content=flatbuffers[variant], num_threads=2)
    interpreter.allocate_tensors()
    (inp,), (out,) = interpreter.get_input_details(), interpreter.get_output_details()
    assert inp["dtype"] == np.float32 and list(inp["shape"]) == [1, TILE, TILE, 1]
    assert list(inp["shape_signature"]) == [1, -1, -1, 1]
    assert interpreter.get_signature_list() == {"serving_default": {"inputs": ["image"], "outputs": ["cr_probability"]}}
    normalized, _ = normalize(raw_tile(seed=7), config=SIDECAR)
    interpreter.set_tensor(inp["index"], normalized[None, :, :, None])
    interpreter.invoke()
    got = interpreter.get_tensor(out["index"])[0, :, :, 0]
    expected = np.asarray(model(normalized[None, :, :, None], training=False))[0, :, :, 0]
    assert np.abs(got - expected).max() <= atol
    if variant == "int8":
        dtypes = {d["dtype"] for d in interpreter.get_tensor_details()}
        assert np.int8 in dtypes  # activations really are int8 inside
        assert np.abs(got - expected).max() > 1e-4  # and quantization really happened


def test_tflite_resizes_at_run_time(converted):
    model, flatbuffers = converted
    runner = TFLiteRunner(flatbuffers["float32"], num_threads=2)
    assert runner.resizable
    image = raw_tile(seed=8, shape=(TILE, 2 * TILE))
    got = runner.predict_raw(image, config=SIDECAR)
    assert got.shape == (TILE, 2 * TILE) and runner.shape == (1, TILE, 2 * TILE, 1)
    np.testing.assert_allclose(got, keras_reference(model, image), atol=1e-4)

