"""tf.data adapter: kercr-prepare's sharded TFRecords of ``(image, mask, weight)`` patches.

The only module of :mod:`kercr.data` that imports TensorFlow. :func:`prepare_shards` cuts the
frames of a frame source of :mod:`kercr.data.frames` (the frames ``kercr-train`` trains on) into
patches and writes them as TFRecord shards; :func:`read_tfrecords` streams them back for
``kercr-train --data DIR``: shuffled, augmented (random flips and 90-degree rotations applied
identically to image, mask and weight), batched and prefetched. ``weight`` is passed to Keras as
``sample_weight``: 0 on ignored pixels. Frames that are not prepared are served by the
``PyDataset`` loader of :mod:`kercr.data.loader` instead.

Shards use ``tf.io.gfile`` paths, so local folders and ``gs://`` buckets work alike.
"""

from __future__ import annotations

import logging

import numpy as np
import tensorflow as tf

from kercr.data.frames import frame_keys
from kercr.data.patches import make_patches, split_exposures

__all__ = ["augment", "write_tfrecords", "read_tfrecords", "prepare_shards"]

logger = logging.getLogger(__name__)


def augment(image, mask, weight, seed):
    """Apply the same random flip / 90-degree rotation to the three (p, p, 1) tensors (stateless)."""
    stacked = tf.concat([image, mask, weight], axis=-1)
    stacked = tf.image.stateless_random_flip_left_right(stacked, seed)
    k = tf.random.stateless_uniform((), seed + 1, 0, 4, dtype=tf.int32)
    stacked = tf.image.rot90(stacked, k)
    return stacked[..., :1], stacked[..., 1:2], stacked[..., 2:3]


def _finish(ds, *, batch_size, shuffle, augment_data, seed, repeat):
    if shuffle:
        ds = ds.shuffle(shuffle, seed=seed, reshuffle_each_iteration=True)
    if augment_data:
        counter = tf.data.Dataset.counter()
        ds = tf.data.Dataset.zip((ds, counter)).map(
            lambda p, i: augment(*p, tf.stack([tf.cast(seed, tf.int64), i])), num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=True)
    if repeat:
        ds = ds.repeat()
    return ds.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)


def _feature(array):
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[np.asarray(array, np.float32).tobytes()]))


def write_tfrecords(patches, out_dir, *, prefix="patches", shard_size=1024) -> list[str]:
    """Write ``(image, mask, weight)`` patches to sharded TFRecord files; returns the shard paths.

    Refuses to write into a folder that already holds shards with this prefix (never overwrite).
    """
    out_dir = str(out_dir)
    tf.io.gfile.makedirs(out_dir)
    if tf.io.gfile.glob(f"{out_dir}/{prefix}-*.tfrecord"):
        raise FileExistsError(f"{out_dir}: already holds {prefix}-*.tfrecord shards; choose a new folder or prefix.")
    paths, writer, n = [], None, 0
    for n, (image, mask, weight) in enumerate(patches):
        if n % shard_size == 0:
            if writer:
                writer.close()
            paths.append(f"{out_dir}/{prefix}-{len(paths):05d}.tfrecord")
            writer = tf.io.TFRecordWriter(paths[-1])
        feats = {"image": _feature(image), "mask": _feature(mask), "weight": _feature(weight),
                 "size": tf.train.Feature(int64_list=tf.train.Int64List(value=[np.shape(image)[0]]))}
        writer.write(tf.train.Example(features=tf.train.Features(feature=feats)).SerializeToString())
    if writer:
        writer.close()
    logger.info("wrote %d patches to %d shards in %s", n + 1 if paths else 0, len(paths), out_dir)
    return paths


def read_tfrecords(pattern, *, patch_size=256, batch_size=8, shuffle=1024, augment_data=True, seed=0, repeat=False):
    """Read shards written by :func:`write_tfrecords` (glob ``pattern``) into batches."""
    files = tf.io.gfile.glob(str(pattern))
    if not files:
        raise FileNotFoundError(f"no TFRecord shards match {pattern}; check the path.")
    spec = {k: tf.io.FixedLenFeature([], tf.string) for k in ("image", "mask", "weight")}
    spec["size"] = tf.io.FixedLenFeature([], tf.int64)

    def parse(record):
        ex = tf.io.parse_single_example(record, spec)
        return tuple(tf.reshape(tf.io.decode_raw(ex[k], tf.float32), (patch_size, patch_size, 1))
                     for k in ("image", "mask", "weight"))

    ds = tf.data.Dataset.from_tensor_slices(sorted(files))
    ds = ds.interleave(tf.data.TFRecordDataset, cycle_length=min(4, len(files)), num_parallel_calls=tf.data.AUTOTUNE,
                       deterministic=True).map(parse, num_parallel_calls=tf.data.AUTOTUNE)
    return _finish(ds, batch_size=batch_size, shuffle=shuffle, augment_data=augment_data, seed=seed, repeat=repeat)


def prepare_shards(source, exposure_ids, out_dir, *, patch_size=256, patches_per_frame=128, val_fraction=0.1,
                   seed=0, shard_size=1024, metadata=None) -> dict:
    """Cut the frames of ``source`` into patches and write ``train/`` and ``val/`` TFRecord shards.

    Exposures, never patches, are split between training and validation
    (:func:`kercr.data.patches.split_exposures`). ``out_dir`` may be any ``tf.io.gfile`` path (a
    local folder or a ``gs://`` bucket); it receives ``train/patches-*.tfrecord``,
    ``val/patches-*.tfrecord`` and ``prepare.json`` (patch size, counts, the exposure split), and
    must not hold shards already (nothing is overwritten).

    Parameters
    ----------
    source : kercr.data.frames.SyntheticFrames, FITSFrames or kercr.data.lco.LCOFrames
        Frame source: normalized frames with CR truth and pixel weights.
    exposure_ids : list
        Exposures to use.
    out_dir : str
    patch_size, patches_per_frame : int
    val_fraction : float
    seed : int
    shard_size : int
        Patches per shard file.
    metadata : dict, optional
        Extra JSON-serializable entries for ``prepare.json``.

    Returns
    -------
    dict
        The content of ``prepare.json``.
    """
    import json

    out_dir = str(out_dir).rstrip("/")
    if tf.io.gfile.exists(f"{out_dir}/prepare.json"):
        raise FileExistsError(f"{out_dir} already holds prepared shards (prepare.json); choose a new --out.")
    if tf.io.gfile.glob(f"{out_dir}/train/*.tfrecord") or tf.io.gfile.glob(f"{out_dir}/val/*.tfrecord"):
        raise FileExistsError(f"{out_dir} holds shards but no prepare.json: an earlier kercr-prepare stopped before "
                              "it finished. Delete that folder, or choose a new --out.")
    if int(shard_size) < 1:
        raise ValueError(f"shard_size={shard_size} must be >= 1 patches per shard file (default 1024).")
    train_ids, val_ids = split_exposures(exposure_ids, val_fraction=val_fraction, seed=seed)

    def patches(ids, offset):
        for k, key in enumerate(frame_keys(source, ids)):
            arrays = source.frame(key)
            if len(arrays) != 3:
                raise ValueError(f"frame {key!r} carries {len(arrays) - 2} input maps; shards hold one image per "
                                 "patch. Train on such a source in process (kercr-train without --data SHARDS).")
            image, mask, weight = arrays
            (xs, ys, ws), _ = make_patches(image, mask, weight, patch_size=patch_size, n_patches=patches_per_frame,
                                           mode="random", seed=np.random.default_rng([seed, offset, k]))
            for x, y, w in zip(xs, ys, ws):
                yield x[..., None], y[..., None], w[..., None]

    counts = {}
    for name, ids, offset in (("train", train_ids, 0), ("val", val_ids, 1)):
        shards = write_tfrecords(patches(ids, offset), f"{out_dir}/{name}", shard_size=shard_size)
        counts[name] = {"exposures": len(ids), "shards": len(shards)}
    meta = {"patch_size": int(patch_size), "patches_per_frame": int(patches_per_frame), "seed": int(seed),
            "train_exposures": [str(i) for i in train_ids], "val_exposures": [str(i) for i in val_ids],
            **counts, **(metadata or {})}
    # prepare.json marks the shards finished: written whole (a temporary name, then a rename).
    partial = f"{out_dir}/.prepare.json.partial"
    with tf.io.gfile.GFile(partial, "w") as f:
        f.write(json.dumps(meta, indent=2) + "\n")
    tf.io.gfile.rename(partial, f"{out_dir}/prepare.json", overwrite=False)
    return meta
