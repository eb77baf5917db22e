"""Reductions: per-token losses to ``(numerator, denominator)`` pairs.

A reduction never divides. The train step sums numerators and denominators over
micro-batches and devices and divides once, so that gradient accumulation and data
parallelism give the loss of the whole batch (the TRL #4719 class of bug cannot happen).

Positions of zero weight (mask False) are *selected out*, not multiplied by 0: whatever they
hold (``inf``, ``nan``), they contribute exactly 0 to the value and to the gradient.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp

from opd_jax.objectives import _checks

Array = jax.Array


class Reduced(NamedTuple):
    """A loss term as a sum and the count it is to be divided by."""
    num: Array
    den: Array

    def value(self) -> Array:
        """``num / den``, and 0 (with zero gradient) when nothing was counted."""
        counted = self.den > 0
        return jnp.where(counted, self.num, 0.0) / jnp.where(counted, self.den, 1.0)

    def scale(self, coef) -> "Reduced":
        return Reduced(coef * self.num, self.den)

    def __add__(self, other):  # sum of two partial sums (micro-batches, devices) of one term
        return Reduced(self.num + other.num, self.den + other.den)


def _m(values, mask):
    _checks.check_same_shape(values=values, mask=mask)
    return values.astype(jnp.float32), mask.astype(jnp.float32)


def _wx(x, w):
    """``w * x`` where ``w != 0``, exactly 0 (value and gradient) elsewhere."""
    return jnp.where(w != 0, w * jnp.where(w != 0, x, 0.0), 0.0)


def masked_mean(values: Array, mask: Array) -> Array:
    """``sum_{mask} x / max(sum mask, 1)`` as a plain scalar (for metrics, not loss terms)."""
    x, m = _m(values, mask)
    return jnp.sum(_wx(x, m)) / jnp.maximum(jnp.sum(m), 1.0)


def token_mean(values: Array, mask: Array) -> Reduced:
    """Mean over all valid tokens of the batch (``sum m x / sum m``): GKD, OPD, TRL's batchmean."""
    x, m = _m(values, mask)
    return Reduced(jnp.sum(_wx(x, m)), jnp.sum(m))


def weighted_mean(values: Array, weights: Array) -> Reduced:
    """``sum w x / sum w`` over all tokens (weights carry the mask)."""
    x, w = _m(values, weights)
    return Reduced(jnp.sum(_wx(x, w)), jnp.sum(w))


def seq_mean_token_mean(values: Array, mask: Array, seq_weights: Array | None = None) -> Reduced:
    """Mean over sequences (that have a valid token) of each sequence's token mean.

    With ``seq_weights`` ``[B]`` each sequence's token mean is multiplied by its weight before
    the mean over sequences (the count is unchanged): a weight scales that sequence's
    contribution to the batch loss, e.g. UniSD's sequence-level agreement.
    """
    x, m = _m(values, mask)
    n = jnp.sum(m, axis=-1)
    per_seq = jnp.sum(_wx(x, m), axis=-1) / jnp.maximum(n, 1.0)
    if seq_weights is not None:
        if seq_weights.shape != n.shape:
            raise ValueError(f"seq_weights has shape {seq_weights.shape}; expected one weight per "
                             f"sequence, {n.shape}.")
        per_seq = _wx(per_seq, seq_weights.astype(jnp.float32))
    return Reduced(jnp.sum(per_seq), jnp.sum((n > 0).astype(jnp.float32)))


def seq_mean_weighted_mean(values: Array, weights: Array) -> Reduced:
    """Per sequence ``sum w x / sum w``, then the mean over sequences (UniSD's token-level
    agreement). A weight constant over a sequence cancels here; use
    :func:`seq_mean_token_mean` with ``seq_weights`` for per-sequence weights."""
    x, w = _m(values, weights)
    n = jnp.sum(w, axis=-1)
    per_seq = jnp.sum(_wx(x, w), axis=-1) / jnp.where(n > 0, n, 1.0)
    return Reduced(jnp.sum(per_seq), jnp.sum((n > 0).astype(jnp.float32)))


def seq_mean_token_sum(values: Array, mask: Array) -> Reduced:
    """Sum over each sequence's tokens, mean over sequences (Tinker's summed loss per sample)."""
    x, m = _m(values, mask)
    rows = jnp.sum(m, axis=-1) > 0
    return Reduced(jnp.sum(_wx(x, m)), jnp.sum(rows.astype(jnp.float32)))


def total(terms: dict[str, Reduced]) -> Array:
    """The scalar loss: each term divided by its own count, then summed."""
    return sum((t.value() for t in terms.values()), jnp.float32(0.0))
