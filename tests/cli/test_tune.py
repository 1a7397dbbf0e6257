"""``kercr-tune`` and ``python -m kercr.tuning`` (kercr.cli.tune): errors, help, and a light ``--help``.

Searches themselves are tested in tests/tuning/; ``-q``/``-v`` in tests/cli/test_common.py.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from kercr.cli.tune import main


def test_python_m_kercr_tuning_is_kercr_tune_and_its_help_is_light():
    code = ("import runpy, sys\nsys.argv = ['kercr-tune', '--help']\ntry:\n"
            "    runpy.run_module('kercr.tuning', run_name='__main__')\nexcept SystemExit as exit_:\n"
            "    print('EXIT', exit_.code)\n"
            "print('HEAVY', [m for m in ('tensorflow', 'keras', 'keras_tuner') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("usage: kercr-tune ") and "--objective" in out.stdout
    assert "EXIT 0" in out.stdout and "HEAVY []" in out.stdout, out.stdout[-300:]


def test_cli_reports_a_bad_file_and_has_help(tmp_path, capsys):
    pytest.importorskip("keras_tuner")
    path = tmp_path / "bad.toml"
    path.write_text("[space]\nmlp_dim = []\n")
    assert main(["--space", str(path), "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("kercr-tune: error: ") and str(path) in err and "mlp_dim" in err
    assert err.count("\n") == 1  # one line, no traceback
    assert main(["--space", str(tmp_path / "missing.toml")]) == 1
    assert "does not exist" in capsys.readouterr().err
    assert main(["--tuner", "hyperband", "--max-epochs", "1", "--out", str(tmp_path / "o")]) == 1
    assert "Hyperband needs at least 2 epochs" in capsys.readouterr().err
    assert not (tmp_path / "out").exists() and not (tmp_path / "o").exists()
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    for word in ("--objective", "dice", "tpr", "hyperband", "bayesian", "random", "KERASTUNER_TUNER_ID",
                 "KERASTUNER_ORACLE_IP", "KERASTUNER_ORACLE_PORT", "resumes"):
        assert word in text

