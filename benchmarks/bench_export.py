"""Latency and throughput of kercr's export formats on the CPU, plus file sizes.

Runtimes: Keras (TensorFlow backend, ``predict_on_batch`` on a normalized tile), the SavedModel's
``serving_default`` (raw pixels; its time includes the in-graph normalization), and the TFLite
float32 / float16 / dynamic-range / int8 files in the LiteRT interpreter (normalized tile; the
numpy normalization's own time is a separate row). Batch 1, median of ``--repeats`` runs after
one warm-up, on ``--threads`` CPU threads (TF intra-op threads and the interpreter's threads).
Models are untrained registry models: speed does not depend on the weights.

    .venv/bin/python benchmarks/bench_export.py                       # deepcr 256+1024, transunet 256
    .venv/bin/python benchmarks/bench_export.py --models deepcr --tiles 256 --repeats 5

Prints a Markdown table (and the execution path of each runtime) to stdout.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path


def _args(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="deepcr,transunet", help="registry names (transunet runs at its 256 tile only)")
    p.add_argument("--tiles", default="256,1024", help="tile sides for the convolutional models")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=10, help="timed runs per cell (1024 tiles use a third, >= 3)")
    p.add_argument("--quantize", default="none,float16,dynamic,int8")
    return p.parse_args(argv)


def _time(fn, repeats):
    fn()  # warm-up (graph tracing, XNNPACK packing, allocation)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _cpu_name():
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main(argv=None) -> int:
    args = _args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    import keras

    import kercr
    from kercr.data.normalization import normalize
    from kercr.export import export_model
    from kercr.export.parity import synthetic_patches
    from kercr.export.litert import TFLiteRunner
    from kercr.export.tflite import VARIANT_NAMES

    try:
        from tensorflow.python.util import _pywrap_util_port
        onednn = bool(_pywrap_util_port.IsMklEnabled())
    except Exception:  # private API; only for the label
        onednn = None
    tf_path = ("TF CPU kernels with oneDNN (fp32, AVX-512)" if onednn else "TF CPU (Eigen) kernels" if onednn is False
               else "TF CPU kernels")
    quantize = args.quantize.split(",")
    rows, paths = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            keras.utils.set_random_seed(0)
            model = kercr.build_model(name)
            fixed = model.input_shape[1]
            tiles = [int(fixed)] if fixed else [int(t) for t in args.tiles.split(",")]
            keras_file = Path(tmp) / f"{name}.keras"
            model.save(keras_file)
            result = export_model(keras_file, Path(tmp) / "out", name=name, quantize=quantize, tile=tiles[0],
                                  calibration_patches=8, validation_patches=2)
            sizes = {"Keras (.keras)": keras_file.stat().st_size,
                     "SavedModel": _dir_size(result.path) - sum((result.path / f).stat().st_size for f in result.files
                                                                if f.startswith("tflite/") or f.endswith(".json"))}
            serve = tf.saved_model.load(str(result.path)).signatures["serving_default"]
            runners = {VARIANT_NAMES[q]: TFLiteRunner(result.path / "tflite" / f"{name}_{VARIANT_NAMES[q]}.tflite",
                                                      num_threads=args.threads) for q in quantize}
            for variant, runner in runners.items():
                sizes[f"TFLite {variant}"] = (result.path / "tflite" / f"{name}_{variant}.tflite").stat().st_size
            for tile in tiles:
                repeats = args.repeats if tile <= 256 else max(3, args.repeats // 3)
                raw = synthetic_patches(1, tile=tile, seed=0).image_adu[0]
                normalized = normalize(raw)[0]
                x = normalized[None, :, :, None]
                mp = tile * tile / 1e6
                cells = {
                    "normalize (numpy)": (lambda: normalize(raw), "numpy"),
                    "Keras (.keras)": (lambda: model.predict_on_batch(x), tf_path),
                    "SavedModel": (lambda: serve(image=tf.constant(raw[None, :, :, None])), tf_path + ", normalization in graph"),
                }
                for variant, runner in runners.items():
                    cells[f"TFLite {variant}"] = (lambda r=runner: r.predict(x), None)
                for label, (fn, path) in cells.items():
                    seconds = _time(fn, repeats)
                    if label.startswith("TFLite"):
                        ops = runners[label.split()[1]].ops()
                        left = ", ".join(f"{k} x{v}" for k, v in ops["tflite_kernels"].items()) or "none"
                        path = (f"XNNPACK ({ops['xnnpack_partitions']} partition(s)): "
                                f"{', '.join(f'{k} x{v}' for k, v in ops['xnnpack'].items()) or 'nothing'}; "
                                f"TFLite kernels: {left}")
                    paths[(name, label)] = path
                    rows.append((name, tile, label, seconds * 1e3, mp / seconds, sizes.get(label)))
                    print(f"{name} {tile} {label}: {seconds * 1e3:.1f} ms", file=sys.stderr, flush=True)

    print(f"CPU: {_cpu_name()}, {args.threads} threads; TensorFlow {tf.__version__}, Keras {keras.__version__}, "
          f"ai-edge-litert {_litert_version()}; batch 1, median of {args.repeats} runs (1024: of "
          f"{max(3, args.repeats // 3)}).\n")
    print("| model | tile | runtime | latency (ms) | MP/s | file size (MB) |")
    print("|---|---:|---|---:|---:|---:|")
    for name, tile, label, ms, mps, size in rows:
        size_txt = "" if size is None else f"{size / 1e6:.2f}"
        print(f"| {name} | {tile} | {label} | {ms:.1f} | {mps:.2f} | {size_txt} |")
    print("\nExecution path per runtime:\n")
    for (name, label), path in paths.items():
        print(f"- {name}, {label}: {path}")
    return 0


def _litert_version():
    try:
        from importlib.metadata import version
        return version("ai-edge-litert")
    except Exception:
        return "?"


if __name__ == "__main__":
    sys.exit(main())
