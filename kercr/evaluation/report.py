"""The report of ``kercr-evaluate``: pooled-pixel metrics of :func:`kercr.detect` and plots.

Every frame goes through the full inference path (:func:`kercr.detect`: whole-frame
normalization, tiling, stitching), then the pixels of all frames are pooled before any rate is
computed (at 0.01 % FPR a few hundred pixels decide the metric).

Ignored pixels
    A pixel is excluded from both positives and negatives when the frame's ignore mask marks it
    (the ``IGNORE`` extension of a labelled file; for synthetic frames the saturated, bleed-trail,
    hot and bad-column pixels) or :func:`kercr.detect` ignored it (NaN/inf, at or above the
    saturation level). The counts are in ``metrics.json`` (``ignored_pixels``).

Dilated prediction
    ``prediction_dilated_3x3`` scores the prediction grown by one pixel: the predicted mask at
    every threshold is dilated with a 3 x 3 square structuring element; the truth is unchanged.
    This is computed exactly by scoring the 3 x 3 maximum filter of the probability map (the
    maximum filter thresholded at ``t`` equals the 3 x 3 dilation of the mask thresholded at
    ``t``), so TPR at FPR, precision at recall and best Dice are defined for it too. It forgives
    a CR's faint wings (truth pixels next to a detected pixel) and charges the extra false positives.

Plots (PNG, matplotlib Agg): ``roc.png`` (log FPR), ``pr.png``, ``prediction_<i>.png`` (image |
truth | probability | mask, zscale stretch), ``activations.png`` (mean activation over channels
of each encoder/decoder stage) and, for attention models, ``attention.png`` (gate coefficients).
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import re
from pathlib import Path

import numpy as np
from scipy import ndimage

from kercr import metrics as M
from kercr._files import new_folder, write_json
from kercr._version import __version__
from kercr.data import CCDFrame, SyntheticConfig, generate_dataset, list_ccd_extensions, normalize, read_ccd
from kercr.data.errors import FITSFormatError
from kercr.detection import detect, load_model
from kercr.evaluation.pooled import pooled_metrics
from kercr.plots import subplots

__all__ = ["evaluate", "labelled_extensions", "labelled_frames", "synthetic_frames", "stage_layers", "attention_layers",
           "plot_curves", "plot_prediction_map", "plot_layer_maps"]

logger = logging.getLogger(__name__)

_STAGE = re.compile(r"_(down\d+_2|up\d+_conv_2|enc\d+_2|dec\d+_2)_relu$")


# ---------------------------------------------------------------------------------------------
# Frames
# ---------------------------------------------------------------------------------------------
def labelled_extensions(path) -> tuple[str, list[str]]:
    """``(image extension, every 2-D image extension)`` of a labelled FITS file (:func:`labelled_frames`);
    FITSFormatError naming the file when it holds no ``CRMASK`` or no image beside it."""
    names = [n for _, n in list_ccd_extensions(path)]
    if "CRMASK" not in names:
        raise FITSFormatError(f"{path}: no CRMASK extension, so it holds no truth. kercr-evaluate needs "
                              "labelled files (image + CRMASK [+ IGNORE]); use --synthetic N otherwise.")
    ext = next((n for n in names if n not in ("CRMASK", "IGNORE")), None)
    if ext is None:
        raise FITSFormatError(f"{path}: no image extension beside CRMASK/IGNORE.")
    return ext, names


def labelled_frames(paths):
    """Yield ``(name, image, truth, ignore)`` from labelled FITS files.

    Each file holds the image (its first image extension other than the masks), ``CRMASK``
    (non-zero = CR) and optionally ``IGNORE`` (non-zero = excluded); ``image`` is the
    :class:`kercr.data.CCDFrame` of the image (data in the file's units, with its gain, read noise
    and saturation from the header), ``truth`` and ``ignore`` bool (ny, nx).
    """
    for path in paths:
        ext, names = labelled_extensions(path)
        frame = read_ccd(path, ext)
        truth = read_ccd(path, "CRMASK").data > 0
        ignore = read_ccd(path, "IGNORE").data > 0 if "IGNORE" in names else np.zeros(truth.shape, bool)
        if truth.shape != frame.shape or ignore.shape != frame.shape:
            raise FITSFormatError(f"{path}: CRMASK/IGNORE shape differs from the image {frame.shape}.")
        yield f"{Path(path).name}[{ext}]", frame, truth, ignore


def synthetic_frames(n, *, shape, seed, cr_rate_scale=5.0):
    """Yield ``(name, image_adu, truth, ignore)`` for ``n`` synthetic DECam-like frames.

    Frame ``i`` is ``kercr.data.generate_dataset(n, seed=seed, ...)``'s; use a seed no training
    run used (kercr-train draws frames from ``SeedSequence([seed, 7919, i])``, a different stream).
    """
    base = SyntheticConfig()
    config = dataclasses.replace(base, cr_model=dataclasses.replace(
        base.cr_model, rate_per_s=base.cr_model.rate_per_s * float(cr_rate_scale)))
    for frame in generate_dataset(int(n), seed=seed, shape=tuple(shape), config=config):
        yield f"synthetic-{seed}-{frame.meta['index']}", frame.image_adu, frame.cr_mask, frame.ignore_mask


# ---------------------------------------------------------------------------------------------
# Layers to draw
# ---------------------------------------------------------------------------------------------
def stage_layers(model) -> list[str]:
    """Names of the layers ending each encoder/decoder stage (``*_down{i}_2_relu``, ``*_up{i}_conv_2_relu``).

    Falls back to every 4-D layer whose name ends in ``_relu`` (at most 12, evenly spaced).
    """
    names = [layer.name for layer in model.layers if _STAGE.search(layer.name)]
    if names:
        return names
    relus = [layer.name for layer in model.layers if layer.name.endswith("_relu") and len(layer.output.shape) == 4]
    if len(relus) > 12:
        relus = [relus[int(i)] for i in np.linspace(0, len(relus) - 1, 12)]
    return relus


def attention_layers(model) -> list[str]:
    """Names of the attention-gate coefficient layers (``*_gate_alpha``), empty for other models."""
    return [layer.name for layer in model.layers if layer.name.endswith("_gate_alpha")]


# ---------------------------------------------------------------------------------------------
# Plots
# ---------------------------------------------------------------------------------------------
def plot_curves(curves: dict, out_dir) -> list[Path]:
    """Write ``roc.png`` and ``pr.png``.

    Parameters
    ----------
    curves : dict
        ``{label: (truth, score, ignore)}`` pooled 1-D arrays per curve.
    out_dir : path
    """
    out_dir = Path(out_dir)
    fig_roc, ax_roc = subplots(figsize=(6, 4.5), dpi=100)
    fig_pr, ax_pr = subplots(figsize=(6, 4.5), dpi=100)
    for label, (truth, score, ignore) in curves.items():
        fpr, tpr, _ = M.roc_curve(truth, score, ignore=ignore, bins=4096)
        ax_roc.plot(np.maximum(fpr, 1e-8), tpr, label=label)
        precision, recall, _ = M.pr_curve(truth, score, ignore=ignore, bins=4096)
        ax_pr.plot(recall, precision, label=label)
    for x in (1e-4, 1e-3):
        ax_roc.axvline(x, color="0.7", lw=0.8, ls="--")
    ax_roc.set(xscale="log", xlim=(1e-7, 1), ylim=(0, 1.01), xlabel="false-positive rate (pooled pixels)",
               ylabel="true-positive rate", title="ROC (dashed: 0.01 % and 0.1 % FPR)")
    ax_pr.set(xlim=(0, 1.01), ylim=(0, 1.01), xlabel="recall", ylabel="precision", title="precision-recall")
    written = []
    for fig, ax, name in ((fig_roc, ax_roc, "roc.png"), (fig_pr, ax_pr, "pr.png")):
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right")
        fig.tight_layout()
        fig.savefig(out_dir / name)
        written.append(out_dir / name)
    return written


def _crop(shape, size):
    ny, nx = shape
    h, w = min(ny, size), min(nx, size)
    y0, x0 = (ny - h) // 2, (nx - w) // 2
    return slice(y0, y0 + h), slice(x0, x0 + w)


def plot_prediction_map(path, name, image, truth, probability, mask, *, size=512) -> Path:
    """Image | truth | probability | mask of the central ``size`` x ``size`` pixels (zscale stretch)."""
    from astropy.visualization import ZScaleInterval

    sl = _crop(image.shape, size)
    img = np.asarray(image, np.float32)[sl]
    finite = img[np.isfinite(img)]
    vmin, vmax = ZScaleInterval().get_limits(finite) if finite.size else (0, 1)
    fig, axes = subplots(1, 4, figsize=(16, 4.4), dpi=100)
    panels = ((img, "image (zscale)", dict(cmap="gray", vmin=vmin, vmax=vmax)),
              (truth[sl], "truth", dict(cmap="gray", vmin=0, vmax=1)),
              (probability[sl], "CR probability", dict(cmap="magma", vmin=0, vmax=1)),
              (mask[sl], "predicted mask", dict(cmap="gray", vmin=0, vmax=1)))
    for ax, (data, title, kw) in zip(axes, panels):
        ax.imshow(data, origin="lower", interpolation="nearest", **kw)
        ax.set_title(title)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(name)
    fig.tight_layout()
    fig.savefig(path)
    return Path(path)


def plot_layer_maps(model, layer_names, normalized, path, *, title) -> Path | None:
    """Mean over channels of each named layer's output for one normalized crop, in a grid.

    Parameters
    ----------
    model : keras.Model
    layer_names : list of str
    normalized : numpy.ndarray, shape (H, W), float32
        Normalized image crop the model accepts (H, W multiples of its pooling factor).
    path : path
        PNG written.
    """
    if not layer_names:
        return None
    import keras

    sub = keras.Model(model.inputs, [model.get_layer(n).output for n in layer_names])
    outs = sub.predict_on_batch(np.asarray(normalized, np.float32)[None, ..., None])
    if not isinstance(outs, (list, tuple)):
        outs = [outs]
    ncol = min(4, len(outs) + 1)
    nrow = int(np.ceil((len(outs) + 1) / ncol))
    fig, axes = subplots(nrow, ncol, figsize=(3.6 * ncol, 3.6 * nrow), dpi=90, squeeze=False)
    axes = axes.ravel()
    axes[0].imshow(normalized, origin="lower", cmap="gray", vmin=-3, vmax=10)
    axes[0].set_title("input (noise units)", fontsize=9)
    for ax, name, out in zip(axes[1:], layer_names, outs):
        a = np.asarray(out)[0].mean(axis=-1)
        ax.imshow(a, origin="lower", cmap="viridis")
        ax.set_title(f"{name}\n{a.shape[0]}x{a.shape[1]}", fontsize=8)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in axes[len(outs) + 1:]:
        ax.axis("off")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path)
    return Path(path)


# ---------------------------------------------------------------------------------------------
# evaluate
# ---------------------------------------------------------------------------------------------
def _pooled(truth, score, ignore, *, threshold, logit_threshold) -> dict:
    """:func:`kercr.evaluation.pooled_metrics` of logits (``logit_threshold`` given) or probabilities."""
    logits = logit_threshold is not None
    return pooled_metrics(truth, score, ignore, threshold=threshold, logits=logits, logit_threshold=logit_threshold)


#: How ``metrics.json``'s numbers were computed (its ``method`` entry).
METHOD = {
    "pooling": "all pixels of all frames pooled before any rate is computed",
    "ignored": "excluded from positives and negatives: the frame's ignore mask (IGNORE extension, or the "
               "synthetic saturated/bleed/hot/bad-column mask) and pixels kercr.detect ignored "
               "(NaN/inf, >= saturation)",
    "dilation": "prediction grown with a 3x3 square structuring element at every threshold (scored as the "
                "3x3 maximum filter of the probability); truth unchanged",
    "dice": "at the detection threshold ('dice_threshold') and at the best threshold",
}


def evaluate(*, files=(), synthetic=0, frame_shape=(1024, 1024), seed=1000, cr_rate_scale=5.0, model="default",
             out, threshold=None, runtime="auto", tta=None, tta_gate=None, tile=None, overlap=None, batch_size=None, num_threads=None,
             exclude_saturated=True, maps=3) -> dict:
    """Score a model on labelled FITS files and/or synthetic frames; write metrics.json and plots.

    Parameters
    ----------
    files : sequence of path
        Labelled FITS files (see :func:`labelled_frames`).
    synthetic : int
        Number of synthetic frames (:func:`synthetic_frames`).
    frame_shape : tuple of int
        Synthetic frame shape (ny, nx), pixels.
    seed : int
        Synthetic test-set seed.
    cr_rate_scale : float
        Synthetic CR rate as a multiple of DECam's.
    model : str, path-like, keras.Model or LoadedModel
        As for :func:`kercr.detect`.
    out : path
        Output directory; created; an existing ``metrics.json`` there is never overwritten.
    threshold, runtime, tta, tta_gate, tile, overlap, batch_size, num_threads, exclude_saturated
        Passed to :func:`kercr.detect` (``threshold=None``: the model's default). With flips, pixels
        under the gate keep their single-view scores; ``tta_gate=0`` ranks every pixel by the
        four-flip mean (for the curves at high false-positive rates).
    maps : int
        Number of frames drawn as prediction maps.

    Returns
    -------
    dict
        The content of ``metrics.json``: ``prediction`` and ``prediction_dilated_3x3`` (each the
        dict of :func:`kercr.evaluation.pooled_metrics` at the detection threshold), the frames,
        the model and the method notes.
    """
    out = Path(out)
    if (out / "metrics.json").exists():
        raise FileExistsError(f"{out / 'metrics.json'} already exists; kercr never overwrites results. "
                              "Pass another --out directory.")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"--out {out} is {'a file' if not out.is_dir() else 'a folder that holds files'}; "
                              "pass a new folder for the report (created for it).")
    for path in files:  # every file checked before any is scored
        labelled_extensions(path)
    loaded = load_model(model)
    with new_folder(out) as staging:  # a failure or a kill leaves no out
        return _evaluate(loaded, staging, files=files, synthetic=synthetic, frame_shape=frame_shape, seed=seed,
                         cr_rate_scale=cr_rate_scale, threshold=threshold, runtime=runtime, tta=tta,
                         tta_gate=tta_gate, tile=tile, overlap=overlap, batch_size=batch_size,
                         num_threads=num_threads, exclude_saturated=exclude_saturated, maps=maps)


def _evaluate(loaded, out, *, files, synthetic, frame_shape, seed, cr_rate_scale, threshold, runtime, tta, tta_gate,
              tile, overlap, batch_size, num_threads, exclude_saturated, maps) -> dict:
    """:func:`evaluate`'s work, into the folder ``out``."""
    sources = []
    if files:
        sources.append(labelled_frames(files))
    if synthetic:
        sources.append(synthetic_frames(synthetic, shape=frame_shape, seed=seed, cr_rate_scale=cr_rate_scale))
    scored = _Scored()
    for source in sources:
        for name, image, truth, ignore in source:
            result = detect(image, model=loaded, threshold=threshold, mask=ignore, tile=tile, overlap=overlap,
                            batch_size=batch_size, runtime=runtime, num_threads=num_threads, tta=tta, tta_gate=tta_gate,
                            exclude_saturated=exclude_saturated, keep_logits=True)
            scored.add(name, image, truth, result, out=out, maps=maps)
    if not scored.frames:
        raise ValueError("no frames to evaluate.")
    truth, score, score_d, ignore = scored.pooled()
    plain = _pooled(truth, score, ignore, threshold=scored.threshold, logit_threshold=scored.logit_threshold)
    grown = _pooled(truth, score_d, ignore, threshold=scored.threshold, logit_threshold=scored.logit_threshold)
    if scored.logit_threshold is not None:  # the binned curves take probabilities
        with np.errstate(over="ignore"):
            score, score_d = (1.0 / (1.0 + np.exp(-s)) for s in (score, score_d))
    plots = [p.name for p in plot_curves({"prediction": (truth, score, ignore),
                                          "prediction dilated 3x3": (truth, score_d, ignore)}, out)]
    plots += [p.name for p in scored.drawn]
    plots += _network_maps(loaded, *scored.first_input, out)
    report = {
        "kercr_version": __version__,
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "model": loaded.name, "threshold": scored.threshold,
        "threshold_source": "argument" if threshold is not None else loaded.threshold_source,
        "runtime": scored.runtime, "scores": "logits" if scored.logit_threshold is not None else "probabilities",
        "tta": scored.tta, "tta_gate": scored.tta_gate, "normalization_source": loaded.normalization_source,
        "frames": scored.frames,
        "synthetic": {"n": synthetic, "shape": list(frame_shape), "seed": seed, "cr_rate_scale": cr_rate_scale}
        if synthetic else None,
        "prediction": plain,
        "prediction_dilated_3x3": grown,
        "exclude_saturated": bool(exclude_saturated),
        "method": _method(exclude_saturated),
        "plots": plots,
    }
    write_json(out / "metrics.json", report)
    return report


def _method(exclude_saturated: bool) -> dict:
    """:data:`METHOD`, its ``ignored`` entry as this evaluation ran (``--keep-saturated``: saturated pixels
    scored, not excluded)."""
    method = dict(METHOD)
    if not exclude_saturated:
        method["ignored"] = method["ignored"].replace(
            "(NaN/inf, >= saturation)", "(NaN/inf; saturated pixels kept and scored: --keep-saturated)")
    return method


class _Scored:
    """The per-pixel scores of the frames evaluated so far, pooled at the end, and what the report says of them."""

    def __init__(self):
        self.truths, self.scores, self.dilated, self.ignores, self.frames = [], [], [], [], []
        self.threshold = self.tta = self.tta_gate = self.runtime = self.logit_threshold = None
        self.drawn, self.first_input = [], None

    def add(self, name, image, truth, result, *, out, maps) -> None:
        """Keep one frame's scores (``result`` of :func:`kercr.detect`); draw it while fewer than ``maps`` are."""
        self.threshold, self.tta, self.runtime = result.threshold, result.tta, result.runtime
        self.tta_gate = result.tta_gate
        self.logit_threshold = result.logit_threshold  # None when the runtime gives probabilities
        ignored = result.ignored  # includes the frame's ignore mask
        prob = result.probability
        # Pixels are ranked by their logits where the runtime gives them: confident pixels,
        # whose float32 probabilities all round to 1.0, keep their order.
        score = prob if result.logit is None else result.logit
        self.truths.append(truth.ravel())
        self.scores.append(score.ravel())
        self.dilated.append(ndimage.maximum_filter(score, size=3, mode="nearest").ravel())
        del score
        self.ignores.append(ignored.ravel())
        self.frames.append({"name": name, "shape": list(prob.shape), "cr_pixels": int((truth & ~ignored).sum()),
                            "ignored_pixels": int(ignored.sum()), "flagged_pixels": int(result.mask.sum())})
        logger.info("%s: %d CR pixels, %d flagged, %d ignored", name, self.frames[-1]["cr_pixels"],
                    self.frames[-1]["flagged_pixels"], self.frames[-1]["ignored_pixels"])
        data = image.data if isinstance(image, CCDFrame) else np.asarray(image)
        if len(self.drawn) < maps:
            self.drawn.append(plot_prediction_map(out / f"prediction_{len(self.drawn)}.png", name, data, truth, prob,
                                                  result.mask))
        if self.first_input is None:
            self.first_input = (data, ignored)

    def pooled(self):
        """``(truth, score, dilated score, ignore)``, each 1-D over every pixel of every frame; the
        per-frame arrays are released."""
        pooled = tuple(np.concatenate(a) for a in (self.truths, self.scores, self.dilated, self.ignores))
        for a in (self.truths, self.scores, self.dilated, self.ignores):
            a.clear()
        return pooled


def _network_maps(loaded, data, ignored, out) -> list[str]:
    """Draw ``activations.png`` and ``attention.png`` of the first frame; the names of those drawn."""
    plots = []
    try:  # network-internal maps need the Keras model and a crop it accepts
        normalized, _ = normalize(data, mask=ignored, config=loaded.normalization)
        size = loaded.fixed_size or max(loaded.multiple, min(256, min(data.shape)) // loaded.multiple * loaded.multiple)
        if min(data.shape) >= size:
            crop = normalized[_crop(data.shape, size)]
            for names, fname, title in ((stage_layers(loaded.model), "activations.png",
                                         "mean activation over channels, encoder/decoder stages"),
                                        (attention_layers(loaded.model), "attention.png",
                                         "attention-gate coefficients")):
                p = plot_layer_maps(loaded.model, names, crop, out / fname, title=title)
                if p is not None:
                    plots.append(p.name)
    except Exception as err:  # plots are a bonus: never lose the metrics over them
        logger.warning("activation/attention maps skipped: %s", err)
    return plots
