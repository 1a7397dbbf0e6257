"""SavedModel for TensorFlow Serving: raw pixels in, CR probability out.

The ``serving_default`` signature takes ``image`` (float32, ``[batch, H, W, 1]``, raw pixel values
in ADU or electrons, NaN for bad pixels) and returns ``cr_probability`` (float32, same shape).
Each image of the batch is normalized on its own statistics inside the graph
(:mod:`kercr.export.tf_normalization`, the numpy normalization in TF ops), so the served result
equals ``model(normalize(image)[0])``. H and W are dynamic for the convolutional models (they
must be multiples of :func:`kercr.models.input_multiple`) and fixed for the TransUNet.

A model whose normalization takes the frame noise from the header (``header_noise``) also takes
``gain`` (e- per image unit) and ``readnoise`` (e-), float32 ``[batch]``: 0 for an image whose
gain is unknown (the noise is then measured, as without them).

A second signature, ``normalized``, takes ``normalized_image`` (already normalized) and returns
``cr_probability``: the bare network, for clients that normalize themselves.

:func:`rest_body_to_kwargs` turns a TF Serving REST ``predict`` body (``{"instances": ...}`` row
format or ``{"inputs": ...}`` columnar format) into the signature's keyword arguments the way the
server does, and :func:`rest_response` formats the outputs as the server would.
"""

from __future__ import annotations

import logging

import numpy as np
import tensorflow as tf

from kercr.data.normalization import NormalizationConfig
from kercr.export.tf_normalization import normalize_batch

__all__ = ["ServingModule", "write_savedmodel", "rest_body_to_kwargs", "rest_response",
           "SIGNATURE_KEY", "INPUT_NAME", "OUTPUT_NAME"]

logger = logging.getLogger(__name__)

SIGNATURE_KEY = "serving_default"
NORMALIZED_SIGNATURE_KEY = "normalized"
INPUT_NAME = "image"
OUTPUT_NAME = "cr_probability"


class ServingModule(tf.Module):
    """tf.Module wrapping a kercr Keras model with normalization in the graph.

    Parameters
    ----------
    model : keras.Model
        Input (batch, H, W, 1) normalized float32 (H, W fixed or None).
    config : NormalizationConfig
        Normalization constants of the model (baked into the graph).
    multiple : int
        H and W of a request must be divisible by it (1 to skip the check).
    """

    def __init__(self, model, config: NormalizationConfig, *, multiple: int = 1):
        super().__init__(name="kercr_serving")
        self.model = model
        # Keras 3 variables are not tf.Variables; tracking their tf.Variable values makes them
        # proper SavedModel variables (TFLite can then freeze them, and `.variables` lists them).
        self.model_variables = [v.value for v in model.variables]
        self._config = config
        self._multiple = int(multiple)
        height, width = model.input_shape[1], model.input_shape[2]
        image = tf.TensorSpec([None, height, width, 1], tf.float32, name=INPUT_NAME)
        if config.header_noise is None:
            self.serve = tf.function(self._serve, input_signature=[image])
        else:  # the frame noise from each image's gain and read noise
            self.serve = tf.function(self._serve_with_header, input_signature=[
                image, tf.TensorSpec([None], tf.float32, name="gain"), tf.TensorSpec([None], tf.float32, name="readnoise")])
        self.serve_normalized = tf.function(
            self._serve_normalized,
            input_signature=[tf.TensorSpec([None, height, width, 1], tf.float32, name="normalized_image")])

    def _check_shape(self, image):
        if self._multiple <= 1:
            return image
        shape = tf.shape(image)
        ok = (shape[1] % self._multiple == 0) & (shape[2] % self._multiple == 0)
        check = tf.debugging.Assert(ok, [
            f"kercr: image height and width must be multiples of {self._multiple} for this model; "
            "reflect-pad the tile (or cut tiles whose sides are multiples). Got shape:", shape])
        with tf.control_dependencies([check]):
            return tf.identity(image)

    def _serve(self, image):
        image = self._check_shape(image)
        normalized = normalize_batch(image, self._config)
        return {OUTPUT_NAME: self.model(normalized, training=False)}

    def _serve_with_header(self, image, gain, readnoise):
        image = self._check_shape(image)
        normalized = normalize_batch(image, self._config, gain, readnoise)
        return {OUTPUT_NAME: self.model(normalized, training=False)}

    def _serve_normalized(self, normalized_image):
        normalized_image = self._check_shape(normalized_image)
        return {OUTPUT_NAME: self.model(normalized_image, training=False)}

    def signatures(self) -> dict:
        """Concrete functions to save as signatures."""
        return {SIGNATURE_KEY: self.serve.get_concrete_function(),
                NORMALIZED_SIGNATURE_KEY: self.serve_normalized.get_concrete_function()}


def write_savedmodel(model, path, *, config: NormalizationConfig, multiple: int = 1) -> None:
    """Write the serving SavedModel (``saved_model.pb`` + ``variables/``) into directory ``path``."""
    module = ServingModule(model, config, multiple=multiple)
    tf.saved_model.save(module, str(path), signatures=module.signatures())


def _signature_inputs(signature) -> dict:
    return dict(signature.structured_input_signature[1])


def _to_tensor(name, value, spec):
    try:
        array = np.asarray(value, dtype=spec.dtype.as_numpy_dtype)
    except (TypeError, ValueError) as err:
        raise ValueError(f"input {name!r}: cannot convert the JSON value to a {spec.dtype.name} array "
                         f"(ragged or non-numeric lists?): {err}") from None
    if not spec.shape.is_compatible_with(array.shape):
        raise ValueError(f"input {name!r} has shape {list(array.shape)}, the signature expects "
                         f"{spec.shape.as_list()} (None = any size).")
    return tf.constant(array)


def rest_body_to_kwargs(body, signature) -> dict:
    """Turn a TF Serving REST ``predict`` request body into the signature's keyword arguments.

    Follows TF Serving's REST API: the row format ``{"instances": [...]}`` lists one entry per
    batch element (a bare value when the signature has one input, else an object of named
    inputs), stacked along a new batch axis; the columnar format ``{"inputs": ...}`` gives each
    input's full batched value (a bare value for a single input, else an object). An optional
    ``"signature_name"`` is ignored here (the caller picks the signature). JSON ``NaN`` is read
    as a NaN pixel.

    Parameters
    ----------
    body : str, bytes or dict
        The request body.
    signature : ConcreteFunction
        E.g. ``tf.saved_model.load(path).signatures["serving_default"]``.

    Returns
    -------
    dict
        ``{input name: tf.Tensor}``; call ``signature(**kwargs)``.

    Raises
    ------
    ValueError
        Neither or both of ``instances``/``inputs``, missing or unknown input names, ragged lists,
        wrong shapes.
    """
    import json

    if isinstance(body, (str, bytes, bytearray)):
        body = json.loads(body)
    if not isinstance(body, dict):
        raise ValueError("a REST predict body is a JSON object with 'instances' or 'inputs'.")
    specs = _signature_inputs(signature)
    has_rows, has_cols = "instances" in body, "inputs" in body
    if has_rows == has_cols:
        raise ValueError("a REST predict body needs exactly one of 'instances' (row format) and 'inputs' "
                         "(columnar format).")
    if has_rows:
        rows = body["instances"]
        if not isinstance(rows, list) or not rows:
            raise ValueError("'instances' must be a non-empty list, one entry per batch element.")
        if all(isinstance(r, dict) for r in rows):
            names = set(rows[0])
            if any(set(r) != names for r in rows):
                raise ValueError("every instance must name the same inputs.")
            columns = {n: [r[n] for r in rows] for n in names}
        elif len(specs) == 1:
            columns = {next(iter(specs)): rows}
        else:
            raise ValueError(f"the signature has inputs {sorted(specs)}; each instance must be an object naming them.")
    else:
        value = body["inputs"]
        columns = value if isinstance(value, dict) else {next(iter(specs)): value} if len(specs) == 1 else None
        if columns is None:
            raise ValueError(f"the signature has inputs {sorted(specs)}; 'inputs' must be an object naming them.")
    missing, unknown = sorted(set(specs) - set(columns)), sorted(set(columns) - set(specs))
    if missing or unknown:
        raise ValueError(f"REST body inputs {sorted(columns)} do not match the signature's {sorted(specs)}"
                         f" (missing {missing}, unknown {unknown}).")
    return {name: _to_tensor(name, value, specs[name]) for name, value in columns.items()}


def rest_response(outputs: dict, *, row_format: bool) -> dict:
    """Format signature outputs like TF Serving: ``{"predictions": [...]}`` or ``{"outputs": ...}``.

    With one output, rows are bare values (no output name), as the server does.
    """
    arrays = {k: np.asarray(v).tolist() for k, v in outputs.items()}
    if not row_format:
        return {"outputs": next(iter(arrays.values())) if len(arrays) == 1 else arrays}
    if len(arrays) == 1:
        return {"predictions": next(iter(arrays.values()))}
    n = len(next(iter(arrays.values())))
    return {"predictions": [{k: v[i] for k, v in arrays.items()} for i in range(n)]}
