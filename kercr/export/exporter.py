"""Export a kercr model: SavedModel for TF Serving and TFLite files, with a parity report.

Layout of one export (``out/NAME/VERSION/`` is TF Serving's model-version directory)::

    out/NAME/VERSION/
        saved_model.pb, variables/          formats: savedmodel (raw pixels in, normalization inside)
        tflite/NAME_float32.tflite, ...     formats: tflite (normalized pixels in), one per --quantize
        parity.json                         max |delta p|, TPR at 0.01 % FPR and Dice vs Keras
        export.json                         manifest: source, normalization, tile, files + sha256
        normalization.json                  NormalizationConfig.to_dict() the export used

Everything is written into a hidden temporary sibling directory (``out/NAME/.VERSION.partial-*``,
which TF Serving ignores) and renamed to ``out/NAME/VERSION`` in one step at the end; on any error
the temporary directory (and any directory the export created) is removed. An existing version
directory is never overwritten.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np

from kercr._version import __version__
from kercr.export.litert import TFLiteRunner
from kercr.export.source import ExportError, load_model_source
from kercr.model_files import file_sha256, write_normalization

__all__ = ["FORMATS", "ExportResult", "export_model", "next_version", "SAVEDMODEL_TOLERANCE",
           "TFLITE_FLOAT32_TOLERANCE"]

logger = logging.getLogger(__name__)

FORMATS = ("savedmodel", "tflite")
DEFAULT_TILE = 256
#: max |delta p| of the served SavedModel against kercr.data.normalize + Keras (float32, same batches).
#: Both run the same TensorFlow kernels on the same batches; only the in-graph normalization (equal
#: to numpy's to float32 rounding) can differ. An export beyond it fails.
SAVEDMODEL_TOLERANCE = 1e-5
#: max |delta p| of the float32 TFLite model against the model's exact output (the Keras model in
#: float64, :func:`kercr.export.parity.float64_twin`), on the validation patches. float32 rounding
#: measured for every registry architecture at a 256-pixel tile, untrained: 3e-6 to 5e-6 (GroupNorm
#: statistics reduced in stages, :mod:`kercr.export.lowering`); a converter that changes the
#: computation (an op, an epsilon, a layout, quantized weights) moves p by 1e-3 or more. The
#: reference is not Keras in float32: its own rounding depends on the batch (up to 2e-3 in p for
#: a GroupNorm model at batch 1), which would make the gate measure Keras instead of the export.
TFLITE_FLOAT32_TOLERANCE = 1e-4
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclasses.dataclass(frozen=True)
class ExportResult:
    """Where an export went and what it measured.

    Attributes
    ----------
    path : pathlib.Path
        ``out/NAME/VERSION``.
    files : list of str
        Files written, relative to ``path``.
    parity : dict
        Content of ``parity.json``.
    """

    path: Path
    files: list
    parity: dict


def next_version(model_dir) -> int:
    """1 + the largest integer-named entry of ``model_dir`` (1 if none; a file named ``3`` takes ``3`` too)."""
    model_dir = Path(model_dir)
    versions = [int(p.name) for p in model_dir.iterdir() if p.name.isdigit()] if model_dir.is_dir() else []
    return max(versions, default=0) + 1


def check_options(formats, quantize, name, version, *, calibration_patches=16, validation_patches=8):
    """``(formats, quantize)`` without repeats; ExportError naming a bad option (kercr-export: before
    anything loads, as a usage error)."""
    formats = tuple(dict.fromkeys(formats))
    bad = sorted(set(formats) - set(FORMATS))
    if not formats:
        raise ExportError(f"no format given; choose from {', '.join(FORMATS)}.")
    if bad:
        raise ExportError(f"unknown format(s) {', '.join(bad)}; choose from {', '.join(FORMATS)}.")
    from kercr.export.tflite import QUANTIZE_MODES  # heavy: imports TensorFlow, kept off LiteRT detection's path

    quantize = tuple(dict.fromkeys(quantize or ("none",)))
    bad = sorted(set(quantize) - set(QUANTIZE_MODES))
    if bad:
        raise ExportError(f"unknown quantization(s) {bad}; choose from {', '.join(QUANTIZE_MODES)}.")
    if not _NAME.match(name):
        raise ExportError(f"name {name!r}: use letters, digits, '_', '.', '-' (it becomes a directory name).")
    if version is not None and (not isinstance(version, int) or version < 1):
        raise ExportError(f"version {version!r} must be a positive integer (TF Serving's version directory).")
    if "tflite" not in formats and quantize != ("none",):
        raise ExportError(f"quantize {','.join(quantize)} applies to TFLite files, but formats are "
                          f"{','.join(formats)}; add tflite (--formats savedmodel,tflite) or leave --quantize out.")
    if calibration_patches < 1 or validation_patches < 1:
        raise ExportError(f"calibration_patches={calibration_patches} and validation_patches={validation_patches} "
                          "must be >= 1.")
    return formats, quantize


def _resolve_tile(model, tile, description):
    from kercr.models import input_multiple  # heavy: imports Keras, kept off LiteRT detection's path

    fixed = model.input_shape[1]
    multiple = input_multiple(model)
    if fixed is not None:
        if tile is not None and int(tile) != int(fixed):
            raise ExportError(f"{description} has a fixed {fixed} x {fixed} input (its trained grid); it cannot be "
                              f"exported at tile {tile}. Pass --tile {fixed} (or leave --tile out).")
        return int(fixed), multiple, True
    tile = DEFAULT_TILE if tile is None else int(tile)
    if tile < multiple or tile % multiple:
        raise ExportError(f"tile {tile} is not a positive multiple of {multiple}, which {description} needs "
                          f"(it pools {multiple.bit_length() - 1} times); pass e.g. --tile {max(multiple, tile // multiple * multiple)}.")
    return tile, multiple, False


def _int8_input_step(runner) -> dict | None:
    """Scale of the int8 input quantization (noise units per step) of a full-integer model."""
    details = {t["index"]: t for t in runner.interpreter.get_tensor_details()}
    for op in runner.interpreter._get_ops_details():
        if op["op_name"] == "QUANTIZE" and runner._input["index"] in list(op["inputs"]):
            q = details[op["outputs"][0]]["quantization_parameters"]
            scale, zero = float(q["scales"][0]), int(q["zero_points"][0])
            return {"scale": scale, "zero_point": zero, "min": scale * (-128 - zero), "max": scale * (127 - zero)}
    return None


def _export_savedmodel(source, staging: Path, multiple, patches, reference, fpr, threshold) -> dict:
    import tensorflow as tf

    from kercr.export.parity import compare  # heavy: imports Keras (kercr.metrics), kept off LiteRT detection's path
    from kercr.export.savedmodel import INPUT_NAME, OUTPUT_NAME, SIGNATURE_KEY, write_savedmodel  # heavy: TensorFlow

    logger.info("writing the SavedModel")
    write_savedmodel(source.model, staging, config=source.normalization, multiple=multiple)
    serve = tf.saved_model.load(str(staging)).signatures[SIGNATURE_KEY]

    def inputs(batch):  # a header-noise model also takes each image's gain and read noise (0: unknown)
        header = ({} if source.normalization.header_noise is None else
                  {"gain": tf.zeros(len(batch)), "readnoise": tf.zeros(len(batch))})
        return {INPUT_NAME: tf.constant(batch[..., None]), **header}

    served = np.concatenate([serve(**inputs(patches.image_adu[i:i + 8]))[OUTPUT_NAME].numpy()[..., 0]
                             for i in range(0, len(patches.image_adu), 8)])
    report = compare(reference, served, patches, fpr=fpr, threshold=threshold)
    report.update(input="raw pixels (normalization in the graph)", tolerance=SAVEDMODEL_TOLERANCE,
                  passed=report["max_abs_delta_p"] <= SAVEDMODEL_TOLERANCE)
    if not report["passed"]:
        raise ExportError(
            f"SavedModel parity failed for {source.description}: on {len(served)} synthetic validation patches "
            f"the served probability (raw pixels, normalization in the graph) differs from kercr.data.normalize "
            f"+ Keras by up to {report['max_abs_delta_p']:.3g}, more than the tolerance {SAVEDMODEL_TOLERANCE} "
            "(both run the same TensorFlow kernels on the same batches, so only the in-graph normalization "
            "should differ, by float32 rounding). Nothing was written. Instead: run the model with Keras "
            "(kercr-detect --runtime keras), or export TFLite only (--formats tflite: it takes normalized "
            "pixels, normalized by kercr.data.normalize in numpy).")
    return report


def _float32_failure(source, report, patches, tile) -> ExportError:
    exact = report["exact"]["max_abs_delta_p"]
    return ExportError(
        f"TFLite float32 parity failed for {source.description}: on {len(patches.image_adu)} synthetic "
        f"{tile} x {tile} validation patches its CR probability differs from the model's exact output "
        f"(Keras in float64) by up to {exact:.3g} (Keras in float32: {report['max_abs_delta_p']:.3g}), more "
        f"than the tolerance {TFLITE_FLOAT32_TOLERANCE}, which float32 rounding stays well below (kercr's "
        "architectures: ~5e-6); the converter has changed the computation. Nothing was written. Instead: "
        "run the model with Keras (kercr-detect --runtime keras, or kercr.detect(..., runtime='keras')), "
        "serve the SavedModel (--formats savedmodel), or export the quantized variants alone "
        "(--quantize float16,dynamic,int8: not gated; judge them by the TPR and Dice deltas in parity.json).")


def _export_tflite(source, staging: Path, name, tile, quantize, patches, normalized, reference,
                   calibration, fpr, threshold, num_threads, exact=None) -> dict:
    from kercr.export.parity import compare  # heavy: imports Keras (kercr.metrics), kept off LiteRT detection's path
    from kercr.export.tflite import VARIANT_NAMES, convert  # heavy: imports TensorFlow, kept off LiteRT detection's path

    folder = staging / "tflite"
    folder.mkdir()
    reports = {}
    for mode in quantize:
        variant = VARIANT_NAMES[mode]
        logger.info("converting to TFLite %s", variant)
        try:
            flatbuffer = convert(source.model, tile=tile, quantize=mode, representative=calibration)
        except Exception as err:  # the converter raises ConverterError and others
            raise ExportError(f"TFLite conversion ({variant}) of {source.description} failed: {type(err).__name__}: "
                              f"{str(err).strip()[:2000]}") from None
        path = folder / f"{name}_{variant}.tflite"
        path.write_bytes(flatbuffer)
        runner = TFLiteRunner(path, num_threads=num_threads)
        predicted = runner.predict(normalized)
        report = compare(reference, predicted, patches, fpr=fpr, threshold=threshold)
        report.update(file=str(path.relative_to(staging)), bytes=path.stat().st_size,
                      input="normalized pixels (kercr.data.normalize before the interpreter)",
                      input_shape=list(runner.shape), resizable=runner.resizable, ops=runner.ops())
        if exact is not None:
            delta = np.abs(predicted.astype(np.float64) - exact)
            report["exact"] = {"max_abs_delta_p": float(delta.max()), "mean_abs_delta_p": float(delta.mean())}
        if mode == "none":
            measured = report["exact"]["max_abs_delta_p"] if exact is not None else report["max_abs_delta_p"]
            report.update(tolerance=TFLITE_FLOAT32_TOLERANCE, passed=measured <= TFLITE_FLOAT32_TOLERANCE,
                          gate="max |delta p| against the exact output (Keras in float64)" if exact is not None
                          else "max |delta p| against Keras in float32")
            if not report["passed"]:
                raise _float32_failure(source, report, patches, tile)
        if mode == "int8":
            step = _int8_input_step(runner)
            report["int8_input_quantization"] = step
            if step:
                report["loss_note"] = (
                    f"int8 input: one step = {step['scale']:.3g} noise units over [{step['min']:.1f}, "
                    f"{step['max']:.1f}]; sky noise and faint CR wings below a step are lost, and every "
                    "activation is rounded to 256 levels. Judge by the TPR/Dice deltas here, on a trained model.")
        reports[variant] = report
    return reports


def export_model(source, out, *, formats=FORMATS, quantize=("none",), name="kercr", version=None, tile=None,
                 overrides=None, normalization=None, calibration_patches=16, validation_patches=8, seed=0,
                 fpr=1e-4, threshold=0.5, cr_rate_per_s=100.0, num_threads=None, tta=None) -> ExportResult:
    """Export a model to ``out/NAME/VERSION`` (layout in the module docstring).

    Parameters
    ----------
    source : str or path-like
        ``.keras`` file, training run directory or registry name (see :mod:`kercr.export.source`).
    out : str or path-like
        Model base directory (TF Serving's ``--model_base_path`` parent).
    formats : iterable of {"savedmodel", "tflite"}
    quantize : iterable of {"none", "float16", "dynamic", "int8"}
        TFLite variants (``"none"`` = float32).
    name : str
        Model name (directory and TF Serving ``MODEL_NAME``).
    version : int, optional
        Version directory; default one more than the largest existing. Never overwritten.
    tile : int, optional
        TFLite default input side and patch size of the parity/calibration sets (default 256, or the
        fixed tile of a TransUNet; any other value is an error for it).
    overrides : dict, optional
        Builder options for a registry name.
    normalization : path-like, optional
        Normalization JSON replacing the ``normalization.json`` sidecar.
    calibration_patches, validation_patches : int
        Sizes of the int8 calibration set and the parity set (synthetic, see :mod:`kercr.export.parity`).
    seed : int
        Seed of both sets (calibration uses ``seed``, validation ``seed + 1``).
    fpr, threshold : float
        Operating points of the TPR and Dice in the parity report.
    cr_rate_per_s : float
        CR rate of the synthetic patches (events/s per 2k x 4k CCD).
    num_threads : int, optional
        Interpreter threads for the parity runs.
    tta : bool, optional
        Export the model averaged over the four flips of each input tile
        (:func:`kercr.models.flip_average_model`), as ``kercr.detect(..., tta=True)`` runs it: every
        format then computes the flip average in its graph (4x the network time). Default: the
        model card's ``"tta"`` (on for the shipped model), else off.

    Returns
    -------
    ExportResult

    Raises
    ------
    ExportError
        Bad option, unloadable model, tile the model cannot take, conversion failure, parity failure,
        or an existing version directory; nothing is left behind in ``out``.

    Notes
    -----
    Longer than kercr's ~80-line guide for a function only by this docstring, which documents
    every keyword of the public entry point; the body (~40 lines) hands its steps to helpers.
    """
    formats, quantize = check_options(formats, quantize, name, version, calibration_patches=calibration_patches,
                                      validation_patches=validation_patches)
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
        raise ExportError(f"seed={seed!r} must be an integer in [0, 2**32) (--seed; default 0).")
    for key, value, low, high, hint in (("fpr", fpr, 0.0, 1.0, "1e-4"), ("threshold", threshold, 0.0, 1.0, "0.5"),
                                        ("cr_rate_per_s", cr_rate_per_s, 0.0, float("inf"), "100")):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not low < value < high:
            raise ExportError(f"{key}={value!r} must be a number in ({low:g}, {high:g}), e.g. {hint} (the export "
                              "profile or argument).")
    out = Path(out)
    model_dir = out / name
    _check_destination(out, model_dir, version)
    src = load_model_source(source, overrides=overrides, normalization=normalization)
    tile, multiple, fixed = _resolve_tile(src.model, tile, src.description)
    tta = src.tta if tta is None else bool(tta)
    if tta:
        from kercr.models import flip_average_model  # heavy: imports Keras, kept off LiteRT detection's path

        src = dataclasses.replace(src, model=flip_average_model(src.model),
                                  description=f"{src.description} (four-flip average)")
    version = next_version(model_dir) if version is None else version
    final = model_dir / str(version)

    created, staging = _staging_dir(model_dir, version)
    try:
        parity = _write_formats(src, staging, formats=formats, quantize=quantize, name=name, tile=tile,
                                multiple=multiple, tta=tta, validation_patches=validation_patches,
                                calibration_patches=calibration_patches, seed=seed, cr_rate_per_s=cr_rate_per_s,
                                fpr=fpr, threshold=threshold, num_threads=num_threads)
        (staging / "parity.json").write_text(json.dumps(parity, indent=2) + "\n")
        write_normalization(staging, src.normalization)
        manifest = _manifest(src, staging, name=name, version=version, formats=formats, quantize=quantize, tta=tta,
                             tile=tile, multiple=multiple, fixed=fixed)
        (staging / "export.json").write_text(json.dumps(manifest, indent=2) + "\n")
        if final.exists():
            raise ExportError(f"{final} appeared while exporting; not overwriting it.")
        os.rename(staging, final)  # atomic on one file system: TF Serving never sees a partial version
    except BaseException:
        _remove_partial(staging, created)
        raise
    files = sorted(str(p.relative_to(final)) for p in final.rglob("*") if p.is_file())
    logger.info("exported %s to %s", src.description, final)
    return ExportResult(path=final, files=files, parity=parity)


def _check_destination(out: Path, model_dir: Path, version) -> None:
    """ExportError when the version directory exists already or ``out`` is not a directory."""
    if version is not None and (model_dir / str(version)).exists():
        raise ExportError(f"{model_dir / str(version)} already exists; exports never overwrite a version. "
                          "Pick another --version (or leave it out for the next free one).")
    if out.exists() and not out.is_dir():
        raise ExportError(f"output {out} exists and is not a directory; pass a folder (--out DIR).")
    if model_dir.exists() and not model_dir.is_dir():
        raise ExportError(f"{model_dir} is a file, where the model's version folders go; pass another --name or "
                          "--out, or move the file.")


def _staging_dir(model_dir: Path, version) -> tuple[list, Path]:
    """Make ``model_dir`` and a hidden staging folder in it for ``version``; return the folders made
    (missing parents of ``--out`` too, outermost first, for the clean-up) and the staging folder."""
    created = [d for d in (*reversed(model_dir.parents), model_dir) if not d.exists()]
    model_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{version}.partial-", dir=model_dir))
    umask = os.umask(0)
    os.umask(umask)
    staging.chmod(0o777 & ~umask)  # mkdtemp makes it 0700; the version dir should read like any other
    return created, staging


def _write_formats(src, staging: Path, *, formats, quantize, name, tile, multiple, tta, validation_patches,
                   calibration_patches, seed, cr_rate_per_s, fpr, threshold, num_threads) -> dict:
    """Write each format into ``staging``, each checked against Keras on a synthetic parity set; the parity report."""
    from kercr.export.parity import (  # heavy: imports Keras (kercr.metrics), kept off LiteRT detection's path
        float64_twin,
        keras_predict,
        normalized_patches,
        synthetic_patches,
    )

    patches = synthetic_patches(validation_patches, tile=tile, seed=seed + 1, cr_rate_per_s=cr_rate_per_s)
    normalized = normalized_patches(patches.image_adu, src.normalization)
    reference = keras_predict(src.model, normalized)
    exact = None
    if "tflite" in formats:  # the float32 TFLite gate's reference: the model's exact output
        exact = keras_predict(float64_twin(src.model), normalized, dtype=np.float64)
    parity = _parity_header(src, tile=tile, tta=tta, validation_patches=validation_patches, seed=seed,
                            cr_rate_per_s=cr_rate_per_s)
    if exact is not None:
        parity["keras_float32_vs_exact_max_abs_delta_p"] = float(np.abs(reference - exact).max())
    if not src.trained:
        parity["warning"] = "untrained model (random weights): TPR and Dice are meaningless; deltas still show drift."
    if "savedmodel" in formats:
        parity["savedmodel"] = _export_savedmodel(src, staging, multiple, patches, reference, fpr, threshold)
    if "tflite" in formats:
        calibration = None
        if "int8" in quantize:
            calibration = normalized_patches(
                synthetic_patches(calibration_patches, tile=tile, seed=seed, cr_rate_per_s=cr_rate_per_s).image_adu,
                src.normalization)
            parity["calibration_set"] = {"patches": calibration_patches, "seed": seed}
        parity["tflite"] = _export_tflite(src, staging, name, tile, quantize, patches, normalized, reference,
                                          calibration, fpr, threshold, num_threads, exact=exact)
    return parity


def _remove_partial(staging: Path, created) -> None:
    """Remove a failed export: the staging folder, and the folders it made that are still empty."""
    shutil.rmtree(staging, ignore_errors=True)
    for d in reversed(created):
        try:
            d.rmdir()  # only if still empty
        except OSError:
            pass


def _parity_header(src, *, tile, tta, validation_patches, seed, cr_rate_per_s) -> dict:
    """The description of the parity set and method that opens ``parity.json``."""
    return {"source": src.description, "trained": src.trained, "tile": tile, "tta": tta,
            "validation_set": {"patches": validation_patches, "seed": seed + 1, "cr_rate_per_s": cr_rate_per_s,
                               "origin": "kercr.data.synthetic frames, 4 patches per 2 tile x 2 tile frame",
                               "ignore": "synthetic ignore mask (saturated, bleed, hot, bad-column pixels)"},
            "metrics": "kercr.metrics.tpr_at_fpr / dice_score, pooled pixels",
            "reference": "Keras in float32 for max/mean |delta p|, flips, TPR and Dice; each TFLite "
                         "variant's 'exact' block compares with the Keras model in float64"}


def _operating_point(src) -> dict | None:
    """Where ``kercr.detect`` cuts this model's ``cr_probability`` by default, for a served model's users."""
    if src.threshold is None:
        return None
    threshold, source, logit = src.threshold
    return {"threshold": threshold, "logit_threshold": logit, "source": source, "card_tta": src.tta,
            "meaning": "a pixel is a CR where cr_probability >= threshold (kercr.detect's default, chosen for 0.01 % "
                       "FPR on validation); it holds for this export when its tta equals card_tta"}


def _manifest(src, staging: Path, *, name, version, formats, quantize, tta, tile, multiple, fixed) -> dict:
    """``export.json``: what was exported, how to feed it, and the size and SHA-256 of every file in ``staging``."""
    files = sorted(str(p.relative_to(staging)) for p in staging.rglob("*") if p.is_file())
    return {
        "kercr_version": __version__,
        "created_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "source": src.description, "trained": src.trained, "normalization_source": src.normalization_source,
        "normalization": src.normalization.to_dict(), "name": name, "version": version,
        "formats": list(formats), "quantize": list(quantize) if "tflite" in formats else [],
        "tta": tta,  # the graph averages each tile over its four flips
        "tile": tile, "input_multiple": multiple, "fixed_tile": fixed,
        "savedmodel": {"signature": "serving_default", "input": "image", "output": "cr_probability",
                       "input_values": "raw pixels (ADU or e-), NaN for bad pixels",
                       "shape": [None, tile if fixed else None, tile if fixed else None, 1],
                       **({} if src.normalization.header_noise is None else {
                           "header_inputs": {"gain": "e- per image unit, float32 [batch]; 0: unknown",
                                             "readnoise": "e-, float32 [batch]"}}),
                       "extra_signatures": {"normalized": "input normalized_image -> cr_probability"}}
        if "savedmodel" in formats else None,
        "tflite_input_values": "normalized (kercr.data.normalize)" if "tflite" in formats else None,
        "operating_point": _operating_point(src),
        "files": {f: {"bytes": (staging / f).stat().st_size, "sha256": file_sha256(staging / f)} for f in files},
    }
