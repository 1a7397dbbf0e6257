"""Issue 22.1: should the network see the image divided by its per-pixel noise, or the image and a noise channel?

Usage::

    python benchmarks/noise_channel.py train [--config configs/compare_models.toml] [--out DIR] [--epochs N]
    python benchmarks/noise_channel.py score --model RUN [RUN ...] [--repeats 10] [--out DIR] [--tiny]

The two inputs
--------------
``division`` (the shipped input): ``normalize`` with the config's per-pixel noise model (for
``configs/compare_models.toml`` the gated relative input), one channel: ``(image - background) /
noise`` per pixel, then the asinh stretch. Its run is ``runs/compare_deepcr_2_32`` (trained by
``kercr-train --config configs/compare_models.toml --model deepcr_2_32``).

``channel``: two channels, the rest of the recipe unchanged:
    0. ``(image - background) / frame noise``, stretched as the division input is: the same
       per-pixel background (:func:`kercr.data.normalization.input_maps` of the same config)
       subtracted, divided by the frame's one noise instead of each pixel's own;
    1. ``log2(noise / frame noise)`` of the division input's per-pixel noise (``input_maps``).
Where the gate is shut (the background within 5 noise units of the sky) the background and noise
are the frame's, so channel 0 is the division input there and channel 1 is 0; elsewhere the two
inputs differ only in whether the noise divides the image or sits beside it. The network learns
what to do with the noise instead of being handed a quotient. ``train`` runs
``kercr.training.run.train`` on the same config (same frames, patches, flips, seeds, loss,
schedule and checkpoints; it resumes when run again) with the architecture built with
``channels=2`` and this input; the run folder's ``input.json`` says so. ``kercr.detect`` does not
load such a run (its model takes two channels): ``score`` predicts it here.

``score``
---------
Each run, scored by the same code whatever its input (the input read from the run: two channels,
or its ``normalization.json``): the whole frame, reflect-padded by 16 pixels and to the network's
input multiple, predicted as it is and flipped along rows, columns and both, the four logits
flipped back and averaged (:func:`kercr.data.augment.flip_average`; ``detect(tta=True)`` with
every pixel flipped, which tiles instead and so differs by float round-off), in Keras.

- Real frames: ``benchmarks/real_frames.py``'s 23 DECam and GMOS frames as they are, with the
  same footprint injections (``--repeats``, default 10), ignored pixels excluded, pooled.
- Frame classes: ``benchmarks/frame_classes.py``'s plain / dominant / integer synthetic frames
  (seed 9001, 6 per class of 1024 x 1024; ``--tiny``: one 256 x 256 frame per class), pooled per class.

Metrics: TPR at 0.01 % and 0.1 % FPR and precision at 95 % recall on the pooled pixels, ranked by
the averaged logits; the share of false positives at the pooled 0.01 % FPR cut that touch a CR.
Writes ``DIR/noise_channel.json`` (``--out``, default ``runs/noise_channel``) and prints a
markdown table.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from frame_classes import CLASSES, FOOTPRINTS, TINY_SHAPE, class_frames, frame_source  # noqa: E402
from real_frames import SHARED, injected, near_crs, real_frames, vary  # noqa: E402

MARGIN = 16  # pixels of reflect padding around a frame (more than deepCR-2-32's receptive field)
INPUT_FILE = "input.json"


def image_config(config):
    """``config`` with one sky and noise per frame: the frame's noise (and the stretch) of channel 0."""
    return dataclasses.replace(config, noise_model="global", local_gate=None, local_min_blocks=None)


def two_channels(image, mask, config) -> np.ndarray:
    """The channel input of ``image`` (ny, nx, 2), float32: ``(image - background) / frame noise``,
    stretched, and ``log2`` of the per-pixel noise over the frame's noise; ``background`` and
    ``noise`` are those ``config``'s input divides by (:func:`~kercr.data.normalization.input_maps`)."""
    from kercr.data.normalization import NormalizationParams, input_maps, normalize_like, robust_sky_noise

    sky, sigma, n = robust_sky_noise(image, mask=mask, config=config)  # the frame's, as normalize measures them
    params = NormalizationParams(config=image_config(config), sky=sky, noise=sigma, n_pixels=n)
    background, noise = input_maps(image, mask=mask, config=config)
    shifted = np.asarray(image, np.float32) - background
    shifted += np.float32(params.sky)
    x = normalize_like(shifted, params)  # (image - background) / frame noise, then the stretch
    ratio = np.log2(noise / np.float32(params.noise)).astype(np.float32)
    return np.stack([x, ratio], axis=-1)


class ChannelFrames:
    """A :class:`kercr.data.frames.SyntheticFrames` whose frames carry the channel input:
    ``frame(i) -> (image, noise_channel, cr_mask, weight)``, each (ny, nx) float32 (the loaders stack
    the two input maps as channels)."""

    def __init__(self, base, config, cache=2):
        self.base, self.config, self.cache, self._cache = base, config, int(cache), {}

    def exposure_ids(self, n):
        return self.base.exposure_ids(n)

    def frame(self, i):
        if i not in self._cache:
            image_adu, cr_mask, ignore, _ = self.base._make(i)
            bad = np.asarray(ignore, bool) | ~np.isfinite(image_adu)
            x = two_channels(image_adu, bad, self.config)
            weight = np.ones(bad.shape, np.float32)
            weight[bad] = 0.0
            if len(self._cache) >= self.cache:
                self._cache.pop(next(iter(self._cache)))
            self._cache[i] = (x[..., 0], x[..., 1], np.asarray(cr_mask, np.float32), weight)
        return self._cache[i]


def channel_training_data(config, *, initial_epoch=0, strategy=None):
    """``kercr.training.data.make_training_data`` for the channel input (synthetic frames only):
    the same frames, exposure split, patch positions and flips, two channels."""
    from kercr.data.frames import load_footprints, patch_batches
    from kercr.data.loader import PatchBatches
    from kercr.data.patches import split_exposures
    from kercr.training.data import TrainingData, synthetic_patches_per_frame, synthetic_source

    if config.data != "synthetic" or config.loss == "median_bce" or config.rim_weight != 1:
        raise SystemExit("the channel input is wired for data = 'synthetic', a loss without median weights and "
                         "rim_weight 1")
    stamps = load_footprints(config.footprints) if config.footprints else None
    norm = config.normalization_config()
    source = ChannelFrames(synthetic_source(config, cache=1, footprints=stamps), norm)
    ids = source.exposure_ids(config.frames)
    train_ids, val_ids = split_exposures(ids, val_fraction=config.val_fraction, seed=config.seed)
    val_source = ChannelFrames(synthetic_source(config, cache=1, footprints=stamps), norm, cache=1)
    val_batches = patch_batches(val_source, val_ids, n_batches=config.validation_steps,
                                batch_size=config.batch_size, patch_size=config.patch_size, seed=config.seed)
    train = PatchBatches(source, train_ids, batch_size=config.batch_size, patch_size=config.patch_size,
                         patches_per_frame=synthetic_patches_per_frame(config), steps=config.steps_per_epoch,
                         seed=config.seed, initial_epoch=initial_epoch)
    return TrainingData(train, val_batches)


def train_main(args) -> int:
    from kercr.config import read_config_file, resolve_config
    import kercr.training.run as run

    flags = {"out": args.out, "model_options": {"channels": 2}, "epochs": args.epochs,
             "steps_per_epoch": args.steps_per_epoch, "frames": args.frames, "validation_steps": args.validation_steps}
    config = resolve_config(read_config_file(args.config), flags)
    out = Path(config.out)
    if (out / "config.json").is_file() and not (out / INPUT_FILE).is_file():
        raise SystemExit(f"{out} holds a kercr-train run of the one-channel input; pick a new --out")

    def data(config, **kwargs):
        # kercr-train checks the run folder first, then asks for the data: the input is recorded
        # beside the run from here (a fresh folder must hold nothing of its own before that check).
        out.mkdir(parents=True, exist_ok=True)
        (out / INPUT_FILE).write_text(json.dumps({
            "input": "channel", "channels": ["(image - background) / frame noise, stretched",
                                             "log2(noise / frame noise)"],
            "maps": "background and noise: kercr.data.normalization.input_maps with normalization.json",
            "made_by": "benchmarks/noise_channel.py train", "config": str(args.config)}, indent=2))
        return channel_training_data(config, **kwargs)

    original, run.make_training_data = run.make_training_data, data  # the run's data; the rest is kercr-train's
    try:
        metrics = run.train(config, verbose=2)
    finally:
        run.make_training_data = original  # kercr-train's own again (for callers in this process)
    print(json.dumps(metrics, indent=2))
    return 0


class Predictor:
    """A run's network with its input: ``logits(image, mask)`` -> (ny, nx) float32, four flips averaged."""

    def __init__(self, run):
        import keras

        from kercr.model_files import read_normalization
        from kercr.models import input_multiple, logit_model

        run = Path(run)
        network = keras.saving.load_model(run / "best.keras")
        self.model, self.multiple = logit_model(network), input_multiple(network)
        self.config = read_normalization(run / "normalization.json")
        self.channels = int(self.model.input_shape[-1])

    def inputs(self, image, mask):
        from kercr.data.normalization import normalize

        if self.channels == 2:
            return two_channels(image, mask, self.config)
        return normalize(image, mask=mask, config=self.config)[0][..., None]

    def logits(self, image, mask):
        from kercr.data.augment import flip_average

        x = self.inputs(np.asarray(image, np.float32), mask)
        ny, nx = x.shape[:2]
        m = self.multiple
        pad = ((MARGIN, MARGIN + (-(ny + 2 * MARGIN)) % m), (MARGIN, MARGIN + (-(nx + 2 * MARGIN)) % m), (0, 0))
        x = np.pad(x, pad, mode="reflect")[None]
        mean = flip_average(lambda batch: np.asarray(self.model.predict_on_batch(batch))[..., 0], x)[0]
        return mean[MARGIN:MARGIN + ny, MARGIN:MARGIN + nx]


def pooled_row(truth, score, near) -> dict:
    from kercr import metrics as M

    order = np.sort(score[~truth])
    cut = order[-max(1, int(1e-4 * order.size))]
    fp = ~truth & (score >= cut)
    return {"cr_pixels": int(truth.sum()), "non_cr_pixels": int((~truth).sum()),
            "tpr_at_fpr_1e-4": float(M.tpr_at_fpr(truth, score, 1e-4)),
            "tpr_at_fpr_1e-3": float(M.tpr_at_fpr(truth, score, 1e-3)),
            "precision_at_recall_0.95": float(M.precision_at_recall(truth, score, 0.95)),
            "false_positives_at_1e-4": int(fp.sum()),
            "share_touching_a_cr": float((fp & near).sum() / max(fp.sum(), 1))}


def score_main(args) -> int:
    from kercr.data.frames import load_footprints

    have_real = (SHARED / "decam_cp").is_dir()
    if not have_real:
        print(f"[noise_channel] {SHARED}/decam_cp not found: frame classes only", file=sys.stderr)
    stamps = load_footprints(FOOTPRINTS) if FOOTPRINTS.is_file() else None
    per_class = 1 if args.tiny else 6
    source = frame_source(shape=TINY_SHAPE if args.tiny else (1024, 1024), footprints=stamps)
    classes = class_frames(source, per_class)
    report = {"repeats": args.repeats, "frames_per_class": per_class, "tiny": args.tiny, "models": {}}
    for run in args.model:
        t0 = time.perf_counter()
        predictor = Predictor(run)
        rows = {}
        if have_real:
            frames, real_stamps = vary(real_frames(), stamps, "as-is")
            pooled = [[], [], []]
            for _, _, img, truth, _, ignore, *_ in injected(frames, real_stamps, args.repeats):
                logit = predictor.logits(img, ignore)
                for p, a in zip(pooled, (truth, logit, near_crs(truth))):
                    p.append(a[~ignore])
            rows["real frames"] = pooled_row(*(np.concatenate(p) for p in pooled))
        for kind in CLASSES:
            pooled = [[], [], []]
            for _, image, truth, ignore in classes[kind]:
                logit = predictor.logits(image, ignore)
                for p, a in zip(pooled, (truth, logit, near_crs(truth))):
                    p.append(a[~ignore])
            rows[kind] = pooled_row(*(np.concatenate(p) for p in pooled))
        report["models"][str(run)] = {"channels": predictor.channels, "rows": rows,
                                      "seconds": time.perf_counter() - t0}
        print(f"[noise_channel] {run}: {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "noise_channel.json").write_text(json.dumps(report, indent=2))
    print(f"{args.repeats} injections of the real frames; {per_class} frame(s) per synthetic class; "
          "four flips; ignored pixels excluded")
    print("| run | input | frames | TPR@0.01% FPR | TPR@0.1% FPR | precision@95% recall | FPs at 1e-4 touching a CR |")
    print("|---|---|---|---|---|---|---|")
    for run, m in report["models"].items():
        for name, r in m["rows"].items():
            print(f"| {run} | {'channel' if m['channels'] == 2 else 'division'} | {name} | {r['tpr_at_fpr_1e-4']:.4f} "
                  f"| {r['tpr_at_fpr_1e-3']:.4f} | {r['precision_at_recall_0.95']:.4f} "
                  f"| {r['share_touching_a_cr']:.0%} of {r['false_positives_at_1e-4']} |")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train (or resume) the channel input's run")
    t.add_argument("--config", default="configs/compare_models.toml")
    t.add_argument("--out", default="runs/channel_deepcr_2_32")
    t.add_argument("--epochs", type=int)
    t.add_argument("--steps-per-epoch", type=int)
    t.add_argument("--frames", type=int)
    t.add_argument("--validation-steps", type=int)
    s = sub.add_parser("score", help="score runs of either input with one code path")
    s.add_argument("--model", nargs="+", required=True, help="run directories (best.keras, normalization.json)")
    s.add_argument("--repeats", type=int, default=10, help="injections per real frame (default 10)")
    s.add_argument("--tiny", action="store_true", help="one 256 x 256 frame per synthetic class (a smoke test)")
    s.add_argument("--out", default="runs/noise_channel")
    args = parser.parse_args(argv)
    return train_main(args) if args.command == "train" else score_main(args)


if __name__ == "__main__":
    sys.exit(main())
