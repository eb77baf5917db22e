"""Self-distillation pieces (UniSD, OPSD): clipping, multi-teacher agreement, contrastive
hinge and hidden-state matching. Per-token arrays are ``[B, T]``; auxiliary teachers stack
on a trailing axis ``[B, T, K]`` (so that every per-token input starts with ``[B, T]``).

References: Jin et al., UniSD, arXiv 2605.06597 (official code Ahren09/UniSD, objectives.md §6).
"""

from typing import Literal

import jax
import jax.numpy as jnp

from opd_jax.objectives import _checks
from opd_jax.objectives.selection import masked_quantile

Array = jax.Array
sg = jax.lax.stop_gradient


def clip_divergence(values: Array, *, max_value) -> Array:
    r"""UniSD's static divergence clipping ``min(l_t, c)`` (c = 10 by default in its clip mode).

    Where the clip is active the token's gradient is zero.
    """
    return jnp.minimum(values, max_value)


def quantile_clip_divergence(values: Array, mask: Array, *, q: float = 0.99) -> Array:
    r"""UniSD's adaptive clipping ``min(l_t, c)``, ``c = sg(quantile_q({l_t : valid}))``."""
    return jnp.minimum(values, masked_quantile(values, mask, q))


def _disagreement(aux_logp: Array, mode: str) -> Array:
    """Disagreement across the last (teacher) axis."""
    if mode == "var":
        return jnp.var(aux_logp, axis=-1)
    if mode == "range":
        return jnp.max(aux_logp, axis=-1) - jnp.min(aux_logp, axis=-1)
    raise ValueError(f"mode must be 'var' or 'range', got {mode!r}.")


def _check_aux(aux_teacher_logp: Array, mask: Array) -> None:
    if aux_teacher_logp.ndim != mask.ndim + 1 or aux_teacher_logp.shape[:-1] != mask.shape:
        raise ValueError(f"aux_teacher_logp must be [*mask.shape, K], got {aux_teacher_logp.shape} "
                         f"for mask {mask.shape}.")
    if aux_teacher_logp.shape[-1] < 2:
        raise ValueError("agreement weights need at least K = 2 auxiliary teachers, got "
                         f"{aux_teacher_logp.shape[-1]}.")


def token_agreement_weights(aux_teacher_logp: Array, mask: Array, *, gamma: float = 1.0,
                            q: float = 0.95, mode: Literal["var", "range"] = "var") -> Array:
    r"""UniSD's token-level multi-teacher agreement weights.

    With ``a^(k)_t`` the log-prob of the sampled token under auxiliary teacher k:

    .. math::
       d_t = \mathrm{Var}_k\, a^{(k)}_t,\quad s = \max(\mathrm{quantile}_q(d), 10^{-6}),\quad
       w_t = \max\!\left(\frac{1}{1 + \gamma \min(d_t / s, 10)},\ 0.01\right)

    Use with :func:`opd_jax.objectives.reductions.seq_mean_weighted_mean`.

    Args:
      aux_teacher_logp: ``[B, T, K]``, K >= 2 auxiliary teacher contexts.
      mask: bool ``[B, T]``.
    """
    _check_aux(aux_teacher_logp, mask)
    d = _disagreement(sg(aux_teacher_logp.astype(jnp.float32)), mode)
    scale = jnp.maximum(masked_quantile(d, mask, q), 1e-6)
    w = jnp.maximum(1.0 / (1.0 + gamma * jnp.minimum(d / scale, 10.0)), 0.01)
    return sg(jnp.where(mask, w, 0.0))


def sequence_agreement_weights(aux_teacher_logp: Array, mask: Array, *, gamma: float = 1.0,
                               mode: Literal["var", "range"] = "var") -> Array:
    r"""UniSD's sequence-level agreement: one weight ``max(exp(-gamma d), 1e-6)`` per sequence.

    ``d`` is the (population) variance (or range) over teachers of each teacher's mean
    sampled-token log-prob over the sequence's valid tokens; the weight is broadcast to
    ``[B, T]``.
    """
    _check_aux(aux_teacher_logp, mask)
    a = sg(aux_teacher_logp.astype(jnp.float32))
    m = mask.astype(jnp.float32)[..., None]
    per_seq = jnp.sum(a * m, axis=-2) / jnp.maximum(jnp.sum(m, axis=-2), 1.0)  # [B, K]
    w = jnp.maximum(jnp.exp(-gamma * _disagreement(per_seq, mode)), 1e-6)  # [B]
    return sg(jnp.where(mask, w[..., None], 0.0))


def contrastive_hinge(logp: Array, good_teacher_logp: Array, bad_teacher_logp: Array, *,
                      margin: float = 0.5, where: Array | None = None) -> Array:
    r"""UniSD's token contrastive hinge: be nearer the good teacher than the bad one by a margin.

    .. math:: c_t = \mathrm{relu}(m + |l^S_t - l^{T+}_t| - |l^S_t - l^{T-}_t|)

    on sampled-token log-probs; the bad teacher sees a negative demonstration. Gradient only
    through the student's ``logp``.
    """
    _checks.check_same_shape(logp=logp, good=good_teacher_logp, bad=bad_teacher_logp, where=where)
    c = jax.nn.relu(margin + jnp.abs(logp - sg(good_teacher_logp))
                    - jnp.abs(logp - sg(bad_teacher_logp)))
    return c if where is None else jnp.where(where, c, 0.0)


def hidden_state_matching(hidden: Array, teacher_hidden: Array, *,
                          where: Array | None = None) -> Array:
    r"""Mean squared distance of final hidden states, ``mean_d (h^S_t - sg(h^T_t))^2``, ``[B, T]``."""
    if hidden.shape != teacher_hidden.shape:
        raise ValueError(f"hidden {hidden.shape} and teacher_hidden {teacher_hidden.shape} differ; "
                         "hidden-state matching needs the same width (project one side first).")
    d = jnp.mean(jnp.square(hidden.astype(jnp.float32) - sg(teacher_hidden.astype(jnp.float32))),
                 axis=-1)
    return d if where is None else jnp.where(where, d, 0.0)
