"""Corrupt event files: every readable run keeps being served, and what TensorBoard cannot read is reported."""

from __future__ import annotations

import time

import numpy as np
import pytest
from support import raw_events
from tb_server import PLUGIN_ROUTE, strict_json, wsgi_client

from tb_gradhealth import cli, event_files
from tb_gradhealth.summary import GradientHealthFileWriter

LAYERS = ("in", "hidden", "out")
NUM_STEPS = 6
WALL_TIME_0 = 1_650_000_000.0  # seconds since the epoch

GOOD_RUN = "good"
TRUNCATED_RUN = "truncated"
GARBAGE_RUN = "garbage"
EMPTY_FILE_RUN = "with_empty_file"


def _later() -> float:
    return time.time() + raw_events.SETTLED_AGE_S


# --- the checker on its own ---------------------------------------------


# The checker reads files in blocks: the default holds these whole files;
# the smallest possible block (one header) and one cutting most headers in
# two exercise every way a record can lie across block boundaries.
@pytest.mark.parametrize("read_block_bytes", [event_files._READ_BLOCK_BYTES, event_files._HEADER_BYTES, 29])
def test_every_cut_is_reported_exactly_and_record_boundaries_are_clean(tmp_path, monkeypatch, read_block_bytes):
    monkeypatch.setattr(event_files, "_READ_BLOCK_BYTES", read_block_bytes)
    event_file, boundaries = raw_events.write_run(tmp_path / "source", num_steps=3)
    data = event_file.read_bytes()
    assert boundaries[-1] == len(data)
    run_dir = tmp_path / "cut"
    run_dir.mkdir()
    cut_file = run_dir / event_file.name
    checker = event_files.RunFileChecker(str(tmp_path))
    for cut in range(len(data) + 1):
        cut_file.write_bytes(data[:cut])
        problems = checker.problems("cut", now=_later())
        if cut == 0:
            assert [p.message for p in problems] == [
                "event file is empty: its writer never flushed (did it crash before its first flush?)"
            ]
        elif cut in boundaries[1:]:
            assert problems == [], cut
        else:
            good_end = max(b for b in boundaries if b < cut)
            assert problems == [
                event_files.FileProblem(
                    event_file.name,
                    "event file ends in an incomplete record: the last %d bytes (from byte %d of %d) are not read; "
                    "its writer stopped mid-record (a crash or a full disk?)" % (cut - good_end, good_end, cut),
                )
            ], cut


def test_an_incomplete_or_empty_file_still_being_written_is_not_reported(tmp_path):
    event_file, boundaries = raw_events.write_run(tmp_path / "run", NUM_STEPS, WALL_TIME_0)
    data = event_file.read_bytes()
    event_file.write_bytes(data[: boundaries[-1] - 3])
    (tmp_path / "run" / "events.out.tfevents.2.empty").write_bytes(b"")
    checker = event_files.RunFileChecker(str(tmp_path))
    assert checker.problems("run") == []
    later = checker.problems("run", now=_later())
    assert [(p.file, p.message.split(":")[0]) for p in later] == [
        (event_file.name, "event file ends in an incomplete record"),
        ("events.out.tfevents.2.empty", "event file is empty"),
    ]


def test_trailing_or_inner_garbage_is_reported_at_once(tmp_path):
    event_file, boundaries = raw_events.write_run(tmp_path / "trailing", NUM_STEPS, WALL_TIME_0)
    with open(event_file, "ab") as stream:
        stream.write(raw_events.GARBAGE)
    inner_file, inner_boundaries = raw_events.write_run(tmp_path / "inner", NUM_STEPS, WALL_TIME_0)
    data = inner_file.read_bytes()
    # Bytes inserted into the data of a record: the next header is misplaced.
    inserted_at = inner_boundaries[2] + 20
    inner_file.write_bytes(data[:inserted_at] + raw_events.GARBAGE + data[inserted_at:])
    checker = event_files.RunFileChecker(str(tmp_path))
    (trailing,) = checker.problems("trailing")
    size = boundaries[-1] + len(raw_events.GARBAGE)
    assert trailing.message.startswith(
        "event file corrupt: no valid record at byte %d of %d (bad length checksum)" % (boundaries[-1], size)
    )
    assert "at least the last %d bytes are not read" % len(raw_events.GARBAGE) in trailing.message
    (inner,) = checker.problems("inner")
    corrupt_at = int(inner.message.split("no valid record at byte ")[1].split()[0])
    # Found at the next record boundary after the damage, never before it.
    assert inserted_at < corrupt_at <= inner_boundaries[3] + len(raw_events.GARBAGE)


def test_a_growing_file_is_checked_incrementally_and_recovers(tmp_path):
    run_dir = tmp_path / "live"
    writer = GradientHealthFileWriter(str(run_dir))
    writer.write(0, {"grad_norm": raw_events.step_values(0)}, LAYERS)
    writer.flush()
    (event_file,) = run_dir.iterdir()
    checker = event_files.RunFileChecker(str(tmp_path))
    assert checker.problems("live", now=_later()) == []
    # A half-written record (a buffered write in progress) ...
    complete = event_file.read_bytes()
    writer.write(1, {"grad_norm": raw_events.step_values(1)}, LAYERS)
    writer.flush()
    full = event_file.read_bytes()
    event_file.write_bytes(full[: len(complete) + 7])
    assert "incomplete record" in checker.problems("live", now=_later())[0].message
    # ... that its writer completes is no problem any more.
    event_file.write_bytes(full)
    assert checker.problems("live", now=_later()) == []
    # A file replaced by a shorter one is checked from the start again.
    damaged = complete + raw_events.GARBAGE[: len(full) - len(complete) - 1]
    event_file.write_bytes(damaged)
    (corrupt,) = checker.problems("live", now=_later())
    assert "no valid record at byte %d of %d" % (len(complete), len(damaged)) in corrupt.message
    # Records appended after the damage do not repair it: TensorBoard still
    # stops at the bad bytes.
    with open(event_file, "ab") as stream:
        stream.write(full[len(complete) :])
    (still,) = checker.problems("live", now=_later())
    assert (
        "no valid record at byte %d of %d" % (len(complete), len(damaged) + len(full) - len(complete)) in still.message
    )
    writer.close()


def test_checker_stays_inside_a_local_logdir(tmp_path):
    raw_events.write_run(tmp_path / "logdir" / "run", NUM_STEPS, WALL_TIME_0)
    (tmp_path / "logdir" / "events.out.tfevents.0.root").write_bytes(raw_events.GARBAGE)
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "events.out.tfevents.0.x").write_bytes(raw_events.GARBAGE)
    checker = event_files.RunFileChecker(str(tmp_path / "logdir"))
    assert [p.file for p in checker.problems(".")] == ["events.out.tfevents.0.root"]
    assert checker.problems("run") == []
    assert checker.problems("../outside") == []
    assert checker.problems("nope") == []
    for logdir in (None, "", "gs://bucket/logs", str(tmp_path / "missing")):
        assert event_files.RunFileChecker(logdir).problems(".") == []


# --- through the routes and the command line -----------------------------


@pytest.fixture(scope="module")
def corrupt_logdir(tmp_path_factory):
    """A good run next to a run cut mid-record, one with trailing garbage, and one with an empty file."""
    root = tmp_path_factory.mktemp("corrupt_files")
    raw_events.write_run(root / GOOD_RUN, NUM_STEPS, WALL_TIME_0)
    truncated, boundaries = raw_events.write_run(root / TRUNCATED_RUN, NUM_STEPS, WALL_TIME_0)
    truncated.write_bytes(truncated.read_bytes()[: boundaries[-1] - 5])
    raw_events.age(truncated)
    garbage, _ = raw_events.write_run(root / GARBAGE_RUN, NUM_STEPS, WALL_TIME_0)
    with open(garbage, "ab") as stream:
        stream.write(raw_events.GARBAGE)
    raw_events.write_run(root / EMPTY_FILE_RUN, NUM_STEPS, WALL_TIME_0)
    empty = root / EMPTY_FILE_RUN / "events.out.tfevents.1.crashed"
    empty.write_bytes(b"")
    raw_events.age(empty)
    return root


def _problem_kinds(problems):
    return [(problem["file"].split(".")[-1], problem["message"].split(":")[0]) for problem in problems]


EXPECTED_FILE_PROBLEMS = {
    GARBAGE_RUN: [("gradient_health", "event file corrupt")],
    GOOD_RUN: [],
    TRUNCATED_RUN: [("gradient_health", "event file ends in an incomplete record")],
    EMPTY_FILE_RUN: [("crashed", "event file is empty")],
}


def test_routes_serve_every_readable_step_and_report_the_broken_files(corrupt_logdir):
    client = wsgi_client(str(corrupt_logdir))
    runs = strict_json(client.get(PLUGIN_ROUTE + "/runs").get_data())["runs"]
    assert {run["run"]: _problem_kinds(run["problems"]) for run in runs} == EXPECTED_FILE_PROBLEMS
    max_steps = {run["run"]: run["max_step"] for run in runs}
    # The cut record (the last step) is lost; the others are all served.
    assert max_steps == {
        GOOD_RUN: NUM_STEPS - 1,
        TRUNCATED_RUN: NUM_STEPS - 2,
        GARBAGE_RUN: NUM_STEPS - 1,
        EMPTY_FILE_RUN: NUM_STEPS - 1,
    }
    for run, max_step in max_steps.items():
        body = strict_json(client.get(PLUGIN_ROUTE + "/series?run=%s&stat=grad_norm" % run).get_data())
        assert body["steps"] == list(range(max_step + 1))
        np.testing.assert_array_equal(
            np.asarray(body["values"]),
            np.asarray([raw_events.step_values(step) for step in range(max_step + 1)], dtype=np.float32),
        )
    health = strict_json(client.get(PLUGIN_ROUTE + "/health").get_data())["runs"]
    assert {run["run"]: _problem_kinds(run["problems"]) for run in health} == EXPECTED_FILE_PROBLEMS


def test_report_command_says_which_files_it_skipped(corrupt_logdir, capsys):
    cli.main(["report", str(corrupt_logdir)])
    lines = capsys.readouterr().err.splitlines()
    for run in (TRUNCATED_RUN, GARBAGE_RUN, EMPTY_FILE_RUN):
        names = [path.name for path in (corrupt_logdir / run).iterdir()]
        said = [
            line for line in lines if "run %s:" % run in line and "event file" in line and any(n in line for n in names)
        ]
        assert len(said) == 1, lines
    assert not any("run %s:" % GOOD_RUN in line for line in lines)
