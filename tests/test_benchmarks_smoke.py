"""Smoke runs of the benchmarks with tiny sizes: each script runs end to end and reports what it measured (no timing assertions)."""

from __future__ import annotations

import json
import pathlib
import sys

import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks import eventgen
from tb_gradhealth import cli, metadata, reader

pytestmark = pytest.mark.slow

LAYERS = 3
STEPS = 4
# More steps than the generator writes per batch, so a batch boundary is read back.
LONG_STEPS = 1_100


def _events(path: pathlib.Path):
    from tensorboard.backend.event_processing import event_file_loader
    from tensorboard.compat.proto import event_pb2

    events = []
    for record in event_file_loader.RawEventFileLoader(str(path)).Load():
        event = event_pb2.Event.FromString(record)
        event.ClearField("wall_time")
        events.append(event)
    return events


def _only_file(directory: pathlib.Path) -> pathlib.Path:
    (path,) = [p for p in directory.iterdir() if "tfevents" in p.name]
    return path


def test_generated_event_files_equal_what_tensorflow_writes(tmp_path):
    import tensorflow as tf

    values = eventgen.run_values(0, STEPS, LAYERS)
    layers = eventgen.layer_names(LAYERS)
    # What the Keras callback's flush does: tf.summary.write, metadata on a tag's first event.
    with tf.summary.create_file_writer(str(tmp_path / "tf_gh")).as_default():
        for step in range(STEPS):
            for column, stat in enumerate(eventgen.STATS):
                md = metadata.create_summary_metadata(stat, layers).SerializeToString() if step == 0 else None
                tf.summary.write(metadata.tag_for_stat(stat), values[step, column], step=step, metadata=md)
    with tf.summary.create_file_writer(str(tmp_path / "tf_scalars")).as_default():
        for step in range(STEPS):
            for number, tag in zip(values[step].ravel(), eventgen.scalar_tags(LAYERS)):
                tf.summary.scalar(tag, number, step=step)
    tf.summary.flush()
    for layout, tf_dir in ((eventgen.GRADIENT_HEALTH, "tf_gh"), (eventgen.SCALARS, "tf_scalars")):
        ours = _events(eventgen.write_run(tmp_path / layout, layout, 0, STEPS, LAYERS))
        theirs = _events(_only_file(tmp_path / tf_dir))
        assert ours[0].file_version == theirs[0].file_version == "brain.Event:2"
        # TensorFlow's file-version event also names its writer; the rest must be equal.
        assert ours[1:] == theirs[1:], layout
        assert len(ours) == 1 + STEPS * len(eventgen.STATS) * (1 if layout == eventgen.GRADIENT_HEALTH else LAYERS)


def test_generated_logdir_reads_back_exactly_and_is_reused(tmp_path):
    spec = eventgen.LogdirSpec(eventgen.GRADIENT_HEALTH, runs=2, layers=LAYERS, steps=LONG_STEPS)
    logdir = eventgen.build_logdir(spec, tmp_path, log=lambda message: None)
    provider, ctx, experiment = cli.provider_for_logdir(str(logdir))
    runs = [reader.run_info(tags) for tags in reader.list_run_tags(provider, ctx, experiment).values()]
    assert [info["run"] for info in runs] == [eventgen.run_name(0), eventgen.run_name(1)]
    for index, info in enumerate(runs):
        assert info["max_step"] == LONG_STEPS - 1
        series = reader.read_run(provider, ctx, experiment, info["run"])
        expected = np.concatenate(
            [
                eventgen.run_values(index, 1_000, LAYERS, 0),
                eventgen.run_values(index, LONG_STEPS - 1_000, LAYERS, 1_000),
            ]
        )
        for column, stat in enumerate(eventgen.STATS):
            assert list(series[stat].layers) == eventgen.layer_names(LAYERS)
            np.testing.assert_array_equal(series[stat].steps, np.arange(LONG_STEPS))
            np.testing.assert_array_equal(series[stat].values, expected[:, column, :].astype(np.float64))
    # A bigger logdir hard-links the runs generated for the smaller one.
    bigger = eventgen.build_logdir(
        eventgen.LogdirSpec(eventgen.GRADIENT_HEALTH, 3, LAYERS, LONG_STEPS), tmp_path, log=lambda m: None
    )
    first = _only_file(bigger / eventgen.run_name(0))
    assert first.stat().st_nlink >= 3 and first.samefile(_only_file(logdir / eventgen.run_name(0)))


def test_serve_smoke(tmp_path):
    from benchmarks import serve

    results = serve.main(
        [
            "--sizes",
            "2",
            "--anchor-sizes",
            "2",
            "--layers",
            str(LAYERS),
            "--steps",
            "20",
            "--load-fast",
            "true",
            "--requests",
            "2",
            "--out-dir",
            str(tmp_path),
        ]
    )
    assert results["failed"] == [] and results["skipped"] == []
    summaries = {(s["layout"], s["runs"], s["load_fast"]): s for s in results["summary"]}
    assert set(summaries) == {(eventgen.GRADIENT_HEALTH, 2, True), (eventgen.SCALARS, 2, True)}
    for summary in summaries.values():
        assert 0 < summary["startup_s"] <= summary["complete_s"]
        assert summary["peak_rss_mib"] > 0 and summary["cpu_to_complete_s"] > 0
        assert all(latency["first_ms"] > 0 and not latency["error_messages"] for latency in summary["latency"].values())
    latency = summaries[(eventgen.GRADIENT_HEALTH, 2, True)]["latency"]
    assert set(latency) == {
        "/runs",
        "/series (same run)",
        "/series (each other run once)",
        "/health?run (same run)",
        "/health?run (each other run once)",
        "/health",
    }
    assert latency["/series (same run)"]["n"] == 2
    # The second run is requested once, as the first request of its route.
    assert latency["/series (each other run once)"]["n"] == 0
    # Under --load_fast=true the Rust data server is measured too.
    for measured in results["raw"]:
        assert any(name.startswith("server[") for name in measured["peak_rss_mib_by_process"])
    # Bytes per logged step are those of the files on disk.
    gh_bytes = eventgen.logdir_bytes(tmp_path / "logdirs" / "gradient_health-r2-l3-s20")
    assert results["bytes_per_logged_step"]["gradient_health-r2-l3-s20"] == gh_bytes / (2 * 20)
    (ratio,) = results["ratios"]
    assert ratio["bytes_per_step"] < 1  # one vector per stat is smaller than a scalar per layer
    assert ratio["one_stat_first"] > 0 and ratio["one_stat_repeat"] > 0
    (saved,) = tmp_path.glob("serve-*.json")
    assert json.loads(saved.read_text())["summary"] == results["summary"]


def test_overhead_smoke(tmp_path):
    from benchmarks import overhead

    configs = [*overhead.IN_PROCESS_CONFIGS, overhead.DEBUGGER_NO_TENSOR]
    results = overhead.main(
        [
            "--models",
            "baseline_mlp",
            "--reps",
            "2",
            "--steps",
            "2",
            "--warmup-steps",
            "1",
            "--configs",
            ",".join(configs),
        ]
        + ["--out-dir", str(tmp_path)]
    )
    (measured,) = results["models"]
    assert measured["model"] == "baseline_mlp" and measured["steps_per_fit"] == 2
    assert set(measured["summary"]) == set(configs)
    others = len(overhead.IN_PROCESS_CONFIGS) - 1
    for config in overhead.IN_PROCESS_CONFIGS:
        times = measured["times"][config]
        # Per repetition the baseline trains before the first configuration and after each.
        fits = 2 * (others + 1) if config == overhead.NONE else 2
        assert len(times["wall_s"]) == len(times["cpu_s"]) == len(times["baseline_train_s"]) == fits
        # Training ends (every on_train_end done) before fit returns.
        assert all(0 < t <= w for t, w in zip(times["train_s"], times["wall_s"]))
    # Each configuration is compared with the mean of the baseline fits just before and after it.
    none = measured["times"][overhead.NONE]["train_s"]
    first = measured["times"][overhead.IN_PROCESS_CONFIGS[1]]["baseline_train_s"][0]
    assert first == pytest.approx((none[0] + none[1]) / 2)
    for entry in measured["summary"].values():
        assert entry["train_ratio"] > 0 and entry["cpu_ratio"] > 0
        low, high = entry["train_ratio_min_max"]
        assert low <= entry["train_ratio"] <= high
    assert measured["summary"][overhead.NONE]["train_ratio"] == 1.0
    # What each writes: nothing without a callback, events with ours, a dump with the debugger.
    assert measured["summary"][overhead.NONE]["bytes_per_step"] == 0
    assert measured["summary"][overhead.GH_FREQ_1]["bytes_per_step"] > 0
    assert measured["summary"][overhead.DEBUGGER_NO_TENSOR]["bytes_per_step"] > 0
    assert measured["debugger_runs"][overhead.DEBUGGER_NO_TENSOR]["times"][overhead.NONE]["bytes"] == 0
    assert measured["default_update_freq"] == overhead.default_update_freq() >= 1
    assert list(tmp_path.glob("overhead-*.json"))


def test_overhead_memory_smoke(tmp_path):
    from benchmarks import overhead

    configs = [overhead.NONE, overhead.GH_DEFAULT]
    results = overhead.main(
        ["--memory", "--models", "baseline_mlp", "--reps", "1", "--steps", "2", "--configs", ",".join(configs)]
        + ["--out-dir", str(tmp_path)]
    )
    (measured,) = results["models"]
    assert set(measured["summary"]) == set(configs)
    assert measured["summary"][overhead.NONE]["ratio"] == 1.0
    assert all(entry["peak_rss_mib_median"] > 100 for entry in measured["summary"].values())


def test_profile_step_smoke(tmp_path):
    from benchmarks import profile_step as ps

    results = ps.main(["--rounds", "2", "--block", "2", "--profile-steps", "2", "--out-dir", str(tmp_path)])
    steps = results["steps"]
    assert set(steps["summary"]) == set(ps.FUNCTIONS)
    assert all(len(steps["ms_per_step"][name]) == 2 for name in ps.FUNCTIONS)
    assert steps["summary"][ps.PLAIN]["ratio_mean"] == 1.0
    for summary in steps["summary"].values():
        low, high = summary["ratio_ci95"]
        assert 0 < low <= summary["ratio_mean"] <= high
    profile = results["profile"]
    # Ops are told apart by the capture's name scope: none in Keras's own step.
    assert profile[ps.PLAIN]["capture_ops"] == profile[ps.PLAIN_AGAIN]["capture_ops"] == 0
    assert 0 < profile[ps.UNLOGGED]["capture_ops"] < profile[ps.LOGGED]["capture_ops"]
    assert all(entry["model_op_us"] > 0 and entry["dispatches_per_step"] > 0 for entry in profile.values())
    # An unlogged step passes over the gradients; a logged one also over the
    # weights and the updates. (Op types, not op times: times depend on load.)
    unlogged_types, logged_types = profile[ps.UNLOGGED]["capture_op_types"], profile[ps.LOGGED]["capture_op_types"]
    assert unlogged_types.get("L2Loss", 0) > 0
    assert logged_types["L2Loss"] > unlogged_types["L2Loss"]
    assert sum(unlogged_types.values()) == profile[ps.UNLOGGED]["capture_ops"]
    assert all(len(entry) == 2 and entry[1] >= 0 for entry in profile[ps.UNLOGGED]["top_capture_ops"])
    assert ps._is_capture_op("StatefulPartitionedCall/gradient_health/L2Loss:L2Loss")
    assert not ps._is_capture_op("StatefulPartitionedCall/sgd/Mul:Mul")
    # The ops the recording adds to one traced step, counted in the graph.
    graph_ops = results["graph_ops"]
    assert set(graph_ops) == {ps.UNLOGGED, ps.LOGGED}
    assert 0 < graph_ops[ps.UNLOGGED]["total"] < graph_ops[ps.LOGGED]["total"]
    assert sum(graph_ops[ps.LOGGED]["types"].values()) == graph_ops[ps.LOGGED]["total"]
    # The non-finite count is a branch, counted with its ops.
    assert any(name.startswith("cond/") for name in graph_ops[ps.UNLOGGED]["types"])
    assert list(tmp_path.glob("profile_step-*.json"))


def test_gradient_tape_callback_writes_a_norm_per_variable_and_step(tmp_path):
    from benchmarks import overhead, workloads

    x, y = workloads.data("baseline_mlp", steps=3)
    model = workloads.compiled("baseline_mlp")
    model.fit(
        x,
        y,
        batch_size=32,
        epochs=1,
        verbose=0,
        callbacks=[overhead.GradientTapeCallback(str(tmp_path), x[:32], y[:32])],
    )
    tags = {}
    for event in _events(_only_file(tmp_path)):
        for value in event.summary.value:
            tags.setdefault(value.tag, []).append(event.step)
    assert sorted(tags) == sorted("grad_norm/" + v.path for v in model.trainable_variables)
    assert all(steps == [1, 2, 3] for steps in tags.values())


def test_workloads_build_with_their_sizes():
    from benchmarks import workloads

    # Step times are measured by the benchmark; the tests check the shapes only.
    for name in ("residual_cnn", "transformer", "lstm"):
        model = workloads.compiled(name)
        x, y = workloads.data(name, steps=1)
        assert len(x) == len(y) == workloads.WORKLOADS[name].batch_size
        assert model.predict(x[:2], verbose=0).shape == (2, workloads.NUM_CLASSES)
    assert workloads.big_mlp().count_params() > workloads.BIG_DEPTH * 1000 * 1000


def test_frontend_draw_smoke(tmp_path):
    pytest.importorskip("playwright.sync_api")
    from support import chromium

    from benchmarks import frontend_draw

    if not pathlib.Path(chromium.CHROMIUM).exists():
        pytest.skip("no Chromium at %s (make chromium)" % chromium.CHROMIUM)
    results = frontend_draw.main(["--layers", "4", "--steps", "30", "--reps", "1", "--out-dir", str(tmp_path)])
    measured = results["times"]["measured"]
    assert len(measured) == len(results["times"]["baseline"]) == 1
    # Drawn after its data arrived; the heatmap canvas holds painted pixels.
    assert 0 < measured[0]["data_ms"] < measured[0]["total_ms"] and measured[0]["heatmap_pixels"] > 0
    assert results["summary"]["measured"]["size"] == "gradient_health-r1-l4-s30"
    assert results["summary"]["measured"]["total_ratio"] > 0


def test_machine_names_the_benchmark_command():
    from benchmarks import common

    machine = common.machine("benchmarks.serve", ["--sizes", "1"])
    assert machine["command"] == "python -m benchmarks.serve --sizes 1"
    assert machine["nproc"] >= 1 and machine["versions"]["numpy"] == np.__version__


def test_reductions_smoke(tmp_path):
    from benchmarks import reductions

    results = reductions.main(["--model", "baseline_mlp", "--rounds", "2", "--block", "2", "--out-dir", str(tmp_path)])
    summary = results["calls"]["summary"]
    assert set(summary) == set(reductions.FUNCTIONS)
    assert summary[reductions.NORM]["ratio_mean"] == 1.0
    assert all(len(times) == 2 for times in results["calls"]["ms_per_step"].values())
    assert results["numpy_one_pass_us"] > 0
    assert list(tmp_path.glob("reductions-*.json"))


def test_reductions_variants_compute_the_same_statistics():
    from benchmarks import reductions

    variables = reductions.gradient_like_variables("baseline_mlp")
    assert [tuple(v.shape) for v in variables] == [(784, 128), (128,), (128, 10), (10,)]
    functions = reductions.reduction_functions(variables)
    reductions.check_same_numbers(functions, variables)
    norms, maxima, minima = (t.numpy() for t in functions[reductions.NORM_MAX_MIN](None))
    arrays = [v.numpy() for v in variables]
    np.testing.assert_allclose(norms, [0.5 * np.sum(a.astype(np.float64) ** 2) for a in arrays], rtol=1e-5)
    np.testing.assert_array_equal(maxima, [a.max() for a in arrays])
    np.testing.assert_array_equal(minima, [a.min() for a in arrays])
