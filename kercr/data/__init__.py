"""kercr's numpy data core: FITS I/O, normalization, CR simulation and injection, synthetic frames,
per-pixel loss weights, training frames, patches and cleaning (CR pixels replaced).

Nothing here imports TensorFlow or Keras; the tf.data adapter is :mod:`kercr.data.pipeline` and the
Keras ``PyDataset`` loader :mod:`kercr.data.loader`, both imported explicitly by those who need them.
"""

from kercr.data.augment import TrainingExample, decam_dq_ignore, make_training_example, random_flip_rot90, sky_augment
from kercr.data.cleaning import CLEAN_METHODS, clean_image, cleaning_mask
from kercr.data.cosmic_rays import (
    DECAM,
    CosmicRayImage,
    CosmicRayModel,
    DetectorGeometry,
    inject_cosmic_rays,
    projected_length_px,
    simulate_cosmic_rays,
)
from kercr.data.errors import FITSFileNotFoundError, FITSFormatError, KercrDataError, UndetectableImageError
from kercr.data.fits_io import CCDFrame, iter_ccds, list_ccd_extensions, read_ccd, write_fits_with_mask
from kercr.data.frames import FITSFrames, SyntheticFrames, frame_keys, patch_batches
from kercr.data.lco import LCOFrames, find_lco_files, is_lco_dataset, lco_median_weights, read_lco_file
from kercr.data.footprints import extract_footprints, inject_footprints, read_footprint_table
from kercr.data.normalization import NormalizationConfig, NormalizationParams, denormalize, normalize, robust_sky_noise
from kercr.data.patches import default_patch_count, extract_patches, make_patches, patch_positions, split_exposures
from kercr.data.synthetic import BANDS, SyntheticConfig, SyntheticFrame, generate_dataset, make_frame
from kercr.data.pixel_weights import apply_ignore_mask, median_weight_map

__all__ = [
    "CLEAN_METHODS", "clean_image", "cleaning_mask",
    "FITSFrames", "LCOFrames", "SyntheticFrames", "find_lco_files", "frame_keys", "is_lco_dataset",
    "lco_median_weights", "patch_batches", "read_lco_file",
    "BANDS", "CCDFrame", "CosmicRayImage", "CosmicRayModel", "DECAM", "DetectorGeometry", "FITSFileNotFoundError",
    "FITSFormatError", "KercrDataError", "NormalizationConfig", "NormalizationParams", "SyntheticConfig",
    "SyntheticFrame", "TrainingExample", "UndetectableImageError", "apply_ignore_mask", "decam_dq_ignore",
    "default_patch_count", "denormalize",
    "extract_footprints", "extract_patches", "generate_dataset", "inject_cosmic_rays", "inject_footprints",
    "iter_ccds", "list_ccd_extensions", "make_frame", "make_patches", "make_training_example", "median_weight_map",
    "normalize", "patch_positions", "projected_length_px", "random_flip_rot90", "read_ccd", "read_footprint_table",
    "robust_sky_noise", "simulate_cosmic_rays", "sky_augment", "split_exposures", "write_fits_with_mask",
]
