"""Teachers that are one local model on the trainer's mesh: a separate model (``kind="model"``),
the student itself (``"self"``), a frozen copy of its initial weights (``"initial"``) or an
exponential moving average of its weights (``"ema"``).

Scoring runs the model's body once over the teacher's sequences and keeps the final hidden
states at the completion positions; the train step applies the LM head (see
:mod:`opd_jax.teachers.base`).
"""

import jax
import jax.numpy as jnp
from flax import nnx

import opd_jax.objectives as O
from opd_jax.sampling import sample
from opd_jax.sampling.sampler import model_config
from opd_jax.training.batch import Sequences, completion_hidden
from opd_jax.training.batches import join
from opd_jax.training.build import build_model, vocab_size
from opd_jax.training.checkpoint import abstract
from opd_jax.training.checks import check_tokenizers, check_vocab
from opd_jax.training.step import trainable, with_student_base
from opd_jax.teachers.base import Runtime, Student, Teacher

sg = jax.lax.stop_gradient


def _hidden(graphdef, params, seq: Sequences, n: int, group: int = 1):
    return completion_hidden(nnx.merge(graphdef, sg(params)), seq, n, group)


# The teacher's completion hidden states: (graphdef, params, sequences, N, rows sharing a
# prompt) -> [B, N, D].
score_hidden = jax.jit(_hidden, static_argnums=(0, 3, 4))


def _logp(model, hidden, targets, mask, temperature, chunk):
    feats = {"logp": O.feature(O.token_logp, "logits", "tokens", temperature=temperature)}
    return O.compute_features(feats, tokens=targets, mask=mask, hidden=hidden,
                              head=model.lm_head_weight(), chunk_size=chunk)["logp"]


def _context_logp(graphdef, params, prompts, prompt_mask, targets, mask, temperature, chunk):
    """The model's log-prob of each completion token after other prompts, ``[B, N]``."""
    model = nnx.merge(graphdef, sg(params))
    hidden = completion_hidden(model, join(prompts, prompt_mask, targets, mask), targets.shape[1])
    return _logp(model, hidden, targets, mask, temperature, chunk)


def _sequence_logp(graphdef, params, seq: Sequences, targets, mask, group, temperature, chunk):
    """The model's log-prob of each completion token of ``seq`` (its last ``N`` columns), ``[B, N]``."""
    model = nnx.merge(graphdef, sg(params))
    hidden = completion_hidden(model, seq, targets.shape[1], group)
    return _logp(model, hidden, targets, mask, temperature, chunk)


context_logp = jax.jit(_context_logp, static_argnums=(0, 6, 7))
sequence_logp = jax.jit(_sequence_logp, static_argnums=(0, 5, 6, 7))


def _ema(teacher, student, decay):
    return jax.tree.map(lambda t, s: decay * t + (1.0 - decay) * s, teacher, student)


_ema_jit = jax.jit(_ema, donate_argnums=(0,))


def _copy(params):
    return jax.tree.map(jnp.copy, params)


def frozen_copy(params, shardings):
    """A copy of ``params`` with ``shardings`` (a frozen teacher or reference, not donated along
    with the student's buffers)."""
    return jax.jit(_copy, out_shardings=shardings)(params)


def student_copy(params, shardings) -> tuple:
    """``(copy, its shardings)``: a frozen copy of the student's ``params``; of a student with
    low-rank adapters, of its adapters alone (``trainable``: its frozen base weights never change,
    so a copy reads the student's own, ``with_student_base``)."""
    own, own_shardings = trainable(params)[0], trainable(shardings)[0]
    return frozen_copy(own, own_shardings), own_shardings


class OneModel(Teacher):
    """A teacher that is one model ``(graphdef, params)``; subclasses say which parameters."""

    def __init__(self, graphdef, runtime: Runtime):
        self.graphdef = graphdef
        self.runtime = runtime

    def model(self, student_params) -> tuple:
        """``(graphdef, params)`` of the teacher now."""
        raise NotImplementedError

    def models(self, student_params):
        return [self.model(student_params)]

    def position_limits(self, student_params):
        return [("teacher", model_config(*self.model(student_params)).max_position_embeddings)]

    def score(self, batch, prompts, student_params):
        g, p = self.model(student_params)
        return batch.replace(teacher_hidden=score_hidden(g, p, batch.teacher_sequences,
                                                         batch.completion_len,
                                                         batch.teacher_rows_group))

    def rollout(self, prompts, mask, key, row_ids, examples, student_params):
        g, p = self.model(student_params)
        return sample(g, p, prompts, mask, key, cfg=self.runtime.sampler, row_ids=row_ids)

    def mixer(self, student_params):
        return self.model(student_params)

    def context_logp(self, prompts, mask, targets, loss_mask, student_params):
        g, p = self.model(student_params)
        return context_logp(g, p, prompts, mask, targets, loss_mask, self.runtime.temperature,
                            self.runtime.chunk_size)


class ModelTeacher(OneModel):
    """A separate model (``kind="model"``), frozen; never saved with the run."""

    def __init__(self, graphdef, params, runtime: Runtime):
        super().__init__(graphdef, runtime)
        self.params = params

    @classmethod
    def from_spec(cls, spec, student: Student, mesh, runtime: Runtime):
        graphdef, params, _ = build_model(spec.model, mesh)
        check_vocab(vocab_size(student.graphdef, student.params), vocab_size(graphdef, params))
        check_tokenizers(student.path, spec.model.path)
        return cls(graphdef, params, runtime)

    def model(self, student_params):
        return self.graphdef, self.params

    def step_params(self, student_params):
        return self.params


class SelfTeacher(OneModel):
    """The student's current weights (``kind="self"``, self-distillation), under stop-gradient.

    The train step receives no teacher parameters (``step_params`` is None): it reads the
    student's own, whose buffers it donates.
    """

    @classmethod
    def from_spec(cls, spec, student: Student, mesh, runtime: Runtime):
        return cls(student.graphdef, runtime)

    def model(self, student_params):
        return self.graphdef, student_params


class InitialTeacher(OneModel):
    """A frozen copy of the student's initial weights (``kind="initial"``), saved with each
    checkpoint so that a resumed run keeps the same teacher.

    Of a student with low-rank adapters only the adapters are copied (and saved): the frozen
    base weights never change, so the teacher reads the student's own (``with_student_base``)
    instead of holding them twice.
    """

    def __init__(self, graphdef, params, shardings, runtime: Runtime):
        super().__init__(graphdef, runtime)
        self.params, self.shardings = student_copy(params, shardings)

    @classmethod
    def from_spec(cls, spec, student: Student, mesh, runtime: Runtime):
        return cls(student.graphdef, student.params, student.shardings, runtime)

    def model(self, student_params):
        return self.graphdef, with_student_base(self.params, student_params)

    def step_params(self, student_params):
        return self.params

    def checkpoint_items(self):
        return {"teacher": self.params}

    def restore_targets(self):
        return {"teacher": abstract(self.params, self.shardings)}

    def load(self, items):
        self.params = items["teacher"]


class EMATeacher(InitialTeacher):
    """An exponential moving average of the student's weights (``kind="ema"``): every ``every``
    optimizer steps, ``theta_T <- decay * theta_T + (1 - decay) * theta``."""

    def __init__(self, graphdef, params, shardings, runtime: Runtime, *, decay: float,
                 every: int):
        super().__init__(graphdef, params, shardings, runtime)
        self.decay, self.every = decay, every

    @classmethod
    def from_spec(cls, spec, student: Student, mesh, runtime: Runtime):
        return cls(student.graphdef, student.params, student.shardings, runtime,
                   decay=spec.ema_decay, every=spec.ema_every)

    def update(self, state):
        if int(state.step) % self.every == 0:
            # what the copy holds of the student: all of it, or its adapters (student_copy)
            self.params = _ema_jit(self.params, trainable(state.params)[0], self.decay)
