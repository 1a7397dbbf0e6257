"""The inpainting network's TFLite variants against Keras (issue 24; BENCHMARKS.md, "Cleaning CR pixels").

Usage::

    python benchmarks/inpainter_runtimes.py [--model default] [--val-frames 88 96]

The validation patches of the shipped network's training run (``InpaintingConfig()`` frames 88-95:
48-px patches centred on CR pixels, :func:`kercr.training.inpainting.inpainting_examples`) are
predicted by Keras and by each :func:`kercr.export.tflite.convert` variant (int8 calibrated on 64
patches of frames 0-1) in the LiteRT interpreter. Prints the file size, the mean squared error of
the replaced pixels against the CR-free truth (normalized units, the training loss) and the
largest and median |TFLite - Keras| on them. Needs TensorFlow.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default", help="inpainting network (default: the shipped one)")
    parser.add_argument("--val-frames", type=int, nargs=2, default=(88, 96), metavar=("FIRST", "END"))
    args = parser.parse_args(argv)
    from kercr.detection.inpainting import _keras_network, load_inpainter
    from kercr.export.litert import TFLiteRunner
    from kercr.export.tflite import convert
    from kercr.training.inpainting import InpaintingConfig, inpainting_examples

    config = InpaintingConfig()
    x, y, w = inpainting_examples(config, range(*args.val_frames))
    y, w = y[..., 0], w[..., 0] > 0
    calibration = inpainting_examples(config, range(2))[0][:64]
    network = _keras_network(load_inpainter(args.model, "keras").path)[0]
    reference = np.asarray(network.predict(x, batch_size=64, verbose=0), np.float32)[..., 0]
    print(f"{len(x)} patches, {int(w.sum())} replaced pixels")
    print(f"{'runtime':>10} {'bytes':>9} {'MSE':>7} {'max |d|':>9} {'median |d|':>11}")
    print(f"{'keras':>10} {'':>9} {float(((reference - y)[w] ** 2).mean()):>7.4f}")
    for quantize in ("none", "float16", "dynamic", "int8"):
        flatbuffer = convert(network, tile=x.shape[1], quantize=quantize,
                             representative=list(calibration) if quantize == "int8" else None)
        out = TFLiteRunner(flatbuffer, num_threads=2).predict(x)
        d = np.abs(out - reference)[w]
        name = "float32" if quantize == "none" else quantize
        print(f"{name:>10} {len(flatbuffer):>9} {float(((out - y)[w] ** 2).mean()):>7.4f} {d.max():>9.3g} "
              f"{np.median(d):>11.3g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
