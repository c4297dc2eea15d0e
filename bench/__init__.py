"""Benchmarks of the restore path, measured side by side with the raw tools (not tests)."""
