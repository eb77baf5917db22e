"""A local teacher that also looks one step ahead of the student's candidate tokens (LGR).

For the ``lgr`` objective (:mod:`opd_jax.objectives.lookahead`) every scored batch gets, besides
the teacher's usual scores, the extras ``lgr_ids``/``lgr_reward`` ``[B, N, k]``:

1. the student (its current weights: the policy that sampled the batch) reads its completions
   once; at each row's ``branch_points`` positions of highest entropy (at least ``min_entropy``)
   its top-``k`` tokens are the candidates;
2. the teacher reads its sequences once with every candidate appended as a one-token branch
   (tree attention, :func:`opd_jax.models.branches.branch_hidden`): the same forward gives its
   hidden states at the completion positions (its usual scores) and its next-token distribution
   after each candidate, whose confidence, normalised within the position's ``k`` candidates, is
   the candidate's reward.

The extra cost per step is a student forward without gradients and ``branch_points * k`` more
tokens per row in the teacher's forward (not in the iteration's FLOP metrics). Only a teacher
that is one local model (``teacher.kind`` model, self, initial or ema) can be read this way.
"""

import jax
import jax.numpy as jnp
from flax import nnx

import opd_jax.objectives as O
from opd_jax.models.branches import branch_hidden
from opd_jax.teachers.base import Student, Teacher, Wrapping
from opd_jax.training.batch import Sequences, completion_hidden
from opd_jax.training.checks import LOOKAHEAD_KINDS

sg = jax.lax.stop_gradient
_BLOCK = 1 << 22  # logits per block when reading many positions' distributions (16 MiB)


def _blocked(model, h_PD, fn):
    """``fn(logits)`` of the positions ``h [P, D]``, a block of positions at a time (never all
    ``[P, V]`` logits at once)."""
    P, vocab = h_PD.shape[0], model.lm_head_weight().shape[-1]
    size = max(1, min(P, _BLOCK // vocab))
    pad = -P % size
    h = jnp.pad(h_PD, ((0, pad), (0, 0))).reshape(-1, size, h_PD.shape[-1])
    out = jax.lax.map(lambda x: fn(model.logits(x[None])[0]), h)
    return jax.tree.map(lambda y: y.reshape(-1, *y.shape[2:])[:P], out)


def _lookahead(s_graph, s_params, t_graph, t_params, student: Sequences, teacher: Sequences,
               loss_mask, group, cfg: O.LGRConfig):
    s_model, t_model = nnx.merge(s_graph, sg(s_params)), nnx.merge(t_graph, sg(t_params))
    B, N = loss_mask.shape
    h_s = completion_hidden(s_model, student, N, group)
    entropy, top = _blocked(s_model, h_s.reshape(B * N, -1), lambda z: O.entropy_and_topk(
        z, cfg.k, temperature=cfg.temperature))
    entropy, top = entropy.reshape(B, N), top.reshape(B, N, cfg.k)
    index, active = O.branch_points(entropy, loss_mask, min(cfg.branch_points, N),
                                    min_entropy=cfg.min_entropy)
    candidates = jnp.take_along_axis(top, index[..., None], axis=1)  # [B, M, k]
    width = teacher.tokens.shape[1]
    h_rows, h_branch = branch_hidden(t_model, teacher.tokens, teacher.positions, teacher.mask,
                                     width - N + index, candidates)
    conf = _blocked(t_model, h_branch.reshape(-1, h_branch.shape[-1]), lambda z: O.confidence(
        z, cfg.confidence, temperature=cfg.temperature)).reshape(candidates.shape)
    reward = O.group_rewards(conf, active)
    rows = jnp.arange(B)[:, None]
    ids = jnp.zeros((B, N, cfg.k), jnp.int32).at[rows, index].set(candidates)
    rewards = jnp.zeros((B, N, cfg.k), jnp.float32).at[rows, index].set(reward)
    return h_rows[:, width - N - 1:width - 1], {O.LGR_IDS: ids, O.LGR_REWARD: rewards}


lookahead_scores = jax.jit(_lookahead, static_argnums=(0, 2, 7, 8))


class WithLookahead(Wrapping):
    """``inner`` (one local model) scored with look-ahead branches: its usual dense scores plus
    LGR's candidates and rewards (:data:`opd_jax.objectives.LOOKAHEAD_INPUTS`)."""

    def __init__(self, inner: Teacher, student: Student, cfg: O.LGRConfig):
        if not hasattr(inner, "model"):
            raise ValueError(f"look-ahead scoring needs a teacher that is one local model "
                             f"(teacher.kind in {LOOKAHEAD_KINDS}), not {type(inner).__name__}")
        super().__init__(inner)
        self.cfg, self.student_graphdef = cfg, student.graphdef

    def score(self, batch, prompts, student_params):
        g, p = self.inner.model(student_params)
        hidden, extras = lookahead_scores(self.student_graphdef, student_params, g, p,
                                          batch.student, batch.teacher_sequences, batch.loss_mask,
                                          batch.group, self.cfg)
        return batch.replace(teacher_hidden=hidden, extras={**batch.extras, **extras})

    def start_score(self, batch, prompts, student_params):
        return lambda: self.score(batch, prompts, student_params)
