"""Benchmarks against the peers, each run from the repository root as `python -m bench.<name>`."""
