"""ctxembed benchmarks: `make bench` (quick) and `make bench-full`; see the README's Benchmarks."""
