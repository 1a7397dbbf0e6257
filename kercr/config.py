"""Training configuration: defaults < config file (TOML or YAML) < command-line flags.

The resolved configuration is a :class:`TrainConfig`; it is validated before any training
starts and saved with the run as ``config.json``.

Slightly over 400 lines on purpose: every option of ``kercr-train`` and every choice list the
console scripts share live here, in the lowest layer, so ``--help`` needs no other kercr module.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

from kercr._files import write_json

# The choices of kercr's options. The console scripts take their argparse ``choices`` from here,
# so ``--help`` needs no other kercr module (this one imports nothing heavy). The modules that
# check a value (kercr.data.synthetic, .frames, .normalization, .cleaning, kercr.tuning.space)
# import these lists from here; tests/test_config.py checks that they reach them.

LOSSES = ("dice_bce", "median_bce", "bce")
#: How the learning rate moves (TrainConfig.lr_schedule).
LR_SCHEDULES = ("plateau", "cosine")
STRATEGIES = ("auto", "none", "mirrored", "multiworker")
#: Detection runtimes (kercr.detect, kercr-detect, kercr-evaluate): "auto" is the model card's choice.
RUNTIMES = ("auto", "keras", "tflite-float32", "tflite-float16", "tflite-dynamic", "tflite-int8")
#: Synthetic frames: DECam-like, or a random CCD imager per frame (:mod:`kercr.data.synthetic`).
VARIETIES = ("decam", "wide")
#: Synthetic CR pixels fainter than the noise: left out of the loss, labelled not-CR, or labelled CR.
FAINT_CRS = ("ignore", "negative", "positive")
#: How the normalization measures a frame's noise (:mod:`kercr.data.normalization`).
NOISE_ESTIMATORS = ("mad", "diff2", "diff2_std")
#: One sky and noise per frame, background and noise maps from blocks, or the background map and
#: the frame's noise scaled by the block noise map.
NOISE_MODELS = ("global", "local", "relative")
#: How ``noise_model="local"`` (and ``"relative"``) combines a block's row and column noise, and pads its block grid.
LOCAL_AXES = ("larger", "smaller")
LOCAL_EDGES = ("reflect", "nearest")
#: Cleaning methods of :func:`kercr.data.clean_image` (the first is the default).
CLEAN_METHODS = ("median", "mean", "idw")
#: Cleaning methods of ``kercr.detect(clean=...)`` and ``kercr-detect --clean``: the masked
#: estimates and the learned inpainting network (:mod:`kercr.detection.inpainting`).
DETECT_CLEAN_METHODS = CLEAN_METHODS + ("network",)
#: ``kercr-tune`` search algorithms (the first is the default).
TUNERS = ("hyperband", "bayesian", "random")
#: ``kercr-tune --objective`` choices and the Keras log names they select (both maximized).
OBJECTIVES = {"dice": "val_dice", "tpr": "val_tpr_at_fpr_1e-4"}
#: ``kercr-detect --scheduler`` / ``detect_files(scheduler=)``: this word starts a Dask LocalCluster
#: on this machine; anything else is the address of a running Dask scheduler (``tcp://HOST:8786``).
LOCAL_SCHEDULER = "local"
#: Names a FITS file may end with (longest first): what a folder of frames lists, and what
#: ``kercr-detect`` drops from an input's name to name its output (compressed inputs give plain FITS).
FITS_SUFFIXES = (".fits.fz", ".fits.gz", ".fits.bz2", ".fit.gz", ".fts.gz", ".fits", ".fit", ".fts", ".fz")


class ConfigError(ValueError):
    """A bad training option or configuration file (the message says what to change)."""


_KIND_NAMES = {"int": "an integer", "float": "a number", "str": "a string", "bool": "true or false",
               "list": "a list", "dict": "a table of options"}


def _is_kind(value, kind: str) -> bool:
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "float":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, {"str": str, "bool": bool, "list": (list, tuple), "dict": dict}[kind])


@dataclasses.dataclass
class TrainConfig:
    """Every option of ``kercr-train``; defaults follow the reference recipe.

    Attributes
    ----------
    model : str
        Registry name (see ``kercr-models``).
    model_options : dict
        Builder overrides, e.g. ``{"num_heads": 12}``.
    data : str
        ``"synthetic"`` (the embedded DECam-like generator), a directory of FITS frames, or a
        directory of TFRecord shards written by ``kercr-prepare``.
    epochs, steps_per_epoch, validation_steps : int
        Epochs, training batches per epoch and validation batches per evaluation.
    patch_size : int
        Patch height and width in pixels (256 in the reference recipe).
    batch_size : int
        Patches per batch (global, over all replicas).
    learning_rate : float
        Initial Adam learning rate; reduced by ``lr_factor`` after ``lr_patience`` epochs
        without improvement of the validation loss, down to ``min_learning_rate``.
    lr_schedule : {"plateau", "cosine"}
        ``"plateau"``: the cuts above. ``"cosine"``: a half cosine from ``learning_rate`` down to
        ``min_learning_rate`` over all ``epochs x steps_per_epoch`` steps, step by step, no cuts:
        the last epochs train at a small rate, so the end point varies less between seeds. A
        cosine run keeps the epochs it started with (a new run with ``init_weights`` goes on from it).
    loss : {"dice_bce", "median_bce", "bce"}
        ``(1 - Dice + BCE) / 2``, Cosmic-CoNN's median-weighted BCE, or plain BCE.
    alpha_epochs : int
        For ``median_bce``: the floor alpha of the median weights rises linearly from
        ``alpha_start`` to 1 over this many epochs.
    frames : int
        Synthetic frames to generate (train + validation; split 90/10 by exposure).
    frame_shape : list of int
        Synthetic frame shape (ny, nx) in pixels; DECam CCDs are 4096 x 2048.
    cr_rate_scale : float
        Synthetic CR rate as a multiple of DECam's dark rate (0.6 per second per CCD); training
        on denser CRs gives more positive pixels per patch.
    footprints : str or None
        Real CR footprints to inject besides the simulated CRs: a footprint table (imSim format,
        e.g. ``../shared/data/cr_footprints/cosmic_rays_itl_2017_even.fits``) or a directory of
        dark frames to harvest them from. With FITS frames (``--data DIR``) they replace the
        simulated CRs.
    footprint_fraction : float
        Synthetic data: real footprints added per frame, as a fraction of the simulated CR count.
    extended_sources : float
        Synthetic data: mean number of large smooth sources (galaxies tens to hundreds of pixels
        across, diffuse light) per 1024 x 1024 pixels; 0 (default): none.
    on_source_fraction : float
        Synthetic data: fraction of the real footprints centred on stars, galaxies and halos
        instead of anywhere, so the model learns CR hits on bright backgrounds; 0 (default):
        placed uniformly.
    sky_e_range : list of float or None
        Synthetic data, ``variety="wide"``: [low, high] sky level in e- per pixel (log-uniform,
        high capped at 30 % of each imager's saturation); None (default): 3 e- to the cap. A
        higher floor (e.g. [30, 1e6]) trains on more bright-sky frames, where CR tracks are faint.
    cr_threshold_e : float or None
        Synthetic data: simulated CRs keep only pixels with more than this charge (e-), in the
        image and the truth alike, like footprints harvested from dark frames (imSim's ITL
        table ends at about 50 e-). None (default): half the read noise.
    faint_crs : {"ignore", "negative", "positive"}
        Synthetic data: CR pixels whose charge is below the pixel's noise are left out of the
        loss (``"ignore"``, default: the model's output there is never corrected, and it learns
        to flag the noise pixels around bright CRs), labelled not-CR (``"negative"``) or labelled
        CR like any other CR pixel (``"positive"``).
    rim_weight : float
        Loss weight of the non-CR pixels that touch a CR (8-connected), where a network trained
        with weight 1 flags about one pixel too many around every CR (issue 22's fat masks).
        1 (default): like any other pixel. Needs frames (not kercr-prepare shards) and a loss
        without median weights.
    init_weights : str or None
        Start from the weights of a trained model instead of random ones (fine-tuning): a
        ``.keras`` file, a run directory (its ``best.keras``) or a shipped model's name
        (``"default"``; :func:`kercr.weights.shipped_names`). The architecture must be the same as ``model``.
    variety : {"decam", "wide"}
        Synthetic data: every frame from DECam's camera, or (``"wide"``) each from a new random
        CCD imager (sampling 1.1-8 px FWHM, sky, gain, noise, bias, sensor thickness and pitch;
        :func:`kercr.data.synthetic.random_instrument`) for a model that works on any CCD.
    asinh_softening : float or None
        Input stretch (noise units): ``s asinh(x / s)`` after the linear normalization, so faint CR
        tracks are not dwarfed by bright sources; saved in the run's ``normalization.json`` and
        applied again at inference. None: linear.
    noise_estimator : {"mad", "diff2"}
        How the normalization measures each frame's noise (:mod:`kercr.data.normalization`):
        ``"mad"`` (MAD of the pixel values, the default) or ``"diff2"`` (MAD of differences of
        pixels two apart; not inflated by star halos or other smooth structure). Saved in
        ``normalization.json`` and used again at inference.
    noise_model : {"global", "local", "relative"}
        ``"global"`` (the default, and what earlier runs used): one sky and one noise per frame.
        ``"local"``: a background and a noise map from 32 x 32 pixel blocks
        (:func:`kercr.data.normalization.local_background_noise`), so pixels on a galaxy, a
        nebula or a gradient are measured in their own neighbourhood's noise. ``"relative"``: the
        background map of ``"local"`` and the frame's one noise (as ``"global"``) scaled per pixel
        by the block noise map over its median (the input of a plain frame stays the global one). Saved in
        ``normalization.json`` and used again at inference.
    local_axis, local_edges : str
        ``noise_model="local"`` or ``"relative"``: a block's noise from the ``"larger"`` (default, as the
        first local runs) or ``"smaller"`` of its row and column estimates, and the 3 x 3 block
        median padded by ``"reflect"`` (default) or ``"nearest"``
        (:class:`kercr.data.normalization.NormalizationConfig`).
    block_size : int
        ``noise_model="local"`` or ``"relative"``: the side of the blocks of the background and
        noise maps, in pixels (default 32, >= 8). Larger blocks follow only larger structure (a
        galaxy or nebula filling the frame), not a compact galaxy or a group of stars.
    local_gate : float or None
        ``noise_model="relative"``: use the maps only where the background departs from the
        frame's sky by more than ``local_gate`` noise units (fully beyond twice that), the one sky
        and noise elsewhere, so plain frames and small cutouts get the global input (None, the
        default: the maps everywhere; :class:`kercr.data.normalization.NormalizationConfig`).
    local_min_blocks : int or None
        ``noise_model="relative"``: frames narrower than this many blocks on either side get the
        global input (None, the default: the maps on every frame).
    header_noise : [float, float] or None
        ``[low, high]``: the frame noise from each frame's gain and read noise (the imager of a
        synthetic frame, the header of a FITS frame, the header or arguments at detection) wherever
        the measured noise is ``low``-``high`` times that model
        (:class:`kercr.data.normalization.NormalizationConfig`); None (the default): measured.
    dominant_sources : float
        Synthetic data: fraction of frames that hold one galaxy or nebula covering 30-70 % of
        the field (:func:`kercr.data.synthetic.dominant_source`); 0 (default): none.
    integer_frames : float
        Synthetic data: fraction of frames from a high-gain (10-30 e-/ADU), low-sky (at most
        100 ADU) imager, rounded to integer ADU like raw data; 0 (default): none.
    bright_tracks : float
        Synthetic data: mean number of straight, heavily ionizing CR tracks per 1024 x 1024 pixels,
        half of them within 10 degrees of a row or a column, 100-2000 times the sky noise
        (:func:`kercr.data.cosmic_rays.bright_tracks`); 0 (default): none.
    patches_per_frame : int or None
        Patches cut from each frame (None: 128 per 2k x 4k CCD, scaled by area).
    val_fraction : float
        Fraction of exposures held out for validation.
    strategy : {"auto", "none", "mirrored", "multiworker"}
        tf.distribute strategy; ``multiworker`` reads the cluster from ``TF_CONFIG``.
    mixed_precision : bool
        Train with a mixed policy (float16 on GPU, bfloat16 on CPU); outputs stay float32.
    out : str
        Run directory; re-running the same command resumes the run in it.
    seed : int
        One seed for every random choice (data, initialization, shuffling).
    tensorboard_images : int
        Validation patches drawn as image | truth | prediction in TensorBoard after each epoch (0: none).
    """

    model: str = "deepcr"
    model_options: dict = dataclasses.field(default_factory=dict)
    data: str = "synthetic"
    epochs: int = 20
    steps_per_epoch: int = 100
    validation_steps: int = 20
    patch_size: int = 256
    batch_size: int = 16
    learning_rate: float = 1e-3
    lr_factor: float = 0.5
    lr_patience: int = 3
    min_learning_rate: float = 1e-6
    lr_schedule: str = "plateau"
    loss: str = "dice_bce"
    alpha_start: float = 0.0
    alpha_epochs: int = 10
    frames: int = 20
    frame_shape: list = dataclasses.field(default_factory=lambda: [4096, 2048])
    cr_rate_scale: float = 5.0
    footprints: str | None = None
    footprint_fraction: float = 0.5
    variety: str = "decam"
    extended_sources: float = 0.0
    on_source_fraction: float = 0.0
    sky_e_range: list | None = None
    cr_threshold_e: float | None = None
    faint_crs: str = "ignore"
    rim_weight: float = 1.0
    init_weights: str | None = None
    asinh_softening: float | None = None
    noise_estimator: str = "mad"
    noise_model: str = "global"
    local_axis: str = "larger"
    local_edges: str = "reflect"
    block_size: int = 32
    local_gate: float | None = None
    local_min_blocks: int | None = None
    header_noise: list | None = None
    dominant_sources: float = 0.0
    integer_frames: float = 0.0
    bright_tracks: float = 0.0
    patches_per_frame: int | None = None
    val_fraction: float = 0.1
    strategy: str = "auto"
    mixed_precision: bool = False
    out: str = "runs/kercr"
    seed: int = 0
    tensorboard_images: int = 4

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def normalization_config(self):
        """The :class:`kercr.data.normalization.NormalizationConfig` this run trains with."""
        from kercr.data.normalization import NormalizationConfig  # lazy: config is layer 0; only validation reaches up

        return NormalizationConfig(asinh_softening=self.asinh_softening, noise_estimator=self.noise_estimator,
                                   noise_model=self.noise_model, local_axis=self.local_axis,
                                   local_edges=self.local_edges, block_size=self.block_size,
                                   local_gate=self.local_gate, local_min_blocks=self.local_min_blocks,
                                   header_noise=None if self.header_noise is None else tuple(self.header_noise))

    def _check_types(self) -> None:
        """Every option has its field's type (YAML reads ``1e-3`` as a string: such numbers are converted)."""
        for field in dataclasses.fields(self):
            kinds = [k for k in str(field.type).replace(" ", "").split("|") if k != "None"]
            value = getattr(self, field.name)
            if value is None and "None" in str(field.type):
                continue
            if "float" in kinds and isinstance(value, str):
                try:
                    value = float(value)
                except ValueError:
                    pass
                else:
                    setattr(self, field.name, value)
            if not any(_is_kind(value, kind) for kind in kinds):
                want = " or ".join(_KIND_NAMES[k] for k in kinds) + (" (or unset)" if "None" in str(field.type) else "")
                raise ConfigError(f"{field.name}={value!r} must be {want}, not {type(value).__name__}.")
        for key, n, kind in (("frame_shape", 2, "int"), ("sky_e_range", 2, "float"), ("header_noise", 2, "float")):
            value = getattr(self, key)
            if value is not None and (len(value) != n or not all(_is_kind(v, kind) for v in value)):
                items = "integers" if kind == "int" else "numbers"
                raise ConfigError(f"{key}={value!r} must be a list of {n} {items}, e.g. "
                                  f"{ {'frame_shape': '[1024, 1024]', 'sky_e_range': '[30, 1e6]'}.get(key, '[0.9, 1.6]') }.")

    def save(self, path) -> None:
        """Write the options as JSON (``config.json``), whole or not at all."""
        write_json(path, self.to_dict(), sort_keys=True)

    @classmethod
    def load(cls, path) -> "TrainConfig":
        """The configuration a run saved as ``config.json`` (not validated: its files may have moved).

        Options that kercr gained after the run was made read as their defaults, which is what
        that run did. Raises :class:`ConfigError` for a missing or malformed file and for options
        this kercr does not know (a run made by a newer kercr).
        """
        path = Path(path)
        try:
            saved = json.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"{str(path)!r} does not exist; pass a kercr-train run directory.") from None
        except (OSError, ValueError) as err:
            raise ConfigError(f"{str(path)!r} is not a readable run configuration ({err}); "
                              "it is written by kercr-train, so re-run the training or restore the file.") from None
        if not isinstance(saved, dict):
            raise ConfigError(f"{str(path)!r} must hold a JSON object of options, not {type(saved).__name__}.")
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(saved) - fields)
        if unknown and len(unknown) >= len(set(saved) & fields):  # mostly others' keys: not a kercr run at all
            raise ConfigError(f"{str(path)!r} is not a kercr-train run's configuration (its keys: "
                              f"{', '.join(sorted(saved)[:5])}{', ...' if len(saved) > 5 else ''}); pass a kercr-train "
                              "run directory, or --out NEW_DIR for a new run.")
        if unknown:
            raise ConfigError(f"{str(path)!r} has option(s) this kercr does not know ({', '.join(unknown)}); "
                              "the run was made by a newer kercr: upgrade kercr to use it.")
        return cls(**saved)

    def validate(self) -> "TrainConfig":
        """Check every option; raise :class:`ConfigError` naming the option and the fix.

        One check per option, in the order of the fields (hence its length): split, it would
        only scatter the list.
        """
        self._check_types()
        from kercr.models import get_spec, model_kwargs  # lazy: config is layer 0; only validation reaches up

        try:
            get_spec(self.model)
            model_kwargs(self.model, **self.model_options)
        except ValueError as err:
            raise ConfigError(f"model: {err}") from None
        for key in ("epochs", "steps_per_epoch", "validation_steps", "patch_size", "batch_size", "frames",
                    "alpha_epochs"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{key}={value!r} must be a positive integer.")
        if self.data == "synthetic" and self.frames < 2:
            raise ConfigError(f"frames={self.frames} must be >= 2: exposures are split between training and "
                              "validation, so each side needs one.")
        if not 0 <= self.seed < 2**32:
            raise ConfigError(f"seed={self.seed!r} must be in [0, 2**32), e.g. 0.")
        if not str(self.out).strip():
            raise ConfigError("out is empty; pass --out DIR, the folder for the run (created if needed).")
        if not 0 < self.learning_rate < 1:
            raise ConfigError(f"learning_rate={self.learning_rate!r} must be in (0, 1), e.g. 1e-3.")
        if not 0 < self.lr_factor < 1:
            raise ConfigError(f"lr_factor={self.lr_factor!r} must be in (0, 1), e.g. 0.5 (halve the learning rate).")
        if not 0 <= self.min_learning_rate < 1:
            raise ConfigError(f"min_learning_rate={self.min_learning_rate!r} must be in [0, 1), e.g. 1e-6 (the plateau "
                              "cuts never take the learning rate below it).")
        for key in ("lr_patience", "tensorboard_images"):
            if getattr(self, key) < 0:
                raise ConfigError(f"{key}={getattr(self, key)!r} must be >= 0.")
        if not 0 <= self.alpha_start <= 1:
            raise ConfigError(f"alpha_start={self.alpha_start!r} must be in [0, 1] (the median weights' floor).")
        if self.patches_per_frame is not None and self.patches_per_frame < 1:
            raise ConfigError(f"patches_per_frame={self.patches_per_frame!r} must be >= 1, or unset for 128 per "
                              "2k x 4k CCD.")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ConfigError(f"lr_schedule={self.lr_schedule!r} is not valid; choose one of: {', '.join(LR_SCHEDULES)}.")
        if self.lr_schedule == "cosine" and self.min_learning_rate >= self.learning_rate:
            raise ConfigError(f"lr_schedule='cosine' falls from learning_rate={self.learning_rate!r} to "
                              f"min_learning_rate={self.min_learning_rate!r}: give a smaller min_learning_rate.")
        if self.loss not in LOSSES:
            raise ConfigError(f"loss={self.loss!r} is not valid; choose one of: {', '.join(LOSSES)}.")
        if self.strategy not in STRATEGIES:
            raise ConfigError(f"strategy={self.strategy!r} is not valid; choose one of: {', '.join(STRATEGIES)}.")
        if self.variety not in VARIETIES:
            raise ConfigError(f"variety={self.variety!r} is not one of {VARIETIES}: 'decam' (DECam-like frames) or "
                              "'wide' (a random CCD imager per frame).")
        if self.asinh_softening is not None and not self.asinh_softening > 0:
            raise ConfigError(f"asinh_softening={self.asinh_softening!r} must be positive (noise units, e.g. 10) "
                              "or unset for a linear input.")
        from kercr.data.errors import KercrDataError  # lazy: config is layer 0; only validation reaches up

        try:  # the normalization checks its own constants (noise_estimator, ...)
            self.normalization_config()
        except KercrDataError as err:
            raise ConfigError(str(err)) from None
        from kercr.data.frames import SyntheticFrames  # lazy: config is layer 0; only validation reaches up

        try:  # the frames check their own options (sources, sky range, CR threshold, faint CRs, rim weight)
            SyntheticFrames(seed=self.seed, extended_sources=self.extended_sources,
                            on_source_fraction=self.on_source_fraction, variety=self.variety,
                            footprint_fraction=self.footprint_fraction, sky_e_range=self.sky_e_range, cr_threshold_e=self.cr_threshold_e,
                            faint_crs=self.faint_crs, dominant_sources=self.dominant_sources,
                            integer_frames=self.integer_frames, rim_weight=self.rim_weight,
                            bright_tracks=self.bright_tracks)
        except KercrDataError as err:
            raise ConfigError(str(err)) from None
        if self.rim_weight != 1 and self.loss == "median_bce":
            raise ConfigError(f"rim_weight={self.rim_weight:g} with loss='median_bce': the median weights' rising "
                              "floor (alpha) would erase the rim's factor; use --loss dice_bce or bce, or leave "
                              "rim_weight at 1.")
        synthetic_only = {"extended_sources": 0, "on_source_fraction": 0.0, "sky_e_range": None, "cr_threshold_e": None,
                          "faint_crs": "ignore", "dominant_sources": 0.0, "integer_frames": 0.0, "bright_tracks": 0.0,
                          "variety": "decam", "footprint_fraction": 0.5}
        changed = [k for k, default in synthetic_only.items() if getattr(self, k) not in (default, None)]
        if self.data != "synthetic" and changed:
            raise ConfigError(f"{', '.join(changed)} shape the synthetic frames; data={self.data!r} is not "
                              "synthetic, so leave them at their defaults (the frames, their size and count, "
                              "come from the data).")
        if (self.init_weights is not None and not Path(self.init_weights).exists()
                and ("/" in str(self.init_weights) or Path(self.init_weights).suffix)):  # a plain name: shipped
            raise ConfigError(f"init_weights={self.init_weights!r}: no such file or directory; pass a .keras model, a "
                              "run directory (its best.keras is used) or a shipped model's name ('default').")
        if not (math.isfinite(self.cr_rate_scale) and self.cr_rate_scale > 0):
            raise ConfigError(f"cr_rate_scale={self.cr_rate_scale!r} must be positive, e.g. 5.")
        if self.footprints is not None and not Path(self.footprints).exists():
            raise ConfigError(
                f"footprints={self.footprints!r}: no such file or directory; pass a CR footprint table "
                "(FITS) or a directory of dark frames."
            )
        if not 0 < self.val_fraction < 1:
            raise ConfigError(f"val_fraction={self.val_fraction!r} must be in (0, 1), e.g. 0.1.")
        if self.data == "synthetic" and (len(self.frame_shape) != 2 or min(self.frame_shape) < self.patch_size):
            raise ConfigError(
                f"frame_shape={self.frame_shape!r} must be two sizes (ny, nx), each at least "
                f"patch_size={self.patch_size}."
            )
        if self.data != "synthetic" and "://" not in self.data and not Path(self.data).is_dir():
            raise ConfigError(
                f"data={self.data!r}: no such directory. Pass --data synthetic for the embedded "
                "DECam-like data set, or a directory of FITS frames or kercr-prepare shards."
            )
        return self


def read_config_file(path) -> dict:
    """Read a TOML (``.toml``) or YAML (``.yaml``/``.yml``) config file into a dict."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist; check the path given to --config.")
    text = path.read_text()
    suffix = path.suffix.lower()
    try:
        if suffix == ".toml":
            import tomllib

            data = tomllib.loads(text)
        elif suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text) or {}
        else:
            raise ConfigError(
                f"config file {str(path)!r}: unknown format {suffix!r}; use a .toml, .yaml or .yml file."
            )
    except ConfigError:
        raise
    except Exception as err:  # tomllib.TOMLDecodeError, yaml.YAMLError
        raise ConfigError(f"config file {str(path)!r} is malformed: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(path)!r} must hold a table of options, not {type(data).__name__}.")
    return data


def resolve_config(file_options: dict | None = None, flag_options: dict | None = None) -> TrainConfig:
    """Merge defaults, config-file options and flags (flags win) into a validated config."""
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    merged = {}
    for source, options in (("config file", file_options or {}), ("flags", flag_options or {})):
        unknown = sorted(map(str, set(options) - fields))
        if unknown:
            raise ConfigError(
                f"unknown option(s) in {source}: {', '.join(unknown)}; valid options: {', '.join(sorted(fields))}."
            )
        for key, value in options.items():
            if value is None:
                continue
            if key == "model_options":
                if not isinstance(value, dict):
                    raise ConfigError(f"model_options={value!r} in {source} must be a table of builder options, "
                                      'e.g. model_options = {filters = [48, 96]} (or --set "filters=[48,96]").')
                merged[key] = {**merged.get(key, {}), **value}
            else:
                merged[key] = value
    config = TrainConfig(**merged)
    if isinstance(config.frame_shape, tuple):
        config.frame_shape = list(config.frame_shape)
    return config.validate()
