"""The static route serves the frontend folder's files and nothing outside it."""

from __future__ import annotations

import pathlib

import pytest
from tb_server import PLUGIN_ROUTE, strict_json, wsgi_client

from tb_gradhealth import static

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    return wsgi_client(str(tmp_path_factory.mktemp("empty_logdir")))


def test_frontend_dir_is_the_checkouts_frontend_folder():
    assert static.frontend_dir() == REPO_ROOT / "frontend"


def test_index_js_is_served_as_javascript_with_nosniff(client):
    response = client.get(PLUGIN_ROUTE + "/index.js")
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "text/javascript; charset=utf-8"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.get_data() == (REPO_ROOT / "frontend" / "index.js").read_bytes()


def test_every_frontend_file_is_served_with_its_content_type(client):
    root = REPO_ROOT / "frontend"
    served = 0
    for path in sorted(root.rglob("*")):
        if not path.is_file() or path.suffix not in static.CONTENT_TYPES:
            continue
        relative = path.relative_to(root).as_posix()
        response = client.get(PLUGIN_ROUTE + "/" + relative)
        assert response.status_code == 200, relative
        assert response.headers["Content-Type"] == static.CONTENT_TYPES[path.suffix], relative
        assert response.get_data() == path.read_bytes(), relative
        served += 1
    assert served >= 1


# (The bare prefix `/data/plugin/gradient_health/` never reaches the plugin:
# TensorBoard's router strips the trailing slash and answers 404 itself.)
UNSAFE_PATHS = [
    "/../../../setup.py",
    "/../tb_gradhealth/plugin.py",
    "/..%2f..%2fsetup.py",
    "/%2e%2e%2f%2e%2e%2fsetup.py",
    "/%2E%2E/%2E%2E/setup.py",
    "/%252e%252e%252fsetup.py",
    "/..%5c..%5csetup.py",
    "/..\\..\\setup.py",
    "/index.js%5c..%5c..%5csetup.py",
    "/%2fetc%2fpasswd",
    "/%2f%2fetc/passwd",
    "//etc/passwd",
    "/%2F" + "%2E%2E%2F" * 8 + "etc%2Fpasswd",
    "/C:%5cWindows%5cwin.ini",
    "/%5c%5cserver%5cshare%5cx.js",
    "/vendor/../../setup.py",
    "/vendor/uplot/../../../setup.py",
    "/..;/setup.py",
    "/....//setup.py",
    "/%c0%ae%c0%ae/setup.py",
    "/%u002e%u002e/setup.py",
    "/index.js%20",
    "/ index.js",
    "/~/.bashrc",
    "/./index.js",
    "/index.js/",
    "/index.js%00.png",
    "/.hidden.js",
    "/nonexistent.js",
    "/vendor",
]


@pytest.mark.parametrize("path", UNSAFE_PATHS)
def test_unsafe_or_unknown_paths_are_404_with_json_message(client, path):
    response = client.get(PLUGIN_ROUTE + path)
    assert response.status_code == 404, path
    assert response.mimetype == "application/json"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert strict_json(response.get_data())["error"] == {"code": 404, "message": "Not found: no such file"}


@pytest.fixture
def asset_root(tmp_path):
    root = tmp_path / "assets"
    (root / "vendor").mkdir(parents=True)
    (root / "index.js").write_text("export function render() {}\n")
    (root / "vendor" / "chart.js").write_text("export {};\n")
    (root / "style.css").write_text("body {}\n")
    (root / "notes.py").write_text("secret = 1\n")
    (tmp_path / "outside.js").write_text("export const secret = 1;\n")
    (root / "link.js").symlink_to(tmp_path / "outside.js")
    (root / "inside_link.js").symlink_to(root / "index.js")
    return root


@pytest.mark.parametrize(
    "relative, expected",
    [
        ("index.js", "index.js"),
        ("vendor/chart.js", "vendor/chart.js"),
        ("style.css", "style.css"),
        ("inside_link.js", "index.js"),
        ("link.js", None),  # a symlink leading out of the folder
        ("notes.py", None),  # a type we do not serve
        ("../outside.js", None),
        ("vendor/../index.js", None),
        ("vendor//chart.js", None),
        ("/index.js", None),
        ("vendor\\chart.js", None),
        ("", None),
        ("vendor", None),
        ("index.js\x00", None),
        ("x" * 300 + ".js", None),
    ],
)
def test_resolve_table(asset_root, relative, expected):
    resolved = static.resolve(asset_root, relative)
    if expected is None:
        assert resolved is None
    else:
        assert resolved == (asset_root / expected).resolve()
