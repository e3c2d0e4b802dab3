"""How soon `tb-gradhealth report` prints its first line, this code against a baseline revision, in the same run.

    python -m benchmarks.report_start --baseline 205e960 --reps 5

Writes a logdir of `--runs` runs x `--layers` layers x `--steps` logged
steps (every built-in statistic and the loss, our numpy writer), then runs
`python -m tb_gradhealth.cli report LOGDIR` with each code version on
PYTHONPATH, alternating, and measures the time from starting the process
to its first line on stdout and to its exit, and the lines it writes to
stderr.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import subprocess
import sys
import time

import numpy as np

from benchmarks import common
from benchmarks.open_run import code_dir, snapshot_of_this_code

THIS_CODE = "this"


def build_logdir(root: pathlib.Path, runs: int, layers: int, steps: int) -> pathlib.Path:
    from tb_gradhealth import metadata
    from tb_gradhealth.summary import GradientHealthFileWriter

    names = ["dense_%d" % index for index in range(layers)]
    rng = np.random.default_rng(0)
    for run in range(runs):
        with GradientHealthFileWriter(str(root / ("run_%d" % run) / "train")) as writer:
            for step in range(steps):
                stats = {stat: rng.uniform(0.1, 1.0, layers) for stat in metadata.BUILTIN_STATS}
                stats[metadata.NONFINITE] = np.zeros(layers)
                writer.write(step, stats, names, loss=1.0 / (step + 1))
    return root


def first_line(code: pathlib.Path, logdir: pathlib.Path) -> dict:
    started = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-m", "tb_gradhealth.cli", "report", str(logdir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(code)),
        cwd=str(code),
    )
    line = process.stdout.readline()
    first_s = time.perf_counter() - started
    _, err = process.communicate()
    return {
        "first_line_s": first_s,
        "exit_s": time.perf_counter() - started,
        "stderr_lines": len(err.splitlines()),
        "first_line": line.strip(),
    }


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", default="205e960", help="git revision to compare with ('' for none)")
    parser.add_argument("--runs", type=int, default=4)
    parser.add_argument("--layers", type=int, default=11)
    parser.add_argument("--steps", type=int, default=3_000)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--out-dir", default=str(common.OUT_DIR))
    args = parser.parse_args(argv)
    out_dir = pathlib.Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    logdir = out_dir / ("report-r%d-l%d-s%d" % (args.runs, args.layers, args.steps))
    if not logdir.exists():
        build_logdir(logdir, args.runs, args.layers, args.steps)
    codes = {THIS_CODE: snapshot_of_this_code(out_dir)}
    if args.baseline:
        codes[args.baseline] = code_dir(args.baseline, out_dir)
    results = {"machine": common.machine("benchmarks.report_start", argv), "args": vars(args), "raw": []}
    for rep in range(args.reps):
        for name in list(codes) if rep % 2 == 0 else list(reversed(codes)):
            measured = first_line(codes[name], logdir)
            measured.update(code=name, rep=rep)
            results["raw"].append(measured)
    rows = []
    for name in codes:
        matching = [m for m in results["raw"] if m["code"] == name]
        rows.append(
            {
                "code": name,
                "reps": len(matching),
                "first_line_s": common.median([m["first_line_s"] for m in matching]),
                "exit_s": common.median([m["exit_s"] for m in matching]),
                "stderr_lines": max(m["stderr_lines"] for m in matching),
            }
        )
    results["summary"] = rows
    path = common.write_results("report_start", results, out_dir)
    print(
        "\n## `tb-gradhealth report` on %d runs x %d layers x %d steps (medians)\n"
        % (args.runs, args.layers, args.steps)
    )
    common.print_table(rows, ["code", "reps", "first_line_s", "exit_s", "stderr_lines"])
    print("\nresults: %s" % path)
    return results


if __name__ == "__main__":
    main()
