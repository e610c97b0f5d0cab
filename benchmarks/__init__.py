"""Benchmarks: the server measured against what users would use instead.

One command per benchmark (``python -m benchmarks.<name>``); see benchmarks/README.md.
"""
