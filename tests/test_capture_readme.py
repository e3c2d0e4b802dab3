"""The README's recording examples run as written and write what they promise."""

from __future__ import annotations

import inspect
import os
import pathlib
import re

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


def _default_steps(n_steps: int) -> list[int]:
    """The steps the callback's defaults write in `n_steps` steps: multiples of `update_freq`, and the last."""
    from tb_gradhealth import GradientHealthCallback

    update_freq = inspect.signature(GradientHealthCallback).parameters["update_freq"].default
    return sorted(set(range(0, n_steps, update_freq)) | {n_steps - 1})


def _run(section, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    exec(compile(_example(section), "README: " + section, "exec"), {"__name__": "readme_example"})


@pytest.mark.slow
def test_keras_fit_example(tmp_path, monkeypatch):
    _run("Keras `fit`", tmp_path, monkeypatch)
    run = events.read_run(str(tmp_path / "logs" / "mlp" / "train"))
    assert len(run.layers) == 2  # Keras numbers layer names per process: dense_N
    assert list(run.steps[metadata.GRAD_NORM]) == _default_steps(64)
    assert any("gradient_health" not in name for name in os.listdir(tmp_path / "logs" / "mlp" / "train"))


@pytest.mark.slow
def test_custom_loop_example(tmp_path, monkeypatch):
    _run("Custom training loops", tmp_path, monkeypatch)
    run = events.read_run(str(tmp_path / "logs" / "custom"))
    assert len(run.layers) == 2
    assert list(run.steps[metadata.GRAD_NORM]) == _default_steps(16)


def test_numpy_example(tmp_path, monkeypatch):
    _run("Any framework (numpy only)", tmp_path, monkeypatch)
    run = events.read_run(str(tmp_path / "logs" / "numpy_run"))
    assert run.layers == ("fc1", "fc2", "head")
    assert set(run.values) == {"grad_norm", "grad_norm_max", "my_statistic"}
    assert list(run.steps["my_statistic"]) == list(range(100))
