"""Top-k (truncated-support) divergences, with a dense or a sparse teacher.

A teacher reaches these functions in one of two forms, chosen by type at trace time:

- dense: teacher logits ``[..., V]`` (an array);
- sparse: :class:`TeacherTopK` — the teacher's own top-K token ids and their
  full-vocabulary log-probabilities, ``[..., K]`` each. This is what a teacher server
  (vLLM ``prompt_logprobs``, SGLang) sends; :func:`teacher_topk` makes one from logits.

Student-top-k objectives need the teacher's log-prob at the *student's* top-k tokens. With a
sparse teacher a student token can be missing from the teacher's list; following the Many
Faces code, its teacher log-prob is then replaced by the student's own (so that token adds 0
to a reverse KL) and the token counts as outside the overlap. All log-probs are normalised
over the full vocabulary unless a function says it renormalises.

Zero probabilities follow :mod:`~opd_jax.objectives.divergences`: every log-prob that enters
a top-k computation (student, dense or sparse teacher) is first passed through
:func:`~opd_jax.objectives.divergences.floor_log_probs`, so a ``-inf`` reads as
``LOG_FLOOR ≈ -87.34`` and values and gradients stay finite. A student top-k that has to
include zero-probability tokens (fewer than k finite logits) gives them weight ``e^-87.34``,
i.e. nothing measurable.

Shapes: ``[...]`` is any batch shape, ``V`` the vocabulary, ``k`` the support size.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp

from opd_jax.objectives import _checks
from opd_jax.objectives.divergences import (floor_log_probs, generalized_jsd, kl_terms, log_probs,
                                            masked)

Array = jax.Array
sg = jax.lax.stop_gradient


class TeacherTopK(NamedTuple):
    """A sparse teacher: its top-K ids ``int32 [..., K]`` and log-probs ``float32 [..., K]``.

    Entries are sorted by decreasing log-prob; ``logp`` is normalised over the full vocabulary
    (so ``exp(logp).sum(-1) <= 1``; the remainder is the teacher's tail mass).
    """
    ids: Array
    logp: Array


def teacher_topk(teacher_logits: Array, *, k: int, temperature: float = 1.0,
                 where: Array | None = None) -> TeacherTopK:
    """The sparse form of a dense teacher: its ``k`` most likely tokens and their log-probs."""
    _checks.check_k(k, teacher_logits.shape[-1])
    lq = log_probs(sg(teacher_logits), temperature=temperature, where=where)
    logp, ids = jax.lax.top_k(lq, k)
    return TeacherTopK(ids.astype(jnp.int32), logp)


def student_log_probs(logits: Array, *, temperature: float = 1.0,
                      where: Array | None = None) -> Array:
    """The student's full-vocabulary log-probs, floored (the form every top-k function uses)."""
    return floor_log_probs(log_probs(logits, temperature=temperature, where=where))


def check_teacher(logits: Array, teacher, k: int) -> None:
    """``k`` fits the vocabulary, and the teacher (either form) covers the logits' positions."""
    _checks.check_k(k, logits.shape[-1])
    if isinstance(teacher, TeacherTopK):
        if teacher.ids.shape != teacher.logp.shape:
            raise ValueError(f"TeacherTopK ids {teacher.ids.shape} and logp {teacher.logp.shape} "
                             "must have the same shape.")
        if teacher.ids.shape[:-1] != logits.shape[:-1]:
            raise ValueError(f"TeacherTopK covers positions {teacher.ids.shape[:-1]}, logits "
                             f"cover {logits.shape[:-1]}.")
    else:
        _checks.check_logits_pair(logits, teacher, ("logits", "teacher"))


def teacher_support(teacher, k: int, *, temperature: float = 1.0,
                    where: Array | None = None) -> tuple[Array, Array]:
    """The teacher's top-k ids ``[..., k]`` and their (floored, stop-gradient) log-probs, from
    either form of teacher."""
    if isinstance(teacher, TeacherTopK):
        if k > teacher.ids.shape[-1]:
            raise ValueError(f"k={k} exceeds the {teacher.ids.shape[-1]} entries the sparse "
                             "teacher sent; ask the teacher server for more log-probs.")
        return teacher.ids[..., :k], floor_log_probs(sg(teacher.logp[..., :k].astype(jnp.float32)))
    top = teacher_topk(teacher, k=k, temperature=temperature, where=where)
    return top.ids, floor_log_probs(top.logp)


def teacher_logp_at(ids: Array, teacher, *, temperature: float = 1.0, where=None,
                    fill: Array | None = None) -> tuple[Array, Array]:
    """Teacher log-probs at ``ids [..., k]`` and whether the teacher knew each one.

    Dense teachers know every token. For a :class:`TeacherTopK`, ids absent from its list get
    ``fill`` (default ``-inf``) and ``known = False``. The result is stop-gradient; known
    log-probs of ``-inf`` are floored (:func:`~opd_jax.objectives.divergences.floor_log_probs`).
    """
    if isinstance(teacher, TeacherTopK):
        hit = ids[..., :, None] == teacher.ids[..., None, :]  # [..., k, K]
        known = jnp.any(hit, axis=-1)
        sent = floor_log_probs(teacher.logp.astype(jnp.float32))
        logp = jnp.sum(jnp.where(hit, sent[..., None, :], 0.0), -1)
        fill = jnp.full_like(logp, -jnp.inf) if fill is None else fill
        return sg(jnp.where(known, logp, fill)), known
    lq = floor_log_probs(log_probs(sg(teacher), temperature=temperature, where=where))
    return jnp.take_along_axis(lq, ids, axis=-1), jnp.ones(ids.shape, bool)


def student_support(logits, teacher, k, temperature, where):
    """Student log-probs, top-k ids, their log-probs, and the teacher's at those ids."""
    check_teacher(logits, teacher, k)
    lp_V = student_log_probs(logits, temperature=temperature, where=where)
    ids = jax.lax.top_k(sg(lp_V), k)[1]
    lp_k = jnp.take_along_axis(lp_V, ids, axis=-1)
    lq_k, known = teacher_logp_at(ids, teacher, temperature=temperature, where=where,
                                  fill=sg(lp_k))
    return lp_V, ids, lp_k, lq_k, known


def student_topk_teacher_mass(logits: Array, teacher, *, k: int = 16, temperature: float = 1.0,
                              where: Array | None = None) -> Array:
    r"""The teacher's probability mass on the student's top-k, ``sum_{v in S_k} q(v)``, in [0, 1].

    TA-OPD's "token teachability" (compatibility): high where the teacher's preferred tokens
    are among those the student already considers. No gradient. A sparse teacher's tokens it
    did not send count as 0 mass.

    References: TA-OPD, arXiv 2605.26844 (``compat_t``, objectives_2026.md).
    """
    check_teacher(logits, teacher, k)
    lp_V = student_log_probs(sg(logits), temperature=temperature, where=where)
    ids = jax.lax.top_k(lp_V, k)[1]
    lq_k, known = teacher_logp_at(ids, teacher, temperature=temperature, where=where)
    return masked(jnp.sum(jnp.where(known, jnp.exp(lq_k), 0.0), axis=-1), where)


def teacher_topk_forward_kl(logits: Array, teacher, *, k: int = 16, temperature: float = 1.0,
                            where: Array | None = None) -> Array:
    r"""EOPD's forward KL on the teacher's top-k, with the teacher renormalised there.

    .. math::
       \tilde q(v) = \frac{q(v)}{\sum_{u \in K} q(u)}, \qquad
       \ell_t = \sum_{v \in K} \tilde q(v)\,(\log \tilde q(v) - \log p(v))

    ``K`` is the teacher's top-k; ``log p`` is the student's *full-vocabulary* log-prob (not
    renormalised), so ``ell >= 0`` and the gradient is ``p * 1 - q~`` restricted as usual.
    Gradient only through the student.

    Args:
      logits: student logits ``[..., V]``.
      teacher: dense teacher logits ``[..., V]`` or a :class:`TeacherTopK` with at least k entries.
      k: support size (EOPD: 16).
      temperature: divides the student logits (and dense teacher logits).
      where: optional bool ``[...]``.

    Returns:
      float32 ``[...]``.

    References: Jin et al., EOPD, arXiv 2603.07079 (top-k form per the re-implementations
    cited in objectives.md §3).
    """
    check_teacher(logits, teacher, k)
    ids, lq_k = teacher_support(teacher, k, temperature=temperature, where=where)
    lqn_k = lq_k - jax.nn.logsumexp(lq_k, axis=-1, keepdims=True)
    lp_k = jnp.take_along_axis(student_log_probs(logits, temperature=temperature, where=where),
                               ids, -1)
    return masked(jnp.sum(kl_terms(lqn_k, lp_k), axis=-1), where)


def student_topk_reverse_kl(logits: Array, teacher, *, k: int = 16, temperature: float = 1.0,
                            where: Array | None = None) -> Array:
    r"""Reverse KL truncated to the student's top-k, without renormalising.

    .. math:: K_t = \sum_{v \in S_k} p(v)\,(\log p(v) - \log q(v))

    Its gradient is biased: it contains ``grad sum_{S_k} p``, which pushes the student's mass
    out of its own top-k into the tail (Many Faces §; the exact full-vocabulary term vanishes).
    Prefer :func:`student_topk_reverse_kl_sg` or the tail-corrected form for training.

    References: Zhu et al., "The Many Faces of OPD", arXiv 2605.11182 (``topk_reverse_kl_notail``).
    """
    lp_V, ids, lp_k, lq_k, _ = student_support(logits, teacher, k, temperature, where)
    return masked(jnp.sum(kl_terms(lp_k, lq_k), axis=-1), where)


def student_topk_reverse_kl_sg(logits: Array, teacher, *, k: int = 16,
                               temperature: float = 1.0, where: Array | None = None) -> Array:
    r"""The stop-gradient top-k reverse KL of Many Faces.

    .. math:: K^{sg}_t = \sum_{v \in S_k} p(v)\,(\mathrm{sg}(\log p(v)) - \log q(v))

    Same value as :func:`student_topk_reverse_kl`; the gradient flows only through the weights
    ``p(v)``, which removes the top-k-mass term, so that
    ``dK/dz_j = 1[j in S_k] p_j r_j - p_j sum_{v in S_k} p_v r_v`` with ``r = log p - log q``:
    exactly the full-vocabulary reverse-KL gradient restricted to ``S_k``.

    References: Many Faces, arXiv 2605.11182 (``topk_reverse_kl_notail_sg``; the code, not the
    CLI help text, is followed).
    """
    lp_V, ids, lp_k, lq_k, _ = student_support(logits, teacher, k, temperature, where)
    return masked(jnp.sum(kl_terms(lp_k, lq_k, stop_gradient_log=True), axis=-1), where)


def student_topk_reverse_kl_tail(logits: Array, teacher, *, k: int = 16,
                                 temperature: float = 1.0, eps: float = 1e-8,
                                 where: Array | None = None) -> Array:
    r"""Top-k reverse KL plus a tail bucket holding the rest of each distribution's mass.

    .. math::
       K_t + \bar p \log(\bar p / \bar q), \quad
       \bar p = 1 - \textstyle\sum_{S_k} p, \ \bar q = 1 - \sum_{S_k} q

    (both clamped at ``eps``). This is the KL between the two distributions coarsened to
    ``S_k ∪ {tail}``, so it is ``>= 0`` and ``<=`` the full reverse KL.

    References: Many Faces ``full_vocab_topk_reverse_kl``; TRL ``loss_add_tail``.
    """
    lp_V, ids, lp_k, lq_k, _ = student_support(logits, teacher, k, temperature, where)
    head = jnp.sum(kl_terms(lp_k, lq_k), axis=-1)
    p_tail = jnp.maximum(1.0 - jnp.sum(jnp.exp(lp_k), axis=-1), eps)
    q_tail = jnp.maximum(1.0 - jnp.sum(jnp.exp(lq_k), axis=-1), eps)
    return masked(head + p_tail * (jnp.log(p_tail) - jnp.log(q_tail)), where)


def student_topk_renormalized_reverse_kl(logits: Array, teacher, *, k: int = 16,
                                         temperature: float = 1.0, stop_gradient_logp=False,
                                         where: Array | None = None) -> Array:
    r"""Reverse KL between student and teacher both renormalised on the student's top-k.

    .. math:: \sum_{v \in S_k} \tilde p(v) (\log \tilde p(v) - \log \tilde q(v))

    vOPD uses it (no gradient) as its top-k baseline and as its "top-k OPD" loss; with
    ``stop_gradient_logp=True`` the ``log p~`` inside the sum is stop-gradient.
    For a sparse teacher, student tokens it did not send take ``q~ = p~`` (they add 0) and the
    tokens it sent share the remaining mass ``1 - sum_missing p~`` in proportion to ``q``.

    References: Oh et al., vOPD, arXiv 2605.07865 (``kl_top_k``).
    """
    lp_V, ids, lp_k, lq_k, known = student_support(logits, teacher, k, temperature, where)
    lpn = lp_k - jax.nn.logsumexp(lp_k, axis=-1, keepdims=True)
    # Missing tokens (sparse teacher) take q~ = p~; the known ones share the rest of the mass in
    # proportion to q. With a dense teacher every token is known and this is plain renormalising.
    missing_mass = sg(jnp.sum(jnp.where(known, 0.0, jnp.exp(lpn)), axis=-1, keepdims=True))
    lq_known = jnp.where(known, lq_k, -1e30)
    lqn_known = (lq_known - jax.nn.logsumexp(lq_known, axis=-1, keepdims=True)
                 + jnp.log(jnp.maximum(1.0 - missing_mass, 1e-30)))
    lqn = jnp.where(known, lqn_known, sg(lpn))
    return masked(jnp.sum(kl_terms(lpn, lqn, stop_gradient_log=stop_gradient_logp), axis=-1),
                  where)


def membership(ids_s: Array, ids_t: Array) -> Array:
    """For each of the first set's ids ``[..., k]``: is it in the second set ``[..., k2]``?"""
    return jnp.any(ids_s[..., :, None] == ids_t[..., None, :], axis=-1)


def intersect_topk_reverse_kl(logits: Array, teacher, *, k: int = 16, temperature: float = 1.0,
                              where: Array | None = None) -> Array:
    r"""Reverse KL on the intersection of the two top-k sets, both renormalised there.

    .. math::
       I = S_k \cap T_k,\quad \tilde p = p / Z_S,\ \tilde q = q / Z_T \text{ on } I,\quad
       \ell_t = \sum_{v \in I} \tilde p(v)\,(\mathrm{sg}(\log \tilde p(v)) - \log \tilde q(v))

    and 0 where ``I`` is empty. ``log p~`` is stop-gradient, as in the Many Faces code.

    References: Many Faces ``topk_reverse_kl_intersect_sg_norm``.
    """
    lp_V, ids, lp_k, lq_k, known = student_support(logits, teacher, k, temperature, where)
    t_ids, _ = teacher_support(teacher, k, temperature=temperature, where=where)
    inside = membership(ids, t_ids) & known
    neg = jnp.float32(-1e30)  # finite stand-in for -inf keeps the gradients of empty rows finite
    lp_i = jnp.where(inside, lp_k, neg)
    lq_i = jnp.where(inside, lq_k, neg)
    lpn = lp_i - jax.nn.logsumexp(lp_i, axis=-1, keepdims=True)
    lqn = lq_i - jax.nn.logsumexp(lq_i, axis=-1, keepdims=True)
    terms = jnp.where(inside, jnp.exp(lpn) * (sg(lpn) - lqn), 0.0)
    return masked(jnp.sum(terms, axis=-1), where)


def teacher_topk_generalized_jsd(logits: Array, teacher, *, k: int = 50, beta: float = 0.5,
                                 temperature: float = 1.0, where: Array | None = None) -> Array:
    r"""Generalized JSD on the teacher's top-k, both distributions renormalised there (OPSD ``top_k_loss``).

    The teacher's top-k ids are chosen; student and teacher log-probs at those ids are each
    renormalised over the k entries; :func:`~opd_jax.objectives.divergences.generalized_jsd`
    (TRL's convention) is taken between the two k-way distributions.

    References: Zhao et al., OPSD, arXiv 2601.18734 (official code ``top_k_loss``).
    """
    check_teacher(logits, teacher, k)
    ids, lq_k = teacher_support(teacher, k, temperature=temperature, where=where)
    lp_k = jnp.take_along_axis(student_log_probs(logits, temperature=temperature, where=where),
                               ids, -1)
    return masked(generalized_jsd(lp_k, lq_k, beta=beta), where)
