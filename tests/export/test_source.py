"""kercr.export.source: which model kercr-export exports, with which normalization constants.

What detection and export both read (sidecar, then card, then the default) is tested for both at
once in tests/detection/test_loading.py.
"""

from __future__ import annotations

import json
import logging

import keras
import pytest

from kercr.data import NormalizationConfig
from kercr.detection import load_model
from kercr.export import ExportError, load_model_source
from kercr.models import count_trainable


def test_a_registry_name_is_an_untrained_model_built_with_the_options(caplog):
    with caplog.at_level(logging.WARNING, logger="kercr"):
        source = load_model_source("deepcr_2_4", overrides={"filters": (2, 4)})
    assert (source.description, source.trained, source.tta) == ("registry:deepcr_2_4", False, False)
    assert (source.normalization, source.normalization_source) == (NormalizationConfig(), "default")
    assert count_trainable(source.model) != 1_709  # deepcr_2_4's own (4, 8) would give 1,709
    assert "exporting the UNTRAINED registry model 'deepcr_2_4'" in caplog.text


def test_a_saved_model_takes_its_sidecar_or_the_normalization_file_given(tmp_path, save_model):
    path = save_model(tmp_path / "run", "best", card={"tta": True})
    source = load_model_source(tmp_path / "run")
    assert source.description == str(path) and source.trained and source.tta
    assert source.normalization_source == str(tmp_path / "run" / "normalization.json")
    other = tmp_path / "other.json"
    other.write_text(json.dumps(NormalizationConfig(asinh_softening=10.0).to_dict()))
    given = load_model_source(path, normalization=other)
    assert (given.normalization, given.normalization_source) == (NormalizationConfig(asinh_softening=10.0), str(other))
    save_model(tmp_path / "bad", "best", card={"tta": "false"})  # a string is not a choice: refused, as detection does
    with pytest.raises(ExportError, match=r"the card's \"tta\" is 'false'; it must be true or false"):
        load_model_source(tmp_path / "bad")


@pytest.mark.parametrize("source, options, message", [
    ("transunett", {}, r"'transunett' is neither an existing file or directory nor a registry name; registry names: "
                       r".*transunet"),
    ("runs/x/best.keras", {}, "model file runs/x/best.keras does not exist; pass an existing .keras file"),
    ("deepcr_2_4", {"heads": 3}, "heads"),
])
def test_a_bad_source_is_named_with_the_fix(source, options, message):
    with pytest.raises(ExportError, match=message):
        load_model_source(source, overrides=options)


def test_builder_options_and_other_shapes_are_refused_for_a_saved_model(tmp_path, save_model):
    path = save_model(tmp_path / "run", "best")
    with pytest.raises(ExportError, match=r"builder options \['filters'\] only apply to a registry name, not to the "
                                          "saved model"):
        load_model_source(path, overrides={"filters": (2, 4)})
    inputs = keras.Input((None, None, 3))
    keras.Model(inputs, keras.layers.Conv2D(1, 1)(inputs)).save(tmp_path / "rgb.keras")
    with pytest.raises(ExportError, match=r"rgb.keras: input shape \(None, None, None, 3\) is not \(batch, H, W, 1\)"):
        load_model_source(tmp_path / "rgb.keras")


def test_export_takes_default_as_detect_does(tmp_path, monkeypatch, save_model):
    import kercr.weights

    shipped = save_model(tmp_path / "weights", "default", card={"threshold": 0.4, "tta": True},
                          normalization=False)
    (tmp_path / "weights" / "normalization.json").write_text(json.dumps(NormalizationConfig(clip_max=3.0).to_dict()))
    monkeypatch.setattr(kercr.weights, "WEIGHTS_DIR", tmp_path / "weights")
    source = load_model_source("default")
    assert source.description == str(shipped) and source.tta is True
    assert source.normalization == load_model("default").normalization == NormalizationConfig(clip_max=3.0)
    monkeypatch.setattr(kercr.weights, "WEIGHTS_DIR", tmp_path / "none")
    with pytest.raises(ExportError, match="default.keras"):
        load_model_source("default")

