"""Trains the support MLP under MirroredStrategy on two logical CPUs, with the callback and in a custom loop (a fresh process).

Run as `python -m support.two_cpus OUT` with the tests directory on the
path: logical devices must be configured before TensorFlow initialises its
devices, which a test process importing TensorFlow has long done.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

LOGICAL_CPUS = 2
N_SAMPLES = 48  # 6 steps per epoch
EPOCHS = 2


def _save(out: pathlib.Path, name: str, snapshots, model) -> str:
    from support import sgd

    path = out / (name + ".npz")
    np.savez(
        path,
        sizes=np.array(sgd.group_sizes(model)),
        n_steps=len(snapshots),
        n_vars=len(snapshots[0]),
        **{"w%d_%d" % (i, j): w for i, ws in enumerate(snapshots) for j, w in enumerate(ws)},
    )
    return str(path)


def load_snapshots(path: str) -> tuple[list, list]:
    """(snapshots, row sizes) saved by this script."""
    saved = np.load(path)
    snapshots = [[saved["w%d_%d" % (i, j)] for j in range(int(saved["n_vars"]))] for i in range(int(saved["n_steps"]))]
    return snapshots, [int(size) for size in saved["sizes"]]


def _fit(strategy, out: pathlib.Path) -> dict:
    import keras

    from support import sgd
    from tb_gradhealth import GradientHealthCallback

    x, y = sgd.make_data(N_SAMPLES)
    recorder = sgd.weight_recorder()
    logdir = out / "fit"
    # fit inside the scope too: the callback's own variables must still be plain.
    with strategy.scope():
        model = sgd.make_mlp()
        model.compile(optimizer=keras.optimizers.SGD(sgd.LEARNING_RATE), loss="mse")
        model.fit(
            x,
            y,
            batch_size=sgd.BATCH,
            epochs=EPOCHS,
            shuffle=False,
            verbose=0,
            callbacks=[GradientHealthCallback(str(logdir), update_freq=1), recorder],
        )
    return {"run_dir": str(logdir / "train"), "weights": _save(out, "fit", recorder.snapshots, model)}


def _custom_loop(strategy, out: pathlib.Path) -> dict:
    import keras

    from support import sgd
    from tb_gradhealth import GradientHealthRecorder

    x, y = sgd.make_data(N_SAMPLES)
    with strategy.scope():
        model = sgd.make_mlp()
        optimizer = keras.optimizers.SGD(sgd.LEARNING_RATE)
    run_dir = out / "custom_loop"
    with GradientHealthRecorder(str(run_dir), model, update_freq=1) as recorder:
        snapshots = sgd.train_custom_loop(recorder, model, optimizer, x, y, N_SAMPLES // sgd.BATCH, strategy=strategy)
    return {"run_dir": str(run_dir), "weights": _save(out, "custom_loop", snapshots, model)}


CASES = {"fit": _fit, "custom_loop": _custom_loop}


def main(argv=None) -> None:
    """Prints {case: {run_dir, weights, replicas} or {error}} as JSON."""
    import tensorflow as tf

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("out", type=pathlib.Path)
    args = parser.parse_args(argv)
    (cpu,) = tf.config.list_physical_devices("CPU")
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * LOGICAL_CPUS)
    strategy = tf.distribute.MirroredStrategy([device.name for device in tf.config.list_logical_devices("CPU")])
    summary = {}
    for name, case in CASES.items():
        # One failing case must not hide the other's numbers.
        try:
            summary[name] = dict(case(strategy, args.out), replicas=strategy.num_replicas_in_sync)
        except Exception as error:
            summary[name] = {"error": "%s: %s" % (type(error).__name__, error)}
    json.dump(summary, sys.stdout)


if __name__ == "__main__":
    main()
