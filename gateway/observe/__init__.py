"""Observation: Prometheus metrics and logging."""
