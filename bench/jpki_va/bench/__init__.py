"""Benchmark harness: data generation, load, ceilings, peers and the report."""
