"""The tiny search shared by the tuning tests (not a test module)."""

# A tiny TransUNet search: 64 x 64 tiles (the TransUNet is built at the patch size), 1 epoch of
# 2 batches of 4 patches from three 128 x 128 frames with dense cosmic rays.
TINY_DATA = {
    "patch_size": 64, "batch_size": 4, "frames": 3, "frame_shape": [128, 128],
    "steps_per_epoch": 2, "validation_steps": 2, "cr_rate_scale": 50.0,
}
TINY = {
    "search": {"tuner": "random", "max_trials": 2, "max_epochs": 1, "seed": 0},
    "space": {"model": ["transunet"], "num_heads": [6, 12], "num_layers": [1, 2], "mlp_dim": [32, 64],
              "learning_rate": [1e-3]},
    "data": TINY_DATA,
}
