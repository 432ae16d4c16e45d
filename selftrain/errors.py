"""The one exception type users see.

Every failure caused by input (a shard, a config value, a run directory) is raised as
`SelftrainError` with a single line that names the file or field and says what to do. The CLI
prints that line and exits 2; anything else is a bug and keeps its traceback.
"""


class SelftrainError(Exception):
    """A problem with the user's input, explained in one line."""


class CorruptSampleError(SelftrainError):
    """One sample cannot be used; with `skip_corrupt` it is skipped and counted instead."""
