"""kercr.model_files: where a model's files are, how they are read and written, and their errors."""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np
import pytest

from kercr.data.normalization import NormalizationConfig
from kercr.model_files import (
    ModelFileError,
    file_sha256,
    find_model_file,
    load_keras_model,
    model_normalization,
    read_card,
    read_json_object,
    read_normalization,
    resolve_model_path,
    write_json,
    write_normalization,
)
import kercr.weights
from kercr.weights import MissingWeightsError, default_model_path, has_default, is_shipped_name, shipped_names

#: Not the defaults, so a round trip that dropped a field would show.
OTHER = NormalizationConfig(clip_min=-4.0, clip_max=250.0, n_iter=2, sample_size=700, nan_fill=-1.5,
                            asinh_softening=10.0, noise_estimator="diff2", noise_model="local")


class OtherError(ValueError):
    """A caller's own error class (detection and export pass theirs)."""


# --------------------------------------------------------------------------------------------
# Which file
# --------------------------------------------------------------------------------------------
def test_resolve_model_path_takes_a_file_a_run_directory_or_default(tmp_path, monkeypatch):
    run = tmp_path / "run"
    run.mkdir()
    (run / "model.keras").write_bytes(b"m")
    assert resolve_model_path(run) == run / "model.keras"
    (run / "best.keras").write_bytes(b"b")
    assert resolve_model_path(run) == run / "best.keras"  # a kercr-train run's best model first
    assert resolve_model_path(str(run / "model.keras")) == run / "model.keras"
    monkeypatch.setenv("HOME", str(tmp_path))
    assert resolve_model_path("~/run") == run / "best.keras"
    if has_default():
        assert resolve_model_path("default") == default_model_path()
    else:
        with pytest.raises(MissingWeightsError, match="default.keras"):
            resolve_model_path("default")


def test_a_named_shipped_model_resolves_by_its_name_and_a_path_stays_a_path(tmp_path, monkeypatch):
    models = tmp_path / "weights" / "models"
    monkeypatch.setattr(kercr.weights, "MODELS_DIR", models)
    assert shipped_names() == ["default"] and not is_shipped_name("global")
    with pytest.raises(ModelFileError, match=r"model 'global' does not exist; pass a shipped model's name \(default\)"):
        resolve_model_path("global")
    (models / "global").mkdir(parents=True)
    (models / "global" / "model.keras").write_bytes(b"m")
    (models / "half").mkdir()  # a folder without model.keras is no shipped model
    assert shipped_names() == ["default", "global"] and is_shipped_name("global") and is_shipped_name("default")
    assert resolve_model_path("global") == models / "global" / "model.keras"
    monkeypatch.chdir(tmp_path)
    (tmp_path / "global").mkdir()
    (tmp_path / "global" / "best.keras").write_bytes(b"b")
    assert resolve_model_path("global") == models / "global" / "model.keras"  # the shipped name wins
    assert resolve_model_path("./global").resolve() == tmp_path / "global" / "best.keras"  # a path is a path
    assert not any(is_shipped_name(m) for m in ("./global", "x/global", "half", "", tmp_path / "global"))
    with pytest.raises(MissingWeightsError, match=r"no shipped kercr model is named 'half'.*installed ones are "
                                                  r"default, global"):
        kercr.weights.shipped_model_path("half")


def test_resolve_model_path_names_the_problem_and_the_fix(tmp_path):
    with pytest.raises(ModelFileError, match=r"model '.*nope.keras' does not exist; pass a shipped model's name "
                                             r"\(default.*\), a .keras file or a kercr-train run directory"):
        resolve_model_path(tmp_path / "nope.keras")
    (tmp_path / "empty").mkdir()
    with pytest.raises(OtherError, match="holds neither best.keras nor model.keras; pass a kercr-train run"):
        resolve_model_path(tmp_path / "empty", error=OtherError)
    (tmp_path / "model.h5").write_bytes(b"")
    with pytest.raises(ModelFileError, match=r"model.h5 is not a .keras file"):
        find_model_file(tmp_path / "model.h5")


# --------------------------------------------------------------------------------------------
# Hashes and JSON files
# --------------------------------------------------------------------------------------------
def test_file_sha256_is_hashlibs_over_several_blocks(tmp_path):
    data = np.random.default_rng(0).bytes((1 << 20) * 2 + 12345)  # three 1 MiB reads, the last short
    (tmp_path / "big.bin").write_bytes(data)
    (tmp_path / "empty.bin").write_bytes(b"")
    assert file_sha256(tmp_path / "big.bin") == hashlib.sha256(data).hexdigest()
    assert file_sha256(tmp_path / "empty.bin") == hashlib.sha256(b"").hexdigest()
    (tmp_path / "big.bin").write_bytes(data[:-1] + b"\0")
    assert file_sha256(tmp_path / "big.bin") != hashlib.sha256(data).hexdigest()


def test_write_json_replaces_the_file_and_leaves_no_temporary_file(tmp_path):
    path = tmp_path / "card.json"
    path.write_text('{"old": true}\n')
    assert write_json(path, {"threshold": 0.5, "tflite": {"a": [1, 2]}}) == path
    assert json.loads(path.read_text()) == {"threshold": 0.5, "tflite": {"a": [1, 2]}}
    assert path.read_text().endswith("}\n") and "\n  " in path.read_text()  # indented for diffs
    assert sorted(p.name for p in tmp_path.iterdir()) == ["card.json"]


def test_write_json_keeps_the_old_content_when_the_data_cannot_be_written(tmp_path):
    path = tmp_path / "card.json"
    path.write_text('{"old": true}\n')
    with pytest.raises(TypeError):
        write_json(path, {"bad": object()})  # not JSON-serializable
    assert path.read_text() == '{"old": true}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["card.json"]


def test_write_json_leaves_no_temporary_file_when_the_rename_fails(tmp_path):
    (tmp_path / "card.json").mkdir()  # a directory in the way: os.replace fails
    with pytest.raises(OSError):
        write_json(tmp_path / "card.json", {"threshold": 0.5})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["card.json"]


def test_read_json_object_errors_name_the_file_and_the_fix(tmp_path):
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(ModelFileError, match=r"the model card .*list.json holds a JSON list; it must hold an object"):
        read_json_object(tmp_path / "list.json", "model card")
    (tmp_path / "cut.json").write_text('{"threshold": ')
    with pytest.raises(OtherError, match=r"cannot read the model card .*cut.json: .*Fix or remove the file"):
        read_json_object(tmp_path / "cut.json", "model card", error=OtherError)
    with pytest.raises(ModelFileError, match=r"the model card .*none.json does not exist"):
        read_json_object(tmp_path / "none.json", "model card")


# --------------------------------------------------------------------------------------------
# normalization.json and the model card
# --------------------------------------------------------------------------------------------
def test_write_normalization_round_trips_through_the_reader(tmp_path):
    path = write_normalization(tmp_path, OTHER)
    assert path == tmp_path / "normalization.json"
    assert read_normalization(path) == OTHER and read_normalization(path) != NormalizationConfig()
    assert json.loads(path.read_text()) == OTHER.to_dict()


def test_a_bad_normalization_file_is_named_with_the_fix(tmp_path):
    path = tmp_path / "normalization.json"
    path.write_text(json.dumps({**OTHER.to_dict(), "colour": "red"}))
    with pytest.raises(ModelFileError, match=r"unknown normalization key\(s\) colour; valid keys: .*clip_max"):
        read_normalization(path)
    path.write_text(json.dumps({"noise_estimator": "std"}))
    with pytest.raises(ModelFileError, match=r"normalization.json: invalid normalization constants: .*'std'"):
        read_normalization(path)


def test_the_sidecar_wins_over_the_card_and_the_card_over_nothing(tmp_path):
    keras_file = tmp_path / "m.keras"
    card = {"threshold": 0.4, "normalization": OTHER.to_dict()}
    (tmp_path / "m.json").write_text(json.dumps(card))
    assert read_card(keras_file) == card and read_card(tmp_path / "other.keras") == {}
    assert model_normalization(keras_file, card) == (OTHER, "card")
    assert model_normalization(None, card) == (OTHER, "card")  # an in-memory model: the card only
    assert model_normalization(keras_file, {}) is None
    write_normalization(tmp_path, NormalizationConfig(clip_max=3.0))
    assert model_normalization(keras_file, card) == (NormalizationConfig(clip_max=3.0),
                                                     str(tmp_path / "normalization.json"))
    os.remove(tmp_path / "normalization.json")
    with pytest.raises(ModelFileError, match=r"\"normalization\" must be an object .*put a normalization.json"):
        model_normalization(keras_file, {"normalization": [1, 2]})


# --------------------------------------------------------------------------------------------
# Loading a .keras file
# --------------------------------------------------------------------------------------------
def test_load_keras_model_loads_kercr_custom_objects_in_safe_mode(tmp_path):
    import keras

    from kercr.losses import DiceBCELoss
    from kercr.metrics import DiceCoefficient
    from kercr.models.layers import PositionEmbedding

    inputs = keras.Input((4, 3))
    x = PositionEmbedding(4, name="position")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid", name="head")(x))
    model.compile(optimizer="adam", loss=DiceBCELoss(), weighted_metrics=[DiceCoefficient()])
    model.optimizer.build(model.trainable_variables)
    model.get_layer("position").embedding.assign(np.arange(12, dtype="float32").reshape(1, 4, 3) / 10)
    model.save(tmp_path / "tiny.keras")
    loaded = load_keras_model(tmp_path / "tiny.keras")
    assert isinstance(loaded.get_layer("position"), PositionEmbedding) and isinstance(loaded.loss, DiceBCELoss)
    x = np.random.default_rng(0).normal(size=(2, 4, 3)).astype("float32")
    np.testing.assert_array_equal(np.asarray(loaded(x)), np.asarray(model(x)))


def test_a_corrupt_keras_file_is_named_with_the_fix(tmp_path):
    (tmp_path / "cut.keras").write_bytes(b"PK\x03\x04 not a whole zip archive")
    with pytest.raises(OtherError, match=r"cannot load the Keras model .*cut.keras: .*complete .keras file saved by "
                                         "kercr"):
        load_keras_model(tmp_path / "cut.keras", error=OtherError)
