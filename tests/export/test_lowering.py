"""kercr.export.lowering: the TFLite-friendly lowerings of nearest UpSampling2D and GroupNormalization."""

from __future__ import annotations

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
pytest.importorskip("ai_edge_litert")

import keras  # noqa: E402

from kercr.export.litert import TFLiteRunner  # noqa: E402


def test_group_norm_is_staged_with_the_same_values_in_nested_models_and_kept_for_int8():
    from kercr.export.lowering import StagedGroupNormalization, for_tflite

    inner_in = keras.Input((None, None, 8))
    inner = keras.Model(inner_in, keras.layers.GroupNormalization(4, name="gn")(inner_in), name="inner")
    inputs = keras.Input((None, None, 1))
    model = keras.Model(inputs, inner(keras.layers.Conv2D(8, 3, padding="same", name="widen")(inputs)))
    gn = model.get_layer("inner").get_layer("gn")
    gn.gamma.assign(np.linspace(0.5, 2.0, 8).astype("float32"))
    gn.beta.assign(np.linspace(-1.0, 1.0, 8).astype("float32"))
    lowered = for_tflite(model)
    staged = lowered.get_layer("inner").get_layer("gn")
    assert isinstance(staged, StagedGroupNormalization) and staged.source is gn  # the same gamma and beta
    x = np.random.default_rng(0).normal(2.0, 3.0, size=(2, 24, 20, 1)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(lowered(x)), np.asarray(model(x)), atol=2e-5, rtol=0)
    kept = for_tflite(model, group_norm=False).get_layer("inner").get_layer("gn")
    assert isinstance(kept, keras.layers.GroupNormalization) and not isinstance(kept, StagedGroupNormalization)


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

