"""`tb-gradhealth report`: exit statuses, the table, skipped corrupt data, and JSON equal to the /health route."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tb_server import PLUGIN_ROUTE, strict_json, wsgi_client
from tensorboard.compat.proto import event_pb2
from tensorboard.summary.writer.event_file_writer import EventFileWriter

from tb_gradhealth import cli, event_files, local_logdir, metadata, summary
from tb_gradhealth.summary import GradientHealthFileWriter

LAYERS = ("dense", "dense_1", "dense_2")
NUM_STEPS = 30
HEALTHY_RUN = "healthy"
BROKEN_RUN = "broken"
CORRUPT_RUN = "corrupt"
UNREADABLE_RUN = "unreadable"
NAN_STEP = 12  # first step with NaN gradients in BROKEN_RUN
NAN_LAYER = 1
WRONG_SHAPE_STEP = 5  # the step of CORRUPT_RUN's weight_norm with too few layers
WALL_TIME_0 = 1_700_000_000.0  # seconds since the epoch
CONSOLE_SCRIPT = "tb-gradhealth"


def _healthy_values(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    shape = (NUM_STEPS, len(LAYERS))
    grad = 0.5 * np.exp(rng.normal(0, 0.3, shape))
    return {
        metadata.GRAD_NORM: grad,
        metadata.GRAD_NORM_MAX: grad * 1.2,
        metadata.GRAD_MAX_ABS: grad / 10,
        metadata.NONFINITE: np.zeros(shape),
        metadata.WEIGHT_NORM: np.full(shape, 5.0),
        metadata.UPDATE_RATIO: np.full(shape, 1e-3),
    }


def _write_run(run_dir: str, values: dict[str, np.ndarray]) -> None:
    with GradientHealthFileWriter(run_dir) as writer:
        for step in range(NUM_STEPS):
            writer.write(step, {stat: v[step] for stat, v in values.items()}, LAYERS, wall_time=WALL_TIME_0 + step)


def _write_raw(run_dir: str, stat: str, rows) -> None:
    """Writes `(step, layers, values)` rows of one statistic as given, even those the summary API refuses.

    The first row carries the metadata (with its layers), as a writer does.
    """
    writer = EventFileWriter(run_dir, filename_suffix=".raw")
    for index, (step, layers, values) in enumerate(rows):
        value = summary.layer_stat_summary(stat, layers, values, include_metadata=index == 0)
        writer.add_event(event_pb2.Event(step=step, wall_time=WALL_TIME_0 + step, summary=value))
    writer.close()


@pytest.fixture(scope="module")
def logdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    _write_run(str(root / HEALTHY_RUN), _healthy_values(seed=1))
    broken = _healthy_values(seed=2)
    broken[metadata.NONFINITE][NAN_STEP:, NAN_LAYER] = 3
    for stat in (metadata.GRAD_NORM, metadata.GRAD_NORM_MAX, metadata.GRAD_MAX_ABS):
        broken[stat][NAN_STEP:, NAN_LAYER] = np.nan
    _write_run(str(root / BROKEN_RUN), broken)
    # Healthy data, except that one step of weight_norm has two values for
    # three layers: the reader skips that step and says so.
    corrupt = _healthy_values(seed=3)
    del corrupt[metadata.WEIGHT_NORM]
    _write_run(str(root / CORRUPT_RUN), corrupt)
    rows = [(step, LAYERS, [5.0] * 3) for step in range(NUM_STEPS)]
    rows[WRONG_SHAPE_STEP] = (WRONG_SHAPE_STEP, LAYERS[:2], [5.0] * 2)
    _write_raw(str(root / CORRUPT_RUN), metadata.WEIGHT_NORM, rows)
    return root


@pytest.fixture(scope="module")
def health(logdir):
    """The /health body served by TensorBoard's own app over the logdir."""
    client = wsgi_client(str(logdir))

    def get(query=""):
        response = client.get(PLUGIN_ROUTE + "/health" + query)
        assert response.status_code == 200
        return strict_json(response.get_data())

    return get


def _report(capsys, *argv) -> tuple[int, str, str]:
    status = cli.main(["report", *map(str, argv)])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_json_is_the_health_route_body(logdir, health, capsys):
    status, out, err = _report(capsys, logdir, "--json")
    body = strict_json(out)
    assert body == health()
    assert [run["run"] for run in body["runs"]] == [BROKEN_RUN, CORRUPT_RUN, HEALTHY_RUN]
    assert status == cli.EXIT_FINDINGS
    # stdout stays pure JSON; what was skipped is said on stderr.
    assert err.startswith("tb-gradhealth report: warning: run corrupt: skipped gradient_health/weight_norm: ")


@pytest.mark.parametrize(
    "run, status", [(HEALTHY_RUN, cli.EXIT_HEALTHY), (BROKEN_RUN, cli.EXIT_FINDINGS), (CORRUPT_RUN, cli.EXIT_HEALTHY)]
)
def test_one_run_json_and_exit_status_agree_with_the_route(logdir, health, capsys, run, status):
    got_status, out, _ = _report(capsys, logdir, "--run", run, "--json")
    body = strict_json(out)
    assert body == health("?run=" + run)
    assert got_status == status
    assert got_status == (cli.EXIT_FINDINGS if body["runs"][0]["findings"] else cli.EXIT_HEALTHY)


def test_table_gives_verdict_first_step_and_layers(logdir, capsys):
    status, out, _ = _report(capsys, logdir)
    assert status == cli.EXIT_FINDINGS
    blocks = out.strip().split("\n\n")
    assert blocks[0].splitlines()[:3] == [
        "run broken: NONFINITE",
        "  KIND       SEVERITY  FIRST STEP  LAYERS",
        "  nonfinite  critical          %d  %s" % (NAN_STEP, LAYERS[NAN_LAYER]),
    ]
    assert "  nonfinite: NaN/Inf gradients from step %d in dense_1" % NAN_STEP in blocks[0]
    assert "    advice: " in blocks[0]
    # These runs were written without the loss: the report says what that leaves unjudged.
    assert blocks[2].splitlines() == [
        "run healthy: HEALTHY",
        "  note: no training loss recorded: findings do not show the loss trend, and 'not learning' is judged "
        "from the gradient norms",
    ]
    assert blocks[-1] == "3 run(s): 2 healthy, 1 with findings"


def test_skipped_corrupt_data_is_reported_in_the_table_and_on_stderr(logdir, capsys):
    status, out, err = _report(capsys, logdir, "--run", CORRUPT_RUN)
    assert status == cli.EXIT_HEALTHY
    message = "skipped 1 step(s), first at step %d: tensor of shape (2,), expected (3,) for 3 layers" % WRONG_SHAPE_STEP
    assert out.splitlines()[:2] == [
        "run corrupt: HEALTHY",
        "  skipped gradient_health/weight_norm: %s" % message,
    ]
    assert err == "tb-gradhealth report: warning: run corrupt: skipped gradient_health/weight_norm: %s\n" % message


def test_damaged_event_file_is_reported_as_skipped(tmp_path, capsys):
    _write_run(str(tmp_path / HEALTHY_RUN), _healthy_values(seed=1))
    (event_file,) = (tmp_path / HEALTHY_RUN).iterdir()
    with open(event_file, "ab") as stream:
        stream.write(b"\x00 bytes that are no record")
    # Older than any writer's flush interval: damaged, not being written.
    an_hour_ago = time.time() - 3600
    os.utime(event_file, (an_hour_ago, an_hour_ago))
    status, out, err = _report(capsys, tmp_path)
    assert status == cli.EXIT_HEALTHY
    lines = out.splitlines()
    assert lines[0] == "run healthy: HEALTHY"
    assert lines[1].startswith("  skipped file %s: event file corrupt: " % event_file.name)
    assert err.startswith("tb-gradhealth report: warning: run healthy: skipped file %s: " % event_file.name)


def test_run_whose_every_tag_is_corrupt_is_skipped_not_healthy(tmp_path, capsys):
    _write_run(str(tmp_path / HEALTHY_RUN), _healthy_values(seed=1))
    # Its only tag has metadata of a future version this reader refuses.
    value = summary.layer_stat_summary(metadata.GRAD_NORM, LAYERS, [1.0] * 3)
    value.value[0].metadata.plugin_data.content = json.dumps(
        {"version": 9, "stat": metadata.GRAD_NORM, "layers": list(LAYERS)}
    ).encode()
    writer = EventFileWriter(str(tmp_path / UNREADABLE_RUN))
    writer.add_event(event_pb2.Event(step=0, wall_time=WALL_TIME_0, summary=value))
    writer.close()
    status, out, err = _report(capsys, tmp_path)
    assert status == cli.EXIT_HEALTHY
    assert "run unreadable: SKIPPED: no readable gradient health data" in out
    assert "unknown gradient health content version 9" in out and "unknown gradient health content version 9" in err
    assert out.strip().splitlines()[-1] == "2 run(s): 1 healthy, 0 with findings, 1 unreadable (skipped)"
    # /health (the JSON body) never calls it healthy either.
    status, out, err = _report(capsys, tmp_path, "--json")
    verdicts = {run["run"]: run["verdict"] for run in strict_json(out)["runs"]}
    assert verdicts == {HEALTHY_RUN: "healthy", UNREADABLE_RUN: "unreadable"}
    status, out, err = _report(capsys, tmp_path, "--run", UNREADABLE_RUN)
    assert (status, out) == (cli.EXIT_USAGE, "")
    assert "every tag of unreadable is corrupt" in err


def test_no_gradient_health_data_is_a_usage_error(tmp_path, capsys):
    import tensorflow as tf

    # Another plugin's data only.
    with tf.summary.create_file_writer(str(tmp_path / "scalars")).as_default():
        tf.summary.scalar("loss", 1.0, step=0)
    for target in (tmp_path, tmp_path / "empty_dir_that_is_missing"):
        status, out, err = _report(capsys, target)
        assert (status, out) == (cli.EXIT_USAGE, "")
        assert err.startswith("tb-gradhealth report: error: ")
    assert "no gradient health data under %s" % tmp_path in _report(capsys, tmp_path)[2]


def test_unknown_run_is_a_usage_error_listing_the_runs(logdir, capsys):
    status, out, err = _report(capsys, logdir, "--run", "nope")
    assert (status, out) == (cli.EXIT_USAGE, "")
    assert (
        err
        == "tb-gradhealth report: error: no gradient health data for run 'nope' under %s; runs: broken, corrupt, healthy\n"
        % logdir
    )


@pytest.mark.parametrize("argv", [[], ["report"], ["report", "a", "b"], ["nope"], ["report", "x", "--frobnicate"]])
def test_bad_arguments_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == cli.EXIT_USAGE
    assert "usage: tb-gradhealth" in capsys.readouterr().err


_CLI_MODULES_SCRIPT = textwrap.dedent(
    """
    import sys
    from tb_gradhealth import cli
    sys.argv = ["tb-gradhealth", "report", sys.argv[1]]
    status = cli.main()
    sys.stdout.flush()
    sys.stderr.write("tensorflow imported: %s\\n" % ("tensorflow" in sys.modules))
    sys.exit(status)
    """
)


def test_report_imports_no_tensorflow_and_writes_only_its_own_lines(logdir):
    """As the console script runs it (argv from the command line): TensorBoard's stub reads the local files."""
    process = subprocess.run([sys.executable, "-c", _CLI_MODULES_SCRIPT, str(logdir)], capture_output=True, text=True)
    assert process.returncode == cli.EXIT_FINDINGS, process.stderr
    assert process.stdout.splitlines()[0] == "run broken: NONFINITE"
    lines = process.stderr.splitlines()
    assert lines[-1] == "tensorflow imported: False"
    # Nothing but the report's own warnings: no TensorFlow start-up lines.
    assert lines[:-1] and all(line.startswith("tb-gradhealth report: warning: ") for line in lines[:-1])


@pytest.mark.slow
def test_installed_console_script(logdir, capsys):
    """The `tb-gradhealth` entry point, as a CI job runs it (one start-up of TensorBoard, ~10 s)."""
    script = str(pathlib.Path(sys.executable).parent / CONSOLE_SCRIPT)
    process = subprocess.run([script, "report", str(logdir), "--json"], capture_output=True, text=True)
    assert process.returncode == cli.EXIT_FINDINGS, process.stderr
    in_process = _report(capsys, logdir, "--json")
    assert strict_json(process.stdout) == strict_json(in_process[1])
    missing = subprocess.run([script, "report", str(logdir / "missing")], capture_output=True, text=True)
    assert (missing.returncode, missing.stdout) == (cli.EXIT_USAGE, "")
    assert missing.stderr == "tb-gradhealth report: error: %s is not a directory\n" % (logdir / "missing")


# The command line's own reading of a local logdir (local_logdir.LocalLogdir).


@settings(max_examples=50, deadline=None)
@given(data=st.lists(st.binary(min_size=0, max_size=40), min_size=1, max_size=8))
def test_bulk_checksums_equal_tensorboards(data):
    from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c

    for length in {len(item) for item in data}:
        rows = [item for item in data if len(item) == length]
        matrix = np.frombuffer(b"".join(rows), dtype=np.uint8).reshape(len(rows), length)
        assert event_files.masked_crc32c(matrix).tolist() == [masked_crc32c(row) for row in rows]


def test_records_stop_where_tensorboard_stops(tmp_path):
    _write_run(str(tmp_path / "run"), _healthy_values(seed=1))
    (event_file,) = (tmp_path / "run").iterdir()
    data = event_file.read_bytes()
    records = local_logdir.read_records(data)
    assert len(records) == NUM_STEPS + 1  # the file version, then one event per step
    # A flipped byte in the data of the 11th record: it and what follows are not read.
    offset = sum(12 + len(record) + 4 for record in records[:10]) + 12 + 5
    damaged = data[:offset] + bytes([data[offset] ^ 1]) + data[offset + 1 :]
    assert local_logdir.read_records(damaged) == records[:10]
    # A cut record: the whole ones before it.
    assert local_logdir.read_records(data[: len(data) - 3]) == records[:-1]


def test_local_reading_equals_tensorboards_multiplexer(logdir):
    from tensorboard import context
    from tensorboard.backend.event_processing import data_provider, plugin_event_multiplexer, tag_types

    multiplexer = plugin_event_multiplexer.EventMultiplexer(
        size_guidance={tag_types.TENSORS: 1}, tensor_size_guidance={metadata.PLUGIN_NAME: 0}
    )
    multiplexer.AddRunsFromDirectory(str(logdir))
    multiplexer.Reload()
    reference = data_provider.MultiplexerDataProvider(multiplexer, str(logdir))
    local = local_logdir.LocalLogdir(str(logdir))
    ctx = context.RequestContext()
    for provider in (reference, local):
        listed = provider.list_tensors(ctx, experiment_id="", plugin_name=metadata.PLUGIN_NAME)
        read = provider.read_tensors(ctx, experiment_id="", plugin_name=metadata.PLUGIN_NAME, downsample=10**9)
        if provider is reference:
            expected = (listed, read)
    assert listed == expected[0]
    assert sorted(read) == sorted(expected[1])
    for run in read:
        assert sorted(read[run]) == sorted(expected[1][run])
        for tag, points in read[run].items():
            wanted = expected[1][run][tag]
            assert [(p.step, p.wall_time) for p in points] == [(p.step, p.wall_time) for p in wanted]
            for got, want in zip(points, wanted):
                np.testing.assert_array_equal(got.numpy, want.numpy)
                assert got.numpy.dtype == want.numpy.dtype and got.numpy.shape == want.numpy.shape


def test_runs_are_read_one_at_a_time(logdir, monkeypatch):
    read = []
    real = local_logdir._read_run

    def counting(directory):
        read.append(pathlib.Path(directory).name)
        return real(directory)

    monkeypatch.setattr(local_logdir, "_read_run", counting)
    entries = cli.run_healths(str(logdir))
    first, _ = next(entries)
    assert (first["run"], read) == (BROKEN_RUN, [BROKEN_RUN])
    assert [entry["run"] for entry, _ in entries] == [CORRUPT_RUN, HEALTHY_RUN]
    assert read == [BROKEN_RUN, CORRUPT_RUN, HEALTHY_RUN]
