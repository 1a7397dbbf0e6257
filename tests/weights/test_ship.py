"""kercr.weights.ship: a finished run copied in as the shipped model, its card, and its prebuilt TFLite file.

Every test writes into ``tmp_path``: a run made by the ``save_model`` fixture, or a copy of
``kercr/weights/``; the package folder itself is never written to.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
from pathlib import Path

import pytest

import kercr
from kercr.detection import load_model
from kercr.model_files import file_sha256
from kercr.weights import MODELS_DIR, NAMED_FILE, WEIGHTS_DIR, has_default, shipped_names
from kercr.weights.ship import main, ship

needs_default = pytest.mark.skipif(not has_default(), reason="no shipped model (kercr/weights/default.keras) yet")
#: The shipped model's files.
SHIPPED = ("default.keras", "default.json", "normalization.json", "default-int8.tflite")


@needs_default
@pytest.mark.parametrize("name", shipped_names())
def test_a_shipped_model_card_matches_the_config_files_it_names(name):
    """The card's command reproduces the shipped model: each config file it names resolves to the
    options recorded for that run; each stage starts from the stage before it (a run's ``out``,
    an average's ``--out``, or a shipped model's name whose own card's command is the stages
    before); the card's own config is the last stage's or, when the command ends by averaging
    runs (``kercr.weights.average``), the first averaged run's (whose validation patches chose
    the threshold); every averaged run is a stage of the command."""
    from kercr.config import TrainConfig, read_config_file
    from kercr.model_files import read_card
    from kercr.weights import shipped_model_path

    card = read_card(shipped_model_path(name))
    stages = card["command"].split(" && ")
    files = re.findall(r"--config (\S+)", card["command"])
    assert files, card["command"]
    root = Path(kercr.__file__).resolve().parents[1]
    if not (root / files[-1]).is_file():
        pytest.skip("the config files are not installed beside the package (a wheel install)")
    # (not validated: a fine-tuning stage names its base run, which a fresh checkout does not hold)
    by_out, previous, averaged = {}, None, None
    for i, stage in enumerate(stages):
        if stage.startswith("kercr-train "):
            (file,) = re.findall(r"--config (\S+)", stage)
            config = json.loads(json.dumps(TrainConfig(**read_config_file(root / file)).to_dict()))
            if previous is not None:
                start = config["init_weights"]
                if start in shipped_names():  # a shipped model that is the stages before this one
                    assert read_card(shipped_model_path(start))["command"] == " && ".join(stages[:i]), start
                else:
                    assert start == previous, f"{file} starts from {start}, not {previous}"
                assert config["model"] == by_out[previous]["model"]
            by_out[config["out"]] = config
            previous, averaged = config["out"], None
        else:
            found = re.fullmatch(r"python -m kercr\.weights\.average ((?:\S+ )+)--out (\S+)", stage)
            assert found, f"stage {stage!r} is neither kercr-train nor kercr.weights.average"
            averaged = found.group(1).split()
            assert set(averaged) <= set(by_out), f"averaged runs {averaged} are not all stages of {card['command']}"
            by_out[found.group(2)] = by_out[averaged[0]]
            previous = found.group(2)
    chose = averaged[0] if averaged else previous
    # an option added after the model was shipped reads as its default (as when a run resumes)
    assert by_out[chose] == json.loads(json.dumps(TrainConfig(**card["config"]).to_dict()))
    assert set(card["config"]) <= set(by_out[chose])


def test_ship_copies_a_run_with_its_card_and_refuses_to_overwrite(tmp_path, save_model):
    from kercr.config import TrainConfig

    run = tmp_path / "run"
    save_model(run, name="best")
    config = dataclasses.asdict(TrainConfig(model="deepcr_2_4", variety="wide", frames=10, frame_shape=[256, 256]))
    (run / "config.json").write_text(json.dumps(config))
    metrics = {"threshold_at_fpr_1e-4": 0.875, "logit_threshold_at_fpr_1e-4": 1.9459, "tpr_at_fpr_1e-4": 0.5,
               "dice": 0.6, "best_dice": 0.7}
    (run / "metrics.json").write_text(json.dumps(metrics))
    dest = tmp_path / "weights"
    path = ship(run, command="kercr-train --model deepcr_2_4", dest=dest, notes={"real_frames": {"ok": True}})
    card = json.loads((dest / "default.json").read_text())
    assert card["threshold"] == 0.875 and card["architecture"] == "deepcr_2_4" and card["params"] == 1709
    assert card["command"] == "kercr-train --model deepcr_2_4" and card["config"]["variety"] == "wide"
    assert card["validation"]["tpr_at_fpr_1e-4"] == 0.5 and card["real_frames"] == {"ok": True}
    loaded = load_model(path)
    assert loaded.threshold == 0.875 and loaded.threshold_source == "card"
    before = path.stat().st_mtime_ns
    with pytest.raises(FileExistsError, match="--force"):
        ship(run, command="x", dest=dest)
    assert path.stat().st_mtime_ns == before



@needs_default
def test_prebuild_rebuilds_the_int8_file_and_its_card_entry(tmp_path, capsys):
    pytest.importorskip("tensorflow")
    pytest.importorskip("ai_edge_litert")
    before = {name: file_sha256(WEIGHTS_DIR / name) for name in SHIPPED}
    for name in SHIPPED:
        shutil.copy(WEIGHTS_DIR / name, tmp_path / name)
    card = json.loads((tmp_path / "default.json").read_text())
    stale = {k: v for k, v in card.items() if k not in ("geometry", "tflite")}
    (tmp_path / "default.json").write_text(json.dumps(stale))  # as a freshly shipped model's card
    (tmp_path / "default-int8.tflite").write_bytes(b"made from another model")
    assert main(["--prebuild", "--dest", str(tmp_path), "-q"]) == 0
    rebuilt = json.loads((tmp_path / "default.json").read_text())
    entry = rebuilt["tflite"]["tflite-int8"]
    assert entry["sha256"] == file_sha256(tmp_path / "default-int8.tflite")
    if entry["sha256"] == before["default-int8.tflite"]:
        # The same file as shipped (the conversion is deterministic), and the card as shipped.
        assert rebuilt == card
    else:  # another TensorFlow / numpy release calibrates int8 a rounding step apart: the card says so
        shipped = card["tflite"]["tflite-int8"]
        assert {k: v for k, v in rebuilt.items() if k != "tflite"} == {k: v for k, v in card.items() if k != "tflite"}
        assert entry["source_sha256"] == shipped["source_sha256"] and rebuilt["geometry"] == card["geometry"]
        assert abs(entry["parity_vs_keras"]["tpr_at_fpr"]["delta"] - shipped["parity_vs_keras"]["tpr_at_fpr"]["delta"]) < 0.01
    assert capsys.readouterr().out == (f"prebuilt tflite-int8: {tmp_path / 'default-int8.tflite'} ({entry['bytes']:,} "
                                       f"bytes; max |dp| against Keras {entry['parity_vs_keras']['max_abs_delta_p']:.3g})\n")
    assert load_model(tmp_path / "default.keras").prebuilt == {"tflite-int8": tmp_path / "default-int8.tflite"}
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(SHIPPED)  # no temporary file left
    assert {name: file_sha256(WEIGHTS_DIR / name) for name in SHIPPED} == before  # the package is untouched


@pytest.mark.parametrize("argv, message", [
    ([], "pass a finished kercr-train run directory to ship, or --prebuild"),
    (["{tmp}/run"], "--command is required with a run directory"),
    (["{tmp}/run", "--command", "x", "--runtime", "bogus"], "argument --runtime: invalid choice: 'bogus'"),
    (["{tmp}/run", "--command", "x", "--notes", "{tmp}/notes.json"], "a JSON object of card entries, not list"),
])
def test_the_command_line_says_what_is_missing(tmp_path, capsys, argv, message):
    (tmp_path / "notes.json").write_text("[1, 2]")
    with pytest.raises(SystemExit) as exit_:
        main([a.replace("{tmp}", str(tmp_path)) for a in argv] + ["--dest", str(tmp_path / "weights")])
    assert exit_.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "weights").exists()


def test_prebuild_without_a_shipped_model_names_the_fix(tmp_path, capsys):
    assert main(["--prebuild", "--dest", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert f"{tmp_path / 'default.keras'} does not exist: nothing to prebuild. Ship a model first" in err


def test_ship_from_the_command_line_writes_the_card_with_the_notes(tmp_path, capsys, save_model):
    run = tmp_path / "run"
    save_model(run, name="best")
    from kercr.config import TrainConfig

    (run / "config.json").write_text(json.dumps(dataclasses.asdict(TrainConfig(model="deepcr_2_4"))))
    (run / "metrics.json").write_text(json.dumps({"threshold_at_fpr_1e-4": 0.6, "dice": 0.5}))
    (tmp_path / "notes.json").write_text(json.dumps({"limitations": "untrained"}))
    dest = tmp_path / "weights"
    assert main([str(run), "--command", "kercr-train ...", "--runtime", "tflite-int8", "--notes",
                 str(tmp_path / "notes.json"), "--dest", str(dest)]) == 0
    assert capsys.readouterr().out == f"shipped {run} -> {dest / 'default.keras'}\n"
    card = json.loads((dest / "default.json").read_text())
    assert (card["threshold"], card["runtime"], card["tta"], card["limitations"]) == (0.6, "tflite-int8", False,
                                                                                      "untrained")
    assert card["validation"] == {"dice": 0.5} and card["kercr_version"] == kercr.__version__
    assert main([str(run), "--command", "again", "--dest", str(dest)]) == 1  # no --force: kept
    assert "pass --force to replace the shipped model" in capsys.readouterr().err
    assert json.loads((dest / "default.json").read_text())["command"] == "kercr-train ..."


def test_ship_a_named_alternative_that_detection_runs_by_its_name(tmp_path, capsys, save_model, monkeypatch):
    import kercr.weights
    from kercr.config import TrainConfig
    from kercr.detection.workers import model_reference
    from kercr.weights import ship as ship_module

    models = tmp_path / "weights" / "models"
    monkeypatch.setattr(kercr.weights, "MODELS_DIR", models)
    monkeypatch.setattr(ship_module, "MODELS_DIR", models)
    run = tmp_path / "run"
    save_model(run, name="best")
    (run / "config.json").write_text(json.dumps(dataclasses.asdict(TrainConfig(model="deepcr_2_4"))))
    (run / "metrics.json").write_text(json.dumps({"threshold_at_fpr_1e-4": 0.7, "dice": 0.5}))
    for bad in ("default", "../up", "a/b", ".hidden"):
        with pytest.raises(SystemExit) as exit_:
            main([str(run), "--name", bad, "--command", "x"])
        assert exit_.value.code == 2 and "name a detection model with letters, digits" in capsys.readouterr().err
    assert not models.exists()
    assert main([str(run), "--name", "global", "--command", "kercr-train ..."]) == 0
    folder = models / "global"
    assert capsys.readouterr().out == f"shipped {run} -> {folder / 'model.keras'}\n"
    assert sorted(p.name for p in folder.iterdir()) == ["model.json", "model.keras", "normalization.json"]
    assert json.loads((folder / "model.json").read_text())["command"] == "kercr-train ..."
    loaded = load_model("global")
    assert loaded.name == "global" and loaded.threshold == 0.7 and loaded.threshold_source == "card"
    assert model_reference(loaded) == "global"  # worker processes resolve the name themselves
    assert main([str(run), "--name", "global", "--command", "again"]) == 1  # no --force: kept
    assert "pass --force to replace the shipped model" in capsys.readouterr().err


def _archive(path) -> tuple[dict, list[str]]:
    """The compile settings and the HDF5 groups of a ``.keras`` archive."""
    import io
    import zipfile

    import h5py

    with zipfile.ZipFile(path) as archive:
        config = json.loads(archive.read("config.json"))
        with h5py.File(io.BytesIO(archive.read("model.weights.h5")), "r") as weights:
            groups = list(weights.keys())
    return config.get("compile_config") or {}, groups


def test_ship_writes_the_network_without_its_optimizer_state(tmp_path):
    """A run's best.keras carries Adam's moments and the loss; the shipped file carries neither, and
    gives the same scores."""
    import keras
    import numpy as np

    from kercr.config import TrainConfig
    from kercr.data import NormalizationConfig

    keras.utils.set_random_seed(0)
    model = kercr.build_model("deepcr_2_4")
    model.compile(optimizer="adam", loss="binary_crossentropy")
    x = np.random.default_rng(0).normal(size=(2, 16, 16, 1)).astype("float32")
    model.fit(x, (x > 1).astype("float32"), epochs=1, verbose=0)
    run = tmp_path / "run"
    run.mkdir()
    model.save(run / "best.keras")
    (run / "normalization.json").write_text(json.dumps(NormalizationConfig().to_dict()))
    (run / "config.json").write_text(json.dumps(dataclasses.asdict(TrainConfig(model="deepcr_2_4"))))
    (run / "metrics.json").write_text(json.dumps({"threshold_at_fpr_1e-4": 0.6}))
    compile_config, groups = _archive(run / "best.keras")
    assert compile_config and "optimizer" in groups  # the run's file carries both
    shipped = ship(run, command="x", dest=tmp_path / "weights")
    compile_config, groups = _archive(shipped)
    assert not compile_config and "optimizer" not in groups
    assert shipped.stat().st_size < (run / "best.keras").stat().st_size
    assert sorted(p.name for p in shipped.parent.iterdir()) == ["default.json", "default.keras", "normalization.json"]
    again = keras.saving.load_model(shipped)
    np.testing.assert_array_equal(again.predict_on_batch(x), model.predict_on_batch(x))


@pytest.mark.parametrize("path", [WEIGHTS_DIR / "default.keras", WEIGHTS_DIR / "inpainter" / "inpainter.keras"]
                         + [MODELS_DIR / name / NAMED_FILE for name in shipped_names()[1:]],
                         ids=lambda path: path.parent.name)
def test_the_shipped_networks_carry_no_optimizer_state(path):
    """Shipped files hold the network only (kercr.weights.ship.strip_training_state)."""
    if not path.is_file():
        pytest.skip(f"{path} is not shipped")
    compile_config, groups = _archive(path)
    assert not compile_config and "optimizer" not in groups, path


def test_ship_inpainter_copies_the_run_and_writes_its_card(tmp_path):
    from kercr.model_files import write_normalization
    from kercr.models import build_inpainter
    from kercr.training.inpainting import INPAINT_NORMALIZATION

    run = tmp_path / "run"
    run.mkdir()
    build_inpainter().save(run / "inpainter.keras")
    write_normalization(run, INPAINT_NORMALIZATION)
    (run / "metrics.json").write_text(json.dumps({"config": {"frames": 3}, "best_val_loss": 1.5}))
    dest = tmp_path / "weights" / "inpainter"
    argv = [str(run), "--inpainter", "--command", "python -m kercr.training.inpainting --out run", "--dest", str(dest)]
    assert main(argv) == 0
    card = json.loads((dest / "inpainter.json").read_text())
    assert card["command"] == "python -m kercr.training.inpainting --out run" and card["trained_on"] == {"frames": 3}
    assert card["validation"] == {"best_val_loss": 1.5} and card["sha256"] == file_sha256(dest / "inpainter.keras")
    assert (dest / "normalization.json").read_text() == (run / "normalization.json").read_text()
    assert main(argv) == 1  # the files exist: nothing replaced without --force
    assert main(argv + ["--force"]) == 0
    pytest.importorskip("ai_edge_litert")
    assert main(["--inpainter", "--prebuild", "--dest", str(dest)]) == 0  # the LiteRT file and its card entry
    card = json.loads((dest / "inpainter.json").read_text())
    entry = card["tflite"]["tflite-float16"]
    assert card["runtime"] == "tflite-float16" and (dest / entry["file"]).is_file()
    assert entry["source_sha256"] == file_sha256(dest / "inpainter.keras") and card["command"].endswith("--out run")
    assert main(["--inpainter", "--prebuild", "--dest", str(tmp_path / "empty")]) == 1
