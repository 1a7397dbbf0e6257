"""TFLite-friendly TensorFlow lowerings of two Keras layers, swapped in for the conversion only.

The Keras model, its ``.keras`` file and the SavedModel are left as they are; :func:`for_tflite`
returns a functional clone whose layers are the original instances (same variables) except:

``UpSampling2D(interpolation="nearest")``
    Keras' TensorFlow backend repeats rows and columns with two ``tf.repeat`` calls, each ending in
    a ``Reshape`` to a shape computed at run time (``tf.shape`` sliced, multiplied and
    concatenated). TensorFlow's graph shape inference still knows the channel count after it; the
    TFLite converter's MLIR shape inference does not (it types the result ``tensor<?x?x?x?xf32>``),
    so the next ``Conv2D`` cannot become a builtin ``CONV_2D`` and the conversion fails with
    ``ERROR_NEEDS_FLEX_OPS`` (the plain ``unet`` preset, issue 25). The lowering here is one
    ``ResizeNearestNeighbor`` (``tf.image.resize(method="nearest")``, a TFLite builtin that int8
    quantizes too): its output type keeps the input's channels. For an integer factor ``s``, output
    pixel ``i`` samples input pixel ``floor((i + 0.5) / s) = i // s``, exactly what ``repeat`` gives.

``GroupNormalization``
    The group statistics are means over ``H x W x C/G`` values (262,144 for the first level of
    ``cosmic_conn`` at a 256-pixel tile), and every runtime accumulates them in float32 in its own
    order: measured on that model against a float64 evaluation, the relative error of a group
    variance is ~3e-4 for TensorFlow's CPU kernel at batch 1 and for TFLite's builtin ``MEAN``,
    ~5e-6 for XNNPACK, ~1e-7 for TensorFlow at batch 4. Ten such layers turn it into 6e-4 to 2e-3
    in probability. The lowering takes the same two-pass mean and variance in stages (over W,
    then H, then the channels of a group: means of equal-sized sets, so the same numbers), each
    stage summing at most ``max(H, W)`` values, which makes the TFLite model's error small and the
    same whichever kernel runs it. Epsilon, gamma and beta are the layer's own. Not used for the
    int8 conversion (see :func:`for_tflite`).
"""

from __future__ import annotations

import keras
import tensorflow as tf

__all__ = ["for_tflite", "NearestUpSampling2D", "StagedGroupNormalization"]


class NearestUpSampling2D(keras.layers.Layer):
    """``UpSampling2D(interpolation="nearest")`` as one ``ResizeNearestNeighbor`` (export only)."""

    def __init__(self, source: keras.layers.UpSampling2D, **kwargs):
        super().__init__(name=source.name, dtype=source.dtype_policy, **kwargs)
        self.size = tuple(int(s) for s in source.size)
        self.channels_first = source.data_format == "channels_first"

    def call(self, inputs):
        x = tf.transpose(inputs, [0, 2, 3, 1]) if self.channels_first else inputs
        shape = tf.shape(x)
        x = tf.image.resize(x, [shape[1] * self.size[0], shape[2] * self.size[1]], method="nearest")
        x = tf.cast(x, inputs.dtype)
        return tf.transpose(x, [0, 3, 1, 2]) if self.channels_first else x

    def compute_output_shape(self, input_shape):
        shape = list(input_shape)
        axes = (2, 3) if self.channels_first else (1, 2)
        for axis, factor in zip(axes, self.size):
            shape[axis] = None if shape[axis] is None else shape[axis] * factor
        return tuple(shape)


class StagedGroupNormalization(keras.layers.Layer):
    """``GroupNormalization`` (channels last) with its statistics reduced in stages (export only).

    Uses the source layer's ``gamma``, ``beta`` and ``epsilon`` (the variables are shared).
    """

    def __init__(self, source: keras.layers.GroupNormalization, **kwargs):
        super().__init__(name=source.name, dtype=source.dtype_policy, **kwargs)
        self.source = source

    def _group_mean(self, x):
        """Mean of each group of channels over H, W and the group, broadcast back to (B, 1, 1, C)."""
        channels, groups = x.shape[-1], self.source.groups
        per_channel = tf.reduce_mean(tf.reduce_mean(x, axis=2, keepdims=True), axis=1, keepdims=True)
        grouped = tf.reshape(per_channel, [-1, groups, channels // groups])
        mean = tf.reduce_mean(grouped, axis=2, keepdims=True) * tf.ones([1, 1, channels // groups], x.dtype)
        return tf.reshape(mean, [-1, 1, 1, channels])

    def call(self, inputs):
        x = tf.cast(inputs, tf.float32)
        centred = x - self._group_mean(x)
        variance = self._group_mean(tf.square(centred))
        scale = tf.math.rsqrt(variance + self.source.epsilon)
        if self.source.scale:
            scale = scale * tf.cast(tf.reshape(self.source.gamma, [1, 1, 1, -1]), tf.float32)
        y = centred * scale
        if self.source.center:
            y = y + tf.cast(tf.reshape(self.source.beta, [1, 1, 1, -1]), tf.float32)
        return tf.cast(y, inputs.dtype)

    def compute_output_shape(self, input_shape):
        return input_shape


def _rank(layer):
    try:
        return len(layer.input.shape)
    except (AttributeError, ValueError):  # a layer not called exactly once in the graph
        return None


def _lowering(layer, *, group_norm: bool):
    """The export-only class that replaces ``layer``, or None to keep it."""
    if isinstance(layer, keras.layers.UpSampling2D) and layer.interpolation == "nearest":
        return NearestUpSampling2D
    if (group_norm and isinstance(layer, keras.layers.GroupNormalization) and layer.axis in (-1, 3)
            and _rank(layer) == 4):
        return StagedGroupNormalization
    return None


def for_tflite(model: keras.Model, *, group_norm: bool = True) -> keras.Model:
    """``model`` with the layers above swapped for their TFLite-friendly lowerings.

    Parameters
    ----------
    model : keras.Model
        A functional kercr model (nested functional models, e.g. the four-flip average, included).
    group_norm : bool
        Stage the GroupNorm statistics. Off for the full-integer (int8) conversion: its ``MEAN``
        sums int8 values in int32, exactly, so staging removes no error there and would round
        every intermediate mean to 256 levels once more.

    Returns
    -------
    keras.Model
        ``model`` itself when nothing is swapped, else a functional clone sharing its variables
        (every other layer is the same instance). Not for saving: the lowerings are
        TensorFlow-only and not serializable.
    """
    def needs(m):
        return any(_lowering(layer, group_norm=group_norm) is not None
                   or (isinstance(layer, keras.Model) and needs(layer)) for layer in m.layers)

    def clone(layer):
        lowering = _lowering(layer, group_norm=group_norm)
        return layer if lowering is None else lowering(layer)

    if not needs(model):
        return model
    return keras.models.clone_model(model, clone_function=clone, recursive=True)
