"""GradientHealthMonitor on plain PyTorch loops: every statistic against numpy, rows, steps, accumulation, clipping, stopping."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from support import torch_runs
from support.torch_zoo import ZOO_ROWS, make_zoo, rows_of, zoo_batches
from torch import nn

from tb_gradhealth import cli, metadata, reader
from tb_gradhealth.torch import GradientHealthMonitor, NonFiniteGradientError

STEPS = 4


def test_every_statistic_matches_numpy_and_rows_follow_the_forward_pass(tmp_path):
    model, optimizer = make_zoo()
    monitor = GradientHealthMonitor(model, optimizer, tmp_path)
    records = torch_runs.train(model, optimizer, zoo_batches(STEPS), nn.functional.cross_entropy, monitor=monitor)
    monitor.close()
    assert monitor.layer_names == tuple(ZOO_ROWS)
    events = torch_runs.read_events(tmp_path)
    expected = torch_runs.reference_stats(records, rows_of(model, ZOO_ROWS))
    torch_runs.assert_stats_match(events, expected, range(STEPS))
    content = events[metadata.GRAD_NORM]["content"]
    assert content["layers"] == list(ZOO_ROWS)
    assert content["kinds"] == list(ZOO_ROWS.values())
    modules = dict(model.named_modules())
    assert content["params"] == [sum(p.numel() for p in modules[n].parameters(recurse=False)) for n in ZOO_ROWS]
    loss = events[metadata.LOSS]
    assert loss["steps"] == list(range(STEPS)) and loss["content"]["scope"] == metadata.SCOPE_RUN
    np.testing.assert_allclose(loss["values"][:, 0], [r.loss for r in records], rtol=torch_runs.RTOL)
    # The plugin's own reader reads the run the same way.
    provider, ctx, experiment = cli.provider_for_logdir(str(tmp_path))
    series = reader.read_run(provider, ctx, experiment, ".")
    np.testing.assert_allclose(series[metadata.GRAD_NORM].values, expected[metadata.GRAD_NORM], rtol=torch_runs.RTOL)


def test_update_freq_keeps_spikes_and_nan_between_written_steps(tmp_path):
    model, optimizer = make_zoo()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    monitor = GradientHealthMonitor(model, optimizer, tmp_path, update_freq=3)
    saved = {}

    def nan_at_step_4(index):
        if index == 4:
            model.mix.weight.grad[0, :2] = float("nan")
            saved["mix"] = model.mix.weight.detach().clone()

    records = []
    for index, batch in enumerate(zoo_batches(8)):
        records += torch_runs.train(
            model, optimizer, [batch], nn.functional.cross_entropy, before_step=lambda _: nan_at_step_4(index)
        )
        if index == 4:
            # The NaN update is undone, so later steps are finite again.
            with torch.no_grad():
                model.mix.weight.copy_(saved["mix"])
    monitor.close()
    expected = torch_runs.reference_stats(records, rows_of(model, ZOO_ROWS))
    events = torch_runs.read_events(tmp_path)
    logged = [0, 3, 6]
    for stat in (metadata.GRAD_MAX_ABS, metadata.WEIGHT_NORM, metadata.UPDATE_RATIO):
        assert events[stat]["steps"] == logged
        np.testing.assert_allclose(
            events[stat]["values"], expected[stat][logged], rtol=torch_runs.RTOL, atol=torch_runs.ATOL
        )
    # Every step's grad_norm is written at logged steps and, for the last step, at close.
    assert events[metadata.GRAD_NORM]["steps"] == logged + [7]
    np.testing.assert_allclose(
        events[metadata.GRAD_NORM]["values"], expected[metadata.GRAD_NORM][logged + [7]], rtol=torch_runs.RTOL
    )
    grad_norm = expected[metadata.GRAD_NORM]
    nonfinite = expected[metadata.NONFINITE]
    spans = {0: [0], 3: [1, 2, 3], 6: [4, 5, 6], 7: [7]}
    with np.errstate(invalid="ignore"):
        max_expected = np.stack([np.max(grad_norm[spans[s]], axis=0) for s in spans])
    np.testing.assert_allclose(events[metadata.GRAD_NORM_MAX]["values"], max_expected, rtol=torch_runs.RTOL)
    mix = list(ZOO_ROWS).index("mix")
    assert np.isnan(events[metadata.GRAD_NORM_MAX]["values"][2, mix])
    counts = np.stack([np.sum(nonfinite[spans[s]], axis=0) for s in spans])
    np.testing.assert_array_equal(events[metadata.NONFINITE]["values"], counts)
    assert counts[2, mix] == 2 and counts.sum() == 2


def test_gradient_accumulation_records_one_step_per_update_with_the_accumulated_gradient(tmp_path):
    model, optimizer = make_zoo()
    monitor = GradientHealthMonitor(model, optimizer, tmp_path)
    records = torch_runs.train(
        model, optimizer, zoo_batches(3 * STEPS), nn.functional.cross_entropy, monitor=monitor, micro_batches=3
    )
    monitor.close()
    assert monitor.next_step == STEPS
    events = torch_runs.read_events(tmp_path)
    torch_runs.assert_stats_match(events, torch_runs.reference_stats(records, rows_of(model, ZOO_ROWS)), range(STEPS))
    # The step's loss is the mean of its micro-batches' losses.
    np.testing.assert_allclose(events[metadata.LOSS]["values"][:, 0], [r.loss for r in records], rtol=torch_runs.RTOL)


def test_a_clipped_gradient_is_recorded_as_the_step_receives_it(tmp_path):
    model, optimizer = make_zoo()
    monitor = GradientHealthMonitor(model, optimizer, tmp_path)
    max_norm = 0.01
    unclipped = []

    def clip(index):
        unclipped.append(float(nn.utils.clip_grad_norm_(model.parameters(), max_norm)))

    records = torch_runs.train(model, optimizer, zoo_batches(STEPS), nn.functional.cross_entropy, before_step=clip)
    monitor.close()
    events = torch_runs.read_events(tmp_path)
    torch_runs.assert_stats_match(events, torch_runs.reference_stats(records, rows_of(model, ZOO_ROWS)), range(STEPS))
    total = np.sqrt(np.sum(events[metadata.GRAD_NORM]["values"] ** 2, axis=1))
    assert min(unclipped) > 10 * max_norm
    np.testing.assert_allclose(total, max_norm, rtol=1e-3)


def test_stop_on_nonfinite_raises_before_the_update_and_keeps_the_step_on_disk(tmp_path):
    model, optimizer = make_zoo()
    monitor = GradientHealthMonitor(model, optimizer, tmp_path, stop_on_nonfinite=True)

    def inf_at_step_2(index):
        if index == 2:
            model.conv.bias.grad[1] = float("inf")

    batches = zoo_batches(STEPS)
    torch_runs.train(model, optimizer, batches[:2], nn.functional.cross_entropy)
    with pytest.raises(NonFiniteGradientError, match="step 2 in conv;") as raised:
        torch_runs.train(
            model, optimizer, batches[2:], nn.functional.cross_entropy, before_step=lambda _: inf_at_step_2(2)
        )
    assert raised.value.step == 2 and raised.value.layers == ["conv"]
    # The update was not applied: the weights are finite and as before the step.
    assert torch.isfinite(model.conv.bias).all()
    events = torch_runs.read_events(tmp_path)
    assert events[metadata.NONFINITE]["steps"] == [0, 1, 2]
    counts = events[metadata.NONFINITE]["values"][2]
    assert counts.tolist() == [1.0 if name == "conv" else 0.0 for name in ZOO_ROWS]
    assert events[metadata.UPDATE_RATIO]["values"][2].tolist() == [0.0] * len(ZOO_ROWS)
    monitor.close()


def test_freezing_a_layer_starts_a_layer_set_without_it(tmp_path):
    model, optimizer = make_zoo()
    monitor = GradientHealthMonitor(model, optimizer, tmp_path)
    batches = zoo_batches(STEPS)
    torch_runs.train(model, optimizer, batches[:2], nn.functional.cross_entropy)
    model.embed.weight.requires_grad_(False)
    torch_runs.train(model, optimizer, batches[2:], nn.functional.cross_entropy)
    monitor.close()
    events = torch_runs.read_events(tmp_path)
    frozen_set = metadata.layer_set_id(list(ZOO_ROWS)[1:])
    for stat in metadata.BUILTIN_STATS:
        assert events[stat]["steps"] == [0, 1] and events[stat]["layers"] == tuple(ZOO_ROWS)
        later = events["%s/%s" % (stat, frozen_set)]
        assert later["steps"] == [2, 3] and later["layers"] == tuple(ZOO_ROWS)[1:]
        assert later["content"]["layer_set"] == frozen_set


def test_steps_continue_across_monitors_and_from_the_optimizer_s_count(tmp_path):
    model, optimizer = make_zoo()
    batches = zoo_batches(STEPS)
    with GradientHealthMonitor(model, optimizer, tmp_path / "a"):
        torch_runs.train(model, optimizer, batches[:2], nn.functional.cross_entropy)
    # A later monitor of the same optimizer continues its count (Adam counts its updates).
    with GradientHealthMonitor(model, optimizer, tmp_path / "a") as monitor:
        assert monitor.next_step == 2
        torch_runs.train(model, optimizer, batches[2:3], nn.functional.cross_entropy)
    # SGD keeps no count: a later monitor of the run directory continues after the earlier one.
    sgd = torch.optim.SGD(model.parameters(), lr=0.01)
    with GradientHealthMonitor(model, sgd, tmp_path / "a") as monitor:
        assert monitor.next_step == 3
        torch_runs.train(model, sgd, batches[3:], nn.functional.cross_entropy)
    assert torch_runs.read_events(tmp_path / "a")[metadata.GRAD_NORM]["steps"] == [0, 1, 2, 3]
    # Resumed from a checkpoint in a new optimizer: the checkpoint's count.
    resumed = torch.optim.Adam(model.parameters(), lr=0.01)
    resumed.load_state_dict(optimizer.state_dict())
    assert GradientHealthMonitor(model, resumed, tmp_path / "b").next_step == 3


def test_bad_arguments_are_refused_with_a_clear_error(tmp_path):
    model, optimizer = make_zoo()
    with pytest.raises(ValueError, match="update_freq must be a positive"):
        GradientHealthMonitor(model, optimizer, tmp_path, update_freq=0)
    other = nn.Linear(2, 2)
    foreign = torch.optim.SGD(list(model.parameters()) + list(other.parameters()), lr=0.1)
    with pytest.raises(ValueError, match=r"2 parameter\(s\) that are not part of the model"):
        GradientHealthMonitor(model, foreign, tmp_path)
    # A parameter group added later is checked at the next step.
    late = torch.optim.SGD(model.parameters(), lr=0.1)
    monitor = GradientHealthMonitor(model, late, tmp_path)
    late.add_param_group({"params": list(other.parameters())})
    with pytest.raises(ValueError, match="not part of the model"):
        torch_runs.train(model, late, zoo_batches(1), nn.functional.cross_entropy)
    monitor.close()
    first = GradientHealthMonitor(model, optimizer, tmp_path)
    with pytest.raises(RuntimeError, match="already has a GradientHealthMonitor"):
        GradientHealthMonitor(model, optimizer, tmp_path)
    first.close()
    GradientHealthMonitor(model, optimizer, tmp_path).close()
