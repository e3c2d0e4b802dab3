"""TensorBoard's entry point for Gradient Health: a light loader that imports the plugin only when loaded."""

from __future__ import annotations

import logging
from collections.abc import Mapping

from tensorboard.plugins import base_plugin

from tb_gradhealth import metadata

logger = logging.getLogger(__name__)

# Steps kept per tag and run at load time when the user sets no
# `--samples_per_plugin=gradient_health=N`. TensorBoard otherwise keeps 10
# (Python multiplexer) or 100 (Rust data server) points of a third-party
# plugin's tensors, far too few for a per-step trend. 10,000 serves a run of
# up to 10,000 logged steps whole while bounding memory (six [n_layers]
# float32 vectors per step); `gradient_health=0` keeps every step.
DEFAULT_SAMPLES_PER_TAG = 10_000


class GradientHealthLoader(base_plugin.TBLoader):
    """Gives `samples_per_plugin` and `reload_multifile` defaults and loads the plugin lazily."""

    def fix_flags(self, flags) -> None:
        samples = getattr(flags, "samples_per_plugin", None)
        # Only the parsed dict form is touched; the user's own value for our
        # plugin, if any, wins.
        if isinstance(samples, Mapping) and metadata.PLUGIN_NAME not in samples:
            flags.samples_per_plugin = {**samples, metadata.PLUGIN_NAME: DEFAULT_SAMPLES_PER_TAG}
        # TensorBoard's Python loader (--load_fast=false, or the fallback
        # when no data server runs) otherwise follows only the newest event
        # file of a run directory: our callback and keras.callbacks.TensorBoard
        # both write into <log_dir>/train, and whichever file sorts first
        # stops being read while training goes on (steps appear only after a
        # restart). The flag defaults to None, so "not set" is detectable and
        # an explicit --reload_multifile=false wins. The Rust data server
        # reads every file and ignores it.
        if getattr(flags, "reload_multifile", False) is None:
            flags.reload_multifile = True

    def load(self, context: base_plugin.TBContext) -> base_plugin.TBPlugin | None:
        # TensorBoard does not catch errors here either: a broken install must
        # cost the user our tab, not the whole of TensorBoard.
        try:
            from tb_gradhealth.plugin import GradientHealthPlugin
        except ImportError as error:
            logger.error("Gradient Health plugin disabled: %s", error)
            return None
        return GradientHealthPlugin(context)
