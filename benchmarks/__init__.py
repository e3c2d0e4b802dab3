"""Benchmarks of tb_gradhealth: capture overhead, serving speed and memory, frontend drawing time."""
