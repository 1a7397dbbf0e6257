"""``kercr-export`` (kercr.cli.export): profiles and flags, what it prints, and its exit statuses.

What the export writes is tested in tests/export/; ``--help`` without TensorFlow and the meaning of
``-q``/``-v`` in tests/cli/test_common.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("tensorflow")
pytest.importorskip("ai_edge_litert")

from kercr.cli.export import export_parser, main  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
TILE = 64


def test_flags_win_over_the_profile_and_each_variant_gets_a_line(tmp_path, capsys):
    out = tmp_path / "models"
    assert main(["deepcr_2_4", "--out", str(out), "--profile", str(REPO / "export" / "serving.toml"),
                 "--formats", "tflite", "--quantize", "none", "--tile", "32", "--validation-patches", "1",
                 "--set", "filters=(2, 4)"]) == 0
    version = out / "kercr" / "1"
    manifest = json.loads((version / "export.json").read_text())
    assert manifest["formats"] == ["tflite"] and manifest["tile"] == 32
    assert (version / "tflite" / "kercr_float32.tflite").is_file() and not (version / "saved_model.pb").exists()
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"exported to {version}" and len(lines) == 2
    assert lines[1].startswith("  tflite float32: ") and " bytes, max |dp| = " in lines[1] and "dDice = " in lines[1]


def test_a_bad_set_option_is_a_usage_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["deepcr_2_4", "--out", str(tmp_path / "m"), "--set", "filters"])
    assert exit_.value.code == 2
    assert "--set 'filters': expected KEY=VALUE, e.g. --set num_layers=8" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()


def test_help_says_what_a_model_is_and_what_is_written():
    text = export_parser().format_help()
    for words in ("a registry name (kercr-models lists them): an UNTRAINED model", "saved_model.pb + variables/",
                  "exit status: 0 exported, 1 the export failed", "--profile export/edge.toml"):
        assert words in text, words


def test_cli_with_profile(tmp_path, capsys):
    out = tmp_path / "models"
    rc = main(["deepcr_2_4", "--out", str(out), "--profile", str(REPO / "export" / "serving.toml"),
               "--tile", str(TILE), "--validation-patches", "2", "--name", "cr", "--version", "7"])
    assert rc == 0
    version = out / "cr" / "7"
    assert (version / "saved_model.pb").is_file() and not (version / "tflite").exists()
    assert json.loads((version / "export.json").read_text())["formats"] == ["savedmodel"]
    assert "exported to" in capsys.readouterr().out
    capsys.readouterr()
    assert main(["deepcr_2_4", "--out", str(out), "--name", "cr", "--version", "7", "--tile", str(TILE)]) == 1
    err = capsys.readouterr().err  # the existing version: one line, no traceback
    assert err.startswith("kercr-export: error: ") and err.count("\n") == 1 and "7" in err



@pytest.mark.parametrize(("flags", "said"), [
    (["--formats", "foo"], "unknown format(s) foo; choose from"),
    (["--formats", ","], "no format given; choose from"),
    (["--quantize", "int4"], "unknown quantization(s)"),
    (["--version", "0"], "version 0 must be a positive integer"),
    (["--name", "a/b"], "name 'a/b': use letters"),
    (["--validation-patches", "0"], "validation_patches=0 must be >= 1"),
    (["--formats", "savedmodel", "--quantize", "int8"], "quantize int8 applies to TFLite files"),
])
def test_a_bad_option_value_is_a_usage_error_before_the_model_loads(tmp_path, capsys, flags, said):
    """As --help says (2 bad options); before, these came from the export itself with status 1."""
    with pytest.raises(SystemExit) as exit_:
        main(["/no/such/model.keras", "--out", str(tmp_path / "m"), *flags])
    assert exit_.value.code == 2 and said in capsys.readouterr().err
    assert not (tmp_path / "m").exists()


def test_sigterm_mid_export_leaves_no_partial_version(tmp_path):
    """``timeout``, Slurm and ``docker stop`` send SIGTERM; before, the staged .1.partial-* folder stayed
    behind (only Ctrl-C cleaned up), and later exports piled up more."""
    import os
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "models"
    proc = subprocess.Popen([sys.executable, "-m", "kercr.cli.export", "deepcr_2_4", "--out", str(out), "--formats",
                             "savedmodel,tflite", "--tile", "32", "--validation-patches", "1"],
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not list(out.glob("kercr/.1.partial-*")):
        time.sleep(0.1)
    assert list(out.glob("kercr/.1.partial-*")), "the export never started staging"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    assert "stopped by SIGTERM" in err
    assert not out.exists() or not any(out.rglob("*")), sorted(map(str, out.rglob("*")))
