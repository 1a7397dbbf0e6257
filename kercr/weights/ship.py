"""Ship a finished ``kercr-train`` run into ``kercr/weights/`` as the shipped default model.

    python -m kercr.weights.ship runs/default_model --command "kercr-train --config configs/default_model.toml"

writes ``default.keras`` (the run's ``best.keras`` without its optimizer state),
``normalization.json`` and the model card ``default.json``: architecture, parameter count, the
training configuration and the command that reproduces it, the validation metrics, and the
threshold chosen on validation data for 0.01 % FPR (see ``README.md`` here). Existing files are
replaced only with ``--force``.

    python -m kercr.weights.ship --prebuild

rebuilds the shipped model's prebuilt TFLite file (``default-int8.tflite``) and its entry in the
card (:func:`prebuild`); after shipping a new model, add ``--prebuild`` to the command above, or
detection ignores the old file (made from another ``default.keras``) and converts the model itself.

    python -m kercr.weights.ship runs/inpainter --inpainter --prebuild --command "python -m kercr.training.inpainting --out runs/inpainter"
    python -m kercr.weights.ship --inpainter --prebuild

ship the inpainting network into ``kercr/weights/inpainter/`` and (re)build its LiteRT file
(``inpainter-float16.tflite``, :func:`prebuild_inpainter`).

    python -m kercr.weights.ship runs/mine --name NAME --command "..." --runtime tflite-int8 --tta --prebuild

ships a named alternative instead of the default: ``kercr/weights/models/NAME/`` with ``model.keras``,
``model.json``, ``normalization.json`` and ``model-int8.tflite``, run by ``model="NAME"`` /
``--model NAME`` (:func:`kercr.weights.shipped_names`).
"""

from __future__ import annotations

import argparse
import datetime
import json
import re
import sys
from pathlib import Path

import numpy as np

from kercr._version import __version__
from kercr.cli.common import add_verbosity, run
from kercr.config import RUNTIMES
from kercr.model_files import file_sha256, write_json
from kercr.weights import DEFAULT_NAME, INPAINTER_DIR, MODELS_DIR, NAMED_FILE, WEIGHTS_DIR

__all__ = ["INPAINTER_RUNTIME", "PREBUILT_RUNTIMES", "make_card", "prebuild", "prebuild_inpainter", "ship",
           "ship_inpainter", "strip_training_state"]

#: What ``--name`` takes: a plain name, so that ``model="NAME"`` cannot be read as a path.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")

_VALIDATION_KEYS = ("tpr_at_fpr_1e-4", "tpr_at_fpr_1e-3", "precision_at_recall_0.95", "dice", "best_dice",
                    "best_dice_threshold", "cr_pixels", "non_cr_pixels", "ignored_pixels")


def make_card(run_dir, *, command: str, runtime: str = "keras", tta: bool = False, notes: dict | None = None) -> dict:
    """Model card of a finished run.

    Parameters
    ----------
    run_dir : path
        A ``kercr-train`` run directory (``best.keras``, ``config.json``, ``metrics.json``).
    command : str
        The exact command that reproduces the run.
    runtime : str
        What ``runtime="auto"`` means for this model (``keras`` unless a cheaper runtime was
        checked against it with ``kercr-evaluate``).
    tta : bool
        Whether ``kercr.detect`` averages this model over the four flips of each tile by
        default. The threshold and the validation metrics are then those of the flipped-and-
        averaged scores, recomputed on the run's validation patches
        (:func:`kercr.training.run_validation`); the run's own ``metrics.json`` numbers are
        kept as ``validation_without_tta``.
    notes : dict, optional
        Extra entries (e.g. checks on real frames).
    """
    import kercr  # lazy: the version only
    from kercr.config import TrainConfig  # lazy: read when a card is made
    from kercr.models import count_trainable  # heavy: Keras

    run_dir = Path(run_dir)
    missing = [n for n in ("best.keras", "config.json", "metrics.json", "normalization.json") if not (run_dir / n).is_file()]
    if missing:
        raise FileNotFoundError(f"{run_dir}: missing {', '.join(missing)}; pass a finished kercr-train run directory.")
    config = TrainConfig.load(run_dir / "config.json")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    import keras

    model = keras.saving.load_model(run_dir / "best.keras", compile=False)
    average = json.loads((run_dir / "average.json").read_text()) if (run_dir / "average.json").is_file() else None
    plain = metrics
    if tta:
        from kercr.training import run_validation  # heavy: TensorFlow (the validation patches)

        metrics = run_validation(run_dir, tta=True)
    card = {
        "threshold": metrics["threshold_at_fpr_1e-4"],
        "logit_threshold": metrics.get("logit_threshold_at_fpr_1e-4"),
        "runtime": runtime,
        "tta": bool(tta),
        "threshold_note": "probability threshold at 0.01 % FPR on the validation set (pooled pixels of the held-out "
                          "exposures, hot pixels and bad columns excluded; saturated stars and bleed trails count "
                          "as negatives)" + ("; scores averaged over the four flips of each patch, as detect() "
                                             "does with tta" if tta else ""),
        "architecture": config.model,
        "model_options": config.model_options,
        "params": count_trainable(model),
        "trained_on": (f"kercr synthetic frames (variety {config.variety!r}), {config.frames} "
                       f"exposures of {config.frame_shape[0]} x {config.frame_shape[1]} px split "
                       f"{1 - config.val_fraction:.0%}/{config.val_fraction:.0%} by exposure, seed "
                       f"{config.seed}; real CR footprints: {config.footprints}"
                       + (f"; {config.extended_sources:g} large smooth sources per 1024 x 1024 px"
                          if config.extended_sources else "")
                       + (f"; {config.on_source_fraction:.0%} of the footprints on sources"
                          if config.on_source_fraction else "")
                       + (f"; sky {config.sky_e_range[0]:g}-{config.sky_e_range[1]:g} e- per pixel"
                          if config.sky_e_range else "")
                       + (f"; simulated CR pixels above {config.cr_threshold_e:g} e-"
                          if config.cr_threshold_e else "")
                       + (f"; CR rim pixels weighted {config.rim_weight:g} in the loss"
                          if config.rim_weight != 1 else "")
                       + (f"; loss {config.loss}" if config.loss != "dice_bce" else "")
                       + (f"; fine-tuned from {config.init_weights}" if config.init_weights else "")
                       + (f"; weights: the mean of {' and '.join(average['runs'])} (kercr.weights.average)"
                          if average else "")),
        "command": command,
        "config": config.to_dict(),
        "validation": {k: metrics[k] for k in _VALIDATION_KEYS if k in metrics},
        **({"validation_without_tta": {k: plain[k] for k in _VALIDATION_KEYS if k in plain}} if tta else {}),
        "kercr_version": kercr.__version__,
        "created_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    if notes:
        card.update(notes)
    return card


def ship(run_dir, *, command: str, dest=WEIGHTS_DIR, name: str = DEFAULT_NAME, runtime: str = "keras",
         tta: bool = False, notes: dict | None = None, force: bool = False) -> Path:
    """Ship ``run_dir`` into ``dest`` as ``{name}.keras`` (the network only) + ``normalization.json`` + ``{name}.json``.

    Returns the path of the written model. Raises ``FileExistsError`` when the files exist and
    ``force`` is False.
    """
    run_dir = Path(run_dir)
    card = make_card(run_dir, command=command, runtime=runtime, tta=tta, notes=notes)
    return _install(run_dir / "best.keras", card, Path(dest), name, force=force, what="the shipped model")


def _install(keras_file: Path, card: dict, dest: Path, name: str, *, force: bool, what: str,
             sha256_key: str | None = None) -> Path:
    """Write the network of ``keras_file`` (:func:`strip_training_state`) and copy the
    ``normalization.json`` beside it into ``dest`` as ``{name}.keras`` and ``normalization.json``,
    with ``card`` as ``{name}.json`` (its ``sha256_key``, when given, set to the written file's
    SHA-256); ``FileExistsError`` naming ``what`` when any of them exists and ``force`` is False.
    Returns the written model's path."""
    targets = [dest / f"{name}.keras", dest / "normalization.json", dest / f"{name}.json"]
    existing = [str(t) for t in targets if t.exists()]
    if existing and not force:
        raise FileExistsError(f"{', '.join(existing)} exist; pass --force to replace {what}.")
    dest.mkdir(parents=True, exist_ok=True)
    strip_training_state(keras_file, targets[0])
    write_json(targets[1], json.loads(keras_file.with_name("normalization.json").read_text()))
    if sha256_key:
        card = {**card, sha256_key: file_sha256(targets[0])}
    write_json(targets[2], card)
    return targets[0]


def strip_training_state(keras_file, target) -> Path:
    """Save the network of ``keras_file`` as ``target`` without its optimizer state or compile settings.

    A run's ``best.keras`` carries the optimizer's moments (Adam: two per weight, so the file is
    about 2.7 times the network's size) and its loss and metrics; a shipped model needs neither
    (detection loads it for inference; ``--init-weights`` builds a fresh optimizer). Weights and
    outputs are unchanged. ``target`` (a ``.keras`` path) is written under a temporary name, then
    renamed. Returns ``target``.
    """
    import keras

    import kercr.models  # noqa: F401  # heavy: imports Keras; registers kercr's custom objects

    target = Path(target)
    model = keras.saving.load_model(keras_file, compile=False, safe_mode=True)
    partial = target.with_name(f".{target.stem}.partial.keras")  # Keras saves only to a name ending in .keras
    try:
        model.save(partial)
        partial.replace(target)
    finally:
        partial.unlink(missing_ok=True)
    return target


def ship_inpainter(run_dir, *, command: str, dest=None, notes: dict | None = None, force: bool = False) -> Path:
    """Ship a :mod:`kercr.training.inpainting` run into ``dest`` (default ``kercr/weights/inpainter``):
    ``inpainter.keras``, ``normalization.json`` and the card ``inpainter.json`` (its training
    configuration and metrics, ``command``, the SHA-256 of the network, ``notes``).

    Returns the path of the written network; ``FileExistsError`` when the files exist and ``force`` is False.
    """
    run_dir, dest = Path(run_dir), Path(dest or INPAINTER_DIR)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    card = {"kind": "inpainting network (kercr.models.build_inpainter)", "command": command,
            "trained_on": metrics["config"], "validation": {k: v for k, v in metrics.items() if k != "config"},
            "sha256": None, "kercr_version": __version__,
            "created_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            **(notes or {})}
    return _install(run_dir / "inpainter.keras", card, dest, "inpainter", force=force,
                    what="the shipped inpainting network", sha256_key="sha256")


#: The runtimes whose TFLite files ship prebuilt beside the shipped model (its card's runtime).
PREBUILT_RUNTIMES = ("tflite-int8",)


def prebuild(keras_file, *, runtimes=PREBUILT_RUNTIMES, parity_patches: int = 8) -> dict:
    """Write the TFLite files of a model beside it and record them, its geometry and their parity in its card.

    The files are what ``kercr.detect`` would otherwise convert on first use
    (:func:`kercr.detection.runtimes.convert_for_runtime`, bit for bit), named
    ``{stem}-{variant}.tflite``. The card (``{stem}.json``) gains ``"geometry"`` (input multiple,
    fixed size, receptive-field radius, locality: what detection tiles with, so it needs no
    Keras) and ``"tflite"``: per runtime the file, its size and SHA-256, the SHA-256 of the
    ``.keras`` file it was made from (detection ignores a file made from another model) and its
    parity with Keras on ``parity_patches`` synthetic 256 x 256 patches (seed 1; see
    :func:`kercr.export.parity.compare`). Needs TensorFlow.

    Returns
    -------
    dict
        The updated card.
    """
    from kercr.detection.loading import describe, model_geometry  # heavy: TensorFlow
    from kercr.detection.runtimes import convert_for_runtime  # heavy: TensorFlow
    from kercr.export.litert import TFLiteRunner  # heavy: LiteRT
    from kercr.export.parity import compare, keras_predict, normalized_patches, synthetic_patches  # heavy: Keras
    from kercr.model_files import load_keras_model, read_card  # heavy: Keras

    keras_file = Path(keras_file)
    model = load_keras_model(keras_file)
    card = read_card(keras_file)
    card.pop("geometry", None)
    card.pop("tflite", None)
    loaded = describe(model, name=str(keras_file), path=keras_file, card=card)
    patches = synthetic_patches(parity_patches, tile=loaded.fixed_size or 256, seed=1)
    normalized = normalized_patches(patches.image_adu, loaded.normalization)
    reference = keras_predict(model, normalized)
    entries = {}
    for runtime in runtimes:
        variant = runtime.removeprefix("tflite-")
        quantize = "none" if variant == "float32" else variant
        target = keras_file.with_name(f"{keras_file.stem}-{variant}.tflite")
        partial = target.with_name(f".{target.name}.partial")
        partial.write_bytes(convert_for_runtime(loaded, quantize))
        partial.replace(target)
        parity = compare(reference, TFLiteRunner(target, num_threads=1).predict(normalized), patches,
                         threshold=loaded.threshold)
        entries[runtime] = {"file": target.name, "bytes": target.stat().st_size, "sha256": file_sha256(target),
                            "source_sha256": file_sha256(keras_file),
                            "parity_vs_keras": {k: parity[k] for k in ("max_abs_delta_p", "mean_abs_delta_p",
                                                                       "flipped_pixels", "tpr_at_fpr", "dice")
                                                if k in parity},
                            "parity_note": f"{parity_patches} synthetic 256 x 256 patches (seed 1), one view each"}
    card["geometry"] = model_geometry(model)
    card["tflite"] = entries
    write_json(keras_file.with_suffix(".json"), card)
    return card


#: The inpainting network's prebuilt runtime (float16 weights: Keras' values to 0.012 normalized units;
#: int8 output steps cost 60 % more squared error, BENCHMARKS.md "Cleaning CR pixels").
INPAINTER_RUNTIME = "tflite-float16"


def prebuild_inpainter(keras_file, *, runtime: str = INPAINTER_RUNTIME, parity_frames: int = 2) -> dict:
    """Write an inpainting network's LiteRT file beside it; record it, its geometry and its parity in its card.

    The file is ``{stem}-{variant}.tflite`` (:func:`kercr.export.tflite.convert`; float32 or
    float16 weights, or dynamic-range int8). The card (``{stem}.json``) gains ``"runtime"`` (what
    ``inpaint(runtime="auto")`` runs when LiteRT is installed), ``"geometry"`` (input multiple and
    receptive-field radius: what tiling needs without Keras) and ``"tflite"``: the file, its size
    and SHA-256, the SHA-256 of the ``.keras`` file it was made from, and its parity with Keras on
    the replaced pixels of ``parity_frames`` small synthetic training frames (seed 1; normalized
    units). Needs TensorFlow.

    Returns
    -------
    dict
        The updated card.
    """
    from kercr.detection.inpainting import INPAINT_TILE  # lazy: the tile size only
    from kercr.export.litert import TFLiteRunner  # heavy: LiteRT
    from kercr.export.tflite import convert  # heavy: TensorFlow
    from kercr.model_files import load_keras_model, read_card  # heavy: Keras
    from kercr.models.geometry import input_multiple, receptive_field_radius  # heavy: Keras
    from kercr.training.inpainting import InpaintingConfig, inpainting_examples  # lazy: parity patches only

    variant = runtime.removeprefix("tflite-")
    if variant not in ("float32", "float16", "dynamic"):
        raise ValueError(f"runtime={runtime!r}; the inpainting network prebuilds tflite-float32, tflite-float16 or "
                         "tflite-dynamic (int8 output steps are too coarse for image values).")
    keras_file = Path(keras_file)
    network = load_keras_model(keras_file)
    card = read_card(keras_file)
    target = keras_file.with_name(f"{keras_file.stem}-{variant}.tflite")
    partial = target.with_name(f".{target.name}.partial")
    partial.write_bytes(convert(network, tile=INPAINT_TILE, quantize="none" if variant == "float32" else variant))
    partial.replace(target)
    x, _, w = inpainting_examples(InpaintingConfig(frames=parity_frames, frame_shape=(256, 256), patches_per_frame=8,
                                                   seed=1), range(parity_frames))
    delta = np.abs(TFLiteRunner(target, num_threads=1).predict(x)
                   - np.asarray(network.predict_on_batch(x), np.float32)[..., 0])[w[..., 0] > 0]
    card["runtime"] = runtime
    card["geometry"] = {"input_multiple": int(input_multiple(network)), "rf_radius": receptive_field_radius(network)}
    card["tflite"] = {runtime: {
        "file": target.name, "bytes": target.stat().st_size, "sha256": file_sha256(target),
        "source_sha256": file_sha256(keras_file),
        "parity_vs_keras": {"max_abs_delta": float(delta.max()), "median_abs_delta": float(np.median(delta)),
                            "replaced_pixels": int(delta.size)},
        "parity_note": f"replaced pixels of {len(x)} patches of {parity_frames} synthetic 256 x 256 training frames "
                       "(seed 1), normalized units"}}
    write_json(keras_file.with_suffix(".json"), card)
    return card


def _ship(parser, args) -> int:
    if args.name is not None and (args.inpainter or args.name == DEFAULT_NAME or not _NAME.fullmatch(args.name)):
        parser.error(f"--name {args.name!r}: name a detection model with letters, digits, '-' and '_' (not "
                     "'default', which is the default model; not with --inpainter), e.g. --name global.")
    if args.run_dir is None and not args.prebuild:
        parser.error("pass a finished kercr-train run directory to ship, or --prebuild to rebuild the shipped "
                     "model's TFLite files.")
    if args.run_dir is not None:
        if args.command is None:
            parser.error("--command is required with a run directory: the exact command that reproduces the run.")
        notes = json.loads(Path(args.notes).read_text()) if args.notes else None
        if notes is not None and not isinstance(notes, dict):
            parser.error(f"--notes {args.notes}: a JSON object of card entries, not {type(notes).__name__}.")
        if args.inpainter:
            path = ship_inpainter(args.run_dir, command=args.command, notes=notes, force=args.force,
                                  dest=_inpainter_dest(args))
            print(f"shipped {args.run_dir} -> {path}")
            return _prebuild_cli(args) if args.prebuild else 0
        dest, name = _model_dest(args)
        path = ship(args.run_dir, command=args.command, dest=dest, name=name, runtime=args.runtime, tta=args.tta,
                    notes=notes, force=args.force)
        print(f"shipped {args.run_dir} -> {path}")
    return _prebuild_cli(args) if args.prebuild else 0


def _model_dest(args) -> tuple[Path, str]:
    """The folder and file stem a detection model ships to: ``--dest``/default, or ``models/NAME``/model."""
    if args.name is None:
        return Path(args.dest), DEFAULT_NAME
    base = MODELS_DIR if args.dest == str(WEIGHTS_DIR) else Path(args.dest)
    return base / args.name, NAMED_FILE.removesuffix(".keras")


def _inpainter_dest(args) -> Path:
    return INPAINTER_DIR if args.dest == str(WEIGHTS_DIR) else Path(args.dest)


def _prebuild_cli(args) -> int:
    """``--prebuild``: the shipped detector's TFLite file, or with ``--inpainter`` the inpainting network's."""
    if args.inpainter:
        keras_file, what = _inpainter_dest(args) / "inpainter.keras", "an inpainting network"
        ship_hint, build, key, unit = "RUN_DIR --inpainter --command ...", prebuild_inpainter, "max_abs_delta", \
            " normalized units"
    else:
        dest, name = _model_dest(args)
        keras_file, what = dest / f"{name}.keras", "a model"
        ship_hint, build, key, unit = "RUN_DIR --command ...", prebuild, "max_abs_delta_p", ""
    if not keras_file.is_file():
        raise FileNotFoundError(f"{keras_file} does not exist: nothing to prebuild. Ship {what} first "
                                f"(python -m kercr.weights.ship {ship_hint}), or pass the --dest folder that holds it.")
    card = build(keras_file)
    for runtime, entry in card["tflite"].items():
        print(f"prebuilt {runtime}: {keras_file.with_name(entry['file'])} ({entry['bytes']:,} bytes; max "
              f"|{'dp' if key.endswith('_p') else 'd'}| against Keras {entry['parity_vs_keras'][key]:.3g}{unit})")
    return 0


def main(argv=None) -> int:
    """``python -m kercr.weights.ship``; returns the exit status (1: a bad run directory or files in the way)."""
    parser = argparse.ArgumentParser(prog="python -m kercr.weights.ship", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", nargs="?", help="finished kercr-train run directory")
    parser.add_argument("--command", help="the exact command that reproduces the run (required with a run directory)")
    parser.add_argument("--runtime", default="keras", choices=[r for r in RUNTIMES if r != "auto"],
                        help="the card's runtime (default keras)")
    parser.add_argument("--tta", action="store_true",
                        help="detect() averages the model over four flips by default; threshold chosen that way")
    parser.add_argument("--notes", metavar="JSON", help="JSON file of extra card entries (real-frame checks)")
    parser.add_argument("--dest", default=str(WEIGHTS_DIR), help="destination directory (default kercr/weights)")
    parser.add_argument("--name", metavar="NAME",
                        help="ship (or --prebuild) a named alternative instead of the default: "
                             "kercr/weights/models/NAME/model.keras, run by model='NAME' / --model NAME")
    parser.add_argument("--force", action="store_true", help="replace an existing shipped model")
    parser.add_argument("--inpainter", action="store_true",
                        help="ship a python -m kercr.training.inpainting run as the inpainting network "
                             "(kercr/weights/inpainter/, or --dest)")
    parser.add_argument("--prebuild", action="store_true",
                        help="(re)build the prebuilt TFLite file(s) of the model in --dest and their card entry "
                             "(after shipping, when a run directory is given); with --inpainter, the inpainting "
                             "network's; needs TensorFlow")
    return run(add_verbosity(parser), _ship, argv)


if __name__ == "__main__":
    sys.exit(main())
