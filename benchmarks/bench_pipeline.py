"""Is the input pipeline the bottleneck? Patches per second in, against patches per second trained.

Measures, on this machine's CPUs:

1. the PyDataset loader that ``kercr-train`` uses (:class:`kercr.data.loader.PatchBatches` over
   synthetic DECam-like 4096 x 2048 frames), single-threaded as ``fit`` calls it;
2. the tf.data reader of ``kercr-train --data DIR`` (:func:`kercr.data.pipeline.read_tfrecords`)
   over shards that ``kercr-prepare`` (:func:`kercr.data.pipeline.prepare_shards`) cut from the
   same frames; the frames are made while preparing, so this times the reading alone;
3. the training step rate of the default recipe (``deepcr``, 256 x 256 patches, batches of 16,
   DiceBCE loss) on the same CPUs;

and prints the ratios (pipeline rate / training rate; above 1 means training never waits).

Usage::

    python benchmarks/bench_pipeline.py [--model deepcr] [--patch-size 256] [--batch-size 16] [--frames 3]
                                        [--steps 6] [--threads 2] [--filters 48,96] [--mixed-precision]
                                        [--training-only]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="deepcr")
    parser.add_argument("--patch-size", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--frames", type=int, default=3, help="synthetic frames to stream per measurement")
    parser.add_argument("--steps", type=int, default=6, help="training steps to time (after 2 warm-up steps)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--filters", default=None, help="the model's filters, e.g. 48,96 (default: its preset's)")
    parser.add_argument("--mixed-precision", action="store_true",
                        help="time the training step under kercr-train's --mixed-precision policy (bfloat16 on CPU)")
    parser.add_argument("--training-only", action="store_true", help="time only the training step (3.)")
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

    import keras
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(args.threads)

    from kercr.data.loader import PatchBatches, SyntheticFrames
    from kercr.data.pipeline import prepare_shards, read_tfrecords
    from kercr.models import build_model, model_kwargs
    from kercr.training import make_loss, make_metrics

    p, b = args.patch_size, args.batch_size
    per_frame = 128

    # 1. PyDataset: one frame per 128 patches, as in training.
    frames = 1 if args.training_only else args.frames
    source = SyntheticFrames(seed=0, shape=(4096, 2048), cr_rate_scale=5.0, cache=1)
    n_batches = frames * per_frame // b
    loader = PatchBatches(source, list(range(frames)), batch_size=b, patch_size=p,
                          patches_per_frame=per_frame, steps=n_batches, seed=0)
    if not args.training_only:
        t0 = time.perf_counter()
        for i in range(n_batches):
            loader[i]
        pydataset_rate = n_batches * b / (time.perf_counter() - t0)

        # 2. tf.data over kercr-prepare shards of the same frames (train and validation shards alike).
        with tempfile.TemporaryDirectory() as tmp:
            prepare_shards(source, list(range(max(frames, 2))), tmp, patch_size=p, patches_per_frame=per_frame,
                           seed=0)
            ds = read_tfrecords(f"{tmp}/*/*.tfrecord", patch_size=p, batch_size=b, shuffle=256, seed=0)
            t0 = time.perf_counter()
            n = sum(int(x.shape[0]) for x, _, _ in ds)
            tfdata_rate = n / (time.perf_counter() - t0)

    # 3. Training steps of the default recipe on fixed batches.
    if args.mixed_precision:
        from kercr.config import TrainConfig
        from kercr.training.run import _set_precision  # what kercr-train --mixed-precision does

        _set_precision(TrainConfig(mixed_precision=True))
    overrides = {"filters": tuple(int(f) for f in args.filters.split(","))} if args.filters else {}
    if "input_size" in model_kwargs(args.model):
        overrides["input_size"] = p  # a fixed-tile model is built at the patch size, as kercr-train builds it
    model = build_model(args.model, **overrides)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=make_loss("dice_bce"), weighted_metrics=make_metrics())
    x, y, w = loader[0]
    for _ in range(2):
        model.train_on_batch(x, y, sample_weight=w)
    t0 = time.perf_counter()
    for _ in range(args.steps):
        model.train_on_batch(x, y, sample_weight=w)
    train_rate = args.steps * b / (time.perf_counter() - t0)

    precision = keras.mixed_precision.global_policy().name
    print(f"model {args.model} {overrides or ''}, {p} x {p} patches, batches of {b}, {args.threads} threads, "
          f"{precision}")
    print("| stage | patches/s | ratio to training |")
    print("|---|---:|---:|")
    if not args.training_only:
        print(f"| PyDataset loader (kercr-train) | {pydataset_rate:.1f} | {pydataset_rate / train_rate:.1f} |")
        print(f"| tf.data reading kercr-prepare shards (kercr-train --data DIR) | {tfdata_rate:.1f} | "
              f"{tfdata_rate / train_rate:.1f} |")
    print(f"| training step ({args.model}, {precision}; {b / train_rate:.3f} s per step) | {train_rate:.1f} | 1.0 |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
