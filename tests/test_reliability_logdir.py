"""An unwritable log_dir fails `fit` at the start of training with a clear message, before any step, leaving the model as it was."""

from __future__ import annotations

import os
import pathlib

import numpy as np
import pytest


class UnclearError(AssertionError):
    """The error does not say who failed and on which directory."""


class LeftWrapped(AssertionError):
    """A failed start left the optimizer wrapped by the callback."""


BATCH_SIZE = 4
NUM_BATCHES = 3
LEARNING_RATE = 0.1


def _model():
    import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="dense")])
    model.compile(optimizer=keras.optimizers.SGD(LEARNING_RATE), loss="mse")
    return model


def _data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(BATCH_SIZE * NUM_BATCHES, 4)).astype("float32")
    return x, x[:, :3] * 2.0


def _batches_seen():
    import keras

    class BatchCounter(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.batches = 0

        def on_train_batch_begin(self, batch, logs=None):
            self.batches += 1

    return BatchCounter()


def _unwritable_log_dir(tmp_path: pathlib.Path, how: str) -> pathlib.Path:
    if how == "through_a_file":
        # Unwritable even for root: a regular file where a directory must be.
        (tmp_path / "not_a_directory").write_text("")
        return tmp_path / "not_a_directory" / "logs"
    if os.geteuid() == 0:
        pytest.skip("root writes into read-only directories")
    read_only = tmp_path / "read_only"
    read_only.mkdir(mode=0o500)
    return read_only / "logs"


@pytest.mark.parametrize("how", ["through_a_file", "read_only_directory"])
def test_unwritable_log_dir_fails_at_train_begin_with_a_clear_message(tmp_path, how):
    from tb_gradhealth import GradientHealthCallback

    log_dir = _unwritable_log_dir(tmp_path, how)
    model = _model()
    weights = [w.copy() for w in model.get_weights()]
    counter = _batches_seen()
    with pytest.raises(Exception) as raised:
        model.fit(
            *_data(),
            batch_size=BATCH_SIZE,
            epochs=1,
            verbose=0,
            callbacks=[GradientHealthCallback(str(log_dir)), counter],
        )
    # Before any step: no batch began, the weights did not move.
    assert counter.batches == 0
    assert int(model.optimizer.iterations.numpy()) == 0
    assert all(np.array_equal(a, b) for a, b in zip(weights, model.get_weights()))
    # Clear: says who failed and which directory the user gave.
    message = str(raised.value)
    if "GradientHealthCallback" not in message or str(log_dir) not in message:
        raise UnclearError(message)


def test_a_failed_start_leaves_the_model_trainable_without_the_callback(tmp_path):
    import keras

    from tb_gradhealth import GradientHealthCallback

    model = _model()
    optimizer_type_apply = type(model.optimizer).apply
    x, y = _data()
    with pytest.raises(OSError, match="cannot write its event files"):
        model.fit(
            x,
            y,
            batch_size=BATCH_SIZE,
            epochs=1,
            verbose=0,
            callbacks=[GradientHealthCallback(str(_unwritable_log_dir(tmp_path, "through_a_file")))],
        )
    # The optimizer is not left wrapped, so a later fit trains as plain Keras.
    if "apply" in vars(model.optimizer):
        raise LeftWrapped("model.optimizer.apply is still %r" % vars(model.optimizer)["apply"])
    assert type(model.optimizer).apply is optimizer_type_apply
    reference = _model()
    model.fit(x, y, batch_size=BATCH_SIZE, epochs=1, verbose=0, shuffle=False)
    reference.fit(x, y, batch_size=BATCH_SIZE, epochs=1, verbose=0, shuffle=False)
    for got, want in zip(model.get_weights(), reference.get_weights()):
        np.testing.assert_allclose(got, want, rtol=1e-6)
    assert isinstance(model.optimizer, keras.optimizers.SGD)
