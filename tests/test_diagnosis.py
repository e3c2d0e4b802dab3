"""The diagnosis rules on hand-made statistics: each threshold, the evidence, the JSON form and missing statistics."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from tb_gradhealth import metadata
from tb_gradhealth.diagnosis import (
    KINDS,
    Finding,
    RunDiagnosis,
    dead,
    diagnose,
    exploding,
    vanishing,
)
from tb_gradhealth.diagnosis import loss as loss_rule
from tb_gradhealth.series import StatSeries

LAYERS = ("in", "hidden_1", "hidden_2", "out")
N_STEPS = 40
STEPS = np.arange(N_STEPS, dtype=np.int64) * 10  # logged every 10 steps
WEIGHT_NORM = 5.0  # every layer, every step
GRAD_NORM = 0.5  # a healthy, flat gradient norm
UPDATE_RATIO = 1e-3  # the rule-of-thumb healthy update size
RNG_SEED = 7
LOSS_START = 2.3  # chance level of 10 classes
FALLING_LOSS = LOSS_START * np.geomspace(1, 0.2, N_STEPS)  # a model that learns
FLAT_LOSS = np.full(N_STEPS, LOSS_START)  # one that does not


def _series(stat: str, values, layers=LAYERS, steps=STEPS, recorded=None) -> StatSeries:
    values = np.asarray(values, dtype=np.float64)
    return StatSeries(stat, tuple(layers), np.asarray(steps, np.int64), np.zeros(len(steps)), values, recorded)


def _loss_series(values, steps=STEPS) -> StatSeries:
    return _series(metadata.LOSS, np.asarray(values, float)[:, None], layers=(metadata.LOSS,), steps=steps)


def _healthy(noise: float = 0.3, loss=FALLING_LOSS, **overrides) -> dict[str, StatSeries]:
    """Every built-in statistic of a healthy run and its loss: flat noisy norms, sane updates, nothing zero or NaN.

    `loss=None` leaves the loss out, as in runs recorded without it.
    """
    rng = np.random.default_rng(RNG_SEED)
    shape = (N_STEPS, len(LAYERS))
    grad = GRAD_NORM * np.exp(rng.normal(0, noise, shape))
    values = {
        metadata.GRAD_NORM: grad,
        metadata.GRAD_NORM_MAX: grad * 1.5,
        metadata.GRAD_MAX_ABS: grad / 10,
        metadata.NONFINITE: np.zeros(shape),
        metadata.WEIGHT_NORM: np.full(shape, WEIGHT_NORM),
        metadata.UPDATE_RATIO: np.full(shape, UPDATE_RATIO),
    }
    values.update(overrides)
    series = {stat: _series(stat, v) for stat, v in values.items() if v is not None}
    if loss is not None:
        series[metadata.LOSS] = _loss_series(loss)
    return series


def test_healthy_run_has_no_finding_and_no_note():
    diagnosis = diagnose(_healthy())
    assert diagnosis.to_json() == {"verdict": "healthy", "findings": []}
    assert diagnosis.notes == ()


# --- nonfinite ---------------------------------------------------------------


def _with_nan_from(row: int, columns, values=None, steps_nan=None):
    values = _healthy()[metadata.GRAD_NORM].values.copy() if values is None else values
    values[row:steps_nan, columns] = np.nan
    return values


def test_nonfinite_names_the_first_step_and_its_layers():
    counts = np.zeros((N_STEPS, len(LAYERS)))
    counts[12, [1, 3]] = [4, 7]
    counts[13:, :] = 100
    diagnosis = diagnose(_healthy(**{metadata.NONFINITE: counts}))
    (finding,) = diagnosis.findings
    assert diagnosis.verdict == "nonfinite"
    assert (finding.kind, finding.first_step, finding.layers) == ("nonfinite", STEPS[12], ("hidden_1", "out"))
    assert finding.severity == "critical"  # still non-finite at the last step
    assert finding.evidence["elements_at_first_step"] == [4.0, 7.0]
    assert finding.evidence["steps_nonfinite"] == N_STEPS - 12
    assert "step %d" % STEPS[12] in finding.message and "hidden_1, out" in finding.message


def test_nonfinite_that_training_got_past_is_a_warning():
    counts = np.zeros((N_STEPS, len(LAYERS)))
    counts[3, :] = 2  # e.g. a step a loss-scale optimizer skipped
    (finding,) = diagnose(_healthy(**{metadata.NONFINITE: counts})).findings
    assert (finding.first_step, finding.severity) == (STEPS[3], "warning")
    assert "recovered" in finding.message


def test_nonfinite_weights_make_it_critical():
    counts = np.zeros((N_STEPS, len(LAYERS)))
    counts[3, 0] = 1
    weights = np.full((N_STEPS, len(LAYERS)), WEIGHT_NORM)
    weights[4:, 0] = np.nan
    (finding,) = diagnose(_healthy(**{metadata.NONFINITE: counts, metadata.WEIGHT_NORM: weights})).findings
    assert finding.severity == "critical"
    assert finding.evidence["weights_nonfinite"] == 1


def test_nonfinite_seen_between_logged_steps_by_grad_norm_max_only():
    norm_max = _healthy()[metadata.GRAD_NORM_MAX].values.copy()
    norm_max[20, 2] = np.nan
    (finding,) = diagnose(
        _healthy(**{metadata.NONFINITE: None, metadata.GRAD_MAX_ABS: None, metadata.GRAD_NORM_MAX: norm_max})
    ).findings
    assert (finding.kind, finding.first_step, finding.layers) == ("nonfinite", STEPS[20], ("hidden_2",))


def test_overflowed_norm_of_finite_elements_is_exploding_not_nonfinite():
    # Elements of ~1e20 square to more than float32 holds: the norm is +Inf,
    # the elements (counted by `nonfinite`, seen by `grad_max_abs`) are finite.
    grad = _healthy()[metadata.GRAD_NORM].values.copy()
    grad[30:, 1] = np.inf
    diagnosis = diagnose(_healthy(**{metadata.GRAD_NORM: grad, metadata.GRAD_NORM_MAX: None}))
    assert [f.kind for f in diagnosis.findings] == ["exploding"]
    assert diagnosis.findings[0].first_step == STEPS[30]


def test_infinite_norm_is_nonfinite_when_nothing_tells_elements_apart():
    grad = _healthy()[metadata.GRAD_NORM].values.copy()
    grad[30:, 1] = np.inf
    diagnosis = diagnose({metadata.GRAD_NORM: _series(metadata.GRAD_NORM, grad)})
    assert diagnosis.verdict == "nonfinite"
    assert diagnosis.findings[0].first_step == STEPS[30]


# --- exploding ---------------------------------------------------------------


def _growing(from_row: int, factor_per_step: float, layers=slice(None)) -> np.ndarray:
    grad = _healthy(noise=0.0)[metadata.GRAD_NORM].values.copy()
    growth = factor_per_step ** np.clip(np.arange(N_STEPS) - from_row, 0, None)
    grad[:, layers] *= growth[:, None]
    return grad


def _exploding_only(grad):
    return _healthy(noise=0.0, **{metadata.GRAD_NORM: grad, metadata.GRAD_NORM_MAX: None, metadata.GRAD_MAX_ABS: None})


def test_exploding_starts_where_the_model_norm_passes_the_threshold():
    grad = _growing(from_row=10, factor_per_step=3.0)
    (finding,) = diagnose(_exploding_only(grad)).findings
    # Independent: model norm over the smallest of the first three.
    norms = np.linalg.norm(grad, axis=1)
    expected_row = int(np.argmax(norms / norms[:3].min() >= exploding.EXPLODING_GROWTH))
    assert (finding.kind, finding.first_step, finding.layers) == ("exploding", STEPS[expected_row], LAYERS)
    assert finding.severity == "critical"  # still high at the end
    assert finding.evidence["baseline_norm"] == pytest.approx(norms[:3].min())
    assert finding.evidence["peak_norm"] == pytest.approx(norms.max())


def test_exploding_names_the_layer_that_grew():
    grad = _growing(from_row=5, factor_per_step=4.0, layers=slice(2, 3))
    (finding,) = diagnose(_exploding_only(grad)).findings
    assert finding.layers == ("hidden_2",)


def test_growth_just_below_the_threshold_is_healthy():
    grad = _healthy(noise=0.0)[metadata.GRAD_NORM].values.copy()
    grad[20:] *= exploding.EXPLODING_GROWTH * 0.9
    assert diagnose(_exploding_only(grad)).findings == []
    grad[25] *= 1.2  # one step over: 108x
    (finding,) = diagnose(_exploding_only(grad)).findings
    assert (finding.first_step, finding.severity) == (STEPS[25], "warning")  # it came back down


def test_explosion_at_the_second_step_is_still_measured_from_the_start():
    grad = _healthy(noise=0.0)[metadata.GRAD_NORM].values.copy()
    grad[1:] *= 1e4
    (finding,) = diagnose(_exploding_only(grad)).findings
    assert finding.first_step == STEPS[1]


def test_a_norm_falling_between_the_first_logged_steps_is_no_growth():
    # With update_freq > 1 the first logged steps are far apart: a model that
    # leaves its initialisation may fall 140x from the first to the third.
    grad = _healthy(noise=0.0)[metadata.GRAD_NORM].values.copy()
    grad[0] *= 140.0
    grad[1] *= 12.0
    assert diagnose(_exploding_only(grad)).findings == []


def test_exploding_then_nonfinite_is_critical_and_says_so():
    grad = _growing(from_row=5, factor_per_step=10.0)
    grad[12:] = np.nan
    counts = np.zeros_like(grad)
    counts[12:] = 3
    diagnosis = diagnose(
        _healthy(
            noise=0.0,
            **{
                metadata.GRAD_NORM: grad,
                metadata.GRAD_NORM_MAX: None,
                metadata.GRAD_MAX_ABS: None,
                metadata.NONFINITE: counts,
            },
        )
    )
    assert [(f.kind, f.first_step) for f in diagnosis.findings] == [("nonfinite", STEPS[12]), ("exploding", STEPS[7])]
    assert diagnosis.findings[1].severity == "critical"
    assert "non-finite from step %d" % STEPS[12] in diagnosis.findings[1].message


def test_a_converging_run_whose_norms_fall_is_healthy():
    # Falls 1000x over the run, with updates getting tiny as it converges.
    fall = np.geomspace(1, 1e-3, N_STEPS)[:, None]
    grad = GRAD_NORM * fall * np.ones((1, len(LAYERS)))
    diagnosis = diagnose(
        _healthy(
            noise=0.0,
            **{
                metadata.GRAD_NORM: grad,
                metadata.GRAD_NORM_MAX: grad,
                metadata.GRAD_MAX_ABS: grad / 10,
                metadata.UPDATE_RATIO: UPDATE_RATIO * fall * np.ones((1, len(LAYERS))),
            },
        )
    )
    assert diagnosis.findings == []


# --- vanishing ---------------------------------------------------------------

# A smooth geometric shrink towards the input, as in a deep sigmoid network
# (about 10x per layer here).
VANISHING_PROFILE = (1e-4, 1e-3, 1e-2 * 5, 1.0)


def _depth_profile(ratios, size_factors=(1, 1, 1, 1), loss=FLAT_LOSS):
    """Gradients whose size-fair measures are `ratios` of the output layer's; layers sized by `size_factors`.

    A layer k times larger has a k times larger weight norm and gradient
    norm (both grow like sqrt(parameters)); its largest element does not.
    The loss is flat by default: a model whose first layers vanish learns little.
    """
    ratios = np.asarray(ratios, float)[None, :]
    size = np.asarray(size_factors, float)[None, :]
    ones = np.ones((N_STEPS, 1))
    return _healthy(
        noise=0.0,
        loss=loss,
        **{
            metadata.GRAD_NORM: GRAD_NORM * ratios * size * ones,
            metadata.GRAD_NORM_MAX: GRAD_NORM * ratios * size * ones,
            metadata.GRAD_MAX_ABS: GRAD_NORM / 10 * ratios * ones,
            metadata.WEIGHT_NORM: WEIGHT_NORM * size * ones,
        },
    )


def test_vanishing_flags_the_block_of_layers_from_the_input():
    (finding,) = diagnose(_depth_profile([1e-5, 5e-3, 0.2, 1.0])).findings
    assert (finding.kind, finding.layers, finding.first_step) == ("vanishing", ("in", "hidden_1"), STEPS[0])
    assert finding.evidence["ratio_to_output"] == pytest.approx([1e-5, 5e-3])
    assert finding.evidence["max_abs_ratio_to_output"] == pytest.approx([1e-5, 5e-3])
    assert finding.severity == "critical"  # 1e-5 <= 1e-2 * 1e-2
    assert "relative gradient" in finding.message and "2 layers nearest the input" in finding.message


def test_vanishing_just_above_the_threshold_is_healthy_and_severity_follows_depth():
    threshold = vanishing.DEPTH_RATIO
    assert diagnose(_depth_profile([threshold * 0.9, threshold * 1.1, 0.05, 1.0])).findings == []
    (finding,) = diagnose(_depth_profile([threshold * 0.9, threshold * 0.95, 0.05, 1.0])).findings
    assert (finding.layers, finding.severity) == (("in", "hidden_1"), "warning")


def test_one_small_layer_is_not_vanishing():
    # E.g. an input-side normalisation layer or embedding: small by its own
    # nature; vanishing is layer after layer.
    assert diagnose(_depth_profile([1e-4, 1.0, 1.0, 1.0])).findings == []


def test_small_layers_behind_a_normal_one_are_not_vanishing():
    # Attention's query and key projections: tiny gradients behind a near-uniform
    # softmax, while the embedding before them gets a normal one. The old
    # rule flagged them against the output layer.
    assert diagnose(_depth_profile([1.0, 1e-3, 1e-4, 1.0])).findings == []


def test_a_block_that_gets_all_its_smallness_at_one_layer_boundary_is_not_vanishing():
    # Query and key first in the model, then their value projection, 10,000x larger.
    assert diagnose(_depth_profile([1e-3, 1e-4, 1.0, 1.0])).findings == []
    last, step = 5e-3, vanishing.MAX_STEP_OUT_OF_BLOCK
    assert diagnose(_depth_profile([1e-3, last, last * step * 1.2, 1.0])).findings == []
    (finding,) = diagnose(_depth_profile([1e-3, last, last * step * 0.8, 1.0])).findings
    assert finding.layers == ("in", "hidden_1")


def test_an_output_layer_far_above_all_the_others_is_no_vanishing():
    # E.g. a zero-initialised output layer: its relative gradient is huge, so
    # every other layer looks small next to it, without any trend with depth.
    assert diagnose(_depth_profile([5e-3, 5e-3, 5e-3, 1.0])).findings == []


def test_vanishing_compares_layers_of_different_sizes_fairly():
    # A 100x smaller input layer has a 100x smaller raw gradient norm, but the
    # same relative gradient and largest element: not vanishing.
    assert diagnose(_depth_profile([1, 1, 1, 1], size_factors=(0.01, 0.01, 1, 1))).findings == []


def test_vanishing_needs_every_size_fair_measure_to_agree():
    # Embedding-like input layers: huge weights, sparse gradient, so a tiny
    # relative gradient, but normal-sized gradient elements.
    series = _depth_profile([1, 1, 1, 1])
    weights = series[metadata.WEIGHT_NORM].values.copy()
    weights[:, :2] *= 1e3
    series[metadata.WEIGHT_NORM] = _series(metadata.WEIGHT_NORM, weights)
    assert diagnose(series).findings == []


def test_vanishing_falls_back_to_raw_norms_with_a_note():
    series = _depth_profile(VANISHING_PROFILE)
    only_norms = {metadata.GRAD_NORM: series[metadata.GRAD_NORM]}
    diagnosis = diagnose(only_norms)
    assert diagnosis.verdict == "vanishing"
    assert diagnosis.findings[0].layers == ("in", "hidden_1")
    assert any("raw gradient norms" in note for note in diagnosis.notes)


def test_first_step_of_vanishing_that_sets_in_later():
    series = _depth_profile([1, 1, 1, 1])
    for stat in (metadata.GRAD_NORM, metadata.GRAD_MAX_ABS):
        values = series[stat].values.copy()
        values[15:, :3] *= np.array(VANISHING_PROFILE[:3])
        series[stat] = _series(stat, values)
    (finding,) = diagnose(series).findings
    assert (finding.layers, finding.first_step) == (("in", "hidden_1"), STEPS[15])


def test_vanishing_while_the_loss_falls_is_a_warning_that_says_so():
    (finding,) = diagnose(_depth_profile([1e-5, 5e-3, 0.2, 1.0], loss=FALLING_LOSS)).findings
    assert (finding.layers, finding.severity) == (("in", "hidden_1"), "warning")
    assert finding.evidence["loss_start"] == pytest.approx(np.median(FALLING_LOSS[: N_STEPS // 4]))
    assert finding.evidence["loss_end"] == pytest.approx(np.median(FALLING_LOSS[-(N_STEPS // 4) :]))
    assert "still learn" in finding.message


def _stalled(update_ratio: float, change: float, loss=None):
    """Updates of `update_ratio` while the gradient norm changes by `change` over the run (no loss by default)."""
    trend = np.geomspace(1, change, N_STEPS)[:, None] * np.ones((1, len(LAYERS)))
    return _healthy(
        noise=0.0,
        loss=loss,
        **{
            metadata.GRAD_NORM: GRAD_NORM * trend,
            metadata.GRAD_NORM_MAX: GRAD_NORM * trend,
            metadata.GRAD_MAX_ABS: GRAD_NORM / 10 * trend,
            metadata.UPDATE_RATIO: np.full((N_STEPS, len(LAYERS)), update_ratio),
        },
    )


def test_tiny_updates_with_flat_gradients_are_vanishing_without_a_loss():
    diagnosis = diagnose(_stalled(vanishing.UPDATE_RATIO_TINY / 2, change=1.0))
    (finding,) = diagnosis.findings
    assert (finding.kind, finding.layers, finding.first_step) == ("vanishing", LAYERS, STEPS[0])
    assert finding.evidence["update_ratio"] == pytest.approx([vanishing.UPDATE_RATIO_TINY / 2] * 4)
    assert finding.evidence["norm_change"] == pytest.approx([1.0] * 4)
    assert "gradient norm stays flat" in finding.message
    assert finding.advice == vanishing.ADVICE_UPDATES
    assert any("no training loss recorded" in note for note in diagnosis.notes)


def test_tiny_updates_while_gradients_fall_are_convergence_not_vanishing_without_a_loss():
    assert diagnose(_stalled(vanishing.UPDATE_RATIO_TINY / 2, change=0.05)).findings == []


def test_small_updates_above_the_threshold_are_healthy():
    assert diagnose(_stalled(vanishing.UPDATE_RATIO_TINY * 2, change=1.0)).findings == []
    assert diagnose(_stalled(vanishing.UPDATE_RATIO_TINY * 2, change=1.0, loss=FLAT_LOSS)).findings == []


def test_with_the_loss_not_learning_means_the_loss_does_not_fall():
    tiny = vanishing.UPDATE_RATIO_TINY / 2
    # Flat gradients, but the loss falls: the model learns (the gradient
    # proxy would have called it stalled).
    assert diagnose(_stalled(tiny, change=1.0, loss=FALLING_LOSS)).findings == []
    # Falling gradients, but the loss is flat: it does not learn (the proxy
    # would have called it converging).
    (finding,) = diagnose(_stalled(tiny, change=0.05, loss=FLAT_LOSS)).findings
    assert (finding.kind, finding.layers) == ("vanishing", LAYERS)
    assert "norm_change" not in finding.evidence
    assert "the loss does not fall" in finding.message
    assert (finding.evidence["loss_start"], finding.evidence["loss_end"]) == (LOSS_START, LOSS_START)
    assert finding.evidence["loss_fall"] == 0.0


def test_the_loss_stalls_below_a_fall_of_stalled_fall():
    tiny = vanishing.UPDATE_RATIO_TINY / 2
    quarter = N_STEPS // 4

    def loss_falling_by(fraction):
        loss = np.full(N_STEPS, LOSS_START)
        loss[-quarter:] = LOSS_START * (1 - fraction)
        return loss

    assert diagnose(_stalled(tiny, 1.0, loss=loss_falling_by(loss_rule.STALLED_FALL * 1.1))).findings == []
    (finding,) = diagnose(_stalled(tiny, 1.0, loss=loss_falling_by(loss_rule.STALLED_FALL * 0.9))).findings
    assert finding.evidence["loss_fall"] == pytest.approx(loss_rule.STALLED_FALL * 0.9)
    # A rising loss does not fall either.
    assert diagnose(_stalled(tiny, 1.0, loss=loss_falling_by(-0.5))).verdict == "vanishing"


# --- dead --------------------------------------------------------------------


def _zeroed(rows, columns):
    series = _healthy()
    for stat in (metadata.GRAD_NORM, metadata.GRAD_NORM_MAX, metadata.GRAD_MAX_ABS):
        values = series[stat].values.copy()
        values[rows, columns] = 0.0
        series[stat] = _series(stat, values)
    return series


def test_dead_block_from_the_input_names_its_last_layer():
    (finding,) = diagnose(_zeroed(slice(None), slice(0, 2))).findings
    assert (finding.kind, finding.layers, finding.first_step) == ("dead", ("in", "hidden_1"), STEPS[0])
    assert finding.severity == "warning"
    assert finding.evidence["zero_fraction"] == [1.0, 1.0]
    assert "No gradient passes hidden_1" in finding.message


def test_dead_layers_while_the_loss_does_not_fall_are_critical():
    series = _zeroed(slice(None), slice(0, 2))
    series[metadata.LOSS] = _loss_series(FLAT_LOSS)
    (finding,) = diagnose(series).findings
    assert (finding.kind, finding.severity, finding.evidence["loss_fall"]) == ("dead", "critical", 0.0)
    assert finding.message.endswith("(fell by 0.0%). The model does not learn.")
    # Without the loss nothing shows that the model does not learn.
    del series[metadata.LOSS]
    assert [f.severity for f in diagnose(series).findings] == ["warning"]


def test_dead_needs_most_steps():
    half = N_STEPS // 2
    (finding,) = diagnose(_zeroed(slice(half, None), [2])).findings
    assert (finding.layers, finding.first_step) == (("hidden_2",), STEPS[half])
    assert finding.evidence["zero_fraction"] == [dead.DEAD_FRACTION]
    assert "No gradient passes" not in finding.message  # not a block from the input
    assert diagnose(_zeroed(slice(half + 1, None), [2])).findings == []


def test_every_layer_dead_is_critical_and_not_also_vanishing():
    diagnosis = diagnose(_zeroed(slice(None), slice(None)))
    assert [(f.kind, f.severity, f.layers) for f in diagnosis.findings] == [("dead", "critical", LAYERS)]


def test_dead_layers_are_not_reported_as_vanishing_too():
    series = _zeroed(slice(None), [0])
    assert [f.kind for f in diagnose(series).findings] == ["dead"]


# --- a broken run ------------------------------------------------------------

BROKEN_FROM = 10  # row of the first non-finite step in the broken runs below


def _after_breaking(kind: str) -> dict[str, StatSeries]:
    """A healthy run (flat loss) whose finite statistics after `BROKEN_FROM` would show `kind` if judged."""
    series = _healthy(loss=FLAT_LOSS)
    values = {stat: s.values.copy() for stat, s in series.items() if stat != metadata.LOSS}
    later = slice(BROKEN_FROM + 1, None)
    if kind == "dead":
        for stat in (metadata.GRAD_NORM, metadata.GRAD_NORM_MAX, metadata.GRAD_MAX_ABS):
            values[stat][later, :2] = 0.0
    elif kind == "exploding":
        for stat in (metadata.GRAD_NORM, metadata.GRAD_NORM_MAX, metadata.GRAD_MAX_ABS):
            values[stat][later] *= 1e4
    elif kind == "vanishing":
        for stat in (metadata.GRAD_NORM, metadata.GRAD_NORM_MAX, metadata.GRAD_MAX_ABS):
            values[stat][later] *= np.array([1e-6, 1e-5, 1e-4, 1.0])
        values[metadata.UPDATE_RATIO][later] = 1e-9
    series.update({stat: _series(stat, v) for stat, v in values.items()})
    return series


def _nonfinite_from(series: dict[str, StatSeries], row: int, until=None) -> dict[str, StatSeries]:
    """`series` with NaN gradient elements in the output layer from `row` (to `until`)."""
    counts = np.zeros((N_STEPS, len(LAYERS)))
    counts[row:until, -1] = 3
    return {**series, metadata.NONFINITE: _series(metadata.NONFINITE, counts)}


@pytest.mark.parametrize("kind", ["dead", "exploding", "vanishing"])
def test_a_run_that_did_not_recover_is_judged_up_to_its_first_nonfinite_step(kind):
    # What follows the first non-finite step of a run that never recovers is
    # the wreck: nothing but `nonfinite` may come from it.
    assert diagnose(_after_breaking(kind)).verdict == kind  # the same steps, judged when finite
    diagnosis = diagnose(_nonfinite_from(_after_breaking(kind), BROKEN_FROM))
    assert [(f.kind, f.first_step, f.severity) for f in diagnosis.findings] == [
        ("nonfinite", STEPS[BROKEN_FROM], "critical")
    ]
    assert (
        "judged on steps up to %d: the run is non-finite from there on and did not recover" % (STEPS[BROKEN_FROM])
        in diagnosis.notes
    )


def test_a_run_that_recovered_is_judged_on_all_its_steps():
    # Two non-finite steps (e.g. skipped by a loss-scale optimizer), then on.
    diagnosis = diagnose(_nonfinite_from(_after_breaking("dead"), BROKEN_FROM, BROKEN_FROM + 2))
    # (dead layers while the loss does not fall: critical)
    assert [(f.kind, f.severity) for f in diagnosis.findings] == [("nonfinite", "warning"), ("dead", "critical")]
    assert not any(note.startswith("judged on steps up to") for note in diagnosis.notes)


def test_an_explosion_beyond_recovery_is_not_also_called_vanishing():
    # Before it explodes, the run's first layers look vanishing (as an
    # explosion's saturated units and inflated weights make them look).
    series = _depth_profile(VANISHING_PROFILE)
    grad = series[metadata.GRAD_NORM_MAX].values.copy()
    grad[30:] *= 1e3
    series[metadata.GRAD_NORM_MAX] = _series(metadata.GRAD_NORM_MAX, grad)
    diagnosis = diagnose(series)
    assert [(f.kind, f.severity) for f in diagnosis.findings] == [("exploding", "critical")]
    assert "vanishing gradients not judged: the gradients exploded from step %d" % STEPS[30] in diagnosis.notes
    # A spike that training got past leaves the rest of the run to judge.
    grad[31:] /= 1e3
    series[metadata.GRAD_NORM_MAX] = _series(metadata.GRAD_NORM_MAX, grad)
    assert [(f.kind, f.severity) for f in diagnose(series).findings] == [
        ("exploding", "warning"),
        ("vanishing", "critical"),
    ]


# --- the loss as evidence ----------------------------------------------------


def test_every_finding_shows_the_loss_against_numpy():
    loss = FALLING_LOSS.copy()
    loss[BROKEN_FROM:] = np.nan
    quarter = N_STEPS // 4
    exploding_run = _nonfinite_from(_exploding_only(_growing(from_row=5, factor_per_step=10.0)), BROKEN_FROM)
    exploding_run[metadata.LOSS] = _loss_series(loss)
    nonfinite_finding, exploding_finding = diagnose(exploding_run).findings
    assert nonfinite_finding.evidence["loss_before"] == loss[BROKEN_FROM - 1]
    assert np.isnan(nonfinite_finding.evidence["loss_at_first_step"])
    assert (
        "The loss was %.2g at step %d and nan at step %d."
        % (
            loss[BROKEN_FROM - 1],
            STEPS[BROKEN_FROM - 1],
            STEPS[BROKEN_FROM],
        )
        in nonfinite_finding.message
    )
    cross = exploding_finding.first_step
    assert exploding_finding.evidence["loss_start"] == loss[0]
    assert exploding_finding.evidence["loss_at_first_step"] == loss[list(STEPS).index(cross)]

    (dead_finding,) = diagnose(_zeroed(slice(None), [0])).findings
    assert dead_finding.evidence["loss_start"] == pytest.approx(np.median(FALLING_LOSS[:quarter]))
    assert dead_finding.evidence["loss_end"] == pytest.approx(np.median(FALLING_LOSS[-quarter:]))
    expected_fall = 1 - np.median(FALLING_LOSS[-quarter:]) / np.median(FALLING_LOSS[:quarter])
    assert dead_finding.evidence["loss_fall"] == pytest.approx(expected_fall)
    assert (
        "The loss went from %.2g to %.2g over steps %d-%d (fell by %.1f%%)."
        % (
            np.median(FALLING_LOSS[:quarter]),
            np.median(FALLING_LOSS[-quarter:]),
            STEPS[0],
            STEPS[-1],
            100 * expected_fall,
        )
        in dead_finding.message
    )


def test_without_the_loss_findings_have_no_loss_evidence_and_a_note_says_so():
    diagnosis = diagnose(_depth_profile(VANISHING_PROFILE, loss=None))
    (finding,) = diagnosis.findings
    assert not any(key.startswith("loss") for key in finding.evidence)
    assert "The loss" not in finding.message
    assert diagnosis.notes == (
        "no training loss recorded: findings do not show the loss trend, and 'not learning' is judged "
        "from the gradient norms",
    )


def test_a_loss_with_too_few_finite_values_gives_no_trend():
    loss = np.full(N_STEPS, np.nan)
    loss[: loss_rule.MIN_STEPS - 1] = 1.0
    diagnosis = diagnose(_depth_profile(VANISHING_PROFILE, loss=loss))
    (finding,) = diagnosis.findings
    assert "loss_start" not in finding.evidence
    assert diagnosis.notes == (
        "fewer than %d finite loss values: 'not learning' judged from the gradient norms" % loss_rule.MIN_STEPS,
    )


# --- layers not recorded at every step ---------------------------------------


def _frozen_for(rows: slice, columns) -> dict[str, StatSeries]:
    """A healthy run whose `columns` were not recorded (frozen) at `rows`: NaN there, `recorded` False."""
    recorded = np.ones((N_STEPS, len(LAYERS)), bool)
    recorded[rows, columns] = False
    series = _healthy()
    for stat, stat_series in list(series.items()):
        if stat != metadata.LOSS:
            values = np.where(recorded, stat_series.values, np.nan)
            series[stat] = _series(stat, values, recorded=recorded)
    return series


def test_a_layer_not_recorded_is_never_nonfinite_dead_or_vanishing():
    # Frozen for the first three quarters of the run: the reader gives NaN there.
    diagnosis = diagnose(_frozen_for(slice(0, 30), [0, 1]))
    assert (diagnosis.findings, diagnosis.notes) == ([], ())


def test_a_frozen_layer_s_non_finite_steps_still_count_where_it_was_recorded():
    series = _frozen_for(slice(0, 30), [0])
    counts = np.where(series[metadata.NONFINITE].recorded, 0.0, np.nan)
    counts[35, 0] = 2
    series[metadata.NONFINITE] = _series(metadata.NONFINITE, counts, recorded=series[metadata.NONFINITE].recorded)
    (finding,) = diagnose(series).findings
    assert (finding.kind, finding.layers, finding.first_step) == ("nonfinite", ("in",), STEPS[35])


def test_a_change_of_layer_set_is_no_explosion():
    # The base (two layers with gradients 1000x the head's) is unfrozen at row 20:
    # the model's norm jumps, each layer's own stays flat.
    series = _frozen_for(slice(0, 20), [0, 1])
    for stat in (metadata.GRAD_NORM, metadata.GRAD_NORM_MAX, metadata.GRAD_MAX_ABS):
        values = series[stat].values.copy()
        values[:, :2] *= 1e3
        series[stat] = _series(stat, values, recorded=series[stat].recorded)
    assert diagnose(series).findings == []
    # An explosion after the change is measured from the new set's start.
    values = series[metadata.GRAD_NORM_MAX].values.copy()
    values[30:] *= 1e3
    series[metadata.GRAD_NORM_MAX] = _series(metadata.GRAD_NORM_MAX, values, recorded=series[stat].recorded)
    (finding,) = diagnose(series).findings
    assert (finding.kind, finding.first_step) == ("exploding", STEPS[30])
    assert finding.evidence["baseline_norm"] == pytest.approx(np.linalg.norm(values[20:23], axis=1).min())


def test_a_loss_not_recorded_at_a_step_is_no_value():
    loss = _loss_series(FLAT_LOSS)
    recorded = np.ones((N_STEPS, 1), bool)
    recorded[: N_STEPS // 2] = False  # a garbage first half that must not count
    values = np.where(recorded, loss.values, 1e6)
    series = _stalled(vanishing.UPDATE_RATIO_TINY / 2, change=0.05)
    series[metadata.LOSS] = _series(metadata.LOSS, values, layers=(metadata.LOSS,), recorded=recorded)
    (finding,) = diagnose(series).findings
    assert finding.evidence["loss_start"] == LOSS_START


# --- input handling ----------------------------------------------------------


def test_statistics_at_different_steps_are_compared_at_common_steps():
    series = _depth_profile(VANISHING_PROFILE)
    weights = series[metadata.WEIGHT_NORM]
    series[metadata.WEIGHT_NORM] = _series(metadata.WEIGHT_NORM, weights.values[::2], steps=STEPS[::2])
    (finding,) = diagnose(series).findings
    assert finding.layers == ("in", "hidden_1")


def test_a_statistic_in_another_layer_order_is_reordered():
    series = _depth_profile(VANISHING_PROFILE)
    weight_by_layer = {"in": 2.0, "hidden_1": 3.0, "hidden_2": 4.0, "out": 5.0}
    reversed_weights = np.tile([weight_by_layer[name] for name in LAYERS[::-1]], (N_STEPS, 1))
    series[metadata.WEIGHT_NORM] = _series(metadata.WEIGHT_NORM, reversed_weights, layers=LAYERS[::-1])
    diagnosis = diagnose(series)
    assert diagnosis.findings[0].layers == ("in", "hidden_1")
    # (1e-4 * g / 2) / (g / 5), only with the weight norms of the right layers.
    assert diagnosis.findings[0].evidence["ratio_to_output"] == pytest.approx([2.5e-4, 1e-3 / 3 * 5])


def test_a_statistic_with_other_layers_is_left_out_with_a_note():
    series = _healthy()
    series[metadata.WEIGHT_NORM] = _series(metadata.WEIGHT_NORM, np.ones((N_STEPS, 2)), layers=("a", "b"))
    diagnosis = diagnose(series)
    assert diagnosis.findings == []
    assert diagnosis.notes == ("weight_norm left out: its layers differ from those of grad_norm",)


@pytest.mark.parametrize(
    "stats, note",
    [
        ({}, "no statistic has any logged step"),
        ({metadata.WEIGHT_NORM}, "no gradient statistic recorded: non-finite gradients not checked"),
        ({metadata.GRAD_NORM}, "no update_ratio recorded: too-small updates not checked"),
        (
            {metadata.UPDATE_RATIO, metadata.WEIGHT_NORM},
            "no gradient norm over %d logged steps: too-small updates not checked" % vanishing.MIN_TREND_STEPS,
        ),
    ],
)
def test_missing_statistics_are_noted(stats, note):
    series = {stat: s for stat, s in _healthy(loss=None).items() if stat in stats}
    diagnosis = diagnose(series)
    assert diagnosis.verdict == "healthy"
    assert note in diagnosis.notes


def test_a_single_step_run_is_judged_on_what_one_step_shows():
    one = {stat: _series(stat, s.values[:1], steps=STEPS[:1]) for stat, s in _healthy(loss=None).items()}
    diagnosis = diagnose(one)
    assert diagnosis.findings == []
    assert "fewer than 2 finite logged steps: exploding gradients not checked" in diagnosis.notes
    one[metadata.NONFINITE] = _series(metadata.NONFINITE, [[0, 1, 0, 0]], steps=STEPS[:1])
    assert diagnose(one).verdict == "nonfinite"


def test_a_custom_statistic_is_ignored():
    series = _healthy()
    series["my_stat"] = _series("my_stat", np.zeros((N_STEPS, len(LAYERS))))
    assert diagnose(series).findings == []


def test_a_per_layer_statistic_named_loss_is_not_the_run_loss():
    series = _stalled(vanishing.UPDATE_RATIO_TINY / 2, change=0.05)
    series[metadata.LOSS] = _series(metadata.LOSS, np.ones((N_STEPS, len(LAYERS))))
    diagnosis = diagnose(series)
    assert diagnosis.findings == []  # judged on the gradient norms, which fall
    assert any("no training loss recorded" in note for note in diagnosis.notes)


def test_a_run_with_only_a_loss_has_nothing_to_judge():
    diagnosis = diagnose({metadata.LOSS: _loss_series(FALLING_LOSS)})
    assert (diagnosis.findings, diagnosis.notes) == ([], ("no statistic has any logged step",))


# --- the result's form -------------------------------------------------------


def test_verdict_follows_kind_priority_whatever_the_order():
    def finding(kind, step):
        return Finding(kind, ("a",), step, "warning", {}, "m", "a.")

    diagnosis = RunDiagnosis([finding("dead", 0), finding("vanishing", 5), finding("exploding", 9)])
    assert diagnosis.verdict == "exploding"
    assert RunDiagnosis([]).verdict == "healthy"


@pytest.mark.parametrize(
    "kind, severity, layers",
    [("unknown", "warning", ("a",)), ("dead", "fatal", ("a",)), ("dead", "warning", ())],
)
def test_finding_refuses_what_it_cannot_be(kind, severity, layers):
    with pytest.raises(ValueError):
        Finding(kind, layers, 0, severity, {}, "m", "a.")


def test_json_form_is_plain_python():
    grad = _growing(from_row=5, factor_per_step=10.0)
    grad[12:] = np.nan
    result = diagnose(_exploding_only(grad)).to_json()
    assert set(result) == {"verdict", "findings"}
    for finding in result["findings"]:
        assert list(finding) == ["kind", "layers", "first_step", "severity", "evidence", "message", "advice"]
        assert type(finding["first_step"]) is int
        for value in finding["evidence"].values():
            assert type(value) in (int, float) or (type(value) is list and all(type(v) is float for v in value))
    # Strict JSON once NaN/Inf are strings (as TensorBoard's http_util does).
    json.dumps(result, allow_nan=True)


def _plain_types(value) -> bool:
    if isinstance(value, dict):
        return all(type(k) is str and _plain_types(v) for k, v in value.items())
    if isinstance(value, list):
        return all(_plain_types(v) for v in value)
    return type(value) in (str, int, float)


# Whatever numbers a run holds (NaN, Inf, zeros, negative garbage), with or
# without a loss and layers not recorded anywhere, the diagnosis returns a
# consistent, JSON-safe result and never raises.
_VALUES = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True, width=32),
    st.sampled_from([0.0, 1e-30, 1e30, np.nan, np.inf]),
)


@settings(max_examples=80, deadline=None)
@given(
    data=st.data(),
    n_steps=st.integers(1, 12),
    n_layers=st.integers(1, 4),
    stats=st.sets(st.sampled_from(metadata.BUILTIN_STATS), min_size=1),
    with_loss=st.booleans(),
    with_recorded=st.booleans(),
)
def test_any_numbers_give_a_consistent_result(data, n_steps, n_layers, stats, with_loss, with_recorded):
    layers = tuple("l%d" % i for i in range(n_layers))
    shape = (n_steps, n_layers)
    recorded = data.draw(hnp.arrays(bool, shape)) if with_recorded else None
    series = {
        stat: _series(
            stat,
            data.draw(hnp.arrays(np.float64, shape, elements=_VALUES)),
            layers=layers,
            steps=np.arange(n_steps),
            recorded=recorded,
        )
        for stat in sorted(stats)
    }
    if with_loss:
        series[metadata.LOSS] = _loss_series(
            data.draw(hnp.arrays(np.float64, n_steps, elements=_VALUES)), steps=np.arange(n_steps)
        )
    diagnosis = diagnose(series)
    result = diagnosis.to_json()
    assert _plain_types(result)
    kinds = [f["kind"] for f in result["findings"]]
    assert kinds == sorted(kinds, key=KINDS.index) and len(set(kinds)) == len(kinds)
    assert result["verdict"] == (kinds[0] if kinds else "healthy")
    for finding in result["findings"]:
        assert finding["layers"] and set(finding["layers"]) <= set(layers)
        assert finding["layers"] == sorted(finding["layers"], key=layers.index)
        assert finding["first_step"] in range(n_steps)
        assert finding["message"] and finding["advice"].endswith(".")
        for value in finding["evidence"].values():
            if isinstance(value, list):
                assert len(value) == len(finding["layers"])
