"""Offline-safe loading of the demo's 28x28 digit images: MNIST, else Fashion-MNIST, or synthetic data for tests."""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import hashlib
import os
import pathlib
import shutil
import sys
import tempfile
import urllib.request
from collections.abc import Sequence
from typing import Callable

import numpy as np

MNIST = "mnist"
FASHION_MNIST = "fashion_mnist"
SYNTHETIC = "synthetic"
AUTO = "auto"
DATASETS = (AUTO, MNIST, FASHION_MNIST, SYNTHETIC)

TITLES = {MNIST: "MNIST", FASHION_MNIST: "Fashion-MNIST", SYNTHETIC: "SYNTHETIC"}

IMAGE_SHAPE = (28, 28)
NUM_CLASSES = 10

# Where keras.datasets.mnist.load_data() downloads from and what it verifies.
MNIST_URL = "https://storage.googleapis.com/tensorflow/tf-keras-datasets/mnist.npz"
MNIST_SHA256 = "731c5ac602752760c8e48fbffcf8c3b850d9dc2a2aedcf2cc48468fc17b673d1"
# Short, so that a machine without network falls back within seconds.
DOWNLOAD_TIMEOUT_S = 10

# keras.utils.get_file falls back to this home when `~/.keras` is not writable.
KERAS_TMP_HOME = pathlib.Path(tempfile.gettempdir()) / ".keras"

# Debian's `dataset-fashion-mnist` package installs the four IDX files here.
DEBIAN_FASHION_MNIST_DIR = pathlib.Path("/usr/share/datasets/fashion-mnist")
DEBIAN_FASHION_MNIST_PACKAGE = "dataset-fashion-mnist"

# The four IDX files of MNIST and Fashion-MNIST, in (x_train, y_train, x_test, y_test) order.
IDX_STEMS = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
_IDX_UBYTE = 0x08

# Synthetic data: small so tests train in seconds; same shapes and dtypes as MNIST.
SYNTHETIC_TRAIN = 1200  # images
SYNTHETIC_TEST = 200  # images
SYNTHETIC_SEED = 1234
_SYNTHETIC_MAX_SHIFT = 2  # pixels; so the classes are learnable but not trivially identical
_SYNTHETIC_NOISE = 0.15  # relative to full intensity


@dataclasses.dataclass(frozen=True)
class Dataset:
    """Images and labels as `keras.datasets.mnist.load_data()` returns them.

    Attributes:
      name: `mnist`, `fashion_mnist` or `synthetic`.
      source: where the data came from (a path, a URL or "generated").
      x_train, x_test: uint8 `[n, 28, 28]` in 0..255.
      y_train, y_test: uint8 `[n]` class labels 0..9.
    """

    name: str
    source: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray

    def __post_init__(self):
        for images, labels in ((self.x_train, self.y_train), (self.x_test, self.y_test)):
            if images.shape[1:] != IMAGE_SHAPE or len(images) != len(labels):
                raise ValueError(
                    "%s: expected [n, 28, 28] images with n labels, got %s and %s"
                    % (self.name, images.shape, labels.shape)
                )

    @property
    def title(self) -> str:
        return TITLES[self.name]

    def describe(self) -> str:
        """One line for the console and for the runs' metadata."""
        text = "%s from %s (%d train / %d test images)" % (
            self.title,
            self.source,
            len(self.x_train),
            len(self.x_test),
        )
        if self.name == SYNTHETIC:
            text += " -- generated for tests, NOT real images"
        return text


class DataUnavailableError(RuntimeError):
    """No dataset of the requested kind could be found offline or downloaded."""


def keras_cache_dirs() -> list[pathlib.Path]:
    """The `datasets` folders where Keras caches downloads, most likely first.

    Mirrors keras.utils.get_file: `$KERAS_HOME` or `~/.keras`, and `/tmp/.keras`
    when the home is not writable.
    """
    homes = [pathlib.Path(os.environ.get("KERAS_HOME") or "~/.keras").expanduser(), KERAS_TMP_HOME]
    dirs = []
    for home in homes:
        path = home / "datasets"
        if path not in dirs:
            dirs.append(path)
    return dirs


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Reads one IDX file (gzipped or not) of unsigned bytes into an array.

    Raises:
      ValueError: the file is not an IDX file of unsigned bytes, or is truncated.
    """
    path = pathlib.Path(path)
    with open(path, "rb") as raw:
        gzipped = raw.read(2) == b"\x1f\x8b"
    opener = gzip.open if gzipped else open
    with opener(path, "rb") as stream:
        content = stream.read()
    if len(content) < 4 or content[0:2] != b"\x00\x00" or content[2] != _IDX_UBYTE:
        raise ValueError("%s is not an IDX file of unsigned bytes" % path)
    ndim = content[3]
    header_size = 4 + 4 * ndim
    shape = tuple(int(d) for d in np.frombuffer(content[4:header_size], dtype=">u4"))
    data = np.frombuffer(content, dtype=np.uint8, offset=header_size)
    if data.size != int(np.prod(shape)):
        raise ValueError("%s: header says %s but holds %d bytes" % (path, shape, data.size))
    return data.reshape(shape)


def _idx_file(directory: pathlib.Path, stem: str) -> pathlib.Path | None:
    # LeCun's names use '-idx', some mirrors '.idx'; either may be gzipped.
    for name in (stem, stem.replace("-idx", ".idx")):
        for candidate in (directory / (name + ".gz"), directory / name):
            if candidate.is_file():
                return candidate
    return None


def has_idx_files(directory: str | os.PathLike) -> bool:
    """Whether `directory` holds the four MNIST-style IDX files."""
    directory = pathlib.Path(directory)
    return all(_idx_file(directory, stem) is not None for stem in IDX_STEMS)


def load_idx_dir(directory: str | os.PathLike, name: str) -> Dataset:
    """Loads the four IDX files of `directory` (MNIST or Fashion-MNIST layout)."""
    directory = pathlib.Path(directory)
    paths = [_idx_file(directory, stem) for stem in IDX_STEMS]
    missing = [stem for stem, path in zip(IDX_STEMS, paths) if path is None]
    if missing:
        raise DataUnavailableError("%s lacks the IDX files %s" % (directory, ", ".join(missing)))
    x_train, y_train, x_test, y_test = (read_idx(path) for path in paths)
    return Dataset(name, str(directory), x_train, y_train, x_test, y_test)


def load_npz(path: str | os.PathLike, name: str = MNIST) -> Dataset:
    """Loads an `mnist.npz` as written by Keras (x_train, y_train, x_test, y_test)."""
    with np.load(path, allow_pickle=False) as arrays:
        return Dataset(name, str(path), arrays["x_train"], arrays["y_train"], arrays["x_test"], arrays["y_test"])


def load_path(path: str | os.PathLike, name: str = MNIST) -> Dataset:
    """Loads `--data PATH`: an `.npz` file, a folder of four IDX files, or one of those files.

    Raises:
      DataUnavailableError: nothing loadable at `path`.
    """
    path = pathlib.Path(path).expanduser()
    if path.is_file() and path.suffix == ".npz":
        return load_npz(path, name)
    if path.is_file():
        path = path.parent
    if path.is_dir():
        return load_idx_dir(path, name)
    raise DataUnavailableError("%s: no such file or folder" % path)


def find_mnist() -> pathlib.Path | None:
    """The cached `mnist.npz` of Keras, if there is one."""
    for directory in keras_cache_dirs():
        if (directory / "mnist.npz").is_file():
            return directory / "mnist.npz"
    return None


def find_fashion_mnist() -> pathlib.Path | None:
    """A folder with Fashion-MNIST's IDX files: the Keras cache, else Debian's package."""
    for directory in [d / "fashion-mnist" for d in keras_cache_dirs()] + [DEBIAN_FASHION_MNIST_DIR]:
        if has_idx_files(directory):
            return directory
    return None


def download_mnist(timeout_s: float = DOWNLOAD_TIMEOUT_S) -> pathlib.Path:
    """Downloads `mnist.npz` into the Keras cache, as keras.datasets would, but with a timeout.

    Raises:
      DataUnavailableError: no network, a timeout, or a file with the wrong checksum.
    """
    for directory in keras_cache_dirs():
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError:
            continue
        if os.access(directory, os.W_OK):
            break
    else:
        raise DataUnavailableError("no writable Keras cache folder among %s" % keras_cache_dirs())
    target = directory / "mnist.npz"
    partial = target.with_suffix(".npz.part")
    try:
        with urllib.request.urlopen(MNIST_URL, timeout=timeout_s) as response, open(partial, "wb") as out:
            shutil.copyfileobj(response, out)
    except OSError as error:  # URLError, timeouts and refused connections are all OSErrors
        partial.unlink(missing_ok=True)
        raise DataUnavailableError("could not download %s: %s" % (MNIST_URL, error)) from None
    digest = hashlib.sha256(partial.read_bytes()).hexdigest()
    if digest != MNIST_SHA256:
        partial.unlink(missing_ok=True)
        raise DataUnavailableError("%s: checksum %s does not match %s" % (MNIST_URL, digest, MNIST_SHA256))
    partial.replace(target)
    return target


def synthetic(num_train: int = SYNTHETIC_TRAIN, num_test: int = SYNTHETIC_TEST, seed: int = SYNTHETIC_SEED) -> Dataset:
    """Generates a small learnable stand-in for MNIST: one blurred stroke pattern per class, shifted and noisy.

    For tests only; it has MNIST's shapes, dtypes and roughly its pixel statistics.
    """
    rng = np.random.default_rng(seed)
    height, width = IMAGE_SHAPE
    # Each class: a few random line segments, drawn thick in the central 20x20 like MNIST's digits.
    prototypes = np.zeros((NUM_CLASSES, height, width), dtype=np.float32)
    for label in range(NUM_CLASSES):
        for _ in range(3):
            (r0, c0), (r1, c1) = rng.integers(6, 22, size=(2, 2))
            for t in np.linspace(0.0, 1.0, 40):
                r, c = round(r0 + t * (r1 - r0)), round(c0 + t * (c1 - c0))
                prototypes[label, r - 1 : r + 2, c - 1 : c + 2] = 1.0

    def draw(count: int) -> tuple[np.ndarray, np.ndarray]:
        labels = rng.integers(0, NUM_CLASSES, size=count)
        shifts = rng.integers(-_SYNTHETIC_MAX_SHIFT, _SYNTHETIC_MAX_SHIFT + 1, size=(count, 2))
        images = np.stack(
            [np.roll(prototypes[label], tuple(shift), axis=(0, 1)) for label, shift in zip(labels, shifts)]
        )
        images = images * rng.uniform(0.6, 1.0, size=(count, 1, 1))
        images = images + _SYNTHETIC_NOISE * rng.random(images.shape) * (images > 0)
        return (np.clip(images, 0.0, 1.0) * 255).astype(np.uint8), labels.astype(np.uint8)

    x_train, y_train = draw(num_train)
    x_test, y_test = draw(num_test)
    return Dataset(SYNTHETIC, "generated (seed %d)" % seed, x_train, y_train, x_test, y_test)


def load(
    dataset: str = AUTO,
    data: str | os.PathLike | None = None,
    download: bool = True,
    log: Callable[[str], None] = print,
) -> Dataset:
    """Loads the demo's data, announcing what is used and why.

    Args:
      dataset: `auto` (MNIST if cached, given or downloadable, else
        Fashion-MNIST), `mnist`, `fashion_mnist` or `synthetic`.
      data: an `mnist.npz` or a folder of the four IDX files; used as MNIST
        (or as Fashion-MNIST with `dataset="fashion_mnist"`).
      download: whether `auto`/`mnist` may try to download MNIST.
      log: receives the human-readable announcements.

    Raises:
      DataUnavailableError: the requested data is not available; the message
        says how to get it.
    """
    if dataset not in DATASETS:
        raise ValueError("dataset must be one of %s, got %r" % (", ".join(DATASETS), dataset))
    if dataset == SYNTHETIC:
        result = synthetic()
        log("Data: " + result.describe())
        return result
    if data is not None:
        result = load_path(data, FASHION_MNIST if dataset == FASHION_MNIST else MNIST)
        log("Data: " + result.describe())
        return result
    if dataset in (AUTO, MNIST):
        result = _load_mnist(download, log)
        if result is not None:
            return result
        if dataset == MNIST:
            raise DataUnavailableError(
                "MNIST is not in the Keras cache (%s) and could not be downloaded; "
                "pass --data PATH (an mnist.npz or the four IDX files)" % keras_cache_dirs()[0]
            )
    directory = find_fashion_mnist()
    if directory is None:
        raise DataUnavailableError(
            "neither MNIST nor Fashion-MNIST is available offline. Either pass --data PATH "
            "(an mnist.npz or the four IDX files), put mnist.npz in %s, or install Fashion-MNIST: "
            "sudo apt-get install %s" % (keras_cache_dirs()[0], DEBIAN_FASHION_MNIST_PACKAGE)
        )
    result = load_idx_dir(directory, FASHION_MNIST)
    if dataset == AUTO:
        log(
            "NOTE: MNIST is not available (not in the Keras cache, no --data, %s); "
            "using Fashion-MNIST instead (clothing images, same shapes, 10 classes)."
            % ("download failed" if download else "downloads off")
        )
    log("Data: " + result.describe())
    return result


def _load_mnist(download: bool, log: Callable[[str], None]) -> Dataset | None:
    path = find_mnist()
    if path is None and download:
        log("MNIST is not in the Keras cache; trying to download it (timeout %ds) ..." % DOWNLOAD_TIMEOUT_S)
        try:
            path = download_mnist()
        except DataUnavailableError as error:
            log("Download failed: %s" % error)
    if path is None:
        return None
    result = load_npz(path, MNIST)
    log("Data: " + result.describe())
    return result


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m demo.data --check [--download]`: exit 0 iff real (not synthetic) data is available."""
    parser = argparse.ArgumentParser(prog="python -m demo.data", description=main.__doc__)
    parser.add_argument("--check", action="store_true", help="report which data the demo would use")
    parser.add_argument("--download", action="store_true", help="try to download MNIST if it is not cached")
    parser.add_argument("--data", help="an mnist.npz or a folder of the four IDX files")
    args = parser.parse_args(argv)
    if not args.check:
        parser.error("nothing to do: pass --check")
    try:
        load(AUTO, data=args.data, download=args.download)
    except DataUnavailableError as error:
        print("No demo data: %s" % error, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
