"""The inpainting network: CR pixels replaced by what the sky, star or galaxy under them holds.

deepCR (Zhang & Bloom 2020) pairs its mask network with a learned inpainting network: a UNet
given the image with its CR pixels blanked and the CR mask, trained to predict the clean pixel
values. kercr's is the same idea on kercr's normalization, trained on kercr's synthetic frames,
whose CR-free truth is exact (:mod:`kercr.training.inpainting`).
"""

from __future__ import annotations

import keras

from kercr.models.unet import build_unet

__all__ = ["build_inpainter", "INPAINTER_INPUTS"]

#: The input channels, in order: the normalized image with the pixels to replace set to 0 (the
#: sky), and the mask of those pixels (1 = replace).
INPAINTER_INPUTS = ("masked_image", "mask")


def build_inpainter(*, filters=(32, 64), norm: str | None = "batch", name: str = "inpainter") -> keras.Model:
    """Build the inpainting network: deepCR's 2-level, 32-channel layout with a linear head.

    Parameters
    ----------
    filters : sequence of int
        Channels of each UNet level, finest first.
    norm : {"batch", "group", "layer", None}
        Normalization after every 3 x 3 convolution.
    name : str
        Model name and layer prefix.

    Returns
    -------
    keras.Model
        Input ``(B, H, W, 2)`` float32: :data:`INPAINTER_INPUTS`, the image normalized by
        :func:`kercr.data.normalize` (noise units, asinh-stretched). Output ``(B, H, W, 1)``
        float32: the predicted clean image in the same units, used only at the masked pixels.
    """
    return build_unet(filters=filters, norm=norm, channels=len(INPAINTER_INPUTS), head="values", name=name)
