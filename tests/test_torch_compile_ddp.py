"""GradientHealthMonitor with torch.compile'd models and under DistributedDataParallel (gloo, two local processes)."""

from __future__ import annotations

import pathlib
import socket

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from support import torch_runs
from support.torch_zoo import ZOO_ROWS, Zoo, make_zoo, rows_of, zoo_batches
from torch import nn

from tb_gradhealth import metadata
from tb_gradhealth.torch import GradientHealthMonitor, NonFiniteGradientError

STEPS = 3
WORLD_SIZE = 2
LEARNING_RATE = 0.05


@pytest.mark.slow
@pytest.mark.parametrize("wrap", ["compiled_model_given", "compiled_after", "compiled_submodule"])
def test_compiled_models_are_recorded_exactly_under_their_own_names(tmp_path, wrap):
    model, optimizer = make_zoo()
    trained = model
    if wrap == "compiled_model_given":
        trained = torch.compile(model, backend="aot_eager")
        monitor = GradientHealthMonitor(trained, optimizer, tmp_path)
    elif wrap == "compiled_after":
        monitor = GradientHealthMonitor(model, optimizer, tmp_path)
        trained = torch.compile(model, backend="aot_eager")
    else:
        model.mix = torch.compile(model.mix, backend="aot_eager")
        monitor = GradientHealthMonitor(model, optimizer, tmp_path)
    records = torch_runs.train(trained, optimizer, zoo_batches(STEPS), nn.functional.cross_entropy, monitor=monitor)
    monitor.close()
    assert monitor.layer_names == tuple(ZOO_ROWS)
    reference = Zoo()
    events = torch_runs.read_events(tmp_path)
    torch_runs.assert_stats_match(
        events, torch_runs.reference_stats(records, rows_of(reference, ZOO_ROWS)), range(STEPS)
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _rank_batches(rank: int):
    return zoo_batches(STEPS, seed=10 + rank)


def _ddp_worker(rank: int, logdir: str, port: int) -> None:
    torch.distributed.init_process_group(
        "gloo", init_method="tcp://127.0.0.1:%d" % port, rank=rank, world_size=WORLD_SIZE
    )
    try:
        torch.manual_seed(0)
        model = nn.parallel.DistributedDataParallel(Zoo())
        optimizer = torch.optim.SGD(model.parameters(), lr=LEARNING_RATE)
        batches = _rank_batches(rank)
        # After the compared steps, one whose loss is NaN on rank 1 only: the
        # all-reduced gradient is NaN on both ranks, and both stop.
        batches.append(batches[0])
        with GradientHealthMonitor(model, optimizer, logdir, stop_on_nonfinite=True) as monitor:
            for step, (inputs, targets) in enumerate(batches):
                optimizer.zero_grad()
                loss = nn.functional.cross_entropy(model(inputs), targets)
                if step == STEPS and rank == 1:
                    loss = loss * float("nan")
                monitor.record_loss(loss)
                loss.backward()
                try:
                    optimizer.step()
                except NonFiniteGradientError as error:
                    (pathlib.Path(logdir).parent / ("stopped-%d" % rank)).write_text(str(error.step))
            assert monitor.layer_names == tuple(ZOO_ROWS)
        # Neither rank tears gloo down while the other still talks to it: a
        # rank leaving early aborts the other ("terminate called without an
        # active exception"), seen on a loaded 2-core machine.
        torch.distributed.barrier()
    finally:
        torch.distributed.destroy_process_group()


def _reference_records() -> list[torch_runs.StepRecord]:
    """One process, the same start: the gradient DDP applies is the mean of the ranks' gradients."""
    torch.manual_seed(0)
    model = Zoo()
    optimizer = torch.optim.SGD(model.parameters(), lr=LEARNING_RATE)
    batches = [_rank_batches(rank) for rank in range(WORLD_SIZE)]
    records = []
    for step in range(STEPS):
        optimizer.zero_grad()
        losses = [nn.functional.cross_entropy(model(x), y) for x, y in (batches[r][step] for r in range(WORLD_SIZE))]
        (sum(losses) / WORLD_SIZE).backward()
        record = torch_runs.StepRecord(torch_runs.snapshot(model, "grad"), torch_runs.snapshot(model, "value"), {})
        optimizer.step()
        record.after = torch_runs.snapshot(model, "value")
        records.append(record)
    return records


@pytest.mark.slow
def test_ddp_rank_0_writes_the_all_reduced_gradient_as_one_run_and_every_rank_stops(tmp_path):
    run = tmp_path / "run"
    torch.multiprocessing.spawn(_ddp_worker, args=(str(run), _free_port()), nprocs=WORLD_SIZE, join=True)
    assert len([p for p in run.iterdir() if ".tfevents." in p.name]) == 1
    events = torch_runs.read_events(run)
    assert events[metadata.GRAD_NORM]["layers"] == tuple(ZOO_ROWS)
    expected = torch_runs.reference_stats(_reference_records(), rows_of(Zoo(), ZOO_ROWS))
    compared = {
        stat: {**entry, "steps": entry["steps"][:STEPS], "values": entry["values"][:STEPS]}
        for stat, entry in events.items()
    }
    torch_runs.assert_stats_match(compared, expected, range(STEPS))
    # The loss is rank 0's own, finite also at the step rank 1's loss was NaN.
    assert np.isfinite(events[metadata.LOSS]["values"]).all()
    # Both ranks stopped at the step whose all-reduced gradient was NaN; rank 0 wrote it.
    assert [(tmp_path / ("stopped-%d" % rank)).read_text() for rank in range(WORLD_SIZE)] == [str(STEPS)] * WORLD_SIZE
    assert events[metadata.NONFINITE]["steps"][-1] == STEPS
    assert (events[metadata.NONFINITE]["values"][-1] > 0).all()
