"""Where a train step's time goes: paired step times and TensorFlow's per-op profile, with and without GradientHealthCallback.

`overhead.py` times whole `fit` calls; this script looks inside one step.
One model, one input pipeline, four train functions of that same model:

* `plain`: Keras's own train step (the baseline);
* `plain_again`: the same step traced a second time, a control: its ratio
  to `plain` is the measurement's own spread on this machine;
* `unlogged`: the step our callback runs between logged steps
  (`update_freq > 1`);
* `logged`: the step it runs on logged steps (every step at `update_freq=1`).

Step times: the functions are called directly (no `fit`, no callbacks) in
blocks of `--block` steps, alternating in an order rotated per round; a
function's ratio per round is its ms/step over `plain`'s in that round, and
the report gives the mean ratio with a bootstrap 95% interval.

Profile: `tf.profiler` records `--profile-steps` steps of each function; the
ops our callback adds are those under its name scope
(`recorder.GRAPH_SCOPE`). Reported per step: the time spent in the model's
ops and in ours, the number of closures TensorFlow's executor handed to its
thread pool (`ExecutorState::Process`; on a small model each costs about as
much as a small op), and our costliest ops.

    python -m benchmarks.profile_step --model baseline_mlp
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import glob
import os
import pathlib
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import tensorflow as tf

from benchmarks import common, workloads
from tb_gradhealth import GradientHealthCallback
from tb_gradhealth.capture.keras_hooks import ModelHooks
from tb_gradhealth.capture.recorder import GRAPH_SCOPE, LayerSetRecorder

PLAIN = "plain"
PLAIN_AGAIN = "plain_again"
UNLOGGED = "unlogged"
LOGGED = "logged"
FUNCTIONS = (PLAIN, PLAIN_AGAIN, UNLOGGED, LOGGED)
# Any update_freq > 1 gives the callback its two train functions.
UPDATE_FREQ = 100
DATA_STEPS = 100  # distinct batches the pipeline repeats
WARMUP_CALLS = 20
BOOTSTRAP_SAMPLES = 2000
TOP_OPS = 8
# Profiler events of the executor: one per closure run on its thread pool.
DISPATCH_EVENT = "ExecutorState::Process"
_PS_PER_US = 1e6


def _branch_graphs(op):
    """The graphs of a `tf.cond`'s two branches (op `If` / `StatelessIf`), or none."""
    return [graph for graph in (getattr(op, "_true_graph", None), getattr(op, "_false_graph", None)) if graph]


def _op_types(ops) -> collections.Counter:
    """Op types of `ops` and of the ops inside their `tf.cond` branches (prefixed `cond/`)."""
    types = collections.Counter()
    for op in ops:
        types[op.type] += 1
        for graph in _branch_graphs(op):
            types.update("cond/" + t for t in _op_types(graph.get_operations()).elements())
    return types


@contextlib.contextmanager
def counting_recording_ops(counts: list):
    """While tracing: appends to `counts` the op types each recorded step adds to the traced graph.

    Counted are the ops `LayerSetRecorder.apply` creates around the
    optimizer's own update (not those of the update), and the ops inside the
    branches of its `tf.cond`s; unlike times, they do not depend on the
    machine's load.
    """
    original = LayerSetRecorder.apply

    def apply(self, optimizer, apply_fn, *args, **kwargs):
        graph = tf.compat.v1.get_default_graph()
        update_ops = []

        def counted_update(*update_args):
            start = len(graph.get_operations())
            result = apply_fn(*update_args)
            update_ops.extend(graph.get_operations()[start:])
            return result

        start = len(graph.get_operations())
        result = original(self, optimizer, counted_update, *args, **kwargs)
        update = set(update_ops)
        counts.append(_op_types(op for op in graph.get_operations()[start:] if op not in update))
        return result

    LayerSetRecorder.apply = apply
    try:
        yield
    finally:
        LayerSetRecorder.apply = original


def train_functions(model_name: str, log_dir: str, op_counts: dict | None = None):
    """Returns (iterator, {function name: train function}) of one compiled model.

    Args:
      op_counts: filled with {function name: op types the recording adds to one step} (see `counting_recording_ops`).
    """
    batch_size = workloads.WORKLOADS[model_name].batch_size
    x, y = workloads.data(model_name, DATA_STEPS)
    iterator = iter(tf.data.Dataset.from_tensor_slices((x, y)).batch(batch_size).repeat().prefetch(4))
    model = workloads.compiled(model_name)
    model.fit(x[: 2 * batch_size], y[: 2 * batch_size], batch_size=batch_size, verbose=0)
    functions = {PLAIN: model.train_function}
    model.make_train_function(force=True)
    functions[PLAIN_AGAIN] = model.train_function
    callback = GradientHealthCallback(log_dir, update_freq=UPDATE_FREQ)
    callback.set_model(model)
    callback.on_train_begin()
    # The two functions the callback picks from per step (on_train_batch_begin);
    # each is traced by its first call.
    hooks = ModelHooks.of(model)
    for name, logged in ((UNLOGGED, False), (LOGGED, True)):
        functions[name] = hooks.recording_function(logged)
        counts = []
        with counting_recording_ops(counts):
            functions[name](iterator)
        if op_counts is not None:
            op_counts[name] = dict(sorted(sum(counts, collections.Counter()).items()))
    callback.on_train_end()
    for function in functions.values():
        for _ in range(WARMUP_CALLS):
            function(iterator)
    return iterator, functions


def paired_step_times(iterator, functions: dict, rounds: int, block: int, seed: int = 0, baseline: str = PLAIN) -> dict:
    """ms/step of each function per round, and its ratio to `baseline` (mean, 95% bootstrap interval, median)."""
    names = list(functions)
    ms = {name: [] for name in names}
    for index in range(rounds):
        shift = index % len(names)
        for name in names[shift:] + names[:shift]:
            function = functions[name]
            start = time.perf_counter()
            for _ in range(block):
                function(iterator)
            ms[name].append((time.perf_counter() - start) / block * 1e3)
    rng = np.random.default_rng(seed)
    summary = {}
    for name in names:
        ratios = np.asarray(ms[name]) / np.asarray(ms[baseline])
        means = rng.choice(ratios, (BOOTSTRAP_SAMPLES, len(ratios))).mean(axis=1)
        summary[name] = {
            "ms_per_step_median": common.median(ms[name]),
            "ratio_mean": float(ratios.mean()),
            "ratio_ci95": [common.percentile(means, 2.5), common.percentile(means, 97.5)],
            "ratio_median": common.median(ratios),
        }
    return {"ms_per_step": ms, "summary": summary}


def _is_op_event(name: str) -> bool:
    # Kernel events are "<node name>:<op type>"; the executor's, the eager
    # runtime's and tf.data's own events are "A::B" or "A: B".
    return ":" in name and "::" not in name and ": " not in name


def _is_capture_op(name: str) -> bool:
    node = name.rsplit(":", 1)[0]
    return node.startswith(GRAPH_SCOPE + "/") or ("/%s/" % GRAPH_SCOPE) in node


def profile_ops(iterator, function, steps: int) -> dict:
    """Per-step op times of `steps` calls of `function`, from TensorFlow's profiler."""
    from tensorflow.tsl.profiler.protobuf import xplane_pb2  # only needed here

    with tempfile.TemporaryDirectory(prefix="gh_profile_") as log_dir:
        tf.profiler.experimental.start(log_dir)
        try:
            for _ in range(steps):
                function(iterator)
        finally:
            tf.profiler.experimental.stop()
        (path,) = glob.glob(os.path.join(log_dir, "**", "*.xplane.pb"), recursive=True)
        space = xplane_pb2.XSpace.FromString(pathlib.Path(path).read_bytes())
    op_us = collections.Counter()
    dispatches = 0
    for plane in space.planes:
        names = {key: meta.name for key, meta in plane.event_metadata.items()}
        for line in plane.lines:
            for event in line.events:
                name = names.get(event.metadata_id, "")
                if name == DISPATCH_EVENT:
                    dispatches += 1
                elif _is_op_event(name):
                    op_us[name] += event.duration_ps / _PS_PER_US / steps
    capture = {name: us for name, us in op_us.items() if _is_capture_op(name)}
    return {
        "model_op_us": sum(us for name, us in op_us.items() if name not in capture),
        "capture_op_us": sum(capture.values()),
        "capture_ops": len(capture),
        "dispatches_per_step": dispatches / steps,
        # Which kernels ours are, by type and count: unlike their times, this
        # does not depend on the machine's load.
        "capture_op_types": dict(sorted(collections.Counter(name.rsplit(":", 1)[-1] for name in capture).items())),
        "top_capture_ops": [
            [name.rsplit("/", 1)[-1], round(us, 1)] for name, us in collections.Counter(capture).most_common(TOP_OPS)
        ],
    }


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="baseline_mlp", choices=list(workloads.WORKLOADS))
    parser.add_argument("--rounds", type=int, default=40, help="rounds of alternating blocks")
    parser.add_argument("--block", type=int, default=25, help="steps per function per round")
    parser.add_argument("--profile-steps", type=int, default=40, help="profiled steps per function")
    parser.add_argument("--out-dir", default=str(common.OUT_DIR))
    args = parser.parse_args(argv)
    results = {"machine": common.machine("benchmarks.profile_step", argv), "args": vars(args)}
    with tempfile.TemporaryDirectory(prefix="gh_profile_step_") as log_dir:
        op_counts = {}
        iterator, functions = train_functions(args.model, log_dir, op_counts)
        results["graph_ops"] = {
            name: {"total": sum(types.values()), "types": types} for name, types in op_counts.items()
        }
        print("model %s: %d rounds of %d steps per function" % (args.model, args.rounds, args.block), flush=True)
        results["steps"] = paired_step_times(iterator, functions, args.rounds, args.block)
        results["profile"] = {name: profile_ops(iterator, functions[name], args.profile_steps) for name in FUNCTIONS}
    path = common.write_results("profile_step", results, pathlib.Path(args.out_dir))
    _print_report(results)
    print("\nresults: %s" % path)
    return results


def _print_report(results: dict) -> None:
    rows = []
    for name in FUNCTIONS:
        step, profile = results["steps"]["summary"][name], results["profile"][name]
        low, high = step["ratio_ci95"]
        rows.append(
            {
                "function": name,
                "ms_per_step": step["ms_per_step_median"],
                "ratio_mean": step["ratio_mean"],
                "ratio_ci95": "%.3f-%.3f" % (low, high),
                "model_op_us": profile["model_op_us"],
                "capture_op_us": profile["capture_op_us"],
                "capture_ops": profile["capture_ops"],
                "dispatches_per_step": profile["dispatches_per_step"],
            }
        )
    print("\n## %s: step time and profile per step\n" % results["args"]["model"])
    common.print_table(rows, list(rows[0]))
    print("\nOps the recording adds to one traced step (load-free; `cond/`: inside a tf.cond's branches):")
    for name, counted in results["graph_ops"].items():
        types = ", ".join("%s %d" % item for item in counted["types"].items())
        print("* %s: %d: %s" % (name, counted["total"], types))
    print("\nCostliest capture ops (us per step):")
    for name in (UNLOGGED, LOGGED):
        ops = ", ".join("%s %.0f" % (op, us) for op, us in results["profile"][name]["top_capture_ops"])
        print("* %s: %s" % (name, ops))


if __name__ == "__main__":
    main()
