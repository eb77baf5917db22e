"""The next-token distribution a sampler draws from: temperature, top-k, top-p, min-p, greedy.

Everything here is a pure function of float32 logits, so a trainer can rebuild the exact
behaviour distribution from a full forward pass (``token_distribution(logits[:, t - 1], cfg)``
at ``tokens[:, t]``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from opd_jax.sampling.config import SamplerConfig


def argmax(x):
    """First index of the maximum along the last axis, as int32 (``jnp.argmax`` on finite input).

    Two plain reductions (max, then the smallest index attaining it) instead of XLA's variadic
    arg-max reduction, which XLA:CPU runs element by element: this is several times faster there.
    """
    ids = jnp.arange(x.shape[-1], dtype=jnp.int32).reshape((1,) * (x.ndim - 1) + (-1,))
    top = jnp.max(x, axis=-1, keepdims=True)
    return jnp.min(jnp.where(x == top, ids, jnp.int32(x.shape[-1])), axis=-1)


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
        logp = _keep(logp, logp >= _top_p_threshold(logp, cfg.top_p, cfg.top_k))
    if cfg.min_p > 0:
        floor = jnp.max(logp, axis=-1, keepdims=True) + jnp.log(jnp.float32(cfg.min_p))
        logp = _keep(logp, logp >= floor)
    return logp


def _keep(logp, keep):
    """Renormalise ``logp`` over the tokens where ``keep`` holds."""
    return jax.nn.log_softmax(jnp.where(keep, logp, -jnp.inf), axis=-1)


def _top_p_threshold(logp, top_p: float, top_k: int):
    """The smallest log-probability in the most-probable set whose mass reaches ``top_p``.

    With ``top_k`` on, only the ``top_k`` candidates can be kept, so only they are sorted.
    """
    width = top_k if 0 < top_k < logp.shape[-1] else logp.shape[-1]
    sorted_desc = jax.lax.top_k(logp, width)[0] if width < logp.shape[-1] else -jnp.sort(-logp, axis=-1)
    probs = jnp.exp(sorted_desc)
    mass_before = jnp.cumsum(probs, axis=-1) - probs
    kept = mass_before < jnp.float32(top_p)  # always keeps the most probable token
    return jnp.min(jnp.where(kept, sorted_desc, jnp.inf), axis=-1, keepdims=True)


def gumbel_noise(keys, vocab: int):
    """Standard Gumbel noise ``[R, V]``, one row per key."""
    return jax.vmap(lambda k: jax.random.gumbel(k, (vocab,), jnp.float32))(keys)


def draw(logp, noise):
    """Gumbel arg-max: ``argmax(logp + noise)`` is a draw from ``exp(logp)`` (exact in distribution)."""
    return argmax(logp + noise)


def take(logp, tokens):
    """``logp[r, tokens[r]]`` for every row."""
    return jnp.take_along_axis(logp, tokens[:, None], axis=-1)[:, 0]


def sample_token(keys, logits, cfg: SamplerConfig):
    """``(tokens int32 [R], logp float32 [R])``: one draw per row and its log-probability under the draw's distribution."""
    if cfg.greedy:  # the arg-max needs no random bits and no softmax
        tokens = argmax(logits)
        return tokens, jnp.zeros(tokens.shape, jnp.float32)
    logp = token_distribution(logits, cfg)
    tokens = draw(logp, gumbel_noise(keys, logp.shape[-1]))
    return tokens, take(logp, tokens)
