"""Entry points: the `selftrain` command (`cli`) and one torchrun rank (`train_rank`).

The top layer of the import graph (`make lint` checks it with import-linter, contract in
pyproject.toml): these modules import `flows/`, the stage packages and `selftrain/`; nothing
imports them. A subprocess reaches them by module path (`python -m commands.cli`,
`python -m commands.train_rank`).
"""
