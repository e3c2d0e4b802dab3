"""The tab in a real Chromium over runs with broken event files: what was skipped is shown per run, as text, and every run still draws."""

from __future__ import annotations

import os
import pathlib
import time

import pytest
from support.browser import ENTRY, MIN_DRAWN_PIXELS, browser, in_process_tensorboard, page  # noqa: F401  (fixtures)

from tb_gradhealth import event_files
from tb_gradhealth.summary import GradientHealthFileWriter

pytestmark = pytest.mark.slow  # a browser and a server: ~10 s on 2 cores

GOOD_RUN = "good"
TRUNCATED_RUN = "truncated"
# A run name is a directory name: it may hold markup, which must stay text.
GARBAGE_RUN = "<img src=x onerror=alert(1)><b>garbage</b>"
LAYERS = ["dense", "dense_1", "dense_2"]
NUM_STEPS = 6
CUT_BYTES = 5  # cut off the end of the last record, as a crash mid-write does
GARBAGE = b"\x00\x01 not a record, e.g. a disk block of another file \xff" * 2
# Older than the grace period a live writer gets: the writer of the cut file is gone.
SETTLED_AGE_S = event_files.UNFINISHED_WRITE_GRACE_S + 60.0


def write_run(run_dir: pathlib.Path) -> tuple[pathlib.Path, list[int]]:
    """Writes a run, flushing each step; returns (event file, its size after each flush = record boundaries)."""
    writer = GradientHealthFileWriter(str(run_dir))
    writer.flush()
    (event_file,) = run_dir.iterdir()
    boundaries = [event_file.stat().st_size]
    for step in range(NUM_STEPS):
        writer.write(step, {"grad_norm": [1.0 + step, 0.5, 0.1 * (step + 1)]}, LAYERS)
        writer.flush()
        boundaries.append(event_file.stat().st_size)
    writer.close()
    return event_file, boundaries


@pytest.fixture(scope="module")
def broken_logdir(tmp_path_factory):
    """A good run, a run cut mid-record (settled) and a run with trailing garbage; returns (logdir, expected notices)."""
    root = tmp_path_factory.mktemp("frontend_problems")
    write_run(root / GOOD_RUN)
    truncated, boundaries = write_run(root / TRUNCATED_RUN)
    cut_size = boundaries[-1] - CUT_BYTES
    truncated.write_bytes(truncated.read_bytes()[:cut_size])
    then = time.time() - SETTLED_AGE_S
    os.utime(truncated, (then, then))
    garbage, garbage_boundaries = write_run(root / GARBAGE_RUN)
    with open(garbage, "ab") as stream:
        stream.write(GARBAGE)
    good_end = garbage_boundaries[-1]
    expected = {
        TRUNCATED_RUN: (
            truncated.name,
            "event file ends in an incomplete record: the last %d bytes (from byte %d of %d) are not read"
            % (cut_size - boundaries[-2], boundaries[-2], cut_size),
        ),
        GARBAGE_RUN: (
            garbage.name,
            "event file corrupt: no valid record at byte %d of %d" % (good_end, good_end + len(GARBAGE)),
        ),
    }
    return root, expected


def test_skipped_files_are_listed_per_run_as_text_and_every_run_still_draws(broken_logdir, page):
    logdir, expected = broken_logdir
    with in_process_tensorboard(str(logdir)) as (url, _):
        page.open_tab(url + ENTRY)
        notices = page.page.evaluate(
            """[...document.querySelectorAll('.notice-banner .notice')].map((item) => [
                item.dataset.run, item.querySelector('.notice-run').textContent, item.dataset.file || item.dataset.tag, item.textContent])"""
        )
        assert sorted((run, shown, tag) for run, shown, tag, _ in notices) == sorted(
            (run, run, tag) for run, (tag, _) in expected.items()
        )
        for run, _, tag, text in notices:
            # "run: file: what is wrong", with the exact bytes lost computed here from the record boundaries.
            assert text.startswith("%s: %s: %s" % (run, tag, expected[run][1])), text
        assert page.page.is_visible(".notice-banner")
        # Skipped data is a notice, not a failure of the tab.
        assert page.page.is_hidden(".error-banner")

        markers = page.page.evaluate(
            """Object.fromEntries([...document.querySelectorAll('.run-item')].map((item) => {
                const marker = item.querySelector('.run-problems');
                return [item.dataset.run, marker ? [marker.dataset.problems, marker.title] : null];
            }))"""
        )
        assert markers[GOOD_RUN] is None
        for run, (tag, message) in expected.items():
            count, title = markers[run]
            assert count == "1" and title.startswith("%s: %s" % (tag, message)), (run, title)

        # All three runs are selected (the first three) and drawn: the broken ones up to what is readable.
        for run in (GOOD_RUN, TRUNCATED_RUN, GARBAGE_RUN):
            assert page.pixels(".heatmap-cell", run) > MIN_DRAWN_PIXELS, run
            assert page.pixels(".trend-cell", run) > MIN_DRAWN_PIXELS, run
        # The run cut mid-record lost its last step only.
        assert "step %d" % (NUM_STEPS - 2) in page.cell_text(".profile-cell", TRUNCATED_RUN)

        # The markup in the run name stayed text everywhere.
        assert page.page.evaluate("document.querySelectorAll('img, b').length") == 0
        page.settle()
        assert page.dialogs == []
        assert page.errors == []


def test_a_run_with_no_readable_statistic_is_marked_unreadable_not_healthy(tmp_path, page):
    import json

    from tensorboard.compat.proto import event_pb2
    from tensorboard.summary.writer.event_file_writer import EventFileWriter

    from tb_gradhealth import metadata, summary

    write_run(tmp_path / GOOD_RUN)
    # Its only tag has metadata of a future content version this reader refuses.
    value = summary.layer_stat_summary(metadata.GRAD_NORM, LAYERS, [1.0, 2.0, 3.0])
    value.value[0].metadata.plugin_data.content = json.dumps(
        {"version": 9, "stat": metadata.GRAD_NORM, "layers": LAYERS}
    ).encode()
    writer = EventFileWriter(str(tmp_path / "unreadable"))
    writer.add_event(event_pb2.Event(step=0, wall_time=time.time(), summary=value))
    writer.close()
    with in_process_tensorboard(str(tmp_path)) as (url, _):
        page.open_tab(url + ENTRY)
        badges = page.page.evaluate(
            """Object.fromEntries([...document.querySelectorAll('.run-item')].map((item) =>
                [item.dataset.run, item.querySelector('.badge').textContent]))"""
        )
        assert badges == {GOOD_RUN: "Healthy", "unreadable": "Unreadable"}
        notices = page.page.evaluate(
            "[...document.querySelectorAll('.notice-banner .notice')].map((item) => [item.dataset.run, item.textContent])"
        )
        assert [run for run, _ in notices] == ["unreadable"]
        assert "unknown gradient health content version 9" in notices[0][1]
        # Its diagnosis card (both runs are shown: the first three are) says it was not diagnosed, not that no problem was found.
        card = page.cell(".panel-diagnosis .cell", "unreadable").text_content()
        assert "Not diagnosed: none of this run’s statistics could be read" in card and "No problem found" not in card
        assert page.pixels(".trend-cell", GOOD_RUN) > MIN_DRAWN_PIXELS
