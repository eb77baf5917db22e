"""Several local models acting as one teacher (``kind="models"``): routed per record or mixed.

Per row ``r`` the teacher's logits are ``sum_j w_rj z_j`` over the models' logits ``z_j``: one-hot
weights from each record's ``teacher`` field (``combine="route"``) or the fixed mixture weights
(``combine="mix"``). Scoring stacks each model's hidden states times its row weight
(:func:`opd_jax.training.step.combine_teachers`), so that the train step's one head product
gives that sum. Rollouts draw each row from its routed model.
"""

import jax
import jax.numpy as jnp
import numpy as np

from opd_jax.sampling import sample
from opd_jax.sampling.sampler import model_config
from opd_jax.training.build import build_model, vocab_size
from opd_jax.training.checks import check_tokenizers, check_vocab, route_of
from opd_jax.training.step import combine_teachers
from opd_jax.teachers.base import Runtime, Student, Teacher
from opd_jax.teachers.local import score_hidden


def _pick_rows(rolls, pick):
    """Row ``r`` of ``rolls[pick[r]]`` for every field of the rollouts."""
    def one(*xs):
        stacked = jnp.stack(xs)
        return stacked[pick, jnp.arange(stacked.shape[1])]
    return jax.tree.map(one, *rolls)


_pick_jit = jax.jit(_pick_rows)
_combine_jit = jax.jit(combine_teachers)


class RoutedTeacher(Teacher):
    """Several teacher models (``teacher.models``), combined per row (see the module doc)."""

    def __init__(self, spec, graphdefs: tuple, params: tuple, runtime: Runtime):
        self.spec = spec
        self.graphdef = tuple(graphdefs)
        self.params = tuple(params)
        self.runtime = runtime

    @classmethod
    def from_spec(cls, spec, student: Student, mesh, runtime: Runtime):
        built = [build_model(m, mesh) for m in spec.models]
        vocab = vocab_size(student.graphdef, student.params)
        for j, ((g, p, _), m) in enumerate(zip(built, spec.models)):
            check_vocab(vocab, vocab_size(g, p), who=f"teacher.models[{j}]")
            check_tokenizers(student.path, m.path)
        return cls(spec, [g for g, _, _ in built], [p for _, p, _ in built], runtime)

    @classmethod
    def refusals(cls, spec):
        out = {"mix": "loop.teacher_mix samples tokens from one teacher; it is not supported "
                      "with several teachers (teacher.kind='models').",
               "contexts": "auxiliary teacher contexts (aux_teacher_prompts_ids, "
                           "bad_teacher_prompt_ids) need one teacher, not teacher.kind='models'.",
               "hidden": "hidden-state matching (objective.hidden_coef) needs one teacher with "
                         "the student's hidden size, not teacher.kind='models'."}
        if spec is not None and spec.combine != "route":
            out["rollout"] = ("teacher rollouts (loop.cold_start_steps, loop.seq_kd) with several "
                              "teachers need teacher.combine='route': a mix of teachers is not "
                              "one model to sample from.")
        return out

    def models(self, student_params):
        return list(zip(self.graphdef, self.params))

    def position_limits(self, student_params):
        return [(f"teacher {j}", model_config(g, p).max_position_embeddings)
                for j, (g, p) in enumerate(self.models(student_params))]

    def row_weights(self, examples, rows_per_prompt: int) -> jax.Array:
        """Each row's weights ``[rows, J]`` (one-hot when routed), as a global array."""
        if self.spec.combine == "mix":
            w = np.tile(np.asarray(self.spec.mix_weights(), np.float32), (len(examples), 1))
        else:
            w = np.eye(len(self.params), dtype=np.float32)[
                [route_of(self.spec, e.record) for e in examples]]
        return self.runtime.rows.to_global(np.repeat(w, rows_per_prompt, axis=0))

    def score(self, batch, prompts, student_params):
        seq, n = batch.teacher_sequences, batch.completion_len
        hidden = [score_hidden(g, p, seq, n, batch.teacher_rows_group) for g, p in self.models(student_params)]
        rows = batch.targets.shape[0] // len(prompts.examples) // jax.process_count()
        weights = self.row_weights(prompts.examples, rows)
        return batch.replace(teacher_hidden=_combine_jit(hidden, weights))

    def step_params(self, student_params):
        return self.params

    def rollout(self, prompts, mask, key, row_ids, examples, student_params):
        rolls = [sample(g, p, prompts, mask, key, cfg=self.runtime.sampler, row_ids=row_ids)
                 for g, p in self.models(student_params)]
        if len(rolls) == 1:
            return rolls[0]
        weights = self.row_weights(examples, self.runtime.sampler.num_samples)
        return _pick_jit(rolls, jnp.argmax(weights, axis=1))
