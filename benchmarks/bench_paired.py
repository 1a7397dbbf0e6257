"""Detection speed of kercr and its peers, paired: the same frame, the same threads, one after the other.

Usage::

    pip install torch==2.13.0 cosmic-conn==0.6.1 deepCR==0.3.1   # the peers; not kercr dependencies
    python benchmarks/bench_paired.py [--rounds 3] [--repeats 2] [--threads 2] [--models default global]
                                      [--detectors kercr kercr-all-flips kercr-no-flips cosmic-conn deepcr-decam astroscrappy]

Why paired: a speed ratio between figures measured on different days measures the machine's
mood as much as the code (this VM varies by 20-30 % between hours). Here every detector runs on
the same seeded 2048 x 4096 synthetic DECam CCD (``generate_dataset(1, seed=3, shape=(4096, 2048))``,
as ``bench_light_runtime.py``), each in its own fresh process, with ``--threads`` CPU threads, in
``--rounds`` rounds of A, B, C, ... so a slow minute hits every detector alike. Each process loads
its detector, warms up on a 256 x 256 cutout (not timed), then times ``--repeats`` calls on the
whole frame; a row's speed is the median over rounds of each round's median call.

Detectors:
    - ``kercr``: ``kercr.detect(image, num_threads=N)``, the shipped model with its card's settings
      (LiteRT int8, the four flips on candidate windows; ``kercr.detection.flips``). With
      ``--models``, one row per model named (shipped names, ``.keras`` files or run directories),
      labelled ``kercr (NAME)`` for every name but ``default``; likewise the two rows below.
    - ``kercr-all-flips``: the same with ``tta_gate=0`` (the four flips on every pixel: the card's
      settings before the candidate windows).
    - ``kercr-no-flips``: ``tta=False``.
    - ``cosmic-conn``: Cosmic-CoNN 0.6.1 ``init_model("ground_imaging").detect_cr(image)`` (its
      README's call, tiles of 1024), torch threads = N.
    - ``deepcr-decam``: deepCR 0.3.1 ``deepCR(mask="decam").clean(image, inpaint=False, patch=256)``.
    - ``astroscrappy``: ``astroscrappy.detect_cosmics(image)`` with its defaults (one thread).
A peer whose package is missing is skipped with a note. Prints a Markdown table (Mpix/s, seconds
per call, and the ratio of each row to Cosmic-CoNN in the same round, median over rounds) and
writes it with every call's time to ``--out`` (JSON).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

DETECTORS = ("kercr", "kercr-all-flips", "kercr-no-flips", "cosmic-conn", "deepcr-decam", "astroscrappy")
_KERCR = {"kercr": {}, "kercr-all-flips": {"tta_gate": 0.0}, "kercr-no-flips": {"tta": False}}


def _runner(name: str, threads: int, model: str = "default"):
    """``run(image)`` for detector ``name`` (imports and loads it); ``model``: the kercr model."""
    if name in _KERCR:
        import kercr

        return lambda image: kercr.detect(image, model=model, num_threads=threads, **_KERCR[name])
    if name == "astroscrappy":
        import astroscrappy

        return lambda image: astroscrappy.detect_cosmics(image)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from peers import load_peer  # the peers' released models, as benchmarks/peers.py runs them

    return load_peer(name, threads)


def _worker(name: str, frame: str, repeats: int, threads: int, model: str = "default") -> dict:
    image = np.load(frame)
    t0 = time.perf_counter()
    run = _runner(name, threads, model)
    run(np.ascontiguousarray(image[:256, :256]))  # warm-up: interpreter allocation, torch start-up
    load_s = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        run(image)
        times.append(time.perf_counter() - t)
    return {"detector": name, "seconds": times, "load_s": load_s}


def _available(name: str, python: str) -> bool:
    module = {"cosmic-conn": "cosmic_conn", "deepcr-decam": "deepCR", "astroscrappy": "astroscrappy"}.get(name)
    if module is None:
        return True
    found = subprocess.run([python, "-c", f"import importlib.util; print(importlib.util.find_spec({module!r}) is not None)"],
                           capture_output=True, text=True)
    return found.stdout.strip() == "True"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--detectors", nargs="+", choices=DETECTORS, default=list(DETECTORS))
    parser.add_argument("--rounds", type=int, default=3, help="rounds of every detector one after the other")
    parser.add_argument("--repeats", type=int, default=2, help="timed calls per detector and round")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads of each detector")
    parser.add_argument("--peer-python", default=sys.executable, metavar="PYTHON",
                        help="the Python that runs cosmic-conn and deepcr-decam (a venv of their own, e.g. with the "
                             "torch version they were released with; default: this one)")
    parser.add_argument("--models", nargs="+", default=["default"], metavar="MODEL",
                        help="kercr models for the kercr rows (shipped names, .keras files, run directories; "
                             "default: the shipped default)")
    parser.add_argument("--model", default="default", help=argparse.SUPPRESS)  # the worker's
    parser.add_argument("--out", default="runs/bench_paired.json")
    parser.add_argument("--worker", nargs=2, metavar=("NAME", "FRAME"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(_worker(args.worker[0], args.worker[1], args.repeats, args.threads, args.model)))
        return 0
    names, model_of = [], {}
    for name in args.detectors:
        if name in _KERCR:
            for model in args.models:
                row = name if model == "default" else f"{name} ({model})"
                names.append(row)
                model_of[row] = (name, model)
        elif _available(name, args.peer_python if name in ("cosmic-conn", "deepcr-decam") else sys.executable):
            names.append(name)
        else:
            print(f"[bench_paired] {name}: its package is not installed; skipped", file=sys.stderr)
    from kercr.data.synthetic import generate_dataset

    rounds = []
    with tempfile.TemporaryDirectory() as tmp:
        frame_path = Path(tmp) / "frame.npy"
        frame = next(iter(generate_dataset(1, seed=3, shape=(4096, 2048))))
        np.save(frame_path, np.asarray(frame.image_adu, np.float32))
        pixels = frame.image_adu.size
        for r in range(args.rounds):
            row = {}
            for name in names:
                python = args.peer_python if name in ("cosmic-conn", "deepcr-decam") else sys.executable
                detector, model = model_of.get(name, (name, "default"))
                out = subprocess.run([python, __file__, "--worker", detector, str(frame_path), "--repeats",
                                      str(args.repeats), "--threads", str(args.threads), "--model", model],
                                     capture_output=True, text=True, check=True)
                row[name] = json.loads(out.stdout.strip().splitlines()[-1])
                print(f"[bench_paired] round {r + 1}: {name} {statistics.median(row[name]['seconds']):.2f} s",
                      file=sys.stderr)
            rounds.append(row)
    table = []
    for name in names:
        per_round = [statistics.median(row[name]["seconds"]) for row in rounds]
        ratio = ([row["cosmic-conn"]["seconds"] for row in rounds] if "cosmic-conn" in names else None)
        vs = (statistics.median(statistics.median(c) / s for c, s in zip(ratio, per_round)) if ratio else None)
        table.append({"detector": name, "seconds": statistics.median(per_round),
                      "mpix_per_s": pixels / 1e6 / statistics.median(per_round), "x_cosmic_conn": vs,
                      "per_round_s": per_round})
    print(f"{pixels / 1e6:.1f} Mpix frame, {args.threads} threads, {args.rounds} rounds x {args.repeats} calls")
    print("| detector | s per frame | Mpix/s | x Cosmic-CoNN (same round) |")
    print("|---|---|---|---|")
    for t in table:
        vs = "" if t["x_cosmic_conn"] is None else f"{t['x_cosmic_conn']:.2f}"
        print(f"| {t['detector']} | {t['seconds']:.2f} | {t['mpix_per_s']:.2f} | {vs} |")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"threads": args.threads, "peer_python": args.peer_python, "models": args.models,
                               "rounds": rounds,
                               "table": table}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
