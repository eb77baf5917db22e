"""Errors a training run reports (the command line exits with status 1 on them)."""


class TrainingError(RuntimeError):
    """The run cannot continue (data it needs is missing, a teacher cannot answer, ...); nothing
    was updated or saved by the iteration that raised it."""
