"""kercr's architectures as Keras functional models, built by name from a registry.

>>> from kercr.models import build_model, list_models
>>> model = build_model("transunet", num_heads=6, num_layers=6, mlp_dim=64)
"""

from kercr.models.geometry import input_multiple, receptive_field_radius
from kercr.models.inpainting import INPAINTER_INPUTS, build_inpainter
from kercr.models.layers import PositionEmbedding
from kercr.models.registry import (
    DEEPCR_ORIGINAL_PARAMS,
    REFERENCE_TABLE,
    ModelSpec,
    ReferenceRow,
    build_model,
    count_trainable,
    flip_average_model,
    get_spec,
    list_models,
    logit_model,
    model_kwargs,
    register_model,
)
from kercr.models.transunet import build_transunet
from kercr.models.unet import build_unet

__all__ = [
    "DEEPCR_ORIGINAL_PARAMS",
    "INPAINTER_INPUTS",
    "REFERENCE_TABLE",
    "ModelSpec",
    "PositionEmbedding",
    "ReferenceRow",
    "build_inpainter",
    "build_model",
    "build_transunet",
    "build_unet",
    "count_trainable",
    "flip_average_model",
    "get_spec",
    "input_multiple",
    "list_models",
    "logit_model",
    "model_kwargs",
    "receptive_field_radius",
    "register_model",
]
