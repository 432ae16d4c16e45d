"""Shared plumbing for selftrain: data shards, config, training engine and the run store.

Domain code lives beside this package (`teachers/`, `students/`, `pseudolabel/`), Prefect
wiring in `flows/` and the entry points in `commands/`; this package is what they all stand on:
it imports none of them and never Prefect (`lint-imports` checks both; docs/design.md).
"""

__version__ = "0.1.0"
