"""kercr.export.litert: kercr's TFLite files in the LiteRT interpreter, alone or two at a time.

The file is the shipped model's prebuilt int8 file (``kercr/weights/default-int8.tflite``), run on
normalized synthetic 64 x 64 tiles; no TensorFlow is needed.
"""

from __future__ import annotations

import os
import threading

import numpy as np
import pytest

pytest.importorskip("ai_edge_litert")

import kercr.export.litert as litert  # noqa: E402
from kercr.data.normalization import normalize  # noqa: E402
from kercr.data.synthetic import make_frame  # noqa: E402
from kercr.export.litert import ParallelTFLiteRunner, TFLiteRunner, available_cpus  # noqa: E402
from kercr.model_files import read_normalization  # noqa: E402
from kercr.weights import WEIGHTS_DIR  # noqa: E402

SHIPPED = WEIGHTS_DIR / "default-int8.tflite"
#: A steep CR track, 6 pixels of 300 ADU above the sky (rows, columns).
TRACK = (np.arange(20, 26), 10 + np.arange(6) // 2)
pytestmark = pytest.mark.skipif(not SHIPPED.is_file(), reason=f"{SHIPPED} is not in this checkout")


@pytest.fixture(scope="module")
def raw():
    """Three raw 64 x 64 tiles (ADU), each with a 6-pixel CR track (:data:`TRACK`, moved down k rows), and
    the shipped model's normalization."""
    image = make_frame(seed=11, shape=(64, 192)).image_adu
    tiles = [image[:, 64 * k:64 * (k + 1)].copy() for k in range(3)]
    for k, tile in enumerate(tiles):
        tile[TRACK[0] + k, TRACK[1]] += 300.0
    return tiles, read_normalization(WEIGHTS_DIR / "normalization.json")


@pytest.fixture(scope="module")
def batch(raw):
    tiles, config = raw
    return np.stack([normalize(tile, config=config)[0] for tile in tiles])


def test_one_runner_takes_one_image_a_batch_or_channels_last(batch):
    runner = TFLiteRunner(SHIPPED, num_threads=1)
    assert runner.resizable and runner.shape[0] == 1 and runner.shape[-1] == 1
    each = np.stack([runner.predict(image) for image in batch])  # (H, W) in, (H, W) out
    assert each.dtype == np.float32 and each.shape == batch.shape and runner.shape == (1, 64, 64, 1)
    np.testing.assert_array_equal(runner.predict(batch), each)
    np.testing.assert_array_equal(runner.predict(batch[..., None]), each[..., None])
    for k in range(3):  # a trained model finds the track (the third tile has ~70 flagged pixels of its own)
        assert (each[k][TRACK[0] + k, TRACK[1]] > 0.5).all() and (each[k] > 0.5).sum() < 80
    with pytest.raises(ValueError, match=r"normalized images have shape \(64,\); pass \(H, W\), \(B, H, W\) or "
                                         r"\(B, H, W, 1\)"):
        runner.predict(batch[0, 0])


def test_a_flatbuffer_in_memory_runs_like_the_file_and_predict_raw_normalizes_first(raw, batch):
    tiles, config = raw
    from_file = TFLiteRunner(SHIPPED, num_threads=1)
    from_bytes = TFLiteRunner(SHIPPED.read_bytes(), num_threads=1)
    np.testing.assert_array_equal(from_bytes.predict(batch), from_file.predict(batch))
    np.testing.assert_array_equal(from_file.predict_raw(tiles[1], config=config), from_file.predict(batch[1]))
    # Without config=, the normalization.json beside the file (as in an export), not NormalizationConfig(),
    # whose other constants gave other probabilities without a word (0.17 apart on a real frame).
    np.testing.assert_array_equal(np.stack([from_file.predict_raw(tile) for tile in tiles]), from_file.predict(batch))
    with pytest.raises(ValueError, match="predict_raw needs the model's normalization: pass config="):
        from_bytes.predict_raw(tiles[0])


def test_a_size_the_model_cannot_take_is_named_and_the_runner_goes_on(batch):
    runner = TFLiteRunner(SHIPPED, num_threads=1)
    expected = runner.predict(batch[0])
    with pytest.raises(ValueError, match=r"on a 65 x 64 image .*not a multiple of the model.s input multiple"):
        runner.predict(np.zeros((65, 64), np.float32))
    np.testing.assert_array_equal(runner.predict(batch[0]), expected)


def test_every_thread_asked_for_is_used():
    """Before, 3 threads made two one-thread interpreters (3 // 2 each), and a core sat idle."""
    assert [r.num_threads for r in ParallelTFLiteRunner(SHIPPED, num_threads=3).runners] == [2, 1]
    assert [r.num_threads for r in ParallelTFLiteRunner(SHIPPED, num_threads=5, max_workers=2).runners] == [3, 2]


def test_one_runner_resizes_to_each_new_shape(batch):
    runner = TFLiteRunner(SHIPPED, num_threads=1)
    wide = np.concatenate([batch[0], batch[1]], axis=1)  # 64 x 128
    got = runner.predict(wide)
    assert got.shape == (64, 128) and runner.shape == (1, 64, 128, 1)
    np.testing.assert_array_equal(runner.predict(batch[0]), TFLiteRunner(SHIPPED, num_threads=1).predict(batch[0]))


def test_parallel_runner_splits_batches_and_gives_the_single_interpreters_output(batch):
    path = SHIPPED
    single = TFLiteRunner(path, num_threads=1)
    pool = ParallelTFLiteRunner(path, num_threads=2)
    assert pool.workers == 2 and ParallelTFLiteRunner(path, num_threads=1).workers == 1
    assert ParallelTFLiteRunner(path, num_threads=8).workers == 2  # two interpreters of 4 threads
    calls = []
    for runner in pool.runners:  # record which images each interpreter gets
        runner.predict = (lambda f: lambda x: calls.append(len(x)) or f(x))(runner.predict)
    expected = single.predict(batch)
    got = pool.predict(batch)  # 3 images: 2 to one interpreter, 1 to the other, in order
    assert sorted(calls) == [1, 2]
    assert got.dtype == np.float32 and got.shape == batch.shape
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(pool.predict(batch[..., None]), expected[..., None])
    np.testing.assert_array_equal(pool.predict(batch[0]), expected[0])  # one image: one interpreter
    with pytest.raises(ValueError, match=r"num_threads=0: pass a number of CPU threads >= 1, or None for every core"):
        ParallelTFLiteRunner(path, num_threads=0)
    with pytest.raises(ValueError, match=r"max_workers=0: pass 1 or more interpreters"):
        ParallelTFLiteRunner(path, max_workers=0)



def test_a_shared_parallel_runner_serves_two_threads_at_once(batch):
    pool = ParallelTFLiteRunner(SHIPPED, num_threads=2)
    expected = TFLiteRunner(SHIPPED, num_threads=1).predict(batch)
    results = [None, None]

    def work(i):
        results[i] = pool.predict(batch)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for got in results:
        np.testing.assert_array_equal(got, expected)


def test_available_cpus_is_the_affinity_mask_else_the_cpu_count(monkeypatch):
    monkeypatch.setattr(litert, "cgroup_cpu_limit", lambda: None)
    if hasattr(os, "sched_getaffinity"):
        assert available_cpus() == len(os.sched_getaffinity(0))
    monkeypatch.delattr(litert.os, "sched_getaffinity", raising=False)
    monkeypatch.setattr(litert.os, "cpu_count", lambda: 6)
    assert available_cpus() == 6
    monkeypatch.setattr(litert.os, "cpu_count", lambda: None)  # unknown: one
    assert available_cpus() == 1
    assert ParallelTFLiteRunner(SHIPPED).workers == 1  # num_threads=None: every core there is


def test_a_containers_cpu_quota_caps_the_cores(tmp_path, monkeypatch):
    """docker --cpus 2 on a 64-core host: 2 workers, not 64 (each holds a model's memory)."""
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert litert.cgroup_cpu_limit(tmp_path) == 2
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert litert.cgroup_cpu_limit(tmp_path) is None
    (tmp_path / "cpu.max").unlink()
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("400000\n")  # cgroup v1
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert litert.cgroup_cpu_limit(tmp_path) == 4
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    assert litert.cgroup_cpu_limit(tmp_path) is None
    assert litert.cgroup_cpu_limit(tmp_path / "none") is None
    monkeypatch.setattr(litert, "cgroup_cpu_limit", lambda: 1)
    assert available_cpus() == 1
