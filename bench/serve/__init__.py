"""Benchmark of `serve` against the reference SageMaker inference stacks."""
