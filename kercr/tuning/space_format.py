"""The search-space file format of ``kercr-tune``: its tables and keys, one hyperparameter
(:class:`Param`), and the check of every value (:class:`SearchSpaceError` names the file, the key
and the fix). :mod:`kercr.tuning.space` reads a file into a :class:`kercr.tuning.space.SearchSpace`
with these checks; everything here is importable from there too.
"""

from __future__ import annotations

import dataclasses
import difflib
import math

from kercr.config import LOSSES, OBJECTIVES, TUNERS, ConfigError

__all__ = ["CONV_KEYS", "DATA_KEYS", "INT_KEYS", "OBJECTIVES", "RECIPE_KEYS", "SEARCH_KEYS", "SECTIONS",
           "SPACE_KEYS", "TRANSFORMER_KEYS", "TUNERS", "Param", "SearchSpaceError", "check_consistency", "check_data",
           "check_search", "did_you_mean", "models_using", "parse_int_choice", "parse_learning_rate", "parse_models"]


TRANSFORMER_KEYS = ("num_heads", "num_layers", "mlp_dim", "hidden_dim")
CONV_KEYS = ("base_filters",)
INT_KEYS = TRANSFORMER_KEYS + CONV_KEYS
DATA_KEYS = (
    "data", "patch_size", "batch_size", "frames", "frame_shape", "steps_per_epoch",
    "validation_steps", "cr_rate_scale", "patches_per_frame", "val_fraction", "mixed_precision",
)
#: More ``[data]`` keys: the synthetic frames and the input normalization, as ``kercr-train``
#: takes them (so a search can train on a shipped recipe's data and input). A search's
#: ``search_space.json`` lists them only where they differ from kercr-train's defaults, so the
#: searches of earlier versions resume.
RECIPE_KEYS = (
    "variety", "footprints", "footprint_fraction", "extended_sources", "on_source_fraction", "sky_e_range",
    "cr_threshold_e", "faint_crs", "rim_weight", "dominant_sources", "integer_frames", "bright_tracks",
    "asinh_softening",
    "noise_estimator", "noise_model", "local_axis", "local_edges", "block_size", "local_gate", "local_min_blocks",
    "lr_schedule",
)
SEARCH_KEYS = (
    "tuner", "objective", "max_epochs", "factor", "hyperband_iterations", "max_trials",
    "executions_per_trial", "loss", "seed",
)
SPACE_KEYS = ("model", "learning_rate") + INT_KEYS
SECTIONS = {"search": SEARCH_KEYS, "space": SPACE_KEYS, "data": DATA_KEYS + RECIPE_KEYS}


class SearchSpaceError(ConfigError):
    """A bad search-space file or option (the message names the file, the key and the fix)."""


@dataclasses.dataclass(frozen=True)
class Param:
    """One hyperparameter: a choice among ``values`` or a float range ``[min, max]``.

    Attributes
    ----------
    values : tuple
        The choices; one value means fixed. Empty for a range.
    min, max : float or None
        Range bounds (learning rate only).
    sampling : {"linear", "log"}
        How a range is sampled.
    """

    values: tuple = ()
    min: float | None = None
    max: float | None = None
    sampling: str = "linear"

    def declare(self, hp, name):
        """Declare this hyperparameter on ``hp`` (a ``keras_tuner.HyperParameters``); return its value."""
        if self.min is not None:
            return hp.Float(name, min_value=self.min, max_value=self.max, sampling=self.sampling)
        if len(self.values) == 1:
            return hp.Fixed(name, self.values[0])
        return hp.Choice(name, list(self.values))

    def to_json(self):
        if self.min is not None:
            return {"min": self.min, "max": self.max, "sampling": self.sampling}
        return list(self.values)



def did_you_mean(word, choices) -> str:
    """`` (did you mean 'x'?)`` for the choice closest to ``word``, or ``""``."""
    close = difflib.get_close_matches(str(word), list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _where(source, section, key, flags=False) -> str:
    return f"--{key.replace('_', '-')}" if flags else f"{source}: [{section}] {key}"


def check_search(search: dict, source: str, *, flags: bool = False) -> None:
    """SearchSpaceError unless the ``[search]`` table is valid (``flags``: name command-line flags, not keys)."""
    def where(key):
        return _where(source, "search", key, flags and key in ("tuner", "objective", "max_epochs", "max_trials", "seed"))

    tuner = search.get("tuner", "hyperband")
    if not isinstance(tuner, str) or tuner not in TUNERS:
        raise SearchSpaceError(f"{where('tuner')} = {tuner!r}: choose one of {', '.join(map(repr, TUNERS))}.")
    objective = search.get("objective", "dice")
    if not isinstance(objective, str) or objective not in OBJECTIVES:
        raise SearchSpaceError(
            f"{where('objective')} = {objective!r}: choose \"dice\" (validation Dice) or \"tpr\" "
            "(validation TPR at 0.01 % FPR)."
        )
    for key in ("max_epochs", "factor", "hyperband_iterations", "max_trials", "executions_per_trial"):
        if key in search and (not _is_int(search[key]) or search[key] < 1):
            raise SearchSpaceError(f"{where(key)} = {search[key]!r}: must be a positive integer, e.g. {key} = 3.")
    if "factor" in search and search["factor"] < 2:
        raise SearchSpaceError(f"{where('factor')} = {search['factor']!r}: Hyperband's factor must be at least 2, e.g. 3.")
    if "seed" in search and (not _is_int(search["seed"]) or not 0 <= search["seed"] < 2**32):
        raise SearchSpaceError(f"{where('seed')} = {search['seed']!r}: must be an integer in [0, 2**32), e.g. seed = 0.")
    if "loss" in search:
        if search["loss"] not in LOSSES:
            raise SearchSpaceError(f"{where('loss')} = {search['loss']!r}: choose one of {', '.join(map(repr, LOSSES))}.")


def parse_models(value, source) -> list:
    """The registry names of ``[space] model`` (one name or a list), checked."""
    from kercr.models import list_models  # heavy: imports Keras, which checking the rest of a file does not need

    where = f"{source}: [space] model"
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        raise SearchSpaceError(f"{where} = {value!r}: must be a list of registry names, e.g. model = [\"transunet\"].")
    if not value:
        raise SearchSpaceError(f"{where} = []: empty choice list; give at least one model, e.g. model = [\"transunet\"].")
    known = list_models()
    for name in value:
        if name not in known:
            raise SearchSpaceError(
                f"{where}: unknown model {name!r}{did_you_mean(name, known)}; choose among: {', '.join(known)} "
                "(kercr-models lists them)."
            )
    if len(set(value)) != len(value):
        raise SearchSpaceError(f"{where} = {value!r}: a model is listed twice; list each once.")
    return list(value)


def parse_int_choice(key, value, source) -> Param:
    """The :class:`Param` of an integer hyperparameter (one positive integer or a list of them)."""
    where = f"{source}: [space] {key}"
    values = value if isinstance(value, list) else [value]
    if not values:
        raise SearchSpaceError(f"{where} = []: empty choice list; give at least one value, e.g. {key} = [{_EXAMPLE[key]}].")
    for v in values:
        if not _is_int(v) or v < 1:
            raise SearchSpaceError(
                f"{where} = {value!r}: every value must be a positive integer, e.g. {key} = [{_EXAMPLE[key]}]."
            )
    if len(set(values)) != len(values):
        raise SearchSpaceError(f"{where} = {value!r}: a value is listed twice; list each once.")
    return Param(tuple(values))


_EXAMPLE = {"num_heads": "6, 12", "num_layers": "6, 8, 12", "mlp_dim": "64, 100, 128",
            "hidden_dim": "60", "base_filters": "16, 32"}


def parse_learning_rate(value, source) -> Param:
    """The :class:`Param` of ``learning_rate``: a ``{min, max, sampling}`` range, one rate or a list of rates."""
    where = f"{source}: [space] learning_rate"
    fix = 'e.g. learning_rate = {min = 1e-4, max = 3e-3, sampling = "log"}, or a list such as [1e-4, 1e-3]'
    if isinstance(value, dict):
        unknown = sorted(set(value) - {"min", "max", "sampling"})
        if unknown:
            raise SearchSpaceError(f"{where}: unknown key(s) {', '.join(unknown)}; a range has min, max and sampling, {fix}.")
        if "min" not in value or "max" not in value:
            raise SearchSpaceError(f"{where}: a range needs both min and max, {fix}.")
        lo, hi, sampling = value["min"], value["max"], value.get("sampling", "log")
        if not (_is_number(lo) and _is_number(hi) and 0 < lo < hi < 1):
            raise SearchSpaceError(f"{where}: needs 0 < min < max < 1 (got min={lo!r}, max={hi!r}), {fix}.")
        if sampling not in ("log", "linear"):
            raise SearchSpaceError(f"{where}: sampling = {sampling!r} must be \"log\" or \"linear\".")
        return Param(min=float(lo), max=float(hi), sampling=sampling)
    values = value if isinstance(value, list) else [value]
    if not values:
        raise SearchSpaceError(f"{where} = []: empty choice list, {fix}.")
    if not all(_is_number(v) and 0 < v < 1 for v in values):
        raise SearchSpaceError(f"{where} = {value!r}: learning rates must be numbers in (0, 1), {fix}.")
    return Param(tuple(float(v) for v in values))


def check_data(data: dict, source: str) -> None:
    """SearchSpaceError for a ``[data]`` value of the wrong type (TrainConfig checks the values later)."""
    # TrainConfig validates the values (in SearchSpace.train_config); catch types here so the
    # message can name the key of the file.
    ints = ("patch_size", "batch_size", "frames", "steps_per_epoch", "validation_steps", "patches_per_frame")
    for key in ints:
        if key in data and (not _is_int(data[key]) or data[key] < 1):
            raise SearchSpaceError(f"{source}: [data] {key} = {data[key]!r}: must be a positive integer.")
    if "frame_shape" in data:
        shape = data["frame_shape"]
        if not (isinstance(shape, list) and len(shape) == 2 and all(_is_int(s) and s > 0 for s in shape)):
            raise SearchSpaceError(
                f"{source}: [data] frame_shape = {shape!r}: must be two positive integers (ny, nx), "
                "e.g. frame_shape = [4096, 2048]."
            )
    for key in ("cr_rate_scale", "val_fraction"):
        if key in data and not _is_number(data[key]):
            raise SearchSpaceError(f"{source}: [data] {key} = {data[key]!r}: must be a number.")
    if "mixed_precision" in data and not isinstance(data["mixed_precision"], bool):
        raise SearchSpaceError(f"{source}: [data] mixed_precision = {data['mixed_precision']!r}: must be true or false.")
    if "data" in data and not isinstance(data["data"], str):
        raise SearchSpaceError(f"{source}: [data] data = {data['data']!r}: must be a string, e.g. \"synthetic\".")


def models_using(key: str, models) -> list:
    """The models of ``models`` that the hyperparameter ``key`` applies to."""
    from kercr.models import get_spec  # heavy: imports Keras, which checking the rest of a file does not need

    if key in TRANSFORMER_KEYS:
        return [m for m in models if key in get_spec(m).options()]
    if key in CONV_KEYS:
        return [m for m in models if "filters" in get_spec(m).options()]
    return list(models)


def check_consistency(space) -> None:
    """SearchSpaceError for hyperparameters that no searched model takes or that do not fit one (heads
    that do not divide the token width, widths that do not divide into the norm's groups), and for a
    ``[data]`` table that :class:`kercr.config.TrainConfig` refuses (``space``: a :class:`SearchSpace`)."""
    from kercr.models import get_spec  # heavy: imports Keras, which checking the rest of a file does not need

    source = space.source
    for key in space.params:
        if key != "learning_rate" and not models_using(key, space.models):
            family = "a TransUNet (transunet, transunet_r50_vit_b16)" if key in TRANSFORMER_KEYS else \
                "a convolutional UNet (unet, deepcr, cosmic_conn, attention_unet, ...)"
            raise SearchSpaceError(
                f"{source}: [space] {key} applies to {family}, and model = {list(space.models)!r} has none; "
                f"add such a model to model, or remove {key}."
            )
    heads = space.params.get("num_heads")
    for name in models_using("num_heads", space.models):
        preset = get_spec(name).preset
        hidden = space.params["hidden_dim"].values if "hidden_dim" in space.params else (preset["hidden_dim"],)
        for h in heads.values if heads else (preset["num_heads"],):
            for d in hidden:
                if d % h:
                    raise SearchSpaceError(
                        f"{source}: [space] num_heads: {h} heads do not divide hidden_dim {d} of model {name!r} "
                        f"(each head gets hidden_dim / num_heads features); use divisors of {d}, "
                        f"e.g. num_heads = [{', '.join(str(k) for k in (6, 12, 4, 3, 2, 1) if d % k == 0)}]."
                    )
    if "base_filters" in space.params:
        for name in models_using("base_filters", space.models):
            preset = get_spec(name).preset
            if preset.get("norm") == "group":
                groups = preset.get("groups", 8)
                bad = [b for b in space.params["base_filters"].values if b % groups]
                if bad:
                    raise SearchSpaceError(
                        f"{source}: [space] base_filters = {list(space.params['base_filters'].values)}: "
                        f"{bad[0]} is not divisible by the {groups} GroupNormalization groups of model "
                        f"{name!r}; use multiples of {groups}, e.g. base_filters = [16, 32]."
                    )
    if space.tuner == "hyperband" and space.max_epochs < 2:
        raise SearchSpaceError(
            f"{source}: [search] max_epochs = {space.max_epochs}: Hyperband needs at least 2 epochs "
            "to have brackets; raise max_epochs (--max-epochs) or use tuner = \"random\" (--tuner random)."
        )
    config = space.train_config()
    if space.tuner == "hyperband" and config.lr_schedule == "cosine":
        raise SearchSpaceError(
            f"{source}: [data] lr_schedule = \"cosine\" with tuner = \"hyperband\": Hyperband goes on with a trial "
            "from its saved weights under a new optimizer, so the cosine would start again each round; use "
            "tuner = \"random\" or \"bayesian\" (--tuner), which train each trial once, or the plateau schedule."
        )
