"""Native libraries' start-up lines kept off the terminal: one filter of file descriptor 2.

TensorFlow's C++ start-up lines and LiteRT's XNNPACK notice are written by native code straight
to file descriptor 2, past Python's ``sys.stderr`` and logging. :func:`filtered_native_stderr`
catches fd 2 for the duration of a block and writes back every line that ``keep`` accepts, so
warnings and errors still show. Standard library only (layer 0): the CLI layer and the LiteRT
runners both use it.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import threading

__all__ = ["filtered_native_stderr"]

_LOCK = threading.Lock()  # fd 2 is one per process: two threads must not swap it at once


@contextlib.contextmanager
def filtered_native_stderr(keep):
    """Catch file descriptor 2 inside the block; afterwards write back the lines ``keep(line)`` accepts.

    Parameters
    ----------
    keep : callable
        ``keep(line: str) -> bool`` for each caught line (newline included).
    """
    with _LOCK:
        sys.stderr.flush()
        try:
            saved = os.dup(2)
        except OSError:  # no file descriptor 2 (a GUI or service process): nothing reaches a terminal anyway
            yield
            return
        with tempfile.TemporaryFile() as caught:
            os.dup2(caught.fileno(), 2)
            try:
                yield
            finally:
                sys.stderr.flush()
                os.dup2(saved, 2)
                os.close(saved)
                caught.seek(0)
                lines = caught.read().decode(errors="replace").splitlines(keepends=True)
                rest = "".join(line for line in lines if keep(line))
                if rest:  # anything else (warnings, errors) still shows
                    sys.stderr.write(rest)
                    sys.stderr.flush()
