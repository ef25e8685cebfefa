"""Benchmarks of the running service: latency against the bare model, capacity of one replica under locust."""
