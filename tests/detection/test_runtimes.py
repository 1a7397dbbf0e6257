"""kercr.detection.runtimes: Keras or LiteRT, the TFLite file (prebuilt, cached or converted) and the flips."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from kercr.config import RUNTIMES
from kercr.data import NormalizationConfig
from kercr.detection import LoadedModel, detect, load_model, resolve_runtime, resolve_tta
from kercr.detection.runtimes import _as_logits

SHAPE = (300, 500)  # the detection_frame fixture's


def _carded(card):
    """A :class:`LoadedModel` with this card and no network (choosing a runtime needs none)."""
    return LoadedModel(None, name="test-model", path=None, normalization=NormalizationConfig(),
                       normalization_source="default", threshold=0.5, threshold_source="card", card=card,
                       multiple=2, fixed_size=None, rf_radius=10, local=True)


def test_auto_is_the_cards_runtime_else_keras_and_others_are_named():
    assert resolve_runtime("auto", _carded({})) == "keras"
    assert resolve_runtime("auto", _carded({"runtime": "tflite-float16"})) == "tflite-float16"
    assert resolve_runtime("auto", _carded({"runtime": "auto"})) == "keras"
    assert resolve_runtime("auto", _carded({"runtime": "onnx"})) == "keras"  # not one of kercr's: ignored
    assert resolve_runtime("tflite-dynamic", _carded({"runtime": "keras"})) == "tflite-dynamic"  # asked for: wins
    with pytest.raises(ValueError, match=f"runtime='onnx'; choose one of: {', '.join(RUNTIMES)}"):
        resolve_runtime("onnx", _carded({}))


def test_without_tensorflow_only_prebuilt_runtimes_are_offered_by_name(monkeypatch):
    """A detection-only install: runtime='keras' or a TFLite variant with no prebuilt file needs TensorFlow;
    it used to end in a raw ModuleNotFoundError."""
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorflow" else find_spec(name, *a))
    loaded = LoadedModel(None, name="test-model", path=None, normalization=NormalizationConfig(),
                         normalization_source="default", threshold=0.5, threshold_source="card", card={}, multiple=2,
                         fixed_size=None, rf_radius=10, local=True, prebuilt={"tflite-int8": "model-int8.tflite"})
    assert resolve_runtime("tflite-int8", loaded) == "tflite-int8"
    for runtime, why in (("keras", "Keras"), ("tflite-float32", "to convert the model to TFLite")):
        with pytest.raises(ValueError, match=rf"needs TensorFlow \({why}\).*prebuilt runtimes: tflite-int8"):
            resolve_runtime(runtime, loaded)


def test_tta_is_the_cards_choice_unless_given():
    assert resolve_tta(None, _carded({"tta": True})) is True and resolve_tta(None, _carded({})) is False
    assert resolve_tta(False, _carded({"tta": True})) is False and resolve_tta(np.bool_(True), _carded({})) is True
    with pytest.raises(ValueError, match=r"tta=1; pass True, False or None \(None: the model card's choice\)"):
        resolve_tta(1, _carded({}))


def test_probabilities_become_logits_clipped_at_the_floor():
    logits = _as_logits(lambda x: x, 1.0 / 512)(np.array([0.0, 0.5, 1.0, 0.25], np.float32))
    assert logits.dtype == np.float32
    np.testing.assert_allclose(logits, [-np.log(511.0), 0.0, np.log(511.0), -np.log(3.0)], rtol=1e-6)


def test_a_cache_that_cannot_be_written_converts_in_memory_and_says_so(tiny, frame, tmp_path, monkeypatch, caplog):
    pytest.importorskip("ai_edge_litert")
    (tmp_path / "not-a-dir").write_text("a file where the cache folder would go")
    monkeypatch.setenv("KERCR_CACHE_DIR", str(tmp_path / "not-a-dir"))
    ref = detect(frame.image_adu, model=tiny, runtime="keras", tile=256)
    with caplog.at_level(logging.WARNING, logger="kercr"):
        lite = detect(frame.image_adu, model=tiny, runtime="tflite-float32", tile=256, num_threads=1)
    assert "cannot cache the TFLite model" in caplog.text and "set KERCR_CACHE_DIR to a writable" in caplog.text
    np.testing.assert_allclose(lite.probability, ref.probability, atol=1e-4, rtol=0)


def test_a_card_runtime_without_litert_falls_back_to_keras_and_says_so(tmp_path, monkeypatch, caplog, save_model):
    import kercr.detection.runtimes as inference

    path = save_model(tmp_path / "m", card={"threshold": 0.5, "runtime": "tflite-int8"})
    loaded = load_model(path)
    assert inference.resolve_runtime("auto", loaded) == "tflite-int8"  # LiteRT is a dependency on Linux
    monkeypatch.setattr(inference, "litert_available", lambda: False)
    monkeypatch.setattr(inference, "_warned_no_litert", [])
    with caplog.at_level("WARNING", logger="kercr"):
        assert inference.resolve_runtime("auto", loaded) == "keras"
        assert inference.resolve_runtime("auto", loaded) == "keras"
    assert caplog.text.count("LiteRT interpreter is not installed") == 1 and "pip install ai-edge-litert" in caplog.text
    with pytest.raises(ValueError, match="needs the LiteRT interpreter"):
        inference.resolve_runtime("tflite-int8", loaded)


def test_tflite_runtimes_match_keras_and_cache(tiny, frame, tmp_path, monkeypatch, save_model):
    pytest.importorskip("ai_edge_litert")
    monkeypatch.setenv("KERCR_CACHE_DIR", str(tmp_path / "cache"))
    ref = detect(frame.image_adu, model=tiny, runtime="keras", tile=256)
    assert detect(frame.image_adu, model=tiny, runtime="auto").runtime == "keras"  # no runtime in the card
    auto = detect(frame.image_adu, model=tiny, runtime="tflite-float32", tile=256, num_threads=1)
    np.testing.assert_allclose(auto.probability, ref.probability, atol=1e-4, rtol=0)
    cached = sorted((tmp_path / "cache" / "tflite").glob("*.tflite"))
    assert len(cached) == 1 and "float32" in cached[0].name
    before = cached[0].stat().st_mtime_ns
    detect(frame.image_adu, model=tiny, runtime="tflite-float32", tile=128, num_threads=1)
    assert cached[0].stat().st_mtime_ns == before  # reused, not converted again
    int8 = detect(frame.image_adu, model=tiny, runtime="tflite-int8", tile=256, num_threads=1)
    assert int8.probability.shape == SHAPE and 0 <= int8.probability.min() and int8.probability.max() <= 1
    assert np.abs(int8.probability - ref.probability).mean() < 0.05
    assert len(list((tmp_path / "cache" / "tflite").glob("*int8.tflite"))) == 1
    # runtime="auto" follows the model card's validated runtime.
    carded = save_model(tmp_path / "carded", card={"threshold": 0.5, "runtime": "tflite-int8"})
    assert detect(frame.image_adu, model=carded, num_threads=1).runtime == "tflite-int8"


def test_default_batch_per_runtime_and_two_interpreters_give_one_interpreters_mask(tiny, frame, tmp_path,
                                                                                monkeypatch):
    pytest.importorskip("ai_edge_litert")
    import kercr.detection.detector as inference

    monkeypatch.setenv("KERCR_CACHE_DIR", str(tmp_path / "cache"))
    batches = []
    tiled = inference.predict_tiled
    monkeypatch.setattr(inference, "predict_tiled", lambda *a, **kw: batches.append(kw["batch_size"]) or tiled(*a, **kw))
    detect(frame.image_adu, model=tiny, runtime="keras", tile=128)
    one = detect(frame.image_adu, model=tiny, runtime="tflite-int8", tile=128, num_threads=1)
    two = detect(frame.image_adu, model=tiny, runtime="tflite-int8", tile=128, num_threads=2)
    assert batches == [1, 4, 4] and one.n_tiles > 4  # Keras one tile per call, TFLite four
    np.testing.assert_array_equal(two.probability, one.probability)  # each tile through one interpreter
    np.testing.assert_array_equal(two.mask, one.mask)
    detect(frame.image_adu, model=tiny, runtime="keras", tile=128, batch_size=3)
    assert batches[-1] == 3
    with pytest.raises(ValueError, match="batch_size=0"):
        detect(frame.image_adu, model=tiny, batch_size=0)


def test_flips_follow_the_model_card_unless_told(tmp_path, frame, save_model):
    flips = save_model(tmp_path / "flips", card={"threshold": 0.5, "tta": True})
    assert detect(frame.image_adu, model=flips).tta
    assert not detect(frame.image_adu, model=flips, tta=False).tta
    assert not detect(frame.image_adu, model=save_model(tmp_path / "plain", card={"threshold": 0.5})).tta
    with pytest.raises(ValueError, match="tta="):
        detect(frame.image_adu, model=flips, tta="yes")


def test_flips_with_tflite_average_logits_like_keras(tiny, frame, tmp_path, monkeypatch):
    pytest.importorskip("ai_edge_litert")
    monkeypatch.setenv("KERCR_CACHE_DIR", str(tmp_path / "cache"))
    ref = detect(frame.image_adu, model=tiny, runtime="keras", tile=256, tta=True)
    lite = detect(frame.image_adu, model=tiny, runtime="tflite-float32", tile=256, tta=True, num_threads=1)
    assert lite.tta
    np.testing.assert_allclose(lite.probability, ref.probability, atol=1e-4, rtol=0)

