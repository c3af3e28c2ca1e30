"""Liveness and readiness probes, served next to the metrics."""
