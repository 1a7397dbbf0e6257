"""The one CLI layer of kercr's console scripts: verbosity flags, logging, errors, TensorFlow's noise.

Every console script (and ``python -m kercr.weights.average`` / ``ship``) builds its parser,
calls :func:`add_verbosity` and hands the parser and its body to :func:`run`, which:

- parses the arguments (bad options: argparse's usage message, exit status 2);
- configures logging (:func:`setup_logging`): INFO progress lines by default, ``-q`` warnings
  and errors only, ``-v`` debug details; the same in every script;
- filters TensorFlow's C++ start-up lines out of stderr if TensorFlow gets imported
  (:func:`quiet_tensorflow_import`), without importing it itself;
- turns kercr's own errors (bad input files, bad options or configuration, a missing model:
  every ``ValueError`` and ``OSError``, which kercr's exceptions subclass) into one line
  ``PROG: error: MESSAGE`` on stderr and exit status 1 (with ``-v`` the traceback too);
  Ctrl-C gives a one-line message and exit status 130.

This module imports only the standard library, so ``PROG --help`` answers at once.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import importlib.util
import logging
import os
import re
import sys
import traceback

from kercr._stderr import filtered_native_stderr

__all__ = ["EXIT_ERROR", "EXIT_INTERRUPTED", "add_verbosity", "error_line", "parse_overrides",
           "quiet_tensorflow_import", "run", "setup_logging", "verbosity"]

#: The logger every kercr module logs under (``logging.getLogger(__name__)`` of ``kercr.*``).
LOGGER = "kercr"

#: Exit status of a command that kercr's own error stopped (argparse's usage errors give 2).
EXIT_ERROR = 1
#: Exit status after Ctrl-C (128 + SIGINT, as shells report it).
EXIT_INTERRUPTED = 130


def add_verbosity(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add ``-v/--verbose`` and ``-q/--quiet``, with the same meaning in every kercr command."""
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="more messages: debug details, and the traceback of an error")
    parser.add_argument("-q", "--quiet", action="store_true",
                        help="warnings and errors only (no progress lines)")
    return parser


def verbosity(args) -> int:
    """-1 with ``--quiet``, else the number of ``-v`` (0: the default progress lines)."""
    return -1 if getattr(args, "quiet", False) else int(getattr(args, "verbose", 0) or 0)


class _StderrHandler(logging.StreamHandler):
    """Writes to the ``sys.stderr`` of the moment (as the standard library's last-resort handler
    does), so a replaced stderr (pytest's capture, a notebook's) receives the lines."""

    def __init__(self):
        super().__init__(sys.stderr)

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


def setup_logging(verbosity: int = 0) -> logging.Logger:
    """Log kercr's messages to stderr, each line once: the only place logging is configured.

    Parameters
    ----------
    verbosity : int
        -1: warnings and errors; 0: also INFO progress lines; 1 or more: also debug details.

    Returns
    -------
    logging.Logger
        The ``"kercr"`` logger: one handler (``HH:MM:SS LEVEL message``) and ``propagate = False``,
        so a handler on the root logger (TensorFlow's absl installs one at import) never prints
        a kercr line a second time. Calling it again only changes the level.
    """
    level = logging.WARNING if verbosity < 0 else logging.INFO if verbosity == 0 else logging.DEBUG
    logger = logging.getLogger(LOGGER)
    logger.setLevel(level)
    logger.propagate = False
    if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
        logger.addHandler(handler)
    return logger


@contextlib.contextmanager
def _command_logging(level: int):
    """:func:`setup_logging` for one command; the logger is as it was afterwards (a command run
    in a notebook or a test leaves no handler behind)."""
    logger = logging.getLogger(LOGGER)
    saved = logger.level, logger.propagate, list(logger.handlers)
    setup_logging(level)
    try:
        yield logger
    finally:
        logger.setLevel(saved[0])
        logger.propagate = saved[1]
        logger.handlers[:] = saved[2]


# --------------------------------------------------------------------------------------------
# TensorFlow's start-up lines
# --------------------------------------------------------------------------------------------
#: What TensorFlow >= 2.19 writes from C++ when it is imported, whatever TF_CPP_MIN_LOG_LEVEL says
#: (tensorflow/tensorflow#100442): absl's notice and glog INFO lines (``I0000 00:00:17.. 123 port.cc:153] ...``),
#: one of them two lines long.
_TF_NOISE = re.compile(r"WARNING: All log messages before absl::InitializeLog\(\) is called"
                       r"|I\d{4} [\d:.]+ +\d+ \S+:\d+\]"
                       r"|To enable the following instructions: .*rebuild TensorFlow with the appropriate compiler flags")


def _stderr_without_tensorflow_noise():
    """Catch the native stderr (file descriptor 2) and write it back without :data:`_TF_NOISE`."""
    return filtered_native_stderr(lambda line: not _TF_NOISE.match(line))


class _QuietLoader:
    """Runs a module's loader with the native stderr filtered; otherwise the loader itself."""

    def __init__(self, spec):
        self._spec, self._loader = spec, spec.loader

    def __getattr__(self, name):
        return getattr(self._loader, name)

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        # Later C++ log lines too (on a machine without a GPU TensorFlow logs a "failed call to
        # cuInit" error on its first operation): the variable is read when TensorFlow loads.
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        try:
            with _stderr_without_tensorflow_noise():
                self._loader.exec_module(module)
        finally:  # the module keeps no trace of this wrapper
            self._spec.loader = module.__loader__ = self._loader


class _QuietTensorFlowFinder:
    """A ``sys.meta_path`` finder that hands the first ``import tensorflow`` to :class:`_QuietLoader`."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "tensorflow":
            return None
        _remove_finder()
        import importlib.util

        spec = importlib.util.find_spec(fullname)  # the ordinary finders, this one removed
        if spec is not None and spec.loader is not None and hasattr(spec.loader, "exec_module"):
            spec.loader = _QuietLoader(spec)
        return spec


def _remove_finder() -> None:
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _QuietTensorFlowFinder)]


def quiet_tensorflow_import() -> bool:
    """Keep TensorFlow's C++ start-up lines off the terminal, should TensorFlow be imported later.

    TensorFlow >= 2.19 writes INFO lines from C++ when it is imported, whatever
    TF_CPP_MIN_LOG_LEVEL says (tensorflow/tensorflow#100442), above every command's own output.
    This imports nothing: it installs an import hook that, on the first ``import tensorflow``
    (by Keras, by kercr, by anyone), catches the native stderr during that import and writes it
    back without those lines (warnings, errors and anything else still show), and sets
    TF_CPP_MIN_LOG_LEVEL=3 for TensorFlow's later C++ lines. A command that never needs
    TensorFlow (``--help``; detection with a prebuilt LiteRT file) never imports it.

    Nothing is done when TensorFlow is imported already or TF_CPP_MIN_LOG_LEVEL is set (a
    user's own setting wins: 0 shows every line).

    Returns
    -------
    bool
        Whether the hook was installed (:func:`run` removes it when the command ends).
    """
    if "tensorflow" in sys.modules or "TF_CPP_MIN_LOG_LEVEL" in os.environ:
        return False
    if not any(isinstance(f, _QuietTensorFlowFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _QuietTensorFlowFinder())
    return True


# --------------------------------------------------------------------------------------------
# Running a command
# --------------------------------------------------------------------------------------------
#: The packages of the full install that a detection-only install (README) leaves out.
_FULL_INSTALL = {"tensorflow", "keras", "keras_tuner", "tensorboard"}


def _is_user_error(err: BaseException) -> bool:
    """kercr's own errors: bad input, options, configuration or files. kercr's exceptions
    (KercrDataError, ConfigError, ModelFileError, ExportError, MissingWeightsError, ...) are
    ValueError or FileNotFoundError subclasses; OSError also covers an unwritable output."""
    return isinstance(err, (ValueError, OSError))


def _one_line(err: BaseException) -> str:
    text = " ".join(line.strip() for line in str(err).splitlines() if line.strip())
    return text or type(err).__name__


def error_line(prog: str, err) -> str:
    """``PROG: error: MESSAGE`` on one line (argparse's form)."""
    return f"{prog}: error: {_one_line(err) if isinstance(err, BaseException) else err}"


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP inside :func:`signals_as_interrupt`: raised where the program is, as Ctrl-C's
    KeyboardInterrupt is, so that its cleanup runs; :func:`run` exits with 128 + the signal number."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


@contextlib.contextmanager
def signals_as_interrupt():
    """Within the block, SIGTERM and SIGHUP (``timeout``, Slurm's time limit, ``docker stop``, a closed
    terminal) raise :class:`Terminated` in the main thread, so that a command's ``except
    BaseException`` cleanup runs (a staged export is removed) instead of the process dying in place.
    A signal already ignored (SIGHUP under ``nohup``) stays ignored. It takes effect when Python runs
    again (not inside one long native call, such as a TFLite conversion). The previous handlers come
    back after the block; off the main thread it does nothing."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):
        raise Terminated(signum)

    previous = {}
    for name in ("SIGTERM", "SIGHUP"):
        signum = getattr(signal, name, None)
        if signum is not None and signal.getsignal(signum) is not signal.SIG_IGN:  # nohup ignores SIGHUP: so do we
            previous[signum] = signal.signal(signum, stop)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def run(parser: argparse.ArgumentParser, main, argv=None, *, interrupted: str = "interrupted") -> int:
    """Parse ``argv`` with ``parser`` and run ``main(parser, args)`` as a console script.

    Parameters
    ----------
    parser : argparse.ArgumentParser
        The command's parser (with :func:`add_verbosity`); its ``prog`` names the command in messages.
    main : callable
        ``main(parser, args) -> int``, the command's body: imports what it needs (TensorFlow,
        Keras) and returns the exit status.
    argv : list of str, optional
        Arguments (default: ``sys.argv[1:]``).
    interrupted : str
        What Ctrl-C prints after ``PROG:`` (e.g. how to resume).

    Returns
    -------
    int
        ``main``'s status; 1 when kercr's own error stopped it (one line on stderr:
        ``PROG: error: MESSAGE``; the traceback too with ``-v``); 130 after Ctrl-C, 128 + N after
        signal N inside :func:`signals_as_interrupt` (143 for SIGTERM). Bad options
        exit with status 2 from argparse (``SystemExit``), as ``--help`` exits with 0.
    """
    args = parser.parse_args(argv)
    level = verbosity(args)
    hooked = quiet_tensorflow_import()
    try:
        with _command_logging(level):
            try:
                return int(main(parser, args) or 0)
            except Terminated as stop:
                import signal

                sys.stderr.write(f"\n{parser.prog}: stopped by {signal.Signals(stop.signum).name}; {interrupted}\n")
                return 128 + stop.signum
            except KeyboardInterrupt:
                sys.stderr.write(f"\n{parser.prog}: {interrupted}\n")
                return EXIT_INTERRUPTED
            except ModuleNotFoundError as err:
                top = (err.name or "").split(".")[0]
                if top not in _FULL_INSTALL or importlib.util.find_spec(top) is not None:
                    raise  # installed, but a part of it is missing: a version mismatch, not this install
                if level > 0:
                    traceback.print_exc()
                sys.stderr.write(error_line(parser.prog, f"needs {top}, which this install lacks "
                                            "(a detection-only install runs kercr-detect alone): pip install "
                                            "kercr with its dependencies (README, 'A detection-only install')")
                                 + "\n")
                return EXIT_ERROR
            except Exception as err:
                if not _is_user_error(err):
                    raise
                if level > 0:
                    traceback.print_exc()
                sys.stderr.write(error_line(parser.prog, err) + "\n")
                if getattr(err, "exit_at_once", False):
                    _exit_at_once(EXIT_ERROR)
                return EXIT_ERROR
    finally:
        if hooked:
            _remove_finder()


def _exit_at_once(status: int) -> None:
    """Flush the output and end the process with ``status``, without the interpreter's teardown: for
    an error whose ``exit_at_once`` is true (a multi-worker run that lost a worker, where
    TensorFlow's teardown garbage-collects collectives that still wait for it and was seen to hang
    for minutes or for good; every file of the run is already whole)."""
    sys.stdout.flush()
    sys.stderr.flush()
    logging.shutdown()
    os._exit(status)


def parse_overrides(parser: argparse.ArgumentParser, items) -> dict:
    """``--set KEY=VALUE`` items as a dict (values parsed as Python literals when they are)."""
    overrides = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        if not sep or not key:
            parser.error(f"--set {item!r}: expected KEY=VALUE, e.g. --set num_layers=8")
        try:
            overrides[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            overrides[key] = value
    return overrides
