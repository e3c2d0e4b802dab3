"""Capture side: records per-layer gradient statistics of real training steps (Keras `fit` and custom loops)."""

from tb_gradhealth.capture.custom_loop import GradientHealthRecorder, GradientHealthWriter
from tb_gradhealth.capture.keras_callback import GradientHealthCallback

__all__ = ["GradientHealthCallback", "GradientHealthRecorder", "GradientHealthWriter"]
