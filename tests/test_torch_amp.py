"""GradientHealthMonitor under mixed precision on the CPU: GradScaler's unscaled gradient, its skipped steps, stopping."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from support import torch_runs
from support.torch_zoo import ZOO_ROWS, make_zoo, rows_of, zoo_batches
from torch import nn

from tb_gradhealth import metadata
from tb_gradhealth.torch import GradientHealthMonitor, NonFiniteGradientError

STEPS = 5
INIT_SCALE = 2.0**10


def _amp_training(model, optimizer, scaler, monitor, batches, inf_at=(), inf_layer="mix", unscale_first=False):
    """Trains under bfloat16 autocast with `scaler`; returns the loop's records (gradients unscaled) and the scales.

    With `unscale_first` the loop calls `scaler.unscale_(optimizer)` itself
    before the step, as it does to clip.
    """
    scales = []

    def before_step(index):
        scales.append(scaler.get_scale())
        if index in inf_at:
            getattr(model, inf_layer).weight.grad[0, 0] = float("inf")
        if unscale_first:
            scaler.unscale_(optimizer)

    def step():
        scaler.step(optimizer)
        scaler.update()

    with torch.autocast("cpu", dtype=torch.bfloat16):
        records = torch_runs.train(
            model,
            optimizer,
            batches,
            nn.functional.cross_entropy,
            monitor=monitor,
            before_step=before_step,
            step=step,
            backward=lambda loss: scaler.scale(loss).backward(),
        )
    if not unscale_first:
        for record, scale in zip(records, scales):
            record.grads = {name: grad / scale for name, grad in record.grads.items()}
    return records, scales


@pytest.mark.parametrize(
    ("fused", "unscale_first"),
    [(False, False), (True, False), (True, True)],
    ids=["sgd", "fused_adamw", "fused_adamw_unscaled_by_the_loop"],
)
def test_statistics_are_of_the_unscaled_gradient_and_a_skipped_step_is_no_step(tmp_path, fused, unscale_first):
    model, _ = make_zoo()
    if fused:
        # Fused optimizers unscale inside their own kernel and skip an overflowing update themselves.
        optimizer = torch.optim.AdamW(model.parameters(), lr=0.01, fused=True)
    else:
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    scaler = torch.amp.GradScaler("cpu", init_scale=INIT_SCALE)
    monitor = GradientHealthMonitor(model, optimizer, tmp_path, scaler=scaler)
    records, scales = _amp_training(
        model, optimizer, scaler, monitor, zoo_batches(STEPS), inf_at=(2,), unscale_first=unscale_first
    )
    monitor.close()
    assert scales[3] == scales[2] / 2  # the overflow was seen and skipped
    applied = [r for index, r in enumerate(records) if index != 2]
    events = torch_runs.read_events(tmp_path)
    expected = torch_runs.reference_stats(applied, rows_of(model, ZOO_ROWS))
    torch_runs.assert_stats_match(events, expected, range(STEPS - 1))
    np.testing.assert_allclose(events[metadata.LOSS]["values"][:, 0], [r.loss for r in applied], rtol=torch_runs.RTOL)


def test_an_overflow_at_scale_one_is_the_model_s_own_and_is_recorded(tmp_path):
    model, _ = make_zoo()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    scaler = torch.amp.GradScaler("cpu", init_scale=1.0)
    monitor = GradientHealthMonitor(model, optimizer, tmp_path, scaler=scaler)
    records, _ = _amp_training(model, optimizer, scaler, monitor, zoo_batches(3), inf_at=(1,))
    monitor.close()
    events = torch_runs.read_events(tmp_path)
    # Step 1 was not applied (update_ratio 0) but is recorded; the next update is step 2.
    torch_runs.assert_stats_match(events, torch_runs.reference_stats(records, rows_of(model, ZOO_ROWS)), range(3))
    mix = list(ZOO_ROWS).index("mix")
    assert events[metadata.NONFINITE]["values"][:, mix].tolist() == [0, 1, 0]
    assert not events[metadata.UPDATE_RATIO]["values"][1].any()


def test_stop_on_nonfinite_ignores_an_overflow_the_scale_explains(tmp_path):
    model, _ = make_zoo()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0)
    monitor = GradientHealthMonitor(model, optimizer, tmp_path, scaler=scaler, stop_on_nonfinite=True)
    # Iteration 1 overflows at scale 2 (skipped, no step); iteration 2 at scale 1: step 1, the model's own.
    with pytest.raises(NonFiniteGradientError, match="step 1 in mix;"):
        _amp_training(model, optimizer, scaler, monitor, zoo_batches(4), inf_at=(1, 2))
    monitor.close()
    events = torch_runs.read_events(tmp_path)
    assert events[metadata.NONFINITE]["steps"] == [0, 1]
