"""Tests of the demo's offline-safe data loading: IDX and npz files, the Keras cache, download, fallbacks."""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.server
import pathlib
import struct
import threading

import numpy as np
import pytest

from demo import data

NUM_TRAIN = 12
NUM_TEST = 5


def _arrays(seed: int) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    return (
        rng.integers(0, 256, size=(NUM_TRAIN, 28, 28), dtype=np.uint8),
        rng.integers(0, 10, size=NUM_TRAIN, dtype=np.uint8),
        rng.integers(0, 256, size=(NUM_TEST, 28, 28), dtype=np.uint8),
        rng.integers(0, 10, size=NUM_TEST, dtype=np.uint8),
    )


def _idx_bytes(array: np.ndarray) -> bytes:
    # The IDX format as LeCun documents it: two zero bytes, type 0x08
    # (unsigned byte), the number of dimensions, then big-endian int32 sizes.
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(">%dI" % array.ndim, *array.shape)
    return header + array.astype(np.uint8).tobytes()


def _write_idx_dir(directory: pathlib.Path, arrays, gzipped: bool, dotted: bool = False) -> pathlib.Path:
    directory.mkdir(parents=True, exist_ok=True)
    for stem, array in zip(data.IDX_STEMS, arrays):
        name = stem.replace("-idx", ".idx") if dotted else stem
        content = _idx_bytes(array)
        if gzipped:
            (directory / (name + ".gz")).write_bytes(gzip.compress(content))
        else:
            (directory / name).write_bytes(content)
    return directory


def _write_npz(path: pathlib.Path, arrays) -> pathlib.Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    x_train, y_train, x_test, y_test = arrays
    np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    return path


def _assert_arrays(dataset: data.Dataset, arrays) -> None:
    for got, want in zip((dataset.x_train, dataset.y_train, dataset.x_test, dataset.y_test), arrays):
        np.testing.assert_array_equal(got, want)


@pytest.fixture
def offline(tmp_path, monkeypatch):
    """An empty Keras home and no Debian Fashion-MNIST: nothing is available."""
    home = tmp_path / "keras_home"
    home.mkdir()
    monkeypatch.setenv("KERAS_HOME", str(home))
    monkeypatch.setattr(data, "KERAS_TMP_HOME", tmp_path / "tmp" / ".keras")
    monkeypatch.setattr(data, "DEBIAN_FASHION_MNIST_DIR", tmp_path / "no-debian")
    return home


@pytest.mark.parametrize("gzipped", [False, True])
def test_read_idx_decodes_images_and_labels(tmp_path, gzipped):
    arrays = _arrays(0)
    directory = _write_idx_dir(tmp_path / "idx", arrays, gzipped)
    for stem, array in zip(data.IDX_STEMS, arrays):
        path = next(directory.glob(stem + "*"))
        np.testing.assert_array_equal(data.read_idx(path), array)


def test_read_idx_rejects_other_files(tmp_path):
    not_idx = tmp_path / "not_idx"
    not_idx.write_bytes(b"\x89PNG\r\n\x1a\n")
    with pytest.raises(ValueError, match="not an IDX file"):
        data.read_idx(not_idx)
    truncated = tmp_path / "truncated"
    truncated.write_bytes(_idx_bytes(np.zeros((3, 28, 28), np.uint8))[:-10])
    with pytest.raises(ValueError, match="header says"):
        data.read_idx(truncated)


@pytest.mark.parametrize("gzipped,dotted", [(True, False), (False, False), (False, True)])
def test_load_path_reads_a_folder_of_idx_files(tmp_path, gzipped, dotted):
    arrays = _arrays(1)
    directory = _write_idx_dir(tmp_path / "mnist", arrays, gzipped, dotted)
    dataset = data.load_path(directory)
    assert dataset.name == data.MNIST
    _assert_arrays(dataset, arrays)
    # One of the four files stands for its folder.
    _assert_arrays(data.load_path(next(directory.iterdir())), arrays)


def test_load_path_reads_an_npz(tmp_path):
    arrays = _arrays(2)
    dataset = data.load_path(_write_npz(tmp_path / "mnist.npz", arrays))
    assert (dataset.name, dataset.source) == (data.MNIST, str(tmp_path / "mnist.npz"))
    _assert_arrays(dataset, arrays)


def test_load_path_reports_what_is_missing(tmp_path):
    directory = _write_idx_dir(tmp_path / "partial", _arrays(3), gzipped=True)
    (directory / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(data.DataUnavailableError, match="t10k-labels-idx1-ubyte"):
        data.load_path(directory)
    with pytest.raises(data.DataUnavailableError, match="no such file"):
        data.load_path(tmp_path / "nowhere")


def test_dataset_rejects_wrong_shapes():
    x_train, y_train, x_test, y_test = _arrays(4)
    with pytest.raises(ValueError, match="28, 28"):
        data.Dataset(data.MNIST, "test", x_train[:, :27], y_train, x_test, y_test)
    with pytest.raises(ValueError, match="labels"):
        data.Dataset(data.MNIST, "test", x_train, y_train[:-1], x_test, y_test)


def test_auto_prefers_mnist_from_the_keras_cache(offline, tmp_path, monkeypatch):
    arrays = _arrays(5)
    _write_npz(offline / "datasets" / "mnist.npz", arrays)
    monkeypatch.setattr(data, "DEBIAN_FASHION_MNIST_DIR", _write_idx_dir(tmp_path / "debian", _arrays(6), True))
    messages = []
    dataset = data.load(data.AUTO, download=False, log=messages.append)
    assert dataset.name == data.MNIST
    _assert_arrays(dataset, arrays)
    assert messages == ["Data: " + dataset.describe()]
    assert "MNIST from %s" % (offline / "datasets" / "mnist.npz") in messages[0]


def test_auto_falls_back_to_fashion_mnist_and_says_so(offline, tmp_path, monkeypatch):
    arrays = _arrays(7)
    debian = _write_idx_dir(tmp_path / "debian", arrays, gzipped=True)
    monkeypatch.setattr(data, "DEBIAN_FASHION_MNIST_DIR", debian)
    messages = []
    dataset = data.load(data.AUTO, download=False, log=messages.append)
    assert (dataset.name, dataset.source, dataset.title) == (data.FASHION_MNIST, str(debian), "Fashion-MNIST")
    _assert_arrays(dataset, arrays)
    assert "MNIST is not available" in messages[0] and "Fashion-MNIST instead" in messages[0]
    # The Keras cache of Fashion-MNIST comes before Debian's copy.
    cached = _arrays(8)
    _write_idx_dir(offline / "datasets" / "fashion-mnist", cached, gzipped=True)
    _assert_arrays(data.load(data.FASHION_MNIST, log=messages.append), cached)


def test_nothing_available_says_how_to_get_data(offline):
    with pytest.raises(data.DataUnavailableError, match="apt-get install dataset-fashion-mnist"):
        data.load(data.AUTO, download=False, log=lambda line: None)
    with pytest.raises(data.DataUnavailableError, match="--data PATH"):
        data.load(data.MNIST, download=False, log=lambda line: None)
    assert data.main(["--check"]) == 1


def test_check_exits_zero_when_data_is_there(offline, tmp_path, capsys):
    _write_npz(offline / "datasets" / "mnist.npz", _arrays(9))
    assert data.main(["--check"]) == 0
    assert "Data: MNIST from" in capsys.readouterr().out
    assert data.main(["--check", "--data", str(_write_idx_dir(tmp_path / "given", _arrays(10), False))]) == 0


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def file_server(tmp_path):
    """A real HTTP server on a free localhost port serving `tmp_path/www`."""
    root = tmp_path / "www"
    root.mkdir()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, "http://127.0.0.1:%d/" % server.server_address[1]
    server.shutdown()
    server.server_close()
    thread.join()


def test_download_verifies_and_caches_mnist(offline, file_server, monkeypatch):
    root, url = file_server
    arrays = _arrays(11)
    npz = _write_npz(root / "mnist.npz", arrays)
    monkeypatch.setattr(data, "MNIST_URL", url + "mnist.npz")
    monkeypatch.setattr(data, "MNIST_SHA256", hashlib.sha256(npz.read_bytes()).hexdigest())
    messages = []
    dataset = data.load(data.AUTO, log=messages.append)
    assert dataset.source == str(offline / "datasets" / "mnist.npz")
    _assert_arrays(dataset, arrays)
    assert messages[0].startswith("MNIST is not in the Keras cache; trying to download")
    # Cached now: found without the server.
    assert data.find_mnist() == offline / "datasets" / "mnist.npz"


def test_download_rejects_a_wrong_checksum_and_a_missing_file(offline, file_server, monkeypatch):
    root, url = file_server
    _write_npz(root / "mnist.npz", _arrays(12))
    monkeypatch.setattr(data, "MNIST_URL", url + "mnist.npz")
    monkeypatch.setattr(data, "MNIST_SHA256", "0" * 64)
    with pytest.raises(data.DataUnavailableError, match="checksum"):
        data.download_mnist()
    monkeypatch.setattr(data, "MNIST_URL", url + "missing.npz")
    with pytest.raises(data.DataUnavailableError, match="could not download"):
        data.download_mnist()
    assert list((offline / "datasets").iterdir()) == []
    # A failed download is not fatal for `auto`: no data at all is.
    with pytest.raises(data.DataUnavailableError, match="neither MNIST nor Fashion-MNIST"):
        data.load(data.AUTO, log=lambda line: None)


def test_synthetic_is_small_deterministic_and_labelled():
    first, second = data.synthetic(), data.synthetic()
    np.testing.assert_array_equal(first.x_train, second.x_train)
    assert first.x_train.shape == (data.SYNTHETIC_TRAIN, 28, 28) and first.x_train.dtype == np.uint8
    assert first.x_test.shape == (data.SYNTHETIC_TEST, 28, 28)
    assert set(np.unique(first.y_train)) == set(range(10))
    assert "NOT real images" in first.describe() and first.title == "SYNTHETIC"
    # Images of one class resemble each other more than images of two classes.
    x = first.x_train.reshape(len(first.x_train), -1).astype(float)
    means = np.stack([x[first.y_train == label].mean(0) for label in range(10)])
    own = np.mean([np.linalg.norm(x[i] - means[first.y_train[i]]) for i in range(100)])
    other = np.mean([np.linalg.norm(x[i] - means[(first.y_train[i] + 1) % 10]) for i in range(100)])
    assert own < 0.8 * other


def test_load_rejects_unknown_dataset():
    with pytest.raises(ValueError, match="dataset must be one of"):
        data.load("cifar10")
