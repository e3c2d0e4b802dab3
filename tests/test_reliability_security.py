"""Security: nosniff and exact content types on every response, hostile names stay JSON data, and no inline script in the frontend."""

from __future__ import annotations

import pathlib
import re

import numpy as np
import pytest
from tb_server import PLUGIN_ROUTE, strict_json, wsgi_client

from tb_gradhealth import metadata, static
from tb_gradhealth.summary import GradientHealthFileWriter

FRONTEND = pathlib.Path(__file__).resolve().parent.parent / "frontend"
# Directory names may hold anything but "/" and NUL.
HOSTILE_RUN = "<img src=x onerror=alert(1)> & \"'`${x}"
HOSTILE_LAYERS = ("<script>alert(1)</script>", "<svg onload=alert(2)>", "\u202eevil", "a\"b'c</td>")
STAT = metadata.GRAD_NORM
NUM_STEPS = 4
JSON_TYPE = "application/json"


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    with GradientHealthFileWriter(str(root / HOSTILE_RUN)) as writer:
        for step in range(NUM_STEPS):
            writer.write(step, {STAT: np.arange(len(HOSTILE_LAYERS)) + step}, HOSTILE_LAYERS)
    return wsgi_client(str(root))


def _get(client, path: str, **params):
    return client.get(PLUGIN_ROUTE + path, query_string=params or None)


def _assert_safe_headers(response, content_type: str) -> None:
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Content-Type"] == content_type


# Every route, with a good request and the errors it can answer.
ROUTE_CASES = [
    ("/runs", {}, 200),
    ("/series", {"run": HOSTILE_RUN, "stat": STAT}, 200),
    ("/series", {"run": HOSTILE_RUN}, 400),
    ("/series", {"run": HOSTILE_RUN, "stat": STAT, "max_points": "<b>"}, 400),
    ("/series", {"run": "<script>alert(1)</script>", "stat": STAT}, 404),
    ("/series", {"run": HOSTILE_RUN, "stat": "<svg onload=alert(1)>"}, 404),
    ("/health", {}, 200),
    ("/health", {"run": HOSTILE_RUN}, 200),
    ("/health", {"run": ""}, 400),
    ("/health", {"run": "<script>"}, 404),
    ("/<script>alert(1)</script>.js", {}, 404),
    ("/nope.html", {}, 404),
]


@pytest.mark.parametrize("path, params, status", ROUTE_CASES)
def test_every_route_and_error_is_json_with_nosniff(client, path, params, status):
    response = _get(client, path, **params)
    assert response.status_code == status
    _assert_safe_headers(response, JSON_TYPE)
    body = strict_json(response.get_data())
    if status != 200:
        assert body["error"]["code"] == status and body["error"]["message"]


def test_every_frontend_file_has_its_exact_type_and_nosniff(client):
    served = 0
    for path in sorted(FRONTEND.rglob("*")):
        if path.is_file() and path.suffix in static.CONTENT_TYPES:
            response = _get(client, "/" + path.relative_to(FRONTEND).as_posix())
            assert response.status_code == 200
            _assert_safe_headers(response, static.CONTENT_TYPES[path.suffix])
            served += 1
    assert served >= 2


def test_hostile_names_come_back_as_exact_json_strings(client):
    runs = strict_json(_get(client, "/runs").get_data())["runs"]
    assert [(run["run"], run["layers"]) for run in runs] == [(HOSTILE_RUN, list(HOSTILE_LAYERS))]
    series = strict_json(_get(client, "/series", run=HOSTILE_RUN, stat=STAT).get_data())
    assert (series["run"], series["layers"]) == (HOSTILE_RUN, list(HOSTILE_LAYERS))
    health = strict_json(_get(client, "/health", run=HOSTILE_RUN).get_data())
    assert [run["run"] for run in health["runs"]] == [HOSTILE_RUN]
    # In an error message a name is quoted data too, never markup of ours.
    error = strict_json(_get(client, "/series", run="<script>alert(1)</script>", stat=STAT).get_data())
    assert error["error"]["message"] == "Not found: no gradient health data for run '<script>alert(1)</script>'"


# --- the frontend under TensorBoard's Content-Security-Policy -------------

# What a CSP without 'unsafe-inline' / 'unsafe-eval' blocks, or what turns
# data into markup (and so could run a hostile run or layer name).
FORBIDDEN_IN_SCRIPTS = {
    "markup sink": re.compile(
        r"\.(innerHTML|outerHTML)\s*[+]?=|insertAdjacentHTML|document\.write|createContextualFragment|DOMParser|srcdoc"
    ),
    "eval": re.compile(r"\beval\s*\(|new\s+Function\s*\(|set(Timeout|Interval)\s*\(\s*['\"`]"),
    "inline handler": re.compile(
        r"setAttribute\(\s*['\"`]on[a-z]+|attrs\s*:\s*\{[^}]*\bon[a-z]+\s*:|['\"`]\s*on[a-z]+\s*=\s*['\"]"
    ),
    "javascript: URL": re.compile(r"javascript:", re.IGNORECASE),
    "remote code or style": re.compile(
        r"(import|from|import\()\s*['\"`]https?:|url\(\s*['\"]?https?:|@import\s+(url\()?['\"]?https?:"
    ),
}
FORBIDDEN_IN_HTML = {
    "inline script": re.compile(r"<script(?![^>]*\bsrc=)[^>]*>", re.IGNORECASE),
    "inline handler": re.compile(r"<[^>]+\son[a-z]+\s*=", re.IGNORECASE),
    "javascript: URL": re.compile(r"javascript:", re.IGNORECASE),
}
FORBIDDEN_IN_CSS = {
    "script in style": re.compile(r"expression\s*\(|javascript:|behavior\s*:", re.IGNORECASE),
    "remote style": re.compile(r"@import|url\(\s*['\"]?https?:", re.IGNORECASE),
}


def _frontend_files(suffixes):
    return sorted(path for path in FRONTEND.rglob("*") if path.is_file() and path.suffix in suffixes)


@pytest.mark.parametrize(
    "suffixes, rules",
    [((".js", ".mjs"), FORBIDDEN_IN_SCRIPTS), ((".html",), FORBIDDEN_IN_HTML), ((".css",), FORBIDDEN_IN_CSS)],
    ids=["scripts", "html", "css"],
)
def test_frontend_has_no_inline_script_eval_markup_sink_or_remote_code(suffixes, rules):
    found = []
    for path in _frontend_files(suffixes):
        text = path.read_text(encoding="utf-8")
        for what, pattern in rules.items():
            for match in pattern.finditer(text):
                line = text.count("\n", 0, match.start()) + 1
                found.append("%s:%d: %s: %r" % (path.relative_to(FRONTEND), line, what, match.group(0)))
    assert found == []


def test_the_rules_catch_what_they_are_for():
    # Each rule on a line it must flag, so that an empty result above means something.
    samples = {
        "markup sink": "node.innerHTML = name;",
        "eval": "setTimeout('draw()', 10);",
        "inline handler": "el('button', {attrs: {onclick: 'x()'}});",
        "javascript: URL": "a.href = 'JavaScript:alert(1)';",
        "remote code or style": "import {x} from 'https://cdn.example/x.js';",
    }
    for what, sample in samples.items():
        assert FORBIDDEN_IN_SCRIPTS[what].search(sample), what
    assert FORBIDDEN_IN_HTML["inline script"].search("<script>alert(1)</script>")
    assert not FORBIDDEN_IN_HTML["inline script"].search('<script type="module" src="./index.js"></script>')
    assert FORBIDDEN_IN_HTML["inline handler"].search('<img src=x onerror="alert(1)">')
    assert FORBIDDEN_IN_CSS["remote style"].search("@import url(https://fonts.example/a.css);")
