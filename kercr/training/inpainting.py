"""Training the inpainting network on synthetic frames, whose CR-free truth is exact (issue 24).

    python -m kercr.training.inpainting --out runs/inpainter [--frames 96] [--epochs 10]

Each training frame is one of kercr's synthetic DECam-like exposures (variety ``"wide"``: a new
random imager each, CRs at 10 x DECam's rate, real dark-frame footprints when
``../shared/data`` has them, large galaxies, 30 % of the footprints on sources), made with its
CR-free twin (``SyntheticFrames._make``). The frame with its CRs is normalized as detection does
(:data:`INPAINT_NORMALIZATION`: no clipping, so star cores keep their values); the twin is
normalized with the same sky and noise (:func:`kercr.data.normalization.normalize_like`). The
pixels to replace are the CR mask, grown by 0 or 1 pixel (the frame's draw), less the ignored
pixels; every patch is centred on one of them. The network sees the image with those pixels set
to 0 and the mask (:func:`kercr.data.cleaning.masked_input`) and is trained with :class:`kercr.losses.WeightedMSE`
on them alone. Frames are split by exposure: the last ``val_frames`` are the validation set.

Writes ``OUT/inpainter.keras`` (the best validation loss), ``OUT/normalization.json``,
``OUT/history.json`` and ``OUT/metrics.json``; an interrupted run resumes from ``OUT/backup``
with the same command.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from pathlib import Path

import numpy as np

from kercr.data.cleaning import dilate_mask, masked_input
from kercr.data.frames import SyntheticFrames, load_footprints
from kercr.data.normalization import NormalizationConfig, normalize, normalize_like
from kercr.model_files import write_json, write_normalization

__all__ = ["INPAINT_NORMALIZATION", "InpaintingConfig", "inpainting_examples", "train_inpainter"]

logger = logging.getLogger(__name__)

#: The inpainting network's normalization: the shipped detector's (diff2 noise, asinh stretch of
#: softening 10) without its clipping at -10 and 1000 noise units, so a CR on a bright star core
#: is replaced by star-core values.
INPAINT_NORMALIZATION = NormalizationConfig(clip_min=None, clip_max=None, asinh_softening=10.0,
                                            noise_estimator="diff2")
_ROOT = Path(__file__).resolve().parents[2]
#: The real footprints, named as the training configs name them (relative to the repository root,
#: so a card records no machine's path); used when ``../shared/data`` is there.
_FOOTPRINTS = "../shared/data/cr_footprints/cosmic_rays_itl_2017_even.fits"


@dataclasses.dataclass(frozen=True)
class InpaintingConfig:
    """A training run of the inpainting network (sizes in pixels)."""

    frames: int = 96
    val_frames: int = 8
    frame_shape: tuple = (1024, 1024)
    patch: int = 48
    patches_per_frame: int = 96
    batch_size: int = 32
    epochs: int = 10
    learning_rate: float = 1e-3
    dilations: tuple = (0, 1)
    seed: int = 24
    footprints: str | None = _FOOTPRINTS if (_ROOT / _FOOTPRINTS).exists() else None


def _frames(config: InpaintingConfig) -> SyntheticFrames:
    footprints = load_footprints(_ROOT / config.footprints) if config.footprints else None  # absolute stays absolute
    return SyntheticFrames(seed=config.seed, shape=tuple(config.frame_shape), variety="wide", cr_rate_scale=10,
                           footprints=footprints, extended_sources=3, on_source_fraction=0.3)


def inpainting_examples(config: InpaintingConfig, frame_ids) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(x, y, w)``: inputs ``(N, P, P, 2)``, clean targets ``(N, P, P)`` and loss weights ``(N, P, P)``
    (1 on the pixels to replace) of ``config.patches_per_frame`` patches per frame of ``frame_ids``."""
    source = _frames(config)
    p, half = config.patch, config.patch // 2
    xs, ys, ws = [], [], []
    for i in frame_ids:
        image, cr_mask, ignore, clean = source._make(i)
        bad = np.asarray(ignore, bool) | ~np.isfinite(image) | ~np.isfinite(clean)
        normalized, params = normalize(image, mask=bad, config=INPAINT_NORMALIZATION)
        target = normalize_like(np.where(bad, image, clean), params)
        rng = np.random.default_rng([config.seed, 5501, int(i)])
        replace = dilate_mask(cr_mask, int(rng.choice(config.dilations))) & ~bad
        cy, cx = np.nonzero(replace[half:-half, half:-half])
        if cy.size == 0:
            continue
        pick = rng.choice(cy.size, size=min(config.patches_per_frame, cy.size), replace=False)
        for y, x in zip(cy[pick], cx[pick]):
            window = (slice(y, y + p), slice(x, x + p))  # centred on (y + half, x + half) of the frame
            xs.append(masked_input(normalized[window], replace[window]))
            ys.append(target[window])
            ws.append(replace[window].astype(np.float32))
    if not xs:
        raise ValueError("no CR pixels in these frames to train the inpainting network on.")
    return np.stack(xs), np.stack(ys)[..., None], np.stack(ws)[..., None]


def train_inpainter(config: InpaintingConfig, out) -> dict:
    """Train the inpainting network by ``config`` into the folder ``out``; returns ``metrics.json``'s content."""
    import keras  # heavy: training

    from kercr.losses import WeightedMSE  # heavy: Keras
    from kercr.models import build_inpainter  # heavy: Keras

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    keras.utils.set_random_seed(config.seed)
    train_ids = range(config.frames - config.val_frames)
    val_ids = range(config.frames - config.val_frames, config.frames)
    logger.info("making %d training and %d validation frames", len(train_ids), len(val_ids))
    x, y, w = inpainting_examples(config, train_ids)
    xv, yv, wv = inpainting_examples(config, val_ids)
    model = build_inpainter()
    model.compile(optimizer=keras.optimizers.Adam(config.learning_rate), loss=WeightedMSE())
    callbacks = [
        keras.callbacks.BackupAndRestore(str(out / "backup")),
        keras.callbacks.ModelCheckpoint(str(out / "inpainter.keras"), monitor="val_loss", save_best_only=True),
        keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=0.5, patience=2, min_lr=1e-5),
    ]
    history = model.fit(x, y, sample_weight=w, validation_data=(xv, yv, wv), batch_size=config.batch_size,
                        epochs=config.epochs, callbacks=callbacks, verbose=2)
    write_normalization(out, INPAINT_NORMALIZATION)
    write_json(out / "history.json", {k: [float(v) for v in vals] for k, vals in history.history.items()})
    metrics = {"config": dataclasses.asdict(config), "train_patches": int(len(x)), "val_patches": int(len(xv)),
               "replaced_pixels_val": int(wv.sum()), "best_val_loss": float(min(history.history["val_loss"])),
               "units": "mean squared error of the replaced pixels in normalized units (noise, asinh softening 10)"}
    write_json(out / "metrics.json", metrics)
    return metrics


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kercr.training.inpainting",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="run folder")
    parser.add_argument("--frames", type=int, default=InpaintingConfig.frames)
    parser.add_argument("--val-frames", type=int, default=InpaintingConfig.val_frames)
    parser.add_argument("--frame-shape", type=int, nargs=2, default=list(InpaintingConfig.frame_shape))
    parser.add_argument("--patches-per-frame", type=int, default=InpaintingConfig.patches_per_frame)
    parser.add_argument("--epochs", type=int, default=InpaintingConfig.epochs)
    parser.add_argument("--seed", type=int, default=InpaintingConfig.seed)
    args = parser.parse_args(argv)
    if not 0 < args.val_frames < args.frames:
        parser.error(f"--val-frames {args.val_frames} must be between 1 and --frames - 1.")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    config = InpaintingConfig(frames=args.frames, val_frames=args.val_frames, frame_shape=tuple(args.frame_shape),
                              patches_per_frame=args.patches_per_frame, epochs=args.epochs, seed=args.seed)
    metrics = train_inpainter(config, args.out)
    print(json.dumps({k: metrics[k] for k in ("train_patches", "val_patches", "best_val_loss")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
