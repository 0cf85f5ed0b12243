"""Benchmarks of editstore, each printed as a ratio against a baseline.

Run them all with ``python -m bench``; see ``bench/README.md``.
"""
