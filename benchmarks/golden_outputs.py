"""Golden outputs: record them before a refactor, check them after (bit for bit).

    python benchmarks/golden_outputs.py record runs/golden      # on the old code
    python benchmarks/golden_outputs.py check runs/golden       # on the new code

What is recorded (issue 23, item 7), through the public API only (``kercr.detect``,
``kercr-export``, ``kercr-train``), so the same script runs on both sides of a refactor:

- the shipped model's probability maps (Keras runtime, and the card's runtime ``auto``:
  LiteRT int8 with four flips) on astroscrappy's GMOS cutout (skipped without astroscrappy)
  and on a seeded synthetic 512 x 512 frame; plus the masks, and a cleaned image;
- an exported SavedModel's output on a seeded patch (the SavedModel loaded back by TensorFlow);
- a short ``kercr-train`` run's history (3 epochs x 3 steps of a 4-filter deepCR net) and its
  final weights.

``check`` prints, per item, whether it equals the recording bit for bit (``max |diff|`` when not)
and exits 1 when any differs.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import tempfile
from pathlib import Path

import numpy as np


def _gmos():
    try:
        import astroscrappy
        from astropy.io import fits
    except ImportError:
        return None
    path = Path(astroscrappy.__file__).parent / "tests" / "data" / "gmos.fits"
    if not path.is_file():
        return None
    with fits.open(path) as hdul:
        return np.asarray(hdul["SCI"].data, dtype=np.float32)


def _synthetic():
    from kercr.data.synthetic import generate_dataset

    frame = next(iter(generate_dataset(1, seed=11, shape=(512, 512))))
    return np.asarray(frame.image_adu, dtype=np.float32)


def _detections(out: dict) -> None:
    import kercr

    frames = {"synthetic": _synthetic()}
    gmos = _gmos()
    if gmos is not None:
        frames["gmos"] = gmos
    for name, image in frames.items():
        for runtime in ("keras", "auto"):
            r = kercr.detect(image, runtime=runtime, clean="median" if runtime == "auto" else None)
            out[f"{name}_{runtime}_probability"] = r.probability
            out[f"{name}_{runtime}_mask"] = r.mask
            if r.clean is not None:
                out[f"{name}_{runtime}_clean"] = r.clean


def _savedmodel(out: dict, work: Path) -> None:
    import tensorflow as tf

    try:
        from kercr.cli.export import main as export_main
    except ImportError:  # before the CLI layer (issue 23)
        from kercr.export.cli import main as export_main

    assert export_main(["default", "--out", str(work / "export"), "--formats", "savedmodel", "--version", "1"]) == 0
    rng = np.random.default_rng(5)
    patch = (100.0 + 5.0 * rng.standard_normal((1, 128, 128, 1))).astype(np.float32)
    patch[0, 60:62, 30:70, 0] += 400.0
    loaded = tf.saved_model.load(str(work / "export" / "kercr" / "1"))
    fn = loaded.signatures["serving_default"]
    result = fn(**{list(fn.structured_input_signature[1])[0]: tf.constant(patch)})
    out["savedmodel_output"] = np.asarray(next(iter(result.values())))


def _training(out: dict, work: Path) -> None:
    import keras

    try:
        from kercr.cli.train import train_main
    except ImportError:  # before the CLI layer (issue 23)
        from kercr.cli import train_main

    run = work / "run"
    assert train_main(["--model", "deepcr_2_4", "--patch-size", "64", "--batch-size", "4", "--frames", "4",
                       "--frame-shape", "256", "256", "--cr-rate-scale", "50", "--steps-per-epoch", "3",
                       "--validation-steps", "2", "--epochs", "3", "--seed", "1", "--out", str(run)]) == 0
    with open(run / "history.csv") as f:
        rows = list(csv.DictReader(f))
    for key in rows[0]:
        out[f"history_{key}"] = np.array([float(r[key]) for r in rows])
    model = keras.saving.load_model(run / "last.keras", compile=False)
    for i, w in enumerate(model.get_weights()):
        out[f"weights_{i}"] = np.asarray(w)


def collect() -> dict:
    os.environ.setdefault("KERCR_CACHE_DIR", tempfile.mkdtemp(prefix="kercr-golden-cache-"))
    out: dict = {}
    _detections(out)
    with tempfile.TemporaryDirectory() as tmp:
        _savedmodel(out, Path(tmp))
        _training(out, Path(tmp))
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("action", choices=("record", "check"))
    parser.add_argument("folder")
    args = parser.parse_args(argv)
    folder = Path(args.folder)
    out = collect()
    if args.action == "record":
        folder.mkdir(parents=True, exist_ok=True)
        np.savez(folder / "golden.npz", **out)
        print(f"recorded {len(out)} arrays in {folder / 'golden.npz'}")
        return 0
    golden = dict(np.load(folder / "golden.npz"))
    bad = 0
    for key in sorted(set(golden) | set(out)):
        if key not in golden or key not in out:
            print(f"{key}: only in {'the recording' if key in golden else 'this run'}")
            bad += 1
            continue
        a, b = golden[key], out[key]
        same = a.shape == b.shape and a.dtype == b.dtype and np.array_equal(a, b, equal_nan=True)
        if same:
            print(f"{key}: identical")
        else:
            bad += 1
            diff = np.nanmax(np.abs(a.astype(np.float64) - b.astype(np.float64))) if a.shape == b.shape else "shape"
            print(f"{key}: DIFFERS (max |diff| = {diff})")
    print(f"{len(golden) - bad} of {len(golden)} identical" if not bad else f"{bad} differ")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
