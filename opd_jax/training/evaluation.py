"""How far the student is from its teacher: exact per-token divergences on fresh student samples.

:func:`evaluate` samples one batch of the training prompts with its own PRNG key (evaluation
never consumes the training stream) and compares the student with the teacher on it. With a
dense (local) teacher the divergences are exact over the vocabulary; with a sparse (served)
teacher the reverse KL is its sampled-token estimate.
"""

import jax
import jax.numpy as jnp
from flax import nnx

import opd_jax.objectives as O
from opd_jax.sampling import sample
from opd_jax.training.batch import TrainBatch, completion_hidden
from opd_jax.training.batches import from_rollout
from opd_jax.training.step import teacher_view, with_student_base


def _mean(values: dict, mask) -> dict:
    m = mask.astype(jnp.float32)
    return {f"eval/{k}": jnp.sum(v * m) / jnp.maximum(jnp.sum(m), 1.0) for k, v in values.items()}


def _dense_features(s_graph, s_params, t_graph, t_params, batch: TrainBatch, temperature: float):
    """Exact per-token reverse KL, forward KL and entropies of the student vs the teacher."""
    n = batch.completion_len
    s = nnx.merge(s_graph, s_params)
    t_hidden, t_head = teacher_view(batch, t_graph, t_params, n)
    feats = {
        "reverse_kl": O.feature(O.reverse_kl, "logits", "teacher_logits", temperature=temperature),
        "forward_kl": O.feature(O.forward_kl, "logits", "teacher_logits", temperature=temperature),
        "student_entropy": O.feature(O.token_entropy, "logits", temperature=temperature),
        "teacher_entropy": O.feature(O.token_entropy, "teacher_logits", temperature=temperature),
    }
    f = O.compute_features(feats, tokens=batch.targets, mask=batch.loss_mask,
                           hidden=completion_hidden(s, batch.student, n, batch.group),
                           head=s.lm_head_weight(),
                           teacher_hidden=t_hidden, teacher_head=t_head)
    return _mean(f, batch.loss_mask)


def _sparse_features(s_graph, s_params, batch: TrainBatch, temperature: float):
    """The student's entropy and the sampled-token (k1, unbiased) reverse-KL estimate."""
    n = batch.completion_len
    s = nnx.merge(s_graph, s_params)
    feats = {"student_entropy": O.feature(O.token_entropy, "logits", temperature=temperature),
             "logp": O.feature(O.token_logp, "logits", "tokens", temperature=temperature)}
    f = O.compute_features(feats, tokens=batch.targets, mask=batch.loss_mask,
                           hidden=completion_hidden(s, batch.student, n, batch.group),
                           head=s.lm_head_weight())
    k1 = f.pop("logp") - batch.extras["teacher_logp"]
    return _mean({**f, "reverse_kl_k1": k1}, batch.loss_mask)


_dense_jit = jax.jit(_dense_features, static_argnums=(0, 2, 5))
_sparse_jit = jax.jit(_sparse_features, static_argnums=(0, 3))


def evaluate(trainer, *, cursor: int = 0, seed: int = 12345) -> dict[str, float]:
    """Divergences to ``trainer``'s teacher on fresh student samples of one batch of prompts:
    those the data order gives at ``cursor``, sampled with ``jax.random.key(seed)``."""
    exp, params, teacher = trainer.exp, trainer.state.params, trainer.teacher
    prompts = trainer.prompts(cursor)
    g = trainer.rows.to_global
    with jax.set_mesh(trainer.mesh):
        roll = sample(trainer.s_graph, params, g(prompts.tokens), g(prompts.mask),
                      jax.random.key(seed), cfg=exp.sampler)
        batch = teacher.score(from_rollout(trainer.rows, prompts, roll, exp.sampler.num_samples),
                              prompts, params)
        if teacher.sparse:
            out = _sparse_jit(trainer.s_graph, params, batch, exp.objective.temperature)
        else:
            out = _dense_jit(trainer.s_graph, params, teacher.graphdef,
                             with_student_base(teacher.step_params(params), params), batch,
                             exp.objective.temperature)
    return {k: float(v) for k, v in jax.device_get(out).items()}
