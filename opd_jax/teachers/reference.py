"""A teacher with a reference policy beside it: a frozen copy of the student's initial weights
whose log-prob of every completion token joins each scored batch as the extra ``"ref_logp"``
(:data:`opd_jax.objectives.REF_LOGP`), for objectives anchored to where the student started
(StableOPD's reference KL).

The training loop wraps whatever teacher it built when the objective reads ``"ref_logp"``;
everything else is the wrapped teacher's (``models()`` names the teacher's models only: the
reference's forward is not in the iteration's FLOP metrics, nor is it an evaluation teacher).
The copy is saved with each checkpoint (as ``"reference"``), so a resumed run keeps the same
anchor.
"""

import opd_jax.objectives as O
from opd_jax.teachers.base import Runtime, Student, Teacher, Wrapping
from opd_jax.teachers.local import frozen_copy, sequence_logp
from opd_jax.training.checkpoint import abstract


class WithReference(Wrapping):
    """``inner`` plus the reference's log-probs of the student's completions in every scored
    batch (the reference reads the student's own prompts)."""

    def __init__(self, inner: Teacher, student: Student, runtime: Runtime):
        super().__init__(inner)
        self.runtime = runtime
        self.ref_graphdef, self.shardings = student.graphdef, student.shardings
        self.ref_params = frozen_copy(student.params, student.shardings)

    def reference_logp(self, batch):
        """``[B, N]``: the reference's log-prob of each completion token of ``batch``."""
        return sequence_logp(self.ref_graphdef, self.ref_params, batch.student, batch.targets,
                             batch.loss_mask, batch.group, self.runtime.temperature,
                             self.runtime.chunk_size)

    def _anchored(self, batch):
        return batch.replace(extras={**batch.extras, O.REF_LOGP: self.reference_logp(batch)})

    def score(self, batch, prompts, student_params):
        return self._anchored(self.inner.score(batch, prompts, student_params))

    def start_score(self, batch, prompts, student_params):
        pending = self.inner.start_score(batch, prompts, student_params)
        return lambda: self._anchored(pending())

    def checkpoint_items(self):
        return {**self.inner.checkpoint_items(), "reference": self.ref_params}

    def restore_targets(self):
        return {**self.inner.restore_targets(), "reference": abstract(self.ref_params, self.shardings)}

    def load(self, items):
        items = dict(items)
        self.ref_params = items.pop("reference")
        self.inner.load(items)
