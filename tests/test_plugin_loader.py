"""The entry point: registered, light to import, and fixing `samples_per_plugin` the way TensorBoard parses it."""

from __future__ import annotations

import subprocess
import sys
from importlib import metadata as importlib_metadata

import pytest
from tb_server import configured_flags
from tensorboard.plugins import base_plugin

from tb_gradhealth import metadata
from tb_gradhealth.loader import DEFAULT_SAMPLES_PER_TAG, GradientHealthLoader
from tb_gradhealth.plugin import GradientHealthPlugin


def test_entry_point_is_registered_and_loads_our_loader():
    (entry_point,) = [
        ep for ep in importlib_metadata.entry_points(group="tensorboard_plugins") if ep.name == metadata.PLUGIN_NAME
    ]
    assert entry_point.value == "tb_gradhealth.loader:GradientHealthLoader"
    assert entry_point.load() is GradientHealthLoader


def test_loader_module_imports_neither_the_plugin_nor_tensorflow():
    code = (
        "import sys, tb_gradhealth.loader; "
        "print(sorted(m for m in ('tb_gradhealth.plugin', 'tb_gradhealth.reader', 'tensorflow', 'keras') if m in sys.modules))"
    )
    output = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert output.strip() == "[]"


@pytest.mark.parametrize(
    "argv, expected",
    [
        ([], {metadata.PLUGIN_NAME: DEFAULT_SAMPLES_PER_TAG}),
        (["--samples_per_plugin", "scalars=7"], {"scalars": 7, metadata.PLUGIN_NAME: DEFAULT_SAMPLES_PER_TAG}),
        (["--samples_per_plugin", "gradient_health=50,scalars=7"], {metadata.PLUGIN_NAME: 50, "scalars": 7}),
        (["--samples_per_plugin", "gradient_health=0"], {metadata.PLUGIN_NAME: 0}),
    ],
)
def test_fix_flags_defaults_our_samples_and_respects_the_users(tmp_path, argv, expected):
    assert configured_flags(str(tmp_path), *argv).samples_per_plugin == expected


@pytest.mark.parametrize(
    "argv, expected",
    [([], True), (["--reload_multifile=false"], False), (["--reload_multifile=true"], True)],
)
def test_fix_flags_reads_every_event_file_unless_the_user_says_otherwise(tmp_path, argv, expected):
    assert configured_flags(str(tmp_path), *argv).reload_multifile is expected


def test_load_returns_the_plugin_with_its_tab():
    plugin = GradientHealthLoader().load(base_plugin.TBContext())
    assert isinstance(plugin, GradientHealthPlugin)
    assert plugin.plugin_name == "gradient_health"
    frontend = plugin.frontend_metadata()
    assert (frontend.tab_name, frontend.es_module_path) == ("Gradient Health", "/index.js")
    assert sorted(plugin.get_plugin_apps()) == ["/*", "/health", "/runs", "/series"]
