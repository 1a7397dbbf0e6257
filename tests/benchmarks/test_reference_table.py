"""benchmarks/reference_table.py at its smoke-test scale: the table, its caching and its errors.

The numbers at ``--scale tiny`` mean nothing (one epoch of two steps); these tests check that the
script trains a row with the recipe, evaluates it on every test set (the frame-class sets included),
writes every output, reuses a finished row on a second call (and one cached before the frame-class
sets existed, scoring only those), and refuses an unknown row by name.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "reference_table.py"
ROW = "TransUNet 6/6/64"


@pytest.fixture(scope="module")
def reference_table():
    spec = importlib.util.spec_from_file_location("reference_table", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["reference_table"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("reference_table", None)


def test_tiny_table_trains_evaluates_caches_and_writes_every_output(reference_table, tmp_path, capsys):
    pytest.importorskip("astroscrappy")
    args = ["--scale", "tiny", "--out", str(tmp_path), "--rows", ROW, "--test-frames", "1", "--verbose", "0"]
    assert reference_table.main([*args, "--extra-model", "none"]) == 0
    first = capsys.readouterr().out
    assert "cached test metrics" not in first

    with (tmp_path / "table.csv").open() as f:
        rows = list(csv.DictReader(f))
    sets = ({"synthetic", "real footprints", "footprints only"} if reference_table.FOOTPRINTS.resolve().is_file()
            else {"synthetic"}) | {"dominant", "integer"}
    assert {(r["model"], r["test set"]) for r in rows} == {(m, s) for m in (ROW, "astroscrappy (L.A.Cosmic, defaults)")
                                                           for s in sets}
    net = next(r for r in rows if r["model"] == ROW and r["test set"] == "synthetic")
    assert net["scale"] == "tiny" and net["ref test Dice"] == "0.9689"  # the reference value beside it
    # Every frame class is scored, each row shows its own set's measured numbers (those cached beside
    # the run), and TPR rises with the false-positive rate allowed.
    measured = json.loads((tmp_path / "runs" / "transunet_6_6_64" / "reference_test.json").read_text())["test"]
    keys = {"test Dice": "dice", "test TPR@0.01%": "tpr_at_fpr_1e-4", "test TPR@0.1%": "tpr_at_fpr_1e-3",
            "precision@95% recall": "precision_at_recall_0.95"}
    for set_name in ("synthetic", "dominant", "integer"):
        net_set = next(r for r in rows if r["model"] == ROW and r["test set"] == set_name)
        assert {c: net_set[c] for c in keys} == {c: f"{measured[set_name][k]:.4f}" for c, k in keys.items()}, set_name
        assert float(net_set["test TPR@0.1%"]) >= float(net_set["test TPR@0.01%"]), set_name
    assert len({json.dumps(measured[n], sort_keys=True) for n in ("synthetic", "dominant", "integer")}) == 3
    assert float(net["CPU Mpix/s (2 thr)"]) > 0  # the timing subprocess ran

    run = tmp_path / "runs" / "transunet_6_6_64"
    config = json.loads((run / "config.json").read_text())
    recipe = reference_table.RECIPES["tiny"].recipe
    assert config["model_options"] == {"num_heads": 6, "num_layers": 6, "mlp_dim": 64}
    assert all(config[k] == v for k, v in recipe.items()), "the row was not trained with the scale's recipe"
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = (tmp_path / "summary.md").read_text().splitlines()
    assert len(summary) == 2 + 2 and summary[2].startswith(f"| {ROW} |")  # header, rule, row, astroscrappy
    assert "| dominant TPR@0.01% | integer TPR@0.01% |" in summary[0]
    assert summary[2].count("|") == summary[0].count("|") == summary[3].count("|")

    # A second call reuses the finished run and its test metrics, and adds the shipped model's row.
    cached = (run / "reference_test.json").read_text()
    from kercr.weights import default_model_path

    extra = [] if default_model_path().is_file() else ["--extra-model", "none"]
    assert reference_table.main([*args, *extra]) == 0
    assert "cached test metrics" in capsys.readouterr().out
    assert (run / "reference_test.json").read_text() == cached
    if not extra:
        with (tmp_path / "table.csv").open() as f:
            models = {r["model"] for r in csv.DictReader(f)}
        assert any(m.startswith(reference_table.SHIPPED_LABEL) for m in models)

    # A run cached before the frame-class sets existed keeps its metrics and scores only the new sets.
    old = json.loads(cached)
    old.pop("set_stamps")
    old["test"] = {k: v for k, v in old["test"].items() if k not in reference_table.FRAME_CLASSES}
    (run / "reference_test.json").write_text(json.dumps(old))
    assert reference_table.main([*args, "--extra-model", "none"]) == 0
    assert "cached test metrics, scoring the set(s) ['dominant', 'integer']" in capsys.readouterr().out
    assert json.loads((run / "reference_test.json").read_text()) == json.loads(cached)


def test_unknown_row_is_refused_with_the_valid_labels(reference_table, tmp_path, capsys):
    with pytest.raises(SystemExit):
        reference_table.main(["--scale", "tiny", "--out", str(tmp_path), "--rows", "TransUNet 6 / 6 / 64"])
    err = capsys.readouterr().err
    assert "unknown row(s) ['TransUNet 6 / 6 / 64']" in err and ROW in err
    assert not (tmp_path / "runs").exists()


def test_footprints_only_ignores_exactly_the_simulated_crs(reference_table):
    if not reference_table.FOOTPRINTS.resolve().is_file():
        pytest.skip(f"{reference_table.FOOTPRINTS} not found (../shared/data is absent)")
    import numpy as np
    from scipy import ndimage

    from kercr.data.frames import SyntheticFrames

    scale = reference_table.RECIPES["tiny"]
    source = reference_table.test_sets(scale, 1)["real footprints"]
    _, truth, _, _ = source._make(0)
    simulated = reference_table.simulated_crs(source, 0)
    plain = SyntheticFrames(seed=reference_table.TEST_SEED, shape=scale.frame_shape,
                            cr_rate_scale=scale.test_cr_rate_scale * reference_table.FOOTPRINT_RATE_CUT)
    _, alone, _, _ = plain._make(0)  # the same frame made without footprints
    assert alone.any() and np.array_equal(simulated, ndimage.binary_dilation(alone, np.ones((3, 3), bool)))
    assert not (alone & ~truth).any()  # every simulated CR pixel is in the footprint frame's truth
    assert (truth & ~simulated).any()  # and footprints are left to score
    assert source.footprints is not None and len(source._cache) == 0  # the source itself is untouched


def test_first_test_frame_shifts_the_test_frames_and_the_cache_key(reference_table):
    """``--first-test-frame K`` gives frames K.. of the same seed: a confirmatory test on frames
    no earlier run scored, and never the cached metrics of another range."""
    scale = reference_table.RECIPES["tiny"]
    both = reference_table.TestData(scale, 2)
    second = reference_table.TestData(scale, 1, first_frame=1)
    for name, frames in second.sets.items():
        assert len(frames) == 1
        for key in ("truth", "ignore", "raw"):
            assert (frames[0][key] == both.sets[name][1][key]).all(), (name, key)
        assert not (frames[0]["raw"] == both.sets[name][0]["raw"]).all()
    assert second.key() != reference_table.TestData(scale, 1).key()


def test_frame_class_sets_hold_their_class_and_leave_the_base_key_alone(reference_table):
    """The ``dominant`` and ``integer`` sets: the first set's frames, each of its set's class; the
    base sets' cache key is the one of the benchmark before these sets (earlier runs stay cached)."""
    import numpy as np

    scale = reference_table.RECIPES["tiny"]
    data = reference_table.TestData(scale, 2)
    assert list(data.sets)[-2:] == ["dominant", "integer"] and data.class_sets() == ["dominant", "integer"]
    for name in ("synthetic", "dominant", "integer"):
        frames = data.sets[name]
        assert len(frames) == 2 and all(f["raw"].shape == scale.frame_shape for f in frames)
        assert [f["frame_class"] for f in frames] == [name if name != "synthetic" else "plain"] * 2
        assert all((f["truth"] & ~f["ignore"]).any() for f in frames), name  # CRs to score
    for d, s in zip(data.sets["dominant"], data.sets["synthetic"]):
        assert np.median(d["raw"]) > np.median(s["raw"])  # a source over a large part of the field
    for f in data.sets["integer"]:
        assert np.array_equal(f["raw"], np.round(f["raw"])) and 10 <= f["gain"] <= 30
    assert [f["gain"] for f in data.sets["synthetic"]] == [reference_table.GAIN] * 2
    # the digests of TestData(tiny, 2).key() before the frame-class sets were added
    before = "78558724a105" if reference_table.FOOTPRINTS.resolve().is_file() else "72093c013289"
    assert data.key() == before
    assert len({data.key(), data.set_key("dominant"), data.set_key("integer")}) == 3
    assert data.set_key("dominant") != reference_table.TestData(scale, 1).set_key("dominant")


def test_rows_none_scores_only_the_extra_models_and_bad_starts_are_refused(reference_table, tmp_path, capsys):
    with pytest.raises(SystemExit):
        reference_table.main(["--scale", "tiny", "--out", str(tmp_path), "--first-test-frame", "-1"])
    assert "--first-test-frame -1" in capsys.readouterr().err
    pytest.importorskip("astroscrappy")
    assert reference_table.main(["--scale", "tiny", "--out", str(tmp_path), "--rows", "none", "--test-frames", "1",
                                 "--extra-model", "none"]) == 0
    assert not (tmp_path / "runs").exists()
    with (tmp_path / "table.csv").open() as f:
        assert {r["model"] for r in csv.DictReader(f)} == {"astroscrappy (L.A.Cosmic, defaults)"}
