"""Gates and token selection: which tokens count, and how much.

Every function returns a stop-gradient float32 weight in ``[0, 1]`` with the shape of its
per-token inputs (``[B, T]``). Batch statistics (quantiles, min/max, top-fraction counts) are
taken over the valid tokens (``mask``) of the arrays passed in: the whole batch inside one
jitted step (global across devices under sharding), or one micro-batch under gradient
accumulation.
"""

import jax
import jax.numpy as jnp

from opd_jax.objectives import _checks

Array = jax.Array
sg = jax.lax.stop_gradient


def entropy_gate(entropy: Array, *, min_nats, soft_width: float | None = None) -> Array:
    r"""EOPD's gate on (teacher) entropy: ``1[H_t > min_nats]``, or a sigmoid of width ``soft_width``.

    EOPD applies its extra forward-KL term only where the *teacher* is uncertain
    (``H(q_t) > tau``, tau = 0.8 nats by default); pass the teacher's entropy.

    References: Jin et al., EOPD, arXiv 2603.07079.
    """
    h = sg(entropy.astype(jnp.float32))
    if soft_width is None:
        return (h > min_nats).astype(jnp.float32)
    if not soft_width > 0:
        raise ValueError(f"soft_width must be > 0 or None, got {soft_width}.")
    return jax.nn.sigmoid((h - min_nats) / soft_width)


def masked_quantile(values: Array, mask: Array, q) -> Array:
    """The ``q``-quantile (linear interpolation) of ``values`` over ``mask``; +inf when none is valid."""
    _checks.check_same_shape(values=values, mask=mask)
    _checks.check_unit_interval(q, "q")
    v = jnp.where(mask, sg(values.astype(jnp.float32)), jnp.inf).reshape(-1)
    n = jnp.sum(mask.astype(jnp.int32))
    s = jnp.sort(v)
    pos = q * jnp.maximum(n - 1, 0).astype(jnp.float32)
    lo = jnp.floor(pos).astype(jnp.int32)
    hi = jnp.minimum(lo + 1, jnp.maximum(n - 1, 0))
    frac = pos - lo
    value = s[lo] + frac * (s[hi] - s[lo])
    return jnp.where(n > 0, jnp.where(frac > 0, value, s[lo]), jnp.inf)


def quantile_select(values: Array, mask: Array, *, top_frac) -> Array:
    r"""Keep the tokens whose value is at least the ``(1 - top_frac)``-quantile of the valid ones.

    REOPOLD's entropy-guided token selection uses the *student's* entropy with
    ``top_frac = beta`` (about 0.5): ``M_t = 1[H(p_t) >= tau_beta]``.

    References: Ko et al., REOPOLD, arXiv 2603.11137, Eq. 8.
    """
    _checks.check_fraction(top_frac, "top_frac")
    tau = masked_quantile(values, mask, 1.0 - top_frac)
    return (mask & (sg(values) >= tau)).astype(jnp.float32)


def two_stage(step, switch_step, first: Array, second: Array) -> Array:
    """``first`` before ``switch_step``, ``second`` from it on (REOPOLD's exploration→refinement)."""
    return jnp.where(jnp.asarray(step) < switch_step, first, second)


def reopold_select(reward: Array, student_entropy: Array, mask: Array, *, floor, top_frac,
                   step, switch_step) -> Array:
    r"""REOPOLD's token mask under its two-stage schedule.

    Stage 1 (exploration, ``step < switch_step``): keep tokens whose reward is above the floor,
    ``1[R_t >= F]`` (drop rather than clip the heavy negative tail). Stage 2 (refinement): the
    entropy quantile mask of :func:`quantile_select`. The switch step is not given in any
    accessible source; a reproduction assumed half the run.
    """
    stage1 = (mask & (sg(reward) >= floor)).astype(jnp.float32)
    stage2 = quantile_select(student_entropy, mask, top_frac=top_frac)
    return two_stage(step, switch_step, stage1, stage2)


def minmax_normalize(values: Array, mask: Array) -> Array:
    """``(x - min) / (max - min)`` over the valid tokens, in ``[0, 1]`` (0 where max == min)."""
    _checks.check_same_shape(values=values, mask=mask)
    x = sg(values.astype(jnp.float32))
    lo = jnp.min(jnp.where(mask, x, jnp.inf))
    hi = jnp.max(jnp.where(mask, x, -jnp.inf))
    span = hi - lo
    out = jnp.where(span > 0, (x - lo) / jnp.where(span > 0, span, 1.0), 0.0)
    return jnp.where(mask, jnp.clip(out, 0.0, 1.0), 0.0)


def soft_or(a: Array, b: Array) -> Array:
    r"""TIP's soft-OR of two scores in ``[0, 1]``: ``a + b - a b = 1 - (1 - a)(1 - b)``."""
    return sg(a + b - a * b)


def _rank_desc(score: Array, mask: Array) -> Array:
    """0-based rank of each valid token by decreasing score (ties by position); invalid → n..."""
    flat = jnp.where(mask, sg(score.astype(jnp.float32)), -jnp.inf).reshape(-1)
    invalid = (~mask).reshape(-1)
    order = jnp.lexsort((jnp.arange(flat.size), -flat, invalid))  # valid first, then high score
    ranks = jnp.empty_like(order).at[order].set(jnp.arange(flat.size))
    return ranks.reshape(score.shape)


def top_fraction_select(score: Array, mask: Array, *, frac) -> Array:
    r"""Keep exactly ``ceil(frac * n)`` valid tokens with the highest score (n = number valid).

    TIP keeps the top-``rho`` fraction of tokens by its soft-OR score. Ties break by position.

    References: Xu et al., TIP, arXiv 2604.14084.
    """
    _checks.check_same_shape(score=score, mask=mask)
    _checks.check_fraction(frac, "frac")
    n = jnp.sum(mask.astype(jnp.float32))
    keep = jnp.ceil(frac * n - 1e-6)
    return (mask & (_rank_desc(score, mask) < keep)).astype(jnp.float32)


def sampled_fraction_select(weights: Array, mask: Array, key: Array, *, frac) -> Array:
    r"""Sample ``ceil(frac * n)`` valid tokens without replacement, with probability ∝ ``weights``.

    Uses the Gumbel-top-k trick (``log w + Gumbel`` then top-k), which samples without
    replacement exactly. Uniform ``weights`` give the random-selection control arm. Tokens of
    weight 0 are picked only once every positive-weight token is.

    References: TIP's entropy-based token sampling (authors' ``src/opd/losses.py`` utility).
    """
    _checks.check_same_shape(weights=weights, mask=mask)
    w = sg(weights.astype(jnp.float32))
    gumbel = jax.random.gumbel(key, w.shape, jnp.float32)
    score = jnp.where(w > 0, jnp.log(jnp.where(w > 0, w, 1.0)) + gumbel, -1e30 + gumbel)
    return top_fraction_select(score, mask, frac=frac)


def tip_sampling_weights(entropy_n: Array, divergence_n: Array, *, alpha: float = 1.0,
                         gamma: float = 0.0) -> Array:
    """TIP's sampling weights ``h^alpha * d^gamma`` from normalised entropy and divergence."""
    return sg(jnp.power(entropy_n, alpha) * jnp.power(divergence_n, gamma))


def quadrant_select(entropy_n: Array, divergence_n: Array, mask: Array, *, high_entropy: bool,
                    high_divergence: bool, threshold: float = 0.5) -> Array:
    r"""TIP's entropy × divergence quadrants on normalised scores; ``Q3`` = low entropy, high divergence.

    A token is "high" on an axis when its normalised score exceeds ``threshold``. The paper's
    exact quadrant boundaries are not public; ``threshold`` is a parameter.
    """
    h_hi = entropy_n > threshold
    d_hi = divergence_n > threshold
    keep = (h_hi == high_entropy) & (d_hi == high_divergence) & mask
    return keep.astype(jnp.float32)
