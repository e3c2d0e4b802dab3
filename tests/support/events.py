"""Reads Gradient Health event files back as numpy, independently of the plugin's reader (TensorBoard's own loaders)."""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib

import numpy as np
from tensorboard.backend.event_processing import event_file_loader, plugin_event_accumulator, plugin_event_multiplexer
from tensorboard.util import tensor_util

from tb_gradhealth import metadata

RUN = "train"


@dataclasses.dataclass
class RunData:
    """One layer set of a run directory, as numpy: per statistic its steps and `[n_steps, n_layers]` values.

    The run-level `loss` is among the statistics, as `[n_steps, 1]` values.
    """

    layers: tuple
    steps: dict
    values: dict
    metadata: dict


def content_of(summary_metadata) -> dict:
    """The decoded content JSON of a Gradient Health tag's metadata."""
    return json.loads(summary_metadata.plugin_data.content.decode("utf-8"))


def read_run(run_dir: str | os.PathLike, layer_set: str | None = None) -> RunData:
    """Reads the tags of one layer set (and the loss) of `run_dir` with TensorBoard's Python multiplexer, keeping every value."""
    mux = plugin_event_multiplexer.EventMultiplexer(size_guidance={plugin_event_accumulator.TENSORS: 0})
    mux.AddRun(str(run_dir), name=RUN)
    mux.Reload()
    steps, values, metas, layers = {}, {}, {}, None
    for tag in mux.Runs()[RUN][plugin_event_accumulator.TENSORS]:
        parsed = metadata.parse_tag(tag)
        if parsed is None:
            continue
        stat, tag_set = parsed
        summary_metadata = mux.SummaryMetadata(RUN, tag)
        content = content_of(summary_metadata)
        if content.get("scope") != metadata.SCOPE_RUN:
            if tag_set != layer_set:
                continue
            layers = tuple(content["layers"])
        events = mux.Tensors(RUN, tag)
        metas[stat] = summary_metadata
        steps[stat] = np.array([e.step for e in events])
        values[stat] = np.stack([tensor_util.make_ndarray(e.tensor_proto) for e in events])
    return RunData(layers=layers, steps=steps, values=values, metadata=metas)


def event_files(run_dir: str | os.PathLike) -> list[str]:
    return sorted(os.path.join(run_dir, name) for name in os.listdir(run_dir) if "tfevents" in name)


def _events(directory: str | os.PathLike):
    for path in event_files(directory):
        yield from event_file_loader.EventFileLoader(path).Load()


def values_by_tag(run_dir: str | os.PathLike) -> dict:
    """{tag: [(step, Summary.Value), ...]} of our tags, in file order, read with TensorBoard's own loader."""
    by_tag = {}
    for event in _events(run_dir):
        for value in event.summary.value:
            if metadata.parse_tag(value.tag) is not None:
                by_tag.setdefault(value.tag, []).append((event.step, value))
    return by_tag


def read_tags(run_dir: str | os.PathLike) -> dict:
    """{tag: (content of its first metadata, steps, values)} of our tags, values as float64 arrays."""
    tags = {}
    for tag, values in values_by_tag(run_dir).items():
        content = next((content_of(value.metadata) for _, value in values if value.metadata.plugin_data.content), None)
        tags[tag] = (
            content,
            [step for step, _ in values],
            np.stack([tensor_util.make_ndarray(value.tensor) for _, value in values]).astype(np.float64),
        )
    return tags


def read_gradient_health(run_dir: str | os.PathLike) -> dict[str, tuple[tuple[str, ...], np.ndarray, np.ndarray]]:
    """Returns {stat: (layers, steps, values [n_steps, n_layers])} of the per-layer statistics of `<run_dir>/train`.

    In step order; the run-level loss is left out (`read_tags` has it).
    """
    rows: dict[str, list] = {}
    layers: dict[str, tuple[str, ...]] = {}
    for event in _events(pathlib.Path(run_dir) / RUN):
        for value in event.summary.value:
            parsed = metadata.parse_tag(value.tag)
            if parsed is None:
                continue
            stat = parsed[0]
            if value.HasField("metadata"):
                content = content_of(value.metadata)
                if content.get("scope") == metadata.SCOPE_RUN:
                    continue
                layers.setdefault(stat, tuple(content["layers"]))
            if stat == metadata.LOSS:
                continue
            rows.setdefault(stat, []).append((event.step, tensor_util.make_ndarray(value.tensor)))
    result = {}
    for stat, stat_rows in rows.items():
        stat_rows.sort(key=lambda row: row[0])
        result[stat] = (
            layers[stat],
            np.array([step for step, _ in stat_rows]),
            np.stack([vector for _, vector in stat_rows]),
        )
    return result


def read_other_tags(directory: str | os.PathLike) -> dict[str, object]:
    """Returns {tag: first value} of the non-Gradient-Health tags in `directory`; text is decoded."""
    found: dict[str, object] = {}
    for event in _events(directory):
        for value in event.summary.value:
            if metadata.stat_for_tag(value.tag) is not None or value.tag in found:
                continue
            array = tensor_util.make_ndarray(value.tensor)
            found[value.tag] = array.item().decode("utf-8") if array.dtype == object else array
    return found
