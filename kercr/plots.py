"""PNG plots of training runs.

Figures are made with ``matplotlib.figure.Figure`` directly, not pyplot: no display is needed and
the library never switches the user's matplotlib backend (inline plots in a notebook keep working).
"""

from __future__ import annotations

from pathlib import Path


def subplots(nrows: int = 1, ncols: int = 1, **fig_kw):
    """``(figure, axes)`` like ``pyplot.subplots``, without pyplot's global state or backend."""
    from matplotlib.figure import Figure

    fig = Figure(**{k: v for k, v in fig_kw.items() if k not in ("squeeze",)})
    axes = fig.subplots(nrows, ncols, squeeze=fig_kw.get("squeeze", True))
    return fig, axes


def plot_history(history: list[dict], out_dir) -> list[Path]:
    """Write ``loss.png`` (training vs validation loss) and ``dice.png`` (Dice per epoch).

    Parameters
    ----------
    history : list of dict
        Rows of ``history.csv`` (see :func:`kercr.training.read_history`).
    out_dir : path
        Directory the PNG files are written to.
    """
    out_dir = Path(out_dir)
    epochs = [row["epoch"] + 1 for row in history]
    written = []
    for key, label, name in (("loss", "loss", "loss.png"), ("dice", "Dice at p >= 0.5", "dice.png")):
        fig, ax = subplots(figsize=(6, 4), dpi=100)
        for prefix, style in (("", "-o"), ("val_", "-s")):
            values = [row.get(prefix + key) for row in history]
            if any(v is not None for v in values):
                ax.plot(epochs, values, style, ms=3, label="validation" if prefix else "training")
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(out_dir / name)
        written.append(out_dir / name)
    return written


def plot_runs(histories: dict, path) -> Path:
    """One PNG comparing several runs: training and validation loss and Dice per epoch.

    Parameters
    ----------
    histories : dict
        ``{label: rows}``, rows as read by :func:`kercr.training.read_history`.
    path : path
        The PNG file to write (2 x 2 panels: training loss, validation loss, training Dice,
        validation Dice at p >= 0.5; one line per run, the same colour in every panel).
    """
    path = Path(path)
    fig, axes = subplots(2, 2, figsize=(11, 7.5), dpi=100)
    panels = (("loss", "training loss"), ("val_loss", "validation loss"),
              ("dice", "training Dice (p >= 0.5)"), ("val_dice", "validation Dice (p >= 0.5)"))
    for ax, (key, title) in zip(axes.ravel(), panels):
        for label, rows in histories.items():
            points = [(row["epoch"] + 1, row[key]) for row in rows if key in row]
            if points:
                ax.plot(*zip(*points), "-o", ms=3, label=label)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    if axes[0, 0].get_lines():  # no runs (a table of extra models only): empty panels, no legend
        axes[0, 0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    return path
