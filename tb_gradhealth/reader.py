"""Reads Gradient Health data through a TensorBoard data provider into `StatSeries`, skipping and reporting what cannot be decoded."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
from tensorboard import context as tb_context
from tensorboard import errors
from tensorboard.backend.event_processing import data_provider as multiplexer_data_provider
from tensorboard.backend.event_processing import plugin_event_multiplexer, tag_types
from tensorboard.data import provider as tb_provider

from tb_gradhealth import metadata
from tb_gradhealth.series import StatSeries

# `read_tensors` downsamples to this many points per time series; larger than
# any run TensorBoard can hold, so the provider hands over everything it
# kept at load time.
_READ_ALL_POINTS = 2**31 - 1

# What the in-process provider keeps per tag: every step of ours (0 means
# unbounded), one point of other plugins' tensors, which we never read.
_OWN_TENSORS_KEEP_ALL = 0
_OTHER_TENSORS_KEPT = 1


# Names echoed in error messages are cut to this many characters, so a huge
# request parameter does not come back as a huge error body.
_MAX_NAME_IN_MESSAGE = 200


def quoted_name(name: str) -> str:
    """Returns `repr(name)` for an error message, cut to about `_MAX_NAME_IN_MESSAGE` characters.

    The cut applies to the repr too: a name of escaped characters (e.g.
    astral-plane code points, ten characters each) stays as short.
    """
    text = repr(name[:_MAX_NAME_IN_MESSAGE])
    cut = len(name) > _MAX_NAME_IN_MESSAGE
    if len(text) > _MAX_NAME_IN_MESSAGE + 2:
        text, cut = text[: _MAX_NAME_IN_MESSAGE + 1] + text[0], True
    return text + ("..." if cut else "")


@dataclasses.dataclass(frozen=True)
class Problem:
    """Data of a run that was skipped because it cannot be decoded."""

    tag: str
    message: str

    def to_json(self) -> dict:
        return {"tag": self.tag, "message": self.message}


@dataclasses.dataclass(frozen=True)
class RunInfo:
    """What `/runs` says about one run, from metadata only (no tensor is read).

    Attributes:
      run: run name as the data provider spells it.
      stats: readable statistics, built-in ones first in their capture
        order, then the others by name.
      layers: layer names of all readable statistics in model order (the
        layers of the first statistic, then any others in order of
        appearance).
      max_step: largest step of any Gradient Health tag of the run.
      last_wall_time: latest wall time of any Gradient Health tag of the run.
      problems: tags whose metadata cannot be decoded (skipped).
    """

    run: str
    stats: tuple[str, ...]
    layers: tuple[str, ...]
    max_step: int | None
    last_wall_time: float | None
    problems: tuple[Problem, ...]

    def to_json(self) -> dict:
        return {
            "run": self.run,
            "stats": list(self.stats),
            "layers": list(self.layers),
            "max_step": self.max_step,
            "last_wall_time": self.last_wall_time,
            "problems": [problem.to_json() for problem in self.problems],
        }


@dataclasses.dataclass(frozen=True)
class RunData:
    """Whole series of one run's statistics, and what was skipped reading them."""

    run: str
    series: dict[str, StatSeries]
    problems: tuple[Problem, ...]


def order_stats(stats: Iterable[str]) -> list[str]:
    """Returns `stats` with the built-in ones first (capture order), then the rest by name."""
    builtin_rank = {stat: rank for rank, stat in enumerate(metadata.BUILTIN_STATS)}
    return sorted(set(stats), key=lambda stat: (builtin_rank.get(stat, len(builtin_rank)), stat))


def _decode_tags(tags: Mapping[str, tb_provider.TensorTimeSeries]):
    """Returns ({stat: (tag, layers)}, [Problem]) for one run's listed tags."""
    decoded: dict[str, tuple[str, tuple[str, ...]]] = {}
    problems = []
    for tag in sorted(tags):
        stat = metadata.stat_for_tag(tag)
        if stat is None:
            problems.append(Problem(tag, "skipped: tag is not of the form %s<stat>" % metadata.TAG_PREFIX))
            continue
        try:
            content = metadata.parse_plugin_metadata(tags[tag].plugin_content)
        except ValueError as error:
            problems.append(Problem(tag, "skipped: %s" % error))
            continue
        decoded[stat] = (tag, content.layers)
    return decoded, problems


def list_runs(provider: tb_provider.DataProvider, ctx: tb_context.RequestContext, experiment_id: str) -> list[RunInfo]:
    """Lists every run holding Gradient Health data, sorted by run name.

    A run whose every tag is undecodable is still listed, with no stats and
    its problems, so that it is reported rather than silently dropped.
    """
    listing = provider.list_tensors(ctx, experiment_id=experiment_id, plugin_name=metadata.PLUGIN_NAME)
    runs = []
    for run in sorted(listing):
        tags = listing[run]
        if not tags:
            continue
        decoded, problems = _decode_tags(tags)
        stats = order_stats(decoded)
        layers: dict[str, None] = {}
        for stat in stats:
            layers.update(dict.fromkeys(decoded[stat][1]))
        steps = [ts.max_step for ts in tags.values() if ts.max_step is not None]
        wall_times = [ts.max_wall_time for ts in tags.values() if ts.max_wall_time is not None]
        runs.append(
            RunInfo(
                run=run,
                stats=tuple(stats),
                layers=tuple(layers),
                max_step=int(max(steps)) if steps else None,
                last_wall_time=float(max(wall_times)) if wall_times else None,
                problems=tuple(problems),
            )
        )
    return runs


def tag_versions(
    provider: tb_provider.DataProvider,
    ctx: tb_context.RequestContext,
    experiment_id: str,
    run: str | None = None,
) -> dict[str, dict[str, tuple]]:
    """Returns {run: {tag: (max_step, max_wall_time, plugin_content)}} for every run, or for `run` only.

    From metadata only. New data of a tag changes its max step or wall time
    (a restarted run preempts later steps, lowering the max step), so the
    tuple identifies what a read of the tag returns; responses computed from
    the data are cached under it.
    """
    listing = provider.list_tensors(
        ctx,
        experiment_id=experiment_id,
        plugin_name=metadata.PLUGIN_NAME,
        run_tag_filter=None if run is None else tb_provider.RunTagFilter(runs=[run]),
    )
    return {
        name: {tag: (ts.max_step, ts.max_wall_time, ts.plugin_content) for tag, ts in tags.items()}
        for name, tags in listing.items()
    }


def series_from_tensors(
    stat: str, tag: str, layers: tuple[str, ...], data: Sequence[tb_provider.TensorDatum]
) -> tuple[StatSeries | None, list[Problem]]:
    """Returns (StatSeries or None, [Problem]) from one tag's tensors, as a data provider returns them.

    Steps whose tensor is not a numeric `[n_layers]` vector are skipped and
    counted in one problem. A step written twice (a restarted run, two
    writers) keeps its latest write.
    """
    shape = (len(layers),)
    arrays = [np.asarray(datum.numpy) for datum in data]
    # One pass of attribute checks, then whole-array conversions: per-row
    # numpy calls cost more than the data (10,000 steps per tag).
    keep = [array.shape == shape and array.dtype.kind in "biuf" for array in arrays]
    problems = []
    if not all(keep):
        skipped = [(datum.step, array) for datum, array, ok in zip(data, arrays, keep) if not ok]
        first_step, first = min(skipped, key=lambda pair: pair[0])
        if first.dtype.kind not in "biuf":
            reason = "tensor of dtype %s is not numeric" % first.dtype
        else:
            reason = "tensor of shape %s, expected (%d,) for %d layers" % (first.shape, len(layers), len(layers))
        problems.append(Problem(tag, "skipped %d step(s), first at step %d: %s" % (len(skipped), first_step, reason)))
        data = [datum for datum, ok in zip(data, keep) if ok]
        arrays = [array for array, ok in zip(arrays, keep) if ok]
    if not arrays:
        return None, problems
    steps = np.fromiter((datum.step for datum in data), dtype=np.int64, count=len(data))
    wall_times = np.fromiter((datum.wall_time for datum in data), dtype=np.float64, count=len(data))
    # Exact: float32 and float16 widen to float64 without rounding.
    values = np.stack(arrays).astype(np.float64, copy=False)
    # Sort by step, then wall time; of equal steps keep the last (latest).
    order = np.lexsort((wall_times, steps))
    steps, wall_times, values = steps[order], wall_times[order], values[order]
    last_of_step = np.append(steps[1:] != steps[:-1], True)
    series = StatSeries(
        stat=stat,
        layers=layers,
        steps=steps[last_of_step],
        wall_times=wall_times[last_of_step],
        values=values[last_of_step],
    )
    return series, problems


def _read_tags(provider, ctx, experiment_id: str, run: str, tags: Sequence[str]):
    """Returns ({tag: [TensorDatum]}, [Problem]); a tag that cannot be read at all is a problem."""

    def read(selected):
        result = provider.read_tensors(
            ctx,
            experiment_id=experiment_id,
            plugin_name=metadata.PLUGIN_NAME,
            downsample=_READ_ALL_POINTS,
            run_tag_filter=tb_provider.RunTagFilter(runs=[run], tags=selected),
        )
        return result.get(run, {})

    try:
        return read(tags), []
    except errors.PublicError:
        raise
    except Exception:
        # The providers decode every tensor of the request at once, so one
        # corrupt tensor fails the whole request; read tag by tag to keep
        # every readable tag.
        pass
    data, problems = {}, []
    for tag in tags:
        try:
            data.update(read([tag]))
        except errors.PublicError:
            raise
        except Exception as error:
            message = "skipped: tensors cannot be decoded (%s: %s)" % (type(error).__name__, error)
            problems.append(Problem(tag, message))
    return data, problems


def load_run(
    provider: tb_provider.DataProvider,
    ctx: tb_context.RequestContext,
    experiment_id: str,
    run: str,
    stats: Sequence[str] | None = None,
) -> RunData:
    """Reads whole series (every step the provider holds) of one run.

    Args:
      stats: statistics to read; None reads every readable one.

    Returns:
      The series by statistic, and problems for the data that was skipped
      (of the requested statistics only).

    Raises:
      tensorboard.errors.NotFoundError: the run has no Gradient Health data,
        or has no readable data for a requested statistic.
    """
    tag_filter = None if stats is None else [metadata.TAG_PREFIX + stat for stat in stats]
    listing = provider.list_tensors(
        ctx,
        experiment_id=experiment_id,
        plugin_name=metadata.PLUGIN_NAME,
        run_tag_filter=tb_provider.RunTagFilter(runs=[run], tags=tag_filter),
    )
    if not listing.get(run) and (stats is None or not _run_exists(provider, ctx, experiment_id, run)):
        raise errors.NotFoundError("no gradient health data for run %s" % quoted_name(run))
    decoded, problems = _decode_tags(listing.get(run, {}))
    data, read_problems = _read_tags(provider, ctx, experiment_id, run, [tag for tag, _ in decoded.values()])
    problems.extend(read_problems)
    unreadable = {problem.tag for problem in read_problems}
    series = {}
    for stat in order_stats(decoded):
        tag, layers = decoded[stat]
        if tag in unreadable:
            continue
        if not data.get(tag):
            problems.append(Problem(tag, "skipped: no data"))
            continue
        stat_series, stat_problems = series_from_tensors(stat, tag, layers, data[tag])
        problems.extend(stat_problems)
        if stat_series is not None:
            series[stat] = stat_series
    missing = [stat for stat in stats or () if stat not in series]
    if missing:
        reasons = "; ".join(problem.message for problem in problems)
        raise errors.NotFoundError(
            "run %s has no readable statistic %s%s"
            % (quoted_name(run), quoted_name(missing[0]), " (%s)" % reasons if reasons else "")
        )
    return RunData(run=run, series=series, problems=tuple(problems))


def _run_exists(provider, ctx, experiment_id: str, run: str) -> bool:
    listing = provider.list_tensors(
        ctx,
        experiment_id=experiment_id,
        plugin_name=metadata.PLUGIN_NAME,
        run_tag_filter=tb_provider.RunTagFilter(runs=[run]),
    )
    return bool(listing.get(run))


def read_run(
    provider: tb_provider.DataProvider,
    ctx: tb_context.RequestContext,
    experiment_id: str,
    run: str,
    stats: Sequence[str] | None = None,
) -> dict[str, StatSeries]:
    """Returns the whole series of one run's statistics (see `load_run`, which also reports problems)."""
    return load_run(provider, ctx, experiment_id, run, stats).series


def provider_for_logdir(logdir: str):
    """Builds an in-process data provider over `logdir` that keeps every Gradient Health step.

    For reading event files without a TensorBoard server (the command line);
    it goes through the same multiplexer TensorBoard uses with
    `--load_fast=false`, so both read the files the same way.

    Returns:
      (provider, ctx, experiment_id) to pass to `list_runs` / `read_run`.
    """
    multiplexer = plugin_event_multiplexer.EventMultiplexer(
        size_guidance={tag_types.TENSORS: _OTHER_TENSORS_KEPT},
        tensor_size_guidance={metadata.PLUGIN_NAME: _OWN_TENSORS_KEEP_ALL},
    )
    multiplexer.AddRunsFromDirectory(logdir)
    multiplexer.Reload()
    provider = multiplexer_data_provider.MultiplexerDataProvider(multiplexer, logdir)
    return provider, tb_context.RequestContext(), ""
