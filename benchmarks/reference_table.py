"""Reproduce the reference results table (project issue #7) with one recipe and one benchmark.

Usage::

    python benchmarks/reference_table.py --scale tiny|cpu|gpu --out DIR [--rows LABEL,...] [--test-frames N]
                                         [--first-test-frame K]
                                         [--extra-model PATH] [--tta|--no-tta] [--verbose N]

Every row of :data:`kercr.models.registry.REFERENCE_TABLE` (or the ``--rows`` subset, by label) is
trained with the same recipe (:data:`RECIPES`, one per scale) by :func:`kercr.training.train`, each
in its own run directory ``DIR/runs/<label>/``. ``train`` resumes an interrupted run and returns at
once for a finished one, so re-running the command only does the missing work; the test metrics of
a run are cached next to it (``reference_test.json``) and recomputed only when the benchmark
definition or ``best.keras`` changed. The frame-class sets (``dominant``, ``integer``) are cached
under keys of their own: a run whose first three sets were cached before those sets existed keeps
those metrics and scores only the new sets.

Benchmark protocol
------------------
Test frames
    ``SyntheticFrames(seed=20261124, shape=SCALE.frame_shape)``, frames ``K .. K+N-1`` (``N`` =
    ``--test-frames``, default per scale; ``K`` = ``--first-test-frame``, default 0: another ``K``
    gives frames no earlier run of the benchmark has scored, for a confirmatory test). Training
    uses ``TrainConfig.seed`` = 0 (frames keyed by seed 0), so seed 20261124 is never used in
    training or validation. CRs are simulated at
    DECam's physical dark rate (0.6 events/s per 4096 x 2048 CCD) times ``SCALE.test_cr_rate_scale``
    (tiny: 20, so that a 256 x 256 smoke frame carries CRs; cpu and gpu: 5, the reference recipe's
    training density).
Second test set: real CR footprints
    The same frames (same seeds, so the same sky, stars, galaxies, noise and defects) with the
    simulated CR rate cut to a quarter and ``footprint_fraction = 3``: as many CRs as the first set
    on average, three quarters of them real footprints drawn from
    ``../shared/data/cr_footprints/cosmic_rays_itl_2017_even.fits`` (LSST ITL darks, imSim format).
    Skipped, with a message, when that file is absent.
Third test set: footprints only
    The second set scored on its real footprints alone: the pixels of its simulated CRs, grown by
    one pixel, are ignored (the same frames rendered without footprints say which they are). The
    simulator labels a CR's diffusion wings down to half the read noise; dark-frame footprints end
    at about 50 e-, like the real CRs a held-out set of real frames would inject. A model trained
    to leave faint wing pixels out (``--cr-threshold-e``, ``--faint-crs negative``) is judged here
    without the simulator's labelling convention.
Frame-class sets: ``dominant`` and ``integer`` (issue 22)
    The first set's frames (same seed, frame indices, shape, count and CR rate) made with every
    frame of one class of :class:`kercr.data.frames.SyntheticFrames` (:data:`FRAME_CLASSES`):
    ``dominant_sources=1`` puts one galaxy or nebula, with its photon noise, over 30-70 % of each
    field, where one noise level per frame is wrong; ``integer_frames=1`` makes each frame on a
    high-gain imager (10-30 e-/ADU, sky at most 100 ADU), rounded to whole ADU, so its noise is a
    few quantized ADU. Each frame's ``frame_class`` is checked to be its set's. Scored like the
    first set, so the table reports every metric per frame class. They carry no real footprints.
    At the gpu scale each set holds about 0.8 GB more in memory.
Pixels
    Each frame is normalized as a whole (as at inference) and cut into the non-overlapping grid of
    ``patch_size`` tiles (frame sides are multiples of the patch size, so the tiles cover every
    pixel exactly once). All test pixels of all frames are pooled before any rate is computed.
Ignore masks
    Pixels of weight 0 (hot pixels, bad columns, non-finite pixels, CR pixels fainter than their
    own noise) are removed from both positives and negatives of every metric, for the networks and
    for astroscrappy alike. Saturated stars and bleed trails are negatives, as in training.
Metrics (networks)
    Dice at probability 0.5; TPR at 0.01 % and 0.1 % FPR (exact, interpolated on the pooled ROC);
    precision at 95 % recall. Scores are the CR logits (:func:`kercr.evaluation.pooled_predictions`).
    Validation Dice and TPR at 0.01 % FPR come from the run's ``metrics.json`` (best.keras on the
    run's pooled validation patches).
Speed
    Inference throughput in Mpix/s with ``model.predict`` on the first test patches (at most
    about 4 Mpix), on the CPU with 2 threads (a subprocess pinned to 2 cores, TensorFlow intra-op
    threads 2, inter-op 1, GPUs hidden), after one warm-up pass; the best of 3 timed passes.
astroscrappy baseline
    ``astroscrappy.detect_cosmics`` (L.A.Cosmic) on the RAW ADU frames (the same frames before
    normalization, sky included, bias 0), ``gain=4.0, readnoise=7.0, satlevel=45000`` (the
    synthetic DECam CCD; the ``integer`` set's frames pass their own gain and saturation level),
    defaults otherwise, ignored pixels passed as ``inmask``. Its output is a
    binary mask, so only its operating point is reported: Dice, TPR and FPR on the same pooled,
    non-ignored pixels; TPR at fixed FPR and precision at 95 % recall need a ROC and are "n/a".
    Its Mpix/s is single-threaded (astroscrappy's own C loop) on the full frames.

Outputs
-------
``DIR/table.md`` (also printed) and ``DIR/table.csv``: one row per model and test set with
params, validation Dice / TPR@0.01 %, test Dice / TPR@0.01 % / TPR@0.1 % / precision@95 % recall,
Mpix/s, the scale, the reference values side by side, and links to each run's loss and Dice
curves (``loss.png``, ``dice.png``); ``DIR/curves.png``: the training and validation loss and
Dice curves of every trained row in one figure; ``DIR/summary.md``: one line per model, the
test sets side by side, with TPR at 0.01 % FPR of each frame class (the form quoted in
BENCHMARKS.md). Numbers at the tiny and cpu scales are NOT comparable with the reference values
(far less training, other data); only the gpu scale runs the reference recipe.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import hashlib
import json
import logging
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

TEST_SEED = 20261124
FOOTPRINTS = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "cr_footprints" / "cosmic_rays_itl_2017_even.fits"
FOOTPRINT_RATE_CUT = 0.25  # simulated CR rate of the footprint set, relative to the first set
FOOTPRINT_FRACTION = 3.0  # real footprints per (reduced-rate) simulated CR: same total on average
GAIN, READNOISE, SATLEVEL = 4.0, 7.0, 45000.0  # kercr.data.synthetic.SyntheticConfig defaults
TIMING_PIXELS = 4 * 1024 * 1024
TIMING_THREADS = 2
# Input stretch of every recipe (noise units; kercr.data.normalization.NormalizationConfig.asinh_softening):
# the shipped default model's choice, which made bright muon tracks visible to the network.
ASINH = 10.0
SHIPPED_LABEL = "kercr default (shipped)"
# Frame-class test sets (issue 22): the first set's frames (same seed, indices and CR rate) made with
# every frame of one class of kercr.data.frames.SyntheticFrames. Each has a cache key of its own
# (TestData.set_key), so adding one never invalidates the cached metrics of the sets before it.
FRAME_CLASSES = {
    "dominant": dict(dominant_sources=1.0),  # one galaxy or nebula over 30-70 % of the field
    "integer": dict(integer_frames=1.0),  # 10-30 e-/ADU, sky <= 100 ADU, whole ADU
}


@dataclasses.dataclass(frozen=True)
class Scale:
    """A benchmark scale: the training recipe (TrainConfig options) and the test frames."""

    name: str
    recipe: dict
    frame_shape: tuple
    test_frames: int
    test_cr_rate_scale: float

    @property
    def patch_size(self) -> int:
        return int(self.recipe["patch_size"])

    @property
    def eval_batch(self) -> int:
        """Batch size of test inference and timing (bounded memory at 256 px)."""
        return 16 if self.patch_size <= 128 else 8


RECIPES = {
    # Smoke test: seconds per model; the numbers mean nothing. Dense CRs (40x) so that the
    # 8 validation patches of 64 px on one 256 x 256 exposure hold CR pixels.
    "tiny": Scale("tiny", dict(epochs=1, steps_per_epoch=2, validation_steps=2, patch_size=64, batch_size=4,
                               frames=4, frame_shape=[256, 256], cr_rate_scale=40.0, asinh_softening=ASINH),
                  (256, 256), 2, 20.0),
    # A few epochs on 2 CPU cores (the quickstart's data at 128 px).
    "cpu": Scale("cpu", dict(epochs=5, steps_per_epoch=25, validation_steps=6, patch_size=128, batch_size=16,
                             frames=12, frame_shape=[1024, 1024], cr_rate_scale=10.0, asinh_softening=ASINH),
                 (1024, 1024), 4, 5.0),
    # The reference recipe: kercr-train's defaults (256 px patches, batch 16, 20 x 100 steps,
    # 20 DECam-sized exposures at 5x the dark rate, Dice+BCE, Adam 1e-3 with plateau decay),
    # with the asinh input stretch of the shipped model.
    "gpu": Scale("gpu", dict(epochs=20, steps_per_epoch=100, validation_steps=20, patch_size=256, batch_size=16,
                             frames=20, frame_shape=[4096, 2048], cr_rate_scale=5.0, asinh_softening=ASINH),
                 (4096, 2048), 8, 5.0),
}

logger = logging.getLogger("reference_table")


def slug(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", label).strip("_").lower()


# --------------------------------------------------------------------------------------------
# test sets


class _RawKeepingFrames:
    """Wrap a :class:`SyntheticFrames` to also keep the raw ADU frame (for astroscrappy).

    ``SyntheticFrames._make`` is the one definition of a frame (seeding, CRs, footprints), so the
    raw frame comes from the same call whose output the source normalizes.
    """

    def __init__(self, source):
        self.source = source
        self.raw = None
        make = source._make

        def _make(i):
            out = make(i)
            self.raw = out
            return out

        source._make = _make

    def frame(self, i):
        self.source._cache.clear()  # force _make, so raw and normalized frames are the same frame
        image, mask, weight = self.source.frame(i)
        image_adu, _, ignore, _ = self.raw
        return image, mask, weight, np.asarray(image_adu, np.float32), np.asarray(ignore, bool)


def test_sets(scale: Scale, n_frames: int, normalization=None) -> dict:
    """``{name: SyntheticFrames}`` of the benchmark (the footprint set only when the file exists).

    The frame-class sets (:data:`FRAME_CLASSES`) come last: with a class fraction of 1, every frame
    of such a set is of its class (:meth:`SyntheticFrames.frame_class`).
    """
    from kercr.data.frames import SyntheticFrames, load_footprints

    sets = {"synthetic": SyntheticFrames(seed=TEST_SEED, shape=scale.frame_shape, normalization=normalization,
                                         cr_rate_scale=scale.test_cr_rate_scale, cache=1)}
    path = FOOTPRINTS.resolve()
    if path.is_file():
        sets["real footprints"] = SyntheticFrames(
            seed=TEST_SEED, shape=scale.frame_shape, cr_rate_scale=scale.test_cr_rate_scale * FOOTPRINT_RATE_CUT,
            cache=1, footprints=load_footprints(path), footprint_fraction=FOOTPRINT_FRACTION,
            normalization=normalization)
    else:
        print(f"[reference_table] {path} not found: skipping the real-footprint test set", flush=True)
    for name, options in FRAME_CLASSES.items():
        sets[name] = SyntheticFrames(seed=TEST_SEED, shape=scale.frame_shape, normalization=normalization,
                                     cr_rate_scale=scale.test_cr_rate_scale, cache=1, **options)
    return sets


FOOTPRINTS_ONLY = "footprints only"


def simulated_crs(source, i) -> np.ndarray:
    """Pixels of frame ``i``'s simulated CRs in a footprint set, grown by one pixel (bool).

    The frame rendered without footprints: its CRs, noise and sources are drawn from the same
    seeds (the footprints have a random stream of their own), so its CR mask is exactly the
    simulated part of the footprint frame's truth.
    """
    import copy

    from scipy import ndimage

    from kercr.data.frames import SyntheticFrames

    plain = copy.copy(source)
    plain.footprints, plain._cache = None, {}
    _, cr_mask, _, _ = SyntheticFrames._make(plain, i)  # the class's, not a wrapper set on the instance
    return ndimage.binary_dilation(cr_mask, structure=np.ones((3, 3), bool))


def grid_tiles(image, mask, weight, patch_size):
    """Non-overlapping ``patch_size`` tiles covering the frame: ``(x, y, w)`` (n, p, p, 1) arrays."""
    from kercr.data.patches import make_patches

    ny, nx = image.shape
    if ny % patch_size or nx % patch_size:
        raise ValueError(f"frame {image.shape} is not a multiple of patch_size={patch_size}")
    (xs, ys, ws), _ = make_patches(image, mask, weight, patch_size=patch_size, mode="grid", seed=TEST_SEED)
    return tuple(np.ascontiguousarray(a[..., None], dtype=np.float32) for a in (xs, ys, ws))


class TestData:
    """The prepared test sets: per set, the list of frames as grid tiles and raw ADU frames.

    Frames are generated once and kept in memory (gpu scale, 8 frames: about 0.8 GB per set).
    ``normalization`` (a :class:`kercr.data.normalization.NormalizationConfig`) is the one the
    evaluated models were trained with; it changes the network input only, never the truth, the
    ignore mask or the raw frames.
    """

    def __init__(self, scale: Scale, n_frames: int, normalization=None, first_frame: int = 0):
        self.scale, self.n_frames, self.normalization = scale, n_frames, normalization
        self.first_frame = int(first_frame)
        self.sets = {}
        for name, source in test_sets(scale, n_frames, normalization).items():
            wrapped = _RawKeepingFrames(source)
            frames, only = [], []
            for i in range(self.first_frame, self.first_frame + n_frames):
                kind = source.frame_class(i)
                if name in FRAME_CLASSES and kind != name:
                    raise RuntimeError(f"test set {name!r}: frame {i} is of class {kind!r}")
                image, mask, weight, raw, ignore = wrapped.frame(i)
                config = source.frame_config(i)  # the CCD astroscrappy is told about
                frames.append(dict(tiles=grid_tiles(image, mask, weight, scale.patch_size), raw=raw,
                                   truth=mask > 0.5, ignore=(weight <= 0) | ignore, frame_class=kind,
                                   gain=config.gain, readnoise=config.readnoise_e,
                                   satlevel=config.saturation_adu + config.bias_adu))
                if source.footprints:  # the same frame scored on its footprints alone
                    simulated = simulated_crs(source, i)
                    kept = np.where(simulated, np.float32(0), weight)
                    only.append(dict(frames[-1], tiles=grid_tiles(image, mask, kept, scale.patch_size),
                                     ignore=(kept <= 0) | ignore | simulated))
            self.sets[name] = frames
            if only:
                self.sets[FOOTPRINTS_ONLY] = only
        for name, frames in self.sets.items():
            cr = sum(int((f["truth"] & ~f["ignore"]).sum()) for f in frames)
            print(f"[reference_table] test set {name!r}: {n_frames} frames of {scale.frame_shape}, "
                  f"{cr} CR pixels (not ignored)", flush=True)

    def base_sets(self) -> list[str]:
        """The sets under :meth:`key`: every set but the frame-class ones."""
        return [name for name in self.sets if name not in FRAME_CLASSES]

    def class_sets(self) -> list[str]:
        """The frame-class sets, each under its own :meth:`set_key`."""
        return [name for name in self.sets if name in FRAME_CLASSES]

    def key(self) -> str:
        """A digest of the benchmark definition (invalidates cached test metrics when it changes).

        It covers the base sets only (the definition before the frame-class sets existed, so the
        metrics cached by earlier runs stay valid); each frame-class set has its own :meth:`set_key`.
        """
        spec = dict(seed=TEST_SEED, shape=self.scale.frame_shape, n=self.n_frames, patch=self.scale.patch_size,
                    **({"first": self.first_frame} if self.first_frame else {}),
                    rate=self.scale.test_cr_rate_scale, fp=[FOOTPRINT_RATE_CUT, FOOTPRINT_FRACTION],
                    sets=sorted(self.base_sets()), timing=[TIMING_PIXELS, TIMING_THREADS],
                    norm=self.normalization.to_dict() if self.normalization is not None else None)
        return hashlib.sha1(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]

    def set_key(self, name: str) -> str:
        """A digest of the definition of the frame-class set ``name`` (its cached metrics' key)."""
        spec = dict(seed=TEST_SEED, shape=self.scale.frame_shape, n=self.n_frames, patch=self.scale.patch_size,
                    first=self.first_frame, rate=self.scale.test_cr_rate_scale, set=name, options=FRAME_CLASSES[name],
                    norm=self.normalization.to_dict() if self.normalization is not None else None)
        return hashlib.sha1(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]

    def timing_input(self) -> np.ndarray:
        x = np.concatenate([f["tiles"][0] for f in self.sets["synthetic"]])
        n = max(1, TIMING_PIXELS // (self.scale.patch_size**2))
        return x[:n]


# --------------------------------------------------------------------------------------------
# evaluation


def evaluate_model(model, data: TestData, batch_size: int, *, tta: bool = False, names=None) -> dict:
    """Pooled test metrics of ``model`` on every test set, or on the sets ``names`` (``tta``: each tile
    scored as its four-flip average)."""
    from kercr.evaluation import pooled_metrics, pooled_predictions
    from kercr.models import logit_model

    logits = logit_model(model) is not None
    out = {}
    for name, frames in data.sets.items():
        if names is not None and name not in names:
            continue
        parts = []
        for f in frames:
            x, y, w = f["tiles"]
            batches = [(x[b:b + batch_size], y[b:b + batch_size], w[b:b + batch_size])
                       for b in range(0, len(x), batch_size)]
            parts.append(pooled_predictions(model, batches, tta=tta))
        truth, score, ignore = (np.concatenate(p) for p in zip(*parts))
        out[name] = pooled_metrics(truth, score, ignore, logits=logits)
    return out


def time_model_subprocess(model_path: Path, x_path: Path, batch_size: int) -> float | None:
    """Mpix/s of ``model.predict`` on 2 CPU threads, measured in a fresh process."""
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="-1", TF_CPP_MIN_LOG_LEVEL="2",
               OMP_NUM_THREADS=str(TIMING_THREADS))
    cmd = [sys.executable, __file__, "--time-model", str(model_path), "--time-input", str(x_path),
           "--time-batch", str(batch_size)]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True)
    for line in res.stdout.splitlines():
        if line.startswith("MPIX_PER_S "):
            return float(line.split()[1])
    print(f"[reference_table] timing {model_path} failed:\n{res.stderr[-2000:]}", flush=True)
    return None


def _time_main(model_path: str, x_path: str, batch_size: int) -> None:
    """Subprocess entry: pin to 2 cores, 2 TF threads, time predict (warm-up + best of 3)."""
    cpus = sorted(os.sched_getaffinity(0))[:TIMING_THREADS] if hasattr(os, "sched_getaffinity") else None
    if cpus:
        os.sched_setaffinity(0, cpus)
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(TIMING_THREADS)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    import keras

    import kercr.losses, kercr.metrics, kercr.models  # noqa: F401,E401  (register custom objects)

    model = keras.saving.load_model(model_path)
    x = np.load(x_path)
    model.predict(x, batch_size=batch_size, verbose=0)  # warm-up (tracing, allocation)
    best = np.inf
    for _ in range(3):
        t0 = time.perf_counter()
        model.predict(x, batch_size=batch_size, verbose=0)
        best = min(best, time.perf_counter() - t0)
    print(f"MPIX_PER_S {x[..., 0].size / best / 1e6:.6f}", flush=True)


def astroscrappy_baseline(data: TestData) -> dict:
    """L.A.Cosmic (astroscrappy) at its default operating point on the raw test frames."""
    try:
        import astroscrappy
    except ImportError:
        print("[reference_table] astroscrappy is not installed: skipping the L.A.Cosmic baseline", flush=True)
        return {}
    out = {}
    for name, frames in data.sets.items():
        tp = fp = fn = tn = 0
        seconds, pixels = 0.0, 0
        for f in frames:
            t0 = time.perf_counter()
            crmask, _ = astroscrappy.detect_cosmics(f["raw"], inmask=f["ignore"], gain=f.get("gain", GAIN),
                                                    readnoise=f.get("readnoise", READNOISE),
                                                    satlevel=f.get("satlevel", SATLEVEL))
            seconds += time.perf_counter() - t0
            pixels += f["raw"].size
            keep, truth, pred = ~f["ignore"], f["truth"], np.asarray(crmask, bool)
            tp += int(np.count_nonzero(truth & pred & keep))
            fp += int(np.count_nonzero(~truth & pred & keep))
            fn += int(np.count_nonzero(truth & ~pred & keep))
            tn += int(np.count_nonzero(~truth & ~pred & keep))
        out[name] = {
            "dice": 2 * tp / max(1, 2 * tp + fp + fn), "tpr": tp / max(1, tp + fn), "fpr": fp / max(1, fp + tn),
            "precision": tp / max(1, tp + fp), "mpix_per_s": pixels / seconds / 1e6,
        }
    return out


# --------------------------------------------------------------------------------------------
# the table


def train_row(row, scale: Scale, out: Path, verbose) -> tuple[Path, dict]:
    from kercr.config import resolve_config
    from kercr.training import train

    run = out / "runs" / slug(row.label)
    config = resolve_config(None, dict(scale.recipe, model=row.model, model_options=dict(row.overrides),
                                       data="synthetic", out=str(run), seed=0))
    print(f"[reference_table] training {row.label!r} ({row.model} {row.overrides}) in {run}", flush=True)
    metrics = train(config, verbose=verbose)
    return run, metrics


def row_results(row, scale: Scale, out: Path, data: TestData, timing_x: Path, verbose) -> dict:
    import keras

    from kercr.models import count_trainable

    run, val = train_row(row, scale, out, verbose)
    best = run / "best.keras"
    cache = run / "reference_test.json"
    mtime = best.stat().st_mtime_ns
    stamp = f"{data.key()}:{mtime}"
    set_stamps = {name: f"{data.set_key(name)}:{mtime}" for name in data.class_sets()}
    batch = scale.eval_batch
    if cache.is_file():
        cached = json.loads(cache.read_text())
        if cached.get("stamp") == stamp and cached.get("mpix_per_s") is not None:
            # The base sets are cached; score only the frame-class sets not cached under their own key.
            done = cached.get("set_stamps", {})
            missing = [n for n, s in set_stamps.items() if done.get(n) != s or n not in cached["test"]]
            if not missing:
                print(f"[reference_table] {row.label!r}: cached test metrics", flush=True)
                return cached
            print(f"[reference_table] {row.label!r}: cached test metrics, scoring the set(s) {missing}", flush=True)
            new = evaluate_model(keras.saving.load_model(best), data, batch, names=missing)
            cached["test"] = {n: new[n] if n in new else cached["test"][n] for n in data.sets}
            cached["set_stamps"] = dict(done, **{n: set_stamps[n] for n in missing})
            cache.write_text(json.dumps(cached, indent=2) + "\n")
            return cached
    model = keras.saving.load_model(best)
    result = {
        "stamp": stamp, "set_stamps": set_stamps, "label": row.label, "run": str(run.relative_to(out)),
        "params": count_trainable(model), "val_dice": val.get("dice"), "val_tpr": val.get("tpr_at_fpr_1e-4"),
        "test": evaluate_model(model, data, batch), "mpix_per_s": time_model_subprocess(best, timing_x, batch),
    }
    cache.write_text(json.dumps(result, indent=2) + "\n")
    return result


def extra_results(spec: str, scale: Scale, data_for, timing_x: Path, tta=None) -> tuple[object, dict]:
    """Test metrics of an already trained model (``"default"``, a ``.keras`` file or a run directory).

    It is evaluated on the same test frames, normalized with the model's own constants
    (``data_for(normalization)`` returns the matching :class:`TestData`). Its validation columns
    come from its model card or run metrics, that is from its OWN validation set, and the row
    says so. A model whose card asks for flips (``"tta"``; ``tta`` True/False overrides the card) is
    scored as ``kercr.detect`` runs it,
    each tile averaged over its four flips (its speed column is then a quarter of the network's).
    """
    from types import SimpleNamespace

    from kercr.detection import load_model
    from kercr.models import count_trainable

    loaded = load_model(spec)
    card = dict(loaded.card)
    val = card.get("validation") or {}
    if not val and loaded.path is not None:
        metrics = Path(loaded.path).parent / "metrics.json"
        val = json.loads(metrics.read_text()) if metrics.is_file() else {}
    arch = card.get("architecture") or loaded.model.name
    tta = bool(card.get("tta", False)) if tta is None else bool(tta)
    label = (f"{SHIPPED_LABEL}, {arch}" if spec == "default" else f"{Path(spec).name}, {arch}") + \
        (", four-flip average" if tta else "") + " (val: its own validation set)"
    data = data_for(loaded.normalization)
    batch = scale.eval_batch
    print(f"[reference_table] evaluating {label} ({loaded.path})", flush=True)
    result = {
        "label": label, "run": None, "params": count_trainable(loaded.model),
        "val_dice": val.get("dice"), "val_tpr": val.get("tpr_at_fpr_1e-4"),
        "test": evaluate_model(loaded.model, data, batch, tta=tta),
        "mpix_per_s": time_model_subprocess(Path(loaded.path), timing_x, batch) if loaded.path else None,
    }
    if tta and result["mpix_per_s"]:
        result["mpix_per_s"] /= 4
    row = SimpleNamespace(label=label, params=None, val_dice=None, val_tpr=None, test_dice=None, test_tpr=None)
    return row, result


COLUMNS = ["model", "test set", "scale", "params", "val Dice", "val TPR@0.01%", "test Dice", "test TPR@0.01%",
           "test TPR@0.1%", "precision@95% recall", "FPR (op. point)", "CPU Mpix/s (2 thr)",
           "ref params", "ref val Dice", "ref val TPR@0.01%", "ref test Dice", "ref test TPR@0.01%", "curves"]


def _f(v, digits=4):
    if v is None:
        return "n/a"
    if isinstance(v, (int, np.integer)):
        return f"{int(v):,}"
    return f"{v:.{digits}f}" if np.isfinite(v) else "n/a"


def table_rows(results, rows, lacosmic, scale: Scale) -> list[dict]:
    table = []
    for row, res in zip(rows, results):
        for set_name, m in res["test"].items():
            ref = set_name == "synthetic" and row.params is not None  # reference values: first test set only
            table.append({
                "model": row.label, "test set": set_name, "scale": scale.name, "params": _f(res["params"]),
                "val Dice": _f(res["val_dice"]), "val TPR@0.01%": _f(res["val_tpr"]),
                "test Dice": _f(m["dice"]), "test TPR@0.01%": _f(m["tpr_at_fpr_1e-4"]),
                "test TPR@0.1%": _f(m["tpr_at_fpr_1e-3"]), "precision@95% recall": _f(m["precision_at_recall_0.95"]),
                "FPR (op. point)": "", "CPU Mpix/s (2 thr)": _f(res["mpix_per_s"], 3),
                "ref params": _f(row.params) if ref else "", "ref val Dice": _f(row.val_dice) if ref else "",
                "ref val TPR@0.01%": _f(row.val_tpr) if ref else "", "ref test Dice": _f(row.test_dice) if ref else "",
                "ref test TPR@0.01%": _f(row.test_tpr) if ref else "",
                "curves": f"[loss]({res['run']}/loss.png) [dice]({res['run']}/dice.png)" if res["run"] else "-",
            })
    for set_name, m in lacosmic.items():
        table.append({
            "model": "astroscrappy (L.A.Cosmic, defaults)", "test set": set_name, "scale": scale.name, "params": "-",
            "val Dice": "-", "val TPR@0.01%": "-", "test Dice": _f(m["dice"]),
            "test TPR@0.01%": f"n/a (binary; TPR {m['tpr']:.4f})", "test TPR@0.1%": "n/a",
            "precision@95% recall": "n/a", "FPR (op. point)": f"{m['fpr']:.2e}",
            "CPU Mpix/s (2 thr)": f"{m['mpix_per_s']:.3f} (1 thr, full frame)",
            **{c: "" for c in COLUMNS if c.startswith("ref ")}, "curves": "-",
        })
    return table


def write_outputs(out: Path, table: list[dict], scale: Scale, data: TestData) -> str:
    with (out / "table.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(table)
    header = (
        f"# kercr reference table, scale `{scale.name}`\n\n"
        f"Recipe (every reference row): `{json.dumps(scale.recipe)}`, seed 0, Dice+BCE, Adam 1e-3. "
        "Rows marked \"val: its own validation set\" are already trained models (`--extra-model`, by default "
        "the shipped one) evaluated on the same test frames with their own normalization; their "
        "validation columns come from their model card.\n\n"
        f"Test: {data.n_frames} SyntheticFrames of {scale.frame_shape[0]}x{scale.frame_shape[1]}, seed {TEST_SEED}"
        + (f" (frames {data.first_frame} to {data.first_frame + data.n_frames - 1})" if data.first_frame else "") + ", "
        f"CRs at {scale.test_cr_rate_scale:g}x DECam's dark rate; `real footprints` = same frames with "
        f"{FOOTPRINT_RATE_CUT:g}x that simulated rate plus {FOOTPRINT_FRACTION:g}x as many ITL-dark footprints; "
        f"`{FOOTPRINTS_ONLY}` = that set scored on its footprints alone (simulated CRs, grown by 1 px, ignored); "
        "`dominant` = the same frames, each with one galaxy or nebula over 30-70 % of the field; `integer` = the "
        "same frames from a high-gain imager (10-30 e-/ADU, sky <= 100 ADU), in whole ADU (astroscrappy is given "
        "each frame's gain). "
        f"All {scale.patch_size}-px grid tiles, pixels pooled, ignored pixels (weight 0) excluded. "
        "Dice at p = 0.5. astroscrappy gives a binary mask: its TPR/FPR are at its own operating point, "
        "no ROC metrics. Reference values (`ref *`, DECam test set, 7,168 patches of 256 px) are for "
        "comparison only" + (" and are not comparable at this scale" if scale.name != "gpu" else "") + ".\n\n"
        f"Benchmark key `{data.key()}`"
        + "".join(f", `{n}` set key `{data.set_key(n)}`" for n in data.class_sets())
        + "; protocol in `benchmarks/reference_table.py`.\n\n"
    )
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(str(r[c]) for c in COLUMNS) + " |" for r in table]
    text = header + "\n".join(lines) + "\n"
    (out / "table.md").write_text(text)
    return text


def summary_table(results, rows, lacosmic) -> str:
    """One line per model (the test sets side by side): the form BENCHMARKS.md quotes."""
    lines = ["| model | params | val Dice | val TPR@0.01% | test Dice | test TPR@0.01% | test TPR@0.1% | "
             "precision@95% recall | real-fp Dice | real-fp TPR@0.01% | real-fp TPR@0.1% | "
             "dominant TPR@0.01% | integer TPR@0.01% | CPU Mpix/s | ref test Dice | ref test TPR@0.01% |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row, res in zip(rows, results):
        s, f = res["test"].get("synthetic", {}), res["test"].get("real footprints", {})
        d, i = res["test"].get("dominant", {}), res["test"].get("integer", {})

        def m(sets, key):
            return _f(sets[key]) if key in sets else ""

        ref = row.params is not None
        cells = [row.label, _f(res["params"]), _f(res["val_dice"]), _f(res["val_tpr"]), m(s, "dice"),
                 m(s, "tpr_at_fpr_1e-4"), m(s, "tpr_at_fpr_1e-3"), m(s, "precision_at_recall_0.95"), m(f, "dice"),
                 m(f, "tpr_at_fpr_1e-4"), m(f, "tpr_at_fpr_1e-3"), m(d, "tpr_at_fpr_1e-4"), m(i, "tpr_at_fpr_1e-4"),
                 _f(res["mpix_per_s"], 3),
                 _f(row.test_dice) if ref else "", _f(row.test_tpr) if ref else ""]
        lines.append("| " + " | ".join(cells) + " |")
    if lacosmic:  # a binary detector: Dice, and TPR at its own FPR
        s, f = lacosmic.get("synthetic", {}), lacosmic.get("real footprints", {})
        d, i = lacosmic.get("dominant", {}), lacosmic.get("integer", {})

        def op(m):
            return f"TPR {m['tpr']:.4f} at FPR {m['fpr']:.2e}" if m else ""

        cells = ["astroscrappy (L.A.Cosmic, defaults)", "-", "-", "-", _f(s.get("dice")), op(s), "", "",
                 _f(f["dice"]) if f else "", op(f), "", op(d), op(i), f"{s['mpix_per_s']:.3f} (1 thr, full frame)",
                 "", ""]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", choices=sorted(RECIPES), default="tiny")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--rows", default=None, help="comma-separated REFERENCE_TABLE labels (default: all; 'none' "
                                                     "trains no row and scores only the --extra-model ones)")
    parser.add_argument("--test-frames", type=int, default=None, help="test frames per set (default per scale)")
    parser.add_argument("--first-test-frame", type=int, default=0, metavar="K",
                        help="index of the first test frame (default 0; another K gives unseen frames)")
    parser.add_argument("--extra-model", action="append", default=None, metavar="NAME|PATH",
                        help="also evaluate this trained model on the test sets (repeatable; default: 'default', "
                             "the shipped model; 'none' for no extra row)")
    parser.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                        help="score the extra models averaged over four flips (default: each model card's choice)")
    parser.add_argument("--verbose", default=2, help="Keras fit verbosity (0, 1, 2)")
    parser.add_argument("--time-model", help=argparse.SUPPRESS)
    parser.add_argument("--time-input", help=argparse.SUPPRESS)
    parser.add_argument("--time-batch", type=int, default=16, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.time_model:
        _time_main(args.time_model, args.time_input, args.time_batch)
        return 0
    if args.out is None:
        parser.error("--out DIR is required")

    from kercr.models.registry import REFERENCE_TABLE

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    scale = RECIPES[args.scale]
    rows = list(REFERENCE_TABLE)
    if args.first_test_frame < 0:
        parser.error(f"--first-test-frame {args.first_test_frame}: give a frame index of 0 or more")
    if args.rows:
        wanted = [s.strip() for s in args.rows.split(",") if s.strip() and s.strip().lower() != "none"]
        labels = {r.label: r for r in REFERENCE_TABLE}
        unknown = [w for w in wanted if w not in labels]
        if unknown:
            parser.error(f"unknown row(s) {unknown}; choose from: {', '.join(labels)}")
        rows = [labels[w] for w in wanted]
    n_frames = args.test_frames or scale.test_frames
    verbose = int(args.verbose) if str(args.verbose).isdigit() else args.verbose
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)

    from kercr.data.normalization import NormalizationConfig

    recipe_norm = NormalizationConfig(asinh_softening=scale.recipe.get("asinh_softening"))
    datasets = {}

    def data_for(normalization):
        key = json.dumps(normalization.to_dict(), sort_keys=True)
        if key not in datasets:
            datasets[key] = TestData(scale, n_frames, normalization, first_frame=args.first_test_frame)
        return datasets[key]

    data = data_for(recipe_norm)
    timing_x = out / "timing_input.npy"
    np.save(timing_x, data.timing_input())
    results = [row_results(row, scale, out, data, timing_x, verbose) for row in rows]
    extras = [e for e in (args.extra_model or ["default"]) if e.lower() != "none"]
    for spec in extras:
        row, res = extra_results(spec, scale, data_for, timing_x, tta=args.tta)
        rows.append(row)
        results.append(res)
    lacosmic = astroscrappy_baseline(data)
    text = write_outputs(out, table_rows(results, rows, lacosmic, scale), scale, data)
    (out / "summary.md").write_text(summary_table(results, rows, lacosmic))
    from kercr.plots import plot_runs
    from kercr.training import read_history

    curves = plot_runs({res["label"]: read_history(out / res["run"] / "history.csv")
                        for res in results if res.get("run")}, out / "curves.png")
    print(f"[reference_table] wrote {curves}", flush=True)
    print(text, flush=True)
    print(f"[reference_table] wrote {out / 'table.md'} and {out / 'table.csv'}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
