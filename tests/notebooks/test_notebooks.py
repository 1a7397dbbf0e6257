"""The tutorials in notebooks/ run top to bottom, and are committed without outputs.

Each notebook is executed with nbclient in small mode (``KERCR_NOTEBOOK_SMALL=1``: tiny frames,
patches and step counts), in a kernel running this interpreter, with its working directory and
its output directory (``KERCR_NOTEBOOK_OUT``) under ``tmp_path``, so nothing is written into the
repository. A cell that raises fails the test with the cell's traceback.
"""

import json
import re
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

NOTEBOOK_DIR = Path(__file__).resolve().parents[2] / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
EXPECTED = ["01_detect", "02_train", "03_tune", "04_export", "05_inside"]
KERNEL_NAME = "kercr-test-python"
# Figures and tables each notebook must display in small mode (01: the four panels and the zoom
# around the largest flagged CR, made with the shipped model).
DISPLAYS = {
    "01_detect": {"image/png": 2},
    "02_train": {"image/png": 2, "text/markdown": 1},
    "03_tune": {"text/markdown": 1},
    "04_export": {"image/png": 1, "text/markdown": 1},
    "05_inside": {"image/png": 4},
}
CELL_TIMEOUT_S = 300  # one cell; generous for a loaded CI machine (the whole small run takes ~2-3 minutes)


@pytest.fixture(scope="module")
def kernel_dir(tmp_path_factory):
    """A Jupyter data directory whose only kernelspec runs *this* interpreter.

    A named kernelspec of our own, first on ``JUPYTER_PATH``, so neither a user-level ``python3``
    kernelspec nor a system Jupyter can start the notebooks in another environment.
    """
    root = tmp_path_factory.mktemp("jupyter")
    spec = root / "kernels" / KERNEL_NAME
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "kercr tests", "language": "python",
    }))
    return root


def test_every_tutorial_is_collected():
    assert [p.stem for p in NOTEBOOKS] == EXPECTED


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code, f"{path.name} has no code cells"
    dirty = [i for i, c in enumerate(nb.cells)
             if c.cell_type == "code" and (c.outputs or c.execution_count is not None)]
    assert not dirty, (f"{path.name}: cells {dirty} hold outputs or execution counts; strip them "
                       f"(jupyter nbconvert --clear-output --inplace {path.name}, or nbstripout)")
    assert re.search(r"^\s*(import|from) kercr", "\n".join(c.source for c in code), re.M), \
        f"{path.name} does not import kercr"
    assert any("KERCR_NOTEBOOK_SMALL" in c.source for c in code), f"{path.name} ignores KERCR_NOTEBOOK_SMALL"


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs(path, tmp_path, kernel_dir, monkeypatch):
    monkeypatch.setenv("JUPYTER_PATH", str(kernel_dir))
    monkeypatch.setenv("KERCR_NOTEBOOK_SMALL", "1")
    monkeypatch.setenv("KERCR_NOTEBOOK_OUT", str(tmp_path / "out"))
    monkeypatch.setenv("KERCR_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "2")
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        nb, kernel_name=KERNEL_NAME, timeout=CELL_TIMEOUT_S,
        resources={"metadata": {"path": str(tmp_path)}},  # the kernel's working directory
    )
    client.execute()  # raises CellExecutionError, with the traceback, if a cell fails

    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    errors = [o for o in outputs if o.output_type == "error"]
    assert not errors, errors
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "small mode: True" in text, "the notebook did not see KERCR_NOTEBOOK_SMALL=1"
    assert str(tmp_path / "out") in text, "the notebook did not write under KERCR_NOTEBOOK_OUT"
    assert (tmp_path / "out").is_dir()
    if path.stem == "01_detect":
        assert "SKIPPED" not in text and "kercr.detect and the shipped model are available" in text
    shown = [kind for o in outputs for kind in o.get("data", {}) if kind in ("image/png", "text/markdown")]
    for kind, n in DISPLAYS[path.stem].items():
        assert shown.count(kind) >= n, f"{path.name} displayed {shown.count(kind)} {kind} outputs, expected >= {n}"
