"""The `tb-gradhealth` command line: `report` diagnoses a logdir's runs straight from the event files, as a CI gate."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
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


def health_report(logdir: str, run: str | None = None) -> tuple[dict, set[str]]:
    """Diagnoses `logdir` with the plugin's own `/health` code, reading the event files directly.

    Returns:
      The `/health` body, and the runs in it with no readable statistic at
      all (their data is corrupt; the body lists them with their problems).

    Raises:
      UsageError: `logdir` is not a directory, holds no readable Gradient
        Health data, or has no run `run`.
    """
    if not os.path.isdir(logdir):
        raise UsageError("%s is not a directory" % logdir)
    # Imported here so that `--help` and usage errors answer without
    # loading TensorBoard.
    from tensorboard import errors
    from tensorboard.plugins import base_plugin

    from tb_gradhealth import plugin, reader

    provider, ctx, experiment_id = reader.provider_for_logdir(logdir)
    infos = reader.list_runs(provider, ctx, experiment_id)
    runs = [info.run for info in infos]
    if not runs:
        raise UsageError("no gradient health data under %s" % logdir)
    if run is not None and run not in runs:
        raise UsageError("no gradient health data for run %r under %s; runs: %s" % (run, logdir, ", ".join(runs)))
    selected = [run] if run is not None else runs
    unreadable = {info.run for info in infos if info.run in selected and not info.stats}
    if unreadable == set(selected):
        raise UsageError(
            "no readable gradient health data under %s: every tag of %s is corrupt" % (logdir, ", ".join(selected))
        )
    health = plugin.GradientHealthPlugin(base_plugin.TBContext(data_provider=provider, logdir=logdir))
    try:
        return health.health_impl(ctx, experiment_id, run), unreadable
    except errors.NotFoundError as error:
        raise UsageError(str(error)) from None


def exit_status(report: dict) -> int:
    """`EXIT_FINDINGS` if any run has a finding, else `EXIT_HEALTHY`."""
    return EXIT_FINDINGS if any(run["findings"] for run in report["runs"]) else EXIT_HEALTHY


def format_report(report: dict, unreadable: set[str] = frozenset()) -> str:
    """Renders a `/health` body as one block per run: verdict, a findings table, details and skipped data."""
    blocks = [_format_run(run, run["run"] in unreadable) for run in report["runs"]]
    with_findings = sum(1 for run in report["runs"] if run["findings"])
    healthy = len(report["runs"]) - with_findings - len(unreadable)
    summary = "%d run(s): %d healthy, %d with findings" % (len(report["runs"]), healthy, with_findings)
    if unreadable:
        summary += ", %d unreadable (skipped)" % len(unreadable)
    blocks.append(summary)
    return "\n\n".join(blocks) + "\n"


def _format_run(run: dict, unreadable: bool) -> str:
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
    for problem in run.get("problems", []):
        lines.append("%sskipped %s: %s" % (_INDENT, problem["tag"], problem["message"]))
    return "\n".join(lines)


def _report(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    try:
        report, unreadable = health_report(args.logdir, args.run)
    except UsageError as error:
        err.write("%s report: error: %s\n" % (_PROG, error))
        return EXIT_USAGE
    if args.json:
        from tensorboard.backend import json_util

        # As the /health route writes it: NaN/Inf become strings, so the
        # output parses with any strict JSON parser.
        out.write(json.dumps(json_util.Cleanse(report), indent=2) + "\n")
    else:
        out.write(format_report(report, unreadable))
    # Skipped data also goes to stderr, where a CI log shows it even when
    # stdout is parsed.
    for run in report["runs"]:
        for problem in run.get("problems", []):
            err.write(
                "%s report: warning: run %s: skipped %s: %s\n" % (_PROG, run["run"], problem["tag"], problem["message"])
            )
    return exit_status(report)


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the command line; returns its exit status (the console script exits with it)."""
    args = _parser().parse_args(argv)
    if args.command == "report":
        return _report(args, sys.stdout, sys.stderr)
    raise AssertionError("unhandled command %r" % args.command)


if __name__ == "__main__":
    sys.exit(main())
