"""The LCO CR dataset reader (Cosmic-CoNN's published *_3frms_masks.fits files), on synthetic files
written under tmp_path in the published HDU layout (cy-xu/cosmic-conn docs/source/lco_cr_dataset.rst,
cosmic_conn/cr_pipeline/utils_io.py)."""

import pickle

import numpy as np
import pytest
from astropy.io import fits

from kercr.data.errors import FITSFileNotFoundError, FITSFormatError, KercrDataError
from kercr.data.lco import (
    LCO_IGNORE_BOUNDARY,
    LCO_IGNORE_HOT_PIXEL,
    LCO_IGNORE_NO_DATA,
    LCO_IGNORE_SOURCE,
    find_lco_files,
    is_lco_dataset,
    lco_median_frame,
    lco_median_weights,
    read_lco_file,
)
from kercr.data.pixel_weights import weigh_rim

SHAPE = (64, 64)
STAR = (40, 20)  # (y, x) of a bright star present in all three frames
CRS = [[(10, 50), (11, 50), (11, 51)], [(50, 10), (50, 11)], [(30, 45), (31, 45), (32, 45), (33, 45)]]


def make_set(seed=0, n=3, shape=SHAPE):
    """Frames (e-), CR masks and coded ignore masks of one synthetic exposure set."""
    rng = np.random.default_rng(seed)
    ny, nx = shape
    yy, xx = np.mgrid[:ny, :nx]
    star = 20000.0 * np.exp(-((yy - STAR[0]) ** 2 + (xx - STAR[1]) ** 2) / (2 * 2.0**2))
    frames = np.empty((n, ny, nx), np.float32)
    cr = np.zeros((n, ny, nx), np.uint8)
    for k in range(n):
        frames[k] = 100.0 + 5.0 * k + star + rng.normal(0.0, 10.0, shape)  # sky differs a little per frame
        for y, x in CRS[k % len(CRS)]:
            frames[k, y, x] += 3000.0
            cr[k, y, x] = 1
    ignore = np.zeros((n, ny, nx), np.uint8)
    ignore[:, :4, :] |= LCO_IGNORE_BOUNDARY
    ignore[:, -4:, :] |= LCO_IGNORE_BOUNDARY
    ignore[:, :, :4] |= LCO_IGNORE_BOUNDARY
    ignore[:, :, -4:] |= LCO_IGNORE_BOUNDARY
    ignore[:, -10:, -10:] |= LCO_IGNORE_NO_DATA  # outside the common footprint after reprojection
    frames[:, -10:, -10:] = 0.0
    ignore[:, STAR[0] - 3:STAR[0] + 4, STAR[1] - 3:STAR[1] + 4] |= LCO_IGNORE_SOURCE
    ignore[1, 20, 30] |= LCO_IGNORE_HOT_PIXEL
    return frames, cr, ignore


def write_lco_file(path, frames, cr, ignore, *, exptime=100.0, frmtotal=None, n_cr=None, n_ignore=None,
                   masks=True):
    """Write one file in the published layout: PRIMARY, SCI x n, VALID_MASK, CAT, CR x n, IGNORE x n."""
    n = frames.shape[0]
    primary = fits.Header()
    primary["ALIGNED"] = False
    primary["FRMTOTAL"] = n if frmtotal is None else frmtotal
    hdul = fits.HDUList([fits.PrimaryHDU(header=primary)])
    for k in range(n):
        sci = fits.CompImageHDU(frames[k].astype(np.float32), name="SCI")
        sci.ver = k
        h = sci.header
        h["EXPTIME"], h["GAIN"], h["RDNOISE"], h["SATURATE"] = exptime, 1.0 + 0.1 * k, 7.5, 120000.0
        h["FRMTOTAL"] = 5  # BANZAI's frames in the request, not the file's count
        h["FILENAME"] = f"coj0m403-kb24-20190101-{147 + k:04d}-e91"
        hdul.append(sci)
    hdul.append(fits.CompImageHDU((ignore[0] & LCO_IGNORE_NO_DATA == 0).astype(np.uint8), name="VALID_MASK"))
    hdul.append(fits.BinTableHDU.from_columns(
        [fits.Column(name="x", format="E", array=np.array([STAR[1]], np.float32)),
         fits.Column(name="y", format="E", array=np.array([STAR[0]], np.float32))], name="CAT"))
    if masks:
        for k in range(n if n_cr is None else n_cr):
            h = fits.CompImageHDU(cr[k], header=hdul[k + 1].header, name="CR")
            h.ver = 0  # as listed in the published table
            hdul.append(h)
        for k in range(n if n_ignore is None else n_ignore):
            h = fits.CompImageHDU(ignore[k], header=hdul[k + 1].header, name="ignore")
            h.ver = 0
            hdul.append(h)
    path.parent.mkdir(parents=True, exist_ok=True)
    hdul.writeto(path)
    return path


@pytest.fixture
def dataset(tmp_path):
    """A miniature LCO_CR_dataset tree with 3 labelled sets, a log and an unlabelled aligned file."""
    root = tmp_path / "LCO_CR_dataset"
    files = []
    for i, (sub, name) in enumerate([
        ("train_set/0m4_2019/masked_fits", "coj0m403-kb24-20190101-0147-e91_3frms_masks.fits"),
        ("train_set/0m4_2019/masked_fits", "coj0m403-kb24-20190101-0150-e91_3frms_masks.fits"),
        ("train_set/1m0_2019_2018/masked_fits", "lsc1m005-fa15-20190305-0101-e91_3frms_masks.fits"),
    ]):
        files.append(write_lco_file(root / sub / name, *make_set(seed=i), exptime=30.0 + 50 * i))
    (root / "train_set/0m4_2019/CR_reduction_log.txt").write_text("log\n")
    frames, cr, ignore = make_set(seed=9)
    write_lco_file(root / "test_set/aligned_fits/ogg2m001-ep04-20200101-0001-e91_3frms_aligned.fits",
                   frames, cr, ignore, masks=False)
    write_lco_file(root / "test_set/masked_fits/ogg2m001-ep04-20200101-0001-e91_3frms_masks.fits",
                   frames, cr, ignore)
    return root, files


def test_read_returns_published_arrays(tmp_path):
    frames, cr, ignore = make_set(seed=1)
    path = write_lco_file(tmp_path / "a_3frms_masks.fits", frames, cr, ignore)
    es = read_lco_file(path)
    assert es.n_frames == 3 and es.shape == SHAPE
    assert es.frames.dtype == np.float32 and es.cr_masks.dtype == bool and es.ignore_masks.dtype == bool
    # Tile compression quantizes floats to ~noise/16 (astropy's default, as in the published files).
    np.testing.assert_allclose(es.frames, frames, rtol=0, atol=10.0 / 8)
    assert not np.array_equal(es.frames[0], es.frames[1])  # each SCI HDU read into its own slot
    np.testing.assert_array_equal(es.cr_masks, cr > 0)
    np.testing.assert_array_equal(es.ignore_codes, ignore)
    np.testing.assert_array_equal(es.ignore_masks, ignore > 0)
    assert es.cr_masks[0, 10, 50] and not es.cr_masks[1, 10, 50]  # per-frame masks stay with their frame
    assert es.ignore_codes[1, 20, 30] == LCO_IGNORE_HOT_PIXEL and es.ignore_codes[0, 20, 30] == 0
    assert es.valid_mask.dtype == bool and not es.valid_mask[-1, -1] and es.valid_mask[30, 30]
    assert es.gains == (1.0, 1.1, 1.2) and es.readnoises == (7.5,) * 3 and es.exptimes == (100.0,) * 3
    assert es.filenames[1] == "coj0m403-kb24-20190101-0148-e91" and es.primary_header["FRMTOTAL"] == 3


def test_median_frame_rejects_crs_and_sky_offsets(tmp_path):
    frames, cr, ignore = make_set(seed=2)
    es = read_lco_file(write_lco_file(tmp_path / "m_3frms_masks.fits", frames, cr, ignore))
    med = lco_median_frame(es)
    for k, hits in enumerate(CRS):
        for y, x in hits:
            assert abs(med[y, x]) < 60.0, (k, y, x, med[y, x])  # a CR of one frame is gone from the median
    assert abs(np.median(med[10:30, 30:55])) < 5.0  # each frame's sky (100, 105, 110 e-) subtracted
    assert med[STAR] > 10000.0  # the star stays


def test_median_weights_have_cosmic_conn_properties(tmp_path):
    frames, cr, ignore = make_set(seed=3)
    es = read_lco_file(write_lco_file(tmp_path / "w_3frms_masks.fits", frames, cr, ignore))
    alpha = 0.1
    keep_sources = lco_median_weights(es, alpha=alpha, ignore_bits=LCO_IGNORE_BOUNDARY | LCO_IGNORE_NO_DATA)
    assert keep_sources.shape == (3, *SHAPE) and keep_sources.dtype == np.float32
    assert np.all(keep_sources[:, 10:30, 30:40] == np.float32(alpha))  # plain sky: the floor
    for k, hits in enumerate(CRS):
        for y, x in hits:
            if ignore[k, y, x] == 0 and np.hypot(y - STAR[0], x - STAR[1]) > 8:
                assert keep_sources[k, y, x] == np.float32(alpha)  # CRs are not in the median: no weight boost
    assert keep_sources[0, STAR[0], STAR[1]] > 0.95 and keep_sources.max() == 1.0  # bright source -> 1
    assert np.all(keep_sources[:, :4, :] == 0) and np.all(keep_sources[:, -10:, -10:] == 0)
    full = lco_median_weights(es, alpha=alpha)  # default: every ignore code gets weight 0
    assert np.all(full[:, STAR[0] - 3:STAR[0] + 4, STAR[1] - 3:STAR[1] + 4] == 0)
    assert full[1, 20, 30] == 0 and keep_sources[1, 20, 30] > 0  # hot pixel of frame 1 only
    assert full[0, STAR[0], STAR[1] + 5] > 0.3  # the star's halo outside the source mask keeps a high weight
    assert np.all(full[~es.ignore_masks] >= alpha) and np.all(keep_sources[~es.ignore_masks] >= alpha)
    with pytest.raises(KercrDataError, match="ignore_bits"):
        lco_median_weights(es, alpha=alpha, ignore_bits=16)


def test_find_files_in_published_tree(dataset):
    root, files = dataset
    found = find_lco_files(root)
    names = [p.name for p in found]
    assert len(found) == 4 and not any("aligned" in n for n in names)
    assert found == sorted(found, key=str)
    assert set(files) <= set(found)
    assert find_lco_files(root / "train_set") == sorted(files, key=str)
    assert find_lco_files(root / "train_set/0m4_2019") == files[:2]
    assert find_lco_files(files[2]) == [files[2]]
    assert is_lco_dataset(root / "train_set") and not is_lco_dataset(root / "test_set/aligned_fits")


def test_find_files_errors_name_the_layout(dataset, tmp_path):
    root, _ = dataset
    with pytest.raises(KercrDataError, match=r"3frms_masks\.fits.*aligned_fits"):
        find_lco_files(root / "test_set/aligned_fits")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(KercrDataError, match=r"LCO_CR_dataset/.*masked_fits"):
        find_lco_files(empty)
    with pytest.raises(FITSFileNotFoundError, match="no such"):
        find_lco_files(tmp_path / "nowhere")


def test_lco_frames_gives_images_masks_and_weights(dataset):
    from kercr.data.frames import _CachedFrames, patch_batches
    from kercr.data.lco import LCOFrames

    root, files = dataset
    source = LCOFrames(root / "train_set", seed=0, median_weights=True)
    assert isinstance(source, _CachedFrames)
    ids = source.exposure_ids()
    assert ids == sorted(p.name for p in files)
    keys = source.frames_of(ids[0])
    assert keys == [(ids[0], k) for k in range(3)]
    es = read_lco_file(source.path_of(ids[0]))
    expected_w = lco_median_weights(es, alpha=0.0)
    for k, key in enumerate(keys):
        image, mask, weight = source.frame(key)
        assert image.shape == mask.shape == weight.shape == SHAPE
        assert image.dtype == mask.dtype == weight.dtype == np.float32 and np.isfinite(image).all()
        np.testing.assert_array_equal(mask, es.cr_masks[k].astype(np.float32))  # CR truth untouched
        assert np.all(weight[es.ignore_masks[k]] == 0)  # sky is 0 too: PatchBatches applies the alpha floor
        assert weight[STAR[0], STAR[1] + 5] > 0.3  # the star's halo outside the source mask
        np.testing.assert_allclose(weight, expected_w[k], rtol=0, atol=1e-6)
        assert abs(np.median(image[10:30, 30:55])) < 0.5  # normalized: sky ~ 0 in noise units
    plain = LCOFrames(root / "train_set", seed=0, ignore_bits=LCO_IGNORE_BOUNDARY)
    _, _, w = plain.frame(keys[0])
    assert set(np.unique(w)) == {0.0, 1.0} and w[STAR] == 1.0 and w[0, 0] == 0.0
    np.testing.assert_array_equal(w == 0, (es.ignore_codes[0] & LCO_IGNORE_BOUNDARY) > 0)
    rim = LCOFrames(root / "train_set", seed=0, ignore_bits=LCO_IGNORE_BOUNDARY, rim_weight=3.0)
    np.testing.assert_array_equal(rim.frame(keys[0])[2], weigh_rim(w, es.cr_masks[0], 3.0))
    assert (rim.frame(keys[0])[2] == 3).any()
    clone = pickle.loads(pickle.dumps(source))  # Keras PyDataset workers may pickle the source
    assert type(clone) is LCOFrames and np.array_equal(clone.frame(keys[1])[2], source.frame(keys[1])[2])
    batches = patch_batches(source, ids[:2], n_batches=2, batch_size=4, patch_size=32, seed=0)
    assert len(batches) == 2 and batches[0][0].shape == (4, 32, 32, 1)


def test_lco_frames_min_exptime_and_split_by_set(dataset):
    from kercr.data.lco import LCOFrames
    from kercr.data.patches import split_exposures

    root, files = dataset
    source = LCOFrames(root / "train_set", seed=0, min_exptime=50.0)  # EXPTIME 30, 80, 130 s
    assert source.exposure_ids() == sorted(p.name for p in files[1:])
    with pytest.raises(KercrDataError, match="min_exptime"):
        LCOFrames(root / "train_set", seed=0, min_exptime=1000.0)
    everything = LCOFrames(root, seed=0)
    train, val = split_exposures(everything.exposure_ids(), val_fraction=0.3, seed=0)
    train_files = {k[0] for e in train for k in everything.frames_of(e)}
    val_files = {k[0] for e in val for k in everything.frames_of(e)}
    assert train_files and val_files and not train_files & val_files
    with pytest.raises(KercrDataError, match="not an exposure set"):
        everything.frames_of("missing_3frms_masks.fits")
    with pytest.raises(KercrDataError, match="no LCO CR dataset files"):
        LCOFrames(root / "test_set/aligned_fits", seed=0)


@pytest.mark.parametrize("case, error, pattern", [
    ("two_frames", KercrDataError, r"holds 2 SCI frame.*3 aligned consecutive"),
    ("frmtotal_mismatch", KercrDataError, r"FRMTOTAL=4 but the file holds 3 SCI"),
    ("aligned_only", KercrDataError, r"no CR mask extension.*masked_fits"),
    ("missing_cr", KercrDataError, r"2 CR extensions for 3 SCI frames"),
    ("missing_ignore", KercrDataError, r"no IGNORE mask extension"),
    ("shape_mismatch", KercrDataError, r"HDU 7 \(CR\) has shape \(64, 60\) but SCI frame 0 has \(64, 64\)"),
    ("not_fits", FITSFormatError, r"not a readable FITS file"),
    ("missing", FITSFileNotFoundError, r"file not found"),
])
def test_bad_files_get_clear_errors(tmp_path, case, error, pattern):
    frames, cr, ignore = make_set(seed=4)
    path = tmp_path / f"{case}_3frms_masks.fits"
    if case == "two_frames":
        write_lco_file(path, frames[:2], cr[:2], ignore[:2])
    elif case == "frmtotal_mismatch":
        write_lco_file(path, frames, cr, ignore, frmtotal=4)
    elif case == "aligned_only":
        write_lco_file(path, frames, cr, ignore, masks=False)
    elif case == "missing_cr":
        write_lco_file(path, frames, cr, ignore, n_cr=2)
    elif case == "missing_ignore":
        write_lco_file(path, frames, cr, ignore, n_ignore=0)
    elif case == "shape_mismatch":
        write_lco_file(path, frames, cr, ignore)
        with fits.open(path, mode="update") as hdul:
            hdul[7] = fits.CompImageHDU(cr[1][:, :60].copy(), header=hdul[7].header, name="CR")
    elif case == "not_fits":
        path.write_text("not a FITS file\n")
    with pytest.raises(error, match=pattern) as info:
        read_lco_file(path)
    assert str(path.name) in str(info.value)  # every error names the file


def test_lco_module_imports_without_keras(tmp_path, run_without_ml):
    frames, cr, ignore = make_set(seed=5)
    path = write_lco_file(tmp_path / "LCO_CR_dataset/test_set/masked_fits/x_3frms_masks.fits", frames, cr, ignore)
    result = run_without_ml(f"""
        from kercr.data import lco
        es = lco.read_lco_file(lco.find_lco_files({str(tmp_path)!r})[0])
        w = lco.lco_median_weights(es, alpha=0.2)
        assert "kercr.data.loader" not in sys.modules
        print("ok", es.frames.shape, bool(0.5 < w.max() <= 1.0), float(w.min()))
    """)
    assert result.returncode == 0, result.stderr
    assert "ok (3, 64, 64) True 0.0" in result.stdout
    assert path.exists()
