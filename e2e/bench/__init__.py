"""Benchmarks (``make bench``): they report numbers, they never fail the build."""
