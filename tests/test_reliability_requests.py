"""Property-based tests: no request to any route, however malformed, gets a 5xx, and every error is a JSON message."""

from __future__ import annotations

import gzip
import pathlib
import re
import urllib.parse

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tb_server import PLUGIN_ROUTE, strict_json, wsgi_client
from werkzeug.test import EnvironBuilder
from werkzeug.wrappers import Request

from tb_gradhealth import static
from tb_gradhealth.summary import GradientHealthFileWriter

# Hostile and non-ASCII run names are ordinary directory names.
HOSTILE_RUN = '<img src=x onerror="alert(1)">'
RUNS = ("mlp", "nested/ünï", HOSTILE_RUN)
LAYERS = ("dense", "<script>alert(1)</script>", "ünï")
STATS = ("grad_norm", "nonfinite", "my_stat")
NUM_STEPS = 12
JSON_ROUTES = ("runs", "series", "health")
FRONTEND = pathlib.Path(__file__).resolve().parent.parent / "frontend"
# Error messages echo a name cut to 200 characters, whatever was sent.
MAX_ERROR_MESSAGE_CHARS = 1_000
# Modest example counts: the whole module runs in about 20 s on 2 busy cores.
EXAMPLES = settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
_MAX_POINTS = re.compile(r"[0-9]{1,18}")
_STEP = re.compile(r"-?[0-9]{1,19}")


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    root = tmp_path_factory.mktemp("requests_logdir")
    rng = np.random.default_rng(3)
    for run in RUNS:
        with GradientHealthFileWriter(str(root / run)) as writer:
            for step in range(NUM_STEPS):
                writer.write(step, {stat: rng.lognormal(size=len(LAYERS)) for stat in STATS}, LAYERS)
    return wsgi_client(str(root))


# --- strategies ---------------------------------------------------------

# Up to ~60 KB once percent-encoded: a real server refuses request lines
# over 64 KiB (http.server answers 414) before the plugin sees them.
_huge_text = st.builds(lambda char, count: char * count, st.characters(codec="utf-8"), st.integers(1_000, 5_000))
_param_values = st.one_of(
    st.sampled_from(
        RUNS + STATS + ("", "2", "3", "10000", "0", "1", "-3", "0x10", "1e3", "٢", "9" * 30, "..", "NaN", str(2**63))
    ),
    st.text(max_size=40),
    _huge_text,
)
_param_names = st.one_of(st.sampled_from(("run", "stat", "max_points", "after_step")), st.text(max_size=12))
# Pieces of a query string that no well-behaved client sends.
_raw_fragments = st.sampled_from(
    (
        "%",
        "%zz",
        "%ff%fe",
        "%c3",
        "run=%c3%28",
        "&&",
        "=",
        "run",
        "stat=",
        "a=b=c",
        ";",
        "%00",
        "run=%00",
        "+",
        "é",
        "\xff",
    )
)
_query_parts = st.lists(
    st.one_of(
        st.tuples(_param_names, _param_values).map(lambda pair: urllib.parse.urlencode([pair])),
        _raw_fragments,
    ),
    max_size=6,
)
_methods = st.sampled_from(("GET", "GET", "POST", "HEAD", "PUT", "DELETE"))
_accept_gzip = st.booleans()


def _request(client, method: str, path: str, query: str = "", gzip_ok: bool = False):
    headers = {"Accept-Encoding": "gzip"} if gzip_ok else {}
    return client.open(path, method=method, query_string=query, headers=headers)


def _body(response) -> bytes:
    data = response.get_data()
    return gzip.decompress(data) if response.headers.get("Content-Encoding") == "gzip" else data


def _check_common(response, method: str, content_type: str = "application/json"):
    """Asserts what holds for every response of ours and returns its decoded JSON (or None)."""
    assert response.status_code < 500, _body(response)[:500]
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    if response.status_code >= 400 or content_type == "application/json":
        assert response.mimetype == "application/json"
    else:
        assert response.headers["Content-Type"] == content_type
    if method == "HEAD" or response.mimetype != "application/json":
        return None
    body = strict_json(_body(response))
    if response.status_code >= 400:
        assert set(body) == {"error"}
        assert body["error"]["code"] == response.status_code
        message = body["error"]["message"]
        assert isinstance(message, str) and message
        assert len(message) < MAX_ERROR_MESSAGE_CHARS
    return body


def _args(query: str):
    """The parameters as werkzeug parses them for the plugin (the oracle decides from these)."""
    return Request(EnvironBuilder(path="/", query_string=query).get_environ()).args


def _single(args, name: str) -> tuple[bool, str | None]:
    """(valid, value) of a parameter by the documented rules: at most once, non-empty."""
    values = args.getlist(name)
    if len(values) > 1 or (values and not values[0]):
        return False, None
    return True, values[0] if values else None


def _expected_series_status(args) -> int:
    run_ok, run = _single(args, "run")
    stat_ok, stat = _single(args, "stat")
    points_ok, points = _single(args, "max_points")
    if not (run_ok and stat_ok and run is not None and stat is not None):
        return 400
    if not points_ok or (points is not None and (not _MAX_POINTS.fullmatch(points) or int(points) < 2)):
        return 400
    after_ok, after = _single(args, "after_step")
    if not after_ok or (after is not None and (not _STEP.fullmatch(after) or not -(2**63) <= int(after) < 2**63)):
        return 400
    return 200 if run in RUNS and stat in STATS else 404


def _expected_health_status(args) -> int:
    run_ok, run = _single(args, "run")
    if not run_ok:
        return 400
    return 200 if run is None or run in RUNS else 404


# --- properties ---------------------------------------------------------


@EXAMPLES
@given(parts=_query_parts, method=_methods, gzip_ok=_accept_gzip)
def test_series_answers_any_query_by_the_documented_rules(client, parts, method, gzip_ok):
    query = "&".join(parts)
    response = _request(client, method, PLUGIN_ROUTE + "/series", query, gzip_ok)
    body = _check_common(response, method)
    args = _args(query)
    assert response.status_code == _expected_series_status(args), (query[:300], body)
    if body is not None and response.status_code == 200:
        assert (body["run"], body["stat"], body["layers"]) == (args["run"], args["stat"], list(LAYERS))
        assert len(body["steps"]) == len(body["wall_times"]) == len(body["values"])
        assert all(len(row) == len(LAYERS) for row in body["values"])
        assert body["steps"] == sorted(set(body["steps"]))
        assert body["total_steps"] == NUM_STEPS
        after = args.get("after_step")
        expected_steps = [step for step in range(NUM_STEPS) if after is None or step > int(after)]
        assert body["steps"] == expected_steps and body["partial"] is (after is not None)


@settings(EXAMPLES, max_examples=40)
@given(parts=_query_parts, method=_methods, gzip_ok=_accept_gzip)
def test_health_answers_any_query_by_the_documented_rules(client, parts, method, gzip_ok):
    query = "&".join(parts)
    response = _request(client, method, PLUGIN_ROUTE + "/health", query, gzip_ok)
    body = _check_common(response, method)
    args = _args(query)
    assert response.status_code == _expected_health_status(args), (query[:300], body)
    if body is not None and response.status_code == 200:
        run = args.get("run")
        assert [entry["run"] for entry in body["runs"]] == (sorted(RUNS) if run is None else [run])


@settings(EXAMPLES, max_examples=25)
@given(parts=_query_parts, method=_methods, gzip_ok=_accept_gzip, slash=st.booleans())
def test_runs_ignores_any_query(client, parts, method, gzip_ok, slash):
    response = _request(client, method, PLUGIN_ROUTE + "/runs" + ("/" if slash else ""), "&".join(parts), gzip_ok)
    body = _check_common(response, method)
    assert response.status_code == 200
    if body is not None:
        assert [(run["run"], run["layers"], run["problems"]) for run in body["runs"]] == [
            (run, list(LAYERS), []) for run in sorted(RUNS)
        ]


def _served_files() -> set[str]:
    """Paths below the prefix that name a servable frontend file (computed from the folder itself)."""
    served = set()
    for path in FRONTEND.rglob("*"):
        relative = path.relative_to(FRONTEND)
        if (
            path.is_file()
            and path.suffix in static.CONTENT_TYPES
            and not any(p.startswith(".") for p in relative.parts)
        ):
            served.add(relative.as_posix())
    return served


SERVED_FILES = sorted(_served_files())
_segments = st.one_of(
    st.sampled_from(
        (
            ".",
            "..",
            "...",
            "%2e%2e",
            "%2E%2E",
            "%252e%252e",
            "..%2f",
            "..%5c",
            "..\\..",
            "\\",
            "%5c",
            "%2f",
            "",
            "~",
            "%00",
            "index.js%00",
            "etc",
            "passwd",
            "setup.py",
            "C:",
            "vendor",
            "uplot",
            "index.js",
            "style.css",
            ".hidden.js",
            "%c0%ae%c0%ae",
            "%ff",
            "ü",
            "a b",
            "%20",
            "*",
            "$HOME",
            ".git",
            "config",
        )
    ),
    st.sampled_from(SERVED_FILES),
    st.text(alphabet=st.characters(codec="utf-8", blacklist_characters="?#"), max_size=20),
    _huge_text.map(lambda text: text.replace("?", "").replace("#", "")),
)


@settings(EXAMPLES, max_examples=120)
@given(
    segments=st.lists(_segments, min_size=1, max_size=6),
    separator=st.sampled_from(("/", "//", "\\", "%2f")),
    method=_methods,
    gzip_ok=_accept_gzip,
)
def test_static_serves_exactly_the_frontend_files_and_404s_anything_else(client, segments, separator, method, gzip_ok):
    raw = separator.join(segments)
    response = _request(client, method, PLUGIN_ROUTE + "/" + raw, gzip_ok=gzip_ok)
    request_path = Request(EnvironBuilder(path=PLUGIN_ROUTE + "/" + raw).get_environ()).path
    # TensorBoard routes on the path without `;params` and a trailing slash.
    routed = urllib.parse.urlparse(request_path).path.rstrip("/")
    if not routed.startswith(PLUGIN_ROUTE + "/"):
        # TensorBoard's own 404 for the bare prefix: never reaches the plugin.
        assert response.status_code == 404 and response.headers["X-Content-Type-Options"] == "nosniff"
        return
    relative = request_path[len(PLUGIN_ROUTE) + 1 :]
    if routed[len(PLUGIN_ROUTE) + 1 :] in JSON_ROUTES:
        return  # another route of ours, tested above
    if relative in SERVED_FILES:
        suffix = pathlib.PurePosixPath(relative).suffix
        _check_common(response, method, static.CONTENT_TYPES[suffix])
        assert response.status_code == 200
        if method != "HEAD":
            assert _body(response) == (FRONTEND / relative).read_bytes()
    else:
        body = _check_common(response, method)
        assert response.status_code == 404, relative[:300]
        if body is not None:
            assert body["error"]["message"] == "Not found: no such file"
