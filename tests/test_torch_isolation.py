"""The PyTorch monitor never imports TensorFlow: checked in a fresh interpreter where TensorFlow is installed."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("torch")

REPO = pathlib.Path(__file__).resolve().parent.parent

_RECORD_A_FEW_STEPS = """
import torch
from torch import nn
from tb_gradhealth.torch import GradientHealthMonitor

model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
with GradientHealthMonitor(model, optimizer, {logdir!r}) as monitor:
    for _ in range(3):
        optimizer.zero_grad()
        loss = model(torch.randn(5, 4)).pow(2).mean()
        monitor.record_loss(loss)
        loss.backward()
        optimizer.step()
"""


def _modules_after(code: str) -> set[str]:
    """The top-level modules a fresh interpreter has imported after running `code`."""
    script = code + "\nimport sys\nprint(' '.join(sorted({name.split('.')[0] for name in sys.modules})))\n"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=REPO, check=True, timeout=300
    )
    return set(done.stdout.split())


def test_importing_the_monitor_imports_torch_and_not_tensorflow():
    modules = _modules_after("import tb_gradhealth.torch")
    assert "torch" in modules
    assert "tensorflow" not in modules and "keras" not in modules


@pytest.mark.slow
def test_recording_steps_does_not_import_tensorflow(tmp_path):
    modules = _modules_after(textwrap.dedent(_RECORD_A_FEW_STEPS.format(logdir=str(tmp_path))))
    assert any(name.startswith("events.out.tfevents.") for name in os.listdir(tmp_path))
    assert "tensorflow" not in modules and "keras" not in modules
