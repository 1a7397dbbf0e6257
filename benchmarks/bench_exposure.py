"""A whole DECam exposure through ``kercr-detect``'s engine: serial against ``--jobs N``.

Builds a synthetic DECam-like exposure with kercr's own data core (:func:`kercr.data.generate_dataset`,
one independent frame per CCD, EXTNAMEs S1..S31, N1..N31 as DECam's) written as a tile-compressed
multi-extension ``.fits.fz`` (astropy ``CompImageHDU``, RICE, as the DECam archive serves them),
then runs :func:`kercr.detect_files` on it with ``jobs=1`` and with ``jobs=N`` (``--model``, by
default the shipped model:
LiteRT int8 with the four flips, 512-pixel tiles). Each run is a subprocess of its own, whose
peak resident memory is sampled with psutil: the parent process, the largest worker process and
all of them together. Wall-clock time counts from
the ``detect_files`` call (model load, worker start-up and writing included) to its return.
Checks that the two outputs hold the same mask data bit for bit.

Usage::

    .venv/bin/python benchmarks/bench_exposure.py --ccds 62 --shape 512 1024 --jobs 2
    .venv/bin/python benchmarks/bench_exposure.py --ccds 4 --shape 4096 2048 --jobs 2   # full-size CCDs

Prints a Markdown table (Mpix/s = exposure pixels / wall-clock time).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

#: DECam's science CCDs as its raw and CP files name them (62).
DECAM_EXTNAMES = [f"S{i}" for i in range(1, 32)] + [f"N{i}" for i in range(1, 32)]


def build_exposure(path: Path, *, ccds: int, shape, seed: int) -> Path:
    """Write a ``ccds``-CCD tile-compressed exposure; CCDs are appended one at a time (bounded memory)."""
    from astropy.io import fits

    from kercr.data import generate_dataset

    if not 1 <= ccds <= len(DECAM_EXTNAMES):
        raise SystemExit(f"--ccds {ccds}: DECam has 1 to {len(DECAM_EXTNAMES)} science CCDs.")
    primary = fits.Header({"INSTRUME": "DECam", "OBSTYPE": "object", "EXPTIME": 90.0})
    fits.PrimaryHDU(header=primary).writeto(path)
    for name, frame in zip(DECAM_EXTNAMES, generate_dataset(ccds, seed=seed, shape=tuple(shape))):
        header = fits.Header({"GAIN": float(frame.meta.get("gain", 4.0)), "SATURATE": 45000.0, "EXTNAME": name})
        with fits.open(path, mode="append") as hdul:
            hdul.append(fits.CompImageHDU(frame.image_adu, header=header, name=name, compression_type="RICE_1"))
    return path


class _PeakMemory:
    """Peak resident memory of this process and of its workers, sampled every 20 ms with psutil.

    (``ru_maxrss`` would do without psutil, but Linux carries it over ``fork`` and ``exec``: a process
    started by a large one reports the large one's peak.)
    """

    def __init__(self):
        import threading

        import psutil

        self._me, self.parent, self.worker, self.total = psutil.Process(), 0, 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self):
        import psutil

        while not self._stop.wait(0.02):
            try:
                parent = self._me.memory_info().rss
                workers = [c.memory_info().rss for c in self._me.children(recursive=True)]
            except psutil.Error:  # a worker ended between the two calls
                continue
            self.parent = max(self.parent, parent)
            self.worker = max([self.worker, *workers])
            self.total = max(self.total, parent + sum(workers))

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        return False


def _measure(exposure: str, out: str, jobs: int, model: str) -> None:
    """One run, in this (fresh) process: prints a JSON line."""
    from kercr.detection import detect_files

    with _PeakMemory() as peak:
        t0 = time.perf_counter()
        result = detect_files([exposure], out_dir=out, jobs=jobs, progress=False, model=model)
        wall = time.perf_counter() - t0
    mb = 2.0**-20
    print(json.dumps({"wall_s": wall, "ok": result.ok, "ccds": result.ccds, "mpix": result.megapixels,
                      "parent_rss_mb": peak.parent * mb, "worker_rss_mb": peak.worker * mb if jobs > 1 else None,
                      "total_rss_mb": peak.total * mb, "output": result.outcomes[0].output}))


def _run(exposure: Path, out: Path, jobs: int, model: str) -> dict:
    cmd = [sys.executable, __file__, "--_measure", str(exposure), str(out), str(jobs), model]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _same_masks(a: str, b: str) -> bool:
    import numpy as np
    from astropy.io import fits

    with fits.open(a) as x, fits.open(b) as y:
        names = [h.name for h in x if h.name.endswith("_CRMASK")]
        return names == [h.name for h in y if h.name.endswith("_CRMASK")] and all(
            np.array_equal(x[n].data, y[n].data) for n in names)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ccds", type=int, default=62, help="CCDs in the exposure (default 62, DECam's).")
    parser.add_argument("--shape", type=int, nargs=2, default=[4096, 2048], metavar=("NY", "NX"),
                        help="CCD shape in pixels (default 4096 2048, DECam's).")
    parser.add_argument("--jobs", type=int, default=2, help="worker processes of the parallel run (default 2).")
    parser.add_argument("--seed", type=int, default=0, help="synthetic exposure seed (default 0).")
    parser.add_argument("--work", default=None, help="working directory (default: a temporary one).")
    parser.add_argument("--model", default="default",
                        help="a shipped model's name (default: the default model), e.g. global, or a model file")
    parser.add_argument("--_measure", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args._measure:
        _measure(args._measure[0], args._measure[1], int(args._measure[2]), args._measure[3])
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work or tmp)
        work.mkdir(parents=True, exist_ok=True)
        exposure = work / f"c4d_synthetic_{args.ccds}x{args.shape[0]}x{args.shape[1]}_ooi.fits.fz"
        t0 = time.perf_counter()
        if not exposure.exists():
            build_exposure(exposure, ccds=args.ccds, shape=args.shape, seed=args.seed)
        print(f"exposure: {exposure.name}, {exposure.stat().st_size / 2**20:.1f} MiB, "
              f"built in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
        runs = {}
        for jobs in (1, args.jobs):
            out = work / f"out_jobs{jobs}_{time.strftime('%H%M%S')}"
            runs[jobs] = _run(exposure, out, jobs, args.model)
            print(f"jobs={jobs}: {runs[jobs]}", file=sys.stderr)
        same = _same_masks(runs[1]["output"], runs[args.jobs]["output"])
    mpix = runs[1]["mpix"]
    print(f"\n{args.ccds} CCDs of {args.shape[0]} x {args.shape[1]} ({mpix:.1f} Mpix), model {args.model} "
          f"(its card's runtime and flips); mask data identical: {'yes' if same else 'NO'}\n")
    print("| run | wall-clock s | Mpix/s | speed-up | peak RSS MB: parent | largest worker | all |")
    print("|---|---|---|---|---|---|---|")
    for jobs, r in runs.items():
        worker = "-" if r["worker_rss_mb"] is None else f"{r['worker_rss_mb']:.0f}"
        print(f"| --jobs {jobs} | {r['wall_s']:.1f} | {mpix / r['wall_s']:.2f} | {runs[1]['wall_s'] / r['wall_s']:.2f} "
              f"| {r['parent_rss_mb']:.0f} | {worker} | {r['total_rss_mb']:.0f} |")
    return 0 if same and all(r["ok"] for r in runs.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
