"""The Gradient Health TensorBoard plugin: routes serving runs, per-layer series, diagnoses and the frontend's files."""

from __future__ import annotations

import functools
import re

from tensorboard import errors, plugin_util
from tensorboard.backend import http_util
from tensorboard.plugins import base_plugin
from werkzeug import wrappers

from tb_gradhealth import diagnosis, downsample, metadata, reader, static

# Rows served by /series when the request gives no `max_points`: a run of up
# to this many logged steps is served whole (the loader keeps as many).
DEFAULT_MAX_POINTS = 10_000  # steps per series

_JSON = "application/json"
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
            "max_points must be an integer of at least %d, got %r" % (downsample.MIN_POINTS, text[:100])
        )
    return int(text)


class GradientHealthPlugin(base_plugin.TBPlugin):
    """Serves Gradient Health data read through `context.data_provider`."""

    plugin_name = metadata.PLUGIN_NAME

    def __init__(self, context: base_plugin.TBContext):
        self._provider = context.data_provider

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
        return {"runs": [info.to_json() for info in runs]}

    def series_impl(self, ctx, experiment_id: str, run: str, stat: str, max_points: int) -> dict:
        """Returns {"run", "stat", "layers", "steps", "wall_times", "values", "total_steps", "problems"}."""
        data = reader.load_run(self._provider, ctx, experiment_id, run, stats=[stat])
        series = data.series[stat]
        rows = downsample.keep_indices(series.values, max_points)
        return {
            "run": run,
            "stat": stat,
            "layers": list(series.layers),
            "steps": series.steps[rows].tolist(),
            "wall_times": series.wall_times[rows].tolist(),
            "values": series.values[rows].tolist(),
            "total_steps": series.num_steps,
            "problems": [problem.to_json() for problem in data.problems],
        }

    def health_impl(self, ctx, experiment_id: str, run: str | None) -> dict:
        """Returns {"runs": [{"run", "verdict", "findings", "problems"}, ...]}."""
        if run is None:
            runs = [info.run for info in reader.list_runs(self._provider, ctx, experiment_id)]
        else:
            runs = [run]
        results = []
        for name in runs:
            data = reader.load_run(self._provider, ctx, experiment_id, name)
            verdict = diagnosis.diagnose(data.series).to_json()
            results.append(
                {
                    "run": name,
                    "verdict": verdict["verdict"],
                    "findings": verdict["findings"],
                    "problems": [problem.to_json() for problem in data.problems],
                }
            )
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
        body = self.series_impl(ctx, experiment_id, run, stat, max_points)
        return http_util.Respond(request, body, _JSON)

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
        relative = path[len(_ROUTE_PREFIX):] if path.startswith(_ROUTE_PREFIX) else ""
        root = static.frontend_dir()
        asset = static.resolve(root, relative) if root is not None else None
        if asset is None:
            raise errors.NotFoundError("no such file")
        return http_util.Respond(request, asset.read_bytes(), static.content_type(asset))
