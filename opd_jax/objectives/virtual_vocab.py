r"""SimCT's virtual vocabulary: a reverse KL between a student and a teacher whose tokenizers differ.

The completion is split into spans that both tokenizations cut alike (the teacher's side:
:mod:`opd_jax.teachers.spans`). At the first student token of each span both models get a
distribution over one *virtual vocabulary*: the tokens whose text both vocabularies hold (the
support ``A``; here the teacher's top-K of them at that position, all of them by default) plus,
unless the span is one shared token on both sides, one dimension for the span itself, whose logit
is the mean of its tokens' own logits (SimCT's code; ``span_logit="logit"``) or, in log-probs
(``"logprob"``), the mean of its tokens' own log-probs: a geometric mean of their probabilities.
Each side is renormalised over those dimensions and the loss is

.. math::
   \mathrm{KL}(\tilde p \,\|\, \tilde q) = \sum_{v \in A} \tilde p(v) \log\frac{\tilde p(v)}{\tilde q(v)}
     + \tilde p(s) \log\frac{\tilde p(s)}{\tilde q(s)},\qquad
   \tilde p(v) = \frac{p(v)}{P_A + e^{m}},\ \tilde p(s) = \frac{e^{m}}{P_A + e^{m}}

with ``P_A = sum_{v in A} p(v)``, ``m`` the student's span dimension on the scale of its
log-probs at the span's start (the mean own-token log-prob; with logits, the mean own-token logit
less the start's log-normaliser ``log sum_v exp z_v``), and the same for the teacher (``Q_A``,
``n``). It splits into two per-token quantities of the vocabulary phase (the
student's log-mass on ``A`` and the ``A``-renormalised reverse KL there) and the span means of
the token phase:

.. math::
   \mathrm{KL} = e^{\log P_A - Z_p} (R_A + \log P_A - \log Q_A) + e^{m - Z_p} (m - n) + Z_q - Z_p,
   \quad Z_p = \log(P_A + e^m),\ Z_q = \log(Q_A + e^n)

which is exact, gradient included (the student's span mean carries gradient to every token of
the span). With one tokenizer on both sides every span is one shared token and, with the whole
vocabulary as ``A``, the loss is the exact reverse KL (tests/objectives/test_virtual_vocab.py).

The teacher's side arrives as a sparse teacher (:class:`~opd_jax.objectives.topk.TeacherTopK`:
its top-K shared tokens, as *student* ids, with its log-probs) and the extra inputs named below,
all at span starts (elsewhere they are ignored). Reference: SimCT, arXiv 2605.07711 (the
virtual vocabulary and the span logit as a mean of own-token logits; the top-K support and the
log-prob form are this module's additions [INF]). With logits the span dimension moves with each
position's log-normaliser (a property of the method: logits are defined up to a shift per
position); with log-probs ``e^m <= 1``, so a student whose whole vocabulary is shared
(``P_A = 1``) gives the span at most half the virtual mass, whatever the teacher's.
"""

import jax
import jax.numpy as jnp

from opd_jax.objectives.divergences import floor_log_probs, masked
from opd_jax.objectives.topk import TeacherTopK, student_log_probs

Array = jax.Array
sg = jax.lax.stop_gradient

# The extra inputs (all [B, T], at each span's first student token; 0 elsewhere):
XTOK_START = "xtok_start"  # 1 at the first student token of an aligned span
XTOK_END = "xtok_end"  # int32: the position of the span's last student token
XTOK_SPAN_DIM = "xtok_span_dim"  # 1 where the span has its own dimension
XTOK_SPAN_LOGP = "xtok_span_logp"  # the teacher's mean log-prob of its tokens in the span
XTOK_LOG_MASS = "xtok_log_mass"  # the teacher's log-mass on its top-K shared tokens
VIRTUAL_INPUTS = (XTOK_START, XTOK_END, XTOK_SPAN_DIM, XTOK_SPAN_LOGP, XTOK_LOG_MASS)
NEG = -1e30  # a finite stand-in for log 0 (no span dimension): keeps gradients finite


def _support(logits: Array, teacher: TeacherTopK, temperature: float, where) -> Array:
    lp = student_log_probs(logits, temperature=temperature, where=where)
    return jnp.take_along_axis(lp, teacher.ids, axis=-1)


def support_log_mass(logits: Array, teacher: TeacherTopK, *, temperature: float = 1.0,
                     where: Array | None = None) -> Array:
    """``log P_A``: the student's log-probability mass on the teacher's ids ``[..., K]``."""
    return masked(jax.nn.logsumexp(_support(logits, teacher, temperature, where), axis=-1), where)


def support_reverse_kl(logits: Array, teacher: TeacherTopK, *, temperature: float = 1.0,
                       where: Array | None = None) -> Array:
    """``R_A``: the reverse KL of student and teacher, each renormalised on the teacher's ids."""
    lp = _support(logits, teacher, temperature, where)
    lpn = lp - jax.nn.logsumexp(lp, axis=-1, keepdims=True)
    lq = floor_log_probs(sg(teacher.logp))
    lqn = lq - jax.nn.logsumexp(lq, axis=-1, keepdims=True)
    return masked(jnp.sum(jnp.exp(lpn) * (lpn - lqn), axis=-1), where)


def token_logit(logits: Array, tokens: Array, *, temperature: float = 1.0,
                where: Array | None = None) -> Array:
    """The sampled token's own logit, ``z_y / temperature`` (float32)."""
    z = logits.astype(jnp.float32) / temperature
    return masked(jnp.take_along_axis(z, tokens[..., None], axis=-1)[..., 0], where)


def log_normalizer(logits: Array, *, temperature: float = 1.0, where: Array | None = None) -> Array:
    """``log sum_v exp(z_v / temperature)`` (float32)."""
    return masked(jax.nn.logsumexp(logits.astype(jnp.float32) / temperature, axis=-1), where)


def span_mean(logp: Array, end: Array, where: Array) -> Array:
    """For each position ``t``: the mean of ``logp[t..end[t]]`` along the last axis ``[..., T]``
    (0 where ``where`` is False or ``end < t``). Linear in ``logp``, so its gradient is exact."""
    x = jnp.where(where, logp, 0.0)
    cs = jnp.cumsum(x, axis=-1)
    t = jax.lax.broadcasted_iota(jnp.int32, logp.shape, logp.ndim - 1)
    last = jnp.clip(end, 0, logp.shape[-1] - 1).astype(jnp.int32)
    total = jnp.take_along_axis(cs, last, axis=-1) - (cs - x)
    count = jnp.maximum(last - t + 1, 1).astype(logp.dtype)
    return jnp.where(where & (end >= t), total / count, 0.0)


def virtual_reverse_kl(log_mass: Array, support_kl: Array, span_logp: Array, teacher_log_mass: Array,
                       teacher_span_logp: Array, span_dim: Array, *, where: Array | None = None) -> Array:
    """The virtual-vocabulary reverse KL per span start (module docstring), from the student's
    ``log P_A`` and ``R_A``, its span mean ``m``, the teacher's ``log Q_A`` and ``n``; without a
    span dimension (``span_dim`` False) the ``A``-renormalised reverse KL alone."""
    dim = span_dim.astype(bool)
    m = jnp.where(dim, span_logp, NEG)
    n = jnp.where(dim, sg(teacher_span_logp), NEG)
    zp = jnp.logaddexp(log_mass, m)
    zq = jnp.logaddexp(sg(teacher_log_mass), n)
    lq = sg(teacher_log_mass)
    kl = (jnp.exp(log_mass - zp) * (support_kl + log_mass - lq)
          + jnp.exp(m - zp) * jnp.where(dim, m - n, 0.0) + zq - zp)
    return masked(kl, where)
