"""The built wheel ships the frontend, registers the entry point, and serves the frontend from inside the package."""

from __future__ import annotations

import configparser
import pathlib
import shutil
import subprocess
import sys
import sysconfig
import zipfile

import pytest

from tb_gradhealth import static

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
# Built outside the checkout so that concurrent builds and the editable
# install's files stay apart.
_NOT_COPIED = shutil.ignore_patterns(
    ".git",
    ".venv",
    "__pycache__",
    "*.pyc",
    "*.egg-info",
    "build",
    "dist",
    "logs",
    "tests",
    ".pytest_cache",
    ".hypothesis",
    "node_modules",
    "benchmarks",
)
BUILD_TIMEOUT_S = 300


@pytest.fixture(scope="module")
def wheel_path(tmp_path_factory):
    source = tmp_path_factory.mktemp("source") / "tb_gradhealth_src"
    shutil.copytree(REPO_ROOT, source, ignore=_NOT_COPIED)
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(out), str(source)],
        check=True,
        capture_output=True,
        timeout=BUILD_TIMEOUT_S,
    )
    (wheel,) = out.glob("tb_gradhealth-*.whl")
    return wheel


def _frontend_files() -> list[str]:
    """The checkout's frontend files the tab needs: every servable one, and all vendored files (licenses)."""
    root = REPO_ROOT / "frontend"
    return sorted(
        path.relative_to(root).as_posix()
        for path in root.rglob("*")
        if path.is_file()
        and not path.name.startswith(".")
        and (path.suffix in static.CONTENT_TYPES or path.relative_to(root).parts[0] == "vendor")
    )


@pytest.mark.slow
def test_wheel_holds_every_frontend_file_and_the_plugin(wheel_path):
    names = set(zipfile.ZipFile(wheel_path).namelist())
    assert "tb_gradhealth/frontend/index.js" in names
    missing = [name for name in _frontend_files() if "tb_gradhealth/frontend/" + name not in names]
    assert missing == []
    for module in ("loader", "plugin", "reader", "downsample", "static", "metadata", "series", "summary"):
        assert "tb_gradhealth/%s.py" % module in names


@pytest.mark.slow
def test_wheel_registers_the_tensorboard_entry_point(wheel_path):
    archive = zipfile.ZipFile(wheel_path)
    (entry_points_name,) = [name for name in archive.namelist() if name.endswith(".dist-info/entry_points.txt")]
    entry_points = configparser.ConfigParser()
    entry_points.read_string(archive.read(entry_points_name).decode("utf-8"))
    assert entry_points["tensorboard_plugins"]["gradient_health"] == "tb_gradhealth.loader:GradientHealthLoader"


# Runs with `python -S` so the checkout's editable install is not on the
# path: only the unpacked wheel and the installed dependencies are.
_SERVE_FROM_WHEEL = """
import sys
sys.path[:0] = [sys.argv[1], sys.argv[2]]
from tensorboard.backend import application
from tensorboard.plugins import base_plugin
from werkzeug import test
import tb_gradhealth.static
from tb_gradhealth.loader import GradientHealthLoader
plugin = GradientHealthLoader().load(base_plugin.TBContext())
client = test.Client(application.TensorBoardWSGI([plugin]))
response = client.get("/data/plugin/gradient_health/index.js")
print(tb_gradhealth.__file__)
print(tb_gradhealth.static.frontend_dir())
print(response.status_code, response.headers["Content-Type"])
sys.stdout.flush()
sys.stdout.buffer.write(response.get_data())
"""


@pytest.mark.slow
def test_unpacked_wheel_serves_its_own_frontend(wheel_path, tmp_path):
    unpacked = tmp_path / "site"
    zipfile.ZipFile(wheel_path).extractall(unpacked)
    result = subprocess.run(
        [sys.executable, "-S", "-c", _SERVE_FROM_WHEEL, str(unpacked), sysconfig.get_paths()["purelib"]],
        check=True,
        capture_output=True,
        timeout=BUILD_TIMEOUT_S,
    )
    package_file, frontend_dir, status, body = result.stdout.split(b"\n", 3)
    assert package_file.decode() == str(unpacked / "tb_gradhealth" / "__init__.py")
    assert frontend_dir.decode() == str(unpacked / "tb_gradhealth" / "frontend")
    assert status == b"200 text/javascript; charset=utf-8"
    assert body == (REPO_ROOT / "frontend" / "index.js").read_bytes()


def test_no_deep_learning_framework_is_required_and_each_capture_is_an_extra(wheel_path):
    with zipfile.ZipFile(wheel_path) as wheel:
        (name,) = [name for name in wheel.namelist() if name.endswith(".dist-info/METADATA")]
        requires = [
            line.split(":", 1)[1].strip()
            for line in wheel.read(name).decode().splitlines()
            if line.startswith("Requires-Dist:")
        ]
    plain = sorted(req.split(">")[0].split("=")[0] for req in requires if "extra ==" not in req)
    assert plain == ["numpy", "tensorboard", "werkzeug"]
    by_extra = {}
    for req in requires:
        if "extra ==" in req:
            package, extra = req.split(";")[0].strip(), req.split("extra ==")[1].strip().strip("'\"")
            by_extra.setdefault(extra, []).append(package.split(">")[0].split("=")[0])
    assert sorted(by_extra["keras"]) == ["keras", "tensorflow"] and by_extra["torch"] == ["torch"]


_WITHOUT_TENSORFLOW = """
import sys
sys.modules["tensorflow"] = None  # as if not installed: any import of it fails
import tb_gradhealth
from tb_gradhealth import GradientHealthFileWriter  # the numpy writer needs no TensorFlow
try:
    from tb_gradhealth import GradientHealthCallback
except ModuleNotFoundError as error:
    print(error)
"""


def test_without_tensorflow_the_keras_capture_says_which_extra_to_install():
    done = subprocess.run([sys.executable, "-c", _WITHOUT_TENSORFLOW], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == (
        "tb_gradhealth.GradientHealthCallback needs TensorFlow and Keras 3: pip install 'tb-gradhealth[keras]'"
    )
