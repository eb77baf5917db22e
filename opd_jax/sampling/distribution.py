"""The next-token distribution a sampler draws from: temperature, top-k, top-p, min-p, greedy;
and, with a teacher beside the student, the draw from both (``choose``: MiniLLM's per-token coin, or
TRB's geometric blend under a KL budget, ``blend_weight``).

Everything here is a pure function of float32 logits, so a trainer can rebuild the exact
behaviour distribution from a full forward pass (``token_distribution(logits[:, t - 1], cfg)``
at ``tokens[:, t]``).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from opd_jax.sampling.config import SamplerConfig


def argmax(x):
    """First index of the maximum along the last axis, as int32 (``jnp.argmax`` on finite input).

    Two plain reductions (max, then the smallest index attaining it) instead of XLA's variadic
    arg-max reduction, which XLA:CPU runs element by element: this is several times faster there.
    The indices are float32 (exact below 2^24): XLA:CPU's float min-reduction is faster than its
    integer one (1.1-1.6x measured).
    """
    n = x.shape[-1]
    dtype = jnp.float32 if n <= 2**24 else jnp.int32
    ids = jnp.arange(n, dtype=dtype).reshape((1,) * (x.ndim - 1) + (-1,))
    top = jnp.max(x, axis=-1, keepdims=True)
    return jnp.min(jnp.where(x == top, ids, jnp.asarray(n, dtype)), axis=-1).astype(jnp.int32)


def token_distribution(logits, cfg: SamplerConfig):
    """Log-probabilities ``[..., V]`` (float32, ``-inf`` outside the kept set) of the token drawn from ``logits``."""
    logits = jnp.asarray(logits, jnp.float32)
    if cfg.greedy:
        winner = argmax(logits)[..., None]
        ids = jnp.arange(logits.shape[-1], dtype=jnp.int32).reshape((1,) * (logits.ndim - 1) + (-1,))
        return jnp.where(ids == winner, 0.0, -jnp.inf).astype(jnp.float32)
    logp = jax.nn.log_softmax(logits / jnp.float32(cfg.temperature), axis=-1)
    if cfg.top_k and cfg.top_k < logits.shape[-1]:
        kth = jax.lax.top_k(logp, cfg.top_k)[0][..., -1:]
        logp = _keep(logp, logp >= kth)
    if cfg.top_p < 1:
        logp = _keep(logp, logp >= _top_p_threshold(jax.lax.stop_gradient(logp), cfg.top_p, cfg.top_k))
    if cfg.min_p > 0:
        floor = jnp.max(logp, axis=-1, keepdims=True) + jnp.log(jnp.float32(cfg.min_p))
        logp = _keep(logp, logp >= floor)
    return logp


def _keep(logp, keep):
    """Renormalise ``logp`` over the tokens where ``keep`` holds."""
    return jax.nn.log_softmax(jnp.where(keep, logp, -jnp.inf), axis=-1)


def _top_p_threshold(logp, top_p: float, top_k: int):
    """The smallest log-probability in the most-probable set whose mass reaches ``top_p``.

    That is the smallest value ``x`` whose strictly-more-probable mass is below ``top_p`` (ties
    with it are kept too). With ``top_k`` on, only the ``top_k`` candidates can be kept, so only
    they are sorted; otherwise ``x`` is found by bisection over the float32 values in their
    order (32 masked sums over the vocabulary): XLA's full-vocabulary sort is 15-25x slower.
    """
    if 0 < top_k < logp.shape[-1]:
        sorted_desc = jax.lax.top_k(logp, top_k)[0]
        probs = jnp.exp(sorted_desc)
        mass_before = jnp.cumsum(probs, axis=-1) - probs
        kept = mass_before < jnp.float32(top_p)  # always keeps the most probable token
        return jnp.min(jnp.where(kept, sorted_desc, jnp.inf), axis=-1, keepdims=True)
    probs = jnp.exp(logp)
    keys = _ordered_int(logp)
    finite = jnp.isfinite(logp)
    hi = jnp.max(keys, axis=-1)  # the maximum: nothing is more probable, so it qualifies
    lo = jnp.min(jnp.where(finite, keys, hi[..., None]), axis=-1) - 1  # below everything: all the mass

    def halve(_, bounds):  # invariant: lo does not qualify (mass >= top_p above it), hi does
        lo, hi = bounds
        mid = (lo >> 1) + (hi >> 1) + (lo & hi & 1)  # floor((lo + hi) / 2) without overflow
        mass_above = jnp.sum(jnp.where(keys > mid[..., None], probs, 0.0), axis=-1)
        ok = mass_above < jnp.float32(top_p)
        return jnp.where(ok, lo, mid), jnp.where(ok, mid, hi)

    _, hi = jax.lax.fori_loop(0, 32, halve, (lo, hi))
    return _from_ordered_int(hi)[..., None]


def _ordered_int(x):
    """float32 -> int32 keys in the same order (negative floats reversed below the positive ones)."""
    i = jax.lax.bitcast_convert_type(x, jnp.int32)
    return jnp.where(i < 0, jnp.int32(-2**31) - i - 1, i)


def _from_ordered_int(k):
    i = jnp.where(k < 0, jnp.int32(-2**31) - k - 1, k)
    return jax.lax.bitcast_convert_type(i, jnp.float32)


def uniforms(keys):
    """Two independent uniforms in ``[0, 1)`` per key: ``[R, 2]`` float32 (what ``draw`` consumes)."""
    return jax.vmap(lambda k: jax.random.uniform(k, (2,), jnp.float32))(keys)


def draw(log_weights, u):
    """One draw per row from the distribution proportional to ``exp(log_weights)`` (``-inf`` = never).

    Inverse-CDF sampling in two levels, exact in distribution: the vocabulary is cut into blocks
    of ``bs`` ~ sqrt(V) tokens, ``u[:, 0]`` picks a block by its mass (a cumulative sum over
    blocks), ``u[:, 1]`` a token inside it (a cumulative sum over the block): P(block) P(token |
    block) = P(token). Two uniforms per row instead of V Gumbel variates: random bits cost far
    more than the sums. Two levels keep float32 resolution relative to each block's mass (one
    cumulative sum over the whole vocabulary would absorb small probabilities late in the sum).
    Only tokens of positive weight can be drawn, whatever the rounding.
    """
    R, V = log_weights.shape
    bs = 1 << max(3, math.ceil(math.log2(math.sqrt(V))))
    nb = -(-V // bs)
    p = jnp.exp(log_weights - jnp.max(log_weights, axis=-1, keepdims=True))  # the largest weight is 1
    p_RNB = jnp.pad(p, ((0, 0), (0, nb * bs - V))).reshape(R, nb, bs)
    mass_RN = jnp.sum(p_RNB, axis=-1)
    block = _inverse_cdf(mass_RN, u[:, 0])
    p_RB = jnp.take_along_axis(p_RNB, block[:, None, None], axis=1)[:, 0]
    return block * bs + _inverse_cdf(p_RB, u[:, 1])


def _inverse_cdf(w_RN, u_R):
    """The first index whose cumulative weight exceeds ``u * total`` (among positive weights)."""
    n = w_RN.shape[-1]
    # The cumulative sum as a product with an upper-triangular matrix of ones (n ~ sqrt(V)).
    cum_RN = jnp.dot(w_RN, jnp.triu(jnp.ones((n, n), jnp.float32)), precision=jax.lax.Precision.HIGHEST)
    positive = w_RN > 0
    ids = jnp.arange(n, dtype=jnp.int32)[None, :]
    first = jnp.min(jnp.where((cum_RN > u_R[:, None] * cum_RN[:, -1:]) & positive, ids, n), axis=-1)
    last = jnp.max(jnp.where(positive, ids, -1), axis=-1)  # if rounding left no index above u * total
    return jnp.where(first == n, last, first)


def log_weights(logits, cfg: SamplerConfig):
    """``(w, log_norm)``: ``token_distribution(logits, cfg) = w - log_norm[..., None]``; ``w`` is what
    ``draw`` takes. Untruncated, ``w`` is the tempered logits minus their maximum and the full
    log-softmax is never materialised (log-probabilities of drawn tokens: ``take(w) - log_norm``)."""
    logits = jnp.asarray(logits, jnp.float32)
    if cfg.greedy or cfg.truncated:
        return token_distribution(logits, cfg), jnp.zeros(logits.shape[:-1], jnp.float32)
    scaled = logits / jnp.float32(cfg.temperature)
    shifted = scaled - jax.lax.stop_gradient(jnp.max(scaled, axis=-1, keepdims=True))
    return shifted, jnp.log(jnp.sum(jnp.exp(shifted), axis=-1))


def top_tokens(logits, k: int, temperature: float = 1.0):
    """``(ids int32 [..., k], logp float32 [..., k], entropy float32 [...])`` of the distribution
    ``softmax(logits / temperature)``: its ``k`` most probable tokens (most probable first), their
    log-probabilities, and its entropy in nats (what ``SamplerConfig.record_topk`` records)."""
    logp = jax.nn.log_softmax(jnp.asarray(logits, jnp.float32) / jnp.float32(temperature), axis=-1)
    top_logp, ids = jax.lax.top_k(logp, k)
    p = jnp.exp(logp)
    entropy = -jnp.sum(jnp.where(p > 0, p * logp, 0.0), axis=-1)
    return ids.astype(jnp.int32), top_logp, entropy


def take(logp, tokens):
    """``logp[r, tokens[r]]`` for every row."""
    return jnp.take_along_axis(logp, tokens[:, None], axis=-1)[:, 0]


def sample_token(keys, logits, cfg: SamplerConfig):
    """``(tokens int32 [R], logp float32 [R])``: one draw per row and its log-probability under the draw's distribution."""
    if cfg.greedy:  # the arg-max needs no random bits and no softmax
        tokens = argmax(logits)
        return tokens, jnp.zeros(tokens.shape, jnp.float32)
    w, log_norm = log_weights(logits, cfg)
    tokens = draw(w, uniforms(keys))
    return tokens, take(w, tokens) - log_norm


BLEND_ITERS = 20  # bisection steps of ``blend_weight``: beta within 2^-20 of the largest feasible one


def _blend_terms(logits, teacher_logits, temperature: float):
    """What every ``beta`` of one row's blend shares: ``z_s / T``, ``d = (z_t - z_s) / T`` and
    ``logZ(0)``, computed once (outside the bisection's loop)."""
    zs = jnp.asarray(logits, jnp.float32) / jnp.float32(temperature)
    d = jnp.asarray(teacher_logits, jnp.float32) / jnp.float32(temperature) - zs
    return zs, d, jax.nn.logsumexp(zs, axis=-1)


def _kl_of(terms, beta):
    # log mu - log p = beta d - (logZ(beta) - logZ(0)), averaged under mu: one pass for logZ(beta),
    # one for the weighted sum
    zs, d, log_z0 = terms
    z = zs + beta[:, None] * d
    log_z = jax.nn.logsumexp(z, axis=-1)
    mean_d = jnp.sum(jnp.exp(z - log_z[:, None]) * d, axis=-1)
    return jnp.maximum(beta * mean_d - (log_z - log_z0), 0.0)


def blend_kl(logits, teacher_logits, beta, temperature: float):
    """``KL(mu_beta || p) [R]`` of the geometric blend ``mu_beta = softmax(((1 - beta) z_s + beta z_t) / T)``
    against the student's ``p = softmax(z_s / T)`` (``beta [R]``)."""
    return _kl_of(_blend_terms(logits, teacher_logits, temperature), beta)


def blend_weight(logits, teacher_logits, budget, temperature: float):
    """TRB's teacher weight ``beta [R]``: the largest ``beta`` in ``[0, 1]`` whose geometric blend
    ``mu_beta`` (see :func:`blend_kl`) stays within ``budget`` nats of KL from the student's
    distribution (to ``2**-BLEND_ITERS``, and the KL to float32 rounding, ~1e-7 nats).
    ``KL(mu_beta || p)`` grows with ``beta`` (its derivative is ``beta Var_mu(d)``), so bisection
    finds it; 1 when the teacher itself is within the budget, 0 for a zero budget."""
    rows = logits.shape[0]
    budget = jnp.asarray(budget, jnp.float32)
    one = jnp.ones((rows,), jnp.float32)
    terms = _blend_terms(logits, teacher_logits, temperature)
    within = _kl_of(terms, one) <= budget

    def halve(_, bounds):  # invariant: lo is within the budget, hi is not
        lo, hi = bounds
        mid = 0.5 * (lo + hi)
        ok = _kl_of(terms, mid) <= budget
        return jnp.where(ok, mid, lo), jnp.where(ok, hi, mid)

    lo, _ = jax.lax.fori_loop(0, BLEND_ITERS, halve, (jnp.zeros((rows,), jnp.float32), one))
    # float32 cannot tell a KL below ~1e-7 from 0: a zero budget is the student's own distribution
    return jnp.where(budget > 0, jnp.where(within, one, lo), 0.0)


def choose(cfg: SamplerConfig, keys, logits, teacher_logits, mix):
    """``(tokens [R], behaviour logp [R], extras)``: the token drawn from ``logits`` alone, or with a
    teacher's ``teacher_logits`` as ``cfg.teacher_blend`` says, with ``mix`` (traced):

    - ``"coin"`` (MiniLLM): the teacher's draw with probability ``mix``, else the student's; the
      behaviour log-prob is the mixture's, ``log(mix q + (1 - mix) p)``; extra ``from_teacher``.
    - ``"geometric"`` (TRB): a draw from ``((1 - beta) z_s + beta z_t)`` under ``cfg``'s temperature
      and filters, ``beta = blend_weight(..., budget=mix)`` measured at the sampling temperature (1
      for greedy decoding); the behaviour log-prob is the blend's; extra ``teacher_weight`` (beta).

    Both record ``student_logp`` and ``teacher_logp``, each model's log-prob of the token under
    ``cfg`` (``-inf`` where a filter of that model dropped it)."""
    if teacher_logits is None:
        tokens, logp = sample_token(keys, logits, cfg)
        return tokens, logp, {}
    (w_s, norm_s), (w_t, norm_t) = log_weights(logits, cfg), log_weights(teacher_logits, cfg)
    if cfg.teacher_blend == "geometric":
        beta = blend_weight(logits, teacher_logits, mix, cfg.temperature or 1.0)
        blended = logits + beta[:, None] * (teacher_logits - logits)
        tokens, logp = sample_token(keys, blended, cfg)
        extras = dict(teacher_weight=beta)
    else:
        if cfg.greedy:
            tok_s, tok_t = argmax(logits), argmax(teacher_logits)
        else:  # the same uniforms serve both draws: only the draw the coin keeps is used, so it stays exact
            u = uniforms(keys)
            tok_s, tok_t = draw(w_s, u), draw(w_t, u)
        from_teacher = jax.vmap(lambda k: jax.random.uniform(jax.random.fold_in(k, 1)))(keys) < mix
        tokens = jnp.where(from_teacher, tok_t, tok_s)
        extras = dict(from_teacher=from_teacher)
    student, teacher = take(w_s, tokens) - norm_s, take(w_t, tokens) - norm_t
    if cfg.teacher_blend == "coin":  # the coin's law, marginal over it: mix * teacher + (1 - mix) * student
        logp = jnp.logaddexp(jnp.log(mix) + teacher, jnp.log1p(-mix) + student)
    return tokens, logp, dict(student_logp=student, teacher_logp=teacher, **extras)
