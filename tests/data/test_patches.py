"""Patches, exposure split, real-frame augmentation, and the no-TensorFlow rule of the data core.

Pixel weights are tested in test_data_pixel_weights.py."""

import numpy as np
import pytest

from kercr.data.augment import decam_dq_ignore, make_training_example, random_flip_rot90, sky_augment
from kercr.data.cosmic_rays import CosmicRayModel
from kercr.data.errors import KercrDataError
from kercr.data.patches import default_patch_count, make_patches, patch_positions, split_exposures


def test_default_patch_count_scales_with_area():
    assert default_patch_count((4096, 2048)) == 128
    assert default_patch_count((2048, 2048)) == 64
    assert default_patch_count((100, 100)) == 1


def test_same_seed_same_patches_and_alignment():
    img = np.arange(600 * 500, dtype=np.float32).reshape(600, 500)
    mask = img % 7 == 0
    (p1, m1), pos1 = make_patches(img, mask, patch_size=64, n_patches=10, seed=3)
    (p2, m2), pos2 = make_patches(img, mask, patch_size=64, n_patches=10, seed=3)
    (p3,), pos3 = make_patches(img, patch_size=64, n_patches=10, seed=4)
    np.testing.assert_array_equal(p1, p2)
    assert not np.array_equal(pos1, pos3)
    assert p1.shape == (10, 64, 64) and m1.dtype == bool
    for k, (y0, x0) in enumerate(pos1):
        np.testing.assert_array_equal(p1[k], img[y0:y0 + 64, x0:x0 + 64])
        np.testing.assert_array_equal(m1[k], p1[k] % 7 == 0)  # image and mask cut at the same place


def test_grid_covers_every_pixel():
    pos = patch_positions((300, 200), patch_size=128, mode="grid")
    covered = np.zeros((300, 200), bool)
    for y0, x0 in pos:
        covered[y0:y0 + 128, x0:x0 + 128] = True
    assert covered.all() and len(pos) == 6
    with pytest.raises(KercrDataError, match="smaller than patch_size"):
        patch_positions((100, 300), patch_size=128)


def test_split_by_exposure_never_shares_and_is_deterministic():
    ids = [f"c4d_{i:06d}" for i in range(200)]
    train, val = split_exposures(ids, seed=1)
    assert not set(train) & set(val) and set(train) | set(val) == set(ids)
    assert 8 <= len(val) <= 35  # about 10 %
    assert split_exposures(list(reversed(ids)), seed=1) == (train, val)
    assert split_exposures(ids, seed=2)[1] != val
    # Adding exposures does not move existing ones across the split.
    _, val_more = split_exposures(ids + [f"new_{i}" for i in range(50)], seed=1)
    assert set(val) <= set(val_more)
    small_train, small_val = split_exposures(["a", "b", "c", "d", "e"], seed=0)
    assert len(small_val) == 1 and len(small_train) == 4
    with pytest.raises(KercrDataError, match="at least 2"):
        split_exposures(["only"])


def test_patches_of_split_exposures_do_not_mix():
    frames = {f"exp{i}": np.full((64, 64), i, np.float32) for i in range(10)}
    train, val = split_exposures(frames, seed=0)
    val_values = {float(make_patches(frames[e], patch_size=32, n_patches=4, seed=0)[0][0].mean()) for e in val}
    train_values = {float(make_patches(frames[e], patch_size=32, n_patches=4, seed=0)[0][0].mean()) for e in train}
    assert not val_values & train_values


def test_sky_augment_and_flips_do_not_modify_inputs():
    img = np.arange(12, dtype=np.float32).reshape(3, 4)
    np.testing.assert_array_equal(sky_augment(img, sky_adu=100.0, a=-0.5), img - 50.0)
    mask = img > 5
    ri, rm = random_flip_rot90(img, mask, rng=1)
    np.testing.assert_array_equal(ri > 5, rm)
    assert (img == np.arange(12).reshape(3, 4)).all()


def test_training_example_from_real_frame():
    rng = np.random.default_rng(0)
    clean = (300 + 10 * rng.standard_normal((128, 128))).astype(np.float32)
    clean[5, 5] = np.nan
    dq = np.zeros(clean.shape, int)
    dq[60, :] = 3
    before = clean.copy()
    ex = make_training_example(clean, gain=4.0, exptime=100.0, rng=2, sky_adu=300.0, ignore_mask=decam_dq_ignore(dq),
                               cr_model=CosmicRayModel(rate_per_s=5e3))
    np.testing.assert_array_equal(np.isnan(clean), np.isnan(before))
    assert -0.9 <= ex.sky_scale <= 3.0 and ex.cr_mask.sum() > 20
    assert ex.ignore_mask[5, 5] and ex.ignore_mask[60].all() and not ex.ignore_mask[0, 0]
    base = np.nan_to_num(clean + np.float32(ex.sky_scale * 300.0), nan=0.0)
    usable = ~ex.ignore_mask
    np.testing.assert_array_equal((np.abs(ex.image_adu - base) > 1e-3)[usable], ex.cr_mask[usable])


def test_data_core_imports_no_tensorflow_or_keras(run_without_ml):
    # Load kercr.data without kercr/__init__.py (which imports keras for the models) and block TF/keras.
    result = run_without_ml("""
        import kercr.data, kercr.data.fits_io, kercr.data.synthetic
        frame = kercr.data.make_frame(seed=0, shape=(32, 32))
        assert "kercr.data.pipeline" not in sys.modules
        print("ok", frame.image_adu.shape)
    """)
    assert result.returncode == 0, result.stderr
    assert "ok (32, 32)" in result.stdout


@pytest.mark.parametrize("kwargs, message", [
    ({"patch_size": 0}, "patch_size=0 must be a whole number of pixels >= 1"),
    ({"patch_size": 16, "n_patches": -1}, "n_patches=-1 must be a whole number >= 0"),
])
def test_patch_arguments_are_named(kwargs, message):
    with pytest.raises(KercrDataError, match=message):
        make_patches(np.zeros((64, 64), np.float32), **kwargs)
    with pytest.raises(KercrDataError, match="pass a 2-D"):
        make_patches(np.zeros(64, np.float32), patch_size=16)
