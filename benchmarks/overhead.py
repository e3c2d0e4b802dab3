"""Capture overhead: `model.fit` training time with GradientHealthCallback against no callback and every usual alternative.

Workloads (`benchmarks/workloads.py`): the notebook's MLP (3-4 ms steps,
the worst case: TensorFlow's fixed cost per op weighs most there), a big
MLP, and three realistic ones whose steps take 10-100 ms on 2 cores: a
residual CNN with BatchNormalization, a small transformer classifier and an
Embedding+LSTM. Configurations:

* `none`: no callback (the baseline);
* `none_again`: no callback either, on a second copy of the model: the
  noise control, whose ratio to `none` is the spread of the measurement;
* `gh_freq_1`, `gh_freq_10`, `gh_freq_100`: `GradientHealthCallback(update_freq=N)`;
* `gh_default`: `GradientHealthCallback()` with its defaults;
* `tensorboard_hist`: `keras.callbacks.TensorBoard(histogram_freq=1)`;
* `tape_every_step`: a typical hand-written callback that recomputes the
  gradients with `tf.GradientTape` on a batch after every step and writes
  per-variable norms with `tf.summary.scalar`;
* `debugger_curt_health`, `debugger_no_tensor`: TensorBoard Debugger V2
  (`tf.debugging.experimental.enable_dump_debug_info` in that
  `tensor_debug_mode`). It is global to the process, so each runs in a
  process of its own, against a `none` model of that process traced before
  the debugger was enabled.

In a process, each configuration has its own model (same architecture and
initial weights) traced by a warm-up `fit`; then the configurations are
timed in turn, repetition after repetition, in an order rotated per
repetition, with a fit of the baseline before the first and after each
one. A configuration's ratio is the median over repetitions of its
training time divided by the mean of the two baseline fits around it (a
load that drifts cancels), with the smallest and largest such ratio as its
interval. Bytes per step: what the
configuration wrote into its log directory, over every step it trained.

`--memory` measures instead the peak resident memory (VmHWM) of one `fit`
per configuration, each in a fresh process (peak RSS is per process).

    python -m benchmarks.overhead --reps 5
    python -m benchmarks.overhead --memory --models residual_cnn,transformer
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import tensorflow as tf

from benchmarks import common, workloads
from tb_gradhealth import GradientHealthCallback

DEFAULT_WARMUP_STEPS = 10  # traces every function a configuration uses

NONE = "none"
NONE_AGAIN = "none_again"
GH_FREQ_1 = "gh_freq_1"
GH_FREQ_10 = "gh_freq_10"
GH_FREQ_100 = "gh_freq_100"
GH_DEFAULT = "gh_default"
TENSORBOARD_HIST = "tensorboard_hist"
TAPE_EVERY_STEP = "tape_every_step"
DEBUGGER_CURT_HEALTH = "debugger_curt_health"
DEBUGGER_NO_TENSOR = "debugger_no_tensor"
IN_PROCESS_CONFIGS = (
    NONE,
    NONE_AGAIN,
    GH_FREQ_1,
    GH_FREQ_10,
    GH_FREQ_100,
    GH_DEFAULT,
    TENSORBOARD_HIST,
    TAPE_EVERY_STEP,
)
DEBUGGER_MODES = {DEBUGGER_CURT_HEALTH: "CURT_HEALTH", DEBUGGER_NO_TENSOR: "NO_TENSOR"}
CONFIGS = IN_PROCESS_CONFIGS + tuple(DEBUGGER_MODES)
GH_FREQS = {GH_FREQ_1: 1, GH_FREQ_10: 10, GH_FREQ_100: 100}
MEMORY_CONFIGS = (NONE, GH_FREQ_1, GH_DEFAULT)
KINDS = ("wall_s", "cpu_s", "train_s")  # what is timed per fit (see _fit)

# Targets on training time against no callback (CNN and transformer at
# update_freq 1 and 100; the notebook MLP with the defaults).
TARGETS = {
    ("residual_cnn", GH_FREQ_1): 1.03,
    ("residual_cnn", GH_FREQ_100): 1.01,
    ("transformer", GH_FREQ_1): 1.03,
    ("transformer", GH_FREQ_100): 1.01,
    ("baseline_mlp", GH_DEFAULT): 1.05,
}
MEMORY_TARGET = 1.05  # peak RSS of fit with the callback over without


def default_update_freq() -> int:
    """The callback's default `update_freq`, read from its signature."""
    return inspect.signature(GradientHealthCallback).parameters["update_freq"].default


class GradientTapeCallback(keras.callbacks.Callback):
    """The hand-written monitor many users write: after each step, recompute the gradients on a probe batch."""

    def __init__(self, log_dir: str, x_probe: np.ndarray, y_probe: np.ndarray):
        super().__init__()
        self._writer = tf.summary.create_file_writer(log_dir)
        self._x = tf.constant(x_probe)
        self._y = tf.constant(y_probe)

    def on_train_batch_end(self, batch, logs=None):
        loss_fn = keras.losses.get(self.model.loss)
        with tf.GradientTape() as tape:
            loss = loss_fn(self._y, self.model(self._x, training=True))
        variables = self.model.trainable_variables
        grads = tape.gradient(loss, variables)
        step = int(self.model.optimizer.iterations.numpy())
        with self._writer.as_default(step=step):
            for variable, grad in zip(variables, grads):
                tf.summary.scalar("grad_norm/" + variable.path, tf.norm(grad))

    def on_train_end(self, logs=None):
        self._writer.flush()


def make_callbacks(config: str, log_dir: str, x: np.ndarray, y: np.ndarray, batch_size: int) -> list:
    if config in (NONE, NONE_AGAIN) or config in DEBUGGER_MODES:
        return []
    if config in GH_FREQS:
        return [GradientHealthCallback(log_dir, update_freq=GH_FREQS[config])]
    if config == GH_DEFAULT:
        return [GradientHealthCallback(log_dir)]
    if config == TENSORBOARD_HIST:
        return [keras.callbacks.TensorBoard(log_dir, histogram_freq=1)]
    if config == TAPE_EVERY_STEP:
        return [GradientTapeCallback(log_dir, x[:batch_size], y[:batch_size])]
    raise ValueError("unknown configuration %r" % config)


class _TrainEndClock(keras.callbacks.Callback):
    """Notes when the last callback's `on_train_end` ran (it is added last, after ours)."""

    def on_train_end(self, logs=None):
        self.end = time.perf_counter()


def _fit(model, x, y, batch_size: int, callbacks) -> tuple[float, float, float]:
    """Returns (wall seconds, process CPU seconds, training seconds) of one `fit` epoch.

    Training seconds run from the call until every callback's `on_train_end`
    is done (ours writes its last rows there); after that `fit` sometimes
    takes much longer to return, with or without any callback (Keras and
    tf.data tearing the epoch down). The wall time includes that, the
    training time does not.
    """
    clock = _TrainEndClock()
    wall, cpu = time.perf_counter(), time.process_time()
    model.fit(x, y, batch_size=batch_size, epochs=1, verbose=0, shuffle=False, callbacks=[*callbacks, clock])
    end = time.perf_counter()
    return end - wall, time.process_time() - cpu, clock.end - wall


def _directory_bytes(path: str) -> int:
    total = 0
    for root, _, files in os.walk(path):
        total += sum(os.path.getsize(os.path.join(root, name)) for name in files)
    return total


def _enable_debugger(mode: str, dump_root: str) -> None:
    tf.debugging.experimental.enable_dump_debug_info(dump_root, tensor_debug_mode=mode, circular_buffer_size=-1)


@contextlib.contextmanager
def _debugger_paused():
    """Removes the enabled debugger's op callback for the block, so a model traced without it runs as without it.

    Disabling and enabling again would start a new debugger run (a new id)
    that the graph instrumented under the first one does not write to; the
    callback is what makes the debugger slow down every other model of the
    process (it records each eager op and function call on the host).
    """
    from tensorflow.python.debug.lib import dumping_callback  # the debugger's state; no public handle
    from tensorflow.python.framework import op_callbacks

    callback = dumping_callback._state.dumping_callback.callback
    op_callbacks.remove_op_callback(callback)
    try:
        yield
    finally:
        op_callbacks.add_op_callback(callback)


def time_configs(
    name: str, steps: int, configs, reps: int, jit_compile, log_root: str, warmup: int, debugger: str | None = None
):
    """Times each configuration on its own copy of workload `name` in this process.

    Args:
      debugger: a key of `DEBUGGER_MODES`: the process's global debugger is
        enabled (into the configuration's log directory) after the `none`
        model is traced and before that configuration's model is, and
        paused while the other configurations train.

    Returns:
      {config: {"wall_s": [...], "cpu_s": [...], "train_s": [...], "baseline_wall_s": [...], ...,
      "bytes": int, "steps": int}} (per fit, its times and the mean of the baseline fits around it;
      the baseline's own fits are their own baseline) and the model's parameter count.
    """
    workload = workloads.WORKLOADS[name]
    x, y = workloads.data(name, steps)
    warm = warmup * workload.batch_size
    setups = {}
    for config in configs:
        log_dir = os.path.join(log_root, name, config)
        os.makedirs(log_dir, exist_ok=True)
        if config == debugger:
            _enable_debugger(DEBUGGER_MODES[config], log_dir)
        model = workloads.compiled(name, jit_compile)
        callbacks = make_callbacks(config, log_dir, x, y, workload.batch_size)
        _fit(model, x[:warm], y[:warm], workload.batch_size, callbacks)
        setups[config] = (model, callbacks, log_dir)
    times = {config: {kind: [] for kind in KINDS + tuple("baseline_" + k for k in KINDS)} for config in configs}
    others = [config for config in configs if config != NONE]
    for rep in range(reps):
        # Each configuration trains between two fits of the baseline and is
        # compared with their mean, which cancels a load that drifts.
        shift = rep % max(1, len(others))
        previous = _timed_fit(setups, NONE, x, y, workload.batch_size, debugger)
        _append(times[NONE], previous, previous)
        for config in others[shift:] + others[:shift]:
            measured = _timed_fit(setups, config, x, y, workload.batch_size, debugger)
            following = _timed_fit(setups, NONE, x, y, workload.batch_size, debugger)
            _append(times[config], measured, {kind: (previous[kind] + following[kind]) / 2 for kind in KINDS})
            _append(times[NONE], following, following)
            previous = following
        print(
            "  %s rep %d: %s"
            % (name, rep, ", ".join("%s %.2fs" % (c, times[c]["train_s"][-1]) for c in configs if times[c]["train_s"])),
            flush=True,
        )
    if debugger is not None:
        tf.debugging.experimental.disable_dump_debug_info()
    for config in configs:
        times[config]["bytes"] = _directory_bytes(setups[config][2])
        times[config]["steps"] = warmup + len(times[config]["train_s"]) * steps
    return times, int(setups[configs[0]][0].count_params())


def _timed_fit(setups: dict, config: str, x, y, batch_size: int, debugger: str | None) -> dict:
    model, callbacks, _ = setups[config]
    with _debugger_paused() if debugger is not None and config != debugger else contextlib.nullcontext():
        wall, cpu, train = _fit(model, x, y, batch_size, callbacks)
    return {"wall_s": wall, "cpu_s": cpu, "train_s": train}


def _append(measured: dict, fit_times: dict, baseline: dict) -> None:
    for kind in KINDS:
        measured[kind].append(fit_times[kind])
        measured["baseline_" + kind].append(baseline[kind])


def _debugger_in_subprocess(name: str, config: str, steps: int, reps: int, jit_compile: str, warmup: int) -> dict:
    """Runs `time_configs` with `none` and one debugger configuration in a fresh process."""
    with tempfile.TemporaryDirectory(prefix="gh_overhead_debugger_") as out:
        result_path = os.path.join(out, "result.json")
        command = [
            sys.executable,
            "-m",
            "benchmarks.overhead",
            "--debugger-child",
            config,
            "--models",
            name,
            "--steps",
            str(steps),
            "--reps",
            str(reps),
            "--jit-compile",
            jit_compile,
            "--warmup-steps",
            str(warmup),
            "--child-result",
            result_path,
        ]
        subprocess.run(command, check=True, cwd=str(common.REPO))
        return json.loads(pathlib.Path(result_path).read_text())


def summarize(times: dict) -> dict:
    """Per configuration: medians, and ratios to the baseline fits around each fit (median and min-max)."""
    summary = {}
    for config, measured in times.items():
        entry = {
            "train_s_median": common.median(measured["train_s"]),
            "cpu_s_median": common.median(measured["cpu_s"]),
            "bytes_per_step": measured["bytes"] / max(1, measured["steps"]),
        }
        for kind in KINDS:
            paired = np.asarray(measured[kind]) / np.asarray(measured["baseline_" + kind])
            entry["%s_ratio" % kind.split("_")[0]] = common.median(paired)
            entry["%s_ratio_min_max" % kind.split("_")[0]] = [float(paired.min()), float(paired.max())]
        summary[config] = entry
    return summary


def measure_workload(
    name: str, steps: int, configs, reps: int, jit_compile: str, log_root: str, warmup: int = DEFAULT_WARMUP_STEPS
) -> dict:
    """Times the in-process configurations together, each debugger configuration in its own process."""
    jit = {"auto": "auto", "true": True, "false": False}[jit_compile]
    in_process = [c for c in configs if c in IN_PROCESS_CONFIGS]
    if NONE not in in_process:
        in_process.insert(0, NONE)
    times, params = time_configs(name, steps, in_process, reps, jit, log_root, warmup)
    summary = summarize(times)
    debugger_runs = {}
    for config in (c for c in configs if c in DEBUGGER_MODES):
        child = _debugger_in_subprocess(name, config, steps, reps, jit_compile, warmup)
        debugger_runs[config] = child
        summary[config] = summarize(child["times"])[config]
    return {
        "model": name,
        "steps_per_fit": steps,
        "step_ms": common.median(times[NONE]["train_s"]) / steps * 1e3,
        "params": params,
        "default_update_freq": default_update_freq(),
        "times": times,
        "debugger_runs": debugger_runs,
        "summary": summary,
    }


# ------------------------------------------------------------ memory


def _peak_rss_child(name: str, config: str, steps: int, result_path: str) -> None:
    """In a fresh process: one warm-up and one timed `fit` of `config`; writes the peak RSS."""
    workload = workloads.WORKLOADS[name]
    x, y = workloads.data(name, steps)
    with tempfile.TemporaryDirectory(prefix="gh_overhead_memory_") as log_dir:
        model = workloads.compiled(name)
        callbacks = make_callbacks(config, log_dir, x, y, workload.batch_size)
        before = common.rss_mib([os.getpid()])
        _fit(model, x, y, workload.batch_size, callbacks)
    peak = common.peak_rss_mib([os.getpid()])[os.getpid()]
    pathlib.Path(result_path).write_text(json.dumps({"peak_rss_mib": peak, "rss_before_fit_mib": before}))


def measure_memory(name: str, steps: int, configs, reps: int) -> dict:
    """Peak RSS of one `fit` per configuration, each in its own process, `reps` processes per configuration."""
    peaks = {config: [] for config in configs}
    growth = {config: [] for config in configs}
    with tempfile.TemporaryDirectory(prefix="gh_overhead_memory_") as out:
        result_path = os.path.join(out, "result.json")
        for _ in range(reps):
            for config in configs:
                command = [sys.executable, "-m", "benchmarks.overhead", "--memory-child", config, "--models", name]
                command += ["--steps", str(steps), "--child-result", result_path]
                subprocess.run(command, check=True, cwd=str(common.REPO))
                child = json.loads(pathlib.Path(result_path).read_text())
                peaks[config].append(child["peak_rss_mib"])
                growth[config].append(child["peak_rss_mib"] - child["rss_before_fit_mib"])
    summary = {
        config: {
            "peak_rss_mib_median": common.median(values),
            "ratio": common.median(values) / common.median(peaks[NONE]),
            # What fit itself added to the process (TensorFlow and the data
            # were there before): the peak over the resident memory before fit.
            "fit_growth_mib_median": common.median(growth[config]),
        }
        for config, values in peaks.items()
    }
    return {"model": name, "steps_per_fit": steps, "peak_rss_mib": peaks, "fit_growth_mib": growth, "summary": summary}


# ------------------------------------------------------------ command line


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--models",
        default=",".join(workloads.WORKLOADS),
        help="comma-separated subset of %s" % list(workloads.WORKLOADS),
    )
    parser.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated subset of %s" % list(CONFIGS))
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--steps", type=int, default=None, help="steps per fit (default: each workload's own)")
    parser.add_argument("--jit-compile", default="auto", choices=["auto", "true", "false"])
    parser.add_argument("--warmup-steps", type=int, default=DEFAULT_WARMUP_STEPS, help="steps of the warm-up fit")
    parser.add_argument("--memory", action="store_true", help="measure peak RSS per configuration instead of time")
    parser.add_argument("--out-dir", default=str(common.OUT_DIR))
    parser.add_argument("--debugger-child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--child-result", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    names = [m for m in args.models.split(",") if m]
    configs = [c for c in args.configs.split(",") if c]
    unknown = (set(configs) - set(CONFIGS)) | (set(names) - set(workloads.WORKLOADS))
    if unknown:
        parser.error("unknown models or configurations %s" % sorted(unknown))
    if args.debugger_child or args.memory_child:
        return _child(args, names[0])
    results = {"machine": common.machine("benchmarks.overhead", argv), "args": vars(args), "models": []}
    path = common.results_path("overhead_memory" if args.memory else "overhead", pathlib.Path(args.out_dir))
    for name in names:
        steps = args.steps or workloads.WORKLOADS[name].default_steps
        if args.memory:
            memory_configs = [c for c in configs if c in MEMORY_CONFIGS] or list(MEMORY_CONFIGS)
            if NONE not in memory_configs:
                memory_configs.insert(0, NONE)
            print(
                "model %s: peak RSS of one fit of %d steps, %d processes per configuration" % (name, steps, args.reps)
            )
            results["models"].append(measure_memory(name, steps, memory_configs, args.reps))
            common.write_results("overhead_memory", results, path=path)
            continue
        print("model %s: %d steps per fit, %d repetitions" % (name, steps, args.reps), flush=True)
        log_root = tempfile.mkdtemp(prefix="gh_overhead_")
        try:
            results["models"].append(
                measure_workload(name, steps, configs, args.reps, args.jit_compile, log_root, args.warmup_steps)
            )
        finally:
            shutil.rmtree(log_root, ignore_errors=True)
        # Written after each workload, so a long run interrupted keeps what it measured.
        common.write_results("overhead", results, path=path)
    (_print_memory_report if args.memory else _print_report)(results)
    print("\nresults: %s" % path)
    return results


def _child(args, name: str) -> dict:
    steps = args.steps or workloads.WORKLOADS[name].default_steps
    if args.memory_child:
        _peak_rss_child(name, args.memory_child, steps, args.child_result)
        return {}
    jit = {"auto": "auto", "true": True, "false": False}[args.jit_compile]
    with tempfile.TemporaryDirectory(prefix="gh_overhead_child_") as log_root:
        times, params = time_configs(
            name, steps, [NONE, args.debugger_child], args.reps, jit, log_root, args.warmup_steps, args.debugger_child
        )
    result = {"times": times, "params": params}
    pathlib.Path(args.child_result).write_text(json.dumps(result))
    return result


def _interval(entry: dict) -> str:
    low, high = entry["train_ratio_min_max"]
    return "%.2f-%.2f" % (low, high)


def _print_report(results: dict) -> None:
    machine = results["machine"]
    print(
        "\n%s, %s, %d cores, load average %.2f at start, %.2f at end"
        % (
            machine["date"],
            machine["git_commit"],
            machine["nproc"],
            machine["load_average"][0],
            machine["load_average_end"][0],
        )
    )
    for measured in results["models"]:
        print(
            "\n## %s (%d parameters, %d steps per fit, %.1f ms per step)\n"
            % (measured["model"], measured["params"], measured["steps_per_fit"], measured["step_ms"])
        )
        rows = []
        for config, entry in measured["summary"].items():
            row = {
                "config": config,
                "train_ratio": entry["train_ratio"],
                "interval": _interval(entry),
                "cpu_ratio": entry["cpu_ratio"],
                "bytes_per_step": round(entry["bytes_per_step"]),
            }
            target = TARGETS.get((measured["model"], config))
            if target is not None:
                row["target"] = "<= %.2fx: %s" % (target, "met" if entry["train_ratio"] <= target else "MISSED")
            rows.append(row)
        common.print_table(rows, ["config", "train_ratio", "interval", "cpu_ratio", "bytes_per_step", "target"])
        debuggers = {c: e["train_ratio"] for c, e in measured["summary"].items() if c in DEBUGGER_MODES}
        if debuggers:
            cheapest = min(debuggers, key=debuggers.get)
            for config in (c for c in (GH_FREQ_1, GH_DEFAULT) if c in measured["summary"]):
                ours = measured["summary"][config]["train_ratio"]
                print(
                    "* %s %.3fx against Debugger V2's cheapest mode (%s) %.3fx: %s"
                    % (
                        config,
                        ours,
                        cheapest,
                        debuggers[cheapest],
                        "below" if ours < debuggers[cheapest] else "NOT below",
                    )
                )


def _print_memory_report(results: dict) -> None:
    for measured in results["models"]:
        print("\n## %s: peak RSS of one fit (%d steps)\n" % (measured["model"], measured["steps_per_fit"]))
        rows = [
            {
                "config": config,
                "peak_rss_mib": entry["peak_rss_mib_median"],
                "ratio": entry["ratio"],
                "fit_growth_mib": entry["fit_growth_mib_median"],
                "target": "<= %.2fx: %s" % (MEMORY_TARGET, "met" if entry["ratio"] <= MEMORY_TARGET else "MISSED"),
            }
            for config, entry in measured["summary"].items()
        ]
        common.print_table(rows, ["config", "peak_rss_mib", "ratio", "fit_growth_mib", "target"])


if __name__ == "__main__":
    main()
