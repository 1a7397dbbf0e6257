"""Geometry of a convolutional model: input multiple, receptive field, locality.

Detection tiles a frame with these numbers (``kercr.detection``); the export picks its tile
sizes from :func:`input_multiple`. They are read off the layers of a built Keras model.
"""

from __future__ import annotations

import math

import keras

__all__ = ["all_layers", "input_multiple", "is_local", "receptive_field_radius"]


def input_multiple(model: keras.Model) -> int:
    """The number the input height and width must be divisible by.

    For a model with a fixed tile size (TransUNet) this is the tile size itself. A model nested
    inside another (a wrapper, an ensemble of kercr networks) contributes its own multiple as a
    factor: an upper bound, so any size it allows is valid for every part.
    """
    fixed = model.input_shape[1]
    if fixed is not None:
        return int(fixed)
    multiple = 1
    for layer in model.layers:
        if isinstance(layer, keras.layers.MaxPooling2D):
            multiple *= int(layer.strides[0])
        elif type(layer) is keras.layers.Conv2D:
            multiple *= int(layer.strides[0])
        elif isinstance(layer, keras.Model):
            multiple *= input_multiple(layer)
    return multiple


def _layer_rf(layer, radius: float, jump: float) -> tuple[float, float]:
    """Receptive-field radius and jump (input pixels per step) after ``layer``."""
    if isinstance(layer, keras.Model):  # a nested network (a wrapper, an ensemble member): same-size output
        return radius + receptive_field_radius(layer) * jump, jump
    if isinstance(layer, keras.layers.Conv2DTranspose):
        stride = int(layer.strides[0])
        jump /= stride
        # k = s: each output pixel sees one input pixel; + one step for the sub-pixel alignment.
        return radius + (max(0, int(layer.kernel_size[0]) - stride) + 1) * jump, jump
    if isinstance(layer, keras.layers.Conv2D):
        k, d = int(layer.kernel_size[0]), int(layer.dilation_rate[0])
        return radius + (k - 1) // 2 * d * jump + (k - 1) % 2 * jump, jump * int(layer.strides[0])
    if isinstance(layer, (keras.layers.MaxPooling2D, keras.layers.AveragePooling2D)):
        return radius + (int(layer.pool_size[0]) - 1) * jump, jump * int(layer.strides[0])
    if isinstance(layer, keras.layers.UpSampling2D):
        jump /= int(layer.size[0])
        return radius + jump, jump
    return radius, jump


def receptive_field_radius(model) -> int:
    """Receptive-field radius of a convolutional model, in input pixels (an upper bound).

    Propagates (radius, jump) through the functional graph: every convolution adds
    ``(kernel - 1) / 2`` steps at its scale, every pooling ``pool - 1`` steps (its window is
    one-sided), every upsampling one step for the sub-pixel alignment; a merge takes the largest
    radius of its inputs; a nested model (a wrapper, an ensemble member) adds its own radius. If
    the graph cannot be walked, every layer is counted in series (a looser bound).

    Parameters
    ----------
    model : keras.Model

    Returns
    -------
    int
        Pixels on each side of an output pixel that can influence it.
    """
    state: dict = {}
    try:
        for layer in model.layers:
            nodes = getattr(layer, "_inbound_nodes", [])
            parents = [t._keras_history.operation.name for t in nodes[0].input_tensors] if nodes else []
            if len(nodes) > 1:
                raise ValueError("shared layer")
            inputs = [state[p] for p in parents]
            radius = max((r for r, _ in inputs), default=0.0)
            jump = max((j for _, j in inputs), default=1.0)
            state[layer.name] = _layer_rf(layer, radius, jump)
        radius = max(state[t._keras_history.operation.name][0] for t in model.outputs)
    except (AttributeError, KeyError, IndexError, ValueError):
        radius, jump = 0.0, 1.0
        for layer in model.layers:
            radius, jump = _layer_rf(layer, radius, jump)
    return int(math.ceil(radius))


def is_local(model) -> bool:
    """Whether every output pixel of ``model`` depends only on inputs within its receptive field.

    False for fixed-input models and for models with image-wide layers (GroupNormalization,
    attention, a LayerNormalization over spatial axes): their tiled prediction depends (weakly) on
    the tile. A LayerNormalization over the channels alone (Keras' default, ``axis=-1``) is local.
    """
    return model.input_shape[1] is None and not any(_is_global(layer) for layer in all_layers(model))


def _is_global(layer) -> bool:
    """Whether ``layer`` mixes pixels across the image (beyond a convolution's window)."""
    if isinstance(layer, (keras.layers.GroupNormalization, keras.layers.MultiHeadAttention)):
        return True
    if isinstance(layer, keras.layers.LayerNormalization):
        axes = layer.axis if isinstance(layer.axis, (list, tuple)) else [layer.axis]
        rank = len(layer.input.shape) if getattr(layer, "_inbound_nodes", None) else 4
        return any(a % rank not in (0, rank - 1) for a in axes)  # a spatial (or token) axis
    return False


def all_layers(model):
    """The layers of ``model`` and of every model nested in it."""
    for layer in model.layers:
        yield layer
        if isinstance(layer, keras.Model):
            yield from all_layers(layer)
