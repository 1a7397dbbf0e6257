"""TransUNet: a CNN encoder, a ViT bottleneck and a cascaded upsampler with skip connections.

One builder, :func:`build_transunet`, covers kercr's small CR TransUNet (hidden size 60, about
0.45-0.64 M parameters) and, as a preset, the original R50-ViT-B/16 hybrid configuration.

References
----------
Chen et al. (2021), "TransUNet: Transformers Make Strong Encoders for Medical Image
Segmentation", arXiv:2102.04306.
Dosovitskiy et al. (2020), "An Image is Worth 16x16 Words", arXiv:2010.11929.
"""

from __future__ import annotations

import math

import keras
from keras import layers

from kercr.models.blocks import (
    NORMS,
    check_choice,
    check_count,
    check_rate,
    conv_norm_act,
    double_conv,
    image_input,
    probability_head,
    transformer_block,
)
from kercr.models.layers import PositionEmbedding

ENCODERS = ("cnn", "resnet")


def _cnn_encoder(x, *, filters, norm, name):
    """Double-conv stages; stage ``i`` runs at 1 / 2**i of the input size."""
    skips = {}
    for i, f in enumerate(filters):
        if i:
            x = layers.MaxPooling2D(2, name=f"{name}_enc{i}_pool")(x)
        x = double_conv(x, f, name=f"{name}_enc{i}", norm=norm, use_bias=False)
        skips[2**i] = x
    return x, skips, 2 ** (len(filters) - 1)


def _bottleneck_unit(x, *, out_channels, mid_channels, strides, name, groups):
    """ResNet-v2-style bottleneck unit with group normalization (as in TransUNet's R50)."""
    gn = dict(epsilon=1e-6, groups=groups)
    shortcut = x
    if strides != 1 or x.shape[-1] != out_channels:
        shortcut = layers.Conv2D(
            out_channels, 1, strides=strides, use_bias=False, name=f"{name}_proj_conv"
        )(x)
        shortcut = layers.GroupNormalization(name=f"{name}_proj_gn", **gn)(shortcut)
    y = layers.Conv2D(mid_channels, 1, use_bias=False, name=f"{name}_conv1")(x)
    y = layers.Activation("relu", name=f"{name}_relu1")(layers.GroupNormalization(name=f"{name}_gn1", **gn)(y))
    y = layers.Conv2D(
        mid_channels, 3, strides=strides, padding="same", use_bias=False, name=f"{name}_conv2"
    )(y)
    y = layers.Activation("relu", name=f"{name}_relu2")(layers.GroupNormalization(name=f"{name}_gn2", **gn)(y))
    y = layers.Conv2D(out_channels, 1, use_bias=False, name=f"{name}_conv3")(y)
    y = layers.GroupNormalization(name=f"{name}_gn3", **gn)(y)
    return layers.Activation("relu", name=f"{name}_out")(layers.Add(name=f"{name}_add")([shortcut, y]))


def _resnet_encoder(x, *, blocks, width, name, groups=32):
    """ResNet-50-style encoder (root + bottleneck blocks), features at 1/16 for 3 blocks."""
    x = layers.Conv2D(width, 7, strides=2, padding="same", use_bias=False, name=f"{name}_root_conv")(x)
    x = layers.GroupNormalization(groups=groups, epsilon=1e-6, name=f"{name}_root_gn")(x)
    x = layers.Activation("relu", name=f"{name}_root_relu")(x)
    skips = {2: x}
    x = layers.MaxPooling2D(3, strides=2, padding="same", name=f"{name}_root_pool")(x)
    scale = 4
    for b, units in enumerate(blocks):
        mid = width * 2**b
        for u in range(units):
            strides = 2 if (b > 0 and u == 0) else 1
            x = _bottleneck_unit(
                x, out_channels=4 * mid, mid_channels=mid, strides=strides,
                name=f"{name}_block{b + 1}_unit{u + 1}", groups=groups,
            )
        scale *= 2 if b > 0 else 1
        skips[scale] = x
    del skips[scale]  # the deepest block feeds the transformer, not a skip
    return x, skips, scale


def build_transunet(
    *,
    input_size: int = 256,
    encoder: str = "cnn",
    encoder_filters=(16, 32, 64, 64),
    resnet_blocks=(3, 4, 9),
    resnet_width: int = 64,
    patch_size: int = 2,
    hidden_dim: int = 60,
    num_heads: int = 6,
    num_layers: int = 6,
    mlp_dim: int = 64,
    dropout: float = 0.0,
    attention_dropout: float = 0.0,
    decoder_stem_filters: int = 64,
    decoder_filters=(32, 32, 16, 16),
    norm: str | None = "batch",
    name: str = "transunet",
) -> keras.Model:
    """Build a TransUNet for per-pixel CR probabilities.

    The CNN encoder produces skip features and a feature map that is cut into
    ``patch_size x patch_size`` patches, embedded to ``hidden_dim`` with learned position
    embeddings and passed through ``num_layers`` pre-norm transformer blocks (ViT). The tokens are
    reshaped back to a grid and a cascaded upsampler (2x upsampling, concatenation with the
    encoder skip of that scale, two ``conv_norm_act``) restores the input resolution.

    Because the position embedding is learned for a fixed grid, the model takes a fixed tile size
    ``(input_size, input_size)``; full frames are processed in tiles of that size.

    Parameters
    ----------
    input_size : int
        Tile height and width in pixels; must be divisible by the total downsampling.
    encoder : {"cnn", "resnet"}
        ``"cnn"``: double-conv stages with ``encoder_filters`` (kercr's small TransUNet).
        ``"resnet"``: ResNet bottleneck blocks ``resnet_blocks`` with group normalization
        (TransUNet's R50 hybrid; trained from scratch on one input channel).
    encoder_filters : sequence of int
        Channels of the CNN stages, finest first; stage ``i`` runs at 1/2**i.
    resnet_blocks, resnet_width : sequence of int, int
        Units per ResNet block and the root width (ResNet-50: ``(3, 4, 6)``; TransUNet: ``(3, 4, 9)``).
    patch_size : int
        Patch size on the encoder's last feature map (1 for the ResNet encoder, as in TransUNet).
    hidden_dim, num_heads, num_layers, mlp_dim : int
        Transformer width, heads (must divide ``hidden_dim``), depth and MLP width.
    dropout, attention_dropout : float
        Dropout in the transformer MLP / residual branches, and on attention weights.
    decoder_stem_filters : int
        Channels of the 3 x 3 convolution applied to the reshaped tokens.
    decoder_filters : sequence of int
        Channels of each upsampling stage, coarsest first; one stage per factor of 2 between the
        token grid and the input.
    norm : {"batch", "group", "layer", None}
        Normalization in the CNN encoder and the decoder.
    name : str
        Model name and layer-name prefix.

    Returns
    -------
    keras.Model
        Input ``(B, input_size, input_size, 1)`` float32 normalized image; output of the same
        shape, float32 CR probability in [0, 1].

    Notes
    -----
    Longer than kercr's ~80-line guide for a function by this docstring, which documents every
    keyword; the body (~60 lines) builds the layers in one sequence, whose order and names the
    saved models' weights are keyed on.
    """
    check_choice("encoder", encoder, ENCODERS)
    check_choice("norm", norm, NORMS)
    hidden_dim, num_heads, num_layers, mlp_dim, patch_size, input_size, decoder_stem_filters = (
        check_count(key, value) for key, value in dict(
            hidden_dim=hidden_dim, num_heads=num_heads, num_layers=num_layers, mlp_dim=mlp_dim,
            patch_size=patch_size, input_size=input_size, decoder_stem_filters=decoder_stem_filters).items())
    dropout, attention_dropout = check_rate("dropout", dropout), check_rate("attention_dropout", attention_dropout)
    if patch_size & (patch_size - 1):  # the upsampler doubles the grid back to the input size
        raise ValueError(f"patch_size={patch_size} must be a power of two (1, 2, 4, ...): the decoder doubles the "
                         "token grid back to the input size.")
    decoder_filters = tuple(check_count("decoder_filters entry", f) for f in decoder_filters)
    if encoder == "cnn":
        encoder_filters = tuple(check_count("encoder_filters entry", f) for f in encoder_filters)
        if len(encoder_filters) < 1:
            raise ValueError("encoder_filters is empty; give one channel count per level, e.g. (16, 32, 64, 64).")
    else:
        resnet_blocks = tuple(check_count("resnet_blocks entry", b) for b in resnet_blocks)
        if not resnet_blocks:
            raise ValueError("resnet_blocks is empty; give the units of each block, e.g. (3, 4, 9).")
        if check_count("resnet_width", resnet_width) % 32:
            raise ValueError(f"resnet_width={resnet_width} must be a multiple of 32 (the ResNet encoder's group "
                             "normalization has 32 groups), e.g. 32 or 64.")
    if norm == "group":  # the CNN encoder's and the decoder's group normalization has 8 groups
        counts = {"decoder_stem_filters": (decoder_stem_filters,), "decoder_filters": decoder_filters,
                  **({"encoder_filters": encoder_filters} if encoder == "cnn" else {})}
        for key, values in counts.items():
            if any(v % 8 for v in values):
                raise ValueError(f"{key}={values if len(values) > 1 else values[0]!r} must be multiples of 8 with "
                                 "norm='group' (8 groups), or choose norm='batch' or 'layer'.")
    if hidden_dim % num_heads:
        raise ValueError(
            f"num_heads={num_heads} must divide hidden_dim={hidden_dim} (the key size is "
            f"hidden_dim / num_heads); divisors of {hidden_dim}: "
            f"{[d for d in range(1, hidden_dim + 1) if hidden_dim % d == 0]}."
        )

    inputs = image_input(input_size, input_size)
    if encoder == "cnn":
        x, skips, scale = _cnn_encoder(inputs, filters=encoder_filters, norm=norm, name=name)
    else:
        x, skips, scale = _resnet_encoder(inputs, blocks=resnet_blocks, width=resnet_width, name=name)
    grid_scale = scale * patch_size
    if input_size % grid_scale:
        raise ValueError(
            f"input_size={input_size} must be divisible by the encoder's total downsampling "
            f"({grid_scale}); use a multiple of {grid_scale}, e.g. {grid_scale * max(1, input_size // grid_scale)}."
        )
    n_up = int(math.log2(grid_scale))
    if len(decoder_filters) != n_up:
        raise ValueError(
            f"decoder_filters has {len(decoder_filters)} entries but the token grid is 1/{grid_scale} "
            f"of the input, which needs {n_up} upsampling stages; give {n_up} channel counts."
        )
    grid = input_size // grid_scale

    x = layers.Conv2D(
        hidden_dim, patch_size, strides=patch_size, name=f"{name}_patch_embedding"
    )(x)
    x = layers.Reshape((grid * grid, hidden_dim), name=f"{name}_tokens")(x)
    x = PositionEmbedding(grid * grid, name=f"{name}_position_embedding")(x)
    if dropout:
        x = layers.Dropout(dropout, name=f"{name}_embedding_dropout")(x)
    for i in range(num_layers):
        x = transformer_block(
            x, num_heads=num_heads, mlp_dim=mlp_dim, dropout=dropout,
            attention_dropout=attention_dropout, name=f"{name}_vit{i}",
        )
    x = layers.LayerNormalization(epsilon=1e-6, name=f"{name}_vit_norm")(x)
    x = layers.Reshape((grid, grid, hidden_dim), name=f"{name}_grid")(x)

    x = conv_norm_act(x, decoder_stem_filters, name=f"{name}_dec_stem", norm=norm, use_bias=False)
    s = grid_scale
    for i, f in enumerate(decoder_filters):
        s //= 2
        # Bilinear upsampling is safe to export here: the TransUNet's tile size is static.
        x = layers.UpSampling2D(2, interpolation="bilinear", name=f"{name}_dec{i}_upsample")(x)
        if s in skips:
            x = layers.Concatenate(name=f"{name}_dec{i}_concat")([x, skips[s]])
        x = double_conv(x, f, name=f"{name}_dec{i}", norm=norm, use_bias=False)

    outputs = probability_head(x, name=f"{name}_head")
    return keras.Model(inputs, outputs, name=name)
