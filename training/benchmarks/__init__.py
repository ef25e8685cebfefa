"""Benchmarks of the training side: the real-data recipe within a time budget, the analysis speed."""
