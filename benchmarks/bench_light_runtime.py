"""Start-up, memory and imports of detection with the shipped model (issue 26, items 1-2).

    python benchmarks/bench_light_runtime.py [--repeats 3]

Each measure runs in a fresh Python process, one after the other on the same machine:

1. ``import kercr``: wall-clock seconds, and whether TensorFlow or Keras got imported.
2. ``kercr.detect`` of a seeded synthetic 2048 x 4096 frame (a DECam CCD; made and saved to disk
   before the timed process starts) with the shipped model and its card's settings (LiteRT int8,
   four flips): peak RSS of the process (``ru_maxrss``, GB), the seconds of the detect call,
   Mpix/s, and whether TensorFlow or Keras got imported.
3. ``kercr-detect`` on a 256 x 256 FITS cutout from a cold start (a new process, the console
   script as installed): wall-clock seconds of the whole command, output written.
4. ``kercr-detect --help``: wall-clock seconds.

Prints one table (median of ``--repeats`` runs for the times; the largest peak RSS).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

_DETECT = """
import json, resource, sys, time
import numpy as np
t0 = time.perf_counter()
import kercr
image = np.load(sys.argv[1])
t1 = time.perf_counter()
r = kercr.detect(image, model=sys.argv[2])
t2 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "detect_s": t2 - t1, "runtime": r.runtime, "tta": r.tta,
                  "cr_pixels": r.n_cr_pixels, "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6,
                  "tensorflow": "tensorflow" in sys.modules, "keras": "keras" in sys.modules}))
"""

_IMPORT = """
import json, sys, time
t0 = time.perf_counter()
import kercr
print(json.dumps({"import_s": time.perf_counter() - t0, "tensorflow": "tensorflow" in sys.modules,
                  "keras": "keras" in sys.modules}))
"""


def _json(cmd) -> dict:
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _wall(cmd) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, capture_output=True, text=True, check=True)
    return time.perf_counter() - t0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--model", default="default",
                        help="a shipped model's name (default: the default model), e.g. global, or a model file")
    args = parser.parse_args(argv)
    from astropy.io import fits

    from kercr.data.synthetic import generate_dataset

    script = Path(sys.executable).with_name("kercr-detect")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        frame = next(iter(generate_dataset(1, seed=3, shape=(4096, 2048))))
        np.save(tmp / "frame.npy", np.asarray(frame.image_adu, np.float32))
        fits.PrimaryHDU(np.asarray(frame.image_adu[:256, :256], np.float32)).writeto(tmp / "cutout.fits")
        imports = [_json([sys.executable, "-c", _IMPORT]) for _ in range(args.repeats)]
        detects = [_json([sys.executable, "-c", _DETECT, str(tmp / "frame.npy"), args.model])
                   for _ in range(args.repeats)]
        cli, helps = [], []
        if script.is_file():
            for i in range(args.repeats):
                out = tmp / f"out{i}"
                cli.append(_wall([str(script), str(tmp / "cutout.fits"), "--out", str(out), "--model", args.model]))
                assert any(out.iterdir()), "kercr-detect wrote nothing"
                shutil.rmtree(out)
                helps.append(_wall([str(script), "--help"]))
    med = statistics.median
    d = detects[0]
    rows = [
        ("import kercr", f"{med(r['import_s'] for r in imports):.2f} s",
         f"TensorFlow imported: {imports[0]['tensorflow']}, Keras: {imports[0]['keras']}"),
        (f"kercr.detect 2048 x 4096, model {args.model}", f"{med(r['detect_s'] for r in detects):.2f} s "
         f"({2048 * 4096 / 1e6 / med(r['detect_s'] for r in detects):.2f} Mpix/s)",
         f"peak RSS {max(r['peak_rss_gb'] for r in detects):.2f} GB; runtime {d['runtime']}, flips {d['tta']}; "
         f"TensorFlow imported: {d['tensorflow']}, Keras: {d['keras']}"),
    ]
    if cli:
        rows.append(("kercr-detect on a 256 x 256 cutout, cold", f"{med(cli):.2f} s", "whole command, output written"))
        rows.append(("kercr-detect --help", f"{med(helps):.2f} s", ""))
    print(f"| measure (median of {args.repeats}) | time | notes |\n|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
