"""TFLite (LiteRT) conversion in four precisions (the files run in :mod:`kercr.export.litert`).

The TFLite models take a **normalized** image (``kercr.data.normalize`` in numpy before the
interpreter; :meth:`kercr.export.litert.TFLiteRunner.predict_raw` does it): the normalization's sort-based median and
data-dependent clipping are not TFLite builtins and would not quantize. Input ``image`` and output
``cr_probability`` are float32 ``[1, H, W, 1]`` in every variant (the int8 model quantizes and
dequantizes inside).

Shapes: the stored input shape is the export tile (``--tile``). For the convolutional models the
height and width are stored as dynamic (``shape_signature [1, -1, -1, 1]``), so
``interpreter.resize_tensor_input(i, [1, H, W, 1])`` followed by ``allocate_tensors()`` runs any
H, W divisible by the model's multiple. (A model converted with a fixed shape cannot be resized:
TRANSPOSE_CONV bakes its output shape in as a constant and fails to prepare.) The TransUNet is
fixed to its trained tile. Batch is 1.

Variants (``quantize``):

``none``     float32 weights and activations (XNNPACK runs every op).
``float16``  float16 weights, dequantized to float32 at load; half the file, float32 compute.
``dynamic``  int8 weights, activations quantized on the fly per op (hybrid kernels).
``int8``     full-integer: int8 weights and activations calibrated on a representative set of
             normalized patches; only int8 builtin ops are allowed, float32 in/out.
"""

from __future__ import annotations

import logging

import numpy as np
import tensorflow as tf

from kercr.export.lowering import for_tflite

__all__ = ["QUANTIZE_MODES", "VARIANT_NAMES", "convert"]

logger = logging.getLogger(__name__)

QUANTIZE_MODES = ("none", "float16", "dynamic", "int8")
#: quantize mode -> name used in file names and reports
VARIANT_NAMES = {"none": "float32", "float16": "float16", "dynamic": "dynamic", "int8": "int8"}


class _Converted(tf.Module):
    def __init__(self, model, shape):
        super().__init__(name="kercr_tflite")
        self.model_variables = [v.value for v in model.variables]  # real tf.Variables, so they freeze

        # The model is held by the closure, not tracked as an attribute: the converter saves this
        # module as a SavedModel first, and walking every Keras layer there made each conversion
        # ~40 % slower (measured on the R50 TransUNet) for nothing the flatbuffer uses.
        def serve(image):
            return {"cr_probability": model(image, training=False)}

        self.serve = tf.function(serve, input_signature=[tf.TensorSpec(shape, tf.float32, name="image")])


def _set_default_input_shape(flatbuffer: bytes, shape) -> bytes:
    """Store ``shape`` as the input's default shape, keeping its dynamic ``shape_signature``."""
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(flatbuffer))
    subgraph = model.subgraphs[0]
    subgraph.tensors[subgraph.inputs[0]].shape = np.asarray(shape, dtype=np.int32)
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def convert(model, *, tile: int, quantize: str = "none", representative=None) -> bytes:
    """Convert a kercr Keras model to a TFLite flatbuffer.

    Parameters
    ----------
    model : keras.Model
        Input (batch, H, W, C) normalized float32 (C = 1 for the detectors, 2 for the inpainting
        network: :func:`kercr.models.build_inpainter`).
    tile : int
        Default input height and width (the only one for a fixed-tile model).
    quantize : {"none", "float16", "dynamic", "int8"}
    representative : iterable of numpy.ndarray, optional
        Normalized (tile, tile) float32 patches ((tile, tile, C) for C > 1); required for ``"int8"``.

    Returns
    -------
    bytes
        The flatbuffer.

    Notes
    -----
    Nearest ``UpSampling2D`` and (except for int8) ``GroupNormalization`` are converted through
    the TensorFlow lowerings of :mod:`kercr.export.lowering`, which say why.
    """
    if quantize not in QUANTIZE_MODES:
        raise ValueError(f"quantize={quantize!r}; choose from {', '.join(QUANTIZE_MODES)}.")
    fixed = model.input_shape[1] is not None
    channels = int(model.input_shape[-1])
    shape = [1, tile, tile, channels] if fixed else [1, None, None, channels]
    module = _Converted(for_tflite(model, group_norm=quantize != "int8"), shape)
    converter = tf.lite.TFLiteConverter.from_concrete_functions([module.serve.get_concrete_function()], module)
    if quantize == "float16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif quantize == "dynamic":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    elif quantize == "int8":
        if representative is None:
            raise ValueError("int8 quantization needs a representative set of normalized patches.")
        patches = [np.asarray(p, dtype=np.float32) for p in representative]
        if not patches:
            raise ValueError("the representative set for int8 calibration is empty.")

        def dataset():
            for patch in patches:
                yield [patch.reshape(1, tile, tile, channels)]

        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = dataset
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    flatbuffer = converter.convert()
    if not fixed:
        flatbuffer = _set_default_input_shape(flatbuffer, [1, tile, tile, channels])
    return flatbuffer
