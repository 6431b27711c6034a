"""Parity and throughput benchmarks (``wmoe.bench``)."""
