"""Gradient Health for TensorBoard: per-layer gradient statistics, recorded cheaply and diagnosed."""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# TensorFlow is imported only when a TensorFlow-side name is first used, so
# the numpy-only summary API and TensorBoard's plugin loader stay light, and
# work where TensorFlow is not installed (it is the `keras` extra).
_LAZY_EXPORTS = {
    "GradientHealthCallback": "tb_gradhealth.capture.keras_callback",
    "GradientHealthRecorder": "tb_gradhealth.capture.custom_loop",
    "GradientHealthWriter": "tb_gradhealth.capture.custom_loop",  # GradientHealthRecorder's first name
    "GradientHealthFileWriter": "tb_gradhealth.summary",
    "write_layer_stats": "tb_gradhealth.summary",
}

__all__ = sorted(_LAZY_EXPORTS)


def __getattr__(name: str):
    module_name = _LAZY_EXPORTS.get(name)
    if module_name is None:
        raise AttributeError("module 'tb_gradhealth' has no attribute %r" % name)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name not in ("tensorflow", "keras"):
            raise
        raise ModuleNotFoundError(
            "tb_gradhealth.%s needs TensorFlow and Keras 3: pip install 'tb-gradhealth[keras]'" % name,
            name=error.name,
        ) from error
    value = getattr(module, name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY_EXPORTS))
