"""Tests of demo/gradient_health.ipynb: it runs top to bottom headless (nbclient) on synthetic data."""

from __future__ import annotations

import json
import pathlib
import sys

import nbformat
import numpy as np
import pytest
from nbclient import NotebookClient
from support.events import read_gradient_health

NOTEBOOK = pathlib.Path(__file__).resolve().parent.parent / "demo" / "gradient_health.ipynb"
RUNS = ("baseline", "vanishing", "vanishing_sigmoid", "exploding")
KERNEL_NAME = "tb-gradhealth-test"
CELL_TIMEOUT_S = 300  # one cell trains one model; generous for a loaded 2-core machine
# The demo's runs themselves are trained once per session (conftest's
# demo_runs); here the notebook only has to run top to bottom: 10 training
# batches of 32 images (9 after the 10% validation split).
TRAIN_IMAGES = 320
STEPS = 9


def _notebook():
    return nbformat.read(NOTEBOOK, as_version=4)


def test_notebook_is_clean_and_shows_tensorboard():
    notebook = _notebook()
    nbformat.validate(notebook)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert all(not cell.outputs and cell.execution_count is None for cell in code), "commit it without outputs"
    source = "\n".join(cell.source for cell in code)
    assert "%load_ext tensorboard" in source and "%tensorboard --logdir" in source
    assert "GradientHealthCallback(log_dir, update_freq=1)" in source
    assert "keras.callbacks.TensorBoard(log_dir=log_dir, histogram_freq=1)" in source
    assert notebook.metadata.kernelspec.name == "python3"


@pytest.mark.slow
def test_notebook_runs_headless_on_synthetic_data(tmp_path, monkeypatch):
    # A kernelspec of its own, so the kernel is this interpreter (the venv's
    # python), whatever "python3" kernels the machine has installed.
    spec_dir = tmp_path / "jupyter" / "kernels" / KERNEL_NAME
    spec_dir.mkdir(parents=True)
    (spec_dir / "kernel.json").write_text(
        json.dumps(
            {
                "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                "display_name": "tb-gradhealth tests",
                "language": "python",
            }
        )
    )
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    logdir = tmp_path / "logs"
    monkeypatch.setenv("GRADHEALTH_DEMO_DATASET", "synthetic")
    monkeypatch.setenv("GRADHEALTH_DEMO_EPOCHS", "1")
    monkeypatch.setenv("GRADHEALTH_DEMO_LOGDIR", str(logdir))
    monkeypatch.setenv("GRADHEALTH_DEMO_TENSORBOARD", "0")
    monkeypatch.setenv("GRADHEALTH_DEMO_TRAIN_IMAGES", str(TRAIN_IMAGES))

    notebook = _notebook()
    notebook.cells.append(nbformat.v4.new_code_cell("import sys; print(sys.executable)"))
    # Jupyter starts the kernel in the notebook's folder; so does this.
    NotebookClient(
        notebook,
        kernel_name=KERNEL_NAME,
        timeout=CELL_TIMEOUT_S,
        resources={"metadata": {"path": str(NOTEBOOK.parent)}},
    ).execute()

    assert notebook.cells[-1].outputs[0].text.strip() == sys.executable
    outputs = "".join(output.get("text", "") for cell in notebook.cells for output in cell.get("outputs", []))
    assert "Data: SYNTHETIC" in outputs
    assert sorted(path.name for path in logdir.iterdir()) == sorted(run + "-synthetic" for run in RUNS)
    assert "(%d, 28, 28)" % TRAIN_IMAGES in outputs
    for run in RUNS:
        stats = read_gradient_health(logdir / (run + "-synthetic"))
        np.testing.assert_array_equal(stats["grad_norm"][1], np.arange(STEPS))
    assert not np.any(read_gradient_health(logdir / "baseline-synthetic")["nonfinite"][2])
