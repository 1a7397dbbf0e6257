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

import json
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


def _example(image, mask, weight) -> bytes:
    feats = {"image": _feature(image), "mask": _feature(mask), "weight": _feature(weight),
             "size": tf.train.Feature(int64_list=tf.train.Int64List(value=[np.shape(image)[0]]))}
    return tf.train.Example(features=tf.train.Features(feature=feats)).SerializeToString()


class _Shards:
    """Numbered shard files ``{folder}/{prefix}-NNNNN.tfrecord``, ``shard_size`` records each.

    Each shard is streamed to a hidden temporary name and renamed once complete, so a shard under
    its final name is always whole. ``first`` is the number of the first shard to write (a resumed
    run starts after the shards it already has).
    """

    def __init__(self, folder, *, prefix="patches", shard_size=1024, first=0):
        self.folder, self.prefix, self.shard_size = str(folder), prefix, int(shard_size)
        self.count, self.paths, self._writer, self._n = int(first), [], None, 0

    def add(self, record) -> bool:
        """Write one serialized example; True when it completed a shard."""
        if self._writer is None:
            self._writer = tf.io.TFRecordWriter(self._partial())
        self._writer.write(record)
        self._n += 1
        return self._n == self.shard_size and self.close()

    def close(self) -> bool:
        """Finish the open shard, if any; True when one was finished."""
        if self._writer is None:
            return False
        self._writer.close()
        path = f"{self.folder}/{self.prefix}-{self.count:05d}.tfrecord"
        tf.io.gfile.rename(self._partial(), path, overwrite=True)
        self.paths.append(path)
        self.count, self._writer, self._n = self.count + 1, None, 0
        return True

    def _partial(self):
        return f"{self.folder}/.{self.prefix}-{self.count:05d}.tfrecord.partial"


def write_tfrecords(patches, out_dir, *, prefix="patches", shard_size=1024) -> list[str]:
    """Write ``(image, mask, weight)`` patches to sharded TFRecord files; returns the shard paths.

    Refuses to write into a folder that already holds shards with this prefix (never overwrite).
    Each shard is written under a hidden temporary name and renamed once complete.
    """
    out_dir = str(out_dir)
    tf.io.gfile.makedirs(out_dir)
    if tf.io.gfile.glob(f"{out_dir}/{prefix}-*.tfrecord"):
        raise FileExistsError(f"{out_dir}: already holds {prefix}-*.tfrecord shards; choose a new folder or prefix.")
    shards, n = _Shards(out_dir, prefix=prefix, shard_size=shard_size), 0
    for image, mask, weight in patches:
        shards.add(_example(image, mask, weight))
        n += 1
    shards.close()
    logger.info("wrote %d patches to %d shards in %s", n, len(shards.paths), out_dir)
    return shards.paths


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
    ``val/patches-*.tfrecord`` and ``prepare.json`` (patch size, counts, the exposure split), which
    marks the folder finished.

    An interrupted run resumes: while it works, ``prepare.progress.json`` records its options and the
    shards written so far (each shard is renamed into place once complete), and a second call with
    the same options continues from the first shard that is missing, giving the same shards as an
    uninterrupted run. A folder with ``prepare.json``, with shards of other options, or with shards
    and no record is refused.

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
    out_dir = str(out_dir).rstrip("/")
    if tf.io.gfile.exists(f"{out_dir}/prepare.json"):
        raise FileExistsError(f"{out_dir} already holds prepared shards (prepare.json); choose a new --out.")
    if int(shard_size) < 1:
        raise ValueError(f"shard_size={shard_size} must be >= 1 patches per shard file (default 1024).")
    train_ids, val_ids = split_exposures(exposure_ids, val_fraction=val_fraction, seed=seed)
    plan = json.loads(json.dumps({
        "patch_size": int(patch_size), "patches_per_frame": int(patches_per_frame), "seed": int(seed),
        "shard_size": int(shard_size), "train_exposures": [str(i) for i in train_ids],
        "val_exposures": [str(i) for i in val_ids], **(metadata or {})}))
    done = _progress(out_dir, plan)
    for name, ids, offset in (("train", train_ids, 0), ("val", val_ids, 1)):
        keys = frame_keys(source, ids)
        frame, skip = done[name]["next"]
        if frame or skip:
            logger.info("resuming %s in %s: %d shards already written", name, out_dir, done[name]["shards"])
        tf.io.gfile.makedirs(f"{out_dir}/{name}")
        shards = _Shards(f"{out_dir}/{name}", shard_size=shard_size, first=done[name]["shards"])
        for k in range(frame, len(keys)):
            arrays = source.frame(keys[k])
            if len(arrays) != 3:
                raise ValueError(f"frame {keys[k]!r} carries {len(arrays) - 2} input maps; shards hold one image per "
                                 "patch. Train on such a source in process (kercr-train without --data SHARDS).")
            image, mask, weight = arrays
            (xs, ys, ws), _ = make_patches(image, mask, weight, patch_size=patch_size, n_patches=patches_per_frame,
                                           mode="random", seed=np.random.default_rng([seed, offset, k]))
            for j in range(skip if k == frame else 0, len(xs)):
                if shards.add(_example(xs[j][..., None], ys[j][..., None], ws[j][..., None])):
                    # Where the next shard starts: the run resumes there.
                    done[name] = {"shards": shards.count, "next": [k, j + 1] if j + 1 < len(xs) else [k + 1, 0]}
                    write_progress(out_dir, plan, done)
        shards.close()
        done[name] = {"shards": shards.count, "next": [len(keys), 0]}
        write_progress(out_dir, plan, done)
    meta = {**plan, **{name: {"exposures": len(ids), "shards": done[name]["shards"]}
                       for name, ids in (("train", train_ids), ("val", val_ids))}}
    # prepare.json marks the shards finished: written whole (a temporary name, then a rename).
    _write_json(f"{out_dir}/prepare.json", meta, overwrite=False)
    tf.io.gfile.remove(f"{out_dir}/{PROGRESS}")
    return meta


PROGRESS = "prepare.progress.json"


def _write_json(path, content, *, overwrite=True):
    folder, name = path.rsplit("/", 1)
    partial = f"{folder}/.{name}.partial"
    with tf.io.gfile.GFile(partial, "w") as f:
        f.write(json.dumps(content, indent=2) + "\n")
    tf.io.gfile.rename(partial, path, overwrite=overwrite)


def write_progress(out_dir, plan, done):
    """Record an unfinished :func:`prepare_shards`: its options and, per split, the shards written
    and the (frame, patch) the next shard starts at."""
    _write_json(f"{out_dir}/{PROGRESS}", {"plan": plan, "done": done})


def _progress(out_dir, plan) -> dict:
    """Where a run with ``plan`` starts: at the beginning, or where an interrupted run of the same
    options stopped. Refuses a folder of shards from other options or from no recorded run."""
    path = f"{out_dir}/{PROGRESS}"
    if tf.io.gfile.exists(path):
        with tf.io.gfile.GFile(path) as f:
            try:
                saved = json.loads(f.read())
                old, done = saved["plan"], saved["done"]
                [int(v) for name in ("train", "val") for v in (done[name]["shards"], *done[name]["next"])]
            except (ValueError, KeyError, TypeError) as err:
                raise FileExistsError(f"{path} is damaged ({err!r}); delete {out_dir} and run kercr-prepare "
                                      "again, or choose a new --out.") from None
        # An option kercr records since the run started (absent from its plan) cannot be compared.
        differ = sorted(key for key in old if old[key] != plan.get(key))
        if differ:
            changed = ", ".join(f"{key} {old.get(key)!r} then, {plan.get(key)!r} now" for key in differ)
            raise FileExistsError(
                f"{out_dir} holds an unfinished kercr-prepare run with other options ({changed}). Run its "
                "command again to finish it, or choose a new --out.")
        return done
    if tf.io.gfile.glob(f"{out_dir}/train/*.tfrecord") or tf.io.gfile.glob(f"{out_dir}/val/*.tfrecord"):
        raise FileExistsError(f"{out_dir} holds shards but neither prepare.json nor {PROGRESS}: they were not "
                              "written by a kercr-prepare run that can be resumed. Delete that folder, or choose a "
                              "new --out.")
    done = {name: {"shards": 0, "next": [0, 0]} for name in ("train", "val")}
    tf.io.gfile.makedirs(out_dir)
    write_progress(out_dir, plan, done)
    return done
