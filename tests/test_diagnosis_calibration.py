"""Calibration: a zoo of real models (MLP, transformer, CNN, RNN) trained with the Keras callback gets its known verdict."""

from __future__ import annotations

import numpy as np
import pytest
from support import calibration
from support.calibration import CASES

from tb_gradhealth import cli, metadata, reader
from tb_gradhealth.diagnosis import diagnose, exploding, loss, vanishing

pytestmark = pytest.mark.slow

UPDATE_FREQS = calibration.update_freqs()
RUNS = [(name, freq) for freq in UPDATE_FREQS for name in CASES]
HEALTHY = [name for name, case in CASES.items() if case.verdict == "healthy"]
NO_LOSS_NOTE = (
    "no training loss recorded: findings do not show the loss trend, and 'not learning' is judged from the "
    "gradient norms"
)


def _ids(runs):
    return ["%s@%d" % run for run in runs]


@pytest.fixture(scope="module")
def zoo_logdir(calibration_runs) -> str:
    """Every case trained once, recorded at each update_freq checked (the slowest fixture of this module)."""
    return calibration_runs.zoo()


@pytest.fixture(scope="module")
def zoo(zoo_logdir):
    """{(case, update_freq): (series, diagnosis)}, read back from the event files through the reader."""
    provider, ctx, experiment_id = cli.provider_for_logdir(zoo_logdir)
    listed = set(reader.list_run_tags(provider, ctx, experiment_id))
    assert listed == {calibration.run_name(name, freq) for name, freq in RUNS}
    result = {}
    for name, freq in RUNS:
        series = reader.read_run(provider, ctx, experiment_id, calibration.run_name(name, freq))
        result[name, freq] = (series, diagnose(series))
    return result


def test_the_zoo_covers_families_and_failures():
    healthy_families = {case.family for case in CASES.values() if case.verdict == "healthy"}
    broken = [case for case in CASES.values() if case.verdict != "healthy"]
    assert len(HEALTHY) >= 6 and len(healthy_families) >= 4
    assert len(broken) >= 6 and len({kind for case in broken for kind in case.kinds}) >= 4
    assert calibration.default_update_freq() in UPDATE_FREQS and 1 in UPDATE_FREQS


@pytest.mark.parametrize("name, freq", RUNS, ids=_ids(RUNS))
def test_case_gets_its_verdict_and_findings(zoo, name, freq):
    series, diagnosis = zoo[name, freq]
    case = CASES[name]
    messages = [f.message for f in diagnosis.findings]
    assert diagnosis.verdict == case.verdict, messages
    kinds = tuple(f.kind for f in diagnosis.findings)
    if freq == 1 or "nonfinite" not in case.kinds:
        assert kinds == case.kinds, messages
    else:
        # An explosion that turns NaN between two logged steps leaves only a
        # NaN grad_norm_max at the next logged one: it is seen as non-finite.
        assert kinds in (case.kinds, ("nonfinite",)), messages
    # The notes say what could not be checked, and nothing else.
    assert (NO_LOSS_NOTE in diagnosis.notes) == (metadata.LOSS not in series)
    allowed = ("judged on steps up to", "vanishing gradients not judged")
    if freq > 1 and "nonfinite" in case.kinds:
        # A run that breaks within a few steps logged at a coarse update_freq
        # leaves too few of them for some rules; the notes say which.
        allowed += ("fewer than ",)
    for note in diagnosis.notes:
        assert note == NO_LOSS_NOTE or note.startswith(allowed)


@pytest.mark.parametrize(
    "name, freq", [run for run in RUNS if run[0] in HEALTHY], ids=_ids(r for r in RUNS if r[0] in HEALTHY)
)
def test_healthy_cases_get_no_finding(zoo, name, freq):
    _, diagnosis = zoo[name, freq]
    assert diagnosis.to_json() == {"verdict": "healthy", "findings": []}


def test_the_healthy_transformer_s_attention_is_small_yet_not_vanishing(zoo):
    """The false alarm the depth rule must not raise: query/key projections far below the output layer."""
    series, diagnosis = zoo["healthy_transformer_adam", 1]
    relative, max_abs = calibration.depth_ratios(series)
    layers = series[metadata.GRAD_NORM].layers
    small = [name for name, r, m in zip(layers, relative, max_abs) if max(r, m) <= vanishing.DEPTH_RATIO]
    assert small and all(name.startswith("attn") for name in small), small
    assert layers[0] not in small  # the embedding, nearer the input, gets a normal gradient
    assert diagnosis.findings == []


# Cases whose model does not learn at all: the loss falls by less than loss.STALLED_FALL.
NOT_LEARNING = ("vanishing_learning_rate_too_low", "vanishing_deep_sigmoid_mlp", "dead_relu_layer")


def _loss_fall(series) -> float:
    """Independent numpy: the fraction of its first quarter's median the loss fell by in its last quarter."""
    measured = calibration.measure(series)
    return (measured.loss_start - measured.loss_end) / measured.loss_start


@pytest.mark.parametrize("freq", UPDATE_FREQS)
def test_the_loss_falls_in_healthy_runs_and_stalls_where_nothing_learns(zoo, freq):
    """What "not learning" means, on the recorded losses: the threshold between them."""
    for name in CASES:
        series, _ = zoo[name, freq]
        # A loss at every step written in full (all of them at update_freq=1).
        np.testing.assert_array_equal(series[metadata.LOSS].steps, series[metadata.WEIGHT_NORM].steps)
        if name in HEALTHY:
            assert _loss_fall(series) > loss.STALLED_FALL, name
        if name in NOT_LEARNING:
            assert _loss_fall(series) < loss.STALLED_FALL, name


@pytest.mark.parametrize("freq", UPDATE_FREQS)
def test_every_finding_shows_the_recorded_loss(zoo, freq):
    """The evidence's loss numbers against numpy on the recorded loss, up to the first non-finite step."""
    for name in CASES:
        series, diagnosis = zoo[name, freq]
        measured = calibration.measure(series)
        recorded = dict(zip(series[metadata.LOSS].steps.tolist(), series[metadata.LOSS].values[:, 0].tolist()))
        for finding in diagnosis.findings:
            evidence = finding.evidence
            if finding.kind == "nonfinite":
                before = [value for step, value in recorded.items() if step < finding.first_step]
                assert evidence["loss_before"] == pytest.approx(before[-1]), name
            elif finding.kind == "exploding":
                assert evidence["loss_start"] == pytest.approx(recorded[int(series[metadata.LOSS].steps[0])]), name
                if finding.first_step in recorded:
                    assert evidence["loss_at_first_step"] == pytest.approx(recorded[finding.first_step]), name
                else:  # a fit's last step, not a multiple of the update_freq: written without the loss
                    assert "loss_at_first_step" not in evidence, name
            else:
                assert evidence["loss_start"] == pytest.approx(measured.loss_start), name
                assert evidence["loss_end"] == pytest.approx(measured.loss_end), name
                assert evidence["loss_fall"] == pytest.approx(_loss_fall(series), abs=1e-6), name
                assert "The loss went from %.2g to %.2g" % (measured.loss_start, measured.loss_end) in finding.message


@pytest.mark.parametrize("freq", UPDATE_FREQS)
def test_runs_without_the_loss_get_the_same_findings(zoo, freq):
    """Runs written without the loss: 'not learning' judged from the gradient norms finds the same."""
    for name in CASES:
        series, diagnosis = zoo[name, freq]
        without = diagnose({stat: s for stat, s in series.items() if stat != metadata.LOSS})
        expected = [(f.kind, f.layers, f.first_step) for f in diagnosis.findings]
        assert [(f.kind, f.layers, f.first_step) for f in without.findings] == expected, name
        assert NO_LOSS_NOTE in without.notes


def test_converging_cases_really_shrink_their_gradients(zoo):
    """What the not-learning rule must not confuse with vanishing (judged without the loss)."""
    for name in ("healthy_mlp_relu_adam", "healthy_mlp_converging_momentum"):
        # Over the case's first epoch: a later epoch (when the default
        # update_freq needs more steps) starts where it has converged.
        norms = np.sqrt(np.square(zoo[name, 1][0][metadata.GRAD_NORM].values).sum(axis=1))[
            : calibration.CASES[name].steps
        ]
        quarter = len(norms) // 4
        assert np.median(norms[-quarter:]) / np.median(norms[:quarter]) < 0.2, name
    series, _ = zoo["healthy_mlp_converging_momentum", 1]
    # Its updates are small too; only the shrinking norms tell it apart.
    assert np.median(series[metadata.UPDATE_RATIO].values) < 10 * vanishing.UPDATE_RATIO_TINY


def _leading_block(series) -> tuple[str, ...]:
    """Independent numpy: the layers from the input whose both size-fair measures are at most the depth ratio."""
    relative, max_abs = calibration.depth_ratios(series)
    layers = series[metadata.GRAD_NORM].layers
    block = []
    for name, r, m in zip(layers[:-1], relative, max_abs):
        if max(r, m) > vanishing.DEPTH_RATIO:
            break
        block.append(name)
    return tuple(block)


@pytest.mark.parametrize("name", ["vanishing_deep_sigmoid_mlp", "vanishing_deep_sigmoid_cnn"])
@pytest.mark.parametrize("freq", UPDATE_FREQS)
def test_deep_sigmoid_networks_vanish_in_their_first_layers(zoo, name, freq):
    series, diagnosis = zoo[name, freq]
    (finding,) = diagnosis.findings
    layers = series[metadata.GRAD_NORM].layers
    assert finding.layers == _leading_block(series)
    assert 4 <= len(finding.layers) <= len(layers) - 3
    assert finding.first_step == 0
    assert finding.severity == "critical"
    relative, max_abs = calibration.depth_ratios(series)
    n = len(finding.layers)
    np.testing.assert_allclose(finding.evidence["ratio_to_output"], relative[:n], rtol=1e-6)
    np.testing.assert_allclose(finding.evidence["max_abs_ratio_to_output"], max_abs[:n], rtol=1e-6)
    # A trend with depth: it grows towards the output, layer after layer.
    assert (np.diff(np.log10(relative[: n + 1])) > 0).all()


@pytest.mark.parametrize("freq", UPDATE_FREQS)
def test_learning_rate_too_low_is_flagged_on_every_layer(zoo, freq):
    series, diagnosis = zoo["vanishing_learning_rate_too_low", freq]
    (finding,) = diagnosis.findings
    assert finding.layers == series[metadata.GRAD_NORM].layers
    assert (finding.first_step, finding.advice) == (0, vanishing.ADVICE_UPDATES)
    assert "ratio_to_output" not in finding.evidence
    assert max(finding.evidence["update_ratio"]) <= vanishing.UPDATE_RATIO_TINY
    # "Not learning" is the recorded loss not falling, not a stand-in.
    assert "norm_change" not in finding.evidence and "while the loss does not fall" in finding.message
    assert finding.evidence["loss_fall"] < loss.STALLED_FALL


NONFINITE_CASES = [name for name, case in CASES.items() if case.verdict == "nonfinite"]
EXPLODING_CASES = [name for name, case in CASES.items() if "exploding" in case.kinds]


@pytest.mark.parametrize("name", NONFINITE_CASES)
@pytest.mark.parametrize("freq", UPDATE_FREQS)
def test_nonfinite_starts_at_the_first_nan_step_and_is_critical(zoo, name, freq):
    series, diagnosis = zoo[name, freq]
    finding = diagnosis.findings[0]
    assert (finding.first_step, finding.layers) == calibration.first_nonfinite(series)
    assert finding.severity == "critical"


@pytest.mark.parametrize("name", EXPLODING_CASES)
def test_exploding_starts_where_the_model_norm_passes_100x_its_start(zoo, name):
    series, diagnosis = zoo[name, 1]
    (finding,) = [f for f in diagnosis.findings if f.kind == "exploding"]
    steps, growth = calibration.model_norm_growth(calibration.healthy_part(series))
    crossing = int(np.argmax(growth >= exploding.EXPLODING_GROWTH))
    assert growth[crossing] >= exploding.EXPLODING_GROWTH and (growth[:crossing] < exploding.EXPLODING_GROWTH).all()
    assert finding.first_step == steps[crossing]
    # The layers that grew 100x themselves by then (numpy on the same rows).
    values = series[metadata.GRAD_NORM_MAX].values
    row = list(series[metadata.GRAD_NORM_MAX].steps).index(finding.first_step)
    layer_growth = values[row] / values[:3].min(axis=0)
    layers = series[metadata.GRAD_NORM_MAX].layers
    grown = tuple(layer for layer, g in zip(layers, layer_growth) if g >= exploding.EXPLODING_GROWTH)
    assert finding.layers == (grown or (layers[int(np.argmax(layer_growth))],))
    nonfinite_step, _ = calibration.first_nonfinite(series)
    if nonfinite_step is not None:
        # Seen before the run breaks, within a few logged steps of it.
        assert nonfinite_step - 5 <= finding.first_step <= nonfinite_step
        assert finding.severity == "critical"


@pytest.mark.parametrize("name", NONFINITE_CASES)
@pytest.mark.parametrize("freq", UPDATE_FREQS)
def test_nothing_but_nonfinite_comes_from_after_the_first_nonfinite_step(zoo, name, freq):
    """On real broken runs: cutting every step after the first NaN one changes no other finding."""
    series, diagnosis = zoo[name, freq]
    cut = diagnose(calibration.healthy_part(series))
    others = [f.to_json() for f in diagnosis.findings if f.kind != "nonfinite"]
    assert [f.to_json() for f in cut.findings if f.kind != "nonfinite"] == others
    assert not any(f.kind in ("vanishing", "dead") for f in diagnosis.findings)


@pytest.mark.parametrize("freq", UPDATE_FREQS)
def test_the_clipped_rnn_explodes_in_its_recurrent_layer(zoo, freq):
    series, diagnosis = zoo["exploding_relu_rnn_clipped", freq]
    (finding,) = diagnosis.findings
    assert "rnn/simple_rnn_cell" in finding.layers
    assert calibration.first_nonfinite(series) == (None, ())  # the clipped updates keep the weights finite


@pytest.mark.parametrize("freq", UPDATE_FREQS)
def test_dead_layer_and_the_layers_behind_it(zoo, freq):
    series, diagnosis = zoo["dead_relu_layer", freq]
    (finding,) = diagnosis.findings
    layers = series[metadata.GRAD_NORM].layers
    assert finding.layers == layers[: 2 + 1]
    assert (series[metadata.GRAD_NORM_MAX].values[:, :3] == 0).all()
    assert (series[metadata.GRAD_NORM_MAX].values[:, 3:] > 0).all()
    assert finding.first_step == 0
    assert finding.evidence["zero_fraction"] == [1.0, 1.0, 1.0]
    assert "No gradient passes %s" % layers[2] in finding.message
    # Nothing else learns either: the loss stalls, so the finding is critical.
    assert finding.evidence["loss_fall"] < loss.STALLED_FALL and finding.severity == "critical"


def test_the_measured_numbers_agree_with_the_diagnosis(zoo):
    """The calibration table's numbers (docs/diagnosis.md) come from `calibration.measure`: it reads them right."""
    for name in CASES:
        series, diagnosis = zoo[name, 1]
        measured = calibration.measure(series)
        assert (measured.first_nonfinite_step is not None) == (diagnosis.verdict == "nonfinite"), name
        if diagnosis.verdict == "healthy":
            assert measured.largest_growth < exploding.EXPLODING_GROWTH and measured.largest_zero_fraction == 0
        row = calibration.table_row(name, series, diagnosis)
        assert row.startswith("| `%s` | %s |" % (name, CASES[name].family)) and row.count("|") == 11


def test_report_agrees_with_the_health_route_on_trained_runs(zoo_logdir, capsys):
    """`tb-gradhealth report --json` and its exit status against /health of TensorBoard's own app."""
    from tb_server import PLUGIN_ROUTE, strict_json, wsgi_client

    from tb_gradhealth import cli

    response = wsgi_client(zoo_logdir).get(PLUGIN_ROUTE + "/health")
    assert response.status_code == 200
    served = strict_json(response.get_data())
    status = cli.main(["report", zoo_logdir, "--json"])
    assert strict_json(capsys.readouterr().out) == served
    assert status == cli.EXIT_FINDINGS
    verdicts = {run["run"]: run["verdict"] for run in served["runs"]}
    assert verdicts == {calibration.run_name(name, freq): CASES[name].verdict for name, freq in RUNS}
    for name in CASES:
        status = cli.main(["report", zoo_logdir, "--run", calibration.run_name(name, UPDATE_FREQS[0])])
        capsys.readouterr()
        assert status == (cli.EXIT_HEALTHY if CASES[name].verdict == "healthy" else cli.EXIT_FINDINGS)
