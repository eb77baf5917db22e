"""Per-token divergences and entropies over the full vocabulary.

Every function here maps arrays with a trailing vocabulary axis ``[..., V]`` to one value
per position ``[...]``: nothing is reduced over positions. They upcast to float32, divide
the logits by ``temperature`` before normalising, and accept ``where`` (True = the position
counts): masked positions return exactly 0, with zero and finite gradients even when their
logits are ``-inf``.

Conventions (those of TRL and the GKD paper): with student ``p = softmax(z/τ)`` and teacher
``q = softmax(z_T/τ)``,

- forward KL is ``KL(q || p)`` (mass-covering), reverse KL is ``KL(p || q)`` (mode-seeking);
- ``generalized_jsd(beta=0)`` is forward KL and ``beta=1`` is reverse KL.

Zero probabilities (``-inf`` logits: masked vocabulary entries, padded embedding rows,
constrained decoding). Every function returns finite values with finite gradients:

- an entry where *both* distributions are 0 drops out exactly (``0 log 0 = 0``), so the value
  is the exact divergence over the remaining entries;
- an entry where one distribution is 0 and the other is not makes a KL infinite. We return a
  large finite value instead: a ``-inf`` log-probability is read as :data:`LOG_FLOOR`
  ``= log(2**-126) ≈ -87.34``, the log of the smallest normal float32 probability (below it
  float32 cannot tell a probability from 0). So ``KL(p || q)`` with ``q(v) = 0 < p(v)``
  counts ``p(v) (log p(v) + 87.34)`` for that entry, and its gradient keeps pushing the
  student's mass off the entry. Finite log-probabilities are used as they are, even below
  the floor (logits of ±1e4 give their exact values). The generalized JSD (0 < beta < 1) and
  total variation are bounded and exact in every case.
"""

import math
from typing import Literal

import jax
import jax.numpy as jnp

from opd_jax.objectives import _checks

Array = jax.Array

LOG_FLOOR = -87.33654475055310898657  # log(2**-126), the smallest normal float32, as a log-prob


def log_probs(logits: Array, *, temperature: float = 1.0, where: Array | None = None) -> Array:
    """Float32 log-softmax of ``logits / temperature``; masked rows are replaced by zeros first.

    Replacing masked rows *before* the softmax (rather than masking the result) is what keeps
    gradients finite when padded rows hold ``-inf``.
    """
    _checks.check_temperature(temperature)
    _checks.check_where(where, logits.shape[:-1])
    x = logits.astype(jnp.float32)
    if where is not None:
        x = jnp.where(where[..., None], x, 0.0)
    return jax.nn.log_softmax(x / temperature, axis=-1)


def masked(value: Array, where: Array | None) -> Array:
    """``value`` where ``where`` is True, exactly 0 elsewhere (``where=None``: all of it)."""
    return value if where is None else jnp.where(where, value, 0.0)


def floor_log_probs(logp: Array) -> Array:
    """``-inf`` log-probabilities (zero probabilities) read as :data:`LOG_FLOOR`; others kept.

    The replaced entries get no gradient (they could not move anyway: a ``-inf`` logit stays
    ``-inf``), and no ``inf - inf`` or ``0 * inf`` can arise from them downstream.
    """
    return jnp.where(logp > -jnp.inf, logp, LOG_FLOOR)


def kl_terms(lp: Array, lq: Array, *, stop_gradient_log: bool = False) -> Array:
    """Elementwise ``p (log p - log q)``: 0 where ``p = 0``, ``log q`` floored where ``q = 0``.

    With ``stop_gradient_log`` the ``log p`` inside the bracket is stop-gradient (the
    gradient then flows through the weight ``p`` only).
    """
    support = lp > -jnp.inf
    inner = jax.lax.stop_gradient(lp) if stop_gradient_log else lp
    # select before subtracting: no -inf - (-inf) even in the branch that is thrown away
    diff = jnp.where(support, jnp.where(support, inner, 0.0) - floor_log_probs(lq), 0.0)
    return jnp.exp(lp) * diff


def _kl_from_logp(lp: Array, lq: Array) -> Array:
    """``sum_v p(v) (log p(v) - log q(v))`` under :func:`kl_terms`' rules for zeros."""
    return jnp.sum(kl_terms(lp, lq), axis=-1)


def _entropy_from_logp(lp: Array) -> Array:
    support = lp > -jnp.inf
    return -jnp.sum(jnp.exp(lp) * jnp.where(support, lp, 0.0), axis=-1)


def _pair(logits, teacher_logits, temperature, where):
    _checks.check_logits_pair(logits, teacher_logits)
    teacher_logits = jax.lax.stop_gradient(teacher_logits)  # the teacher is never trained
    return (log_probs(logits, temperature=temperature, where=where),
            log_probs(teacher_logits, temperature=temperature, where=where))


def forward_kl(logits: Array, teacher_logits: Array, *, temperature: float = 1.0,
               where: Array | None = None) -> Array:
    r"""Forward KL ``KL(q || p)`` of the student from the teacher at each position.

    .. math:: \mathrm{FKL}_t = \sum_v q_t(v)\,(\log q_t(v) - \log p_t(v))

    Mass-covering: the student is pushed to put probability wherever the teacher does.
    Gradient with respect to the student logits (τ = 1): ``p - q``.

    Args:
      logits: student logits ``[..., V]``; carries the gradient.
      teacher_logits: teacher logits ``[..., V]``; stop-gradient inside.
      temperature: divides both logits before the softmax.
      where: optional bool ``[...]``; False positions give 0.

    Returns:
      float32 ``[...]``.

    References: Agarwal et al., GKD, arXiv 2306.13649 (β = 0 end of the generalized JSD).
    """
    lp, lq = _pair(logits, teacher_logits, temperature, where)
    return masked(_kl_from_logp(lq, lp), where)


def reverse_kl(logits: Array, teacher_logits: Array, *, temperature: float = 1.0,
               where: Array | None = None) -> Array:
    r"""Reverse KL ``KL(p || q)`` of the teacher from the student at each position.

    .. math:: \mathrm{RKL}_t = \sum_v p_t(v)\,(\log p_t(v) - \log q_t(v))

    Mode-seeking; the exact per-position quantity that sampled-token OPD estimates.
    Gradient (τ = 1): ``p_j (log p_j - log q_j - RKL)``.

    Args:
      logits: student logits ``[..., V]``; carries the gradient.
      teacher_logits: teacher logits ``[..., V]``; stop-gradient inside.
      temperature: divides both logits before the softmax.
      where: optional bool ``[...]``.

    Returns:
      float32 ``[...]``.

    References: Lu & Thinking Machines, "On-Policy Distillation" (2025); GKD β = 1.
    """
    lp, lq = _pair(logits, teacher_logits, temperature, where)
    return masked(_kl_from_logp(lp, lq), where)


def _jsd_interior(lp: Array, lq: Array, beta) -> Array:
    # Where both are 0, m is 0 too and the entry drops out of both KLs; its inputs are replaced
    # before logaddexp, whose gradient at (-inf, -inf) is NaN.
    both = (lp == -jnp.inf) & (lq == -jnp.inf)
    log_m = jnp.logaddexp(jnp.where(both, 0.0, lq) + jnp.log(beta),
                          jnp.where(both, 0.0, lp) + jnp.log1p(-beta))
    log_m = jnp.where(both, -jnp.inf, log_m)
    return beta * _kl_from_logp(lq, log_m) + (1.0 - beta) * _kl_from_logp(lp, log_m)


def generalized_jsd(logits: Array, teacher_logits: Array, *, beta: float = 0.5,
                    temperature: float = 1.0, where: Array | None = None) -> Array:
    r"""Generalized Jensen-Shannon divergence of GKD, in TRL's convention.

    .. math::
       \mathrm{JSD}_\beta = \beta\,\mathrm{KL}(q \| m) + (1-\beta)\,\mathrm{KL}(p \| m),
       \qquad m = \beta q + (1-\beta) p

    with the ends special-cased exactly as TRL does: ``beta = 0`` is forward KL ``KL(q||p)``
    and ``beta = 1`` is reverse KL ``KL(p||q)``. Note the discontinuity this implies: for
    small ``beta > 0`` the value is about ``beta * KL(q||p)``, not ``KL(q||p)``; sweeps that
    cross an end should say so. ``beta = 0.5`` is symmetric in ``p`` and ``q``. The gradient
    flows through ``p`` everywhere it appears, including inside the mixture ``m``.

    Args:
      logits: student logits ``[..., V]``; carries the gradient.
      teacher_logits: teacher logits ``[..., V]``; stop-gradient inside.
      beta: weight of the teacher in the mixture, in ``[0, 1]``; may be a traced scalar
        (a schedule), in which case the ends are selected with ``jnp.where``.
      temperature: divides both logits before the softmax.
      where: optional bool ``[...]``.

    Returns:
      float32 ``[...]``.

    References: Agarwal et al., GKD, arXiv 2306.13649, Eq. 1; TRL
    ``GKDTrainer.generalized_jsd_loss``.
    """
    _checks.check_unit_interval(beta, "beta")
    lp, lq = _pair(logits, teacher_logits, temperature, where)
    if _checks.is_concrete(beta):
        beta = float(beta)
        if beta == 0.0:
            value = _kl_from_logp(lq, lp)
        elif beta == 1.0:
            value = _kl_from_logp(lp, lq)
        else:
            value = _jsd_interior(lp, lq, jnp.float32(beta))
    else:
        beta = jnp.asarray(beta, jnp.float32)
        inner = _jsd_interior(lp, lq, jnp.clip(beta, 1e-12, 1.0 - 1e-7))
        value = jnp.where(beta <= 0.0, _kl_from_logp(lq, lp),
                          jnp.where(beta >= 1.0, _kl_from_logp(lp, lq), inner))
    return masked(value, where)


def total_variation(logits: Array, teacher_logits: Array, *, temperature: float = 1.0,
                    where: Array | None = None) -> Array:
    r"""Total variation distance ``0.5 * sum_v |p(v) - q(v)|`` at each position, in ``[0, 1]``."""
    lp, lq = _pair(logits, teacher_logits, temperature, where)
    return masked(0.5 * jnp.sum(jnp.abs(jnp.exp(lp) - jnp.exp(lq)), axis=-1), where)


def token_entropy(logits: Array, *, temperature: float = 1.0, where: Array | None = None) -> Array:
    r"""Shannon entropy in nats, ``-sum_v p(v) log p(v)``, of ``softmax(logits / temperature)``.

    Pass teacher logits to get the teacher's entropy (EOPD's gate); wrap the input in
    ``jax.lax.stop_gradient`` when the entropy is used as a weight rather than a loss.
    """
    return masked(_entropy_from_logp(log_probs(logits, temperature=temperature, where=where)),
                   where)


def normalized_entropy(logits: Array, *, temperature: float = 1.0,
                       where: Array | None = None) -> Array:
    r"""Entropy divided by its maximum, ``H(p) / ln V``, in ``[0, 1]`` (0 when ``V = 1``).

    ``V`` is the logits' last dimension, so the normalisation needs no other input; TIP's
    ``normalize="fixed"`` uses it.
    """
    v = logits.shape[-1]
    h = token_entropy(logits, temperature=temperature, where=where)
    return h / math.log(v) if v > 1 else jnp.zeros_like(h)


def token_logp(logits: Array, tokens: Array, *, temperature: float = 1.0,
               where: Array | None = None) -> Array:
    r"""Log-probability of ``tokens`` under ``softmax(logits / temperature)``, float32 ``[...]``.

    Computed as ``z[y] - logsumexp(z)`` so that no ``[..., V]`` log-softmax is kept. Use the
    temperature the sampler used, so that importance ratios are exactly 1 on-policy. A token of
    probability 0 (a ``-inf`` logit) gets :data:`LOG_FLOOR`, with no gradient.
    """
    _checks.check_temperature(temperature)
    _checks.check_where(where, logits.shape[:-1])
    if tuple(tokens.shape) != tuple(logits.shape[:-1]):
        raise ValueError(f"tokens has shape {tokens.shape}, expected {logits.shape[:-1]} "
                         "(logits' shape without the vocabulary axis).")
    if not jnp.issubdtype(tokens.dtype, jnp.integer):
        raise TypeError(f"tokens must be integer ids, got dtype {tokens.dtype}.")
    x = logits.astype(jnp.float32)
    if where is not None:
        x = jnp.where(where[..., None], x, 0.0)
    x = x / temperature
    picked = jnp.take_along_axis(x, tokens[..., None].astype(jnp.int32), axis=-1)[..., 0]
    return masked(floor_log_probs(picked - jax.nn.logsumexp(x, axis=-1)), where)


def log_ratio(logp: Array, teacher_logp: Array, *, where: Array | None = None) -> Array:
    r"""Sampled-token log ratio ``r_t = log q(y_t) - log p(y_t)`` (the OPD "token reward").

    Minus its expectation under the student is the reverse KL; it is *not* stop-gradient here
    (an advantage built from it is, see :mod:`opd_jax.objectives.advantages`).
    """
    _checks.check_same_shape(logp=logp, teacher_logp=teacher_logp, where=where)
    value = teacher_logp.astype(jnp.float32) - logp.astype(jnp.float32)
    return masked(value, where)


def sampled_kl(logp: Array, ref_logp: Array, *, estimator: Literal["k1", "k2", "k3"] = "k3",
               where: Array | None = None) -> Array:
    r"""Single-sample estimates of ``KL(p || ref)`` from the log-probs of a token drawn from p.

    With ``u = log ref(y) - log p(y)`` and ``y ~ p``:

    - ``k1 = -u`` (unbiased, high variance, can be negative);
    - ``k2 = u**2 / 2`` (biased, low variance, always >= 0);
    - ``k3 = exp(u) - 1 - u`` (unbiased, always >= 0).

    References: J. Schulman, "Approximating KL divergence" (2020).
    """
    _checks.check_same_shape(logp=logp, ref_logp=ref_logp, where=where)
    u = ref_logp.astype(jnp.float32) - logp.astype(jnp.float32)
    if where is not None:  # masked -inf inputs must not reach exp/square (NaN gradients)
        u = jnp.where(where, u, 0.0)
    if estimator == "k1":
        value = -u
    elif estimator == "k2":
        value = 0.5 * jnp.square(u)
    elif estimator == "k3":
        value = jnp.expm1(u) - u
    else:
        raise ValueError(f"estimator must be 'k1', 'k2' or 'k3', got {estimator!r}.")
    return masked(value, where)
