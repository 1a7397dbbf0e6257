"""Run several ``kercr-train`` runs at once on one GPU machine, with their frames made once, in parallel.

Usage::

    KERAS_BACKEND=jax python benchmarks/device_training.py --plan issue22 --out DIR [--deadline S]
        [--jobs N] [--parallel K] [--tiny]

A plan is a list of runs, each a ``kercr-train`` command (a config file and flags) and the runs it
starts from. The script

1. resolves every run's configuration exactly as ``kercr-train`` does;
2. makes the synthetic frames each run will read (its training frames in the order it reads them
   and all its validation frames), once per distinct data recipe, on ``--jobs`` processes, into
   memory-mapped files: the frames are pure functions of the configuration, so a run reads
   exactly what ``kercr-train`` would have made itself;
3. trains up to ``--parallel`` runs at once, each in its own process (``kercr.training.train``,
   so the run directories are ordinary ones that ``kercr-train`` resumes or extends with the
   same command), a run starting when the runs it starts from have finished;
4. stops every run still going at ``--deadline`` seconds (they resume with the same command)
   and packs the run directories (without the backup of finished runs) into ``DIR/runs.tar.gz``,
   split into parts of 15 MB.

It exists for the device machine of this workplace (one GPU, 16 cores, JAX but no TensorFlow,
15 minutes), where one frame generator per run would starve the GPU. ``--tiny`` shrinks every
run (2 epochs of 3 steps on 12 frames of 256 px) to test the script on a CPU.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

#: Issue 22: the architectures with stage 1 of the local-noise recipe (one recipe, one budget),
#: the same data with one noise per frame (the input's control), and stages 2-4 for the two
#: candidates that could ship (deepCR-2-32, the speed baseline, and the Attention UNet).
PLANS = {
    "issue22": [
        ("local_noise", ["--config", "configs/local_noise.toml"], []),
        ("global_noise", ["--config", "configs/local_noise.toml", "--noise-model", "global",
                          "--out", "runs/global_noise"], []),
        ("local_noise_attention_unet", ["--config", "configs/local_noise.toml", "--model", "attention_unet",
                                        "--out", "runs/local_noise_attention_unet"], []),
        ("local_noise_deepcr", ["--config", "configs/local_noise.toml", "--model", "deepcr",
                                "--out", "runs/local_noise_deepcr"], []),
        ("local_noise_transunet", ["--config", "configs/local_noise.toml", "--model", "transunet",
                                   "--out", "runs/local_noise_transunet"], []),
        ("local_noise_cosmic_conn", ["--config", "configs/local_noise.toml", "--model", "cosmic_conn",
                                     "--out", "runs/local_noise_cosmic_conn"], []),
        ("local_noise_ft", ["--config", "configs/local_noise_finetune.toml"], ["local_noise"]),
        ("local_noise_bce", ["--config", "configs/local_noise_bce.toml"], ["local_noise_ft"]),
        ("local_noise_sky", ["--config", "configs/local_noise_sky.toml"], ["local_noise_bce"]),
        ("local_noise_attention_unet_ft", ["--config", "configs/local_noise_finetune.toml", "--model",
                                           "attention_unet", "--init-weights", "runs/local_noise_attention_unet",
                                           "--out", "runs/local_noise_attention_unet_ft"],
         ["local_noise_attention_unet"]),
        ("local_noise_attention_unet_bce", ["--config", "configs/local_noise_bce.toml", "--model", "attention_unet",
                                            "--init-weights", "runs/local_noise_attention_unet_ft",
                                            "--out", "runs/local_noise_attention_unet_bce"],
         ["local_noise_attention_unet_ft"]),
        ("local_noise_attention_unet_sky", ["--config", "configs/local_noise_sky.toml", "--model", "attention_unet",
                                            "--init-weights", "runs/local_noise_attention_unet_bce",
                                            "--out", "runs/local_noise_attention_unet_sky"],
         ["local_noise_attention_unet_bce"]),
    ],
}

#: The options that decide which frames a run reads (the rest shape the model and the optimizer).
DATA_FIELDS = ("data", "frames", "frame_shape", "cr_rate_scale", "footprints", "footprint_fraction", "variety",
               "extended_sources", "on_source_fraction", "sky_e_range", "cr_threshold_e", "faint_crs",
               "asinh_softening", "noise_estimator", "noise_model", "local_axis", "local_edges", "block_size",
               "local_gate", "local_min_blocks", "dominant_sources", "integer_frames", "bright_tracks", "rim_weight",
               "seed", "val_fraction", "loss")
TINY = ["--epochs", "2", "--steps-per-epoch", "3", "--validation-steps", "2", "--frames", "12",
        "--frame-shape", "256", "256", "--patches-per-frame", "16", "--tensorboard-images", "0"]


def resolve(argv, *, before_start=False):
    """The :class:`kercr.config.TrainConfig` of ``kercr-train ARGV`` (as ``kercr.cli.train.train_main``
    builds it). ``before_start``: the run it starts from (``init_weights``) may not exist yet."""
    from kercr.cli import train as cli
    from kercr.config import read_config_file, resolve_config

    parser = cli.train_parser()
    args = parser.parse_args(argv)
    flags = cli.train_flags(parser, args)
    file_options = read_config_file(args.config) if args.config else {}
    if not before_start:
        return resolve_config(file_options, flags)
    init = flags["init_weights"] or file_options.get("init_weights")
    config = resolve_config(file_options, dict(flags, init_weights="default" if init else None))
    config.init_weights = init
    return config


def data_key(config) -> str:
    return json.dumps({k: getattr(config, k) for k in DATA_FIELDS}, sort_keys=True)


def frames_read(config) -> list:
    """Frame ids a run reads: its training frames in reading order, then its validation frames."""
    from kercr.data.loader import PatchBatches
    from kercr.data.patches import split_exposures
    from kercr.training import synthetic_patches_per_frame, synthetic_source

    source = synthetic_source(config, cache=1, footprints=[])  # no frame is made; the footprints are not needed
    train_ids, val_ids = split_exposures(source.exposure_ids(config.frames), val_fraction=config.val_fraction,
                                         seed=config.seed)
    batches = PatchBatches(source, train_ids, batch_size=config.batch_size, patch_size=config.patch_size,
                           patches_per_frame=synthetic_patches_per_frame(config), steps=config.steps_per_epoch,
                           seed=config.seed)
    used = batches.keys_read(config.epochs)
    return used + [i for i in val_ids if i not in used]


# --- frame store: one memory-mapped file per array and data recipe ---------------------------

_WORKER = {}


def _init_worker(argv, store, ids):
    from kercr.training import synthetic_source

    config = resolve(argv, before_start=True)
    _WORKER.update(source=synthetic_source(config, cache=1), store=store, row={i: r for r, i in enumerate(ids)})


def _make_frame(i):
    source, store = _WORKER["source"], _WORKER["store"]
    image, mask, weight = source.frame(i)
    r = _WORKER["row"][i]
    for name, array in (("image", image), ("mask", mask), ("weight", weight)):
        mm = np.load(store / f"{name}.npy", mmap_mode="r+")
        mm[r] = array
        mm.flush()
        del mm
    source._cache.clear()
    return i


def make_store(argv, config, store: Path, jobs: int) -> None:
    """Write the frames ``config`` reads into ``store`` (image, mask, weight .npy and ids.json)."""
    if (store / "done").is_file():
        return
    store.mkdir(parents=True, exist_ok=True)
    ids = frames_read(config)
    shape = (len(ids), *config.frame_shape)
    np.lib.format.open_memmap(store / "image.npy", mode="w+", dtype=np.float32, shape=shape).flush()
    np.lib.format.open_memmap(store / "mask.npy", mode="w+", dtype=np.uint8, shape=shape).flush()
    wtype = np.uint8 if config.loss != "median_bce" and config.rim_weight == 1 else np.float32  # 0/1 weights: uint8
    np.lib.format.open_memmap(store / "weight.npy", mode="w+", dtype=wtype, shape=shape).flush()
    (store / "ids.json").write_text(json.dumps(ids))
    t0 = time.time()
    with mp.get_context("spawn").Pool(jobs, initializer=_init_worker, initargs=(argv, store, ids)) as pool:
        for _ in pool.imap_unordered(_make_frame, ids, chunksize=2):
            pass
    (store / "done").write_text("")
    print(f"[data] {store.name}: {len(ids)} frames {config.frame_shape} in {time.time() - t0:.0f} s", flush=True)


def _make_stores(recipes, jobs: int) -> None:
    """:func:`make_store` for each ``(run, store)`` in turn (in the order the runs need them)."""
    for run, store in recipes:
        make_store(run["argv"], run["config"], store, jobs)


def use_store(store: Path) -> None:
    """Serve synthetic frames from ``store`` in this process (frames not in it are made as usual)."""
    from kercr.data import frames

    ids = json.loads((store / "ids.json").read_text())
    row = {i: r for r, i in enumerate(ids)}
    arrays = {name: np.load(store / f"{name}.npy", mmap_mode="r") for name in ("image", "mask", "weight")}
    made = frames._CachedFrames.frame

    def frame(self, i):
        if isinstance(self, frames.SyntheticFrames) and i in row:
            r = row[i]
            return (np.array(arrays["image"][r]), arrays["mask"][r].astype(np.float32),
                    arrays["weight"][r].astype(np.float32))
        return made(self, i)

    frames._CachedFrames.frame = frame


def worker_main(argv, store):
    """One training run (a child process): ``kercr.training.train`` on the stored frames."""
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    use_store(Path(store))
    from kercr.training import train

    import jax

    print(f"devices: {jax.devices()}", flush=True)
    config = resolve(argv)
    t0 = time.time()
    metrics = train(config, verbose=2)
    print(json.dumps({"wall_s": round(time.time() - t0, 1), "metrics": metrics}), flush=True)


def pack(out: Path, run_dirs, log_dir: Path, *, limit_mb: float = 58.0) -> None:
    """``out/runs.tar.gz.partNN``: the run directories (finished runs without backup/) and the logs;
    without the finished runs' last.keras if that is over ``limit_mb`` (the device returns 64 MB)."""
    tar_path = out / "runs.tar.gz"
    for keep_last in (True, False):
        with tarfile.open(tar_path, "w:gz") as tar:
            for run in run_dirs:
                if not run.is_dir():
                    continue
                finished = (run / "metrics.json").is_file()
                for path in sorted(run.rglob("*")):
                    parts = path.relative_to(run).parts
                    if not path.is_file() or (finished and ("backup" in parts or (
                            not keep_last and parts == ("last.keras",)))):
                        continue
                    tar.add(path, arcname=str(path.relative_to(ROOT)))
            for path in sorted(log_dir.glob("*")):
                tar.add(path, arcname=f"device_logs/{path.name}")
        if tar_path.stat().st_size < limit_mb * 2**20:
            break
        print(f"[pack] {tar_path.stat().st_size / 2**20:.0f} MB: leaving out the finished runs' last.keras",
              flush=True)
    data = tar_path.read_bytes()
    tar_path.unlink()
    part = 15 * 2**20
    for k in range(0, len(data), part):
        (out / f"runs.tar.gz.part{k // part:02d}").write_bytes(data[k:k + part])
    print(f"[pack] {len(data) / 2**20:.1f} MB in {math.ceil(len(data) / part)} parts", flush=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--plan", choices=sorted(PLANS), default="issue22")
    parser.add_argument("--only", help="comma-separated run names of the plan (default: all)")
    parser.add_argument("--out", required=True, help="folder for the packed runs")
    parser.add_argument("--store", default="/tmp/kercr_frames", help="folder for the frame files")
    parser.add_argument("--deadline", type=float, default=480.0, help="seconds after which runs are stopped")
    parser.add_argument("--jobs", type=int, default=os.cpu_count(), help="frame-making processes")
    parser.add_argument("--parallel", type=int, default=6, help="training processes at once")
    parser.add_argument("--tiny", action="store_true", help="tiny runs, to test this script on a CPU")
    parser.add_argument("--worker", nargs=2, metavar=("STORE", "ARGV_JSON"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker_main(json.loads(args.worker[1]), args.worker[0])
        return 0

    t_start = time.time()
    out, store_root, log_dir = Path(args.out), Path(args.store), Path(args.store) / "logs"
    out.mkdir(parents=True, exist_ok=True)
    log_dir.mkdir(parents=True, exist_ok=True)
    plan = PLANS[args.plan]
    if args.only:
        keep = set(args.only.split(","))
        plan = [p for p in plan if p[0] in keep]
    runs = {}
    for name, flags, after in plan:
        argv_ = flags + (TINY if args.tiny else [])
        config = resolve(argv_, before_start=True)
        runs[name] = dict(argv=argv_, config=config, after=[a for a in after if a in {p[0] for p in plan}],
                          key=data_key(config))
    keys = list(dict.fromkeys(r["key"] for r in runs.values()))
    stores = {k: store_root / f"data{n}" for n, k in enumerate(keys)}

    # The first recipe's frames now, with every core; the others while the first runs train.
    first = next(r for r in runs.values() if r["key"] == keys[0])
    make_store(first["argv"], first["config"], stores[keys[0]], args.jobs)
    later = [(next(r for r in runs.values() if r["key"] == k), stores[k]) for k in keys[1:]]
    maker = mp.get_context("spawn").Process(target=_make_stores, args=(later, max(1, args.jobs - args.parallel)))
    maker.start()

    env = dict(os.environ, PYTHONUNBUFFERED="1", XLA_PYTHON_CLIENT_PREALLOCATE="false")
    running, done, failed = {}, set(), set()
    while True:
        maker_failed = not maker.is_alive() and maker.exitcode not in (0, None)
        for name, r in runs.items():
            if name in running or name in done or name in failed or len(running) >= args.parallel:
                continue
            if any(a in failed for a in r["after"]) or (maker_failed and not (stores[r["key"]] / "done").is_file()):
                print(f"[{time.time() - t_start:5.0f} s] {name} cannot start (a run it starts from or its frames "
                      "failed)", flush=True)
                failed.add(name)
                continue
            if all(a in done for a in r["after"]) and (stores[r["key"]] / "done").is_file():
                log = open(log_dir / f"{name}.log", "w")
                cmd = [sys.executable, __file__, "--out", str(out), "--worker", str(stores[r["key"]]),
                       json.dumps(r["argv"])]
                running[name] = (subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT),
                                 time.time(), log)
                print(f"[{time.time() - t_start:5.0f} s] start {name}", flush=True)
        for name, (proc, t0, log) in list(running.items()):
            if proc.poll() is not None:
                log.close()
                (done if proc.returncode == 0 else failed).add(name)
                del running[name]
                tail = (log_dir / f"{name}.log").read_text().strip().splitlines()[-1:]
                print(f"[{time.time() - t_start:5.0f} s] {name} exit {proc.returncode} after "
                      f"{time.time() - t0:.0f} s: {tail[0][:300] if tail else ''}", flush=True)
        if not running and all(n in done or n in failed for n in runs):
            break
        if time.time() - t_start > args.deadline:
            for name, (proc, t0, log) in running.items():
                proc.terminate()
                print(f"[deadline] stopped {name} after {time.time() - t0:.0f} s (resumes with the same command)",
                      flush=True)
            for proc, _, log in running.values():
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                log.close()
            break
        time.sleep(1.0)
    if maker.is_alive():
        maker.terminate()
    pack(out, [ROOT / r["config"].out for r in runs.values()], log_dir)
    print(f"[done] {len(done)} finished, {len(failed)} failed, {len(runs) - len(done) - len(failed)} stopped, "
          f"{time.time() - t_start:.0f} s", flush=True)
    return 0 if not failed else 1


if __name__ == "__main__":
    sys.exit(main())
