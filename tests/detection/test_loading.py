"""kercr.detection.loading: resolving a model argument, its card, threshold, normalization and geometry.

Models are tiny untrained ``deepcr_2_4`` networks saved like a training run (``.keras`` +
``normalization.json`` + card), from the ``save_model`` and ``tiny_detector`` fixtures.
"""

from __future__ import annotations

import json
import logging

import keras
import numpy as np
import pytest

import kercr
from kercr.data import NormalizationConfig
from kercr.detection import DetectionResult, ModelLoadError, detect, load_model
from kercr.detection.loading import FIXED_MODEL_OVERLAP, model_geometry
from kercr.model_files import file_sha256
from kercr.weights import MissingWeightsError, has_default


#: The geometry the card of a deepcr_2_4 gives (what model_geometry reads off its layers).
GEOMETRY = {"input_multiple": 2, "fixed_size": None, "rf_radius": 10, "local": True}


def test_the_geometry_is_read_off_the_layers_or_taken_from_the_card(tiny, tmp_path, save_model):
    loaded = load_model(tiny)
    assert model_geometry(loaded.model) == GEOMETRY
    assert (loaded.multiple, loaded.rf_radius, loaded.local, loaded.default_overlap) == (2, 10, True, 10)
    carded = save_model(tmp_path / "carded", "m", card={"threshold": 0.5, "geometry": {**GEOMETRY, "rf_radius": 13}})
    from_card = load_model(carded)
    assert (from_card.multiple, from_card.rf_radius, from_card.default_overlap) == (2, 13, 14)  # rounded up
    assert from_card._keras is None  # the card said it all: the Keras model is not loaded yet
    assert from_card.model.count_params() == loaded.model.count_params() and from_card._keras is not None
    bad = save_model(tmp_path / "bad", "m", card={"geometry": {"input_multiple": 2}})
    with pytest.raises(ModelLoadError, match=r"the card's \"geometry\" must hold input_multiple, fixed_size, "
                                             "rf_radius, local; fix it or remove it"):
        load_model(bad)


def test_a_fixed_input_model_overlaps_by_an_eighth_of_its_tile_at_most(tmp_path, save_model):
    for size, overlap in ((64, 8), (512, FIXED_MODEL_OVERLAP)):
        path = save_model(tmp_path / str(size), "m", card={
            "geometry": {"input_multiple": size, "fixed_size": size, "rf_radius": 0, "local": False}})
        assert load_model(path).default_overlap == overlap


def test_a_model_that_is_not_one_channel_in_is_refused():
    inputs = keras.Input((None, None, 2))
    two_channels = keras.Model(inputs, keras.layers.Conv2D(1, 3, padding="same", activation="sigmoid")(inputs))
    with pytest.raises(ModelLoadError, match=r"input shape \(None, None, None, 2\) is not \(batch, H, W, 1\)"):
        load_model(two_channels)
    with pytest.raises(ModelLoadError, match="model=123: pass 'default', a .keras file, a run directory or a keras.Model"):
        load_model(123)


@pytest.mark.parametrize("card, message", [
    ({"threshold": 1.5}, r"default threshold 1.5 \(card\) is not in \[0, 1\]"),
    ({"threshold": 0.5, "logit_threshold": "high"}, "the logit threshold beside the default threshold \\(card\\) is "
                                                   "not a finite number"),
    ({"threshold": None}, r"the card's \"threshold\" is None, not a number"),
    ({"threshold": "abc"}, r"the card's \"threshold\" is 'abc', not a number"),
    ({"tta": "no"}, r"the card's \"tta\" is 'no'; it must be true or false"),
    ({"geometry": {**GEOMETRY, "rf_radius": "x"}}, r"geometry \"rf_radius\" is 'x', not a whole number"),
    ({"geometry": {**GEOMETRY, "input_multiple": 0}}, r"geometry \"input_multiple\" is 0"),
    ({"geometry": {**GEOMETRY, "local": "yes"}}, r"geometry \"local\" is 'yes', not true or false"),
])
def test_a_bad_card_entry_is_named(tmp_path, save_model, card, message):
    with pytest.raises(ModelLoadError, match=message):
        load_model(save_model(tmp_path / "m", "m", card=card))


def test_a_changed_card_is_read_again(tmp_path, save_model):
    path = save_model(tmp_path / "m", "m", card={"threshold": 0.3})
    first = load_model(path)
    assert load_model(path) is first and first.threshold == 0.3
    (tmp_path / "m" / "m.json").write_text(json.dumps({"threshold": 0.8, "padding": "x" * 10}))
    assert load_model(path).threshold == 0.8


def test_prebuilt_tflite_files_count_only_when_they_are_there_and_made_from_this_model(tmp_path, save_model, caplog):
    path = save_model(tmp_path / "m", "m")
    (tmp_path / "m" / "m-int8.tflite").write_bytes(b"flatbuffer")
    entry = {"file": "m-int8.tflite", "source_sha256": file_sha256(path)}
    (tmp_path / "m" / "m.json").write_text(json.dumps({"tflite": {"tflite-int8": entry}}))
    assert load_model(path).prebuilt == {"tflite-int8": tmp_path / "m" / "m-int8.tflite"}
    card = {"tflite": {"tflite-int8": {**entry, "source_sha256": "0" * 64},
                       "tflite-float16": {"file": "m-float16.tflite", "source_sha256": file_sha256(path)}}}
    (tmp_path / "m" / "m.json").write_text(json.dumps(card))
    with caplog.at_level(logging.WARNING, logger="kercr"):
        assert load_model(path).prebuilt == {}
    assert "m-int8.tflite was made from another version of m.keras" in caplog.text
    assert "python -m kercr.weights.ship --prebuild" in caplog.text
    assert "m-float16.tflite, which is missing; the model is converted instead" in caplog.text
    caplog.clear()
    (tmp_path / "m" / "m.json").write_text(json.dumps({"tflite": {"tflite-int8": "m-int8.tflite"}}))
    with caplog.at_level(logging.WARNING, logger="kercr"):
        assert load_model(path).prebuilt == {}
    assert "tflite entry 'tflite-int8' is not a table" in caplog.text


def test_threshold_from_card_argument_or_run_metrics(tiny, frame, tmp_path, save_model):
    r = detect(frame.image_adu, model=tiny, runtime="keras")
    assert r.threshold == 0.55 and r.model_name == str(tiny.resolve())
    np.testing.assert_array_equal(r.mask, (r.probability >= 0.55) & ~r.ignored)
    assert detect(frame.image_adu, model=tiny, threshold=0.9, runtime="keras").threshold == 0.9
    run = tmp_path / "run"
    save_model(run, "best")
    (run / "metrics.json").write_text(json.dumps({"threshold_at_fpr_1e-4": 0.73}))
    r = detect(frame.image_adu, model=run, runtime="keras")  # a run directory means its best.keras
    assert r.threshold == 0.73 and r.model_name.endswith("best.keras")
    bare = save_model(tmp_path / "bare", "m")
    assert detect(frame.image_adu, model=bare, runtime="keras").threshold == 0.5


def test_a_run_whose_threshold_rounds_to_one_is_cut_on_its_logit_threshold(frame, tmp_path, caplog, save_model):
    # A confident model's threshold for 0.01 % FPR can lie above a logit of ~17, which float32
    # probabilities round to 1.0: its metrics.json then says threshold 1.0, and the mask must come
    # from the logit threshold beside it (before, it was cut at +inf and flagged nothing).
    run = tmp_path / "run"
    save_model(run, "best")
    p = detect(frame.image_adu, model=run, runtime="keras").probability.astype(np.float64)
    logit = np.log(p) - np.log1p(-p)
    cut = float(np.quantile(logit[~np.isinf(logit)], 0.9))
    (run / "metrics.json").write_text(json.dumps({"threshold_at_fpr_1e-4": 1.0, "logit_threshold_at_fpr_1e-4": cut}))
    # The metrics file appeared after the model was first loaded: the cache must see it.
    with caplog.at_level("WARNING", logger="kercr"):
        r = detect(frame.image_adu, model=run / "best.keras", runtime="keras")
    assert r.threshold == 1.0 and "round to 1" in caplog.text and "logit threshold" in caplog.text
    flagged = r.mask.sum()
    assert 0.05 < flagged / r.mask.size < 0.15  # about the 10 % of pixels above the cut
    assert detect(frame.image_adu, model=run / "best.keras", threshold=0.5, runtime="keras").threshold == 0.5
    bare = tmp_path / "bare"
    save_model(bare, "best")
    (bare / "metrics.json").write_text(json.dumps({"threshold_at_fpr_1e-4": 1.0}))
    caplog.clear()
    with caplog.at_level("WARNING", logger="kercr"):
        detect(frame.image_adu, model=bare, runtime="keras")
    assert "pass a threshold below 1" in caplog.text


def test_model_arguments(tiny, tmp_path, frame):
    assert load_model(tiny) is load_model(str(tiny))  # cached per resolved file
    with pytest.raises(ModelLoadError, match="registry architecture with random weights"):
        load_model("deepcr")
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model(tmp_path / "nope.keras")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="best.keras"):
        load_model(tmp_path / "empty")
    (tmp_path / "x.h5").write_bytes(b"")
    with pytest.raises(ModelLoadError, match="not a .keras file"):
        load_model(tmp_path / "x.h5")
    model = kercr.build_model("deepcr_2_4")
    r = detect(frame.image_adu, model=model, runtime="auto")
    assert isinstance(r, DetectionResult) and r.runtime == "keras" and r.threshold == 0.5
    if not has_default():
        with pytest.raises(MissingWeightsError, match="default.keras"):
            detect(frame.image_adu)


def test_normalization_sidecar_is_used(tmp_path, frame, caplog, save_model):
    plain = save_model(tmp_path / "a", "m")
    other = save_model(tmp_path / "b", "m", normalization=False)
    (tmp_path / "b" / "normalization.json").write_text(json.dumps(NormalizationConfig(clip_max=2.0).to_dict()))
    missing = save_model(tmp_path / "c", "m", normalization=False)
    p_plain = detect(frame.image_adu, model=plain, runtime="keras").probability
    p_other = detect(frame.image_adu, model=other, runtime="keras").probability
    assert np.abs(p_plain - p_other).max() > 1e-3
    with caplog.at_level(logging.WARNING, logger="kercr"):
        p_missing = detect(frame.image_adu, model=missing, runtime="keras").probability
    assert "normalization.json" in caplog.text
    np.testing.assert_allclose(p_missing, p_plain, atol=1e-6)  # the default config == the saved default


def test_detection_and_export_read_the_same_normalization(tmp_path, save_model):
    """Sidecar first, then the card's "normalization", then the default: in detect and export alike."""
    from kercr.export import ExportError, load_model_source

    card_norm = NormalizationConfig(clip_max=2.0)
    in_card = save_model(tmp_path / "card", "m", normalization=False,
                          card={"threshold": 0.5, "normalization": card_norm.to_dict()})
    both = save_model(tmp_path / "both", "m", card={"normalization": card_norm.to_dict()})
    neither = save_model(tmp_path / "neither", "m", normalization=False)
    expected = {in_card: (card_norm, "card"),
                both: (NormalizationConfig(), str(tmp_path / "both" / "normalization.json")),
                neither: (NormalizationConfig(), "default")}
    for path, (norm, source) in expected.items():
        loaded, exported = load_model(path), load_model_source(path)
        assert loaded.normalization == exported.normalization == norm, path
        assert loaded.normalization_source == source and exported.normalization_source == source, path
    bad = save_model(tmp_path / "bad", "m", normalization=False, card={"normalization": [1, 2]})
    with pytest.raises(ModelLoadError, match="must be an object"):
        load_model(bad)
    with pytest.raises(ExportError, match="must be an object"):
        load_model_source(bad)


def test_image_wide_layers_are_reported(tmp_path):
    keras.utils.set_random_seed(0)
    assert load_model(kercr.build_model("deepcr_2_4")).local
    assert not load_model(kercr.build_model("cosmic_conn", filters=(8, 16), groups=4)).local


def test_models_nested_in_a_wrapper_or_an_ensemble_are_tiled_like_their_parts(frame):
    """detect() reads the input multiple, receptive field and image-wide layers through nested models
    (it used to see multiple 1 and radius 0 there, and crashed on frames of odd size)."""
    keras.utils.set_random_seed(0)
    inner = kercr.build_model("deepcr_2_4")
    x = keras.Input((None, None, 1))
    wrapper = keras.Model(x, inner(x), name="wrapper")
    plain, wrapped = load_model(inner), load_model(wrapper)
    assert (wrapped.multiple, wrapped.rf_radius, wrapped.local) == (plain.multiple, plain.rf_radius, True)
    image = frame.image_adu[:, :301]  # odd width: the multiple must be honoured
    expected = detect(image, model=inner, tile=64, runtime="keras").probability
    np.testing.assert_allclose(detect(image, model=wrapper, tile=64, runtime="keras").probability, expected,
                               atol=1e-6, rtol=0)
    # An ensemble of two networks averaging their logits, one of them with image-wide GroupNorm.
    other = kercr.build_model("cosmic_conn", filters=(8, 16), groups=4)
    logits = [keras.Model(m.input, m.layers[-2].output, name=f"{m.name}_part")(x) for m in (inner, other)]
    ensemble = keras.Model(x, keras.layers.Activation("sigmoid")(keras.layers.Average(name="mean_logits")(logits)))
    loaded = load_model(ensemble)
    assert loaded.multiple >= max(plain.multiple, load_model(other).multiple)
    assert loaded.rf_radius >= max(plain.rf_radius, load_model(other).rf_radius) and not loaded.local
    r = detect(image, model=ensemble, runtime="keras")
    assert r.probability.shape == image.shape and np.isfinite(r.probability).all()



def test_a_mistyped_name_on_an_install_without_keras_is_a_load_error(monkeypatch):
    """The registry hint imports Keras; without it (the LiteRT-only install) the error was a raw
    ModuleNotFoundError about keras instead of the model's."""
    import sys

    from kercr.detection import ModelLoadError, load_model

    monkeypatch.setitem(sys.modules, "kercr.models", None)  # `from kercr.models import ...` raises ImportError
    with pytest.raises(ModelLoadError, match="'globl' does not exist"):
        load_model("globl")


def test_load_model_and_detection_result_are_top_level_names():
    import kercr
    from kercr.detection import DetectionResult, load_model

    assert kercr.load_model is load_model and kercr.DetectionResult is DetectionResult
