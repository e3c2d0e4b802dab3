"""Test-wide settings and shared fixtures: quiet TensorFlow, the demo's runs and the architecture zoo, trained once per session."""

import dataclasses
import os

import pytest

# Set before any test imports TensorFlow.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

DEMO_EPOCHS = 1


@dataclasses.dataclass(frozen=True)
class DemoRuns:
    """The demo's default runs trained on synthetic data, shared read-only by several test modules."""

    logdir: object  # pathlib.Path
    results: list
    messages: list


@pytest.fixture(scope="session")
def demo_runs(tmp_path_factory) -> DemoRuns:
    """Trains the demo's models once (one short epoch each, synthetic data): the slowest fixture.

    Tests must not write into `logdir`; copy it first.
    """
    from demo import data, train

    logdir = tmp_path_factory.mktemp("demo_logs")
    messages = []
    results = train.run_all(logdir, DEMO_EPOCHS, dataset=data.SYNTHETIC, verbose=0, log=messages.append)
    return DemoRuns(logdir=logdir, results=results, messages=messages)


@pytest.fixture(scope="session")
def zoo_runs(tmp_path_factory):
    """{case: support.zoo.ZooRun} of real architectures trained a few steps with the callback, each on first use.

    `zoo_runs["mobilenet_v2"].log_dir` is the case's log directory (its
    `run_dir` the `train` run in it), `.model` the trained model. Tests must
    not write into them.
    """
    from support import zoo

    return zoo.TrainedZoo(tmp_path_factory.mktemp("zoo"))
