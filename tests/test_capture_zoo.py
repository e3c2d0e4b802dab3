"""The callback on real architectures: every statistic of every step equals an independent tf.GradientTape + numpy reference, rows in forward order."""

from __future__ import annotations

import pytest
from support import zoo

# One model each for the other ways of running a step: cheap to compile, and
# covering XLA, a loop over several steps and float16 activations with
# convolutions and BatchNormalization.
VARIANTS = {
    "jit_compile": ("frozen_shared_built", {"jit_compile": True}),
    "steps_per_execution": ("embedding_lstm", {"steps_per_execution": 4, "steps": 4 * 2}),
    "mixed_float16": ("residual_cnn", {"mixed": True}),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(zoo.CASES))
def test_every_statistic_matches_the_gradient_tape(zoo_runs, case):
    errors = zoo.assert_matches(zoo_runs[case])
    print("%s: largest relative errors %s" % (case, errors))


@pytest.mark.slow
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_statistic_matches_under(tmp_path, variant):
    case, options = VARIANTS[variant]
    errors = zoo.assert_matches(zoo.train(zoo.CASES[case], tmp_path, **options))
    print("%s under %s: largest relative errors %s" % (case, variant, errors))
