"""Token-level diagnostics, computed inside the jitted step.

:func:`diagnostic_features` adds per-token quantities to the vocabulary phase (under names
``diag/...``); :func:`diagnostic_metrics` reduces them, with the sampled-token log-probs, to
scalars. Together they log, on the same batch:

- both entropies and their gap (absolute and signed teacher − student);
- top-1 agreement;
- Rethinking-OPD's top-k overlap ratio ``|S_k ∩ T_k| / k``, the overlap mass of each model
  (averaged over positions whose overlap is non-empty) and the overlap-token advantage
  (mean of ``A(v) = w(v)(log q(v) - log p(v))`` over overlap tokens, ``w`` = student probs
  renormalised on ``S_k``, as in the thunlp code);
- the exact reverse KL next to its sampled-token estimates (k1, k3) and its top-k estimates
  (plain and with a tail bucket), so the estimators' bias is visible.

References: Li et al., "Rethinking OPD", arXiv 2604.13016 (overlap metrics; entropy gap after
third-party diagnostics); verl ``overlap_ratio``.
"""

import jax
import jax.numpy as jnp

from opd_jax.objectives import divergences as D
from opd_jax.objectives import topk as K
from opd_jax.objectives.base import TEACHER, TEACHER_LOGITS, Feature, TokenCtx, feature
from opd_jax.objectives.reductions import masked_mean

Array = jax.Array
sg = jax.lax.stop_gradient


def _overlap_sets(logits, teacher, k, temperature):
    lp_V = K.student_log_probs(sg(logits), temperature=temperature)
    s_lp, s_ids = jax.lax.top_k(lp_V, k)
    t_ids, _ = K.teacher_support(teacher, k, temperature=temperature)
    inside = K.membership(s_ids, t_ids)
    lq_k, known = K.teacher_logp_at(s_ids, teacher, temperature=temperature, fill=s_lp)
    return lp_V, s_lp, s_ids, inside & known, lq_k


def overlap_ratio(logits, teacher, *, k=16, temperature=1.0):
    """``|S_k ∩ T_k| / k`` per position."""
    *_, inside, _ = _overlap_sets(logits, teacher, k, temperature)
    return jnp.mean(inside.astype(jnp.float32), axis=-1)


def overlap_mass_student(logits, teacher, *, k=16, temperature=1.0):
    """Student probability mass on ``S_k ∩ T_k``."""
    _, s_lp, _, inside, _ = _overlap_sets(logits, teacher, k, temperature)
    return jnp.sum(jnp.where(inside, jnp.exp(s_lp), 0.0), axis=-1)


def overlap_mass_teacher(logits, teacher, *, k=16, temperature=1.0):
    """Teacher probability mass on ``S_k ∩ T_k``."""
    *_, inside, lq_k = _overlap_sets(logits, teacher, k, temperature)
    return jnp.sum(jnp.where(inside, jnp.exp(lq_k), 0.0), axis=-1)


def overlap_advantage_sum(logits, teacher, *, k=16, temperature=1.0):
    """Sum over overlap tokens of ``w(v)(log q(v) - log p(v))``, ``w`` renormalised on ``S_k``."""
    _, s_lp, _, inside, lq_k = _overlap_sets(logits, teacher, k, temperature)
    w = jax.nn.softmax(s_lp, axis=-1)
    return jnp.sum(jnp.where(inside, w * (lq_k - s_lp), 0.0), axis=-1)


def overlap_count(logits, teacher, *, k=16, temperature=1.0):
    *_, inside, _ = _overlap_sets(logits, teacher, k, temperature)
    return jnp.sum(inside.astype(jnp.float32), axis=-1)


def top1_agreement(logits, teacher_logits):
    """1 where the student's and teacher's most likely tokens coincide."""
    return (jnp.argmax(logits, -1) == jnp.argmax(teacher_logits, -1)).astype(jnp.float32)


def _student_entropy(logits, *, temperature=1.0):
    return D.token_entropy(sg(logits), temperature=temperature)


def diagnostic_features(*, k: int = 16, temperature: float = 1.0,
                        dense_teacher: bool = True) -> dict[str, Feature]:
    """The per-token diagnostic features (no gradient). With ``dense_teacher=False`` only those a
    sparse teacher can feed (student entropy, overlap) are included."""
    f = {
        "diag/student_entropy": feature(_student_entropy, "logits", temperature=temperature),
        "diag/overlap_ratio": feature(overlap_ratio, "logits", TEACHER, k=k,
                                      temperature=temperature),
        "diag/overlap_count": feature(overlap_count, "logits", TEACHER, k=k,
                                      temperature=temperature),
        "diag/overlap_mass_student": feature(overlap_mass_student, "logits", TEACHER, k=k,
                                             temperature=temperature),
        "diag/overlap_mass_teacher": feature(overlap_mass_teacher, "logits", TEACHER, k=k,
                                             temperature=temperature),
        "diag/overlap_adv_sum": feature(overlap_advantage_sum, "logits", TEACHER, k=k,
                                        temperature=temperature),
    }
    if dense_teacher:
        f.update({
            "diag/teacher_entropy": feature(D.token_entropy, TEACHER_LOGITS,
                                            temperature=temperature),
            "diag/top1_agree": feature(top1_agreement, "logits", TEACHER_LOGITS),
            "diag/reverse_kl": feature(_sg_pair(D.reverse_kl), "logits", TEACHER_LOGITS,
                                       temperature=temperature),
            "diag/topk_reverse_kl": feature(_sg_pair(K.student_topk_reverse_kl), "logits",
                                            TEACHER_LOGITS, k=k, temperature=temperature),
            "diag/topk_reverse_kl_tail": feature(_sg_pair(K.student_topk_reverse_kl_tail),
                                                 "logits", TEACHER_LOGITS, k=k,
                                                 temperature=temperature),
        })
    return f


_SG_CACHE: dict = {}


def _sg_pair(fn):
    """``fn`` applied to stop-gradient student logits (one wrapper per fn, so features compare equal)."""
    if fn not in _SG_CACHE:
        def wrapped(logits, *args, **kwargs):
            return fn(sg(logits), *args, **kwargs)
        wrapped.__name__ = f"sg_{fn.__name__}"
        _SG_CACHE[fn] = wrapped
    return _SG_CACHE[fn]


def diagnostic_metrics(ctx: TokenCtx) -> dict[str, Array]:
    """Scalars from the ``diag/`` features present in ``ctx`` (and ``logp``/``teacher_logp``)."""
    m = ctx.mask.astype(bool)
    f = ctx.features
    out = {}
    for name in ("student_entropy", "teacher_entropy", "top1_agree", "overlap_ratio",
                 "reverse_kl", "topk_reverse_kl", "topk_reverse_kl_tail"):
        if f"diag/{name}" in f:
            out[f"diag/{name}"] = masked_mean(f[f"diag/{name}"], m)
    if "diag/teacher_entropy" in f:
        gap = f["diag/teacher_entropy"] - f["diag/student_entropy"]
        out["diag/entropy_gap_abs"] = masked_mean(jnp.abs(gap), m)
        out["diag/entropy_gap_signed"] = masked_mean(gap, m)
    if "diag/overlap_count" in f:
        some = m & (f["diag/overlap_count"] > 0)
        out["diag/overlap_mass_student"] = masked_mean(f["diag/overlap_mass_student"], some)
        out["diag/overlap_mass_teacher"] = masked_mean(f["diag/overlap_mass_teacher"], some)
        out["diag/overlap_advantage"] = (
            jnp.sum(jnp.where(m, f["diag/overlap_adv_sum"], 0.0))
            / jnp.maximum(jnp.sum(jnp.where(m, f["diag/overlap_count"], 0.0)), 1.0))
    if "logp" in ctx and "teacher_logp" in ctx:
        u = sg(ctx.teacher_logp - ctx.logp)
        out["diag/sampled_kl_k1"] = masked_mean(-u, m)
        out["diag/sampled_kl_k3"] = masked_mean(jnp.expm1(u) - u, m)
    out["diag/tokens"] = jnp.sum(m.astype(jnp.float32))
    return out
