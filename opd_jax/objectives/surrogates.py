"""Surrogates: turn a (stop-gradient) advantage into a per-token loss whose gradient is the
policy gradient.

With ``rho_t = exp(log pi_theta(y_t) - sg(log mu(y_t)))`` (``mu`` = the behaviour policy the
token was sampled from), ``grad rho_t = rho_t grad log pi_theta(y_t)``; on-policy ``rho = 1``
in value. Minimising ``-sg(A_t) rho_t`` therefore follows ``A_t grad log pi(y_t)``.
"""

import jax
import jax.numpy as jnp

from opd_jax.objectives import _checks

Array = jax.Array
sg = jax.lax.stop_gradient


def importance_ratio(logp: Array, behavior_logp: Array) -> Array:
    """``rho_t = exp(logp - sg(behavior_logp))``; the gradient flows through ``logp`` only."""
    _checks.check_same_shape(logp=logp, behavior_logp=behavior_logp)
    return jnp.exp(logp.astype(jnp.float32) - sg(behavior_logp.astype(jnp.float32)))


def importance_sampling_loss(logp: Array, behavior_logp: Array, advantage: Array, *,
                             max_ratio: float | None = None, where: Array | None = None) -> Array:
    r"""``l_t = -sg(A_t) * rho_t`` (Tinker's ``importance_sampling`` loss), per token.

    ``max_ratio`` optionally truncates the ratio's *value* from above (the gradient is kept
    where it is not truncated), a common guard for off-policy updates.
    """
    _checks.check_same_shape(logp=logp, behavior_logp=behavior_logp, advantage=advantage,
                             where=where)
    if where is not None:  # masked -inf log-probs must not reach exp (NaN gradients)
        logp, behavior_logp = jnp.where(where, logp, 0.0), jnp.where(where, behavior_logp, 0.0)
    rho = importance_ratio(logp, behavior_logp)
    if max_ratio is not None:
        rho = jnp.minimum(rho, max_ratio)
    loss = -sg(advantage.astype(jnp.float32)) * rho
    return loss if where is None else jnp.where(where, loss, 0.0)


def ppo_clip_loss(logp: Array, behavior_logp: Array, advantage: Array, *, eps: float = 0.2,
                  eps_high: float | None = None, where: Array | None = None) -> Array:
    r"""PPO's clipped surrogate per token: ``max(-rho A, -clip(rho, 1-eps, 1+eps_high) A)``.

    ``eps_high`` defaults to ``eps`` (set it larger for DAPO-style asymmetric clipping).
    On-policy (rho = 1) its gradient equals :func:`importance_sampling_loss`'s.
    """
    _checks.check_same_shape(logp=logp, behavior_logp=behavior_logp, advantage=advantage,
                             where=where)
    if _checks.is_concrete(eps) and not float(eps) >= 0:
        raise ValueError(f"eps must be >= 0, got {eps}.")
    eps_high = eps if eps_high is None else eps_high
    if where is not None:
        logp, behavior_logp = jnp.where(where, logp, 0.0), jnp.where(where, behavior_logp, 0.0)
    adv = sg(advantage.astype(jnp.float32))
    rho = importance_ratio(logp, behavior_logp)
    loss = jnp.maximum(-rho * adv, -jnp.clip(rho, 1.0 - eps, 1.0 + eps_high) * adv)
    return loss if where is None else jnp.where(where, loss, 0.0)


def sign_split_loss(pg_loss: Array, local_divergence: Array, advantage: Array, *,
                    alpha: float = 1.0, where: Array | None = None) -> Array:
    r"""AOPD's asymmetric split: the PG loss where ``A > 0``, ``alpha * D_local`` elsewhere.

    .. math:: \ell_t = 1[A_t > 0]\,\ell^{PG}_t + (1 - 1[A_t > 0])\,\alpha\,D_{loc,t}

    ``D_local`` is a distribution-level divergence at the same position (e.g. the full reverse
    KL, or a top-k one); it is bounded, non-zero where ``A ~ 0``, and says where to move mass
    rather than only pushing the sampled token down. The exact AOPD loss is not public; this is
    the reconstruction of objectives.md §4, every choice a parameter.

    References: Jia et al., AOPD, arXiv 2605.06387 (abstract).
    """
    _checks.check_same_shape(pg_loss=pg_loss, local_divergence=local_divergence,
                             advantage=advantage, where=where)
    pos = sg(advantage > 0)
    loss = jnp.where(pos, pg_loss, alpha * local_divergence)
    return loss if where is None else jnp.where(where, loss, 0.0)
