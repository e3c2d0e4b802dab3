"""Trains the demo models into one logdir, one run per model, with TensorBoard's and the Gradient Health callbacks."""

from __future__ import annotations

import argparse
import dataclasses
import os
import pathlib
import shlex
import shutil
import sys
import time
from collections.abc import Sequence
from typing import Callable

import keras
import numpy as np
import tensorflow as tf

from demo import data as demo_data
from demo import models as demo_models
from tb_gradhealth import GradientHealthCallback

DEFAULT_LOGDIR = "logs"
# Each model-epoch costs ~20 CPU seconds on a 2-core machine, so the four
# default runs take about three minutes (measured, see README "The demo");
# `--epochs 25` reproduces the notebook.
DEFAULT_EPOCHS = 2
DEFAULT_MODELS = demo_models.MODEL_NAMES
SEED = 0
BATCH_SIZE = 32  # Keras' default, as in the notebook
VALIDATION_SPLIT = 0.1
DEFAULT_PORT = 6006
KERAS = "keras"
TORCH = "torch"
FRAMEWORKS = (KERAS, TORCH)

# What the demo writes into a run folder; a folder holding anything else is
# not ours and is never deleted.
_RUN_SUBDIRS = frozenset({"train", "validation"})


@dataclasses.dataclass(frozen=True)
class RunResult:
    """One trained run.

    Attributes:
      run: the run's name, a folder under the logdir.
      model: the model's name in `demo.models.SPECS`.
      path: the run's folder.
      dataset: the data it was trained on, e.g. `fashion_mnist`.
      epochs: epochs trained.
      steps: optimizer steps taken.
      seconds: wall time of building and training.
      history: Keras' `History.history` (per-epoch loss, accuracy, ...).
    """

    run: str
    model: str
    path: str
    dataset: str
    epochs: int
    steps: int
    seconds: float
    history: dict


def run_name(model: str, dataset: str) -> str:
    """The run's folder name; synthetic runs say so, so they are never mistaken for real ones."""
    return model + "-synthetic" if dataset == demo_data.SYNTHETIC else model


def _program(name: str) -> str:
    # The console script next to this interpreter (e.g. `.venv/bin/tensorboard`)
    # when there is one, so the printed command works without activating the venv.
    program = pathlib.Path(sys.executable).parent / name
    if not program.is_file():
        return name
    if program.is_relative_to(pathlib.Path.cwd()):
        program = program.relative_to(pathlib.Path.cwd())
    return shlex.quote(str(program))


def tensorboard_command(logdir: str | os.PathLike, port: int = DEFAULT_PORT) -> str:
    """The command that shows the demo's logdir, on localhost only."""
    return "%s --logdir %s --host 127.0.0.1 --port %d" % (_program("tensorboard"), shlex.quote(str(logdir)), port)


def report_command(logdir: str | os.PathLike) -> str:
    """The command that prints the diagnosis of the demo's runs."""
    return "%s report %s" % (_program("tb-gradhealth"), shlex.quote(str(logdir)))


def prepare(images: np.ndarray, labels: np.ndarray, scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """The notebook's preprocessing: inputs in [0, 1], one-hot targets, both times `scale`."""
    x = images.astype("float32") / 255.0
    y = keras.utils.to_categorical(labels, demo_data.NUM_CLASSES)
    return x * scale, y * scale


def _clear_run_dir(path: pathlib.Path, log: Callable[[str], None]) -> None:
    # Event files append: a second demo run into the same folder would show two
    # overlapping histories. Only delete what the demo itself writes.
    if not path.exists():
        return
    entries = {entry.name for entry in path.iterdir()}
    if not entries <= _RUN_SUBDIRS:
        raise FileExistsError(
            "%s exists and holds %s, which the demo did not write; choose another --logdir"
            % (path, sorted(entries - _RUN_SUBDIRS))
        )
    log("Replacing the previous run in %s" % path)
    shutil.rmtree(path)


def _write_about(path: pathlib.Path, text: str) -> None:
    # A text summary in the train run, shown in TensorBoard's Text tab, so the
    # run itself records its model and data (synthetic data included).
    writer = tf.summary.create_file_writer(str(path / "train"))
    with writer.as_default():
        tf.summary.text("demo/about", text, step=0)
    writer.close()


def train_one(
    spec: demo_models.ModelSpec,
    dataset: demo_data.Dataset,
    logdir: str | os.PathLike,
    epochs: int,
    seed: int = SEED,
    verbose: int | str = "auto",
    log: Callable[[str], None] = print,
) -> RunResult:
    """Trains one model as the notebook does and writes its run `<logdir>/<run>`."""
    started = time.time()
    name = run_name(spec.name, dataset.name)
    path = pathlib.Path(logdir) / name
    _clear_run_dir(path, log)
    keras.utils.set_random_seed(seed)
    model = spec.build()
    model.compile(loss="categorical_crossentropy", optimizer="sgd", metrics=["accuracy"])
    x, y = prepare(dataset.x_train, dataset.y_train, spec.scale)
    _write_about(
        path,
        "**%s**: %s.\n\nData: %s; inputs and targets x%g. Epochs: %d, seed %d, batch %d, SGD."
        % (name, spec.summary, dataset.describe(), spec.scale, epochs, seed, BATCH_SIZE),
    )
    if verbose == "auto":
        # A progress bar in a terminal, one line per epoch in logs (CI, make output piped).
        verbose = 1 if sys.stdout.isatty() else 2
    history = model.fit(
        x,
        y,
        epochs=epochs,
        batch_size=BATCH_SIZE,
        validation_split=VALIDATION_SPLIT,
        callbacks=[
            keras.callbacks.TensorBoard(log_dir=str(path), histogram_freq=1),
            GradientHealthCallback(str(path), update_freq=1),
        ],
        verbose=verbose,
    )
    steps = int(model.optimizer.iterations.numpy())
    return RunResult(
        run=name,
        model=spec.name,
        path=str(path),
        dataset=dataset.name,
        epochs=epochs,
        steps=steps,
        seconds=time.time() - started,
        history={key: [float(v) for v in values] for key, values in history.history.items()},
    )


def run_all(
    logdir: str | os.PathLike,
    epochs: int = DEFAULT_EPOCHS,
    models: Sequence[str] | None = None,
    dataset: str = demo_data.AUTO,
    data: str | os.PathLike | None = None,
    seed: int = SEED,
    download: bool = True,
    verbose: int | str = "auto",
    log: Callable[[str], None] = print,
    frameworks: Sequence[str] = (KERAS,),
) -> list[RunResult]:
    """Trains each demo model into `<logdir>/<run>` and returns what was written.

    Args:
      logdir: the TensorBoard logdir; one run folder per model.
      epochs: epochs per model.
      models: names from `demo.models.MODEL_NAMES`; all of them by default.
      dataset: `auto`, `mnist`, `fashion_mnist` or `synthetic` (tests only;
        its runs are named `<model>-synthetic`).
      data: an `mnist.npz` or a folder of the four IDX files.
      seed: the seed set before building each model, so a run does not depend
        on which runs came before it.
      download: whether MNIST may be downloaded when it is not cached.
      verbose: Keras' `fit` verbosity; "auto" picks a progress bar in a terminal.
      log: receives the progress announcements.
      frameworks: `keras` (runs `<model>`) and/or `torch` (runs
        `<model>-torch`, see `demo.train_torch`), trained on the same data.

    Raises:
      ValueError: an unknown model name or framework.
      demo.data.DataUnavailableError: no data of the requested kind.
    """
    models = list(DEFAULT_MODELS if models is None else models)
    unknown = [name for name in models if name not in demo_models.SPECS]
    if unknown:
        raise ValueError("unknown model(s) %s; choose from %s" % (unknown, ", ".join(demo_models.MODEL_NAMES)))
    if epochs < 1:
        raise ValueError("epochs must be at least 1, got %d" % epochs)
    if not frameworks or set(frameworks) - set(FRAMEWORKS):
        raise ValueError("frameworks must be some of %s, got %s" % (", ".join(FRAMEWORKS), list(frameworks)))
    loaded = demo_data.load(dataset, data=data, download=download, log=log)
    results = []
    if KERAS in frameworks:
        for index, name in enumerate(models, start=1):
            spec = demo_models.SPECS[name]
            log("[%d/%d] %s: %s (%s, %d epochs)" % (index, len(models), name, spec.summary, loaded.title, epochs))
            results.append(train_one(spec, loaded, logdir, epochs, seed=seed, verbose=verbose, log=log))
            log("[%d/%d] %s done in %.1f s" % (index, len(models), name, results[-1].seconds))
    if TORCH in frameworks:
        # Imported here: torch is an optional dependency (the `torch` extra).
        from demo import train_torch

        results += train_torch.run_all(logdir, epochs, models, loaded, seed=seed, log=log)
    return results


def format_summary(
    results: Sequence[RunResult], logdir: str | os.PathLike, seconds: float, port: int = DEFAULT_PORT
) -> str:
    """The closing summary: runs written, time taken and how to look at them."""
    lines = ["", "Wrote %d run(s) to %s in %.0f s:" % (len(results), logdir, seconds)]
    width = max([len(result.run) for result in results], default=0)
    for result in results:
        loss = result.history.get("loss", [float("nan")])[-1]
        lines.append(
            "  %-*s  %3d epochs, %6d steps, final loss %-9.4g (%.0f s)"
            % (width, result.run, result.epochs, result.steps, loss, result.seconds)
        )
    if any(result.dataset == demo_data.SYNTHETIC for result in results):
        lines.append("  (SYNTHETIC data: for tests only, not real images)")
    lines += [
        "",
        "Diagnosis:      %s" % report_command(logdir),
        "Look at it:     %s" % tensorboard_command(logdir, port),
        "then open       http://127.0.0.1:%d/#gradient_health" % port,
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m demo`: trains the demo runs and says how to open them in TensorBoard."""
    parser = argparse.ArgumentParser(
        prog="python -m demo",
        description="Train the Gradient Health demo models (one TensorBoard run each).",
    )
    parser.add_argument("--logdir", default=DEFAULT_LOGDIR, help="TensorBoard logdir (default: %(default)s)")
    parser.add_argument(
        "--epochs",
        type=int,
        default=DEFAULT_EPOCHS,
        help="epochs per model (default: %(default)s; 25 as in the notebook)",
    )
    parser.add_argument(
        "--models",
        nargs="+",
        choices=demo_models.MODEL_NAMES,
        default=list(DEFAULT_MODELS),
        metavar="MODEL",
        help="models to train (default: all: %s)" % " ".join(demo_models.MODEL_NAMES),
    )
    parser.add_argument(
        "--dataset",
        choices=demo_data.DATASETS,
        default=demo_data.AUTO,
        help="auto: MNIST if cached, given or downloadable, else Fashion-MNIST; synthetic is for tests",
    )
    parser.add_argument("--data", help="an mnist.npz or a folder with the four MNIST IDX files (gzipped or not)")
    parser.add_argument("--no-download", action="store_true", help="never try to download MNIST")
    parser.add_argument("--seed", type=int, default=SEED, help="random seed (default: %(default)s)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="port shown in the tensorboard command")
    parser.add_argument(
        "--framework",
        nargs="+",
        choices=FRAMEWORKS,
        default=[KERAS],
        help="train in Keras (runs <model>), PyTorch (runs <model>-torch) or both (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    started = time.time()
    try:
        results = run_all(
            args.logdir,
            args.epochs,
            models=args.models,
            dataset=args.dataset,
            data=args.data,
            seed=args.seed,
            download=not args.no_download,
            frameworks=args.framework,
        )
    except (demo_data.DataUnavailableError, FileExistsError, ValueError) as error:
        print("error: %s" % error, file=sys.stderr)
        return 2
    print(format_summary(results, args.logdir, time.time() - started, args.port))
    return 0
