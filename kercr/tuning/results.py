"""The results of a search: a table like the reference one (CSV and Markdown) and the best model.

The table has one row per trial, best first (by the search objective), with the trial ID, the
tuner that ran it, the architecture and hyperparameters, the trainable-parameter count and the
validation Dice and TPR at 0.01 % FPR. Those two are computed by
:func:`kercr.evaluation.validation_metrics` on the pixels of all validation batches pooled
together (ignored pixels excluded, Dice at threshold 0.5) with the weights of the trial's best
epoch; the objective column is the best epoch's logged value (``val_dice`` or
``val_tpr_at_fpr_1e-4``, the streaming Keras metric), which is what the tuner ranks by.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import shutil
from pathlib import Path

from kercr._files import write_json, write_text
from kercr.model_files import write_normalization
from kercr.tuning.tuners import MODEL_FILE, PARAMS, POOLED_DICE, POOLED_TPR

logger = logging.getLogger(__name__)

COLUMNS = (
    ("trial", "trial"),
    ("tuner", "tuner"),
    ("status", "status"),
    ("model", "model"),
    ("num_heads", "heads"),
    ("num_layers", "layers"),
    ("mlp_dim", "MLP dim"),
    ("hidden_dim", "hidden dim"),
    ("base_filters", "base filters"),
    ("learning_rate", "learning rate"),
    ("epochs", "epochs"),
    ("trainable_params", "trainable parameters"),
    ("val_dice", "validation Dice"),
    ("val_tpr_at_fpr_1e-4", "validation TPR at 0.01 % FPR"),
    ("objective", "objective (best logged)"),
)
"""(CSV column, Markdown header) pairs of the results table."""


def trial_rows(tuner, space) -> list[dict]:
    """One dict per trial of ``tuner``'s oracle (keys: the CSV columns), best first."""
    oracle = tuner.oracle
    tuners = getattr(oracle, "trial_tuners", {})
    rows = []
    for trial_id, trial in oracle.trials.items():
        values = trial.hyperparameters.values
        metrics = trial.metrics
        row = {
            "trial": trial_id,
            "tuner": tuners.get(trial_id, ""),
            "status": str(trial.status),
            "model": values.get("model", space.models[0]),
            "learning_rate": values.get("learning_rate"),
            "epochs": values.get("tuner/epochs", space.max_epochs),
            "objective": trial.score,
        }
        for key in ("num_heads", "num_layers", "mlp_dim", "hidden_dim", "base_filters"):
            row[key] = values.get(key)
        for column, name in (("trainable_params", PARAMS), ("val_dice", POOLED_DICE), ("val_tpr_at_fpr_1e-4", POOLED_TPR)):
            row[column] = metrics.get_last_value(name) if metrics.exists(name) else None
        if row["trainable_params"] is not None:
            row["trainable_params"] = int(row["trainable_params"])
        rows.append(row)
    rows.sort(key=lambda r: (r["objective"] is None, -(r["objective"] or 0.0), r["trial"]))
    return rows


def _columns(rows) -> list[tuple[str, str]]:
    # Hyperparameters no trial used (e.g. base_filters in a TransUNet-only search) are left out.
    optional = {"num_heads", "num_layers", "mlp_dim", "hidden_dim", "base_filters", "tuner"}
    return [(c, h) for c, h in COLUMNS if c not in optional or any(r.get(c) not in (None, "") for r in rows)]


def _cell(column, value) -> str:
    if value is None:
        return ""
    if column == "trainable_params":
        return f"{value:,}"
    if column == "learning_rate":
        return f"{value:.3g}"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def markdown_table(rows, space) -> str:
    """The results as a Markdown table with a one-line caption."""
    columns = _columns(rows)
    numeric = {"trainable_params", "val_dice", "val_tpr_at_fpr_1e-4", "objective", "learning_rate", "epochs"}
    lines = [
        f"Search: {space.tuner}, objective {space.objective_name} (max); validation Dice and TPR "
        "on pooled validation pixels of each trial's best epoch; best first.",
        "",
        "| " + " | ".join(h for _, h in columns) + " |",
        "|" + "|".join("---:" if c in numeric else "---" for c, _ in columns) + "|",
    ]
    for row in rows:
        lines.append("| " + " | ".join(_cell(c, row.get(c)) for c, _ in columns) + " |")
    return "\n".join(lines) + "\n"


def write_results(tuner, space, out) -> list[dict]:
    """Write ``results.csv`` and ``results.md`` to ``out``, and the best model beside them.

    The best model (by the objective) is copied to ``out/best.keras`` with
    ``out/normalization.json`` (the normalization constants, as ``kercr-train`` writes them) and
    ``out/best_trial.json`` (its hyperparameters and metrics), ready for ``kercr-export``.

    Returns
    -------
    list of dict
        The table rows, best first.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = trial_rows(tuner, space)
    columns = [c for c, _ in _columns(rows)]
    table = io.StringIO(newline="")
    writer = csv.DictWriter(table, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows({c: ("" if r.get(c) is None else r[c]) for c in columns} for r in rows)
    write_text(out / "results.csv", table.getvalue())
    write_text(out / "results.md", markdown_table(rows, space))

    best = next((r for r in rows if r["objective"] is not None), None)
    if best is None:
        logger.warning("no trial finished yet; no best model to save")
        return rows
    source = Path(tuner.get_trial_dir(best["trial"])) / MODEL_FILE
    partial = out / f".best.{os.getpid()}.partial.keras"
    if source.is_file():
        shutil.copyfile(source, partial)
        os.replace(partial, out / "best.keras")
    else:
        # A distributed search whose workers do not share this directory: fall back to Keras
        # Tuner's weight checkpoint, if it is here.
        try:
            tuner.load_model(tuner.oracle.get_trial(best["trial"])).save(partial)
            os.replace(partial, out / "best.keras")
        except Exception as err:  # noqa: BLE001 - any failure means the files are elsewhere
            partial.unlink(missing_ok=True)
            logger.warning(
                "the best trial %s ran on %s and its model is not in %s (%s); run the workers with the "
                "same --out on a shared file system, or copy %s from that machine",
                best["trial"], best["tuner"] or "another machine", source.parent, err, source,
            )
            return rows
    normalization = space.train_config().normalization_config()  # what every trial trained with
    write_normalization(out, normalization)
    write_json(out / "best_trial.json",
               {**best, "hyperparameters": tuner.oracle.get_trial(best["trial"]).hyperparameters.values},
               sort_keys=True, default=str)
    logger.info("best trial %s: saved %s", best["trial"], out / "best.keras")
    return rows
