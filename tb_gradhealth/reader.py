"""Reads Gradient Health data through a TensorBoard data provider into `StatSeries`, skipping and reporting what cannot be decoded."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping, Sequence

import numpy as np
from tensorboard import context as tb_context
from tensorboard import errors
from tensorboard.data import provider as tb_provider

from tb_gradhealth import metadata
from tb_gradhealth.series import StatSeries

# `read_tensors` downsamples to this many points per time series; larger than
# any run TensorBoard can hold, so the provider hands over everything it
# kept at load time.
_READ_ALL_POINTS = 2**31 - 1

# Integers above this lose their last digits in a browser (a JavaScript
# number is a float64); steps beyond it are reported.
MAX_EXACT_STEP = 2**53


@dataclasses.dataclass(frozen=True)
class Problem:
    """Data of a tag that was skipped (or kept, but is wrong) and why."""

    tag: str
    message: str

    def to_json(self) -> dict:
        return {"tag": self.tag, "message": self.message}


@dataclasses.dataclass(frozen=True)
class TagInfo:
    """One readable tag of a statistic, from metadata only.

    Attributes:
      tag: the tag, `gradient_health/<stat>` or `gradient_health/<stat>/<set>`.
      content: its decoded metadata.
      max_step: its largest step.
      max_wall_time: its latest wall time.
      digest: `metadata.content_digest` of its content.
    """

    tag: str
    content: metadata.PluginContent
    max_step: int
    max_wall_time: float
    digest: bytes

    @property
    def version(self) -> tuple:
        """What a read of the tag returns depends on only this (new data moves the max step or wall time)."""
        return (self.tag, self.max_step, self.max_wall_time, self.digest)


@dataclasses.dataclass(frozen=True)
class StatTags:
    """The readable tags of one statistic of one run: one per layer set, oldest set first.

    Attributes:
      stat: the statistic.
      scope: `metadata.SCOPE_LAYER` or `metadata.SCOPE_RUN`.
      tags: one per layer set, by latest wall time (the newest set last).
      layers: the union of the tags' layers in model order (docs/design.md,
        "Layer sets").
      kinds: each layer's kind, or None when no tag has kinds (a layer of
        a set without kinds reads as `metadata.OTHER_KIND`).
      params: each layer's parameter count (None where unknown), or None
        when no tag has params.
    """

    stat: str
    scope: str
    tags: tuple[TagInfo, ...]
    layers: tuple[str, ...]
    kinds: tuple[str, ...] | None
    params: tuple[int | None, ...] | None

    @property
    def version(self) -> tuple:
        return tuple(tag.version for tag in self.tags)


@dataclasses.dataclass(frozen=True)
class RunTags:
    """What the metadata of one run holds: its readable statistics and the tags that were skipped.

    Attributes:
      run: run name as the data provider spells it.
      stats: readable statistics of both scopes, in `order_stats` order.
      problems: tags that cannot be read, with the reason.
      max_step: largest step of any Gradient Health tag of the run.
      last_wall_time: latest wall time of any Gradient Health tag of the run.
      version: every listed tag's max step, wall time and content digest:
        anything read from the run depends on only this.
    """

    run: str
    stats: dict[str, StatTags]
    problems: tuple[Problem, ...]
    max_step: int | None
    last_wall_time: float | None
    version: tuple

    def stats_of_scope(self, scope: str) -> list[str]:
        return [stat for stat, tags in self.stats.items() if tags.scope == scope]


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


def merge_layer_orders(orders: Sequence[Sequence[str]]) -> tuple[str, ...]:
    """Returns the union of layer orders in model order: the newest order, with layers only in older ones after their predecessor there.

    Args:
      orders: layer lists, oldest first. A layer of an older list that the
        newer ones lack follows the layer before it in that list; the first
        of a list precedes the first layer after it that newer lists have
        (or leads, when there is none). Layers placed at the same spot keep
        the order they are met in, newest list first.
    """
    if not orders:
        return ()
    base = list(orders[-1])
    placed = set(base)
    # {layer: layers placed right after it}, {layer or None (the start): layers right before it}
    followers: dict[str, list[str]] = {}
    preceders: dict[str | None, list[str]] = {}
    for order in reversed(orders[:-1]):
        known = [name in placed for name in order]
        for index, name in enumerate(order):
            if known[index]:
                continue
            if index > 0:
                followers.setdefault(order[index - 1], []).append(name)
            else:
                # Before the first layer after it that is already placed.
                anchor = next((order[later] for later in range(1, len(order)) if known[later]), None)
                preceders.setdefault(anchor, []).append(name)
            placed.add(name)
    if not followers and not preceders:
        return tuple(base)
    merged: list[str] = []
    # Depth first without recursion: a chain of placed layers can be long.
    stack: list[tuple[bool, str]] = [(False, name) for name in reversed(base)]
    stack.extend((False, name) for name in reversed(preceders.get(None, ())))
    while stack:
        emit, name = stack.pop()
        if emit:
            merged.append(name)
            continue
        stack.extend((False, follower) for follower in reversed(followers.get(name, ())))
        stack.append((True, name))
        stack.extend((False, preceder) for preceder in reversed(preceders.get(name, ())))
    return tuple(merged)


def _digest(content: bytes):
    # Content over the bound is refused by its size: never hashed.
    return metadata.content_digest(content) if len(content) <= metadata.MAX_CONTENT_BYTES else len(content)


def _decoded_tag(tag: str, ts: tb_provider.TensorTimeSeries, digest) -> TagInfo:
    """Returns the tag's `TagInfo`, or raises ValueError saying why it cannot be read."""
    parsed = metadata.parse_tag(tag)
    if parsed is None:
        raise ValueError("tag is not of the form %s<stat>[/<layer set>]" % metadata.TAG_PREFIX)
    stat, layer_set = parsed
    content = metadata.parse_plugin_metadata(ts.plugin_content or b"")
    if content.stat != stat:
        raise ValueError("its metadata is of statistic %s" % metadata.quoted_name(content.stat))
    if content.layer_set is not None and content.layer_set != layer_set:
        raise ValueError("its metadata is of layer set %s" % metadata.quoted_name(content.layer_set))
    return TagInfo(tag, content, int(ts.max_step), float(ts.max_wall_time), digest)


def _stat_tags(stat: str, tags: list[TagInfo], problems: list[Problem]) -> StatTags:
    """Groups the readable tags of one statistic; tags whose scope disagrees with the plain tag's are problems."""
    tags.sort(key=lambda info: (info.max_wall_time, info.max_step, info.tag))
    reference = next((info for info in tags if info.tag == metadata.tag_for_stat(stat)), tags[-1])
    scope = reference.content.scope
    kept = []
    for info in tags:
        if info.content.scope != scope:
            problems.append(
                Problem(info.tag, "skipped: scope %r, but %s has scope %r" % (info.content.scope, reference.tag, scope))
            )
        else:
            kept.append(info)
    layers, kinds, params = _layer_union(kept)
    return StatTags(stat=stat, scope=scope, tags=tuple(kept), layers=layers, kinds=kinds, params=params)


def _layer_union(tags: Sequence[TagInfo]):
    """Returns (layers, kinds, params) over tags ordered oldest first; see `StatTags`."""
    layers = merge_layer_orders([info.content.layers for info in tags])
    kinds: dict[str, str] = {}
    params: dict[str, int] = {}
    for info in tags:  # newest last: its kinds and params win
        if info.content.kinds is not None:
            kinds.update(zip(info.content.layers, info.content.kinds))
        if info.content.params is not None:
            params.update(zip(info.content.layers, info.content.params))
    return (
        layers,
        tuple(kinds.get(name, metadata.OTHER_KIND) for name in layers) if kinds else None,
        tuple(params.get(name) for name in layers) if params else None,
    )


def _run_tags(run: str, tags: Mapping[str, tb_provider.TensorTimeSeries]) -> RunTags:
    problems: list[Problem] = []
    by_stat: dict[str, list[TagInfo]] = {}
    digests = {tag: _digest(ts.plugin_content or b"") for tag, ts in tags.items()}
    for tag in sorted(tags):
        try:
            info = _decoded_tag(tag, tags[tag], digests[tag])
        except ValueError as error:
            problems.append(Problem(tag, "skipped: %s" % error))
            continue
        by_stat.setdefault(info.content.stat, []).append(info)
    stats = {}
    for stat in order_stats(by_stat):
        stats[stat] = _stat_tags(stat, by_stat[stat], problems)
    steps = [ts.max_step for ts in tags.values() if ts.max_step is not None]
    wall_times = [ts.max_wall_time for ts in tags.values() if ts.max_wall_time is not None]
    max_step = int(max(steps)) if steps else None
    return RunTags(
        run=run,
        stats=stats,
        problems=tuple(problems),
        max_step=max_step,
        last_wall_time=float(max(wall_times)) if wall_times else None,
        version=tuple((tag, tags[tag].max_step, tags[tag].max_wall_time, digests[tag]) for tag in sorted(tags)),
    )


def list_run_tags(
    provider: tb_provider.DataProvider, ctx: tb_context.RequestContext, experiment_id: str, run: str | None = None
) -> dict[str, RunTags]:
    """Returns {run: RunTags} of every run holding Gradient Health data (or of `run` only), by run name.

    From metadata only (no tensor is read), each content parsed once per
    process. A run whose every tag is undecodable is still listed, with no
    stats and its problems, so that it is reported rather than dropped.
    """
    listing = provider.list_tensors(
        ctx,
        experiment_id=experiment_id,
        plugin_name=metadata.PLUGIN_NAME,
        run_tag_filter=None if run is None else tb_provider.RunTagFilter(runs=[run]),
    )
    return {name: _run_tags(name, listing[name]) for name in sorted(listing) if listing[name]}


def run_info(run_tags: RunTags) -> dict:
    """Returns what `/runs` says of one run (see http_api.md)."""
    layer_stats = [run_tags.stats[stat] for stat in run_tags.stats_of_scope(metadata.SCOPE_LAYER)]
    all_tags = sorted(
        (info for tags in layer_stats for info in tags.tags), key=lambda info: (info.max_wall_time, info.max_step)
    )
    layers, kinds, params = _layer_union(all_tags)
    problems = [problem.to_json() for problem in run_tags.problems]
    readable = [info for tags in run_tags.stats.values() for info in tags.tags]
    if readable and run_tags.max_step is not None and run_tags.max_step > MAX_EXACT_STEP:
        # From metadata: the largest step only (a read counts them all).
        tag = max(readable, key=lambda info: info.max_step).tag
        problems.append(Problem(tag, _big_steps_message(1, run_tags.max_step)).to_json())
    return {
        "run": run_tags.run,
        "stats": [tags.stat for tags in layer_stats],
        "scalars": run_tags.stats_of_scope(metadata.SCOPE_RUN),
        "layers": list(layers),
        "kinds": None if kinds is None else list(kinds),
        "params": None if params is None else list(params),
        "max_step": run_tags.max_step,
        "last_wall_time": run_tags.last_wall_time,
        "problems": problems,
    }


def _big_steps_message(count: int, largest: int) -> str:
    return (
        "%d step(s) above 2**53, the largest %d: a browser shows such steps rounded to a float64 "
        "(the data is kept and served exactly)" % (count, largest)
    )


def series_from_tensors(
    stat: str, tag: str, layers: tuple[str, ...], data: Sequence[tb_provider.TensorDatum]
) -> tuple[StatSeries | None, list[Problem]]:
    """Returns (StatSeries or None, [Problem]) from one tag's tensors, as a data provider returns them.

    A list `data` is emptied: each tensor is released once copied into the
    table, so the two are never both held whole. Steps whose tensor is not a numeric `[n_layers]` vector are skipped and
    counted in one problem. A step written twice (a restarted run, two
    writers) keeps its latest write. Values keep their written float type
    (float32 for every writer of ours), integers become float64: exact
    either way.
    """
    shape = (len(layers),)
    given = data
    arrays = [np.asarray(datum.numpy) for datum in data]
    # One pass of attribute checks, then whole-array conversions: per-row
    # numpy calls cost more than the data.
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
    dtype = np.result_type(*{array.dtype for array in arrays})
    values = np.empty((len(arrays), len(layers)), dtype=dtype if dtype.kind == "f" else np.float64)
    # Row by row, dropping each row's array once copied.
    del data
    if isinstance(given, list):
        given.clear()
    for row in range(len(arrays) - 1, -1, -1):
        values[row] = arrays.pop()
    if not (steps[1:] > steps[:-1]).all():
        # Sort by step, then wall time; of equal steps keep the last (latest).
        # (Copies the table: only for data out of order, e.g. a restarted run.)
        order = np.lexsort((wall_times, steps))
        steps, wall_times, values = steps[order], wall_times[order], values[order]
        last_of_step = np.append(steps[1:] != steps[:-1], True)
        steps, wall_times, values = steps[last_of_step], wall_times[last_of_step], values[last_of_step]
    return StatSeries(stat=stat, layers=layers, steps=steps, wall_times=wall_times, values=values), problems


def _merged(stat_tags: StatTags, parts: list[tuple[TagInfo, StatSeries]]) -> StatSeries:
    """One series over the union of the layer sets' layers; cells of a layer absent from a step's set are not recorded."""
    if len(parts) == 1 and parts[0][1].layers == stat_tags.layers:
        return parts[0][1]
    layers = stat_tags.layers
    column = {name: index for index, name in enumerate(layers)}
    steps = np.unique(np.concatenate([series.steps for _, series in parts]))
    dtype = np.result_type(*[series.values.dtype for _, series in parts])
    values = np.full((len(steps), len(layers)), np.nan, dtype=dtype)
    recorded = np.zeros(values.shape, dtype=bool)
    wall_times = np.full(len(steps), -np.inf)
    # Newest layer set last: where two sets wrote one step, the newer wins.
    for _, series in parts:
        rows = np.searchsorted(steps, series.steps)
        columns = np.fromiter((column[name] for name in series.layers), dtype=np.int64, count=len(series.layers))
        values[rows[:, None], columns[None, :]] = series.values
        recorded[rows[:, None], columns[None, :]] = True
        wall_times[rows] = np.maximum(wall_times[rows], series.wall_times)
    return StatSeries(
        stat=stat_tags.stat,
        layers=layers,
        steps=steps,
        wall_times=wall_times,
        values=values,
        recorded=None if recorded.all() else recorded,
    )


def _value_problems(series: StatSeries, tag: str) -> list[Problem]:
    """What is wrong with values that were read (kept and served, but reported)."""
    problems = []
    if series.stat in metadata.NON_NEGATIVE_STATS:
        with np.errstate(invalid="ignore"):
            negative = series.values < 0
        if negative.any():
            rows, columns = np.nonzero(negative)
            problems.append(
                Problem(
                    tag,
                    "%d value(s) below 0, first at step %d in layer %s: %s is never negative, so the "
                    "writer is wrong (the values are kept and shown)"
                    % (
                        len(rows),
                        series.steps[rows[0]],
                        metadata.quoted_name(series.layers[columns[0]]),
                        series.stat,
                    ),
                )
            )
    big = series.steps > MAX_EXACT_STEP
    if big.any():
        problems.append(Problem(tag, _big_steps_message(int(big.sum()), int(series.steps[-1]))))
    return problems


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

    def undecodable(tag: str, error: Exception) -> Problem:
        return Problem(tag, "skipped: tensors cannot be decoded (%s: %s)" % (type(error).__name__, str(error)[:500]))

    try:
        return read(tags), []
    except errors.PublicError:
        raise
    except Exception as error:
        if len(tags) == 1:
            return {}, [undecodable(tags[0], error)]
    # The providers decode every tensor of the request at once, so one
    # corrupt tensor fails the whole request; read tag by tag to keep every
    # readable tag.
    data, problems = {}, []
    for tag in tags:
        try:
            data.update(read([tag]))
        except errors.PublicError:
            raise
        except Exception as error:
            problems.append(undecodable(tag, error))
    return data, problems


def read_stat(
    provider: tb_provider.DataProvider,
    ctx: tb_context.RequestContext,
    experiment_id: str,
    run: str,
    stat_tags: StatTags,
) -> tuple[StatSeries | None, list[Problem]]:
    """Reads every step of one statistic (all its layer sets merged) that the provider holds.

    Returns:
      The series (None when nothing of it can be read) and the problems met:
      skipped steps and tags, negative values of a statistic that cannot be
      negative, steps a browser cannot show exactly.
    """
    data, problems = _read_tags(provider, ctx, experiment_id, run, [info.tag for info in stat_tags.tags])
    unreadable = {problem.tag for problem in problems}
    parts = []
    for info in stat_tags.tags:
        if info.tag in unreadable:
            continue
        # Popped: the tensors are freed as they are copied into the table.
        points = data.pop(info.tag, None)
        if not points:
            problems.append(Problem(info.tag, "skipped: no data"))
            continue
        series, tag_problems = series_from_tensors(stat_tags.stat, info.tag, info.content.layers, points)
        problems.extend(tag_problems)
        if series is not None:
            parts.append((info, series))
    if not parts:
        return None, problems
    series = _merged(stat_tags, parts)
    problems.extend(_value_problems(series, metadata.tag_for_stat(stat_tags.stat)))
    return series, problems


ReadStat = Callable[[tb_provider.DataProvider, tb_context.RequestContext, str, str, StatTags], tuple]


def no_data_error(run: str) -> errors.NotFoundError:
    return errors.NotFoundError("no gradient health data for run %s" % metadata.quoted_name(run))


def load_run(
    provider: tb_provider.DataProvider,
    ctx: tb_context.RequestContext,
    experiment_id: str,
    run: str,
    stats: Sequence[str] | None = None,
    *,
    run_tags: RunTags | None = None,
    read: ReadStat = read_stat,
) -> RunData:
    """Reads whole series (every step the provider holds) of one run.

    Args:
      stats: statistics to read (of either scope); None reads every readable one.
      run_tags: the run's listing, if the caller has it.
      read: reads one statistic (`read_stat`, or a caching wrapper of it).

    Returns:
      The series by statistic, and the problems met: the run's skipped
      tags (all of them when `stats` is None), then those of each statistic.

    Raises:
      tensorboard.errors.NotFoundError: the run has no Gradient Health data,
        or has no readable data for a requested statistic.
    """
    if run_tags is None:
        run_tags = list_run_tags(provider, ctx, experiment_id, run).get(run)
        if run_tags is None:
            raise no_data_error(run)
    wanted = list(run_tags.stats) if stats is None else list(stats)
    problems = [
        problem for problem in run_tags.problems if stats is None or metadata.stat_for_tag(problem.tag) in wanted
    ]
    series = {}
    for stat in wanted:
        stat_tags = run_tags.stats.get(stat)
        if stat_tags is None:
            continue
        stat_series, stat_problems = read(provider, ctx, experiment_id, run, stat_tags)
        problems.extend(stat_problems)
        if stat_series is not None:
            series[stat] = stat_series
    missing = [stat for stat in wanted if stat not in series]
    if stats is not None and missing:
        stat = missing[0]
        reasons = "; ".join(problem.message for problem in problems if metadata.stat_for_tag(problem.tag) == stat)
        raise errors.NotFoundError(
            "run %s has no readable statistic %s%s"
            % (metadata.quoted_name(run), metadata.quoted_name(stat), " (%s)" % reasons[:2_000] if reasons else "")
        )
    return RunData(run=run, series=series, problems=tuple(problems))


def read_run(
    provider: tb_provider.DataProvider,
    ctx: tb_context.RequestContext,
    experiment_id: str,
    run: str,
    stats: Sequence[str] | None = None,
) -> dict[str, StatSeries]:
    """Returns the whole series of one run's statistics (see `load_run`, which also reports problems)."""
    return load_run(provider, ctx, experiment_id, run, stats).series
