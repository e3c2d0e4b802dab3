"""The README's recording examples run as written and write what they promise."""

from __future__ import annotations

import inspect
import os
import pathlib
import re

import numpy as np
import pytest
from support import events

from tb_gradhealth import metadata

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"


def _example(section: str) -> str:
    """The first ```python block under the `### <section>` heading."""
    text = README.read_text(encoding="utf-8")
    start = text.index("### " + section + "\n")
    match = re.compile(r"```python\n(.*?)```", re.S).search(text, start)
    assert match and match.start() < text.index("\n## ", start), "no example in " + section
    return match.group(1)


def _run(section, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    exec(compile(_example(section), "README: " + section, "exec"), {"__name__": "readme_example"})


def _multiples(recorder_class, n_steps: int) -> list[int]:
    """The steps out of `n_steps` that a recorder with its default `update_freq` writes in full."""
    return list(range(0, n_steps, inspect.signature(recorder_class).parameters["update_freq"].default))


def _written_steps(recorder_class, n_steps: int) -> list[int]:
    """The steps written: the multiples, and the last step (its per-step statistics only)."""
    steps = _multiples(recorder_class, n_steps)
    return steps if steps[-1] == n_steps - 1 else steps + [n_steps - 1]


def _check_loss(run, recorder_class, n_steps: int):
    """The loss is written with every fully written step (and may be with the last one), always finite."""
    loss_steps = set(run.steps[metadata.LOSS])
    assert set(_multiples(recorder_class, n_steps)) <= loss_steps <= set(_written_steps(recorder_class, n_steps))
    assert np.isfinite(run.values[metadata.LOSS]).all()


@pytest.mark.slow
def test_keras_fit_example(tmp_path, monkeypatch):
    from tb_gradhealth import GradientHealthCallback

    _run("Keras `fit`", tmp_path, monkeypatch)
    run = events.read_run(str(tmp_path / "logs" / "mlp" / "train"))
    # A model built by fit itself (no keras.Input): its two Dense layers, input first.
    assert len(run.layers) == 2 and run.layers[0].startswith("dense")
    assert list(run.steps[metadata.GRAD_NORM]) == _written_steps(GradientHealthCallback, 64)
    _check_loss(run, GradientHealthCallback, 64)
    assert any("gradient_health" not in name for name in os.listdir(tmp_path / "logs" / "mlp" / "train"))


@pytest.mark.slow
def test_custom_loop_example(tmp_path, monkeypatch):
    from tb_gradhealth import GradientHealthRecorder

    _run("Custom training loops", tmp_path, monkeypatch)
    run = events.read_run(str(tmp_path / "logs" / "custom"))
    assert len(run.layers) == 2
    assert list(run.steps[metadata.GRAD_NORM]) == _written_steps(GradientHealthRecorder, 16)
    _check_loss(run, GradientHealthRecorder, 16)


def test_pytorch_example(tmp_path, monkeypatch):
    pytest.importorskip("torch")
    from tb_gradhealth.torch import GradientHealthMonitor

    _run("PyTorch", tmp_path, monkeypatch)
    run = events.read_run(str(tmp_path / "runs" / "exp1"))
    assert run.layers == ("0", "2")  # the two Linear modules by their path in the Sequential
    assert list(run.steps[metadata.GRAD_NORM]) == _written_steps(GradientHealthMonitor, 16)
    _check_loss(run, GradientHealthMonitor, 16)


def test_numpy_example(tmp_path, monkeypatch):
    _run("Any framework (numpy only)", tmp_path, monkeypatch)
    run = events.read_run(str(tmp_path / "logs" / "numpy_run"))
    assert run.layers == ("fc1", "fc2", "head")
    assert set(run.values) == {"grad_norm", "grad_norm_max", "my_statistic", metadata.LOSS}
    assert list(run.steps["my_statistic"]) == list(range(100))
    np.testing.assert_allclose(run.values[metadata.LOSS][:, 0], 1.0 / np.arange(1, 101), rtol=1e-6)
