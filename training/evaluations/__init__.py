"""Evaluations of a published version beyond its test metrics: explanation maps, the OOD flag."""
