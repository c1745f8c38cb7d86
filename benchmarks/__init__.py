"""Benchmark scripts and problem sets; importable from the repository root, not part of the package."""
