"""The Gradient Health TensorBoard plugin: routes serving runs, per-layer series, diagnoses and the frontend's files."""

from __future__ import annotations

import functools
import json
import logging
import math
import re
import zlib

import numpy as np
from tensorboard import errors, plugin_util
from tensorboard.backend import http_util, json_util
from tensorboard.plugins import base_plugin
from werkzeug import wrappers

from tb_gradhealth import cache, downsample, event_files, health, metadata, reader, static
from tb_gradhealth.series import StatSeries

# The sizes /series serves (`max_points`, steps per series): a request is
# rounded up to the next one (down to the largest), so that the responses
# of every viewer and chart width fall on a few cached bodies. Powers of
# two, as the tab rounds a chart's width in device pixels; the largest holds
# a run of TensorBoard's default sample (10,000 steps) whole.
MAX_POINTS_SIZES = (512, 1_024, 2_048, 4_096, 8_192, 16_384)  # steps per series
# About a wide chart's width in device pixels.
DEFAULT_MAX_POINTS = 2_048  # steps per series
# Values (steps x layers) in one /series response: bounds its memory and
# CPU (about 20 bytes of JSON per value) whatever the run; a wide run gets
# fewer steps (a smaller size of MAX_POINTS_SIZES: 1,024 at 1,000 layers),
# and the response says so in `notices`.
MAX_VALUES_PER_RESPONSE = 2**20
# Reading a statistic from the data provider holds it up to three times at
# once (the provider's message, its arrays, our table), on both sides of the
# provider's connection: one read at a time (on its own thread), the other
# requests wait.
MAX_CONCURRENT_READS = 1
# Encoding a body and diagnosing a run take memory in proportion to the
# response or to a run's data: at most this many at once (on threads of
# their own). Two keep a core for TensorBoard's own work.
MAX_HEAVY_COMPUTATIONS = 2
# Values encoded and compressed at a time: a body is never held as Python
# floats or uncompressed text whole, and other requests' threads get the
# interpreter between two parts.
_VALUES_ENCODED_AT_ONCE = 2_048

# Responses computed from unchanged data are kept: the tab polls /health and
# the /series of every shown run, and each viewer multiplies that; a burst of
# identical requests is computed once. A response stays valid while the
# data it was computed from is unchanged (its key holds each tag's max step,
# max wall time and a digest of its metadata), so /health over many finished
# runs is computed once. Each kind of result has a store of its own, so that
# big /series bodies never evict diagnoses.
SERIES_CACHE_MAX_BYTES = 64 * 2**20  # bytes of gzipped /series bodies
# The statistics read, so that other sizes, `after_step` requests and the
# diagnosis do not read a run from the data provider again.
STAT_CACHE_MAX_BYTES = 192 * 2**20  # bytes of decoded series (float32: 4 bytes per value)
STAT_CACHE_MAX_VALUE_BYTES = 64 * 2**20  # a larger series is read for each use (16 M values)
HEALTH_CACHE_MAX_BYTES = 8 * 2**20  # bytes of diagnosis JSON (0.1-2 KiB per run: thousands of runs)
# Data that changes neither the max step nor the max wall time of any tag
# (e.g. steps rewritten with explicit older wall times) is not seen by the
# key: a response older than this is recomputed in the background, so such
# a change shows within this bound while no request waits for it.
CACHE_REVALIDATE_AFTER_S = 30 * 60.0  # seconds
# A fast level: the bodies are large and computed once, and level 1 costs a
# fraction of the CPU of higher levels for a few percent more bytes.
_GZIP_LEVEL = 1
_GZIP_WBITS = 31  # zlib's gzip container

_JSON = "application/json"
_UNSIGNED_INT = re.compile(r"[0-9]{1,18}")
_STEP = re.compile(r"-?[0-9]{1,19}")
_INT64 = (-(2**63), 2**63 - 1)
_ROUTE_PREFIX = "/data/plugin/%s/" % metadata.PLUGIN_NAME

_logger = logging.getLogger(__name__)


def _json_errors(handler):
    """Answers a raised `tensorboard.errors.PublicError` (and anything unexpected) with a JSON body.

    TensorBoard's own error middleware answers with text/plain, and an
    unexpected exception with an HTML page; the frontend and scripts get
    `{"error": {"code": 404, "message": "..."}}` instead.
    """

    @functools.wraps(handler)
    def wrapped(self, request):
        try:
            return handler(self, request)
        except errors.PublicError as error:
            body = {"error": {"code": error.http_code, "message": str(error)}}
            return http_util.Respond(request, body, _JSON, code=error.http_code, headers=error.headers)
        except Exception as error:
            _logger.exception("request %s failed", request.path)
            body = {"error": {"code": 500, "message": "internal error: %s" % type(error).__name__}}
            return http_util.Respond(request, body, _JSON, code=500)

    return wrapped


def _single_arg(request, name: str, required: bool) -> str | None:
    """Returns query parameter `name`, given at most once and non-empty when given.

    Raises:
      tensorboard.errors.InvalidArgumentError: repeated, empty, or missing
        while required.
    """
    values = request.args.getlist(name)
    if len(values) > 1:
        raise errors.InvalidArgumentError("parameter %r given %d times" % (name, len(values)))
    if not values:
        if required:
            raise errors.InvalidArgumentError("missing parameter %r" % name)
        return None
    if not values[0]:
        raise errors.InvalidArgumentError("parameter %r is empty" % name)
    return values[0]


def normalized_max_points(requested: int) -> int:
    """Returns the size of `MAX_POINTS_SIZES` served for a request of `requested` points."""
    return next((size for size in MAX_POINTS_SIZES if size >= requested), MAX_POINTS_SIZES[-1])


def _parse_max_points(text: str | None) -> int:
    if text is None:
        return DEFAULT_MAX_POINTS
    if not _UNSIGNED_INT.fullmatch(text) or int(text) < downsample.MIN_POINTS:
        raise errors.InvalidArgumentError(
            "max_points must be an integer of at least %d, got %s" % (downsample.MIN_POINTS, metadata.quoted_name(text))
        )
    return normalized_max_points(int(text))


def _parse_after_step(text: str | None) -> int | None:
    if text is None:
        return None
    if not _STEP.fullmatch(text) or not _INT64[0] <= int(text) <= _INT64[1]:
        raise errors.InvalidArgumentError("after_step must be a step (an int64), got %s" % metadata.quoted_name(text))
    return int(text)


def _json_floats(array: np.ndarray, recorded: np.ndarray | None = None) -> list:
    """Returns `array.tolist()` with NaN and infinities as the strings http_util.Respond writes, and None where not recorded."""
    values = array.tolist()
    # Only the non-finite cells are visited: walking every value in Python
    # (json_util.Cleanse) costs more than the encoding.
    nonfinite = ~np.isfinite(array)
    for index in np.argwhere(nonfinite).tolist():
        row = values
        for i in index[:-1]:
            row = row[i]
        if recorded is not None and not recorded[tuple(index)]:
            row[index[-1]] = None
            continue
        value = row[index[-1]]
        row[index[-1]] = "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    return values


def _json_size(value) -> int:
    return len(json.dumps(json_util.Cleanse(value)))


def _stat_size(read: tuple) -> int:
    series, problems = read
    return (series.nbytes if series is not None else 0) + 1_024 * (1 + len(problems))


def rows_served(max_points: int, n_layers: int) -> tuple[int, int]:
    """Returns (the size of `MAX_POINTS_SIZES` served, the most rows a response may hold) for `n_layers` layers.

    The size is `max_points` unless its rows of `n_layers` values exceed
    `MAX_VALUES_PER_RESPONSE`: then the largest size that fits (or as many
    rows as fit, at least `downsample.MIN_POINTS`, when none does).
    """
    limit = max(downsample.MIN_POINTS, MAX_VALUES_PER_RESPONSE // max(1, n_layers))
    if max_points <= limit:
        return max_points, limit
    fitting = [size for size in MAX_POINTS_SIZES if size <= limit]
    return (fitting[-1] if fitting else limit), limit


def series_response(
    run: str,
    stat_tags: reader.StatTags,
    series: StatSeries,
    problems,
    max_points: int,
    after_step: int | None = None,
) -> tuple[dict, np.ndarray, np.ndarray | None]:
    """Returns the `/series` body of one statistic (see http_api.md): (its fields, the rows of `values`, their recorded mask).

    The fields are ready for `json.dumps`, `values` among them as None: the
    values are encoded by `gzipped_series`, a part at a time.

    Args:
      max_points: the size asked for, one of `MAX_POINTS_SIZES`.
    """
    n_layers = len(series.layers)
    size, limit = rows_served(max_points, n_layers)
    notices = []
    partial = after_step is not None and series.num_steps <= size
    if partial:
        rows = np.arange(np.searchsorted(series.steps, after_step, side="right"), series.num_steps)
    else:
        selection = downsample.select_rows(series.values, size, series.recorded, limit)
        rows = selection.indices
        widest, _ = rows_served(MAX_POINTS_SIZES[-1], n_layers)
        if widest < MAX_POINTS_SIZES[-1] and series.num_steps > size:
            # Said whatever size was asked, so that every size gives one body.
            notices.append(
                "%d layers: at most %d values are served per response, so no more than %d of the %d steps are "
                "shown, each layer's extremes and the non-finite steps first"
                % (n_layers, MAX_VALUES_PER_RESPONSE, widest, series.num_steps)
            )
        if not selection.complete:
            notices.append(
                "not every step that matters fits: %d of the %d steps holding a non-finite value or a "
                "layer's smallest or largest value are shown (the first non-finite step among them)"
                % (selection.required_kept, selection.required)
            )
    fields = {
        "run": run,
        "stat": series.stat,
        "scope": stat_tags.scope,
        "layers": list(series.layers),
        "kinds": None if stat_tags.kinds is None else list(stat_tags.kinds),
        "params": None if stat_tags.params is None else list(stat_tags.params),
        "steps": series.steps[rows].tolist(),
        "wall_times": _json_floats(series.wall_times[rows]),
        "values": None,
        "total_steps": series.num_steps,
        "max_points": size,
        "partial": partial,
        "notices": notices,
        "problems": [problem.to_json() for problem in problems],
    }
    return fields, series.values[rows], None if series.recorded is None else series.recorded[rows]


def _json(value) -> str:
    # allow_nan=False: a non-finite float not made a string first raises
    # rather than write invalid JSON.
    return json.dumps(value, allow_nan=False, check_circular=False)


def gzipped_series(fields: dict, values: np.ndarray, recorded: np.ndarray | None) -> bytes:
    """Gzipped JSON of a `/series` body, as http_util.Respond would write it (ASCII only, no bare NaN or Infinity).

    The text is what `json.dumps` makes of the whole body; the values are
    encoded and compressed a few rows at a time, so that a big body takes
    the memory of its compressed bytes, not of its Python floats and text.
    """
    # The key of `values` can occur only once in the text: quotes inside
    # names are escaped.
    head, found, tail = _json(fields).partition('"values": null')
    if not found:
        raise AssertionError("a /series body has values")
    compressor = zlib.compressobj(_GZIP_LEVEL, zlib.DEFLATED, _GZIP_WBITS)
    parts = [compressor.compress(head.encode("ascii") + b'"values": [')]
    rows_at_once = max(1, _VALUES_ENCODED_AT_ONCE // max(1, values.shape[1]))
    for start in range(0, len(values), rows_at_once):
        end = start + rows_at_once
        chunk = _json_floats(values[start:end], None if recorded is None else recorded[start:end])
        text = _json(chunk)[1:-1]
        parts.append(compressor.compress(((", " if start else "") + text).encode("ascii")))
    parts.append(compressor.compress(b"]" + tail.encode("ascii")))
    parts.append(compressor.flush())
    return b"".join(parts)


class GradientHealthPlugin(base_plugin.TBPlugin):
    """Serves Gradient Health data read through `context.data_provider`."""

    plugin_name = metadata.PLUGIN_NAME

    def __init__(self, context: base_plugin.TBContext):
        self._provider = context.data_provider
        # Data that the providers silently stop reading at (a cut or damaged
        # event file) is found by checking the files themselves.
        self._file_checker = event_files.RunFileChecker(context.logdir)
        # One background worker revalidates every store, so revalidation
        # takes at most one core.
        background = cache.BackgroundWorker().submit
        self._series_cache = cache.ResponseCache(
            SERIES_CACHE_MAX_BYTES, CACHE_REVALIDATE_AFTER_S, background=background
        )
        self._stat_cache = cache.ResponseCache(
            STAT_CACHE_MAX_BYTES,
            CACHE_REVALIDATE_AFTER_S,
            background=background,
            max_value_bytes=STAT_CACHE_MAX_VALUE_BYTES,
        )
        self._health_cache = cache.ResponseCache(
            HEALTH_CACHE_MAX_BYTES, CACHE_REVALIDATE_AFTER_S, background=background
        )
        # Listings are never kept (new data must show at once), but a burst
        # of requests shares one.
        self._listings = cache.SingleFlight()
        self._readers = cache.Workers(MAX_CONCURRENT_READS, "read")
        self._workers = cache.Workers(MAX_HEAVY_COMPUTATIONS, "encode")

    def get_plugin_apps(self):
        return {
            "/runs": self._serve_runs,
            "/series": self._serve_series,
            "/health": self._serve_health,
            # Everything else below our prefix is a frontend file (index.js
            # imports its siblings by relative URL).
            "/*": self._serve_static,
        }

    def is_active(self) -> bool:
        # TensorBoard enables the tab itself when the data provider lists
        # data of `data_plugin_names()`, i.e. of `gradient_health`.
        return False

    def frontend_metadata(self) -> base_plugin.FrontendMetadata:
        return base_plugin.FrontendMetadata(es_module_path="/index.js", tab_name=metadata.TAB_LABEL)

    def _request_scope(self, request):
        if self._provider is None:
            raise errors.NotFoundError("TensorBoard gave this plugin no data provider")
        return plugin_util.context(request.environ), plugin_util.experiment_id(request.environ)

    def _listing(self, ctx, experiment_id: str, run: str | None = None) -> dict[str, reader.RunTags]:
        return self._listings.run(
            (experiment_id, run), lambda: reader.list_run_tags(self._provider, ctx, experiment_id, run)
        )

    def _read_stat(self, provider, ctx, experiment_id: str, run: str, stat_tags: reader.StatTags, urgent=False):
        """`reader.read_stat`, kept per version of the statistic's tags, `MAX_CONCURRENT_READS` at a time.

        Args:
          urgent: a chart waits for it: it goes before the reads of diagnoses.
        """

        def compute():
            return self._readers.run(lambda: reader.read_stat(provider, ctx, experiment_id, run, stat_tags), urgent)

        key = ("stat", experiment_id, run, stat_tags.stat, stat_tags.version)
        return self._stat_cache.get_or_compute(key, compute, _stat_size)

    def _file_problems(self, run: str) -> list[event_files.FileProblem]:
        return self._file_checker.problems(run)

    def runs_impl(self, ctx, experiment_id: str) -> dict:
        """Returns {"runs": [run JSON, ...]} sorted by run name (see http_api.md)."""
        runs = []
        for run_tags in self._listing(ctx, experiment_id).values():
            info = reader.run_info(run_tags)
            info["problems"] += [problem.to_json() for problem in self._file_problems(run_tags.run)]
            runs.append(info)
        return {"runs": runs}

    def series_body(
        self, ctx, experiment_id: str, run: str, stat: str, max_points: int, after_step: int | None = None
    ) -> bytes:
        """Returns the gzipped JSON of `series_response`, cached while the statistic's data is unchanged.

        Args:
          max_points: one of `MAX_POINTS_SIZES`.
        """
        run_tags = self._listing(ctx, experiment_id, run).get(run)
        if run_tags is None:
            raise reader.no_data_error(run)
        stat_tags = run_tags.stats.get(stat)

        def compute() -> bytes:
            read = functools.partial(self._read_stat, urgent=True)
            data = reader.load_run(self._provider, ctx, experiment_id, run, [stat], run_tags=run_tags, read=read)
            series = data.series[stat]

            def encode() -> bytes:
                return gzipped_series(*series_response(run, stat_tags, series, data.problems, max_points, after_step))

            return self._workers.run(encode, urgent=True)

        if stat_tags is None:
            return compute()  # raises the NotFoundError
        # Every size a wide run is capped at gives the same body.
        size, _ = rows_served(max_points, len(stat_tags.layers))
        key = ("series", experiment_id, run, stat, size, after_step, stat_tags.version)
        return self._series_cache.get_or_compute(key, compute, len)

    def health_impl(self, ctx, experiment_id: str, run: str | None) -> dict:
        """Returns {"runs": [{"run", "verdict", "findings", "problems", "notes"}, ...]}."""
        listing = self._listing(ctx, experiment_id, run)
        if run is not None and run not in listing:
            raise reader.no_data_error(run)
        results = []
        for name, run_tags in listing.items():

            def compute(run_tags=run_tags) -> dict:
                data = reader.load_run(
                    self._provider, ctx, experiment_id, run_tags.run, run_tags=run_tags, read=self._read_stat
                )
                return self._workers.run(lambda: health.diagnose(data))

            key = ("health", experiment_id, name, run_tags.version)
            diagnosed = self._health_cache.get_or_compute(key, compute, _json_size)
            # The event files are checked afresh: they can break without new data.
            results.append(health.run_health(name, diagnosed, self._file_problems(name)))
        return {"runs": results}

    @wrappers.Request.application
    @_json_errors
    def _serve_runs(self, request):
        """Returns {"runs": [{"run", "stats", "scalars", "layers", "kinds", "params", "max_step", "last_wall_time", "problems"}]}."""
        ctx, experiment_id = self._request_scope(request)
        return http_util.Respond(request, self.runs_impl(ctx, experiment_id), _JSON)

    @wrappers.Request.application
    @_json_errors
    def _serve_series(self, request):
        """Returns one statistic of one run, one row per step in step order."""
        run = _single_arg(request, "run", required=True)
        stat = _single_arg(request, "stat", required=True)
        max_points = _parse_max_points(_single_arg(request, "max_points", required=False))
        after_step = _parse_after_step(_single_arg(request, "after_step", required=False))
        ctx, experiment_id = self._request_scope(request)
        body = self.series_body(ctx, experiment_id, run, stat, max_points, after_step)
        # Respond passes the gzipped body on, or unzips it for a client that
        # does not accept gzip.
        return http_util.Respond(request, body, _JSON, content_encoding="gzip")

    @wrappers.Request.application
    @_json_errors
    def _serve_health(self, request):
        """Returns the diagnosis of every run, or of `run` only."""
        run = _single_arg(request, "run", required=False)
        ctx, experiment_id = self._request_scope(request)
        return http_util.Respond(request, self.health_impl(ctx, experiment_id, run), _JSON)

    @wrappers.Request.application
    @_json_errors
    def _serve_static(self, request):
        """Serves a file of the frontend folder; 404 for anything else."""
        path = request.path
        relative = path[len(_ROUTE_PREFIX) :] if path.startswith(_ROUTE_PREFIX) else ""
        root = static.frontend_dir()
        asset = static.resolve(root, relative) if root is not None else None
        if asset is None:
            raise errors.NotFoundError("no such file")
        return http_util.Respond(request, asset.read_bytes(), static.content_type(asset))
