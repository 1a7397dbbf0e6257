"""The convolutional UNet family: plain UNet, deepCR-style, Cosmic-CoNN-style, Attention UNet.

One builder, :func:`build_unet`; the named architectures are presets of its arguments (see
:mod:`kercr.models.registry`).

References
----------
Ronneberger, Fischer & Brox (2015), "U-Net", arXiv:1505.04597.
Zhang & Bloom (2020), "deepCR: Cosmic Ray Rejection with Deep Learning", arXiv:1907.09500.
Xu et al. (2021), "Cosmic-CoNN: A Cosmic Ray Detection Deep-Learning Framework", arXiv:2106.14922.
Oktay et al. (2018), "Attention U-Net: Learning Where to Look for the Pancreas", arXiv:1804.03999.
"""

from __future__ import annotations

import keras
from keras import layers

from kercr.models.blocks import (
    NORMS,
    attention_gate,
    check_choice,
    check_count,
    check_rate,
    conv_norm_act,
    double_conv,
    image_input,
    probability_head,
)

UPSAMPLING = ("transpose", "nearest")
HEADS = ("probability", "values")


def build_unet(
    *,
    filters=(32, 64, 128),
    norm: str | None = "batch",
    groups: int = 8,
    conv_bias: bool = True,
    upsample: str = "transpose",
    attention_gates: bool = False,
    attention_ratio: float = 0.5,
    dropout: float = 0.0,
    channels: int = 1,
    head: str = "probability",
    name: str = "unet",
) -> keras.Model:
    """Build a UNet that maps a normalized image to a per-pixel CR probability.

    The encoder has one double-convolution block per entry of ``filters``, with 2 x 2 max pooling
    between blocks; the decoder mirrors it. The input height and width are left unknown
    (``None``); they must be divisible by ``2 ** (len(filters) - 1)``.

    Parameters
    ----------
    filters : sequence of int
        Channels of each level, finest first. ``(32, 64, 128)`` is a 3-level UNet.
    norm : {"batch", "group", "layer", None}
        Normalization after every 3 x 3 convolution (a fresh layer each time).
    groups : int
        Groups for ``norm="group"``; must divide every entry of ``filters``.
    conv_bias : bool
        Whether the 3 x 3 convolutions have a bias (redundant, but present in deepCR, before a
        normalization layer).
    upsample : {"transpose", "nearest"}
        ``"transpose"``: a 2 x 2, stride-2 ``Conv2DTranspose`` halving the channels (deepCR).
        ``"nearest"``: nearest-neighbour ``UpSampling2D`` then a 3 x 3 ``conv_norm_act``
        (the common Keras UNet). Both export to SavedModel with dynamic height and width
        (bilinear upsampling does not, see DEVELOPERS.md).
    attention_gates : bool
        Put an additive attention gate on every skip connection (Attention UNet).
    attention_ratio : float
        Intermediate channels of each gate as a fraction of the skip's channels.
    dropout : float
        Spatial dropout rate at the bottleneck (0 disables it).
    channels : int
        Input channels (1: the normalized image; the inpainting network takes 2, the image and
        the mask of the pixels to replace).
    head : {"probability", "values"}
        ``"probability"``: a CR probability (:func:`~kercr.models.blocks.probability_head`).
        ``"values"``: one linear float32 channel (the inpainting network's image values).
    name : str
        Model name; also the prefix of every layer name.

    Returns
    -------
    keras.Model
        Input ``(B, H, W, 1)`` float32 normalized image; output ``(B, H, W, 1)`` float32 CR
        probability in [0, 1].

    Notes
    -----
    Longer than kercr's ~80-line guide for a function by this docstring, which documents every
    keyword; the body (~50 lines) builds the layers in one sequence, whose order and names the
    saved models' weights are keyed on.
    """
    given_filters = filters
    try:
        filters = tuple(check_count("filters entry", f) for f in filters)
    except (TypeError, ValueError):
        filters = None
    if filters is None or len(filters) < 2:
        raise ValueError(
            f"filters={given_filters!r} is not valid; give at least two positive whole channel counts, "
            "finest level first, e.g. filters=(32, 64, 128)."
        )
    groups = check_count("groups", groups)
    channels = check_count("channels", channels)
    check_choice("norm", norm, NORMS)
    check_choice("upsample", upsample, UPSAMPLING)
    if norm == "group" and any(f % groups for f in filters):
        raise ValueError(
            f"groups={groups} must divide every entry of filters={filters!r} for norm='group'; "
            "choose groups from the common divisors (e.g. 4 or 8)."
        )
    if not 0.0 < attention_ratio <= 1.0:
        raise ValueError(f"attention_ratio={attention_ratio!r} must be in (0, 1].")
    dropout = check_rate("dropout", dropout)

    if head not in HEADS:
        raise ValueError(f"head={head!r}; choose one of: {', '.join(HEADS)}.")

    conv_kw = dict(norm=norm, groups=groups, use_bias=conv_bias)
    inputs = image_input(channels=int(channels))
    x = inputs
    skips = []
    for level, f in enumerate(filters):
        if level:
            x = layers.MaxPooling2D(2, name=f"{name}_down{level}_pool")(x)
        x = double_conv(x, f, name=f"{name}_down{level}", **conv_kw)
        skips.append(x)
    if dropout:
        x = layers.SpatialDropout2D(dropout, name=f"{name}_bottleneck_dropout")(x)

    for level in range(len(filters) - 2, -1, -1):
        f = filters[level]
        prefix = f"{name}_up{level}"
        if upsample == "transpose":
            x = layers.Conv2DTranspose(f, 2, strides=2, name=f"{prefix}_transpose")(x)
        else:
            x = layers.UpSampling2D(2, interpolation="nearest", name=f"{prefix}_upsample")(x)
            x = conv_norm_act(x, f, name=f"{prefix}_pre", **conv_kw)
        skip = skips[level]
        if attention_gates:
            skip = attention_gate(
                skip, x, inter_channels=max(1, int(round(f * attention_ratio))), name=f"{prefix}_gate"
            )
        x = layers.Concatenate(name=f"{prefix}_concat")([skip, x])
        x = double_conv(x, f, name=f"{prefix}_conv", **conv_kw)

    if head == "values":
        outputs = layers.Conv2D(1, 1, padding="same", dtype="float32", name=f"{name}_head_values")(x)
    else:
        outputs = probability_head(x, name=f"{name}_head")
    return keras.Model(inputs, outputs, name=name)
