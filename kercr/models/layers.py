"""Custom Keras layers used by kercr's models (serializable, backend-agnostic)."""

from __future__ import annotations

import keras


@keras.saving.register_keras_serializable(package="kercr")
class PositionEmbedding(keras.layers.Layer):
    """Add a learned position embedding to a token sequence.

    Parameters
    ----------
    num_tokens : int
        Sequence length N the embedding is learned for (the ViT grid, fixed at build time).
    initializer_stddev : float
        Standard deviation of the truncated-normal initializer (ViT uses 0.02).

    Input and output shape: ``(B, N, hidden)``.
    """

    def __init__(self, num_tokens: int, initializer_stddev: float = 0.02, **kwargs):
        super().__init__(**kwargs)
        self.num_tokens = int(num_tokens)
        self.initializer_stddev = float(initializer_stddev)

    def build(self, input_shape):
        if input_shape[-2] is not None and input_shape[-2] != self.num_tokens:
            raise ValueError(
                f"{self.name}: the input has {input_shape[-2]} tokens but the position embedding "
                f"was built for {self.num_tokens}; a TransUNet runs only at the tile size it was "
                "built for."
            )
        self.embedding = self.add_weight(
            name="embedding",
            shape=(1, self.num_tokens, input_shape[-1]),
            initializer=keras.initializers.TruncatedNormal(stddev=self.initializer_stddev),
            trainable=True,
        )

    def call(self, inputs):
        return inputs + keras.ops.cast(self.embedding, inputs.dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(num_tokens=self.num_tokens, initializer_stddev=self.initializer_stddev)
        return config
