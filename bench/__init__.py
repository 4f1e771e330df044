"""Benchmarks: efficiency figures printed and saved as JSON (and PNG) under bench/results/."""
