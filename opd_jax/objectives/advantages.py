"""Per-token advantages for sampled-token OPD, and the ways papers reshape them.

All functions take and return per-token arrays ``[B, T]`` (any matching shape; sequence
functions use the last axis as time). An advantage is *data*: every function here returns a
stop-gradient value, so the only gradient path is the surrogate's ratio
(:mod:`opd_jax.objectives.surrogates`).

The OPD identity (objectives.md §0): at a fixed prefix,
``E_{y~p}[-sg(log q(y) - log p(y)) grad log p(y)] = grad KL(p || q)``, so the sampled-token
policy gradient with advantage ``r_t`` is an unbiased estimate of the reverse-KL gradient.
"""

from typing import Literal

import jax
import jax.numpy as jnp

from opd_jax.objectives import _checks

Array = jax.Array
sg = jax.lax.stop_gradient


def _zero_masked(x: Array, where: Array | None) -> Array:
    return x if where is None else jnp.where(where, x, 0.0)


def opd_advantage(teacher_logp: Array, logp: Array, *, coef: float = 1.0,
                  where: Array | None = None) -> Array:
    r"""Sampled-token OPD advantage ``A_t = coef * sg(log q(y_t) - log p(y_t))``.

    Pass the *behaviour* log-probs recorded by the sampler as ``logp`` for the Thinking
    Machines / Tinker form (``-c * k_t``), or the learner's recomputed log-probs for the
    verl / REOPOLD form; on-policy at step 0 they agree.

    References: Lu & Thinking Machines (2025), tinker-cookbook ``kl_penalty_coef``.
    """
    _checks.check_same_shape(teacher_logp=teacher_logp, logp=logp, where=where)
    adv = coef * (teacher_logp.astype(jnp.float32) - logp.astype(jnp.float32))
    return sg(_zero_masked(adv, where))


def discounted_future_sum(values: Array, mask: Array, *, gamma: float) -> Array:
    r"""``A_t = sum_{j >= 0} gamma^j m_{t+j} x_{t+j}`` along the last axis (a reverse scan).

    ``gamma = 0`` returns ``m * x``. Example: ``[1, 2, 3]`` with ``gamma = 0.5`` gives
    ``[2.75, 3.5, 3.0]``. Masked steps contribute nothing but the discount still counts them.

    References: tinker-cookbook ``kl_discount_factor``.
    """
    _checks.check_same_shape(values=values, mask=mask)
    if _checks.is_concrete(gamma) and not 0.0 <= float(gamma) <= 1.0:
        raise ValueError(f"gamma must lie in [0, 1], got {gamma}.")
    x = jnp.where(mask, values.astype(jnp.float32), 0.0)

    def step(carry, x_t):
        carry = x_t + gamma * carry
        return carry, carry

    xs = jnp.moveaxis(x, -1, 0)
    _, out = jax.lax.scan(step, jnp.zeros(xs.shape[1:], jnp.float32), xs, reverse=True)
    return sg(jnp.where(mask, jnp.moveaxis(out, 0, -1), 0.0))


def vopd_advantage(teacher_logp: Array, logp: Array, baseline_kl: Array, *,
                   where: Array | None = None) -> Array:
    r"""vOPD's advantage with the closed-form value baseline: ``sg(r_t + KL(p_t || q_t))``.

    The value of OPD at a prefix is ``V(s_t) = -KL(p_t || q_t)``; subtracting it leaves the
    expected gradient unchanged (it depends only on the prefix) and lowers the variance.
    ``baseline_kl`` is the full-vocabulary reverse KL, or the top-k renormalised one.

    References: Oh et al., vOPD, arXiv 2605.07865.
    """
    _checks.check_same_shape(teacher_logp=teacher_logp, logp=logp, baseline_kl=baseline_kl,
                             where=where)
    adv = teacher_logp - logp + baseline_kl
    return sg(_zero_masked(adv.astype(jnp.float32), where))


def mixture_clip_floor(lam: float, *,
                       reading: Literal["log_odds", "log_over"] = "log_odds") -> float:
    r"""REOPOLD's reward floor ``F(lambda)``; the paper's exact form is unresolved (objectives.md §5).

    - ``"log_odds"`` (default, reading A): ``log(lambda / (1 - lambda))``; lambda = 0.2 → -1.3863.
      It is the lower asymptote of the mixture log-ratio
      ``log[((1-λ) q + λ p) / ((1-λ) p + λ q)]`` as ``q/p -> 0``.
    - ``"log_over"`` (reading B, vOPD's re-implementation): ``log(lambda) / (1 - lambda)``;
      lambda = 0.2 → -2.0118.
    """
    if not 0.0 < float(lam) < 1.0:
        raise ValueError(f"lambda must lie in (0, 1), got {lam}.")
    lam = float(lam)
    if reading == "log_odds":
        return float(jnp.log(lam / (1.0 - lam)))
    if reading == "log_over":
        return float(jnp.log(lam) / (1.0 - lam))
    raise ValueError(f"reading must be 'log_odds' or 'log_over', got {reading!r}.")


def clip_below(advantage: Array, floor, *, where: Array | None = None) -> Array:
    r"""``max(sg(A), floor)``: REOPOLD's mixture-based reward clipping of the heavy negative tail."""
    return sg(_zero_masked(jnp.maximum(advantage.astype(jnp.float32), floor), where))


def clip(advantage: Array, low=None, high=None, *, where: Array | None = None) -> Array:
    """Clip an advantage to ``[low, high]`` (either may be None), stop-gradient."""
    return sg(_zero_masked(jnp.clip(advantage.astype(jnp.float32), low, high), where))


def positive_part(advantage: Array) -> Array:
    """``1[A > 0]`` as float32: AOPD's positive-advantage set (``A = 0`` goes to the negative side)."""
    return sg((advantage > 0).astype(jnp.float32))


def scale_by_sign(advantage: Array, *, pos: float = 1.0, neg: float = 1.0) -> Array:
    """Scale positive and non-positive advantages separately: ``pos * A`` if A > 0 else ``neg * A``."""
    return sg(jnp.where(advantage > 0, pos * advantage, neg * advantage))
