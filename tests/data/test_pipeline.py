"""tf.data adapter (kercr.data.pipeline): kercr-prepare's TFRecord shards, written and read back."""

import json

import numpy as np
import pytest

from kercr.data.frames import SyntheticFrames
from kercr.data.patches import make_patches

tf = pytest.importorskip("tensorflow")
from kercr.data.pipeline import prepare_shards, read_tfrecords, write_tfrecords  # noqa: E402

SHAPE = (128, 128)


def _patches_of_training_frame(n):
    source = SyntheticFrames(seed=3, shape=SHAPE, cr_rate_scale=20)
    (xs, ys, ws), _ = make_patches(*source.frame(0), patch_size=64, n_patches=n, mode="random", seed=0)
    return [(x[..., None], y[..., None], w[..., None]) for x, y, w in zip(xs, ys, ws)]


def _dihedral(a):
    """The 8 flips and 90-degree rotations of a (p, p, ...) array."""
    return [np.rot90(b, k) for b in (a, a[:, ::-1]) for k in range(4)]


def test_tfrecords_round_trip_and_augment_image_mask_and_weight_alike(tmp_path):
    patches = _patches_of_training_frame(5)
    patches[0][2][:8] = 0.0  # an ignored strip, so the weight's orientation shows
    shards = write_tfrecords(patches, tmp_path / "tfr", shard_size=2)
    assert len(shards) == 3
    with pytest.raises(FileExistsError):
        write_tfrecords(patches, tmp_path / "tfr")
    pattern = str(tmp_path / "tfr" / "*.tfrecord")
    (x, y, w), = read_tfrecords(pattern, patch_size=64, batch_size=5, shuffle=0, augment_data=False).as_numpy_iterator()
    # Shards are interleaved, so match patches regardless of order.
    assert x.shape == (5, 64, 64, 1)
    for xi, yi, wi in zip(x, y, w):
        k = next(i for i, p in enumerate(patches) if np.array_equal(p[0], xi))
        np.testing.assert_array_equal(patches[k][1], yi)
        np.testing.assert_array_equal(patches[k][2], wi)
    (xa, ya, wa), = read_tfrecords(pattern, patch_size=64, batch_size=5, shuffle=4, seed=1).as_numpy_iterator()
    moved = 0
    for xi, yi, wi in zip(xa, ya, wa):
        stacked = np.concatenate([xi, yi, wi], axis=-1)
        k, t = next((k, t) for k, p in enumerate(patches) for t, d in enumerate(_dihedral(p[0]))
                    if np.array_equal(d, xi))
        np.testing.assert_array_equal(stacked, _dihedral(np.concatenate(patches[k], axis=-1))[t])
        moved += t != 0
    assert moved > 0
    with pytest.raises(FileNotFoundError, match="no TFRecord shards"):
        read_tfrecords(str(tmp_path / "none" / "*.tfrecord"))


def test_prepare_shards_cut_the_training_frames_and_split_by_exposure(tmp_path):
    source = SyntheticFrames(seed=0, shape=SHAPE, cr_rate_scale=20)
    meta = prepare_shards(source, [0, 1, 2, 3], tmp_path / "s", patch_size=64, patches_per_frame=3,
                          val_fraction=0.25, seed=0, shard_size=4, metadata={"data": "synthetic"})
    assert json.loads((tmp_path / "s" / "prepare.json").read_text()) == meta
    train, val = ([int(i) for i in meta[k]] for k in ("train_exposures", "val_exposures"))
    assert sorted(train + val) == [0, 1, 2, 3] and val and not set(train) & set(val)
    assert meta["patch_size"] == 64 and meta["data"] == "synthetic"
    assert meta["train"]["shards"] == -(-3 * len(train) // 4)  # 3 patches per frame, 4 per shard
    for name, ids in (("train", train), ("val", val)):
        batches = read_tfrecords(str(tmp_path / "s" / name / "*.tfrecord"), patch_size=64, batch_size=1, shuffle=0,
                                 augment_data=False)
        frames = [source.frame(i) for i in ids]
        n = 0
        for x, y, w in batches.as_numpy_iterator():
            # Each patch is a cut of one of this split's frames, with that frame's mask and weight there.
            found = []
            for image, mask, weight in frames:
                windows = np.lib.stride_tricks.sliding_window_view(image, (64, 64))
                for y0, x0 in np.argwhere((windows == x[0, ..., 0]).all(axis=(2, 3))):
                    found.append(np.array_equal(mask[y0:y0 + 64, x0:x0 + 64], y[0, ..., 0])
                                 and np.array_equal(weight[y0:y0 + 64, x0:x0 + 64], w[0, ..., 0]))
            assert found and all(found)
            n += 1
        assert n == 3 * len(ids)
    with pytest.raises(FileExistsError, match="prepare.json"):
        prepare_shards(source, [0, 1, 2, 3], tmp_path / "s", patch_size=64, patches_per_frame=3)


def test_prepare_shards_refuse_frames_of_several_input_maps(tmp_path):
    class TwoMaps:
        def frame(self, key):
            image, mask, weight = SyntheticFrames(seed=0, shape=(128, 128)).frame(key)
            return image, image, mask, weight

    with pytest.raises(ValueError, match="carries 2 input maps.*in process"):
        prepare_shards(TwoMaps(), [0, 1, 2, 3], tmp_path / "s", patch_size=64, patches_per_frame=3)


class _Killed(Exception):
    pass


class _DiesAt:
    """A frame source that dies while cutting frame number ``at`` (a killed kercr-prepare)."""

    def __init__(self, source, at):
        self.source, self.at, self.calls = source, at, 0

    def frame(self, key):
        self.calls += 1
        if self.calls > self.at:
            raise _Killed
        return self.source.frame(key)


def _shards(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.glob("*/*.tfrecord"))}


def test_an_interrupted_prepare_resumes_to_the_shards_of_an_uninterrupted_run(tmp_path):
    source = SyntheticFrames(seed=0, shape=SHAPE, cr_rate_scale=20)
    ids = list(range(8))
    options = dict(patch_size=64, patches_per_frame=3, val_fraction=0.25, seed=0, shard_size=4)
    whole = prepare_shards(source, ids, tmp_path / "whole", **options)
    expected = _shards(tmp_path / "whole")
    assert len(expected) == whole["train"]["shards"] + whole["val"]["shards"] > 3
    # Killed twice: in the 4th frame (shard 0 done, shard 1 half written), then in the 2nd frame of
    # the resumed run.
    out = tmp_path / "resumed"
    for at in (3, 1):
        with pytest.raises(_Killed):
            prepare_shards(_DiesAt(source, at), ids, out, **options)
        assert not (out / "prepare.json").exists() and (out / "prepare.progress.json").exists()
        assert list((out / "train").glob(".patches-*.tfrecord.partial"))  # the unfinished shard is hidden
        assert set(_shards(out)) < set(expected)  # only whole shards carry their final names
    # A third run finishes; it cuts only the frames the missing shards need.
    counting = _DiesAt(source, at=10**6)
    assert prepare_shards(counting, ids, out, **options) == whole
    assert _shards(out) == expected
    assert counting.calls < len(ids)
    assert not (out / "prepare.progress.json").exists()
    assert json.loads((out / "prepare.json").read_text()) == whole


def test_prepare_refuses_an_unfinished_folder_of_other_options_or_of_no_record(tmp_path):
    source = SyntheticFrames(seed=0, shape=SHAPE, cr_rate_scale=20)
    options = dict(patch_size=64, patches_per_frame=3, val_fraction=0.25, shard_size=4)
    with pytest.raises(_Killed):
        prepare_shards(_DiesAt(source, 3), list(range(8)), tmp_path / "s", seed=0, **options)
    before = _shards(tmp_path / "s")
    with pytest.raises(FileExistsError, match="other options \\(seed 0 then, 1 now.*Run its command again"):
        prepare_shards(source, list(range(8)), tmp_path / "s", seed=1, **options)
    assert _shards(tmp_path / "s") == before  # nothing was written
    (tmp_path / "s" / "prepare.progress.json").write_text("{not json")
    with pytest.raises(FileExistsError, match="damaged"):
        prepare_shards(source, list(range(8)), tmp_path / "s", seed=0, **options)
    (tmp_path / "s" / "prepare.progress.json").unlink()
    with pytest.raises(FileExistsError, match="neither prepare.json nor prepare.progress.json"):
        prepare_shards(source, list(range(8)), tmp_path / "s", seed=0, **options)
    assert _shards(tmp_path / "s") == before


def test_write_tfrecords_names_only_whole_shards(tmp_path):
    patch = (np.ones((8, 8, 1)), np.zeros((8, 8, 1)), np.ones((8, 8, 1)))

    def dies_after(n):
        for _ in range(n):
            yield patch
        raise _Killed

    with pytest.raises(_Killed):
        write_tfrecords(dies_after(5), tmp_path / "a", shard_size=2)
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == [
        ".patches-00002.tfrecord.partial", "patches-00000.tfrecord", "patches-00001.tfrecord"]
    assert write_tfrecords(iter([patch] * 5), tmp_path / "b", shard_size=2) == [
        str(tmp_path / "b" / f"patches-{k:05d}.tfrecord") for k in range(3)]


def test_a_run_interrupted_before_kercr_recorded_more_options_resumes(tmp_path):
    """A plan written by an older kercr lacks the options recorded since (frame_shape, ...): they cannot
    be compared, so the run resumes (before, 'None then' refused it, and the same command again too)."""
    import json

    from kercr.data.pipeline import PROGRESS, _progress

    old_plan = {"patch_size": 64, "seed": 0}
    done = {"train": {"shards": 2, "next": [1, 0]}, "val": {"shards": 0, "next": [0, 0]}}
    (tmp_path / PROGRESS).write_text(json.dumps({"plan": old_plan, "done": done}))
    assert _progress(str(tmp_path), {**old_plan, "frame_shape": [256, 256], "cr_rate_scale": 5.0}) == done
    with pytest.raises(FileExistsError, match="patch_size 64 then, 32 now"):
        _progress(str(tmp_path), {**old_plan, "patch_size": 32})
