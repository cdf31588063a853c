"""Structured logs, Prometheus metrics and the small health/metrics server of the workers."""
