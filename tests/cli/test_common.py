"""The one CLI layer (:mod:`kercr.cli.common`): verbosity flags, logging, errors, light ``--help``.

The subprocess tests run real console scripts, as a user does: each log line once (TensorFlow's
root handler must not print it again), no TensorFlow start-up lines, and ``--help`` without
TensorFlow or Keras.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from astropy.io import fits

from kercr.cli import common
from kercr.cli.common import add_verbosity, run, setup_logging, verbosity

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
#: Every console script: name -> "module:function" (pyproject.toml's [project.scripts]).
SCRIPTS = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
#: The ``python -m`` commands on the same layer.
MODULE_MAINS = {"python -m kercr.weights.average": "kercr.weights.average:main",
                "python -m kercr.weights.ship": "kercr.weights.ship:main"}
#: Each console script's parser and the arguments it needs to parse.
PARSERS = {
    "kercr-models": ("kercr.cli.models:models_parser", []),
    "kercr-train": ("kercr.cli.train:train_parser", []),
    "kercr-prepare": ("kercr.cli.train:prepare_parser", ["--out", "x"]),
    "kercr-detect": ("kercr.cli.detect:detect_parser", ["x.fits"]),
    "kercr-evaluate": ("kercr.cli.detect:evaluate_parser", ["--out", "x"]),
    "kercr-export": ("kercr.cli.export:export_parser", ["m", "--out", "x"]),
    "kercr-tune": ("kercr.cli.tune:build_parser", []),
}


def _load(target):
    import importlib

    module, name = target.split(":")
    return getattr(importlib.import_module(module), name)


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}  # as a user's shell
    return {**env, "PYTHONUNBUFFERED": "1", **extra}


@pytest.fixture
def kercr_logger():
    """The "kercr" logger as it was before the test, whatever the test configures."""
    logger = logging.getLogger("kercr")
    saved = logger.level, logger.propagate, list(logger.handlers)
    yield logger
    logger.setLevel(saved[0])
    logger.propagate = saved[1]
    logger.handlers[:] = saved[2]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny untrained model with its sidecar and card, and a small FITS image."""
    import keras

    import kercr

    folder = tmp_path_factory.mktemp("cli")
    keras.utils.set_random_seed(0)
    kercr.build_model("deepcr_2_4").save(folder / "model.keras")
    from kercr.data import NormalizationConfig, make_frame

    (folder / "normalization.json").write_text(json.dumps(NormalizationConfig().to_dict()))
    (folder / "model.json").write_text(json.dumps({"threshold": 0.6}))
    fits.PrimaryHDU(make_frame(seed=1, shape=(64, 64)).image_adu).writeto(folder / "x.fits")
    return folder


def _detect_argv(tiny, out):
    return [str(tiny / "x.fits"), "--model", str(tiny / "model.keras"), "--runtime", "keras", "--out", str(out)]


# --------------------------------------------------------------------------------------------
# One line, once
# --------------------------------------------------------------------------------------------
def test_console_script_prints_each_line_once_and_no_tensorflow_start_up_lines(tiny, tmp_path):
    out = subprocess.run([str(BIN / "kercr-detect"), *_detect_argv(tiny, tmp_path / "a")], capture_output=True,
                         text=True, env=_env(), timeout=600)
    assert out.returncode == 0, out.stderr
    assert out.stderr.count("wrote ") == 1 and out.stderr.count("loaded model") == 1, out.stderr
    assert " INFO [1/1] wrote " in out.stderr  # HH:MM:SS LEVEL message
    # TensorFlow was imported (the Keras runtime), its C++ start-up lines were not shown.
    assert "InitializeLog" not in out.stderr and "I0000" not in out.stderr, out.stderr
    # -q: warnings and errors only.
    out = subprocess.run([str(BIN / "kercr-detect"), *_detect_argv(tiny, tmp_path / "b"), "-q"], capture_output=True,
                         text=True, env=_env(), timeout=600)
    assert out.returncode == 0 and (tmp_path / "b" / "x_crmask.fits").is_file()
    assert " INFO " not in out.stderr, out.stderr


def test_each_line_once_after_tensorflow_installed_a_root_handler(tiny, tmp_path):
    # absl (TensorFlow's logging) installs a handler on the root logger once something logs
    # through it; a kercr line that propagated there would be printed twice.
    code = ("import logging, sys, tensorflow, absl.logging; absl.logging.warning('absl logs'); "
            "assert logging.getLogger().handlers, 'no root handler: the test tests nothing'; "
            "from kercr.cli.detect import detect_main; sys.exit(detect_main(sys.argv[1:]))")
    out = subprocess.run([sys.executable, "-c", code, *_detect_argv(tiny, tmp_path)], capture_output=True, text=True,
                         env=_env(TF_CPP_MIN_LOG_LEVEL="3"), timeout=600)
    assert out.returncode == 0, out.stderr
    assert out.stderr.count("wrote ") == 1 and out.stderr.count("loaded model") == 1, out.stderr


def test_setup_logging_is_idempotent_and_does_not_propagate(kercr_logger, capsys):
    for _ in range(3):
        logger = setup_logging(0)
    handlers = [h for h in logger.handlers if isinstance(h, common._StderrHandler)]
    assert logger is kercr_logger and len(handlers) == 1 and logger.propagate is False
    logging.getLogger("kercr.some.module").info("progress")
    logging.getLogger("kercr.some.module").debug("details")
    err = capsys.readouterr().err  # the handler writes to the stderr of the moment
    assert err.count("progress") == 1 and "details" not in err
    assert err.split()[1] == "INFO" and len(err.split()[0]) == 8  # HH:MM:SS
    assert setup_logging(1).level == logging.DEBUG and setup_logging(-1).level == logging.WARNING


# --------------------------------------------------------------------------------------------
# -q and -v: one meaning everywhere
# --------------------------------------------------------------------------------------------
def test_every_script_is_listed_here():
    assert set(PARSERS) == set(SCRIPTS)


@pytest.mark.parametrize("script", sorted(PARSERS))
def test_quiet_and_verbose_mean_the_same_in_every_script(script, kercr_logger):
    target, needed = PARSERS[script]
    parser = _load(target)()
    assert parser.prog == script
    for flags, level, expected in (([], 0, logging.INFO), (["-q"], -1, logging.WARNING),
                                   (["--quiet"], -1, logging.WARNING), (["-v"], 1, logging.DEBUG),
                                   (["-vv"], 2, logging.DEBUG), (["--verbose"], 1, logging.DEBUG)):
        args = parser.parse_args([*needed, *flags])
        assert verbosity(args) == level, (script, flags)
        assert setup_logging(verbosity(args)).level == expected
    text = parser.format_help()
    assert "-q, --quiet" in text and "-v, --verbose" in text


@pytest.mark.parametrize("name", sorted(MODULE_MAINS))
def test_python_m_commands_have_the_same_flags(name, capsys):
    with pytest.raises(SystemExit) as exit_:
        _load(MODULE_MAINS[name])(["--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith(f"usage: {name}") and "-q, --quiet" in text and "-v, --verbose" in text


# --------------------------------------------------------------------------------------------
# Errors: one line and exit status 1
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("script, argv, message", [
    ("kercr-detect", ["x.fits", "--model", "/no/such/model.keras"], "does not exist"),
    ("kercr-train", ["--config", "/no/such/config.toml"], "does not exist"),
    ("kercr-evaluate", ["--synthetic", "1", "--model", "/no/such/run", "--out", "{tmp}/ev"], "does not exist"),
])
def test_a_bad_input_gives_one_line_and_exit_status_1(script, argv, message, tmp_path, capsys, kercr_logger):
    main = _load(SCRIPTS[script])
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"{script}: error: ") and err.count("\n") == 1 and message in err, err
    # -v: the traceback too, then the same line.
    assert main([*argv, "-v"]) == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and err.splitlines()[-1].startswith(f"{script}: error: ")


def test_run_reports_interrupts_and_lets_bugs_show(capsys, kercr_logger):
    import argparse

    parser = add_verbosity(argparse.ArgumentParser(prog="kercr-x"))

    def interrupted(parser, args):
        raise KeyboardInterrupt

    assert run(parser, interrupted, [], interrupted="stopped; run it again to resume.") == 130
    assert capsys.readouterr().err.strip() == "kercr-x: stopped; run it again to resume."

    def multi_line(parser, args):
        raise ValueError("first line\n  second line")

    assert run(parser, multi_line, ["-q"]) == 1
    assert capsys.readouterr().err == "kercr-x: error: first line second line\n"

    def bug(parser, args):
        raise RuntimeError("a bug in kercr")  # not a user's mistake: its traceback shows

    with pytest.raises(RuntimeError):
        run(parser, bug, [])
    with pytest.raises(SystemExit) as exit_:  # bad flags stay argparse's: status 2
        run(parser, bug, ["--no-such-flag"])
    assert exit_.value.code == 2
    assert not any(isinstance(f, common._QuietTensorFlowFinder) for f in sys.meta_path)  # nothing left behind


def test_run_names_a_missing_full_install_package_but_not_a_broken_one(capsys, kercr_logger, monkeypatch):
    """Without TensorFlow or Keras (the detection-only install): one line. With Keras installed but a
    part of it missing (a version mismatch): the real error, not 'this install lacks keras'."""
    import argparse
    import importlib.util

    parser = add_verbosity(argparse.ArgumentParser(prog="kercr-x"))

    def needs(name):
        def main(parser, args):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return main

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorflow" else real(name, *a))
    assert run(parser, needs("tensorflow.lite"), []) == 1
    line = capsys.readouterr().err.strip()
    assert line.startswith("kercr-x: error: needs tensorflow, which this install lacks") and "\n" not in line
    with pytest.raises(ModuleNotFoundError):
        run(parser, needs("keras.src.no_such_module"), [])  # keras is installed here
    with pytest.raises(ModuleNotFoundError):
        run(parser, needs("no_such_package"), [])  # not one of the full install's


def test_run_ends_the_process_at_once_after_an_error_that_asks_for_it(capsys, kercr_logger, monkeypatch):
    """A lost worker (LostWorkerError.exit_at_once): the error line, then os._exit (_exit_at_once), not the teardown."""
    import argparse

    from kercr.training.distribution import LostWorkerError

    exits = []
    monkeypatch.setattr(common, "_exit_at_once", exits.append)  # the real one ends pytest too
    parser = add_verbosity(argparse.ArgumentParser(prog="kercr-x"))

    def lost(parser, args):
        raise LostWorkerError("multi-worker training lost worker 1 at h:1. Run the same command again.")

    assert run(parser, lost, []) == 1 and exits == [1]
    said = capsys.readouterr().err
    assert said == "kercr-x: error: multi-worker training lost worker 1 at h:1. Run the same command again.\n"

    def other(parser, args):
        raise ConnectionError("an unwritable output")

    assert run(parser, other, []) == 1 and exits == [1]  # other errors return as before


def test_run_leaves_the_logger_as_it_found_it(kercr_logger, capsys):
    import argparse

    before = list(kercr_logger.handlers), kercr_logger.propagate, kercr_logger.level
    parser = add_verbosity(argparse.ArgumentParser(prog="kercr-x"))
    assert run(parser, lambda p, a: logging.getLogger("kercr.x").info("inside") or 0, []) == 0
    assert "inside" in capsys.readouterr().err
    assert (list(kercr_logger.handlers), kercr_logger.propagate, kercr_logger.level) == before


# --------------------------------------------------------------------------------------------
# --help without TensorFlow or Keras
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("target", sorted(set(SCRIPTS.values()) | set(MODULE_MAINS.values())))
def test_help_imports_neither_tensorflow_nor_keras(target):
    module, name = target.split(":")
    code = (f"import sys\nfrom {module} import {name}\ntry:\n    {name}(['--help'])\nexcept SystemExit as exit_:\n"
            "    print('EXIT', exit_.code)\n"
            "print('HEAVY', [m for m in ('tensorflow', 'keras', 'keras_tuner') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env(), timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("usage:") and "\nEXIT 0\n" in out.stdout, out.stdout[-500:]
    assert "HEAVY []" in out.stdout, out.stdout[-500:]


@pytest.mark.skipif(not hasattr(__import__("signal"), "SIGHUP"), reason="POSIX signals")
def test_signals_as_interrupt_raises_on_sigterm_and_keeps_an_ignored_sighup_ignored():
    """SIGTERM inside the block is a KeyboardInterrupt (so cleanups run); SIGHUP ignored by nohup stays
    ignored (before, `nohup kercr-export` died when its terminal closed); the handlers come back after."""
    import os
    import signal

    from kercr.cli.common import Terminated, signals_as_interrupt

    before = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    term = signal.getsignal(signal.SIGTERM)
    try:
        with pytest.raises(Terminated) as stopped, signals_as_interrupt():
            os.kill(os.getpid(), signal.SIGHUP)  # ignored
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(100):  # the handler runs between bytecodes
                pass
        assert stopped.value.signum == signal.SIGTERM and isinstance(stopped.value, KeyboardInterrupt)
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN and signal.getsignal(signal.SIGTERM) == term
    finally:
        signal.signal(signal.SIGHUP, before)
