"""What a logged step's three passes over each gradient (norm, max, min) cost, as separate ops and fused by XLA, against an unlogged step's one pass.

`profile_step.py` shows a logged step of a big model spending most of our
time in memory passes over weight-sized tensors. This script isolates the
gradient passes on tensors shaped like one model's trainable variables
(random values, held in variables as the gradients are held in a step):

* `norm`: `tf.nn.l2_loss` of each tensor, what an unlogged step computes
  (the baseline);
* `norm_again`: the same, traced a second time (the control);
* `norm_max_min`: `l2_loss`, `reduce_max` and `reduce_min` of each, as
  separate graph ops, what a logged step computes today;
* `norm_max_min_xla`: the same three in one `jit_compile=True` function,
  where XLA may fuse them into one pass per tensor.

Timing as in `profile_step.py`: alternating blocks, mean ratio to `norm`
with a bootstrap 95% interval. numpy's `dot(x, x)` over the same tensors is
printed as an outside reference for one pass.

    python -m benchmarks.reductions --model big_mlp
"""

from __future__ import annotations

import argparse
import os
import pathlib
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import tensorflow as tf

from benchmarks import common, profile_step, workloads

NORM = "norm"
NORM_AGAIN = "norm_again"
NORM_MAX_MIN = "norm_max_min"
NORM_MAX_MIN_XLA = "norm_max_min_xla"
FUNCTIONS = (NORM, NORM_AGAIN, NORM_MAX_MIN, NORM_MAX_MIN_XLA)
WARMUP_CALLS = 5


def gradient_like_variables(model_name: str, seed: int = workloads.SEED) -> list[tf.Variable]:
    """Random float32 variables shaped like the trainable variables of one of `workloads.WORKLOADS`."""
    build = workloads.WORKLOADS[model_name].build
    rng = np.random.default_rng(seed)
    return [tf.Variable(rng.standard_normal(v.shape).astype(np.float32)) for v in build().trainable_variables]


def _norms(tensors):
    return tf.stack([tf.nn.l2_loss(t) for t in tensors])


def _norms_maxima_minima(tensors):
    return (
        _norms(tensors),
        tf.stack([tf.reduce_max(t) for t in tensors]),
        tf.stack([tf.reduce_min(t) for t in tensors]),
    )


def reduction_functions(variables) -> dict:
    """{name: function of one ignored argument} computing each variant over `variables`."""

    def over_variables(reduce, jit_compile=False):
        compiled = tf.function(lambda: reduce([v.read_value() for v in variables]), jit_compile=jit_compile)
        return lambda _unused: compiled()

    return {
        NORM: over_variables(_norms),
        NORM_AGAIN: over_variables(_norms),
        NORM_MAX_MIN: over_variables(_norms_maxima_minima),
        NORM_MAX_MIN_XLA: over_variables(_norms_maxima_minima, jit_compile=True),
    }


def numpy_one_pass_us(variables, calls: int) -> float:
    """us per call of numpy's `dot(x, x)` over every tensor: one pass, outside TensorFlow."""
    arrays = [v.numpy().ravel() for v in variables]
    start = time.perf_counter()
    for _ in range(calls):
        for array in arrays:
            np.dot(array, array)
    return (time.perf_counter() - start) / calls * 1e6


def check_same_numbers(functions: dict, variables) -> None:
    """The fused variant computes what the separate ops do (float32 sums may differ in the last bits)."""
    separate = [t.numpy() for t in functions[NORM_MAX_MIN](None)]
    fused = [t.numpy() for t in functions[NORM_MAX_MIN_XLA](None)]
    np.testing.assert_allclose(fused[0], separate[0], rtol=1e-4)
    np.testing.assert_array_equal(fused[1:], separate[1:])
    want = [0.5 * np.dot(v.numpy().ravel().astype(np.float64), v.numpy().ravel()) for v in variables]
    np.testing.assert_allclose(separate[0], want, rtol=1e-4)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="big_mlp", choices=list(workloads.WORKLOADS))
    parser.add_argument("--rounds", type=int, default=40, help="rounds of alternating blocks")
    parser.add_argument("--block", type=int, default=25, help="calls per function per round")
    parser.add_argument("--out-dir", default=str(common.OUT_DIR))
    args = parser.parse_args(argv)
    results = {"machine": common.machine("benchmarks.reductions", argv), "args": vars(args)}
    variables = gradient_like_variables(args.model)
    functions = reduction_functions(variables)
    check_same_numbers(functions, variables)
    for function in functions.values():
        for _ in range(WARMUP_CALLS):
            function(None)
    print(
        "model %s: %d tensors, %d floats; %d rounds of %d calls per function"
        % (args.model, len(variables), sum(int(np.prod(v.shape)) for v in variables), args.rounds, args.block),
        flush=True,
    )
    results["calls"] = profile_step.paired_step_times(None, functions, args.rounds, args.block, baseline=NORM)
    results["numpy_one_pass_us"] = numpy_one_pass_us(variables, args.rounds * args.block)
    path = common.write_results("reductions", results, pathlib.Path(args.out_dir))
    rows = []
    for name in FUNCTIONS:
        summary = results["calls"]["summary"][name]
        low, high = summary["ratio_ci95"]
        rows.append(
            {
                "function": name,
                "us_per_call": summary["ms_per_step_median"] * 1e3,
                "ratio_mean": summary["ratio_mean"],
                "ratio_ci95": "%.3f-%.3f" % (low, high),
            }
        )
    print("\n## %s: gradient passes per call\n" % args.model)
    common.print_table(rows, list(rows[0]))
    print("\nnumpy dot(x, x) over the same tensors: %.0f us per call" % results["numpy_one_pass_us"])
    print("\nresults: %s" % path)
    return results


if __name__ == "__main__":
    main()
