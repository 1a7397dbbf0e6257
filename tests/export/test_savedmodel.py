"""kercr.export.savedmodel: the TF Serving SavedModel (raw pixels in, normalized inside) and REST bodies.

One SavedModel of a tiny untrained ``deepcr_2_4`` is written per module with non-default
normalization constants, so the tests see that those constants (not the defaults) reach the graph.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

import keras  # noqa: E402

import kercr  # noqa: E402
from kercr.data.normalization import NormalizationConfig, normalize  # noqa: E402
from kercr.export.savedmodel import (  # noqa: E402
    NORMALIZED_SIGNATURE_KEY,
    rest_body_to_kwargs,
    rest_response,
    write_savedmodel,
)
from tests.export._shared import SIDECAR, TILE, keras_reference, raw_tile  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """``(model, path)``: a tiny model and its SavedModel (multiple 2, the SIDECAR constants)."""
    keras.utils.set_random_seed(0)
    model = kercr.build_model("deepcr_2_4")
    path = tmp_path_factory.mktemp("savedmodel") / "1"
    write_savedmodel(model, path, config=SIDECAR, multiple=2)
    return model, path


@pytest.fixture(scope="module")
def serving(written):
    return tf.saved_model.load(str(written[1])).signatures["serving_default"]


def test_the_normalized_signature_is_the_bare_network(written):
    model, path = written
    bare = tf.saved_model.load(str(path)).signatures[NORMALIZED_SIGNATURE_KEY]
    assert list(bare.structured_input_signature[1]) == ["normalized_image"]
    normalized, _ = normalize(raw_tile(seed=9, shape=(TILE, 2 * TILE)), config=SIDECAR)
    got = bare(normalized_image=tf.constant(normalized[None, :, :, None]))["cr_probability"].numpy()
    np.testing.assert_allclose(got, np.asarray(model(normalized[None, :, :, None], training=False)), atol=1e-6)
    with pytest.raises(tf.errors.InvalidArgumentError, match="multiples of 2"):
        bare(normalized_image=tf.constant(normalized[None, :TILE - 1, :, None]))


def test_signature_names_shapes_dtypes(serving):
    args, kwargs = serving.structured_input_signature
    assert args == ()
    assert list(kwargs) == ["image"]
    assert kwargs["image"].dtype == tf.float32
    assert kwargs["image"].shape.as_list() == [None, None, None, 1]
    assert list(serving.structured_outputs) == ["cr_probability"]
    assert serving.structured_outputs["cr_probability"].dtype == tf.float32


def test_served_raw_pixels_equal_normalize_plus_keras(written, serving):
    model, _ = written
    a = raw_tile(seed=3, shape=(TILE, 2 * TILE))  # dynamic H, W: not the export tile
    b = raw_tile(seed=4, shape=(TILE, 2 * TILE)) + np.float32(750.0)  # another sky level in the same batch
    a[10, 17] = np.nan
    batch = np.stack([a, b])[..., None]
    served = serving(image=tf.constant(batch))["cr_probability"].numpy()
    assert served.shape == (2, TILE, 2 * TILE, 1) and served.dtype == np.float32
    for i, image in enumerate((a, b)):
        expected = keras_reference(model, image)
        np.testing.assert_allclose(served[i, :, :, 0], expected, rtol=0, atol=1e-5)
    assert np.all(np.isfinite(served))
    # The comparison can fail: the default constants or no normalization give other answers.
    unnormalized = np.asarray(model(np.nan_to_num(batch[:1]), training=False))[0, :, :, 0]
    assert np.abs(unnormalized - served[0, :, :, 0]).max() > 1e-3
    default = keras_reference(model, a, NormalizationConfig())
    assert np.abs(default - served[0, :, :, 0]).max() > 1e-5


def test_served_graph_errors(serving):
    with pytest.raises(tf.errors.InvalidArgumentError, match="constant"):
        serving(image=tf.constant(np.full((1, TILE, TILE, 1), 7.0, np.float32)))
    with pytest.raises(tf.errors.InvalidArgumentError, match="all NaN"):
        serving(image=tf.constant(np.full((1, TILE, TILE, 1), np.nan, np.float32)))
    with pytest.raises(tf.errors.InvalidArgumentError, match="multiples of 2"):
        serving(image=tf.constant(raw_tile(shape=(TILE - 1, TILE))[None, :, :, None]))


def test_rest_bodies_row_and_columnar(written, serving):
    model, _ = written
    a, b = raw_tile(seed=5), raw_tile(seed=6) + np.float32(100.0)
    a[0, 0] = np.nan
    direct = serving(image=tf.constant(np.stack([a, b])[..., None]))["cr_probability"].numpy()
    bodies = {
        "row": json.dumps({"signature_name": "serving_default", "instances": [a[..., None].tolist(), b[..., None].tolist()]}),
        "row_named": json.dumps({"instances": [{"image": a[..., None].tolist()}, {"image": b[..., None].tolist()}]}),
        "columnar": json.dumps({"inputs": {"image": np.stack([a, b])[..., None].tolist()}}),
        "columnar_bare": json.dumps({"inputs": np.stack([a, b])[..., None].tolist()}),
    }
    assert "NaN" in bodies["row"]  # JSON NaN travels as a NaN pixel
    for kind, body in bodies.items():
        kwargs = rest_body_to_kwargs(body, serving)
        assert list(kwargs) == ["image"] and kwargs["image"].shape == (2, TILE, TILE, 1), kind
        outputs = serving(**kwargs)
        np.testing.assert_array_equal(outputs["cr_probability"].numpy(), direct, err_msg=kind)
    response = rest_response(outputs, row_format=True)
    assert np.asarray(response["predictions"]).shape == (2, TILE, TILE, 1)
    assert np.asarray(rest_response(outputs, row_format=False)["outputs"]).shape == (2, TILE, TILE, 1)
    np.testing.assert_allclose(np.asarray(response["predictions"][0])[..., 0], keras_reference(model, a), atol=1e-5)


def test_the_serving_request_in_the_export_readme_is_accepted(serving):
    # export/README.md's request-building snippet, run as written: its body must parse as one tile.
    import contextlib
    import io
    import re

    text = (REPO / "export" / "README.md").read_text()
    snippet = re.search(r"python - <<'PY' > request.json\n(.*?)\nPY\n", text, re.S).group(1)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(snippet, {})
    kwargs = rest_body_to_kwargs(out.getvalue(), serving)
    assert kwargs["image"].shape == (1, 256, 256, 1)


@pytest.mark.parametrize("body, message", [
    ({"instances": [[1.0]], "inputs": [[1.0]]}, "exactly one"),
    ({"instances": [{"img": [[[1.0]]]}]}, "do not match"),
    ({"instances": [[[[1.0]], [[1.0], [2.0]]]]}, "convert"),
    ({"inputs": {"image": [[1.0, 2.0]]}}, "shape"),
    ([1, 2], "JSON object"),
])
def test_rest_body_errors(serving, body, message):
    with pytest.raises(ValueError, match=message):
        rest_body_to_kwargs(body, serving)


def test_saved_model_cli_show(written):
    _, path = written
    cli = Path(sys.executable).with_name("saved_model_cli")
    if not cli.exists():
        pytest.skip("saved_model_cli is not installed beside this Python")
    shown = subprocess.run([str(cli), "show", "--dir", str(path), "--all"], capture_output=True, text=True,
                           check=True, timeout=120).stdout
    block = shown.split("signature_def['serving_default']:")[1].split("signature_def[")[0]
    assert "inputs['image'] tensor_info:" in block
    assert "outputs['cr_probability'] tensor_info:" in block
    assert block.count("dtype: DT_FLOAT") == 2
    assert block.count("shape: (-1, -1, -1, 1)") == 2
    assert "Method name is: tensorflow/serving/predict" in block

