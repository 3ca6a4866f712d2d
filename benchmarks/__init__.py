"""The benchmarks: `python -m benchmarks.bench` (its --help lists the modes); docs/performance.md."""
