"""Many FITS files on every core or many machines: :func:`detect_files`, the engine of ``kercr-detect``.

Three ways to run, one output (each file as :func:`kercr.detection.files.detect_file` writes it,
mask data bit for bit the same):

- ``jobs=1``: in this process, one CCD after another.
- ``jobs=N``: ``N`` worker processes (``spawn``ed: no fork after LiteRT's threads exist), each
  loading the model once and detecting whole CCDs with ``num_threads // N`` threads, so workers
  x threads never exceed the cores. This process plans each file, hands out its CCDs (those of
  the next files too, at most ``2 N`` ahead) and writes each output once, CCDs in file order,
  through :func:`kercr.data.fits_io.new_fits_file`. Memory: about ``base + N x per-worker``, see
  :func:`detect_files`.
- ``scheduler="local"`` or ``"tcp://HOST:8786"``: one Dask task per file; each task runs the
  ``jobs=1`` path on a Dask worker, which writes its own output (every machine must see the
  inputs and the output directory under the same paths).

A bad file never stops the others: it is reported (:class:`FileOutcome`, one line each) and the
batch goes on. Outputs appear only complete (written under a hidden temporary name
``.<name>.partial-<pid>.<host>-<token>``, then renamed), so after a failure or a kill ``skip_existing=True``
(``kercr-detect --skip-existing``) does exactly what is missing. A hard kill leaves its temporary
files behind; the next run names them in a warning (:func:`leftover_partials`) and deletes nothing.
"""

from __future__ import annotations

import concurrent.futures
import concurrent.futures.process
import contextlib
import dataclasses
import glob
import logging
import numbers
import os
import sys
import time
from pathlib import Path

import numpy as np

from kercr.config import DETECT_CLEAN_METHODS, LOCAL_SCHEDULER, ConfigError
from kercr.data.cleaning import check_clean_method
from kercr.detection.files import (FilePlan, existing_output_differs, is_kercr_output, mask_extname, output_path,
                                   plain_copy, plan_file, select_extensions, write_output)
from kercr.detection.loading import load_model
from kercr.detection.runtimes import prepare_runtime, resolve_runtime
from kercr.detection.tiling import check_batch_size, check_tiling
from kercr.detection.workers import InProcess, Processes, model_reference, ordered

__all__ = ["BatchResult", "FileOutcome", "detect_files"]

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class FileOutcome:
    """What became of one input file.

    Attributes
    ----------
    path : str
        The input.
    status : {"done", "skipped", "failed"}
        Written; skipped (``skip_existing`` and the output exists, or the input is itself a
        kercr-detect output); or failed.
    output : str or None
        The output file (written, or the existing one skipped).
    reason : str or None
        Why it failed (one line naming the problem and the fix), or was skipped.
    ccds, megapixels, seconds : int, float, float
        CCDs written, their pixels in millions, and the wall-clock time of the file (s).
    undetected : list of str
        CCDs written with an empty mask because they hold nothing to detect (constant, every
        pixel ignored, too small: a dead amplifier, an all-NaN CCD); their masks say why (``KCRSTAT``).
    error : BaseException or None
        The exception (not sent back by Dask tasks: the reason is).
    """

    path: str
    status: str
    output: str | None = None
    reason: str | None = None
    ccds: int = 0
    megapixels: float = 0.0
    seconds: float = 0.0
    undetected: list = dataclasses.field(default_factory=list)
    error: BaseException | None = dataclasses.field(default=None, repr=False, compare=False)


@dataclasses.dataclass
class BatchResult:
    """The outcome of :func:`detect_files`: one :class:`FileOutcome` per input, in input order."""

    outcomes: list
    seconds: float

    def _with(self, status):
        return [o for o in self.outcomes if o.status == status]

    @property
    def done(self) -> list:
        return self._with("done")

    @property
    def skipped(self) -> list:
        return self._with("skipped")

    @property
    def failed(self) -> list:
        return self._with("failed")

    @property
    def ok(self) -> bool:
        """True when no file failed."""
        return not self.failed

    @property
    def ccds(self) -> int:
        return sum(o.ccds for o in self.outcomes)

    @property
    def megapixels(self) -> float:
        return sum(o.megapixels for o in self.outcomes)

    @property
    def undetected(self) -> int:
        """CCDs written with an empty mask (nothing to detect: ``KCRSTAT``)."""
        return sum(len(o.undetected) for o in self.outcomes)

    def summary(self) -> str:
        """``N files: a written, b skipped, c failed; K CCDs, X Mpix in T s (Y Mpix/s)``,
        and how many CCDs held nothing to detect, when any did."""
        n = len(self.outcomes)
        empty = f" ({self.undetected} with nothing to detect: empty masks, KCRSTAT)" if self.undetected else ""
        return (f"{n} file{'' if n == 1 else 's'}: {len(self.done)} written, {len(self.skipped)} skipped, "
                f"{len(self.failed)} failed; {self.ccds} CCDs{empty}, {self.megapixels:.1f} Mpix in "
                f"{self.seconds:.1f} s ({self.megapixels / max(self.seconds, 1e-9):.2f} Mpix/s)")


def _reason(err: BaseException) -> str:
    if isinstance(err, concurrent.futures.process.BrokenProcessPool):
        return (f"{str(err) + '; ' if str(err) else ''}a worker process died (out of memory, a crash in a native "
                "library, or detect_files called from a script without `if __name__ == '__main__':`, which "
                "spawned workers need; its error is on stderr above); rerun with --skip-existing, or this file "
                "alone with --jobs 1")
    text = " ".join(line.strip() for line in str(err).splitlines() if line.strip())
    # kercr's own errors (ValueError, OSError) name the file, problem and fix; others get their type.
    return text if isinstance(err, (ValueError, OSError)) and text else f"{type(err).__name__}: {text}"


# --------------------------------------------------------------------------------------------
# The files, in order
# --------------------------------------------------------------------------------------------
def _items(paths, *, out_dir, suffix, ext, dilate, skip_existing, made_by, copies):
    """For each file: a FileOutcome (skipped or failed before any detection), or its FilePlan
    followed by one task per CCD. ``made_by``: what an existing output must have been made with
    to be skipped (:func:`kercr.detection.files.existing_output_differs`). The plain copies of
    gzip/bzip2 inputs (``FilePlan.source``) are added to ``copies``."""
    for path in paths:
        try:  # one bad input (or an output folder that cannot be searched) must not stop the others
            first = _check(path, out_dir=out_dir, suffix=suffix, ext=ext, dilate=dilate, skip_existing=skip_existing,
                           made_by=made_by)
            if isinstance(first, FilePlan):
                first.source = plain_copy(first)  # decompressed once, not once per CCD read
                if first.source is not None:
                    copies.append(first.source)
        except Exception as err:  # KeyboardInterrupt does stop them
            first = FileOutcome(str(path), "failed", reason=_reason(err), error=err)
        yield first
        if isinstance(first, FilePlan):
            source = None if first.source is None else str(first.source)
            for hdu_index, extname in first.extensions:
                yield (str(first.path), hdu_index, extname, first.single, source)


def _check(path, *, out_dir, suffix, ext, dilate, skip_existing, made_by):
    """``path``'s FilePlan, or its FileOutcome when it is skipped or fails before any detection."""
    out = output_path(path, out_dir, suffix)
    if out.absolute() == Path(path).absolute():
        return FileOutcome(str(path), "failed", reason=f"{path}: its output would be the input itself "
                           f"(suffix {suffix!r}); pass a suffix (--suffix _crmask) or another directory (--out DIR).")
    if is_kercr_output(path):  # `kercr-detect *.fits` run again beside its own outputs
        return FileOutcome(str(path), "skipped",
                           reason="a kercr-detect output (KCRSRC and KCRSRCSH in its header), not an input")
    if skip_existing and out.exists():
        extensions, single = select_extensions(path, ext)  # the mask extensions this run would write
        differs = _output_differs(out, path, extensions, single, dilate=dilate, made_by=made_by)
        if differs:
            return FileOutcome(str(path), "failed", output=str(out), reason=differs)
        return FileOutcome(str(path), "skipped", output=str(out), reason=f"{out} exists")
    return plan_file(path, out_dir=out_dir, suffix=suffix, ext=ext, dilate=dilate)


class _NoBar:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def update(self, n=1):
        pass


def _bar(progress: bool, **kwargs):
    """A tqdm bar on stderr, or a stand-in without tqdm or progress."""
    if not progress:
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(file=sys.stderr, dynamic_ncols=True, **kwargs)


def _show_progress(progress) -> bool:
    """``progress``, or when None: stderr is a terminal and tqdm is installed."""
    if progress is not None:
        return bool(progress)
    try:
        import tqdm  # noqa: F401
    except ImportError:
        return False
    return sys.stderr.isatty()


def _run(paths, runner, **options):
    """Yield one FileOutcome per path, in order (:func:`_run_files`); the plain copies of compressed
    inputs are removed however it ends."""
    copies = []
    try:
        yield from _run_files(paths, runner, copies=copies, **options)
    finally:
        for copy in copies:
            copy.unlink(missing_ok=True)


def _run_files(paths, runner, *, out_dir, suffix, ext, dilate, skip_existing, save_probability, clean, made_by,
               progress, copies, log_prefix=None, numbering=None):
    """Yield one FileOutcome per path, in order; failures are caught and reported, not raised."""
    stream = ordered(runner.submit, _items(paths, out_dir=out_dir, suffix=suffix, ext=ext, dilate=dilate,
                                            skip_existing=skip_existing, made_by=made_by, copies=copies),
                     runner.window)
    for i, (item, _) in enumerate(stream, 1):
        prefix = f"[{_number(numbering, i)}] " if log_prefix is None else log_prefix
        if isinstance(item, FileOutcome):
            yield item
            continue
        plan, t0, taken = item, time.perf_counter(), 0

        def ccds(bar):
            nonlocal taken
            for _ in plan.extensions:
                future = next(stream)[1]
                taken += 1
                yield future.result()
                bar.update()  # written

        try:
            with _bar(progress, total=len(plan.extensions), desc=plan.path.name, unit="CCD", leave=False,
                      position=1) as bar:
                pixels, undetected = write_output(plan, ccds(bar), save_probability=save_probability, clean=clean,
                                                  log_prefix=prefix)
        except Exception as err:
            for _ in range(len(plan.extensions) - taken):  # the file's other CCDs: not needed any more
                _, future = next(stream, (None, None))
                if future is not None:
                    future.cancel()
            _remove_copy(plan)
            if (skip_existing and isinstance(err, FileExistsError) and plan.out.exists()
                    and _output_differs(plan.out, plan.path, plan.extensions, plan.single, dilate=dilate,
                                        made_by=made_by) is None):
                # Another run (an array job over overlapping lists) wrote this output meanwhile.
                yield FileOutcome(str(plan.path), "skipped", output=str(plan.out),
                                  reason=f"{plan.out} was written meanwhile by another run")
                continue
            yield FileOutcome(str(plan.path), "failed", reason=_reason(err), error=err,
                              seconds=time.perf_counter() - t0)
            continue
        _remove_copy(plan)
        yield FileOutcome(str(plan.path), "done", output=str(plan.out), ccds=len(plan.extensions),
                          megapixels=pixels / 1e6, seconds=time.perf_counter() - t0, undetected=undetected)


def _remove_copy(plan: FilePlan) -> None:
    """Remove the plain copy of a compressed input once its file is written or failed."""
    if plan.source is not None:
        plan.source.unlink(missing_ok=True)


def _output_differs(out, path, extensions, single, *, dilate, made_by) -> str | None:
    """Why the output ``out`` is not what this run would write for ``path``'s ``extensions``, or None
    (:func:`kercr.detection.files.existing_output_differs`, with the mask names this run would write)."""
    masks = [mask_extname(name, single) for _, name in extensions]
    return existing_output_differs(out, path, dilate=dilate, masks=masks, **made_by)


def _number(numbering, i: int) -> str:
    """``"i/n"`` of the ``i``-th file run (1-based), numbered within the whole input list when
    ``numbering`` (``(input numbers of the files run, n)``) is given."""
    return f"{i}/?" if numbering is None else f"{numbering[0][i - 1]}/{numbering[1]}"


def _report(number: str, outcome: FileOutcome) -> None:
    if outcome.status == "failed":
        logger.error("[%s] %s failed: %s", number, outcome.path, outcome.reason,
                     exc_info=outcome.error if logger.isEnabledFor(logging.DEBUG) else None)
    elif outcome.status == "skipped":
        logger.info("[%s] %s skipped: %s", number, outcome.path, outcome.reason)


def _logging_beside_bars(progress: bool):
    """Log lines printed above the progress bars instead of through them."""
    if not progress:
        return contextlib.nullcontext()
    from tqdm.contrib.logging import logging_redirect_tqdm

    return logging_redirect_tqdm(loggers=[logging.getLogger("kercr")])


def _run_local(paths, loaded, options, *, jobs, num_threads, progress, report, log_prefix, file_options,
               numbering=None) -> list:
    if jobs > 1:
        from kercr.export.litert import available_cpus  # lazy: kercr.export loads its exporter

        threads = max(1, int(num_threads or available_cpus()) // jobs)
        runner = Processes(model_reference(loaded), options, jobs, threads)
    else:
        runner = InProcess(loaded, options, num_threads)
    outcomes = []
    try:
        with _logging_beside_bars(progress), _bar(progress, total=len(paths), desc="files", unit="file") as bar:
            for i, outcome in enumerate(_run(paths, runner, progress=progress, log_prefix=log_prefix,
                                             numbering=numbering, **file_options), 1):
                if report:
                    _report(_number(numbering, i), outcome)
                outcomes.append(outcome)
                bar.update()
    except BaseException:  # Ctrl-C: the output being written is removed; stop the workers at once
        runner.close(now=True)
        raise
    runner.close()
    return outcomes


def _dask_file_task(path: str, model_ref: str, options: dict, threads, file_options: dict) -> FileOutcome:
    """One file on a Dask worker: the ``jobs=1`` path (model and interpreters are cached per worker process)."""
    runner = InProcess(load_model(model_ref), options, threads)
    outcome = next(_run([path], runner, progress=False, log_prefix="", **file_options))
    outcome.error = None  # the reason travels back; exceptions of other libraries may not unpickle
    return outcome


def _run_dask(paths, scheduler: str, loaded, options, *, jobs, num_threads, progress, report, file_options,
              numbering=None) -> list:
    try:  # heavy: only for --scheduler
        from distributed import Client, LocalCluster, as_completed
    except ImportError as err:
        raise ConfigError(f"scheduler={scheduler!r} needs Dask: pip install 'kercr[dask]' (dask[distributed]), "
                          "or run without a scheduler (--jobs N uses this machine's cores).") from err
    from kercr.export.litert import available_cpus  # lazy: kercr.export loads its exporter

    local = scheduler == LOCAL_SCHEDULER
    # Workers may run elsewhere: absolute paths (the machines must share the file system).
    paths = [Path(p).absolute() for p in paths]
    if file_options["out_dir"] is not None:
        file_options = {**file_options, "out_dir": Path(file_options["out_dir"]).absolute()}
    threads = num_threads or (max(1, available_cpus() // jobs) if local else 1)
    outcomes, pids = [None] * len(paths), set()
    with contextlib.ExitStack() as stack:
        if local:
            # Run after the cluster closes: the partial outputs its workers, killed mid-file by an interrupt, left.
            stack.callback(_remove_partials_of, paths, file_options, pids)
            with _children_ignore_sigint():  # Ctrl-C stops the batch here, which closes the cluster
                cluster = stack.enter_context(LocalCluster(n_workers=jobs, threads_per_worker=1, processes=True,
                                                           dashboard_address=None))
            client = stack.enter_context(Client(cluster))
            with contextlib.suppress(Exception):
                pids.update(client.run(os.getpid).values())
        else:
            client = stack.enter_context(_connect(Client, scheduler))
        try:
            workers = len(client.scheduler_info().get("workers", {}))
            logger.info("Dask scheduler %s: %d worker(s); %d file(s), one task each", client.scheduler.address,
                        workers, len(paths))
            if not workers:
                _wait_for_a_worker(client, scheduler)
            futures = {client.submit(_dask_file_task, str(p), model_reference(loaded), options, threads, file_options,
                                     pure=False): i for i, p in enumerate(paths)}
            with _logging_beside_bars(progress), _bar(progress, total=len(paths), desc="files", unit="file") as bar:
                for future in as_completed(futures):
                    i = futures[future]
                    try:
                        outcome = future.result()
                    except Exception as err:  # the task itself died (its worker killed, ...)
                        outcome = FileOutcome(str(paths[i]), "failed", reason=f"the Dask task failed: {_reason(err)}")
                    outcomes[i] = outcome
                    if report:
                        _report(_number(numbering, i + 1), outcome)
                    bar.update()
        except KeyboardInterrupt:
            if local:  # our own cluster goes down with us: its parts need not log each other's going
                with contextlib.suppress(Exception):
                    client.run(_quiet_dask_logs)
                _quiet_dask_logs()
            else:
                logger.warning("files already running on the cluster's workers are finished there (outputs appear "
                               "only complete); the others are not started")
            raise
        pids.clear()  # the batch ended: nothing of ours is left half-written
    return outcomes


def _remove_partials_of(paths, file_options, pids) -> None:
    """Remove the hidden partial outputs (:func:`kercr.data.fits_io.new_fits_file`) that the local
    Dask workers ``pids``, killed with their cluster, left for ``paths``."""
    from kercr.data.fits_write import partial_tag  # heavy: astropy (kercr.data)

    for path in paths:
        out = output_path(path, file_options["out_dir"], file_options["suffix"])
        for pid in pids:
            for partial in out.parent.glob(f".{glob.escape(out.name)}.partial-{glob.escape(partial_tag(pid))}-*"):
                with contextlib.suppress(OSError):
                    partial.unlink()


def _quiet_dask_logs() -> None:
    """Only Dask's critical lines from here on (a local cluster being shut down by Ctrl-C: its
    workers would log, with tracebacks, that the scheduler went away)."""
    logging.getLogger("distributed").setLevel(logging.CRITICAL)


@contextlib.contextmanager
def _children_ignore_sigint():
    """Processes started inside ignore SIGINT (an ignored signal stays ignored across ``exec``, and
    Python then installs no KeyboardInterrupt handler): on Ctrl-C only this process stops, and the
    cluster it closes ends them, instead of every Dask worker and nanny printing a traceback. A
    worker a nanny restarts later inherits the nanny's ignored SIGINT. This process ignores Ctrl-C
    too while the cluster starts (a few seconds)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


#: Seconds to reach a Dask scheduler, and to wait for its first worker.
SCHEDULER_TIMEOUT_S, WORKER_WAIT_S = 10, 60


def _connect(client_class, scheduler: str):
    """A Dask client of ``scheduler``, or an OSError that names the option and the fix."""
    try:
        return client_class(scheduler, timeout=f"{SCHEDULER_TIMEOUT_S}s")
    except (OSError, ValueError) as err:  # refused, timed out, unresolvable, a malformed address
        text = " ".join(str(err).split()) or type(err).__name__
        raise OSError(f"scheduler={scheduler!r} (--scheduler): cannot reach a Dask scheduler there ({text}). Start "
                      "one (`dask scheduler`) and pass its address (tcp://HOST:8786), check the host, port and "
                      f"firewall, or pass {LOCAL_SCHEDULER!r} for workers on this machine.") from None


def _wait_for_a_worker(client, scheduler: str) -> None:
    """Tasks sent to a scheduler without workers would wait for ever: wait a while, then say so."""
    logger.warning("Dask scheduler %s has no workers yet; waiting up to %d s for one", scheduler, WORKER_WAIT_S)
    try:
        client.wait_for_workers(1, timeout=WORKER_WAIT_S)
    except TimeoutError:
        raise OSError(f"the Dask scheduler {scheduler} has no workers after {WORKER_WAIT_S} s: start some "
                      f"(`dask worker {scheduler} --nthreads 1` on each machine, one per core), or pass "
                      f"{LOCAL_SCHEDULER!r} for workers on this machine.") from None


def _clashes(paths, out_dir, suffix) -> dict:
    """``{index: FileOutcome}`` for inputs whose output another, earlier input writes: failed for
    another file (``a.fits`` and ``a.fits.fz``, or one name in two folders with ``out_dir``: neither
    may hide the other), skipped for the same file listed again."""
    first, clashes = {}, {}
    for i, path in enumerate(paths):
        out = os.path.normcase(output_path(path, out_dir, suffix).absolute())
        if out in first and Path(paths[first[out]]).resolve() == Path(path).resolve():
            clashes[i] = FileOutcome(str(path), "skipped", reason=f"listed twice (the same file as #{first[out] + 1})")
        elif out in first:
            clashes[i] = FileOutcome(str(path), "failed", reason=(
                f"{path}: its output {output_path(path, out_dir, suffix)} is also that of {paths[first[out]]} "
                "(listed before it); run it on its own with another --out DIR or --suffix, or rename one."))
        first.setdefault(out, i)
    return clashes


def _check_jobs(jobs, runtime: str) -> int:
    if jobs is None:
        from kercr.export.litert import available_cpus  # lazy: kercr.export loads its exporter

        # Keras (TensorFlow) already spreads one CCD over every core, and each worker would import it.
        return 1 if runtime == "keras" else available_cpus()
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"jobs={jobs!r}: pass a number of worker processes >= 1 (None: every core).")
    return jobs


def detect_files(paths, *, out_dir=None, suffix="_crmask", model="default", ext="all", threshold=None, dilate=0,
                 save_probability=False, clean=None, runtime="auto", tta=None, tta_gate=None, tile=None, overlap=None,
                 batch_size=None, num_threads=None, exclude_saturated=True, jobs=None, scheduler=None,
                 skip_existing=False, progress=None, log_prefix=None, report=True) -> BatchResult:
    """Write a CR mask file for every FITS file, on every core or on a Dask cluster; a bad file stops nothing.

    Each output is what :func:`kercr.detection.files.detect_file` writes (mask data bit for bit
    the same whichever way it runs).

    Parameters
    ----------
    paths : path-like or sequence of path-like
        FITS files (``.fits``, ``.fits.fz``, ``.fits.gz``); never modified.
    out_dir, suffix, model, ext, threshold, dilate, save_probability, clean
        As :func:`kercr.detection.files.detect_file`.
    runtime, tta, tta_gate, tile, overlap, batch_size, exclude_saturated
        As :func:`kercr.detection.detect`.
    num_threads : int, optional
        CPU threads of the LiteRT interpreters. Without a scheduler: all workers together (default:
        every core this process may use), each worker getting ``num_threads // jobs`` (at least 1).
        With a scheduler: per task (default: ``cores // jobs`` for ``"local"``, 1 on a cluster,
        whose workers are meant to run one process per core with one thread each).
    jobs : int, optional
        Worker processes on this machine (with ``scheduler="local"``: Dask workers); each detects
        whole CCDs, so one DECam exposure (62 CCDs) keeps them all busy. Default: every core this
        process may use (``os.sched_getaffinity``), or 1 for the ``keras`` runtime (TensorFlow spreads
        one CCD over every core already). Peak memory, measured on 2k x 4k DECam CCDs (int8 LiteRT,
        four flips, 512-pixel tiles; BENCHMARKS.md, "Whole exposures: --jobs"): about
        ``0.15 GB + jobs x 0.42 GB`` (this process, holding at most ``2 x jobs`` CCD results of
        8 MB, and 32 MB more each with ``save_probability`` or ``clean``; then each worker). With
        ``jobs=1`` everything runs here: about 0.6 GB (two LiteRT interpreters).
    scheduler : str, optional
        None: this machine (``jobs``). ``"local"``: a Dask ``LocalCluster`` of ``jobs`` worker
        processes. Else the address of a running Dask scheduler (``"tcp://HOST:8786"``): one task
        per file, each written by the worker that ran it; every worker must see the inputs and
        ``out_dir`` under the same paths. Needs ``pip install 'kercr[dask]'``.
    skip_existing : bool
        Skip (and count) inputs whose output exists, to finish a batch that failed or was killed
        (outputs appear only complete). Otherwise an existing output fails that file alone.
    progress : bool, optional
        tqdm progress bars on stderr, overall and per file (None: when stderr is a terminal).
    log_prefix : str, optional
        Put in front of each file's log lines (default ``"[i/n] "``).
    report : bool
        Log one line per failed or skipped file and the summary.

    Returns
    -------
    BatchResult
        One :class:`FileOutcome` per input, in input order; ``.summary()``, ``.ok``.

    Raises
    ------
    kercr.detection.ModelLoadError, kercr.weights.MissingWeightsError
        The model cannot be loaded (before any file is read).
    ValueError
        A bad option (``jobs``, ``runtime``; a ``keras.Model`` instance with ``jobs > 1`` or a scheduler).
    kercr.config.ConfigError
        A scheduler without Dask installed.
    OSError
        The scheduler cannot be reached.
    """
    paths = [Path(paths)] if isinstance(paths, (str, os.PathLike)) else [Path(p) for p in paths]
    t0, started = time.perf_counter(), time.time()
    if out_dir is not None and Path(out_dir).exists() and not Path(out_dir).is_dir():
        raise ValueError(f"out_dir={str(out_dir)!r} is a file, not a directory: pass a directory for the outputs "
                         "(kercr-detect --out DIR; it is created if needed).")
    loaded = load_model(model)  # a bad model stops the batch before any file
    resolved = resolve_runtime(runtime, loaded)
    jobs = _check_jobs(jobs, resolved)
    if jobs > 1 and scheduler is None and len(paths) == 1:
        with contextlib.suppress(Exception):  # no more workers than CCDs; a bad file is reported below
            jobs = min(jobs, len(select_extensions(paths[0], ext)[0]))
    options = dict(threshold=threshold, dilate=dilate, save_probability=save_probability, clean=clean,
                   runtime=runtime, tta=tta, tta_gate=tta_gate, tile=tile, overlap=overlap, batch_size=batch_size,
                   exclude_saturated=exclude_saturated)
    if threshold is not None and (isinstance(threshold, (bool, np.bool_)) or not isinstance(threshold, numbers.Real)
                                  or not 0.0 <= threshold <= 1.0):
        raise ValueError(f"threshold={threshold!r} must be a probability in [0, 1] (None: the model's).")
    # Options that would fail every file stop the batch before any file, as a bad model does.
    check_tiling(loaded, tile, overlap, resolved)
    check_batch_size(batch_size)
    # The method's name (True is "median"), as the outputs record it.
    clean = None if clean is None or clean is False else check_clean_method("median" if clean is True else clean,
                                                                            DETECT_CLEAN_METHODS)
    options["clean"] = clean
    prepare_runtime(loaded, resolved)  # converted once here, not in every worker; a corrupt file stops the batch
    made_by = dict(model_name=loaded.name, clean=clean, save_probability=bool(save_probability), threshold=threshold,
                   runtime=runtime, tta=tta, tta_gate=tta_gate, exclude_saturated=bool(exclude_saturated))
    file_options = dict(out_dir=out_dir, suffix=suffix, ext=ext, dilate=dilate, skip_existing=skip_existing,
                        save_probability=save_probability, clean=clean, made_by=made_by)
    clashes = _clashes(paths, out_dir, suffix)
    # Log lines number files within the whole list: "[i/n]", i counting the inputs done before the clashes.
    numbering = ([i + 1 for i in range(len(paths)) if i not in clashes], len(paths))
    common = dict(jobs=jobs, num_threads=num_threads, progress=_show_progress(progress), report=report,
                  numbering=numbering)
    if report:
        for i, outcome in clashes.items():
            _report(f"{i + 1}/{len(paths)}", outcome)
    run = [p for i, p in enumerate(paths) if i not in clashes]
    if scheduler is None:
        done = _run_local(run, loaded, options, log_prefix=log_prefix, file_options=file_options, **common)
    else:
        done = _run_dask(run, str(scheduler), loaded, options, file_options=file_options, **common)
    done = iter(done)
    outcomes = [clashes[i] if i in clashes else next(done) for i in range(len(paths))]
    result = BatchResult(outcomes, time.perf_counter() - t0)
    if report:
        logger.log(logging.INFO if result.ok else logging.WARNING, "%s", result.summary())
        leftovers = leftover_partials(paths, out_dir, suffix, before=started)
        if leftovers:
            logger.warning("%d leftover partial output%s of an interrupted run (a kill, a power cut), e.g. %s: "
                           "incomplete, never read by kercr; delete them once no kercr-detect writes to %s",
                           len(leftovers), "" if len(leftovers) == 1 else "s", leftovers[0],
                           "that folder" if len({p.parent for p in leftovers}) == 1 else "those folders")
    return result


def leftover_partials(paths, out_dir=None, suffix="_crmask", *, before=None) -> list[Path]:
    """The hidden temporary files (``.<output name>.partial-<pid>.<host>-<token>``) that a killed run left
    beside the outputs of ``paths``, oldest first; only those last written before ``before`` (seconds
    since the epoch; default: all), so a run writing there now is left out. Nothing is deleted."""
    wanted: dict[Path, set] = {}
    for path in paths:
        out = output_path(path, out_dir, suffix)
        wanted.setdefault(out.parent, set()).add(f".{out.name}.partial-")
    found = []
    for folder, prefixes in wanted.items():
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue
        for entry in entries:
            name = entry.name
            cut = name.rfind(".partial-")  # the output's own name may hold ".partial-"; the token never does
            if cut > 0 and name[:cut + len(".partial-")] in prefixes:
                try:
                    mtime = entry.stat().st_mtime
                except OSError:
                    continue
                if before is None or mtime < before:
                    found.append((mtime, Path(entry.path)))
    return [p for _, p in sorted(found)]
