"""Gradient Health for PyTorch: per-layer gradient statistics of every optimizer step, recorded from its step hooks.

Importing this package imports torch, never TensorFlow.
"""

from tb_gradhealth.torch.monitor import GradientHealthMonitor, NonFiniteGradientError

__all__ = ["GradientHealthMonitor", "NonFiniteGradientError"]
