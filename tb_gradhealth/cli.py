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


# What the in-process provider of a remote logdir keeps per tag: every step
# of ours (0 means unbounded), one point of other plugins' tensors, which
# are never read.
_OWN_TENSORS_KEEP_ALL = 0
_OTHER_TENSORS_KEPT = 1


def provider_for_logdir(logdir: str):
    """Builds an in-process data provider over `logdir` that holds every Gradient Health step.

    A local logdir is read straight from its event files
    (`local_logdir.LocalLogdir`: no TensorFlow, checksums checked in bulk);
    a remote one (`gs://`, `s3://`) through the multiplexer TensorBoard uses
    with `--load_fast=false`, which needs TensorFlow's file systems.

    Returns:
      (provider, ctx, experiment_id) to pass to the `reader` functions.
    """
    from tensorboard import context

    from tb_gradhealth import local_logdir, metadata, tensorflow_free

    if not tensorflow_free.is_remote(logdir):
        return local_logdir.LocalLogdir(logdir), context.RequestContext(), ""
    from tensorboard.backend.event_processing import data_provider, plugin_event_multiplexer, tag_types

    multiplexer = plugin_event_multiplexer.EventMultiplexer(
        size_guidance={tag_types.TENSORS: _OTHER_TENSORS_KEPT},
        tensor_size_guidance={metadata.PLUGIN_NAME: _OWN_TENSORS_KEEP_ALL},
    )
    multiplexer.AddRunsFromDirectory(logdir)
    multiplexer.Reload()
    return data_provider.MultiplexerDataProvider(multiplexer, logdir), context.RequestContext(), ""


def run_healths(logdir: str, run: str | None = None) -> Iterator[tuple[dict, bool]]:
    """Diagnoses `logdir`'s runs straight from the event files, one at a time: yields each one's `/health` entry.

    Yields:
      (entry, unreadable): a run's entry, and whether it has no readable
      statistic at all (its data is corrupt; the entry lists its problems).
      Each run is read when it is reached, so a report can print the first
      one while the others are read.

    Raises:
      UsageError: `logdir` is not a directory, or has no run `run` (before
        anything is yielded); or, after the runs, it holds no Gradient
        Health data or none that can be read (having yielded only
        unreadable runs).
    """
    from tb_gradhealth import tensorflow_free

    if not tensorflow_free.is_remote(logdir) and not os.path.isdir(logdir):
        raise UsageError("%s is not a directory" % logdir)
    provider, ctx, experiment_id = provider_for_logdir(logdir)
    from tb_gradhealth import event_files, health, reader

    candidates = sorted(info.run_name for info in provider.list_runs(ctx, experiment_id=experiment_id))

    def listing(name: str):
        return reader.list_run_tags(provider, ctx, experiment_id, name).get(name)

    if run is not None and (run not in candidates or listing(run) is None):
        runs = [name for name in candidates if listing(name) is not None]
        if not runs:
            raise UsageError("no gradient health data under %s" % logdir)
        raise UsageError("no gradient health data for run %r under %s; runs: %s" % (run, logdir, ", ".join(runs)))
    checker = event_files.RunFileChecker(logdir)
    found, unreadable = [], []
    for name in [run] if run is not None else candidates:
        run_tags = listing(name)
        if run_tags is None:
            continue
        found.append(name)
        if not run_tags.stats:
            unreadable.append(name)
        data = reader.load_run(provider, ctx, experiment_id, name, run_tags=run_tags)
        yield health.run_health(name, health.diagnose(data), checker.problems(name)), not run_tags.stats
    if not found:
        raise UsageError("no gradient health data under %s" % logdir)
    if len(unreadable) == len(found):
        raise UsageError(
            "no readable gradient health data under %s: every tag of %s is corrupt" % (logdir, ", ".join(found))
        )


def health_report(logdir: str, run: str | None = None) -> tuple[dict, set[str]]:
    """Returns the `/health` body of `logdir` (all runs, or `run`) and its unreadable runs; see `run_healths`."""
    entries = list(run_healths(logdir, run))
    return {"runs": [entry for entry, _ in entries]}, {entry["run"] for entry, unreadable in entries if unreadable}


def exit_status(report: dict) -> int:
    """`EXIT_FINDINGS` if any run has a finding, else `EXIT_HEALTHY`."""
    return EXIT_FINDINGS if any(run["findings"] for run in report["runs"]) else EXIT_HEALTHY


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
    """Renders one run's `/health` entry: verdict, a findings table, details, skipped data, then notes."""
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
    # Skipped data before notes: it is data the verdict did not see, while a
    # note says what the rules could not check in the data they saw.
    for problem in run.get("problems", []):
        lines.append(_INDENT + _problem_line(problem))
    for note in run.get("notes", []):
        lines.append("%snote: %s" % (_INDENT, note))
    return "\n".join(lines)


def _warn_problems(run: dict, err: TextIO) -> None:
    # Skipped data also goes to stderr, where a CI log shows it even when
    # stdout is parsed.
    for problem in run.get("problems", []):
        err.write("%s report: warning: run %s: %s\n" % (_PROG, run["run"], _problem_line(problem)))


def _report(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    runs, unreadable = [], set()
    # Unreadable runs wait until a readable one is found: if none is, the
    # report is a usage error and prints nothing else.
    held: list[tuple[str, dict]] = []
    try:
        for run, is_unreadable in run_healths(args.logdir, args.run):
            runs.append(run)
            if is_unreadable:
                unreadable.add(run["run"])
            held.append((format_run(run, is_unreadable), run))
            if is_unreadable and len(unreadable) == len(runs):
                continue
            for block, held_run in held:
                if not args.json:
                    # Each run as soon as it is diagnosed: a big logdir shows progress.
                    out.write(block + "\n\n")
                    out.flush()
                _warn_problems(held_run, err)
            held = []
    except UsageError as error:
        err.write("%s report: error: %s\n" % (_PROG, error))
        return EXIT_USAGE
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
    """Runs the command line; returns its exit status (the console script exits with it)."""
    args = _parser().parse_args(argv)
    if args.command == "report":
        return _report(args, sys.stdout, sys.stderr)
    raise AssertionError("unhandled command %r" % args.command)


if __name__ == "__main__":
    sys.exit(main())
