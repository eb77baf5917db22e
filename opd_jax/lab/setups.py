"""What the lab's experiment files (``experiments/lab/``) build their arms, schedules and seeds
from, on top of the baseline regime (:mod:`opd_jax.lab.baseline`): so that each file is its
configuration, and the regime's values reach every experiment unchanged."""

from __future__ import annotations

import dataclasses

from opd_jax.lab import baseline as BL
from opd_jax.lab import variants

# An arm whose records carry a privileged teacher prompt (a rule or a hint before the problem)
# reads longer prompts than the lab's plain ones.
CONTEXT = (f"data.max_prompt_len={variants.MAX_CONTEXT_PROMPT_LEN}",)


def schedule(mode: str, **changes):
    """The baseline regime's evaluation schedule of ``mode`` with ``changes`` (e.g. ``measures``)."""
    return dataclasses.replace(BL.budget(mode).schedule, **changes)


def seeds(mode: str, at_least: int) -> tuple[int, ...]:
    """The regime's seeds of ``mode``, extended to ``at_least`` in quick and full (claims whose
    spread across seeds is large, or is the claim); smoke keeps its one seed."""
    b = BL.budget(mode)
    return tuple(b.seeds) if mode == "smoke" else tuple(sorted(set(b.seeds) | set(range(at_least))))


def context_arm(name: str, objective, mode: str, *, data: str, teacher: str = "initial", **fields):
    """A self-distillation arm: the ``contextual`` student (it reads rules and hints) taught by
    itself (``teacher``: ``"initial"``, ``"ema"`` or ``"self"``) reading the records of ``data``."""
    return BL.arm(name, objective, mode, student="contextual", teacher=teacher, data=data,
                  overrides=CONTEXT, **fields)
