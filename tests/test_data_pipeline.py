"""tf.data pipeline, TFRecord round trip and the Keras PyDataset loader (small shapes)."""

import os
import subprocess
import sys

import numpy as np
import pytest
from astropy.io import fits

from kercr.data.fits_io import write_fits_with_mask
from kercr.data.sources import fits_patches, frame_patches, synthetic_patches
from kercr.data.synthetic import make_frame

SHAPE = (128, 128)


def test_frame_patches_weights_zero_on_ignored():
    f = make_frame(seed=0, shape=SHAPE)
    ignore = f.ignore_mask.copy()
    ignore[:, :10] = True
    patches = frame_patches(f.image_adu, f.cr_mask, ignore, patch_size=128, n_patches=1, seed=0)
    x, y, w = patches[0]
    assert x.shape == y.shape == w.shape == (128, 128, 1) and x.dtype == np.float32
    np.testing.assert_array_equal(w[..., 0] == 0, ignore)
    np.testing.assert_array_equal(y[..., 0], f.cr_mask.astype(np.float32))
    assert abs(float(np.median(x))) < 0.1  # normalized: sky at 0


def test_synthetic_patches_are_seeded():
    a = list(synthetic_patches(seed=1, n_frames=2, shape=SHAPE, patch_size=64, patches_per_frame=3))
    b = list(synthetic_patches(seed=1, n_frames=2, shape=SHAPE, patch_size=64, patches_per_frame=3))
    assert len(a) == 6
    for pa, pb in zip(a, b):
        np.testing.assert_array_equal(pa[0], pb[0])


def test_fits_patches_labelled_and_clean(tmp_path):
    f = make_frame(seed=2, shape=SHAPE)
    labelled = write_fits_with_mask(tmp_path / "lab.fits", f.image_adu, f.cr_mask, extname="N4")
    from astropy.io import fits

    clean = tmp_path / "clean.fits"
    hdr = fits.Header([("EXPTIME", 100.0), ("GAINA", 4.0), ("GAINB", 4.0)])
    fits.HDUList([fits.PrimaryHDU(header=hdr), fits.ImageHDU(f.clean_adu, name="N4"),
                  fits.ImageHDU(f.clean_adu[::-1].copy(), name="S4")]).writeto(clean)
    (x, y, w), = fits_patches([labelled], seed=0, patch_size=128, patches_per_frame=1)
    np.testing.assert_array_equal(y[..., 0], f.cr_mask.astype(np.float32))
    pats = list(fits_patches([clean], seed=0, patch_size=128, patches_per_frame=1))
    assert len(pats) == 2  # two CCDs (N4 and S4), both get simulated CRs
    assert not np.array_equal(pats[0][0], pats[1][0]) and all(p[2].max() == 1.0 for p in pats)


def test_tf_pipeline_and_tfrecords(tmp_path):
    tf = pytest.importorskip("tensorflow")
    from kercr.data.pipeline import read_tfrecords, synthetic_dataset, write_tfrecords

    ds = synthetic_dataset(seed=0, batch_size=4, patch_size=64, frames_per_worker=1, num_workers=2, shape=SHAPE,
                           patches_per_frame=4, shuffle=8)
    batches = list(ds.as_numpy_iterator())
    again = list(synthetic_dataset(seed=0, batch_size=4, patch_size=64, frames_per_worker=1, num_workers=2,
                                   shape=SHAPE, patches_per_frame=4, shuffle=8).as_numpy_iterator())
    assert len(batches) == 2 and batches[0][0].shape == (4, 64, 64, 1)
    for b1, b2 in zip(batches, again):
        np.testing.assert_array_equal(b1[0], b2[0])
    patches = list(synthetic_patches(seed=3, n_frames=1, shape=SHAPE, patch_size=64, patches_per_frame=5))
    shards = write_tfrecords(patches, tmp_path / "tfr", shard_size=2)
    assert len(shards) == 3
    with pytest.raises(FileExistsError):
        write_tfrecords(patches, tmp_path / "tfr")
    read = list(read_tfrecords(str(tmp_path / "tfr" / "*.tfrecord"), patch_size=64, batch_size=5, shuffle=0,
                               augment_data=False).as_numpy_iterator())
    # Shards are interleaved, so match patches regardless of order.
    assert read[0][0].shape == (5, 64, 64, 1)
    for x, w in zip(read[0][0], read[0][2]):
        k = next(i for i, p in enumerate(patches) if np.array_equal(p[0], x))
        np.testing.assert_array_equal(patches[k][2], w)


def test_pydataset_loader():
    pytest.importorskip("keras")
    from kercr.data.loader import PatchBatches, SyntheticFrames

    def batches(epoch):
        source = SyntheticFrames(seed=0, shape=SHAPE, cr_rate_scale=20)
        return PatchBatches(source, [0, 1], batch_size=2, patch_size=64, patches_per_frame=4, steps=4, seed=0,
                            initial_epoch=epoch)

    ds = batches(0)
    assert len(ds) == 4
    x, y, w = ds[3]
    assert x.shape == y.shape == w.shape == (2, 64, 64, 1)
    assert set(np.unique(y)) <= {0.0, 1.0} and set(np.unique(w)) <= {0.0, 1.0}
    # Batch b of epoch e depends only on (seed, e, b): a resumed run sees the same batches.
    np.testing.assert_array_equal(x, batches(0)[3][0])
    ds.on_epoch_end()
    np.testing.assert_array_equal(ds[1][0], batches(1)[1][0])
    assert not np.array_equal(ds[1][0], batches(0)[1][0])
    with pytest.raises(IndexError):
        ds[4]


def test_crs_injected_into_fits_frames_are_the_same_in_every_process(tmp_path):
    # The injection seed comes from the file and extension names; Python's hash() of a str differs
    # between processes (PYTHONHASHSEED), so a resumed run or another worker saw other CRs.
    f = make_frame(seed=5, shape=(96, 80))
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(f.clean_adu, header=fits.Header(
        {"GAIN": 4.0, "RDNOISE": 7.0, "EXPTIME": 90.0, "SATURATE": 45000.0}), name="N4")]).writeto(tmp_path / "a.fits")
    code = ("import sys, hashlib, numpy as np; from kercr.data.frames import FITSFrames; "
            "s = FITSFrames(sys.argv[1], seed=3, cr_rate_scale=200.0); "
            "key = s.frames_of(s.exposure_ids()[0])[0]; image, mask, ignore, clean = s._make(key); "
            "print(int(mask.sum()), hashlib.sha256(np.ascontiguousarray(mask)).hexdigest())")
    runs = [subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True,
                           env={**os.environ, "PYTHONHASHSEED": seed}, check=True).stdout for seed in ("1", "2")]
    assert runs[0] == runs[1] and int(runs[0].split()[0]) > 0
