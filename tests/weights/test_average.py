"""kercr.weights.average: the weight average of finished runs, as a run directory ship.py accepts."""

from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import pytest

from kercr.config import resolve_config


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """Two tiny finished runs of one architecture (deepCR's 2-level, 4-channel net), other seeds."""
    from kercr.training import train

    root = tmp_path_factory.mktemp("runs")
    runs = []
    for seed in (0, 1):
        config = resolve_config({}, dict(model="deepcr_2_4", patch_size=64, batch_size=4, frames=4,
                                         frame_shape=[256, 256], cr_rate_scale=50.0, steps_per_epoch=3,
                                         validation_steps=2, epochs=1, seed=seed, out=str(root / f"run{seed}")))
        train(config, verbose=0)
        runs.append(root / f"run{seed}")
    return runs


def _weights(path):
    import keras

    import kercr  # noqa: F401

    return keras.saving.load_model(path, compile=False).get_weights()


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_average_is_the_mean_of_every_weight_and_a_run_ship_accepts(two_runs, tmp_path):
    import keras

    from kercr.config import TrainConfig
    from kercr.evaluation import validation_metrics
    from kercr.training import make_training_data
    from kercr.weights.average import average_runs
    from kercr.weights.ship import make_card

    a, b = two_runs
    before = [_digest(r / "best.keras") for r in two_runs]
    out = tmp_path / "soup"
    path = average_runs([a, b], out)
    assert path == out / "best.keras"
    wa, wb, mean = _weights(a / "best.keras"), _weights(b / "best.keras"), _weights(path)
    assert len(mean) == len(wa) and any(not np.allclose(x, y) for x, y in zip(wa, wb))
    for x, y, m in zip(wa, wb, mean):  # BatchNorm's moving statistics are among them
        np.testing.assert_allclose(m, (x.astype(np.float64) + y) / 2, rtol=0, atol=1e-6)
    assert json.loads((out / "config.json").read_text()) == json.loads((a / "config.json").read_text())
    assert (out / "normalization.json").read_text() == (a / "normalization.json").read_text()
    # metrics.json: the averaged model scored on the first run's validation patches (not the first
    # run's own numbers, nor the second run's patches).
    metrics = json.loads((out / "metrics.json").read_text())
    config = TrainConfig.load(a / "config.json")
    averaged = keras.saving.load_model(path, compile=False)
    expected = validation_metrics(averaged, make_training_data(config).validation_batches(config.validation_steps))
    assert metrics["threshold_at_fpr_1e-4"] == pytest.approx(expected["threshold_at_fpr_1e-4"], abs=1e-12)
    assert metrics["dice"] == pytest.approx(expected["dice"], abs=1e-12)
    assert metrics["threshold_at_fpr_1e-4"] != json.loads((a / "metrics.json").read_text())["threshold_at_fpr_1e-4"]
    assert (metrics["model"], metrics["epochs"], metrics["data"]) == ("deepcr_2_4", 1, "synthetic")
    assert json.loads((out / "average.json").read_text())["runs"] == [str(a), str(b)]
    card = make_card(out, command="python -m kercr.weights.average run0 run1 --out soup")
    assert card["threshold"] == metrics["threshold_at_fpr_1e-4"] and card["params"] > 0
    assert card["trained_on"].endswith(f"weights: the mean of {a} and {b} (kercr.weights.average)")
    assert [_digest(r / "best.keras") for r in two_runs] == before  # the inputs are untouched


def test_weights_choose_the_mix(two_runs, tmp_path):
    from kercr.weights.average import average_runs

    a, b = two_runs
    for x, y in zip(_weights(average_runs([a, b], tmp_path / "a", weights=[3, 0])), _weights(a / "best.keras")):
        np.testing.assert_allclose(x, y, rtol=0, atol=1e-7)
    wa, wb = _weights(a / "best.keras"), _weights(b / "best.keras")
    for m, x, y in zip(_weights(average_runs([a, b], tmp_path / "q", weights=[1, 3])), wa, wb):
        np.testing.assert_allclose(m, 0.25 * x.astype(np.float64) + 0.75 * y, rtol=0, atol=1e-6)


def test_bad_averages_are_refused_with_the_fix(two_runs, tmp_path, capsys):
    from kercr.models import build_model
    from kercr.weights.average import average_runs, main

    a, b = two_runs
    with pytest.raises(ValueError, match="at least two"):
        average_runs([a], tmp_path / "one")
    with pytest.raises(ValueError, match="one non-negative number per run"):
        average_runs([a, b], tmp_path / "w", weights=[1, -1])
    other = tmp_path / "other"
    shutil.copytree(b, other)
    build_model("deepcr_2_32").save(other / "best.keras")
    with pytest.raises(ValueError, match="different architectures"):
        average_runs([a, other], tmp_path / "arch")
    renormed = tmp_path / "renormed"
    shutil.copytree(b, renormed)
    norm = json.loads((renormed / "normalization.json").read_text())
    norm["asinh_softening"] = 7.0
    (renormed / "normalization.json").write_text(json.dumps(norm))
    with pytest.raises(ValueError, match="normalizations"):
        average_runs([a, renormed], tmp_path / "norm")
    (tmp_path / "taken").mkdir()
    with pytest.raises(FileExistsError, match="new --out"):
        average_runs([a, b], tmp_path / "taken")
    assert main([str(a), str(tmp_path / "missing"), "--out", str(tmp_path / "x")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("python -m kercr.weights.average: error: ") and err.count("\n") == 1
    assert "missing: missing best.keras, config.json, normalization.json; pass finished kercr-train run" in err
    assert not (tmp_path / "x").exists()
    truncated = tmp_path / "truncated"
    shutil.copytree(b, truncated)
    (truncated / "best.keras").write_bytes((b / "best.keras").read_bytes()[:1000])
    with pytest.raises(ValueError, match=r"cannot load the Keras model .*truncated/best\.keras"):
        average_runs([a, truncated], tmp_path / "trunc")
    assert not any((tmp_path / n).exists() for n in ("one", "w", "arch", "norm", "trunc"))
    assert not list(tmp_path.glob(".*partial*"))  # the staging folders went too
