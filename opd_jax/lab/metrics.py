"""Evaluation measures of the lab: those of :mod:`opd_jax.evaluate`, whose instance the lab's
evaluation is."""

from opd_jax.evaluate.core import pass_at_k

__all__ = ["pass_at_k"]
