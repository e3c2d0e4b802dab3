"""Shared test support: data, models, numpy references, event reading and comparison, reused by every test module."""
