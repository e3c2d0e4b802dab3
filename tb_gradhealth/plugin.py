"""The Gradient Health TensorBoard plugin: routes serving runs, per-layer series, diagnoses and the frontend's files."""

from __future__ import annotations

import dataclasses
import functools
import gzip
import json
import math
import re

import numpy as np
from tensorboard import errors, plugin_util
from tensorboard.backend import http_util, json_util
from tensorboard.plugins import base_plugin
from werkzeug import wrappers

from tb_gradhealth import cache, diagnosis, downsample, event_files, metadata, reader, static

# Rows served by /series when the request gives no `max_points`: a run of up
# to this many logged steps is served whole (the loader keeps as many).
DEFAULT_MAX_POINTS = 10_000  # steps per series

# Responses computed from unchanged data are kept: the tab polls /health and
# the /series of every shown run, and each viewer multiplies that; a burst of
# identical requests is computed once. A response stays valid while the
# data it was computed from is unchanged (its key holds each tag's max step,
# max wall time and metadata), so /health over many finished runs is
# computed once. Diagnoses have a store of their own, so that big /series
# bodies never evict them.
SERIES_CACHE_MAX_BYTES = 64 * 2**20  # bytes of gzipped /series bodies (~7 runs of 10,000 x 100 values)
HEALTH_CACHE_MAX_BYTES = 8 * 2**20  # bytes of diagnosis JSON (0.1-2 KiB per run: thousands of runs)
# Data that changes neither the max step nor the max wall time of any tag
# (e.g. steps rewritten with explicit older wall times) is not seen by the
# key: a response older than this is recomputed in the background, so such
# a change shows within this bound while no request waits for it. At 50
# runs of 10,000 steps that costs ~2 CPU minutes per bound while the tab is
# open (~7% of one core).
CACHE_REVALIDATE_AFTER_S = 30 * 60.0  # seconds
# Level 1 compresses a 10,000 x 100 /series body 2.5x faster than level 3
# (http_util.Respond's) for 5% more bytes.
_GZIP_LEVEL = 1

_JSON = "application/json"
# /health's verdict for a run none of whose statistics can be read (its
# `problems` say why); the diagnosis itself never returns it.
UNREADABLE_VERDICT = "unreadable"
_UNSIGNED_INT = re.compile(r"[0-9]{1,18}")
_ROUTE_PREFIX = "/data/plugin/%s/" % metadata.PLUGIN_NAME


def _json_errors(handler):
    """Answers a raised `tensorboard.errors.PublicError` with a JSON body.

    TensorBoard's own error middleware answers with text/plain; the frontend
    and scripts get `{"error": {"code": 404, "message": "..."}}` instead.
    """

    @functools.wraps(handler)
    def wrapped(self, request):
        try:
            return handler(self, request)
        except errors.PublicError as error:
            body = {"error": {"code": error.http_code, "message": str(error)}}
            return http_util.Respond(request, body, _JSON, code=error.http_code, headers=error.headers)

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


def _parse_max_points(text: str | None) -> int:
    if text is None:
        return DEFAULT_MAX_POINTS
    if not _UNSIGNED_INT.fullmatch(text) or int(text) < downsample.MIN_POINTS:
        raise errors.InvalidArgumentError(
            "max_points must be an integer of at least %d, got %s" % (downsample.MIN_POINTS, reader.quoted_name(text))
        )
    return int(text)


def _json_floats(array: np.ndarray) -> list:
    """Returns `array.tolist()` with NaN and infinities as the strings http_util.Respond writes."""
    values = array.tolist()
    # Only the few non-finite cells are visited: walking every value in
    # Python (json_util.Cleanse) costs more than the encoding.
    for index in np.argwhere(~np.isfinite(array)).tolist():
        row = values
        for i in index[:-1]:
            row = row[i]
        value = row[index[-1]]
        row[index[-1]] = "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    return values


def _gzipped_json(value) -> bytes:
    """Gzipped JSON as http_util.Respond writes it: ASCII only, no bare NaN or Infinity.

    `allow_nan=False`: a non-finite float not made a string first raises
    rather than write invalid JSON.
    """
    text = json.dumps(value, allow_nan=False)
    return gzip.compress(text.encode("ascii"), compresslevel=_GZIP_LEVEL, mtime=0)


def _json_size(value) -> int:
    return len(json.dumps(json_util.Cleanse(value)))


class GradientHealthPlugin(base_plugin.TBPlugin):
    """Serves Gradient Health data read through `context.data_provider`."""

    plugin_name = metadata.PLUGIN_NAME

    def __init__(self, context: base_plugin.TBContext):
        self._provider = context.data_provider
        # Data that the providers silently stop reading at (a cut or damaged
        # event file) is found by checking the files themselves.
        self._file_checker = event_files.RunFileChecker(context.logdir)
        # One background worker revalidates both stores, so revalidation
        # takes at most one core.
        background = cache.BackgroundWorker().submit
        self._series_cache = cache.ResponseCache(
            SERIES_CACHE_MAX_BYTES, CACHE_REVALIDATE_AFTER_S, background=background
        )
        self._health_cache = cache.ResponseCache(
            HEALTH_CACHE_MAX_BYTES, CACHE_REVALIDATE_AFTER_S, background=background
        )

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

    def runs_impl(self, ctx, experiment_id: str) -> dict:
        """Returns {"runs": [RunInfo JSON, ...]} sorted by run name."""
        runs = reader.list_runs(self._provider, ctx, experiment_id)
        runs = [dataclasses.replace(info, problems=info.problems + self._file_problems(info.run)) for info in runs]
        return {"runs": [info.to_json() for info in runs]}

    def _file_problems(self, run: str) -> tuple[reader.Problem, ...]:
        """Returns the problems of run `run`'s event files; each names the file in place of a tag."""
        return tuple(reader.Problem(problem.file, problem.message) for problem in self._file_checker.problems(run))

    def series_impl(self, ctx, experiment_id: str, run: str, stat: str, max_points: int) -> dict:
        """Returns {"run", "stat", "layers", "steps", "wall_times", "values", "total_steps", "problems"}.

        Ready for `json.dumps`: NaN and infinities are already the strings
        http_util.Respond writes.
        """
        data = reader.load_run(self._provider, ctx, experiment_id, run, stats=[stat])
        series = data.series[stat]
        rows = downsample.keep_indices(series.values, max_points)
        return {
            "run": run,
            "stat": stat,
            "layers": list(series.layers),
            "steps": series.steps[rows].tolist(),
            "wall_times": _json_floats(series.wall_times[rows]),
            "values": _json_floats(series.values[rows]),
            "total_steps": series.num_steps,
            "problems": [problem.to_json() for problem in data.problems],
        }

    def series_body(self, ctx, experiment_id: str, run: str, stat: str, max_points: int) -> bytes:
        """Returns the gzipped JSON of `series_impl`, cached while the statistic's data is unchanged."""
        version = (
            reader.tag_versions(self._provider, ctx, experiment_id, run).get(run, {}).get(metadata.TAG_PREFIX + stat)
        )

        def compute() -> bytes:
            return _gzipped_json(self.series_impl(ctx, experiment_id, run, stat, max_points))

        if version is None:
            return compute()  # raises the NotFoundError
        return self._series_cache.get_or_compute(
            ("series", experiment_id, run, stat, max_points, version), compute, len
        )

    def health_impl(self, ctx, experiment_id: str, run: str | None) -> dict:
        """Returns {"runs": [{"run", "verdict", "findings", "problems"}, ...]}."""
        versions = reader.tag_versions(self._provider, ctx, experiment_id, run)
        runs = sorted(name for name, tags in versions.items() if tags) if run is None else [run]
        results = []
        for name in runs:
            tags = versions.get(name)

            def compute(name=name) -> dict:
                data = reader.load_run(self._provider, ctx, experiment_id, name)
                if not data.series:
                    # Nothing decodes: no finding would read as "healthy".
                    return {
                        "verdict": UNREADABLE_VERDICT,
                        "findings": [],
                        "problems": [problem.to_json() for problem in data.problems],
                    }
                verdict = diagnosis.diagnose(data.series).to_json()
                return {
                    "verdict": verdict["verdict"],
                    "findings": verdict["findings"],
                    "problems": [problem.to_json() for problem in data.problems],
                }

            if tags:
                key = ("health", experiment_id, name, tuple(sorted(tags.items())))
                diagnosed = self._health_cache.get_or_compute(key, compute, _json_size)
            else:
                diagnosed = compute()  # raises the NotFoundError
            # The event files are checked afresh: they can break without new data.
            file_problems = [problem.to_json() for problem in self._file_problems(name)]
            results.append({"run": name, **diagnosed, "problems": diagnosed["problems"] + file_problems})
        return {"runs": results}

    @wrappers.Request.application
    @_json_errors
    def _serve_runs(self, request):
        """Returns {"runs": [{"run", "stats", "layers", "max_step", "last_wall_time", "problems"}]}."""
        ctx, experiment_id = self._request_scope(request)
        return http_util.Respond(request, self.runs_impl(ctx, experiment_id), _JSON)

    @wrappers.Request.application
    @_json_errors
    def _serve_series(self, request):
        """Returns one statistic of one run, one row per step in step order."""
        run = _single_arg(request, "run", required=True)
        stat = _single_arg(request, "stat", required=True)
        max_points = _parse_max_points(_single_arg(request, "max_points", required=False))
        ctx, experiment_id = self._request_scope(request)
        body = self.series_body(ctx, experiment_id, run, stat, max_points)
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
