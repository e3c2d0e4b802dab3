"""Trains the demo models in PyTorch, each run next to its Keras twin, with the Gradient Health monitor."""

from __future__ import annotations

import os
import pathlib
import time
from collections.abc import Sequence
from typing import Callable

import numpy as np
import torch
from torch import nn
from torch.utils.tensorboard import SummaryWriter

from demo import data as demo_data
from demo import models_torch
from demo.train import BATCH_SIZE, SEED, VALIDATION_SPLIT, RunResult, _clear_run_dir, run_name
from tb_gradhealth.torch import GradientHealthMonitor

# Keras' "sgd": plain SGD at this rate.
LEARNING_RATE = 0.01
# `<model>-torch` next to the Keras run `<model>`.
RUN_SUFFIX = "-torch"
# The demo's models are too small for intra-op threads to pay: a step's
# operations are shorter than handing them to a second thread, and on a
# busy machine each hand-off waits for that thread to be scheduled.
TORCH_THREADS = 1


def torch_run_name(model: str, dataset: str) -> str:
    """The PyTorch run's folder: the Keras run's name with `-torch` after the model's name."""
    return run_name(model + RUN_SUFFIX, dataset)


def prepare(images: np.ndarray, labels: np.ndarray, scale: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """The Keras demo's preprocessing: inputs in [0, 1], one-hot targets, both times `scale`."""
    x = torch.from_numpy(images.astype(np.float32) / 255.0)
    y = torch.from_numpy(np.eye(demo_data.NUM_CLASSES, dtype=np.float32)[labels])
    return x * scale, y * scale


def _loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Keras' categorical cross-entropy on a softmax output, value and gradient.

    Keras computes it from the softmax's logits with TensorFlow's
    `softmax_cross_entropy_with_logits`: the value is the batch mean of
    -sum(targets * log_softmax(logits)), and the gradient TensorFlow gives is
    softmax(logits) - targets, the gradient of that value only for targets
    that sum to 1. The exploding run's targets sum to 10; there the true
    gradient (what `nn.functional.cross_entropy` gives) is
    10 * softmax(logits) - targets. The twin trains on Keras' gradient.
    """
    value = -(targets * torch.log_softmax(logits, dim=1)).sum(dim=1)
    # logsumexp(z) - targets . z differentiates as softmax(z) - targets.
    keras_gradient = torch.logsumexp(logits, dim=1) - (targets * logits).sum(dim=1)
    return (keras_gradient + (value - keras_gradient).detach()).mean()


def _evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """(mean loss, accuracy) over `x` in batches, as Keras' validation does."""
    model.eval()
    total, correct = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(x), BATCH_SIZE):
            logits = model(x[start : start + BATCH_SIZE])
            targets = y[start : start + BATCH_SIZE]
            total += float(_loss(logits, targets)) * len(targets)
            correct += int((logits.argmax(1) == targets.argmax(1)).sum())
    model.train()
    return total / max(len(x), 1), correct / max(len(x), 1)


def train_one(
    spec,
    dataset: demo_data.Dataset,
    logdir: str | os.PathLike,
    epochs: int,
    seed: int = SEED,
    log: Callable[[str], None] = print,
) -> RunResult:
    """Trains one model as the Keras demo does (SGD, batch 32, the last 10% for validation) into `<logdir>/<run>`."""
    started = time.time()
    name = torch_run_name(spec.name, dataset.name)
    path = pathlib.Path(logdir) / name
    _clear_run_dir(path, log)
    torch.manual_seed(seed)
    model = spec.build()
    optimizer = torch.optim.SGD(model.parameters(), lr=LEARNING_RATE)
    x, y = prepare(dataset.x_train, dataset.y_train, spec.scale)
    split = int(np.floor(len(x) * (1.0 - VALIDATION_SPLIT)))
    x_train, y_train, x_val, y_val = x[:split], y[:split], x[split:], y[split:]
    writers = {part: SummaryWriter(str(path / part)) for part in ("train", "validation")}
    writers["train"].add_text(
        "demo/about",
        "**%s**: %s, in PyTorch.\n\nData: %s; inputs and targets x%g. Epochs: %d, seed %d, batch %d, SGD."
        % (name, spec.summary, dataset.describe(), spec.scale, epochs, seed, BATCH_SIZE),
        0,
    )
    generator = torch.Generator().manual_seed(seed)
    history: dict[str, list[float]] = {"loss": [], "accuracy": [], "val_loss": [], "val_accuracy": []}
    threads = torch.get_num_threads()
    torch.set_num_threads(TORCH_THREADS)
    with GradientHealthMonitor(model, optimizer, str(path / "train")) as monitor:
        for epoch in range(epochs):
            order = torch.randperm(len(x_train), generator=generator)
            losses, correct = [], torch.zeros((), dtype=torch.int64)
            for start in range(0, len(order), BATCH_SIZE):
                batch = order[start : start + BATCH_SIZE]
                optimizer.zero_grad()
                logits = model(x_train[batch])
                loss = _loss(logits, y_train[batch])
                monitor.record_loss(loss)
                loss.backward()
                optimizer.step()
                losses.append(loss.detach())
                correct += (logits.argmax(1) == y_train[batch].argmax(1)).sum()
            history["loss"].append(float(torch.stack(losses).mean()))
            history["accuracy"].append(int(correct) / len(x_train))
            val_loss, val_accuracy = _evaluate(model, x_val, y_val)
            history["val_loss"].append(val_loss)
            history["val_accuracy"].append(val_accuracy)
            for part, prefix in (("train", ""), ("validation", "val_")):
                writers[part].add_scalar("epoch_loss", history[prefix + "loss"][-1], epoch)
                writers[part].add_scalar("epoch_accuracy", history[prefix + "accuracy"][-1], epoch)
            log("  epoch %d/%d: loss %.4g, val_loss %.4g" % (epoch + 1, epochs, history["loss"][-1], val_loss))
        steps = monitor.next_step
    torch.set_num_threads(threads)
    for writer in writers.values():
        writer.close()
    return RunResult(
        run=name,
        model=spec.name,
        path=str(path),
        dataset=dataset.name,
        epochs=epochs,
        steps=steps,
        seconds=time.time() - started,
        history=history,
    )


def run_all(
    logdir: str | os.PathLike,
    epochs: int,
    models: Sequence[str],
    loaded: demo_data.Dataset,
    seed: int = SEED,
    log: Callable[[str], None] = print,
) -> list[RunResult]:
    """Trains each named model in PyTorch into `<logdir>/<model>-torch` on the already loaded data."""
    results = []
    for index, name in enumerate(models, start=1):
        spec = models_torch.SPECS[name]
        log("[%d/%d] %s (PyTorch): %s (%s, %d epochs)" % (index, len(models), name, spec.summary, loaded.title, epochs))
        results.append(train_one(spec, loaded, logdir, epochs, seed=seed, log=log))
        log("[%d/%d] %s (PyTorch) done in %.1f s" % (index, len(models), name, results[-1].seconds))
    return results
