"""Per-token advantages for sampled-token OPD, and the ways papers reshape them.

All functions take and return per-token arrays ``[B, T]`` (any matching shape; sequence
functions use the last axis as time). An advantage is *data*: every function here returns a
stop-gradient value, so the only gradient path is the surrogate's ratio
(:mod:`opd_jax.objectives.surrogates`).

The OPD identity (objectives.md §0): at a fixed prefix,
``E_{y~p}[-sg(log q(y) - log p(y)) grad log p(y)] = grad KL(p || q)``, so the sampled-token
policy gradient with advantage ``r_t`` is an unbiased estimate of the reverse-KL gradient.
"""

import math
from typing import Literal

import jax
import jax.numpy as jnp

from opd_jax.objectives import _checks
from opd_jax.objectives.divergences import floor_log_probs

Array = jax.Array
sg = jax.lax.stop_gradient


def _zero_masked(x: Array, where: Array | None) -> Array:
    return x if where is None else jnp.where(where, x, 0.0)


def opd_advantage(teacher_logp: Array, logp: Array, *, coef: float = 1.0,
                  where: Array | None = None) -> Array:
    r"""Sampled-token OPD advantage ``A_t = coef * sg(log q(y_t) - log p(y_t))``.

    Pass the *behaviour* log-probs recorded by the sampler as ``logp`` for the Thinking
    Machines / Tinker form (``-c * k_t``), or the learner's recomputed log-probs for the
    verl / REOPOLD form; on-policy at step 0 they agree. A ``-inf`` log-prob (a teacher that
    forbids the sampled token) reads as ``LOG_FLOOR`` (:mod:`~opd_jax.objectives.divergences`),
    so the advantage stays finite.

    References: Lu & Thinking Machines (2025), tinker-cookbook ``kl_penalty_coef``.
    """
    _checks.check_same_shape(teacher_logp=teacher_logp, logp=logp, where=where)
    lq, lp = _finite(teacher_logp, where), _finite(logp, where)
    return sg(_zero_masked(coef * (lq - lp), where))


def _finite(logp: Array, where: Array | None) -> Array:
    """Float32, masked positions zeroed before use, ``-inf`` floored."""
    return floor_log_probs(_zero_masked(logp.astype(jnp.float32), where))


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
                   reward_floor: float | None = None, where: Array | None = None) -> Array:
    r"""vOPD's advantage with the closed-form value baseline: ``sg(r_t + KL(p_t || q_t))``.

    The value of OPD at a prefix is ``V(s_t) = -KL(p_t || q_t)``; subtracting it leaves the
    expected gradient unchanged (it depends only on the prefix) and lowers the variance.
    ``baseline_kl`` is the full-vocabulary reverse KL, or the top-k renormalised one.
    ``reward_floor`` applies vOPD's optional reward clipping first,
    ``r_t <- max(r_t, reward_floor)`` (its code uses ``log(lambda) / (1 - lambda)``, see
    :func:`mixture_clip_floor` ``reading="log_over"``).

    References: Oh et al., vOPD, arXiv 2605.07865 (``reward_clip_lambda``).
    """
    _checks.check_same_shape(teacher_logp=teacher_logp, logp=logp, baseline_kl=baseline_kl,
                             where=where)
    r = _finite(teacher_logp, where) - _finite(logp, where)
    if reward_floor is not None:
        r = jnp.maximum(r, reward_floor)
    adv = r + _zero_masked(baseline_kl.astype(jnp.float32), where)
    return sg(_zero_masked(adv, where))


_MAX_EXPONENT = 80.0  # power_advantage's overflow guard: e^80 / |alpha| is finite in float32


def power_advantage(teacher_logp: Array, logp: Array, *, alpha: float, clip: float | None = None,
                    where: Array | None = None) -> Array:
    r"""PowerOPD's Box-Cox reward in place of the log-ratio: ``sg(((q/mu)^alpha - 1) / alpha)``.

    .. math::
       A_t = \frac{(q(y_t)/\mu(y_t))^\alpha - 1}{\alpha}
           = \frac{\operatorname{expm1}(\alpha\,(\log q(y_t) - \log \mu(y_t)))}{\alpha}

    ``alpha = 0`` is the limit, the log-ratio ``log q - log mu`` itself (:func:`opd_advantage`),
    returned exactly; ``expm1`` keeps small ``alpha`` accurate (no ``1 - 1`` cancellation). For
    ``alpha > 0`` the reward is bounded below by ``-1/alpha`` (the log-ratio's heavy negative
    tail where the teacher rejects a token is tamed), for ``alpha < 0`` bounded above by
    ``-1/alpha``. It is increasing in the log-ratio for every alpha, so the sign of each token's
    advantage is OPD's. ``clip`` (if set) then clips it to ``[-clip, clip]``. The exponent is
    capped at 80 against float32 overflow (reached only for ``|alpha| > 0.9``: the log-ratio is at
    most ``-LOG_FLOOR`` = 87.3). ``-inf`` log-probs read as ``LOG_FLOOR``; stop-gradient; 0 where
    ``where`` is False.

    Pass the behaviour log-probs as ``logp`` (Tinker's OPD form, ``mu``), or the learner's.

    References: PowerOPD, arXiv 2606.17199 (abstract: the Box-Cox transform of the ratio; which
    ratio and the clip are this library's reading, a reconstruction).
    """
    _checks.check_same_shape(teacher_logp=teacher_logp, logp=logp, where=where)
    if _checks.is_concrete(alpha) and not math.isfinite(float(alpha)):
        raise ValueError(f"alpha must be finite, got {alpha}.")
    r = _finite(teacher_logp, where) - _finite(logp, where)
    alpha = jnp.asarray(alpha, jnp.float32)
    x = alpha * r
    box_cox = jnp.expm1(jnp.minimum(x, _MAX_EXPONENT)) / jnp.where(alpha == 0, 1.0, alpha)
    adv = jnp.where(x == 0, r, box_cox)  # alpha = 0 (or r = 0): the log-ratio itself
    if clip is not None:
        adv = jnp.clip(adv, -clip, clip)
    return sg(_zero_masked(adv, where))


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


def iw_opd_weights(advantage: Array, mask: Array, *, gamma: float = 0.5,
                   eps: float = 1e-8) -> Array:
    r"""IW-OPD's position weights: a sequence's early tokens count up to ``1 + gamma`` times.

    .. math::
       w_t = 1 + \gamma \Big(1 - \frac{\sum_{s<t} m_s |a_s|}{\max(\epsilon, \sum_s m_s |a_s|)}\Big)

    along the last (time) axis: 1 + gamma at the first token, falling as the sequence's
    absolute advantage accumulates, down to ``1 + gamma |a_T| / sum |a|`` at the last.
    Stop-gradient; 0 where ``mask`` is False.

    References: IW-OPD, arXiv 2606.22600 (TRL ``IWOPDTrainer._compute_iw_opd_loss``).
    """
    _checks.check_same_shape(advantage=advantage, mask=mask)
    a = jnp.abs(_zero_masked(sg(advantage.astype(jnp.float32)), mask.astype(bool)))
    before = jnp.cumsum(a, axis=-1) - a  # exclusive prefix sum, s < t
    total = jnp.maximum(jnp.sum(a, axis=-1, keepdims=True), eps)
    return sg(_zero_masked(1.0 + gamma * (1.0 - before / total), mask.astype(bool)))


def relative_position_weights(mask: Array, *, gamma: float = 1.0,
                               direction: Literal["increasing", "decreasing"] = "increasing"
                               ) -> Array:
    r"""Weights that grow (or shrink) linearly with a token's relative position in its sequence.

    With ``u_t = n_t / L`` (``n_t`` the number of valid tokens up to and including t, ``L`` the
    sequence's valid length, so ``u`` runs from ``1/L`` to 1):

    .. math::
       w_t = 1 + \gamma u_t \quad\text{(increasing)}, \qquad
       w_t = 1 + \gamma (1 - u_t) \quad\text{(decreasing)}

    0 where ``mask`` is False. PW-OPSD (arXiv 2605.21606) weights an OPSD divergence by a
    ``w(t / L)`` increasing in position; the paper's abstract does not give ``w``, so the linear
    form and ``gamma`` are this library's reading (reconstruction).
    """
    m = mask.astype(bool)
    count = jnp.cumsum(m.astype(jnp.float32), axis=-1)
    length = jnp.maximum(count[..., -1:], 1.0)
    u = count / length
    w = 1.0 + gamma * (u if direction == "increasing" else 1.0 - u)
    return sg(_zero_masked(w, m))


def margin_shift(advantage: Array, mask: Array, correct: Array, *, delta: float,
                 mode: Literal["mean", "minmax"] = "mean", group_size: int = 0) -> Array:
    r"""Uni-OPD's outcome-aware margin: lift correct samples' advantages above incorrect ones'.

    With ``Abar_i`` the mean advantage of sequence i over its valid tokens, within each group
    (``group_size`` consecutive rows, e.g. the samples of one prompt; 0 = all rows):
    ``gap = mean(Abar_correct) - mean(Abar_incorrect)`` (``mode="mean"``) or
    ``min(Abar_correct) - max(Abar_incorrect)`` (``"minmax"``). If ``gap < delta`` every token
    advantage of the group's correct samples is shifted by ``delta - gap``, which makes the gap
    exactly ``delta``. Groups without both kinds of sample are left alone. Stop-gradient.

    Args:
      advantage: ``[B, T]`` per-token advantages.
      mask: bool ``[B, T]``.
      correct: bool ``[B]``, the verified outcome of each sample.
      delta: the margin (>= 0).

    References: Uni-OPD, arXiv 2605.03677 (``margin_calibration/margin_shift.py``).
    """
    _checks.check_same_shape(advantage=advantage, mask=mask)
    b = mask.shape[0]
    g = group_size or b
    if correct.shape != (b,):
        raise ValueError(f"correct must be one flag per sequence, shape {(b,)}; "
                         f"got {correct.shape}.")
    if b % g:
        raise ValueError(f"group_size={group_size} does not divide the {b} rows of the batch; "
                         "rows of a group must be consecutive and complete.")
    m = mask.astype(bool)
    adv = _zero_masked(sg(advantage.astype(jnp.float32)), m)
    n = jnp.sum(m, axis=-1)
    seq = (jnp.sum(adv, axis=-1) / jnp.maximum(n, 1)).reshape(-1, g)
    valid = (n > 0).reshape(-1, g)
    cor, inc = valid & correct.reshape(-1, g), valid & ~correct.reshape(-1, g)
    if mode == "mean":
        gap = (jnp.sum(jnp.where(cor, seq, 0.0), -1) / jnp.maximum(jnp.sum(cor, -1), 1)
               - jnp.sum(jnp.where(inc, seq, 0.0), -1) / jnp.maximum(jnp.sum(inc, -1), 1))
    elif mode == "minmax":
        gap = (jnp.min(jnp.where(cor, seq, jnp.inf), -1)
               - jnp.max(jnp.where(inc, seq, -jnp.inf), -1))
    else:
        raise ValueError(f"mode must be 'mean' or 'minmax', got {mode!r}.")
    both = jnp.any(cor, -1) & jnp.any(inc, -1)
    shift = jnp.where(both & (gap < delta), delta - jnp.where(both, gap, 0.0), 0.0)  # [groups]
    row_shift = jnp.where(cor, shift[:, None], 0.0).reshape(b)
    return sg(_zero_masked(adv + row_shift[:, None], m))
