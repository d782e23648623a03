"""ctxembed benchmarks: `make bench` (quick) and `make bench-full`; see benchmarks/README.md."""
