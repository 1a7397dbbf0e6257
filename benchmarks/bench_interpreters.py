"""One LiteRT interpreter with N threads against N one-thread interpreters, on the shipped int8 model.

Two measurements, in one process, on this machine's CPU:

1. Seconds per call of four 512 x 480 tiles for ``TFLiteRunner(num_threads=None | 1 | 2)``
   (``None`` leaves the thread count to LiteRT).
2. ``kercr.detect`` on one 2048 x 4096 frame with its default tiling, the predictor being in turn
   one two-thread ``TFLiteRunner`` and a two-interpreter ``ParallelTFLiteRunner``, alternated
   ``--repeats`` times so that drifts of the machine's speed hit both alike; with and without the
   four-flip average. Mpix/s per run and the medians.

Usage::

    .venv/bin/python benchmarks/bench_interpreters.py [--repeats 4]
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--model", default="default",
                        help="a shipped model's name (default: the default model), e.g. global, or a model file")
    args = parser.parse_args(argv)

    import numpy as np

    import kercr
    from kercr.detection import runtimes
    from kercr.detection.loading import load_model
    from kercr.export.litert import ParallelTFLiteRunner, TFLiteRunner

    path = str(runtimes._tflite_model(load_model(args.model), "tflite-int8"))
    tiles = np.random.default_rng(0).normal(0, 1, (4, 512, 480)).astype(np.float32)
    print("| interpreter threads | s per call of 4 tiles of 512 x 480 |\n|---|---:|")
    for n in (None, 1, 2):
        runner = TFLiteRunner(path, num_threads=n)
        runner.predict(tiles)
        t = time.perf_counter()
        runner.predict(tiles)
        runner.predict(tiles)
        print(f"| {n} | {(time.perf_counter() - t) / 2:.3f} |")

    image = np.random.default_rng(1).normal(1000, 10, (2048, 4096)).astype(np.float32)
    runners = {"one two-thread interpreter": TFLiteRunner(path, num_threads=2),
               "two one-thread interpreters": ParallelTFLiteRunner(path, num_threads=2)}
    original = runtimes._raw_predictor  # what detect's predictors are made from
    print("\n| flips | predictor | Mpix/s per run | median |\n|---|---|---|---:|")
    try:
        for tta in (True, False):
            speed = {name: [] for name in runners}
            for _ in range(args.repeats):
                for name, runner in runners.items():
                    runtimes._raw_predictor = lambda loaded, runtime, n, r=runner: (r.predict, False)
                    kercr.detect(image, model=args.model, tta=tta, runtime="tflite-int8")  # tiles allocated
                    t = time.perf_counter()
                    kercr.detect(image, model=args.model, tta=tta, runtime="tflite-int8")
                    speed[name].append(image.size / (time.perf_counter() - t) / 1e6)
            for name, values in speed.items():
                print(f"| {'on' if tta else 'off'} | {name} | {', '.join(f'{v:.2f}' for v in values)} | "
                      f"{np.median(values):.2f} |")
    finally:
        runtimes._raw_predictor = original
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
