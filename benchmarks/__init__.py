"""queuewatch benchmarks: `python -m benchmarks.run --full|--smoke` (see docs/performance.md)."""
