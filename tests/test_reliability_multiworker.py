"""Several workers: under MultiWorkerMirroredStrategy only the chief writes, one run, holding the norm of the gradient applied.

Both ways of recording are run: the Keras callback in `fit` and the
custom-loop `GradientHealthWriter` inside `strategy.run`. Keras 3.15's `fit`
itself fails under MultiWorkerMirroredStrategy (keras-team/keras#20585): it
reduces the first data batch and the scalar logs with an axis the
collective reduce refuses; the worker works around exactly those two calls
(`_keras_multi_worker_workaround`), as a user must today.

Run as a script, this module is one worker; it trains with each API in turn,
into LOGDIR/<api>, so the cluster starts once:
`python tests/test_reliability_multiworker.py LOGDIR WEIGHTS_NPZ INDEX PORT0 PORT1`.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

NUM_WORKERS = 2
GLOBAL_BATCH = 8  # split over the workers
NUM_STEPS = 3
LEARNING_RATE = 0.05
INPUT_DIM = 4
LAYERS = ("hidden", "out")
# Every example is the same row, so however the workers split a batch, each
# local gradient equals the global one: the applied gradient is known.
X_ROW = np.array([0.5, -1.0, 2.0, 0.25], dtype=np.float32)
Y_ROW = np.array([1.5], dtype=np.float32)
# Two TensorFlow processes start, connect and train on 2 shared cores.
WORKERS_TIMEOUT_S = 300
SUFFIX = ".gradient_health"
RUN = "train"  # the callback's subdirectory; the custom loop writes there too
APIS = ("keras_fit", "custom_loop")


class NotChiefOnly(AssertionError):
    """More than the chief wrote Gradient Health data."""


def _build_model():
    import keras

    return keras.Sequential(
        [
            keras.Input((INPUT_DIM,)),
            keras.layers.Dense(8, activation="tanh", name=LAYERS[0]),
            keras.layers.Dense(1, name=LAYERS[1]),
        ]
    )


def _initial_weights() -> list[np.ndarray]:
    rng = np.random.default_rng(7)
    return [
        rng.normal(scale=0.5, size=(INPUT_DIM, 8)).astype(np.float32),
        rng.normal(scale=0.1, size=8).astype(np.float32),
        rng.normal(scale=0.5, size=(8, 1)).astype(np.float32),
        np.array([0.1], dtype=np.float32),
    ]


def _keras_multi_worker_workaround(model, sample_batch) -> None:
    """Lets Keras 3.15 `fit` run under MultiWorkerMirroredStrategy (keras-team/keras#20585).

    Its symbolic build reduces a distributed data batch eagerly, and its
    logs are MEAN-reduced along axis 0 although they are scalars; both fail
    in the collective reduce. Shapes come from a local batch instead, and
    scalars are reduced without an axis.
    """
    import tensorflow as tf
    from keras.src.backend.tensorflow import trainer

    def symbolic_build(iterator=None, data_batch=None):
        with model.distribute_strategy.scope():
            model._symbolic_build(data_batch=sample_batch)

    model._maybe_symbolic_build = symbolic_build
    keras_reduce = trainer.reduce_per_replica

    def reduce_per_replica(values, strategy, reduction):
        if trainer._collective_all_reduce_multi_worker(strategy) and reduction in ("auto", "mean"):
            return tf.nest.map_structure(lambda value: strategy.reduce("MEAN", value, axis=None), values)
        return keras_reduce(values, strategy, reduction)

    trainer.reduce_per_replica = reduce_per_replica


def run_worker(logdir: str, weights_path: str, index: str, *ports: str) -> None:
    """One worker of the cluster: trains NUM_STEPS steps with each API, from the same weights."""
    os.environ["TF_CONFIG"] = json.dumps(
        {
            "cluster": {"worker": ["127.0.0.1:%s" % port for port in ports]},
            "task": {"type": "worker", "index": int(index)},
        }
    )
    import keras
    import tensorflow as tf

    from tb_gradhealth import GradientHealthCallback, GradientHealthWriter

    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    x = np.tile(X_ROW, (GLOBAL_BATCH * NUM_STEPS, 1))
    y = np.tile(Y_ROW, (GLOBAL_BATCH * NUM_STEPS, 1))
    for api in APIS:
        api_logdir = os.path.join(logdir, api)
        with strategy.scope():
            model = _build_model()
            model.set_weights(list(np.load(weights_path).values()))
            optimizer = keras.optimizers.SGD(LEARNING_RATE)
        if api == "keras_fit":
            with strategy.scope():
                model.compile(optimizer=optimizer, loss="mse")
            _keras_multi_worker_workaround(model, (tf.constant(x[:1]), tf.constant(y[:1])))
            callback = GradientHealthCallback(api_logdir, update_freq=1)
            model.fit(x, y, batch_size=GLOBAL_BATCH, epochs=1, shuffle=False, verbose=0, callbacks=[callback])
        else:
            with strategy.scope():
                optimizer.build(model.trainable_variables)
            writer = GradientHealthWriter(os.path.join(api_logdir, RUN), model, update_freq=1)
            dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(GLOBAL_BATCH)

            @tf.function
            def train_step(batch_x, batch_y):
                def replica_step(bx, by):
                    with tf.GradientTape() as tape:
                        per_example = tf.reduce_mean(tf.square(model(bx) - by), axis=-1)
                        loss = tf.nn.compute_average_loss(per_example, global_batch_size=GLOBAL_BATCH)
                    grads = tape.gradient(loss, model.trainable_variables)
                    writer.apply_gradients(optimizer, grads, model.trainable_variables)

                strategy.run(replica_step, args=(batch_x, batch_y))

            for batch_x, batch_y in strategy.experimental_distribute_dataset(dataset):
                train_step(batch_x, batch_y)
            writer.close()
        print("worker %s %s trained %d steps" % (index, api, int(optimizer.iterations.numpy())), flush=True)


def _expected_grad_norms() -> np.ndarray:
    """`[NUM_STEPS, n_layers]` norms of the gradient plain SGD applies on the global batch, no strategy."""
    import keras
    import tensorflow as tf

    model = _build_model()
    model.set_weights(_initial_weights())
    optimizer = keras.optimizers.SGD(LEARNING_RATE)
    x = tf.constant(np.tile(X_ROW, (GLOBAL_BATCH, 1)))
    y = tf.constant(np.tile(Y_ROW, (GLOBAL_BATCH, 1)))
    norms = []
    for _ in range(NUM_STEPS):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(model(x) - y))
        grads = tape.gradient(loss, model.trainable_variables)
        squares = {
            id(v): float(np.sum(np.square(g.numpy(), dtype=np.float64)))
            for g, v in zip(grads, model.trainable_variables)
        }
        norms.append(
            [np.sqrt(sum(squares[id(v)] for v in model.get_layer(layer).trainable_variables)) for layer in LAYERS]
        )
        optimizer.apply(grads, model.trainable_variables)
    return np.asarray(norms)


def _our_event_files(logdir: pathlib.Path) -> list[pathlib.Path]:
    return sorted(path for path in logdir.rglob("*") if path.is_file() and path.name.endswith(SUFFIX))


def _logged_steps(event_file: pathlib.Path) -> list[int]:
    from tensorboard.backend.event_processing import event_file_loader
    from tensorboard.compat.proto import event_pb2

    steps = []
    for record in event_file_loader.RawEventFileLoader(str(event_file)).Load():
        event = event_pb2.Event.FromString(record)
        if any(value.tag == "gradient_health/grad_norm" for value in event.summary.value):
            steps.append(event.step)
    return steps


@pytest.fixture(scope="module")
def cluster_logdir(tmp_path_factory):
    """Runs the two workers once; returns the logdir holding LOGDIR/<api> of each API."""
    from tb_server import free_port

    root = tmp_path_factory.mktemp("multiworker")
    logdir = root / "logs"
    weights_path = root / "weights.npz"
    np.savez(weights_path, *_initial_weights())
    ports = [str(free_port()) for _ in range(NUM_WORKERS)]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    workers = [
        subprocess.Popen(
            [sys.executable, __file__, str(logdir), str(weights_path), str(index), *ports],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        for index in range(NUM_WORKERS)
    ]
    outputs = []
    try:
        for worker in workers:
            outputs.append(worker.communicate(timeout=WORKERS_TIMEOUT_S)[0])
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait()
    for index, (worker, output) in enumerate(zip(workers, outputs)):
        assert worker.returncode == 0, output[-3000:]
        for api in APIS:
            assert "worker %d %s trained %d steps" % (index, api, NUM_STEPS) in output, output[-3000:]
    return logdir


@pytest.mark.slow
@pytest.mark.parametrize("api", APIS)
def test_only_the_chief_writes_one_run_with_the_applied_gradient_norm(cluster_logdir, api):
    from tb_gradhealth import cli, reader

    logdir = cluster_logdir / api
    # One run, holding the norm of the gradient actually applied (the sum
    # over both workers' replicas), each step.
    provider = cli.provider_for_logdir(str(logdir))
    (run,) = [reader.run_info(tags) for tags in reader.list_run_tags(*provider).values()]
    assert (run["run"], tuple(run["layers"]), run["problems"]) == (RUN, tuple(LAYERS), [])
    series = reader.read_run(*provider, RUN)["grad_norm"]
    np.testing.assert_array_equal(series.steps, np.arange(NUM_STEPS))
    np.testing.assert_allclose(series.values, _expected_grad_norms(), rtol=1e-5)
    # Written by the chief only: one file of ours, each step once.
    files = _our_event_files(logdir)
    if len(files) != 1:
        raise NotChiefOnly(
            "%d workers wrote gradient health files: %s" % (len(files), [str(f.relative_to(logdir)) for f in files])
        )
    assert _logged_steps(files[0]) == list(range(NUM_STEPS))


if __name__ == "__main__":
    run_worker(*sys.argv[1:])
