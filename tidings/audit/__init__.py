"""Audit: check that the log holds what it must always hold."""
