"""Architectures: registry, shapes, parameter counts, serialization, JAX backend, export."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

from kercr.models import (
    DEEPCR_ORIGINAL_PARAMS,
    REFERENCE_TABLE,
    build_model,
    count_trainable,
    input_multiple,
    list_models,
)

LARGE = {"transunet_r50_vit_b16"}
SMALL_MODELS = [name for name in list_models() if name not in LARGE]


def _example_input(model, rng, batch=2):
    """A normalized-image batch the model accepts: its fixed tile, else a non-square shape."""
    h = model.input_shape[1]
    shape = (batch, h, h, 1) if h is not None else (batch, 48, 80, 1)
    return rng.normal(size=shape).astype("float32")


@pytest.fixture(scope="module")
def models():
    keras.utils.set_random_seed(0)
    return {name: build_model(name) for name in SMALL_MODELS}


def test_registry_has_the_required_architectures():
    required = {"unet", "deepcr", "cosmic_conn", "attention_unet", "transunet",
                "deepcr_2_32", "deepcr_2_4", "transunet_r50_vit_b16"}
    assert required <= set(list_models())


@pytest.mark.parametrize("name", SMALL_MODELS)
def test_output_is_a_float32_probability_map_of_the_input_shape(models, name):
    model = models[name]
    x = _example_input(model, np.random.default_rng(1))
    y = np.asarray(model(x, training=False))
    assert y.shape == x.shape
    assert y.dtype == np.float32
    assert np.all((y >= 0) & (y <= 1))
    assert model.input.dtype == "float32"


@pytest.mark.parametrize("name", [n for n in SMALL_MODELS if not n.startswith("transunet")])
def test_convolutional_models_accept_any_multiple_of_their_downsampling(models, name):
    model = models[name]
    assert model.input_shape == (None, None, None, 1)
    m = input_multiple(model)
    assert m == {"deepcr_2_32": 2, "deepcr_2_4": 2}.get(name, 4)
    for h, w in [(m * 3, m * 5), (m * 8, m * 2)]:
        y = model(np.zeros((1, h, w, 1), "float32"))
        assert tuple(y.shape) == (1, h, w, 1)


def test_transunet_has_a_fixed_tile_and_rejects_other_sizes():
    model = build_model("transunet", input_size=128)
    assert model.input_shape == (None, 128, 128, 1)
    assert input_multiple(model) == 128
    with pytest.raises(ValueError, match="divisible"):
        build_model("transunet", input_size=200)


@pytest.mark.parametrize("row", REFERENCE_TABLE, ids=lambda r: r.label)
def test_trainable_parameters_match_the_reference_table(row):
    n = count_trainable(build_model(row.model, **row.overrides))
    tolerance = 0.05 if row.model == "transunet" else 0.02
    assert abs(n - row.params) <= tolerance * row.params, (row.label, n, row.params)


def test_exact_counts_of_the_presets_that_reproduce_the_reference_exactly():
    # deepCR's PyTorch UNet2Sigmoid and the reference's deepCR-style / plain / GN nets, exactly.
    assert count_trainable(build_model("deepcr")) == 467_233
    assert count_trainable(build_model("unet")) == 517_889
    assert count_trainable(build_model("cosmic_conn")) == 466_593
    for name, params in DEEPCR_ORIGINAL_PARAMS.items():
        assert count_trainable(build_model(name)) == params


def test_transunet_counts_change_with_heads_layers_and_mlp_exactly_as_the_reference():
    def n(heads, layers, mlp):
        return count_trainable(build_model("transunet", num_heads=heads, num_layers=layers, mlp_dim=mlp))

    base = n(6, 6, 64)
    assert n(6, 6, 100) - base == 26_136
    assert n(6, 8, 64) - base == 45_368
    assert n(12, 6, 64) == base
    assert n(6, 6, 128) - base == 476_209 - 450_073 + (496_537 - 476_209)
    assert n(12, 12, 100) - base == 638_449 - 450_073


@pytest.mark.slow
def test_original_transunet_r50_vit_b16_preset():
    model = build_model("transunet_r50_vit_b16")
    n = count_trainable(model)
    # TransUNet (R50-ViT-B/16) has about 105 M parameters; one input channel, one output.
    assert 100e6 < n < 110e6
    assert model.input_shape == (None, 256, 256, 1)
    assert model.output_shape == (None, 256, 256, 1)
    names = [layer.name for layer in model.layers]
    assert sum("_block3_unit" in n and n.endswith("_add") for n in names) == 9
    assert sum(n.endswith("_attention") for n in names) == 12


def test_unknown_name_lists_the_valid_choices():
    with pytest.raises(ValueError) as err:
        build_model("resnet")
    for name in ("unet", "deepcr", "cosmic_conn", "attention_unet", "transunet"):
        assert name in str(err.value)


@pytest.mark.parametrize(
    "name, overrides, message",
    [
        ("unet", {"heads": 4}, "valid options"),
        ("unet", {"norm": "instance"}, "'batch', 'group'"),
        ("unet", {"upsample": "bilinear"}, "'transpose', 'nearest'"),
        ("cosmic_conn", {"filters": (30, 60, 120)}, "groups"),
        ("unet", {"filters": (32,)}, "at least two"),
        ("transunet", {"num_heads": 7}, "divide hidden_dim"),
        ("transunet", {"encoder": "vgg"}, "'cnn', 'resnet'"),
        ("transunet", {"decoder_filters": (16, 16)}, "upsampling stages"),
        # Refused, not truncated or left to a deep Keras error:
        ("unet", {"filters": (4.7, 8.2)}, "whole channel counts"),
        ("unet", {"channels": 1.5}, "channels=1.5 must be a whole number"),
        ("cosmic_conn", {"groups": 0}, "groups=0 must be a whole number >= 1"),
        ("unet", {"dropout": "0.1"}, "dropout='0.1' must be a rate"),
        ("transunet", {"dropout": 1.5}, "dropout=1.5 must be a rate"),
        ("transunet", {"hidden_dim": True}, "hidden_dim=True must be a whole number"),
        ("transunet", {"patch_size": 3}, "patch_size=3 must be a power of two"),
        ("transunet", {"encoder": "resnet", "resnet_blocks": ()}, "resnet_blocks is empty"),
        ("transunet", {"encoder": "resnet", "resnet_width": 16}, "multiple of 32"),
        ("transunet", {"norm": "group", "encoder_filters": (4, 8, 16, 16)}, "multiples of 8 with norm='group'"),
    ],
)
def test_bad_options_raise_value_errors_that_say_what_is_valid(name, overrides, message):
    with pytest.raises(ValueError, match=message):
        build_model(name, **overrides)


def test_a_tiled_model_is_local_unless_a_layer_mixes_pixels_across_the_tile():
    from kercr.models.geometry import is_local
    from kercr.models.unet import build_unet

    assert is_local(build_unet(filters=(4, 8)))
    assert is_local(build_unet(filters=(4, 8), norm="layer"))  # Keras' LayerNormalization: over channels
    assert not is_local(build_unet(filters=(8, 16), norm="group"))
    assert not is_local(build_model("transunet", input_size=64))


def test_every_norm_layer_is_a_fresh_instance():
    model = build_model("cosmic_conn")
    norms = [layer for layer in model.layers if isinstance(layer, keras.layers.GroupNormalization)]
    assert len(norms) == 10  # two per double conv: 3 encoder + 2 decoder blocks
    assert len({id(layer) for layer in norms}) == len(norms)
    assert all(layer.groups == 8 for layer in norms)


def test_attention_unet_has_a_gate_on_every_skip():
    model = build_model("attention_unet")
    gates = [layer.name for layer in model.layers if layer.name.endswith("_gate_alpha")]
    assert len(gates) == 2
    assert all(model.get_layer(g).output.shape[-1] == 1 for g in gates)


@pytest.mark.parametrize("name", SMALL_MODELS)
def test_config_round_trip_rebuilds_the_same_model(models, name):
    model = models[name]
    clone = keras.Model.from_config(model.get_config())
    clone.set_weights(model.get_weights())
    x = _example_input(model, np.random.default_rng(2), batch=1)
    np.testing.assert_allclose(clone(x), model(x), rtol=0, atol=1e-6)
    assert count_trainable(clone) == count_trainable(model)


def _run(code: str, **env) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **env}
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
        env=full_env, timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


@pytest.fixture(scope="module")
def saved_models(models, tmp_path_factory):
    """Every small model saved as .keras, with an input and the expected output beside it."""
    folder = tmp_path_factory.mktemp("saved")
    rng = np.random.default_rng(3)
    for name, model in models.items():
        x = _example_input(model, rng, batch=1)
        model.save(folder / f"{name}.keras")
        np.save(folder / f"{name}_x.npy", x)
        np.save(folder / f"{name}_y.npy", model.predict(x, verbose=0))
    return folder


_LOAD_AND_COMPARE = """
    import json, sys
    from pathlib import Path
    import numpy as np
    import keras
    import kercr  # registers kercr's custom objects; nothing else is passed to load_model
    folder = Path(sys.argv[1]) if len(sys.argv) > 1 else Path({folder!r})
    worst = {{}}
    for path in sorted(folder.glob("*.keras")):
        model = keras.saving.load_model(path, safe_mode=True)
        x = np.load(folder / (path.stem + "_x.npy"))
        y = np.load(folder / (path.stem + "_y.npy"))
        worst[path.stem] = float(np.max(np.abs(model.predict(x, verbose=0) - y)))
    print("RESULT" + json.dumps(worst))
"""


def _worst_differences(proc) -> dict:
    line = next(line for line in proc.stdout.splitlines() if line.startswith("RESULT"))
    return json.loads(line[len("RESULT"):])


def test_keras_files_load_after_import_kercr_alone_with_identical_outputs(saved_models):
    proc = _run(_LOAD_AND_COMPARE.format(folder=str(saved_models)))
    worst = _worst_differences(proc)
    assert set(worst) == set(SMALL_MODELS)
    assert max(worst.values()) == 0.0, worst


@pytest.mark.slow
def test_every_model_builds_and_runs_under_the_jax_backend(saved_models):
    pytest.importorskip("jax")
    code = """
        import keras, numpy as np
        import kercr
        assert keras.backend.backend() == "jax", keras.backend.backend()
        for name in {names!r}:
            model = kercr.build_model(name)
            h = model.input_shape[1] or 32
            y = model.predict(np.ones((1, h, h, 1), "float32"), verbose=0)  # one jit, not op by op
            assert y.shape == (1, h, h, 1) and y.dtype == np.float32, (name, y.shape, y.dtype)
            assert np.all((y >= 0) & (y <= 1)), name
        print("JAXOK")
    """.format(names=SMALL_MODELS)
    proc = _run(code, KERAS_BACKEND="jax")
    assert "JAXOK" in proc.stdout
    # The .keras files written under TensorFlow load under JAX and give the same outputs.
    worst = _worst_differences(_run(_LOAD_AND_COMPARE.format(folder=str(saved_models)), KERAS_BACKEND="jax"))
    assert set(worst) == set(SMALL_MODELS)
    assert max(worst.values()) < 1e-4, worst


@pytest.mark.slow
@pytest.mark.parametrize("name", ["deepcr", "unet", "cosmic_conn", "attention_unet", "transunet"])
def test_every_architecture_exports_to_a_tf_saved_model(models, name, tmp_path):
    import tensorflow as tf

    model = models[name]
    model.export(str(tmp_path / name), format="tf_saved_model", verbose=False)
    loaded = tf.saved_model.load(str(tmp_path / name))
    signature = loaded.signatures["serving_default"]
    spec = list(signature.structured_input_signature[1].values())[0]
    fixed = model.input_shape[1]
    if fixed is None:
        assert spec.shape.as_list() == [None, None, None, 1]
        shapes = [(1, 32, 48, 1), (2, 64, 16, 1)]
    else:
        assert spec.shape.as_list() == [None, fixed, fixed, 1]
        shapes = [(1, fixed, fixed, 1)]
    rng = np.random.default_rng(4)
    for shape in shapes:
        x = rng.normal(size=shape).astype("float32")
        served = np.asarray(loaded.serve(tf.constant(x)))
        np.testing.assert_allclose(served, np.asarray(model(x, training=False)), atol=1e-5)


@pytest.mark.parametrize("name", ["deepcr_2_4", "transunet"])
def test_logit_model_shares_weights_and_its_sigmoid_is_the_output(models, name):
    from kercr.models import logit_model

    model = models[name]
    x = _example_input(model, np.random.default_rng(5), batch=1) * 50
    logits = np.asarray(logit_model(model)(x), dtype=np.float64)
    np.testing.assert_allclose(1 / (1 + np.exp(-logits)), np.asarray(model(x)), atol=1e-6)
    assert model.get_layer(f"{name}_head_logits").dtype_policy.compute_dtype == "float32"
