"""The data of a ``kercr-train`` run: training and validation batches, split by exposure.

``--data`` selects the source:

- ``synthetic``: kercr's embedded DECam-like frames (:class:`kercr.data.loader.SyntheticFrames`);
- the LCO CR dataset released with Cosmic-CoNN, as published (:class:`kercr.data.lco.LCOFrames`;
  any folder holding ``*_3frms_masks.fits`` files);
- a directory of FITS files: clean frames with injected CRs, or files with a ``CRMASK`` extension
  (:class:`kercr.data.frames.FITSFrames`);
- a directory written by ``kercr-prepare`` (``prepare.json``, ``train/`` and ``val/`` TFRecord
  shards): streamed with tf.data (TensorFlow backend).

The first two are served through ``keras.utils.PyDataset``, so they feed TensorFlow (also under
tf.distribute) and JAX alike. Exposures, never patches, are split 90/10 between training and
validation (:func:`kercr.data.patches.split_exposures`).
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np

from kercr.config import ConfigError, TrainConfig
from kercr.data.frames import load_footprints
from kercr.data.lco import LCOFrames, is_lco_dataset
from kercr.data.loader import FITSFrames, FixedBatches, PatchBatches, SyntheticFrames, patch_batches
from kercr.data.patches import default_patch_count, split_exposures
from kercr.data.pixel_weights import alpha_floor

logger = logging.getLogger(__name__)


class TrainingData:
    """What :func:`kercr.training.train` needs: ``train`` and ``val`` for ``fit``, and helpers."""

    def __init__(self, train, val_batches, *, alpha_variable=None):
        self.train, self._val = train, list(val_batches)
        self.val = FixedBatches(self._val)
        self.alpha = 0.0
        self._alpha_variable = alpha_variable  # read by a tf.data training pipeline's map

    def set_alpha(self, alpha: float) -> None:
        """Floor of the median weights from now on (Cosmic-CoNN's alpha schedule)."""
        self.alpha = float(alpha)
        if hasattr(self.train, "alpha"):
            self.train.alpha = self.alpha
        if self._alpha_variable is not None:
            self._alpha_variable.assign(self.alpha)
        # In place: fit() holds this very FixedBatches, so the floor reaches validation too.
        self.val.batches[:] = [(x, y, alpha_floor(w, alpha)) for x, y, w in self._val]

    def validation_batches(self, steps=None):
        """The validation ``(x, y, w)`` batches; weight 0 marks ignored pixels."""
        return self._val[:steps]

    def validation_sample(self, n: int):
        """``n`` validation patches for TensorBoard images, those with the most CR pixels first."""
        x, y, w = (np.concatenate(a) for a in zip(*self._val))
        order = np.argsort(-y.reshape(len(y), -1).sum(axis=1), kind="stable")[:n]
        return x[order], y[order], w[order]


def check_validation_crs(data: TrainingData) -> None:
    """ConfigError unless the validation patches hold CR pixels (TPR and Dice need some)."""
    if not any(np.any((y > 0.5) & (w > 0)) for _, y, w in data.validation_batches()):
        raise ConfigError(
            "the validation patches hold no (unignored) CR pixels, so TPR and Dice cannot be measured; "
            "raise --validation-steps, --cr-rate-scale or the exposure time / frame size of the data."
        )


def is_shard_dir(data: str) -> bool:
    """True for a folder written by ``kercr-prepare`` (local or any ``tf.io.gfile`` URL)."""
    if data == "synthetic":
        return False
    if "://" in data:
        import tensorflow as tf

        return tf.io.gfile.exists(f"{data.rstrip('/')}/prepare.json")
    return (Path(data) / "prepare.json").is_file()


def _check_fixed_by_shards(config: TrainConfig, meta: dict) -> None:
    """A ConfigError for the frame options that ``kercr-prepare`` fixed when it cut the shards, set
    here to other values (they would be saved in config.json as if used; before, they were)."""
    fixed = {"frames": len(meta.get("train_exposures", [])) + len(meta.get("val_exposures", [])),
             "frame_shape": meta.get("frame_shape"), "cr_rate_scale": meta.get("cr_rate_scale"),
             "patches_per_frame": meta.get("patches_per_frame"), "val_fraction": meta.get("val_fraction"),
             "footprints": None}  # kercr-prepare injects no footprints
    defaults = TrainConfig()
    # Shards prepared before kercr recorded an option (None) cannot tell; footprints never come with shards.
    clash = [f"{key}={getattr(config, key)!r} (the shards': {fixed[key]!r})" for key in fixed
             if getattr(config, key) != getattr(defaults, key) and getattr(config, key) != fixed[key]
             and (fixed[key] is not None or key == "footprints")]
    if clash:
        raise ConfigError(f"{config.data}: kercr-prepare fixed the frames when it cut these shards (prepare.json), so "
                          f"{', '.join(clash)} cannot apply; leave {'it' if len(clash) == 1 else 'them'} out, or run "
                          "kercr-prepare with those options into a new folder.")


def _shards(config: TrainConfig, initial_epoch: int) -> TrainingData:
    import keras

    if keras.backend.backend() != "tensorflow":
        raise ConfigError(
            f"{config.data}: TFRecord shards are read with tf.data, which needs the TensorFlow backend; "
            "under JAX, train from --data synthetic or a directory of FITS files."
        )
    from kercr.data.pipeline import read_tfrecords  # heavy: imports TensorFlow, which only shard runs need

    import tensorflow as tf

    with tf.io.gfile.GFile(f"{config.data.rstrip('/')}/prepare.json") as f:
        meta = json.loads(f.read())
    if meta.get("patch_size") != config.patch_size:
        raise ConfigError(
            f"{config.data} holds {meta.get('patch_size')} px patches but patch_size={config.patch_size}; "
            f"pass --patch-size {meta.get('patch_size')}."
        )
    _check_fixed_by_shards(config, meta)
    median = bool(meta.get("median_weights"))
    if config.loss == "median_bce" and not median:
        raise ConfigError(f"{config.data} was prepared without median weights, so median_bce would train as plain "
                          "BCE; run kercr-prepare --median-weights into a new folder, or pick another --loss.")
    if median and config.loss != "median_bce":
        raise ConfigError(f"{config.data} holds Cosmic-CoNN median weights, which only --loss median_bce uses; "
                          "pass --loss median_bce, or prepare shards without --median-weights.")
    root = config.data.rstrip("/")
    train = read_tfrecords(f"{root}/train/*.tfrecord", patch_size=config.patch_size,
                           batch_size=config.batch_size, seed=config.seed + initial_epoch, repeat=True)
    alpha = None
    if median:  # the alpha schedule's floor, read by the pipeline as the variable changes
        alpha = tf.Variable(0.0, trainable=False, dtype=tf.float32)
        train = train.map(lambda x, y, w: (x, y, tf.where(w > 0, tf.maximum(w, alpha), 0.0)),
                          num_parallel_calls=tf.data.AUTOTUNE)
    val = read_tfrecords(f"{root}/val/*.tfrecord", patch_size=config.patch_size,
                         batch_size=config.batch_size, shuffle=0, augment_data=False, repeat=False)
    val_batches = list(val.take(config.validation_steps).as_numpy_iterator())
    if not val_batches:
        raise ConfigError(f"{root}/val: fewer validation patches than one batch of {config.batch_size}.")
    return TrainingData(train, val_batches, alpha_variable=alpha)


def synthetic_source(config: TrainConfig, *, cache: int = 2, footprints=None) -> SyntheticFrames:
    """The :class:`SyntheticFrames` of a ``data = "synthetic"`` run (``footprints``: the loaded
    stamps of ``config.footprints``, or None to load them here)."""
    if footprints is None and config.footprints:
        footprints = load_footprints(config.footprints)
    return SyntheticFrames(seed=config.seed, shape=config.frame_shape, median_weights=config.loss == "median_bce",
                           cr_rate_scale=config.cr_rate_scale, cache=cache, footprints=footprints,
                           normalization=config.normalization_config(),
                           footprint_fraction=config.footprint_fraction, variety=config.variety,
                           extended_sources=config.extended_sources,
                           on_source_fraction=config.on_source_fraction, sky_e_range=config.sky_e_range,
                           cr_threshold_e=config.cr_threshold_e, faint_crs=config.faint_crs,
                           dominant_sources=config.dominant_sources, integer_frames=config.integer_frames,
                           rim_weight=config.rim_weight, bright_tracks=config.bright_tracks)


def synthetic_patches_per_frame(config: TrainConfig) -> int:
    """Patches cut from each synthetic frame: ``patches_per_frame``, or 128 per 2k x 4k CCD scaled
    by area; at most 4 frames' worth of non-overlapping patches."""
    per_frame = config.patches_per_frame or default_patch_count(tuple(config.frame_shape))
    return min(per_frame, math.prod(config.frame_shape) // config.patch_size**2 * 4)


def make_training_data(config: TrainConfig, *, initial_epoch: int = 0, strategy=None) -> TrainingData:
    """Training and validation batches for ``config``.

    Parameters
    ----------
    config : TrainConfig
    initial_epoch : int
        Epoch the run (re)starts at; training batches depend on ``(seed, epoch, batch)``.
    strategy : tf.distribute.Strategy, optional
        Unused by the PyDataset loaders (Keras distributes them); kept for symmetry.
    """
    if is_shard_dir(config.data):
        if config.asinh_softening is not None:
            raise ConfigError(f"{config.data}: kercr-prepare shards hold linearly normalized patches; asinh_softening "
                              "needs frames (--data synthetic or a FITS directory), or leave it unset.")
        other = [f"{key}={value!r}" for key, value, default in (
            ("noise_estimator", config.noise_estimator, "mad"), ("noise_model", config.noise_model, "global"),
            ("header_noise", config.header_noise, None)) if value != default]
        if other:
            raise ConfigError(f"{config.data}: kercr-prepare shards were normalized with one 'mad' noise per frame; "
                              f"{', '.join(other)} needs frames (--data synthetic or a FITS directory), or leave "
                              "the normalization options at their defaults.")
        if config.rim_weight != 1:
            raise ConfigError(f"{config.data}: kercr-prepare shards hold their pixel weights; rim_weight="
                              f"{config.rim_weight:g} needs frames (--data synthetic, a FITS directory or the LCO "
                              "dataset), or leave it at 1.")
        return _shards(config, initial_epoch)
    median = config.loss == "median_bce"
    norm = config.normalization_config()
    stamps = load_footprints(config.footprints) if config.footprints else None
    if config.data == "synthetic":
        make = lambda cache: synthetic_source(config, cache=cache, footprints=stamps)  # noqa: E731
        source = make(2)
        ids = source.exposure_ids(config.frames)
        per_frame = synthetic_patches_per_frame(config)
    elif is_lco_dataset(config.data):
        make = lambda cache: LCOFrames(config.data, seed=config.seed, median_weights=median, cache=cache,
                                       normalization=norm, rim_weight=config.rim_weight)  # noqa: E731
        source = make(2)
        ids = source.exposure_ids()
        per_frame = config.patches_per_frame or 128
    else:
        make = lambda cache: FITSFrames(config.data, seed=config.seed, median_weights=median, normalization=norm,  # noqa: E731
                                        cr_rate_scale=config.cr_rate_scale, cache=cache, footprints=stamps,
                                        rim_weight=config.rim_weight)
        source = make(2)
        ids = source.exposure_ids()
        per_frame = config.patches_per_frame or 128
        if len(ids) < 2:
            raise ConfigError(
                f"{config.data}: {len(ids)} FITS file; training needs at least 2 exposures so that "
                "validation uses exposures never seen in training."
            )
    train_ids, val_ids = split_exposures(ids, val_fraction=config.val_fraction, seed=config.seed)
    val_batches = patch_batches(make(1), val_ids, n_batches=config.validation_steps,
                                batch_size=config.batch_size, patch_size=config.patch_size, seed=config.seed)
    if not val_batches:
        raise ConfigError("the validation exposures give less than one batch of patches; "
                          "lower --batch-size or add exposures.")
    train = PatchBatches(source, train_ids, batch_size=config.batch_size, patch_size=config.patch_size,
                         patches_per_frame=per_frame, steps=config.steps_per_epoch, seed=config.seed,
                         initial_epoch=initial_epoch)
    logger.info("data %s: %d training and %d validation exposures; %d validation patches",
                config.data, len(train_ids), len(val_ids), len(val_batches) * config.batch_size)
    return TrainingData(train, val_batches)
