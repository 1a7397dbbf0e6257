"""Run kercr's TFLite files in the LiteRT interpreter, without TensorFlow.

This module imports numpy and ``ai_edge_litert`` only (not TensorFlow, not Keras): it is the
runtime of ``kercr.detect`` on machines with the detection-only install, and the exporter checks
its files with it. The files come from :func:`kercr.export.tflite.convert` (or ship prebuilt in
``kercr/weights/``): input ``image`` and output ``cr_probability`` are float32 ``[1, H, W, 1]``,
the image normalized by :func:`kercr.data.normalize` (the inpainting network's input has two
channels, ``[1, H, W, 2]``: :mod:`kercr.detection.inpainting`).

LiteRT writes ``INFO: Created TensorFlow Lite XNNPACK delegate for CPU.`` from C++ on stderr for
every interpreter it makes (once per worker process of ``kercr-detect --jobs``). No interpreter
option or environment variable turns it off (its logger does not read ``TF_CPP_MIN_LOG_LEVEL``),
so :class:`TFLiteRunner` filters that one line out of the native stderr while it makes an
interpreter, unless kercr logs at DEBUG level (``-v``).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from kercr._stderr import filtered_native_stderr
from kercr.data.normalization import normalize

__all__ = ["TFLiteRunner", "ParallelTFLiteRunner", "available_cpus"]

_XNNPACK_NOTICE = "INFO: Created TensorFlow Lite XNNPACK delegate for CPU.\n"


@contextlib.contextmanager
def _without_xnnpack_notice():
    """Interpreter creation without LiteRT's XNNPACK notice on stderr (shown with -v)."""
    if logging.getLogger("kercr").isEnabledFor(logging.DEBUG):
        yield
        return
    with filtered_native_stderr(lambda line: line != _XNNPACK_NOTICE):
        yield


class TFLiteRunner:
    """Run a kercr TFLite file with the LiteRT interpreter (batch 1, resizing as needed).

    Parameters
    ----------
    model : str, path-like or bytes
        ``.tflite`` file or flatbuffer.
    num_threads : int, optional
        CPU threads of the interpreter (and of its XNNPACK delegate). Default: LiteRT's (one
        thread); :class:`ParallelTFLiteRunner`'s default is every core.
    """

    def __init__(self, model, *, num_threads: int | None = None):
        self.path = None if isinstance(model, (bytes, bytearray)) else Path(model)
        self.num_threads = num_threads
        self._ran_shape = None  # the input shape of the last invoke that ran
        from ai_edge_litert.interpreter import Interpreter

        with _without_xnnpack_notice():  # printed when the delegate is applied, at the first allocation
            if isinstance(model, (bytes, bytearray)):
                self.interpreter = Interpreter(model_content=bytes(model), num_threads=num_threads)
            else:
                self.interpreter = Interpreter(model_path=str(Path(model)), num_threads=num_threads)
            self.interpreter.allocate_tensors()
        self._input = self.interpreter.get_input_details()[0]
        self._output = self.interpreter.get_output_details()[0]
        self.shape = tuple(int(s) for s in self._input["shape"])
        self.channels = self.shape[-1]
        self.resizable = bool(np.any(self._input["shape_signature"] < 0))

    def ops(self) -> dict:
        """Which ops the XNNPACK delegate runs and which stay on TFLite's own kernels.

        Returns
        -------
        dict
            ``{"xnnpack_partitions": int, "xnnpack": {op: count}, "tflite_kernels": {op: count}}``.
            A delegate node replaces a partition of the graph; its ops are found by walking back
            from the partition's outputs to its inputs.
        """
        nodes = self.interpreter._get_ops_details()
        delegates = [n for n in nodes if n["op_name"] == "DELEGATE"]
        producer = {int(t): n["index"] for n in nodes if n["op_name"] != "DELEGATE" for t in n["outputs"]}
        by_index = {n["index"]: n for n in nodes}
        covered = set()
        for d in delegates:
            boundary = {int(t) for t in d["inputs"]}
            stack = [int(t) for t in d["outputs"]]
            while stack:
                i = producer.get(stack.pop())
                if i is None or i in covered:
                    continue
                covered.add(i)
                stack.extend(int(t) for t in by_index[i]["inputs"] if int(t) >= 0 and int(t) not in boundary)

        def count(selected):
            out: dict = {}
            for n in selected:
                out[n["op_name"]] = out.get(n["op_name"], 0) + 1
            return dict(sorted(out.items()))

        others = [n for n in nodes if n["op_name"] != "DELEGATE"]
        return {"xnnpack_partitions": len(delegates),
                "xnnpack": count(n for n in others if n["index"] in covered),
                "tflite_kernels": count(n for n in others if n["index"] not in covered)}

    def _resize(self, height, width):
        if (1, height, width, self.channels) == self.shape:
            return
        if not self.resizable:
            raise ValueError(f"this TFLite model has a fixed input shape {list(self.shape)}; got a "
                             f"{height} x {width} image. Cut tiles of {self.shape[1]} x {self.shape[2]}.")
        self.interpreter.resize_tensor_input(self._input["index"], [1, height, width, self.channels])
        try:
            self.interpreter.allocate_tensors()
        except RuntimeError as err:  # XNNPACK "failed to reshape": a size the pooling cannot take
            self._refuse_size(height, width, err)
        self._input = self.interpreter.get_input_details()[0]
        self._output = self.interpreter.get_output_details()[0]
        self.shape = (1, height, width, self.channels)

    def _refuse_size(self, height, width, err):
        """Back to the last size that ran (so the runner stays usable), then a ValueError naming the size."""
        good = self._ran_shape or self.shape
        self.interpreter.resize_tensor_input(self._input["index"], list(good))
        self.interpreter.allocate_tensors()
        self._input = self.interpreter.get_input_details()[0]
        self._output = self.interpreter.get_output_details()[0]
        self.shape = good
        raise ValueError(f"LiteRT could not run this model on a {height} x {width} image ({str(err).splitlines()[0]}); "
                         "most often the height or width is not a multiple of the model's input multiple "
                         "(export.json's input_multiple; kercr.detect tiles for you).") from None

    def predict(self, normalized) -> np.ndarray:
        """The model's output (CR probability for a detector) of normalized images.

        Parameters
        ----------
        normalized : array_like, shape (H, W), (B, H, W) or (B, H, W, 1)
            Output of ``kercr.data.normalize``. A model of C > 1 input channels (the inpainting
            network: C = 2) takes (H, W, C) or (B, H, W, C).

        Returns
        -------
        numpy.ndarray, float32
            Shape of ``normalized`` for one channel; (H, W) or (B, H, W) for C > 1 channels.
        """
        x = np.asarray(normalized, dtype=np.float32)
        shape = x.shape
        c = self.channels
        if c > 1:
            if x.ndim not in (3, 4) or shape[-1] != c:
                raise ValueError(f"inputs have shape {shape}; this model takes {c} channels: pass (H, W, {c}) or "
                                 f"(B, H, W, {c}).")
            x = x[None] if x.ndim == 3 else x
            shape = shape[:-1]
        else:
            if x.ndim == 2:
                x = x[None]
            if x.ndim == 4:
                x = x[..., 0]
            if x.ndim != 3:
                raise ValueError(f"normalized images have shape {shape}; pass (H, W), (B, H, W) or (B, H, W, 1).")
            x = x[..., None]
        out = np.empty(x.shape[:3], np.float32)
        self._resize(x.shape[1], x.shape[2])
        for i, image in enumerate(x):
            self.interpreter.set_tensor(self._input["index"], image[None])
            try:
                self.interpreter.invoke()
            except RuntimeError as err:  # XNNPACK reshapes at the first invoke of a new size
                if self.shape == self._ran_shape:
                    raise
                self._refuse_size(x.shape[1], x.shape[2], err)
            self._ran_shape = self.shape
            out[i] = self.interpreter.get_tensor(self._output["index"])[0, :, :, 0]
        return out.reshape(shape)

    def predict_raw(self, image, *, config=None) -> np.ndarray:
        """Normalize one raw (H, W) image with ``kercr.data.normalize`` and predict.

        ``config``: the model's :class:`~kercr.data.NormalizationConfig`; default: the
        ``normalization.json`` of the export this file is in (``VERSION/normalization.json`` beside
        ``VERSION/tflite/``, or beside the file). Without either, a ValueError: other constants
        than the model was trained with give other probabilities, with no error.
        """
        if config is None:
            config = self._export_normalization()
        normalized, _ = normalize(image, config=config)
        return self.predict(normalized)

    def _export_normalization(self):
        from kercr.model_files import NORMALIZATION_FILE, read_normalization  # lazy: only predict_raw without config=

        near = [] if self.path is None else [self.path.parent / NORMALIZATION_FILE,
                                             self.path.parent.parent / NORMALIZATION_FILE]
        found = next((p for p in near if p.is_file()), None)
        if found is None:
            raise ValueError(f"predict_raw needs the model's normalization: pass config= (kercr.model_files."
                             f"read_normalization of its normalization.json); none lies beside "
                             f"{self.path or 'a model given as bytes'}.")
        return read_normalization(found)


#: Where Linux tells a container's CPU quota (``docker --cpus``, Kubernetes limits): cgroup v2, then v1.
CGROUP_ROOT = Path("/sys/fs/cgroup")


def cgroup_cpu_limit(root: Path = CGROUP_ROOT) -> int | None:
    """Cores this process's cgroup quota allows (quota / period, rounded up), or None without a quota."""
    for quota_file, period_file in ((root / "cpu.max", None),
                                    (root / "cpu" / "cpu.cfs_quota_us", root / "cpu" / "cpu.cfs_period_us")):
        try:
            fields = quota_file.read_text().split()
            if period_file is not None:
                fields.append(period_file.read_text().strip())
            quota, period = fields[0], float(fields[1])
            if quota in ("max", "-1") or period <= 0:
                return None
            return max(1, math.ceil(float(quota) / period))
        except (OSError, ValueError, IndexError):
            continue
    return None


def available_cpus() -> int:
    """CPU cores this process may run on: its affinity mask where the OS has one, capped by a
    container's CPU quota (cgroup ``cpu.max``), else the machine's count."""
    try:
        cores = max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        cores = max(1, os.cpu_count() or 1)
    limit = cgroup_cpu_limit()
    return cores if limit is None else min(cores, limit)


class ParallelTFLiteRunner:
    """Several LiteRT interpreters of one model, the images of each batch split between them.

    LiteRT's own threads split every layer of one image and meet after each layer; on this
    project's 2-core machine, two one-thread interpreters working on different tiles run the
    shipped int8 model 12-14 % faster than one two-thread interpreter (BENCHMARKS.md, "Speed
    of the shipped model"). Outputs are those of :class:`TFLiteRunner` (each image still goes
    through one interpreter). Calls are serialized by a lock, so one instance may be shared
    between threads.

    Parameters
    ----------
    model : str, path-like or bytes
        ``.tflite`` file or flatbuffer.
    num_threads : int, optional
        CPU threads in all. Default: the cores this process may use (:func:`available_cpus`).
    max_workers : int
        At most this many interpreters (default 2); ``num_threads`` is shared out between them.
        Each holds its own activation buffers, about 180 MB for the shipped int8 model on a
        512-pixel tile, so more would cost memory for little: the gain is on few cores.
    """

    def __init__(self, model, *, num_threads: int | None = None, max_workers: int = 2):
        threads = available_cpus() if num_threads is None else int(num_threads)
        if threads < 1:
            raise ValueError(f"num_threads={num_threads}: pass a number of CPU threads >= 1, or None for every core.")
        if int(max_workers) < 1:
            raise ValueError(f"max_workers={max_workers}: pass 1 or more interpreters.")
        workers = min(threads, int(max_workers))
        # Every thread asked for is used: the first ``threads % workers`` interpreters get one more (3: 2 + 1).
        self.runners = [TFLiteRunner(model, num_threads=threads // workers + (k < threads % workers))
                        for k in range(workers)]
        self._executor = ThreadPoolExecutor(workers, thread_name_prefix="kercr-tflite") if workers > 1 else None
        self._lock = threading.Lock()

    @property
    def workers(self) -> int:
        """Number of interpreters."""
        return len(self.runners)

    def predict(self, normalized) -> np.ndarray:
        """CR probability of normalized images; same shapes and values as :meth:`TFLiteRunner.predict`."""
        x = np.asarray(normalized, dtype=np.float32)
        one_image = x.ndim < 3 or (x.ndim == 3 and self.runners[0].channels > 1)
        if self._executor is None or one_image or x.shape[0] < 2:
            with self._lock:
                return self.runners[0].predict(x)
        parts = [part for part in np.array_split(np.arange(x.shape[0]), self.workers) if part.size]
        with self._lock:
            futures = [self._executor.submit(runner.predict, x[part]) for runner, part in zip(self.runners, parts)]
            return np.concatenate([f.result() for f in futures], axis=0)
