"""PyTorch test support: a training loop that keeps each step's gradients and weights, numpy references, and event reading."""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
from tensorboard.util import tensor_util

from tb_gradhealth import metadata

# The tests' tolerance against the numpy reference (float32 reductions in a
# different order).
RTOL = 1e-4
ATOL = 1e-6


@dataclasses.dataclass
class StepRecord:
    """What the training loop saw of one optimizer step: the gradients and weights it applied, numpy float64."""

    grads: dict[str, np.ndarray]  # parameter name -> gradient (absent: no gradient)
    before: dict[str, np.ndarray]
    after: dict[str, np.ndarray]
    loss: float | None = None


def snapshot(model: torch.nn.Module, what: str) -> dict[str, np.ndarray]:
    """{parameter name: copy of its gradient (`what="grad"`) or value} as float64, wrapper prefixes removed."""
    out = {}
    for name, param in model.named_parameters():
        name = name.replace("_orig_mod.", "").removeprefix("module.")
        tensor = param.grad if what == "grad" else param
        if tensor is not None:
            out[name] = tensor.detach().to_dense().double().cpu().numpy().copy()
    return out


def reference_stats(steps: Sequence[StepRecord], rows: Mapping[str, Sequence[str]]) -> dict[str, np.ndarray]:
    """Per-step, per-layer statistics in numpy: {stat: [n_steps, n_layers]} for rows {layer: parameter names}."""
    out = {stat: [] for stat in metadata.BUILTIN_STATS}
    for record in steps:
        values = {stat: [] for stat in metadata.BUILTIN_STATS}
        for names in rows.values():
            grads = [record.grads.get(name, np.zeros_like(record.before[name])).ravel() for name in names]
            grad = np.concatenate(grads)
            before = np.concatenate([record.before[name].ravel() for name in names])
            after = np.concatenate([record.after[name].ravel() for name in names])
            with np.errstate(invalid="ignore", over="ignore"):
                grad_norm = np.sqrt(np.sum(grad * grad))
                weight_norm = np.sqrt(np.sum(before * before))
                update = np.sqrt(np.sum((after - before) ** 2))
                values[metadata.GRAD_NORM].append(grad_norm)
                values[metadata.GRAD_NORM_MAX].append(grad_norm)
                values[metadata.GRAD_MAX_ABS].append(np.max(np.abs(grad)) if grad.size else 0.0)
                values[metadata.NONFINITE].append(np.sum(~np.isfinite(grad)))
                values[metadata.WEIGHT_NORM].append(weight_norm)
                values[metadata.UPDATE_RATIO].append(0.0 if update == 0 else update / weight_norm)
        for stat in out:
            out[stat].append(values[stat])
    return {stat: np.asarray(table, dtype=np.float64) for stat, table in out.items()}


def train(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: Sequence,
    loss_fn: Callable,
    *,
    monitor=None,
    before_step: Callable[[int], None] | None = None,
    step: Callable[[], None] | None = None,
    backward: Callable | None = None,
    micro_batches: int = 1,
) -> list[StepRecord]:
    """A plain training loop that notes, per optimizer step, the gradients and weights around `optimizer.step()`.

    Args:
      batches: `(inputs, targets)` pairs; `micro_batches` of them make one step.
      monitor: gets each micro-batch's loss through `record_loss`.
      before_step: called with the step's index after backward, before the
        gradients are noted (e.g. to put a NaN into one).
      step: replaces `optimizer.step()` (e.g. a GradScaler's step).
      backward: replaces `loss.backward()` (e.g. `scaler.scale(loss).backward()`).
    """
    records = []
    for index in range(len(batches) // micro_batches):
        optimizer.zero_grad(set_to_none=True)
        losses = []
        for inputs, targets in batches[index * micro_batches : (index + 1) * micro_batches]:
            loss = loss_fn(model(inputs), targets)
            losses.append(float(loss.detach()))
            if monitor is not None:
                monitor.record_loss(loss)
            (backward or torch.Tensor.backward)(loss)
        if before_step is not None:
            before_step(index)
        record = StepRecord(snapshot(model, "grad"), snapshot(model, "value"), {}, float(np.mean(losses)))
        (step or optimizer.step)()
        record.after = snapshot(model, "value")
        records.append(record)
    return records


def read_events(run_dir: str | os.PathLike) -> dict:
    """Reads a run directory's Gradient Health events with TensorBoard's loader, independently of the plugin's reader.

    Returns:
      {stat: {"steps": [...], "values": [n_steps, n_layers], "layers": (...), "content": decoded metadata JSON}},
      per layer set the first one written (a later set is under "<stat>/<set>").
    """
    found: dict = {}
    for path in sorted(pathlib.Path(run_dir).iterdir()):
        if ".tfevents." not in path.name:
            continue
        for event in EventFileLoader(str(path)).Load():
            for value in event.summary.value:
                if not value.tag.startswith(metadata.TAG_PREFIX):
                    continue
                key = value.tag[len(metadata.TAG_PREFIX) :]
                entry = found.setdefault(key, {"steps": [], "values": [], "content": None})
                if value.HasField("metadata") and entry["content"] is None:
                    entry["content"] = json.loads(value.metadata.plugin_data.content)
                entry["steps"].append(event.step)
                entry["values"].append(tensor_util.make_ndarray(value.tensor))
    for entry in found.values():
        order = np.argsort(entry["steps"], kind="stable")
        entry["steps"] = [entry["steps"][i] for i in order]
        entry["values"] = np.stack([entry["values"][i] for i in order])
        entry["layers"] = tuple(entry["content"]["layers"])
    return found


def assert_stats_match(
    events: dict, expected: Mapping[str, np.ndarray], steps: Sequence[int], stats: Sequence[str] | None = None
) -> None:
    """The events' statistics at `steps` equal the reference rows (relative tolerance `RTOL`, NaN equal to NaN)."""
    for stat in stats or metadata.BUILTIN_STATS:
        entry = events[stat]
        assert entry["steps"] == list(steps), stat
        np.testing.assert_allclose(entry["values"], expected[stat], rtol=RTOL, atol=ATOL, equal_nan=True, err_msg=stat)
