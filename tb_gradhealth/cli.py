"""The `tb-gradhealth` command line: `report` diagnoses a logdir's runs straight from the event files, as a CI gate."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator, Sequence
from typing import TextIO

# Exit statuses of `report`, documented in its help.
EXIT_HEALTHY = 0  # every run diagnosed healthy
EXIT_FINDINGS = 1  # at least one run has a finding
EXIT_USAGE = 2  # bad arguments, or nothing to diagnose (argparse also exits 2)

_PROG = "tb-gradhealth"
_INDENT = "  "


class UsageError(Exception):
    """The arguments name nothing that can be diagnosed."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=_PROG, description="Gradient Health for TensorBoard: per-layer gradient statistics and their diagnosis."
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    report = commands.add_parser(
        "report",
        help="diagnose the runs of a logdir",
        description=(
            "Reads the Gradient Health data of every run under LOGDIR from the event files (no "
            "TensorBoard server) and prints each run's verdict and findings, or with --json the "
            "same body as the tab's /health route."
        ),
        epilog=(
            "exit status: %d every run is healthy, %d some run has a finding, %d usage error or "
            "no readable gradient health data. Data that cannot be decoded is skipped and said "
            "so in the report and on stderr." % (EXIT_HEALTHY, EXIT_FINDINGS, EXIT_USAGE)
        ),
    )
    report.add_argument("logdir", metavar="LOGDIR", help="the directory given to tensorboard --logdir")
    report.add_argument(
        "--run", metavar="R", help="diagnose only run R (a path relative to LOGDIR, as the tab names it)"
    )
    report.add_argument("--json", action="store_true", help="print the /health JSON body instead of tables")
    return parser


# What the in-process provider keeps per tag: every step of ours (0 means
# unbounded), one point of other plugins' tensors, which are never read.
_OWN_TENSORS_KEEP_ALL = 0
_OTHER_TENSORS_KEPT = 1


def provider_for_logdir(logdir: str):
    """Builds an in-process data provider over `logdir` that keeps every Gradient Health step.

    It goes through the same multiplexer TensorBoard uses with
    `--load_fast=false`, so both read the files the same way; for a local
    logdir without importing TensorFlow.

    Returns:
      (provider, ctx, experiment_id) to pass to the `reader` functions.
    """
    from tensorboard import context
    from tensorboard.backend.event_processing import data_provider, plugin_event_multiplexer, tag_types

    from tb_gradhealth import metadata

    multiplexer = plugin_event_multiplexer.EventMultiplexer(
        size_guidance={tag_types.TENSORS: _OTHER_TENSORS_KEPT},
        tensor_size_guidance={metadata.PLUGIN_NAME: _OWN_TENSORS_KEEP_ALL},
    )
    multiplexer.AddRunsFromDirectory(logdir)
    multiplexer.Reload()
    return data_provider.MultiplexerDataProvider(multiplexer, logdir), context.RequestContext(), ""


def run_healths(logdir: str, run: str | None = None) -> tuple[Iterator[dict], set[str]]:
    """Diagnoses `logdir`'s runs straight from the event files, each as its `/health` entry.

    Returns:
      An iterator over the runs' entries, each computed when it is reached
      (so a report can print the first run while the others are read), and
      the selected runs with no readable statistic at all (their data is
      corrupt; their entries list their problems).

    Raises:
      UsageError: `logdir` is not a directory, holds no readable Gradient
        Health data, or has no run `run`.
    """
    if not os.path.isdir(logdir):
        raise UsageError("%s is not a directory" % logdir)
    provider, ctx, experiment_id = provider_for_logdir(logdir)
    from tb_gradhealth import event_files, health, reader

    listing = reader.list_run_tags(provider, ctx, experiment_id)
    runs = list(listing)
    if not runs:
        raise UsageError("no gradient health data under %s" % logdir)
    if run is not None and run not in listing:
        raise UsageError("no gradient health data for run %r under %s; runs: %s" % (run, logdir, ", ".join(runs)))
    selected = [run] if run is not None else runs
    unreadable = {name for name in selected if not listing[name].stats}
    if unreadable == set(selected):
        raise UsageError(
            "no readable gradient health data under %s: every tag of %s is corrupt" % (logdir, ", ".join(selected))
        )
    checker = event_files.RunFileChecker(logdir)

    def entries() -> Iterator[dict]:
        for name in selected:
            data = reader.load_run(provider, ctx, experiment_id, name, run_tags=listing[name])
            yield health.run_health(name, health.diagnose(data), checker.problems(name))

    return entries(), unreadable


def health_report(logdir: str, run: str | None = None) -> tuple[dict, set[str]]:
    """Returns the `/health` body of `logdir` (all runs, or `run`) and its unreadable runs; see `run_healths`."""
    entries, unreadable = run_healths(logdir, run)
    return {"runs": list(entries)}, unreadable


def exit_status(report: dict) -> int:
    """`EXIT_FINDINGS` if any run has a finding, else `EXIT_HEALTHY`."""
    return EXIT_FINDINGS if any(run["findings"] for run in report["runs"]) else EXIT_HEALTHY


def format_report(report: dict, unreadable: set[str] = frozenset()) -> str:
    """Renders a `/health` body as one block per run (see `format_run`), then a summary line."""
    blocks = [format_run(run, run["run"] in unreadable) for run in report["runs"]]
    blocks.append(_summary(report["runs"], unreadable))
    return "\n\n".join(blocks) + "\n"


def _summary(runs: Sequence[dict], unreadable: set[str]) -> str:
    with_findings = sum(1 for run in runs if run["findings"])
    healthy = len(runs) - with_findings - len(unreadable)
    summary = "%d run(s): %d healthy, %d with findings" % (len(runs), healthy, with_findings)
    if unreadable:
        summary += ", %d unreadable (skipped)" % len(unreadable)
    return summary


def _problem_line(problem: dict) -> str:
    """`skipped <tag>: why`, or `skipped file <name>: why` for a broken event file."""
    if "file" in problem:
        return "skipped file %s: %s" % (problem["file"], problem["message"])
    return "skipped %s: %s" % (problem["tag"], problem["message"])


def format_run(run: dict, unreadable: bool = False) -> str:
    """Renders one run's `/health` entry: verdict, a findings table, details, notes and skipped data."""
    verdict = "SKIPPED: no readable gradient health data" if unreadable else run["verdict"].upper()
    lines = ["run %s: %s" % (run["run"], verdict)]
    if run["findings"]:
        rows = [("KIND", "SEVERITY", "FIRST STEP", "LAYERS")] + [
            (f["kind"], f["severity"], str(f["first_step"]), ", ".join(f["layers"])) for f in run["findings"]
        ]
        widths = [max(len(row[column]) for row in rows) for column in range(3)]
        for row in rows:
            cells = [row[0].ljust(widths[0]), row[1].ljust(widths[1]), row[2].rjust(widths[2]), row[3]]
            lines.append(_INDENT + "  ".join(cells))
        for finding in run["findings"]:
            lines.append("%s%s: %s" % (_INDENT, finding["kind"], finding["message"]))
            lines.append("%s%sadvice: %s" % (_INDENT, _INDENT, finding["advice"]))
    for note in run.get("notes", []):
        lines.append("%snote: %s" % (_INDENT, note))
    for problem in run.get("problems", []):
        lines.append(_INDENT + _problem_line(problem))
    return "\n".join(lines)


def _warn_problems(run: dict, err: TextIO) -> None:
    # Skipped data also goes to stderr, where a CI log shows it even when
    # stdout is parsed.
    for problem in run.get("problems", []):
        err.write("%s report: warning: run %s: %s\n" % (_PROG, run["run"], _problem_line(problem)))


def _report(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    try:
        entries, unreadable = run_healths(args.logdir, args.run)
    except UsageError as error:
        err.write("%s report: error: %s\n" % (_PROG, error))
        return EXIT_USAGE
    runs = []
    for run in entries:
        runs.append(run)
        if not args.json:
            # Each run as soon as it is diagnosed: a big logdir shows progress.
            out.write(format_run(run, run["run"] in unreadable) + "\n\n")
            out.flush()
        _warn_problems(run, err)
    report = {"runs": runs}
    if args.json:
        from tensorboard.backend import json_util

        # As the /health route writes it: NaN/Inf become strings, so the
        # output parses with any strict JSON parser.
        out.write(json.dumps(json_util.Cleanse(report), indent=2) + "\n")
    else:
        out.write(_summary(runs, unreadable) + "\n")
    return exit_status(report)


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the command line; returns its exit status (the console script exits with it).

    Args:
      argv: the arguments; None takes them from `sys.argv`, as the console
        script does, and means the process is the command line's own: then
        TensorBoard reads local event files with its own TensorFlow stub
        instead of importing TensorFlow.
    """
    args = _parser().parse_args(argv)
    if argv is None and getattr(args, "logdir", None) is not None:
        from tb_gradhealth import tensorflow_free

        tensorflow_free.use_stub_for(args.logdir)
    if args.command == "report":
        return _report(args, sys.stdout, sys.stderr)
    raise AssertionError("unhandled command %r" % args.command)


if __name__ == "__main__":
    sys.exit(main())
