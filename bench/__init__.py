"""Reproducible benchmarks; run ``python -m bench`` (or ``make bench``)."""
