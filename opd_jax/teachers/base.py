"""The teacher protocol: what the training loop asks of a teacher, whatever kind it is.

A teacher scores a batch of completions, may sample (roll out) completions of its own, may change
as the student trains (an EMA), and may carry state a checkpoint must keep. The loop calls the
methods below and never asks which kind of teacher it holds; a kind that cannot do something
says so up front (:meth:`Teacher.refusals`), before any model is built.

Scores reach the train step in one of two forms:

- dense (a local model): the teacher's final hidden states at the completion positions in
  ``batch.teacher_hidden``; the train step applies the LM head (``graphdef`` merged with
  :meth:`Teacher.step_params`) block by block, so ``[B, N, V]`` teacher logits never exist;
- sparse (a served model): the extras ``teacher_topk_ids``/``teacher_topk_logp`` ``[B, N, K]``
  (an :class:`opd_jax.objectives.TeacherTopK`) and ``teacher_logp`` ``[B, N]``, the log-prob of
  each completion token; ``graphdef`` is None.
"""

import dataclasses
from typing import Any

from opd_jax.sampling.config import SamplerConfig
from opd_jax.training.batch import TrainBatch
from opd_jax.training.batches import Prompts, Rows


@dataclasses.dataclass(frozen=True)
class Runtime:
    """What a teacher needs from the run to act: where rows live and the static options."""
    rows: Rows
    sampler: SamplerConfig  # teacher rollouts and teacher-mixed sampling use it
    temperature: float  # the objective's loss temperature (teacher log-probs of other contexts)
    chunk_size: int  # vocabulary block size of those log-probs
    text: Any = None  # the run's opd_jax.training.text.Text (tokenizers, records, data options)


@dataclasses.dataclass(frozen=True)
class Student:
    """The student a teacher is built next to (self-distillation teachers are made of it)."""
    graphdef: Any
    params: Any  # its initial parameters
    shardings: Any
    path: str  # its checkpoint ("" for a random init)
    tokenizer: Any = None  # given to the Trainer, else read from ``path`` when needed


class Teacher:
    """Base class of every teacher; subclasses override what their kind can do.

    ``graphdef`` is static for the train step (a graph definition, a tuple of them for several
    models, or None when the scores are complete). ``sparse`` marks teachers that send top-k
    log-probs only. Methods that take ``student_params`` receive the student's current
    parameters (the student as its own teacher reads them).
    """
    graphdef: Any = None
    sparse: bool = False
    distribution: bool = True  # scores the student's vocabulary (False: sampled tokens only)
    overlap: bool = False  # score the next batch while the student updates (one step stale)

    @classmethod
    def from_spec(cls, spec, student: Student, mesh, runtime: Runtime) -> "Teacher":
        """Build the teacher of a resolved ``TeacherSpec`` next to ``student``."""
        raise NotImplementedError

    @classmethod
    def check(cls, exp) -> None:
        """Refuse an experiment this kind cannot serve (``ValueError``), before any model is built."""

    @classmethod
    def refusals(cls, spec) -> dict[str, str]:
        """What this kind cannot do, as ``{capability: the reason, for an error message}``.

        Capabilities: ``"rollout"`` (sample completions: cold start, sequence KD), ``"mix"``
        (token-level teacher mixing), ``"contexts"`` (score other contexts: UniSD's auxiliary and
        bad teachers), ``"hidden"`` (its own final hidden states, same width as the student's).
        ``spec`` may be None (then the reasons that hold for every spec of the kind).
        """
        return {}

    def models(self, student_params) -> list[tuple[Any, Any]]:
        """``[(graphdef, params)]`` of the local models that score (FLOPs); [] when remote."""
        return []

    def position_limits(self, student_params) -> list[tuple[str, int]]:
        """``[(name, max positions)]`` of every model that reads a prompt plus a completion."""
        return []

    def score(self, batch: TrainBatch, prompts: Prompts, student_params) -> TrainBatch:
        """``batch`` with the teacher's scores of its completions (dense or sparse, see above)."""
        raise NotImplementedError

    def start_score(self, batch: TrainBatch, prompts: Prompts, student_params):
        """Begin :meth:`score`; the returned function gives the scored batch. A teacher that
        answers from elsewhere works in the background meanwhile; a local one scores when the
        function is called (its work is queued on the devices anyway)."""
        return lambda: self.score(batch, prompts, student_params)

    def step_params(self, student_params):
        """The parameters the train step merges with ``graphdef`` (None: the student's own)."""
        return None

    def rollout(self, prompts, mask, key, row_ids, examples, student_params):
        """Teacher samples (a :class:`opd_jax.sampling.Rollout`) of the global ``prompts``."""
        raise NotImplementedError(self.refusals(None).get("rollout", "no rollouts"))

    def mixer(self, student_params) -> tuple[Any, Any]:
        """``(graphdef, params)`` of the model that draws teacher tokens in mixed sampling."""
        raise NotImplementedError(self.refusals(None).get("mix", "no teacher mixing"))

    def context_logp(self, prompts, mask, targets, loss_mask, student_params):
        """The teacher's log-prob of each completion token after other prompts, ``[B, N]``."""
        raise NotImplementedError(self.refusals(None).get("contexts", "no other contexts"))

    def update(self, state) -> None:
        """Follow the student after an optimizer step (an EMA teacher); most teachers do not."""

    def checkpoint_items(self) -> dict[str, Any]:
        """Arrays a checkpoint must hold to resume this teacher exactly (an EMA or initial copy)."""
        return {}

    def restore_targets(self) -> dict[str, Any]:
        """Abstract restore targets (shapes, dtypes, shardings) of :meth:`checkpoint_items`."""
        return {}

    def load(self, items: dict[str, Any]) -> None:
        """Take restored :meth:`checkpoint_items`."""

    def metrics(self) -> dict[str, float]:
        """Counters of the last :meth:`score` (a served teacher's bytes and requests)."""
        return {}

    def close(self) -> None:
        """Release connections and threads."""


class Wrapping(Teacher):
    """A teacher that adds to another's scores (a reference policy, look-ahead branches): every
    method is the wrapped teacher's (``self.inner``) until a subclass overrides it."""

    def __init__(self, inner: Teacher):
        self.inner = inner
        self.graphdef, self.sparse, self.overlap = inner.graphdef, inner.sparse, inner.overlap
        self.distribution = inner.distribution

    def models(self, student_params):
        return self.inner.models(student_params)

    def position_limits(self, student_params):
        return self.inner.position_limits(student_params)

    def score(self, batch, prompts, student_params):
        return self.inner.score(batch, prompts, student_params)

    def start_score(self, batch, prompts, student_params):
        return self.inner.start_score(batch, prompts, student_params)

    def step_params(self, student_params):
        return self.inner.step_params(student_params)

    def rollout(self, prompts, mask, key, row_ids, examples, student_params):
        return self.inner.rollout(prompts, mask, key, row_ids, examples, student_params)

    def mixer(self, student_params):
        return self.inner.mixer(student_params)

    def context_logp(self, prompts, mask, targets, loss_mask, student_params):
        return self.inner.context_logp(prompts, mask, targets, loss_mask, student_params)

    def update(self, state):
        self.inner.update(state)

    def checkpoint_items(self):
        return self.inner.checkpoint_items()

    def restore_targets(self):
        return self.inner.restore_targets()

    def load(self, items):
        self.inner.load(items)

    def metrics(self):
        return self.inner.metrics()

    def close(self):
        self.inner.close()
