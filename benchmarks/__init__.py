"""Benchmark suites (pytest-benchmark) and the in-run speedup gate; see docs/benchmarks.md."""
