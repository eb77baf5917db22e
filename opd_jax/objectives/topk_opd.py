"""Rethinking-OPD's top-k policy gradient: a per-token loss over a set of candidate tokens.

At each position, every token ``v`` of a support set gets the advantage
``A(v) = w(v) (log q(v) - log p_old(v))`` (stop-gradient) and a surrogate in its own ratio
``rho(v) = p_theta(v) / p_old(v)``; the position's loss is the sum over the support. On-policy
(``p_old = p_theta``, the default) the gradient is ``-sum_v A(v) grad log p(v)``; with the
behaviour policy's top-k log-probs recorded at rollout, the PPO-clipped form
``max(-rho A, -clip(rho, 1-eps, 1+eps) A)`` keeps several updates per rollout in a trust region.

Supports (the thunlp strategy names in brackets), with ``S_k`` the student's top-k and ``T_k``
the teacher's:

- ``"student"`` (``only_stu``): ``S_k``;
- ``"overlap"`` (``intersection``): ``S_k ∩ T_k``;
- ``"non_overlap"`` (``union-intersection``): ``(S_k \\ T_k) ∪ (T_k \\ S_k)``;
- ``"teacher"`` (``only_tch``): ``T_k``;
- ``"union"`` (``union``): ``S_k ∪ T_k``, teacher tokens already in ``S_k`` counted once.

Weights ``w`` (``student_p``, ``teacher_p``, ``none``): the student's or the teacher's
probabilities renormalised over the support's tokens, or uniform ``1 / |support|``; on
``"non_overlap"`` they are the raw probabilities (uniform: ``1 / k``), as in the reference code.
A sparse teacher's missing student tokens take the student's own log-prob (advantage 0) and
count as outside ``T_k``.

References: Li et al., "Rethinking OPD", arXiv 2604.13016 (thunlp/OPD
``compute_distillation_reward``, objectives.md §9).
"""

from typing import Literal

import jax
import jax.numpy as jnp

from opd_jax.objectives import topk as K
from opd_jax.objectives.divergences import floor_log_probs, masked

Array = jax.Array
sg = jax.lax.stop_gradient

SUPPORTS = ("student", "overlap", "non_overlap", "teacher", "union")
WEIGHTS = ("student", "teacher", "uniform")


def _student_ids(lp_V, k, behavior_ids):
    """The student's top-k ids: recorded at rollout when given, else the current ones."""
    if behavior_ids is None:
        return jax.lax.top_k(sg(lp_V), k)[1]
    if behavior_ids.shape[-1] != k:
        raise ValueError(f"behavior_topk_ids has {behavior_ids.shape[-1]} tokens per position; "
                         f"expected k={k}.")
    return behavior_ids.astype(jnp.int32)


def _candidates(ids, fill, teacher, k, support, temperature, where):
    """Support token ids ``[..., n]``, their teacher log-probs and validity; student tokens a
    sparse teacher did not send take ``fill`` (the student's old log-prob: advantage 0)."""
    lq_s, known = K.teacher_logp_at(ids, teacher, temperature=temperature, where=where, fill=fill)
    if support == "student":
        return ids, lq_s, jnp.ones_like(known)
    t_ids, lq_t = K.teacher_support(teacher, k, temperature=temperature, where=where)
    in_t = K.membership(ids, t_ids) & known
    if support == "overlap":
        return ids, lq_s, in_t
    if support == "teacher":
        return t_ids, lq_t, jnp.ones_like(in_t)
    t_new = ~K.membership(t_ids, ids)  # teacher tokens outside S_k
    both_ids = jnp.concatenate([ids, t_ids], axis=-1)
    both_lq = jnp.concatenate([lq_s, lq_t], axis=-1)
    if support == "union":
        return both_ids, both_lq, jnp.concatenate([jnp.ones_like(in_t), t_new], axis=-1)
    s_new = ~K.membership(ids, t_ids) & known  # student tokens the teacher ranks outside T_k
    return both_ids, both_lq, jnp.concatenate([s_new, t_new], axis=-1)  # non_overlap


def _weights(lp_old, lq, valid, weights, support, k):
    if weights == "uniform":
        w = valid.astype(jnp.float32)
        return w / k if support == "non_overlap" else w / jnp.maximum(
            jnp.sum(w, axis=-1, keepdims=True), 1.0)
    p = jnp.where(valid, jnp.exp(sg(lp_old if weights == "student" else lq)), 0.0)
    if support == "non_overlap":
        return p
    return p / jnp.maximum(jnp.sum(p, axis=-1, keepdims=True), 1e-30)


def topk_opd_loss(logits: Array, teacher, *, k: int = 16,
                  support: Literal["student", "overlap", "non_overlap", "teacher",
                                   "union"] = "student",
                  weights: Literal["student", "teacher", "uniform"] = "student",
                  temperature: float = 1.0, behavior_ids: Array | None = None,
                  behavior_logp: Array | None = None, clip_eps: float | None = None,
                  where: Array | None = None) -> Array:
    r"""Rethinking-OPD's top-k policy-gradient loss at each position, ``[...]``.

    .. math::
       \ell_t = \sum_{v \in \mathcal S_t} \max(-\rho(v) A(v),\,
                -\mathrm{clip}(\rho(v), 1-\epsilon, 1+\epsilon) A(v)),\quad
       A(v) = w(v)\,(\log q(v) - \log p_{old}(v))

    (without ``clip_eps``: ``-sum_v rho(v) A(v)``).

    Args:
      logits: student logits ``[..., V]``; carries the gradient.
      teacher: dense teacher logits ``[..., V]`` or a :class:`~opd_jax.objectives.topk.TeacherTopK`.
      k: size of the top-k sets (the paper's default 16).
      support: which tokens get a loss (module docstring).
      weights: ``"student"`` (``student_p``, default), ``"teacher"`` (``teacher_p``) or
        ``"uniform"`` (``none``).
      temperature: divides the student logits (and dense teacher logits).
      behavior_ids, behavior_logp: the behaviour policy's top-k ids and log-probs ``[..., k]``
        recorded at rollout; they define ``S_k`` and ``p_old``. Without them ``S_k`` is the
        current top-k and ``p_old = sg(p_theta)`` (on-policy: ratio 1).
      clip_eps: PPO clipping of the ratio; None for the plain surrogate. Needs the behaviour
        log-probs, and a support inside ``S_k`` (``"student"`` or ``"overlap"``): the teacher's
        other tokens have no recorded behaviour log-prob.
      where: optional bool ``[...]``.

    Returns:
      float32 ``[...]``.
    """
    if support not in SUPPORTS:
        raise ValueError(f"support must be one of {SUPPORTS}, got {support!r}.")
    if weights not in WEIGHTS:
        raise ValueError(f"weights must be one of {WEIGHTS}, got {weights!r}.")
    if (behavior_ids is None) != (behavior_logp is None):
        raise ValueError("behavior_ids and behavior_logp go together (the behaviour top-k).")
    if behavior_ids is not None and support not in ("student", "overlap"):
        raise ValueError(f"behaviour log-probs cover the student's top-k only; support={support!r} "
                         "also has teacher tokens. Use support='student' or 'overlap'.")
    if clip_eps is not None and behavior_ids is None:
        raise ValueError("PPO clipping (clip_eps) needs the behaviour policy's top-k log-probs "
                         "(behavior_ids, behavior_logp).")
    K.check_teacher(logits, teacher, k)
    lp_V = K.student_log_probs(logits, temperature=temperature, where=where)
    s_ids = _student_ids(lp_V, k, behavior_ids)
    s_old = (sg(jnp.take_along_axis(lp_V, s_ids, -1)) if behavior_logp is None
             else floor_log_probs(sg(behavior_logp.astype(jnp.float32))))
    ids, lq, valid = _candidates(s_ids, s_old, teacher, k, support, temperature, where)
    lp = jnp.take_along_axis(lp_V, ids, axis=-1)
    lp_old = sg(lp) if behavior_logp is None else s_old  # PPO: support inside S_k
    w = _weights(lp_old, lq, valid, weights, support, k)
    adv = sg(w * (lq - lp_old))
    ratio = jnp.exp(lp - lp_old)
    loss = -ratio * adv
    if clip_eps is not None:
        loss = jnp.maximum(loss, -jnp.clip(ratio, 1.0 - clip_eps, 1.0 + clip_eps) * adv)
    return masked(jnp.sum(jnp.where(valid, loss, 0.0), axis=-1), where)


def topk_opd_behavior_loss(logits: Array, teacher, behavior_ids: Array, behavior_logp: Array, *,
                           k: int = 16, support: Literal["student", "overlap"] = "student",
                           weights: Literal["student", "teacher", "uniform"] = "student",
                           clip_eps: float | None = 0.2, temperature: float = 1.0,
                           where: Array | None = None) -> Array:
    """:func:`topk_opd_loss` against the behaviour policy's recorded top-k (positional form, for a
    vocabulary-phase feature reading them as extra inputs), PPO-clipped by default."""
    return topk_opd_loss(logits, teacher, k=k, support=support, weights=weights,
                         temperature=temperature, behavior_ids=behavior_ids,
                         behavior_logp=behavior_logp, clip_eps=clip_eps, where=where)
