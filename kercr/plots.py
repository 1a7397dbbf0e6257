"""PNG plots of training runs (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_history(history: list[dict], out_dir) -> list[Path]:
    """Write ``loss.png`` (training vs validation loss) and ``dice.png`` (Dice per epoch).

    Parameters
    ----------
    history : list of dict
        Rows of ``history.csv`` (see :func:`kercr.training.read_history`).
    out_dir : path
        Directory the PNG files are written to.
    """
    plt = _pyplot()
    out_dir = Path(out_dir)
    epochs = [row["epoch"] + 1 for row in history]
    written = []
    for key, label, name in (("loss", "loss", "loss.png"), ("dice", "Dice at p >= 0.5", "dice.png")):
        fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
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
        plt.close(fig)
        written.append(out_dir / name)
    return written
