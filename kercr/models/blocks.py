"""Building blocks shared by kercr's architectures.

Every block is a plain function ``tensor -> tensor`` that builds fresh layers on each call and
names each layer from the ``name`` prefix it is given, so layer names are stable across builds
(weights can be transferred by name, activation maps looked up by name).

Only ``keras.layers`` / ``keras.ops`` are used, so the same blocks run under the TensorFlow and
JAX backends.
"""

from __future__ import annotations

import numbers

import keras
import numpy as np
from keras import layers

NORMS = ("batch", "group", "layer", None)


def check_choice(name: str, value, choices) -> None:
    """Raise a ValueError naming ``name`` and listing the valid ``choices``."""
    if value not in choices:
        shown = ", ".join(repr(c) for c in choices)
        raise ValueError(f"{name}={value!r} is not valid; choose one of: {shown}.")


def check_count(name: str, value, low: int = 1) -> int:
    """``value`` as an int when it is a whole number >= ``low`` (channels, heads, layers), else a
    ValueError naming ``name``: 4.7 channels or ``True`` layers are refused, not truncated."""
    if (isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real) or not np.isfinite(value)
            or value != int(value) or value < low):
        raise ValueError(f"{name}={value!r} must be a whole number >= {low}.")
    return int(value)


def check_rate(name: str, value) -> float:
    """``value`` as a float when it is a dropout rate in [0, 1), else a ValueError naming ``name``."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real) or not 0.0 <= value < 1.0:
        raise ValueError(f"{name}={value!r} must be a rate in [0, 1), e.g. 0.1.")
    return float(value)


def norm_layer(norm: str | None, *, name: str, groups: int = 8):
    """Return a new normalization layer (or ``None`` for no normalization).

    Parameters
    ----------
    norm : {"batch", "group", "layer", None}
        ``"group"`` is ``keras.layers.GroupNormalization`` (built into Keras 3; no
        tensorflow-addons needed).
    name : str
        Layer name.
    groups : int
        Number of groups for group normalization.
    """
    check_choice("norm", norm, NORMS)
    if norm == "batch":
        return layers.BatchNormalization(name=name)
    if norm == "group":
        return layers.GroupNormalization(groups=groups, name=name)
    if norm == "layer":
        return layers.LayerNormalization(name=name)
    return None


def conv_norm_act(
    x,
    filters: int,
    *,
    name: str,
    kernel_size: int = 3,
    strides: int = 1,
    norm: str | None = "batch",
    groups: int = 8,
    use_bias: bool = True,
    activation: str | None = "relu",
):
    """Convolution (``same`` padding) -> optional normalization -> optional activation."""
    x = layers.Conv2D(
        filters,
        kernel_size,
        strides=strides,
        padding="same",
        use_bias=use_bias,
        name=f"{name}_conv",
    )(x)
    norm_l = norm_layer(norm, name=f"{name}_{norm or 'no'}norm", groups=groups)
    if norm_l is not None:
        x = norm_l(x)
    if activation is not None:
        x = layers.Activation(activation, name=f"{name}_{activation}")(x)
    return x


def double_conv(x, filters: int, *, name: str, **kwargs):
    """Two 3 x 3 ``conv_norm_act`` layers, each with its own normalization layer.

    Cosmic-CoNN's PyTorch code shares one normalization instance between the two convolutions of
    this block; kercr builds a fresh layer for each use.
    """
    x = conv_norm_act(x, filters, name=f"{name}_1", **kwargs)
    return conv_norm_act(x, filters, name=f"{name}_2", **kwargs)


def attention_gate(skip, gate, *, inter_channels: int, name: str):
    """Additive attention gate on a skip connection.

    ``alpha = sigmoid(psi(relu(theta(skip) + phi(gate))))`` and the gate returns ``skip * alpha``,
    following Oktay et al. (2018), "Attention U-Net: Learning Where to Look for the Pancreas",
    arXiv:1804.03999. ``skip`` and ``gate`` must have the same height and width (the gate is
    the upsampled decoder feature).

    The attention coefficients are produced by a layer named ``{name}_alpha`` (shape
    ``(B, H, W, 1)``, values in [0, 1]) so they can be read out for attention-gate maps.
    """
    theta = layers.Conv2D(inter_channels, 1, name=f"{name}_theta")(skip)
    phi = layers.Conv2D(inter_channels, 1, name=f"{name}_phi")(gate)
    f = layers.Activation("relu", name=f"{name}_relu")(layers.Add(name=f"{name}_add")([theta, phi]))
    alpha = layers.Conv2D(1, 1, activation="sigmoid", name=f"{name}_alpha")(f)
    return layers.Multiply(name=f"{name}_gated")([skip, alpha])


def transformer_block(
    x,
    *,
    num_heads: int,
    mlp_dim: int,
    name: str,
    dropout: float = 0.0,
    attention_dropout: float = 0.0,
):
    """Pre-norm ViT encoder block: ``x + MSA(LN(x))`` then ``x + MLP(LN(x))``.

    The attention key size is ``hidden / num_heads`` (as in ViT, arXiv:2010.11929), so the number
    of heads does not change the parameter count.

    Parameters
    ----------
    x : tensor, shape (B, N, hidden)
        Token sequence.
    """
    hidden = x.shape[-1]
    h = layers.LayerNormalization(epsilon=1e-6, name=f"{name}_ln1")(x)
    h = layers.MultiHeadAttention(
        num_heads=num_heads,
        key_dim=hidden // num_heads,
        dropout=attention_dropout,
        name=f"{name}_attention",
    )(h, h)
    if dropout:
        h = layers.Dropout(dropout, name=f"{name}_attention_dropout")(h)
    x = layers.Add(name=f"{name}_residual1")([x, h])
    h = layers.LayerNormalization(epsilon=1e-6, name=f"{name}_ln2")(x)
    h = layers.Dense(mlp_dim, activation="gelu", name=f"{name}_mlp1")(h)
    if dropout:
        h = layers.Dropout(dropout, name=f"{name}_mlp_dropout1")(h)
    h = layers.Dense(hidden, name=f"{name}_mlp2")(h)
    if dropout:
        h = layers.Dropout(dropout, name=f"{name}_mlp_dropout2")(h)
    return layers.Add(name=f"{name}_residual2")([x, h])


def probability_head(x, *, name: str = "head", kernel_size: int = 1):
    """Per-pixel CR probability: a convolution to one logit channel, then a float32 sigmoid.

    Both layers compute in float32, so the output probabilities (and the loss) stay in full
    precision under a mixed-precision policy. The logits have their own layer,
    ``{name}_logits``: float32 sigmoids round to exactly 1.0 above a logit of about 16.6, and at
    0.01 % FPR the ranking of the most confident pixels matters, so evaluation ranks by logits
    (:func:`kercr.models.logit_model`).
    """
    logits = layers.Conv2D(
        1, kernel_size, padding="same", dtype="float32", name=f"{name}_logits"
    )(x)
    return layers.Activation("sigmoid", dtype="float32", name=f"{name}_probability")(logits)


def image_input(height=None, width=None, *, channels: int = 1, name: str = "image"):
    """The model input: the normalized image (and more ``channels``), float32, shape ``(H, W, channels)``."""
    return keras.Input(shape=(height, width, channels), dtype="float32", name=name)
