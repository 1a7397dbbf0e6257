"""Where ``kercr-detect``'s CCDs are detected: in this process, or in spawned worker processes.

Internal to :mod:`kercr.detection.batch`. A runner's ``submit((path, hdu_index, extname, single, source))``
returns a future of :class:`kercr.detection.files.CCDOutput`; ``window`` is how many CCD tasks may
be in flight ahead of the writer (:func:`ordered`), which bounds the memory of the results waiting.

- :class:`InProcess` (``jobs=1``): a CCD is detected when its result is asked for.
- :class:`Processes` (``jobs=N``): a ``ProcessPoolExecutor`` of ``spawn``ed workers (never
  ``fork``: LiteRT's and TensorFlow's threads would not survive it), each loading the model and
  building its LiteRT interpreters once (:func:`init_worker`), with ``threads`` threads, so that
  workers x threads stay within the cores. Ctrl-C is left to the parent, which ends the pool.
"""

from __future__ import annotations

import collections
import concurrent.futures
import concurrent.futures.process
import logging
import os
import sys

from kercr.detection.files import detect_ccd
from kercr.detection.loading import load_model
from kercr.detection.runtimes import predictor, resolve_runtime, resolve_tta
from kercr.weights import is_shipped_name

__all__ = ["InProcess", "Processes", "model_reference", "ordered"]

logger = logging.getLogger(__name__)


class Lazy:
    """A future computed when its result is asked for (``jobs=1``: one CCD in memory at a time)."""

    def __init__(self, fn, *args, **kwargs):
        self._call = (fn, args, kwargs)

    def result(self):
        fn, args, kwargs = self._call
        return fn(*args, **kwargs)

    def cancel(self) -> bool:
        return True


class InProcess:
    """Detects each CCD in this process, when the writer asks for it."""

    window = 1

    def __init__(self, model, options: dict, num_threads):
        self._model, self._options, self._threads = model, options, num_threads

    def submit(self, task) -> Lazy:
        path, hdu_index, extname, single, source = task
        return Lazy(detect_ccd, path, hdu_index, extname, single=single, source=source, model=self._model,
                     num_threads=self._threads, **self._options)

    def close(self, now: bool = False) -> None:
        pass


_WORKER: dict = {}  # the model and options of a worker process, set once by init_worker


def init_worker(model_ref: str, options: dict, threads: int, log_level: int) -> None:
    """Load the model and build its interpreters once per worker process."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C stops the batch in the parent, which ends the workers
    _exit_with_parent()
    os.environ.setdefault("TF_NUM_INTRAOP_THREADS", str(threads))  # the keras runtime: TF's threads too
    os.environ.setdefault("TF_NUM_INTEROP_THREADS", "1")
    # The keras runtime's later TensorFlow C++ lines (its start-up lines, printed whatever this says,
    # show once per worker: --jobs defaults to 1 for that runtime).
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    # A spawned process has no logging set up: its warnings go to stderr like the parent's.
    log = logging.getLogger("kercr")
    log.propagate = False
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s [worker %(process)d] %(message)s", "%H:%M:%S"))
    log.addHandler(handler)
    # The parent loaded this model already and said what it had to (its warnings); -vv's debug lines stay.
    log.setLevel(log_level if log_level <= logging.DEBUG else max(log_level, logging.ERROR))
    try:
        loaded = load_model(model_ref)
        predictor(loaded, resolve_runtime(options["runtime"], loaded), tta=resolve_tta(options["tta"], loaded),
                  num_threads=threads)  # LiteRT interpreters are cached per (file, threads): built here, once
    finally:
        log.setLevel(log_level)
    _WORKER.update(model=loaded, options=options, threads=threads)


def _exit_with_parent() -> None:
    """End this worker when its parent dies without ending it (``kill -9``, out of memory): the pool's
    queue never closes then (each worker holds its writing end too), and the worker would wait for a
    CCD forever, holding its model's memory."""
    import multiprocessing
    import threading

    parent = multiprocessing.parent_process()
    if parent is None:
        return

    def watch():
        parent.join()  # returns when the parent's end of the process sentinel closes: it has exited
        os._exit(1)

    threading.Thread(target=watch, name="kercr-parent-watch", daemon=True).start()


def ccd_task(task):
    """One CCD in a worker process, with the model and options :func:`init_worker` set."""
    path, hdu_index, extname, single, source = task
    return detect_ccd(path, hdu_index, extname, single=single, source=source, model=_WORKER["model"],
                      num_threads=_WORKER["threads"], **_WORKER["options"])


class _Retried:
    """A worker's CCD future that survives the death of another worker once.

    When a worker dies (out of memory, a crash in a native library), every CCD in flight fails
    with ``BrokenProcessPool``, the culprit's and the innocent ones alike. Each is detected again,
    once, in the restarted pool; a CCD that breaks the pool a second time is the culprit, and its
    error names it.
    """

    def __init__(self, runner, task, future):
        self._runner, self._task, self._future, self._tries = runner, task, future, 1

    def result(self):
        while True:
            try:
                return self._future.result()
            except concurrent.futures.process.BrokenProcessPool as err:
                path, _, extname, _, _ = self._task
                if self._tries > 1:
                    raise concurrent.futures.process.BrokenProcessPool(
                        f"{path} [{extname}]: a worker process died twice while detecting this CCD") from err
                logger.warning("a worker process died while %s [%s] was being detected; detecting it again",
                               path, extname)
                self._tries += 1
                self._future = self._runner._submit(self._task)

    def cancel(self) -> bool:
        return self._future.cancel()


class Processes:
    """``jobs`` spawned worker processes, started at the first CCD and restarted if one dies (the
    CCDs in flight then are detected again, once: :class:`_Retried`).

    ``task`` is the function the workers run on each ``(path, hdu_index, extname, single, source)``
    (default :func:`ccd_task`; tests pass one that crashes).
    """

    def __init__(self, model_ref: str, options: dict, jobs: int, threads: int, task=None):
        self.window = 2 * jobs  # one CCD running and one queued per worker: none waits, memory bounded
        self._args = (model_ref, options, threads, logging.DEBUG if logger.isEnabledFor(logging.DEBUG)
                      else logging.WARNING)
        self._jobs, self._executor, self._task = jobs, None, task or ccd_task

    def _start(self):
        import multiprocessing

        self._executor = concurrent.futures.ProcessPoolExecutor(
            self._jobs, mp_context=multiprocessing.get_context("spawn"), initializer=init_worker,
            initargs=self._args)

    def submit(self, task) -> _Retried:
        return _Retried(self, task, self._submit(task))

    def _submit(self, task):
        if self._executor is None:
            self._start()
        try:
            return self._executor.submit(self._task, task)
        except concurrent.futures.process.BrokenProcessPool:  # a worker died: a new pool for what follows
            logger.warning("a worker process died; starting new ones")
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._start()
            return self._executor.submit(self._task, task)

    def close(self, now: bool = False) -> None:
        """End the workers: after their running CCDs, or ``now`` (Ctrl-C: a 2k x 4k CCD takes seconds)."""
        if self._executor is None:
            return
        if now:  # ProcessPoolExecutor.terminate_workers() from Python 3.14; its processes before that
            terminate = getattr(self._executor, "terminate_workers", None)
            if terminate is not None:
                terminate()
                return
            for process in list((getattr(self._executor, "_processes", None) or {}).values()):
                process.terminate()
        self._executor.shutdown(wait=True, cancel_futures=True)


def model_reference(loaded) -> str:
    """What a worker process passes to :func:`load_model` to get ``loaded`` (it cannot receive a model)."""
    if loaded.path is None:
        raise ValueError(f"model {loaded.name} is a keras.Model instance, which worker processes cannot receive: "
                         "save it (model.save('m.keras')) and pass the path, or use jobs=1.")
    if is_shipped_name(loaded.name):  # "default" or a named shipped model: the worker resolves it itself
        return loaded.name
    return str(loaded.path)


def ordered(submit, items, window: int):
    """``(item, future or None)`` in the order of ``items``, each task submitted at most ``window`` tasks ahead."""
    pending, running = collections.deque(), 0
    for item in items:
        future = submit(item) if isinstance(item, tuple) else None
        pending.append((item, future))
        running += future is not None
        while running >= window:
            item, future = pending.popleft()
            running -= future is not None
            yield item, future
    yield from pending
