"""Throughput and peak memory of ``kercr.detect`` on a full 2048 x 4096 DECam-sized frame.

Every configuration (model x runtime x tile) runs in its own subprocess, so its peak resident memory
(``ru_maxrss``: Python, the model, every array of the call, and TensorFlow where it is loaded,
marked "(TF)": the Keras runtime, or a LiteRT run whose model has no card with its geometry) is
measured alone. Threads are capped at ``--threads`` (LiteRT ``num_threads`` = N; with the Keras
runtime TF intra-op = N, inter-op = 1; a LiteRT run that loads Keras for a model's geometry runs
nothing in TensorFlow). TFLite models are converted and cached (``KERCR_CACHE_DIR``) by a separate
subprocess first, so the measured process is the steady state of ``runtime="tflite-*"``: load the
cached ``.tflite``, normalize, tile, predict, stitch. Models are untrained (speed does not depend on
the weights). The first ``detect`` call (tracing, interpreter allocation) is a warm-up and not
timed. Tiles go ``--batch-size`` per call, by default as in ``detect``: 4 with TFLite, whose two
one-thread interpreters (``ParallelTFLiteRunner``, 2 threads) take two each, and 1 with Keras.
``--tta on all off`` measures with the four flips on candidate windows (``on``), on every pixel
(``all``) and without (``auto``, the default: what the model card says, on for the shipped model,
off for the untrained ones; ``two``: two views, as is and flipped along rows, on every pixel).
``--models`` also takes a saved ``.keras`` file (e.g. a run's ``last.keras``, for the speed of a
wider network).

Usage::

    .venv/bin/python benchmarks/bench_detect.py                      # the full table (~15 min on 2 cores)
    .venv/bin/python benchmarks/bench_detect.py --models deepcr_2_32 --runtimes tflite-int8 --tiles 1024
    .venv/bin/python benchmarks/bench_detect.py --models default --runtimes tflite-int8 --tiles 512 --tta on off

Prints a Markdown table (Mpix/s = frame pixels / median wall time of one ``detect`` call).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from kercr.weights import is_shipped_name, shipped_model_path  # light: paths only

PEERS = ("Peers on this machine (2 CPU threads): Cosmic-CoNN 0.33 Mpix/s at 1.5 GB peak (467k-parameter UNet, "
         "tile 1024); deepCR 0.50 Mpix/s at 1.5 GB (101k parameters); astroscrappy 1.0 Mpix/s.")


def _prepare(work: Path, models, shape):
    import numpy as np

    import kercr
    from kercr.data import NormalizationConfig, make_frame

    for name in models:
        if is_shipped_name(name) or name.endswith(".keras"):  # a shipped model, or a saved one
            continue
        d = work / name
        if not (d / f"{name}.keras").exists():
            d.mkdir(parents=True, exist_ok=True)
            kercr.build_model(name).save(d / f"{name}.keras")
            (d / "normalization.json").write_text(json.dumps(NormalizationConfig().to_dict()))
    frame = work / f"frame_{shape[0]}x{shape[1]}.npy"
    if not frame.exists():
        np.save(frame, make_frame(seed=0, shape=tuple(shape)).image_adu)
    return frame


# "on": the four flips on candidate windows (detect's default with flips); "all": on every pixel
# (tta_gate=0); "two": two views (as is, rows flipped) on every pixel
_TTA = {"auto": None, "on": True, "all": True, "two": True, "off": False}


def _worker(args) -> dict:
    threads = args.threads
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
    import resource

    import numpy as np

    if args.runtime == "keras":  # only Keras needs TensorFlow; a LiteRT run measures without it, as users run it
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    import kercr  # noqa: F401
    from kercr.data import augment
    from kercr.detection import detect

    if args.tta_mode == "two":
        augment.FLIP_AXES = ((), (1,))  # read by kercr.data.augment.flipped_views at each call

    image = np.load(args.frame)
    kw = dict(model=args.model_path, runtime=args.runtime, tile=args.tile, num_threads=threads,
              batch_size=args.batch_size, tta=_TTA[args.tta_mode],
              **({"tta_gate": 0.0} if args.tta_mode in ("all", "two") else {}))
    t0 = time.perf_counter()
    result = detect(image, **kw)
    first = time.perf_counter() - t0
    if args.convert_only:
        return {"convert_s": first}
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        result = detect(image, **kw)
        times.append(time.perf_counter() - t0)
    rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"first_s": first, "times_s": times, "median_s": float(np.median(times)), "peak_rss_mb": rss_kb / 1024,
            "tensorflow": "tensorflow" in sys.modules,
            "mpix_per_s": image.size / 1e6 / float(np.median(times)), "tile": list(result.tile),
            "n_tiles": result.n_tiles, "overlap": result.overlap, "runtime": result.runtime, "tta": result.tta}


def _run(cmd, env):
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["deepcr", "deepcr_2_32"],
                        help="registry names (untrained), 'default' or another shipped model's name, or saved .keras files")
    parser.add_argument("--runtimes", nargs="+", default=["keras", "tflite-float32", "tflite-int8"])
    parser.add_argument("--tiles", nargs="+", type=int, default=[512, 1024])
    parser.add_argument("--tta", nargs="+", choices=sorted(_TTA), default=["auto"],
                        help="flip averaging: on (four flips on candidate windows), all (four flips on every "
                             "pixel), two (two views on every pixel), off, or auto (the model card's choice; default)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=None,
                        help="tiles per call (default: detect()'s, 4 with TFLite, 1 with Keras)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--shape", nargs=2, type=int, default=[4096, 2048], metavar=("NY", "NX"))
    parser.add_argument("--workdir", default=None, help="models, frame and TFLite cache (default: a temp dir)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--convert-only", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model-path", help=argparse.SUPPRESS)
    parser.add_argument("--runtime", help=argparse.SUPPRESS)
    parser.add_argument("--tile", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--frame", help=argparse.SUPPRESS)
    parser.add_argument("--tta-mode", default="auto", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(_worker(args)))
        return 0

    work = Path(args.workdir or tempfile.mkdtemp(prefix="kercr-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    frame = _prepare(work, args.models, args.shape)
    env = {**os.environ, "KERCR_CACHE_DIR": str(work / "cache"), "TF_CPP_MIN_LOG_LEVEL": "2",
           "OMP_NUM_THREADS": str(args.threads)}
    rows = []
    for name in args.models:
        model_path = Path(name).resolve() if name.endswith(".keras") else work / name / f"{name}.keras"
        if is_shipped_name(name):
            model_path = shipped_model_path(name)
        for runtime in args.runtimes:
            base = [sys.executable, __file__, "--worker", "--model-path", str(model_path), "--runtime", runtime,
                    "--threads", str(args.threads), "--frame", str(frame), "--repeats", str(args.repeats)]
            if args.batch_size is not None:
                base += ["--batch-size", str(args.batch_size)]
            convert = None
            if runtime.startswith("tflite"):  # convert + cache once, outside the measured process
                convert = _run(base + ["--tile", "256", "--convert-only"], env).get("convert_s")
            for tile in args.tiles:
                for tta in args.tta:
                    r = _run(base + ["--tile", str(tile), "--tta-mode", tta], env)
                    r.update(model=name, runtime=runtime, tile_arg=tile, convert_s=convert, tta_arg=tta)
                    rows.append(r)
                    print(json.dumps(r), file=sys.stderr, flush=True)

    import keras

    import kercr

    ny, nx = args.shape
    print(f"\n`{' '.join([Path(sys.executable).name, 'benchmarks/bench_detect.py'] + (argv or sys.argv[1:]))}` "
          f"(kercr {kercr.__version__}, {args.threads} threads, frame {ny} x {nx}, batch {args.batch_size or '4 (TFLite) / 1 (Keras)'}, "
          f"median of {args.repeats})\n")
    print("| model | params | runtime | flips (tta) | tile (arg -> used) | overlap | Mpix/s | s / frame | "
          "peak RSS (MB) | first-use conversion (s) |")
    print("|---|---:|---|---|---|---:|---:|---:|---:|---:|")
    def _params(name):
        if is_shipped_name(name):
            return kercr.models.count_trainable(keras.saving.load_model(shipped_model_path(name), compile=False))
        if name.endswith(".keras"):
            return kercr.models.count_trainable(keras.saving.load_model(name, compile=False))
        return kercr.models.count_trainable(kercr.build_model(name))

    params = {n: _params(n) for n in args.models}
    for r in rows:
        if "error" in r:
            print(f"| {r['model']} | {params[r['model']]:,} | {r['runtime']} | {r['tta_arg']} | {r['tile_arg']} | | "
                  f"error: {r['error'][:80]} | | | |")
            continue
        conv = f"{r['convert_s']:.1f}" if r.get("convert_s") else ""
        flips = "two views" if r["tta_arg"] == "two" else "on" if r["tta"] else "off"
        print(f"| {r['model']} | {params[r['model']]:,} | {r['runtime']} | {flips} | {r['tile_arg']} -> "
              f"{r['tile'][0]}x{r['tile'][1]} ({r['n_tiles']}) | {r['overlap']} | {r['mpix_per_s']:.2f} | "
              f"{r['median_s']:.1f} | {r['peak_rss_mb']:.0f}{' (TF)' if r.get('tensorflow') else ''} | {conv} |")
    print(f"\n{PEERS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
