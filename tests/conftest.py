"""Test-wide settings: quiet, deterministic TensorFlow that fits a shared 2-core machine."""

import os

# Set before any test imports TensorFlow.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
