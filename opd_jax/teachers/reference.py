"""A teacher with a reference policy beside it: a frozen copy of the student's initial weights
whose log-prob of every completion token joins each scored batch as the extra ``"ref_logp"``
(:data:`opd_jax.objectives.REF_LOGP`), for objectives anchored to where the student started
(StableOPD's reference KL).

The training loop wraps whatever teacher it built when the objective reads ``"ref_logp"``;
everything else is the wrapped teacher's (``models()`` names the teacher's models only: the
reference's forward is not in the iteration's FLOP metrics, nor is it an evaluation teacher).
The copy is saved with each checkpoint (as ``"reference"``), so a resumed run keeps the same
anchor. Of a student with low-rank adapters only the adapters are copied: the reference reads the
student's frozen base weights (``with_student_base``).
"""

import opd_jax.objectives as O
from opd_jax.teachers.base import Runtime, Student, Teacher, Wrapping
from opd_jax.teachers.local import sequence_logp, student_copy
from opd_jax.training.checkpoint import abstract
from opd_jax.training.step import with_student_base


class WithReference(Wrapping):
    """``inner`` plus the reference's log-probs of the student's completions in every scored
    batch (the reference reads the student's own prompts)."""

    def __init__(self, inner: Teacher, student: Student, runtime: Runtime):
        super().__init__(inner)
        self.runtime = runtime
        self.ref_graphdef = student.graphdef
        self.ref_params, self.shardings = student_copy(student.params, student.shardings)

    def reference_logp(self, batch, student_params):
        """``[B, N]``: the reference's log-prob of each completion token of ``batch``."""
        return sequence_logp(self.ref_graphdef, with_student_base(self.ref_params, student_params), batch.student,
                             batch.targets, batch.loss_mask, batch.group, self.runtime.temperature,
                             self.runtime.chunk_size)

    def _anchored(self, batch, student_params):
        ref = self.reference_logp(batch, student_params)
        return batch.replace(extras={**batch.extras, O.REF_LOGP: ref})

    def score(self, batch, prompts, student_params):
        return self._anchored(self.inner.score(batch, prompts, student_params), student_params)

    def start_score(self, batch, prompts, student_params):
        pending = self.inner.start_score(batch, prompts, student_params)
        return lambda: self._anchored(pending(), student_params)

    def checkpoint_items(self):
        return {**self.inner.checkpoint_items(), "reference": self.ref_params}

    def restore_targets(self):
        return {**self.inner.restore_targets(), "reference": abstract(self.ref_params, self.shardings)}

    def load(self, items):
        items = dict(items)
        self.ref_params = items.pop("reference")
        self.inner.load(items)
