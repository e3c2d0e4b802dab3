"""PyTorch monitor overhead: step time with GradientHealthMonitor against no monitoring and the usual alternatives.

Three workloads on random data, on the CPU: a residual CNN with BatchNorm
(CIFAR-shaped, SGD with momentum), a small transformer encoder language
model (AdamW), an Embedding + LSTM classifier (Adam). Each is trained with
every configuration, each on its own copy of the model (same initial
weights):

* `none`: a plain training step (the baseline);
* `none_again`: the same on a second copy: the control, whose ratio to
  `none` is the measurement's own spread;
* `gh_every_step`: `GradientHealthMonitor(update_freq=1)`;
* `gh_every_100`: `GradientHealthMonitor(update_freq=100)`;
* `norm_item`: a per-parameter `p.grad.norm().item()` loop after
  `backward()`, what Lightning's `grad_norm` and most hand-written hooks do;
* `wandb_watch`: `wandb.watch(model, log="gradients", log_freq=1)` in
  offline mode, the run committed once per step (only when wandb is
  installed: `pip install -e '.[benchmark]'`).

The configurations run in blocks of `--block` steps, in an order rotated
per round; a configuration's ratio per round is its ms/step over `none`'s
in that round, and the report gives the mean ratio with a bootstrap 95%
interval over the rounds, for wall time and for the process's CPU time
(less sensitive to other jobs on a shared machine). It also times the
monitoring itself inside each step: the monitor's step hooks (between
hooks registered just before and just after its own) and the norm loop,
as a share of the plain step (`own_share`, wall and CPU).

    python -m benchmarks.torch_overhead --rounds 12
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import pathlib
import shutil
import tempfile
import time
from typing import Callable

import numpy as np
import torch
from torch import nn

from benchmarks import common
from tb_gradhealth.torch import GradientHealthMonitor

NONE = "none"
NONE_AGAIN = "none_again"
GH_EVERY_STEP = "gh_every_step"
GH_EVERY_100 = "gh_every_100"
NORM_ITEM = "norm_item"
WANDB_WATCH = "wandb_watch"
CONFIGS = (NONE, NONE_AGAIN, GH_EVERY_STEP, GH_EVERY_100, NORM_ITEM, WANDB_WATCH)
# The monitor's target at update_freq=1 on the CNN and the transformer.
TARGET = 1.03
TARGET_WORKLOADS = ("resnet_cnn", "transformer")
DATA_BATCHES = 8  # distinct batches each workload cycles through
WARMUP_STEPS = 3
BOOTSTRAP_SAMPLES = 2000
SEED = 1234


class BasicBlock(nn.Module):
    """conv-BN-ReLU-conv-BN plus the (projected) input, then ReLU."""

    def __init__(self, channels_in: int, channels_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels_in, channels_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels_out)
        self.conv2 = nn.Conv2d(channels_out, channels_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels_out)
        self.shortcut = nn.Sequential()
        if stride != 1 or channels_in != channels_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(channels_in, channels_out, 1, stride, bias=False), nn.BatchNorm2d(channels_out)
            )

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResidualCNN(nn.Module):
    """A small ResNet for 32x32 RGB images: a stem and three stages of two residual blocks."""

    def __init__(self, width: int = 16, classes: int = 10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        blocks, channels = [], width
        for stage, stride in enumerate((1, 2, 2)):
            out = width * 2**stage
            blocks += [BasicBlock(channels, out, stride), BasicBlock(out, out, 1)]
            channels = out
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Linear(channels, classes)

    def forward(self, x):
        return self.head(self.blocks(self.stem(x)).mean(dim=(2, 3)))


class TransformerLM(nn.Module):
    """A two-layer transformer encoder predicting each next token."""

    def __init__(self, vocab: int = 2000, width: int = 128, heads: int = 4, layers: int = 2, length: int = 64):
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.position = nn.Embedding(length, width)
        layer = nn.TransformerEncoderLayer(width, heads, 4 * width, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)
        self.out = nn.Linear(width, vocab)

    def forward(self, tokens):
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        mask = nn.Transformer.generate_square_subsequent_mask(tokens.shape[1], device=tokens.device)
        hidden = self.encoder(self.embed(tokens) + self.position(positions), mask=mask, is_causal=True)
        return self.out(self.norm(hidden))


class LSTMClassifier(nn.Module):
    """Embedding -> LSTM -> Linear on the last state."""

    def __init__(self, vocab: int = 2000, width: int = 64, hidden: int = 128, classes: int = 10):
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.lstm = nn.LSTM(width, hidden, batch_first=True)
        self.out = nn.Linear(hidden, classes)

    def forward(self, tokens):
        states, _ = self.lstm(self.embed(tokens))
        return self.out(states[:, -1])


class Workload:
    """A model factory, its optimizer, its data and its loss: one training step of a realistic size."""

    def __init__(self, name: str, build: Callable, optimizer: Callable, batches: Callable, loss: Callable):
        self.name = name
        self.build = build
        self.make_optimizer = optimizer
        self.make_batches = batches
        self.loss = loss


def _images(generator: torch.Generator, batch: int = 32):
    return [
        (torch.randn(batch, 3, 32, 32, generator=generator), torch.randint(0, 10, (batch,), generator=generator))
        for _ in range(DATA_BATCHES)
    ]


def _sequences(generator: torch.Generator, batch: int = 16, length: int = 64, vocab: int = 2000):
    return [(torch.randint(0, vocab, (batch, length), generator=generator),) * 2 for _ in range(DATA_BATCHES)]


def _labelled_sequences(generator: torch.Generator, batch: int = 32, length: int = 64, vocab: int = 2000):
    return [
        (
            torch.randint(0, vocab, (batch, length), generator=generator),
            torch.randint(0, 10, (batch,), generator=generator),
        )
        for _ in range(DATA_BATCHES)
    ]


def _next_token_loss(logits, tokens):
    return nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1))


WORKLOADS = {
    workload.name: workload
    for workload in (
        Workload(
            "resnet_cnn",
            ResidualCNN,
            lambda params: torch.optim.SGD(params, lr=0.05, momentum=0.9),
            _images,
            nn.functional.cross_entropy,
        ),
        Workload(
            "transformer",
            TransformerLM,
            lambda params: torch.optim.AdamW(params, lr=1e-3),
            _sequences,
            _next_token_loss,
        ),
        Workload(
            "lstm",
            LSTMClassifier,
            lambda params: torch.optim.Adam(params, lr=1e-3),
            _labelled_sequences,
            nn.functional.cross_entropy,
        ),
    )
}


def per_parameter_norms(model: nn.Module) -> dict[str, float]:
    """The usual hand-written gradient monitor: one norm and one `.item()` per parameter."""
    return {name: p.grad.norm().item() for name, p in model.named_parameters() if p.grad is not None}


class _Clock:
    """Wall and process CPU seconds spent between `start` and `stop` calls, summed."""

    def __init__(self):
        self.wall = self.cpu = 0.0
        self._started = None

    def start(self, *args) -> None:
        self._started = (time.perf_counter(), time.process_time())

    def stop(self, *args) -> None:
        wall, cpu = self._started
        self.wall += time.perf_counter() - wall
        self.cpu += time.process_time() - cpu

    def take(self) -> tuple[float, float]:
        taken, self.wall, self.cpu = (self.wall, self.cpu), 0.0, 0.0
        return taken


class Setup:
    """One configuration's model, optimizer and per-step extras, with a clock on the monitoring's own work."""

    def __init__(self, config: str, workload: Workload, log_dir: str, wandb_run=None):
        torch.manual_seed(SEED)
        self.config = config
        self.model = workload.build()
        self.optimizer = workload.make_optimizer(self.model.parameters())
        self.loss_fn = workload.loss
        self.monitor = None
        self.after_backward = None
        self.after_step = None
        self.own = _Clock()
        if config in (GH_EVERY_STEP, GH_EVERY_100):
            # Step hooks run in the order they were registered: these two
            # pairs frame the monitor's own.
            self.optimizer.register_step_pre_hook(self.own.start)
            self.optimizer.register_step_post_hook(self.own.start)
            self.monitor = GradientHealthMonitor(
                self.model, self.optimizer, log_dir, update_freq=1 if config == GH_EVERY_STEP else 100
            )
            self.optimizer.register_step_pre_hook(self.own.stop)
            self.optimizer.register_step_post_hook(self.own.stop)
        elif config == NORM_ITEM:
            self.after_backward = lambda: per_parameter_norms(self.model)
        elif config == WANDB_WATCH:
            wandb_run.watch(self.model, log="gradients", log_freq=1, idx=len(log_dir))
            self.after_step = lambda: wandb_run.log({})

    def step(self, batch) -> None:
        inputs, targets = batch
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.loss_fn(self.model(inputs), targets)
        if self.monitor is not None:
            self.monitor.record_loss(loss)
        loss.backward()
        if self.after_backward is not None:
            self.own.start()
            self.after_backward()
            self.own.stop()
        self.optimizer.step()
        if self.after_step is not None:
            self.after_step()

    def close(self) -> None:
        if self.monitor is not None:
            self.monitor.close()


def bootstrap_ratio(ratios: np.ndarray, rng: np.random.Generator) -> dict:
    means = rng.choice(ratios, (BOOTSTRAP_SAMPLES, len(ratios))).mean(axis=1)
    return {
        "ratio_mean": float(ratios.mean()),
        "ratio_ci95": [float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))],
        "ratio_median": float(np.median(ratios)),
    }


def measure_workload(workload: Workload, configs, rounds: int, block: int, log_root: str, wandb_run, log=print) -> dict:
    """ms/step of each configuration per round and its ratio to `none`."""
    generator = torch.Generator().manual_seed(SEED)
    batches = workload.make_batches(generator)
    setups = {}
    for config in configs:
        setup = Setup(config, workload, os.path.join(log_root, workload.name, config), wandb_run)
        for index in range(WARMUP_STEPS):
            setup.step(batches[index % len(batches)])
        setups[config] = setup
    kinds = ("wall", "cpu", "own_wall", "own_cpu")
    ms = {config: {kind: [] for kind in kinds} for config in configs}
    position = 0
    for index in range(rounds):
        shift = index % len(configs)
        for config in list(configs[shift:]) + list(configs[:shift]):
            setup = setups[config]
            setup.own.take()
            wall, cpu = time.perf_counter(), time.process_time()
            for _ in range(block):
                setup.step(batches[position % len(batches)])
                position += 1
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            own_wall, own_cpu = setup.own.take()
            for kind, seconds in zip(kinds, (wall, cpu, own_wall, own_cpu)):
                ms[config][kind].append(seconds / block * 1e3)
        log(
            "  %s round %d: %s" % (workload.name, index, ", ".join("%s %.1f" % (c, ms[c]["wall"][-1]) for c in configs))
        )
    for setup in setups.values():
        setup.close()
    rng = np.random.default_rng(SEED)
    summary = {}
    for config in configs:
        times = {kind: np.asarray(values) for kind, values in ms[config].items()}
        entry = {"step_ms_median": common.median(times["wall"]), "step_cpu_ms_median": common.median(times["cpu"])}
        for kind in ("wall", "cpu"):
            ratios = bootstrap_ratio(times[kind] / np.asarray(ms[NONE][kind]), rng)
            entry.update({"%s_%s" % (kind, key): value for key, value in ratios.items()})
            # The monitoring's own time per step over the plain step's, same round.
            own = bootstrap_ratio(times["own_" + kind] / np.asarray(ms[NONE][kind]), rng)
            entry["own_share_%s" % kind] = own["ratio_mean"]
            entry["own_share_%s_ci95" % kind] = own["ratio_ci95"]
        summary[config] = entry
    params = sum(p.numel() for p in setups[configs[0]].model.parameters())
    tensors = sum(1 for _ in setups[configs[0]].model.parameters())
    return {"workload": workload.name, "params": params, "tensors": tensors, "ms": ms, "summary": summary}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--workloads", default=",".join(WORKLOADS), help="comma-separated subset of %s" % list(WORKLOADS)
    )
    parser.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated subset of %s" % list(CONFIGS))
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--block", type=int, default=10, help="steps per configuration per round")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (default: torch's own choice)")
    parser.add_argument("--out-dir", default=str(common.OUT_DIR))
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    configs = [c for c in args.configs.split(",") if c]
    unknown = set(configs) - set(CONFIGS)
    if unknown or NONE not in configs:
        parser.error("configurations must include %r and come from %s" % (NONE, list(CONFIGS)))
    if WANDB_WATCH in configs and importlib.util.find_spec("wandb") is None:
        print("wandb is not installed: %s left out (pip install -e '.[benchmark]')" % WANDB_WATCH)
        configs.remove(WANDB_WATCH)
    results = {
        "machine": common.machine("benchmarks.torch_overhead", argv),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "args": vars(args),
        "workloads": [],
    }
    log_root = tempfile.mkdtemp(prefix="gh_torch_overhead_")
    wandb_run = None
    try:
        if WANDB_WATCH in configs:
            import wandb

            results["wandb"] = wandb.__version__
            wandb_run = wandb.init(mode="offline", dir=log_root, project="torch_overhead")
        for name in [w for w in args.workloads.split(",") if w]:
            print("workload %s: %d rounds of %d steps" % (name, args.rounds, args.block), flush=True)
            results["workloads"].append(
                measure_workload(WORKLOADS[name], configs, args.rounds, args.block, log_root, wandb_run)
            )
    finally:
        if wandb_run is not None:
            wandb_run.finish()
        shutil.rmtree(log_root, ignore_errors=True)
    path = common.write_results("torch_overhead", results, pathlib.Path(args.out_dir))
    _print_report(results)
    print("\nresults: %s" % path)
    return results


def _print_report(results: dict) -> None:
    for measured in results["workloads"]:
        print(
            "\n## %s (%d parameters in %d tensors)\n" % (measured["workload"], measured["params"], measured["tensors"])
        )
        rows = []
        for config, entry in measured["summary"].items():
            row = {
                "config": config,
                "step_ms": entry["step_ms_median"],
                "wall_ratio": "%.3f (%.3f-%.3f)" % (entry["wall_ratio_mean"], *entry["wall_ratio_ci95"]),
                "cpu_ratio": "%.3f (%.3f-%.3f)" % (entry["cpu_ratio_mean"], *entry["cpu_ratio_ci95"]),
            }
            if config in (GH_EVERY_STEP, GH_EVERY_100, NORM_ITEM):
                row["own_share"] = "%.4f wall, %.4f cpu" % (entry["own_share_wall"], entry["own_share_cpu"])
            if config == GH_EVERY_STEP and measured["workload"] in TARGET_WORKLOADS:
                met = entry["wall_ratio_mean"] <= TARGET
                row["target"] = "<= %.2fx: %s" % (TARGET, "met" if met else "MISSED")
            rows.append(row)
        common.print_table(rows, ["config", "step_ms", "wall_ratio", "cpu_ratio", "own_share", "target"])


if __name__ == "__main__":
    main()
