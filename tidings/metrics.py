"""Prometheus metrics of the projector and the worker pool."""
