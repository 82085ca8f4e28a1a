"""Benchmarks for pulumi-llmd. Results go to BENCHMARKS.md (one section per benchmark) and results/*.json."""
