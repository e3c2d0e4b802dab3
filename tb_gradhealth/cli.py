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
EXIT_FINDINGS = 1  # at least one run has a finding, or (with --baseline) a regression
EXIT_USAGE = 2  # bad arguments, or nothing to diagnose (argparse also exits 2)

_PROG = "tb-gradhealth"
_INDENT = "  "


class UsageError(Exception):
    """The arguments name nothing that can be diagnosed."""


def _parser() -> argparse.ArgumentParser:
    from tb_gradhealth.diagnosis import baseline

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
            "exit status: %d every run is healthy (and, with --baseline, no layer moved), %d some run "
            "has a finding or (with --baseline) a layer whose gradient level moved, %d usage error or "
            "no readable gradient health data. Data that cannot be decoded is skipped and said "
            "so in the report and on stderr." % (EXIT_HEALTHY, EXIT_FINDINGS, EXIT_USAGE)
        ),
    )
    report.add_argument("logdir", metavar="LOGDIR", help="the directory given to tensorboard --logdir")
    report.add_argument(
        "--run", metavar="R", help="diagnose only run R (a path relative to LOGDIR, as the tab names it)"
    )
    report.add_argument("--json", action="store_true", help="print the /health JSON body instead of tables")
    report.add_argument(
        "--baseline",
        metavar="PATH_OR_RUN",
        help=(
            "compare each run with a known good run: a run of LOGDIR, a run directory, or a logdir "
            "(its only run, else the run of the same name). A layer whose gradient level (median "
            "grad_norm / weight_norm over the steps both runs have) moved more than %gx either way "
            "is a regression; layers in one run only are listed, not failed"
        )
        % baseline.LEVEL_FACTOR,
    )
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


class _Baseline:
    """The known good run(s) of `--baseline`: one run every run is compared with, or a logdir's runs matched by name."""

    def __init__(self, spec: str, provider, ctx, experiment_id: str, runs: dict[str, str], by_name: bool):
        self._spec = spec
        self._provider, self._ctx, self._experiment_id = provider, ctx, experiment_id
        self._runs = runs  # {name in its provider: how the report names it}
        self._by_name = by_name
        self._single = None

    @classmethod
    def open(
        cls, spec: str, logdir: str, provider, ctx, experiment_id: str, candidates: Sequence[str], names: Sequence[str]
    ) -> _Baseline:
        """Resolves `spec`: a run of `logdir` first, else a directory (its only run, else its runs by name).

        Args:
          candidates: every run of `logdir`.
          names: the runs the report will compare (to refuse a logdir none
            of whose runs has a counterpart).

        Raises:
          UsageError: `spec` names neither a run of `logdir` with gradient
            health data nor a directory holding some, or a logdir none of
            whose runs is named as one of `names`.
        """
        from tb_gradhealth import reader, tensorflow_free

        run = spec.rstrip("/")
        if run in candidates and _readable(reader.list_run_tags(provider, ctx, experiment_id, run).get(run)):
            return cls(spec, provider, ctx, experiment_id, {run: run}, by_name=False)
        if not tensorflow_free.is_remote(spec) and not os.path.isdir(spec):
            raise UsageError(
                "baseline %s is neither a run of %s with gradient health data nor a directory" % (spec, logdir)
            )
        other, other_ctx, other_id = provider_for_logdir(spec)
        found = sorted(
            name for name, tags in reader.list_run_tags(other, other_ctx, other_id).items() if _readable(tags)
        )
        if not found:
            raise UsageError("no readable gradient health data in baseline %s" % spec)
        if len(found) == 1:
            (only,) = found
            label = spec if only == "." else "%s/%s" % (spec.rstrip("/"), only)
            return cls(spec, other, other_ctx, other_id, {only: label}, by_name=False)
        if not set(found) & set(names):
            raise UsageError(
                "no run of %s has a run of the same name in baseline %s; runs there: %s"
                % (logdir, spec, ", ".join(found))
            )
        runs = {name: "%s/%s" % (spec.rstrip("/"), name) for name in found}
        return cls(spec, other, other_ctx, other_id, runs, by_name=True)

    def compare(self, run: str, series: dict) -> dict:
        """Returns run `run`'s comparison with its baseline run (`{"run": baseline run or None, ...}`, JSON-ready)."""
        from tb_gradhealth import reader
        from tb_gradhealth.diagnosis import baseline

        if self._by_name:
            if run not in self._runs:
                missing = baseline.not_compared("no run %s in baseline %s: not compared" % (run, self._spec))
                return {"run": None, **missing.to_json()}
            name = run
            known_good = reader.read_run(self._provider, self._ctx, self._experiment_id, name)
        else:
            (name,) = self._runs
            if self._single is None:
                # One baseline for every run: read once.
                self._single = reader.read_run(self._provider, self._ctx, self._experiment_id, name)
            known_good = self._single
        return {"run": self._runs[name], **baseline.compare(series, known_good).to_json()}


def _readable(run_tags) -> bool:
    """Whether a run's listing (`reader.RunTags` or None) has a statistic that can be read."""
    return run_tags is not None and bool(run_tags.stats)


def run_healths(logdir: str, run: str | None = None, baseline: str | None = None) -> Iterator[tuple[dict, bool]]:
    """Diagnoses `logdir`'s runs straight from the event files, one at a time: yields each one's `/health` entry.

    Args:
      baseline: a known good run (`--baseline`): each entry then also has
        `"baseline"`, its comparison with it (`_Baseline.compare`).

    Yields:
      (entry, unreadable): a run's entry, and whether it has no readable
      statistic at all (its data is corrupt; the entry lists its problems).
      Each run is read when it is reached, so a report can print the first
      one while the others are read.

    Raises:
      UsageError: `logdir` is not a directory, has no run `run`, or
        `baseline` cannot be resolved (before anything is yielded); or,
        after the runs, it holds no Gradient Health data or none that can
        be read (having yielded only unreadable runs).
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
    names = [run] if run is not None else candidates
    known_good = None
    if baseline is not None:
        known_good = _Baseline.open(baseline, logdir, provider, ctx, experiment_id, candidates, names)
    checker = event_files.RunFileChecker(logdir)
    found, unreadable = [], []
    for name in names:
        run_tags = listing(name)
        if run_tags is None:
            continue
        found.append(name)
        if not run_tags.stats:
            unreadable.append(name)
        data = reader.load_run(provider, ctx, experiment_id, name, run_tags=run_tags)
        entry = health.run_health(name, health.diagnose(data), checker.problems(name))
        if known_good is not None:
            entry["baseline"] = known_good.compare(name, data.series)
        yield entry, not run_tags.stats
    if not found:
        raise UsageError("no gradient health data under %s" % logdir)
    if len(unreadable) == len(found):
        raise UsageError(
            "no readable gradient health data under %s: every tag of %s is corrupt" % (logdir, ", ".join(found))
        )


def health_report(logdir: str, run: str | None = None, baseline: str | None = None) -> tuple[dict, set[str]]:
    """Returns the `/health` body of `logdir` (all runs, or `run`) and its unreadable runs; see `run_healths`."""
    entries = list(run_healths(logdir, run, baseline))
    return {"runs": [entry for entry, _ in entries]}, {entry["run"] for entry, unreadable in entries if unreadable}


def exit_status(report: dict) -> int:
    """`EXIT_FINDINGS` if any run has a finding or regressed against its baseline, else `EXIT_HEALTHY`."""
    failed = any(run["findings"] or _regressed(run) for run in report["runs"])
    return EXIT_FINDINGS if failed else EXIT_HEALTHY


def _regressed(run: dict) -> bool:
    return bool(run.get("baseline", {}).get("regressed"))


def _summary(runs: Sequence[dict], unreadable: set[str]) -> str:
    with_findings = sum(1 for run in runs if run["findings"])
    healthy = len(runs) - with_findings - len(unreadable)
    summary = "%d run(s): %d healthy, %d with findings" % (len(runs), healthy, with_findings)
    if unreadable:
        summary += ", %d unreadable (skipped)" % len(unreadable)
    if any("baseline" in run for run in runs):
        summary += "; %d regressed against the baseline" % sum(1 for run in runs if _regressed(run))
    return summary


def _table(rows: Sequence[Sequence[str]], right_aligned: Sequence[int] = ()) -> list[str]:
    """Rows of cells as lines of aligned columns; every column but the last is padded to its widest cell."""
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]) - 1)]
    lines = []
    for row in rows:
        padded = [
            cell.rjust(width) if column in right_aligned else cell.ljust(width)
            for column, (cell, width) in enumerate(zip(row, widths))
        ]
        lines.append("  ".join([*padded, row[-1]]))
    return lines


def _baseline_lines(comparison: dict) -> list[str]:
    """The baseline block of a run: what it was compared with, the layers that moved, those in one run only, notes."""
    if comparison["run"] is None:
        lines = ["baseline: not compared"]
    else:
        moved = comparison["moved"]
        what = "%d layer(s) moved" % len(moved) if moved else "no layer moved"
        lines = ["baseline %s: %s more than %gx" % (comparison["run"], what, comparison["factor"])]
        if comparison["last_step"] is not None:
            lines[0] += " (%s, steps up to %d)" % (comparison["measure"], comparison["last_step"])
        rows = [("LAYER", "LEVEL", "BASELINE", "RATIO")] + [
            (m["layer"], "%.2g" % m["level"], "%.2g" % m["baseline_level"], "%.2gx" % m["ratio"]) for m in moved
        ]
        if moved:
            lines += [_INDENT + line for line in _table(rows)]
    for key, where in (("only_in_run", "this run"), ("only_in_baseline", "the baseline")):
        if comparison[key]:
            lines.append("%sonly in %s (not compared): %s" % (_INDENT, where, ", ".join(comparison[key])))
    lines += ["%snote: %s" % (_INDENT, note) for note in comparison["notes"]]
    return lines


def _problem_line(problem: dict) -> str:
    """`skipped <tag>: why`, or `skipped file <name>: why` for a broken event file."""
    if "file" in problem:
        return "skipped file %s: %s" % (problem["file"], problem["message"])
    return "skipped %s: %s" % (problem["tag"], problem["message"])


def format_run(run: dict, unreadable: bool = False) -> str:
    """Renders one run's `/health` entry: verdict, a findings table, details, the baseline, skipped data, then notes."""
    verdict = "SKIPPED: no readable gradient health data" if unreadable else run["verdict"].upper()
    if _regressed(run):
        verdict += ", REGRESSED"
    lines = ["run %s: %s" % (run["run"], verdict)]
    if run["findings"]:
        rows = [("KIND", "SEVERITY", "FIRST STEP", "LAYERS")] + [
            (f["kind"], f["severity"], str(f["first_step"]), ", ".join(f["layers"])) for f in run["findings"]
        ]
        lines += [_INDENT + line for line in _table(rows, right_aligned=(2,))]
        for finding in run["findings"]:
            lines.append("%s%s: %s" % (_INDENT, finding["kind"], finding["message"]))
            lines.append("%s%sadvice: %s" % (_INDENT, _INDENT, finding["advice"]))
    if "baseline" in run:
        lines += [_INDENT + line for line in _baseline_lines(run["baseline"])]
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
        for run, is_unreadable in run_healths(args.logdir, args.run, args.baseline):
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
