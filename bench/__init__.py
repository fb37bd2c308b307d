"""Benchmarks of the service. Nothing here is imported by the application itself."""
