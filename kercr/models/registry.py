"""Registry of kercr's named architectures: ``build_model(name, **overrides)``.

Each entry is a builder plus a preset (a named set of keyword arguments). Overrides replace
preset values, so ``build_model("transunet", num_heads=12, num_layers=12, mlp_dim=100)`` builds
that row of the reference table.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, field
from typing import Callable

import keras

from kercr.data.augment import FLIP_AXES  # the views kercr.detect averages
from kercr.models.transunet import build_transunet
from kercr.models.unet import build_unet


@dataclass(frozen=True)
class ModelSpec:
    """A registered architecture: builder, preset arguments and a one-line description."""

    name: str
    builder: Callable[..., keras.Model]
    preset: dict = field(default_factory=dict)
    description: str = ""
    reference: str = ""

    def options(self) -> list[str]:
        """Keyword arguments the builder accepts."""
        return [p for p in inspect.signature(self.builder).parameters if p != "name"]


_REGISTRY: dict[str, ModelSpec] = {}


def register_model(spec: ModelSpec) -> ModelSpec:
    """Add ``spec`` to the registry (its name must be new)."""
    if spec.name in _REGISTRY:
        raise ValueError(f"a model named {spec.name!r} is already registered.")
    _REGISTRY[spec.name] = spec
    return spec


def list_models() -> list[str]:
    """Names of the registered architectures, in registration order."""
    return list(_REGISTRY)


def get_spec(name: str) -> ModelSpec:
    """Return the :class:`ModelSpec` registered as ``name`` (ValueError listing names if unknown)."""
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown model {name!r}; choose one of: {', '.join(list_models())}."
        ) from None


def model_kwargs(name: str, **overrides) -> dict:
    """The builder arguments ``build_model(name, **overrides)`` would use (preset + overrides)."""
    spec = get_spec(name)
    valid = spec.options()
    unknown = sorted(set(overrides) - set(valid))
    if unknown:
        raise ValueError(
            f"model {name!r} has no option(s) {', '.join(map(repr, unknown))}; "
            f"valid options: {', '.join(valid)}."
        )
    return {**spec.preset, **overrides}


def build_model(name: str, **overrides) -> keras.Model:
    """Build the registered architecture ``name``.

    Parameters
    ----------
    name : str
        A registry key, see :func:`list_models` (e.g. ``"unet"``, ``"deepcr"``,
        ``"cosmic_conn"``, ``"attention_unet"``, ``"transunet"``).
    **overrides
        Builder keyword arguments replacing the preset's values.

    Returns
    -------
    keras.Model
        Functional model, input ``(B, H, W, 1)`` float32 normalized image, output
        ``(B, H, W, 1)`` float32 CR probability.

    Raises
    ------
    ValueError
        For an unknown name or option (the message lists the valid choices) or a bad value.
    """
    kwargs = model_kwargs(name, **overrides)
    kwargs.setdefault("name", name)
    if not overrides:
        return get_spec(name).builder(**kwargs)
    try:
        return get_spec(name).builder(**kwargs)
    except (TypeError, ValueError, ZeroDivisionError, IndexError) as err:  # a value of the wrong kind or size
        given = ", ".join(f"{k}={v!r}" for k, v in overrides.items())
        raise ValueError(f"model {name!r} cannot be built with {given} ({type(err).__name__}: {err}); "
                         f"its preset is {get_spec(name).preset} (kercr-models {name} shows it).") from None


def count_trainable(model: keras.Model) -> int:
    """Number of trainable parameters (what the reference table counts)."""
    return int(sum(math.prod(w.shape) for w in model.trainable_weights))


def logit_model(model: keras.Model) -> keras.Model | None:
    """A model sharing ``model``'s weights that outputs the CR logits (pre-sigmoid), or None.

    kercr's heads end in a layer named ``*_logits`` followed by the sigmoid; ranking pixels by
    logit avoids the ties of float32 probabilities that round to 1.0.
    """
    head = model.layers[-1]
    if not (isinstance(head, keras.layers.Activation) and model.layers[-2].name.endswith("_logits")):
        return None
    return keras.Model(model.input, model.layers[-2].output, name=f"{model.name}_logits")


def flip_average_model(model: keras.Model) -> keras.Model:
    """``model`` averaged over the four flips of its input, as one Keras model (for export).

    The input is predicted as it is and flipped along H, along W and along both; each output is
    flipped back and the four are averaged: the logits when ``model`` exposes them
    (:func:`logit_model`; then the sigmoid is applied to the mean), else the probabilities. This
    is what ``kercr.detect(..., tta=True)`` computes tile by tile, in a graph that SavedModel and
    TFLite exports carry. Weights are shared with ``model``; input and output shapes are its own.
    """
    scorer = logit_model(model)
    inner = scorer or model
    x = keras.Input(shape=tuple(model.input_shape[1:]), name="image")
    views = []
    for axes in FLIP_AXES:
        v = x
        for a in axes:
            v = keras.ops.flip(v, axis=a)
        y = inner(v)
        for a in axes:
            y = keras.ops.flip(y, axis=a)
        views.append(y)
    mean = keras.layers.Average(name="flip_average")(views)
    out = keras.layers.Activation("sigmoid", name="probability")(mean) if scorer is not None else mean
    return keras.Model(x, out, name=f"{model.name}_flips")


@dataclass(frozen=True)
class ReferenceRow:
    """One row of the reference results table (DECam test set of 7,168 patches of 256 x 256).

    ``params`` is the trainable-parameter count the research reported; the metrics are Dice and
    TPR at 0.01 % FPR on its validation and test sets.
    """

    label: str
    model: str
    overrides: dict
    params: int
    val_dice: float
    val_tpr: float
    test_dice: float
    test_tpr: float


def _tu(heads, layers, mlp):
    return dict(num_heads=heads, num_layers=layers, mlp_dim=mlp)


REFERENCE_TABLE = (
    ReferenceRow("deepCR-style UNet", "deepcr", {}, 467_233, 0.9605, 0.9674, 0.9482, 0.9733),
    ReferenceRow("UNet", "unet", {}, 517_889, 0.9665, 0.9751, 0.9550, 0.9781),
    ReferenceRow("Cosmic-CoNN-style UNet", "cosmic_conn", {}, 466_593, 0.9640, 0.9701, 0.9564, 0.9763),
    ReferenceRow("Attention UNet", "attention_unet", {}, 465_953, 0.9649, 0.9726, 0.9588, 0.9768),
    ReferenceRow("TransUNet 12/12/100", "transunet", _tu(12, 12, 100), 638_449, 0.9707, 0.9798, 0.9669, 0.9835),
    ReferenceRow("TransUNet 6/6/100", "transunet", _tu(6, 6, 100), 476_209, 0.9722, 0.9798, 0.9695, 0.9865),
    ReferenceRow("TransUNet 6/6/64", "transunet", _tu(6, 6, 64), 450_073, 0.9718, 0.9811, 0.9689, 0.9858),
    ReferenceRow("TransUNet 12/6/64", "transunet", _tu(12, 6, 64), 450_073, 0.9711, 0.9800, 0.9670, 0.9853),
    ReferenceRow("TransUNet 6/6/128", "transunet", _tu(6, 6, 128), 496_537, 0.9704, 0.9787, 0.9639, 0.9840),
    ReferenceRow("TransUNet 6/8/64", "transunet", _tu(6, 8, 64), 495_441, 0.9724, 0.9812, 0.9686, 0.9856),
)
"""The reference table; TransUNet labels are heads / layers / MLP dim."""

# deepCR's original mask nets (PyTorch ``UNet2Sigmoid``), trainable parameters.
DEEPCR_ORIGINAL_PARAMS = {"deepcr_2_32": 101_473, "deepcr_2_4": 1_709}

_DEEPCR = dict(norm="batch", conv_bias=True, upsample="transpose")

register_model(ModelSpec(
    "unet", build_unet,
    dict(filters=(32, 64, 128), norm="batch", conv_bias=False, upsample="nearest"),
    "plain UNet: 3 levels 32/64/128, BatchNorm, nearest upsampling + 3x3 conv",
    "Ronneberger et al. 2015, arXiv:1505.04597",
))
register_model(ModelSpec(
    "deepcr", build_unet, dict(filters=(32, 64, 128), **_DEEPCR),
    "deepCR-style UNet: 3 levels 32/64/128, BatchNorm, 2x2 transposed-conv upsampling",
    "Zhang & Bloom 2020, arXiv:1907.09500",
))
register_model(ModelSpec(
    "deepcr_2_32", build_unet, dict(filters=(32, 64), **_DEEPCR),
    "deepCR's original mask net '2-32': 2 levels, 32 channels",
    "Zhang & Bloom 2020, arXiv:1907.09500",
))
register_model(ModelSpec(
    "deepcr_2_4", build_unet, dict(filters=(4, 8), **_DEEPCR),
    "deepCR's original mask net '2-4': 2 levels, 4 channels",
    "Zhang & Bloom 2020, arXiv:1907.09500",
))
register_model(ModelSpec(
    "cosmic_conn", build_unet,
    dict(filters=(32, 64, 128), norm="group", groups=8, conv_bias=False, upsample="transpose"),
    "Cosmic-CoNN-style UNet: 3 levels 32/64/128, GroupNormalization (8 groups)",
    "Xu et al. 2021, arXiv:2106.14922",
))
register_model(ModelSpec(
    "attention_unet", build_unet,
    dict(filters=(32, 64, 128), norm="batch", conv_bias=False, upsample="transpose",
         attention_gates=True, attention_ratio=0.5),
    "Attention UNet: deepCR-style UNet with additive attention gates on the skips",
    "Oktay et al. 2018, arXiv:1804.03999",
))
register_model(ModelSpec(
    "transunet", build_transunet,
    dict(input_size=256, encoder="cnn", encoder_filters=(16, 32, 64, 64), patch_size=2,
         hidden_dim=60, num_heads=6, num_layers=6, mlp_dim=64,
         decoder_stem_filters=64, decoder_filters=(32, 32, 16, 16)),
    "small TransUNet: CNN encoder, ViT bottleneck (hidden 60) on a 16x16 grid, cascaded upsampler",
    "Chen et al. 2021, arXiv:2102.04306",
))
register_model(ModelSpec(
    "transunet_r50_vit_b16", build_transunet,
    dict(input_size=256, encoder="resnet", resnet_blocks=(3, 4, 9), resnet_width=64, patch_size=1,
         hidden_dim=768, num_heads=12, num_layers=12, mlp_dim=3072,
         decoder_stem_filters=512, decoder_filters=(256, 128, 64, 16)),
    "original TransUNet R50-ViT-B/16 hybrid, from scratch, one input channel (~105 M parameters)",
    "Chen et al. 2021, arXiv:2102.04306",
))
