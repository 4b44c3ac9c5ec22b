"""Benchmarks that drive the real services (`make bench`)."""
