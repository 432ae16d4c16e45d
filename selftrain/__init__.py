"""Shared plumbing for selftrain: data shards, config, training engine and the run store.

Domain code lives beside this package (`teachers/`, `students/`, `pseudolabel/`) and Prefect
wiring in `flows/`; this package is what they all stand on, and it never imports Prefect.
"""

__version__ = "0.1.0"
