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
                   step, switch_step, entropy_select: bool = True) -> Array:
    r"""REOPOLD's token mask under its two-stage schedule.

    Stage 1 (exploration, ``step < switch_step``): keep tokens whose reward is above the floor,
    ``1[R_t >= F]`` (drop rather than clip the heavy negative tail). Stage 2 (refinement): the
    entropy quantile mask of :func:`quantile_select`, or every valid token when
    ``entropy_select`` is False. The switch step is not given in any accessible source; a
    reproduction assumed half the run.
    """
    mask = mask.astype(bool)
    stage1 = (mask & (sg(reward) >= floor)).astype(jnp.float32)
    stage2 = (quantile_select(student_entropy, mask, top_frac=top_frac) if entropy_select
              else mask.astype(jnp.float32))
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


def fraction_count(frac, n: Array) -> Array:
    r"""How many of ``n`` valid tokens a fraction ``frac`` keeps: ``max(floor(frac * n), 1)``
    (0 when ``n = 0``).

    ``floor`` is what TIP's token-sampling utility does (``floor(rho * N)`` positions) and what
    ``int(rho * n)`` gives in the deterministic top-``rho`` selections; one rule for every
    arm keeps them comparable (same token budget). The floor of 1 keeps a tiny batch from
    training on nothing. Products within 1e-4 of an integer count as that integer (float32).
    """
    n = n.astype(jnp.float32)
    return jnp.where(n > 0, jnp.maximum(jnp.floor(frac * n + 1e-4), 1.0), 0.0)


def top_fraction_select(score: Array, mask: Array, *, frac) -> Array:
    r"""Keep the :func:`fraction_count` ``= max(floor(frac n), 1)`` valid tokens with the highest
    score (n = number valid). Ties break by position.

    TIP keeps the top-``rho`` fraction of tokens by its soft-OR score; TA-OPD by teachability.

    References: Xu et al., TIP, arXiv 2604.14084.
    """
    _checks.check_same_shape(score=score, mask=mask)
    _checks.check_fraction(frac, "frac")
    keep = fraction_count(frac, jnp.sum(mask.astype(jnp.int32)))
    return (mask & (_rank_desc(score, mask) < keep)).astype(jnp.float32)


def sampled_fraction_select(weights: Array, mask: Array, key: Array, *, frac) -> Array:
    r"""Sample :func:`fraction_count` ``= max(floor(frac n), 1)`` valid tokens without
    replacement, with probability ∝ ``weights``.

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


def sequence_quantile_keep(values: Array, mask: Array, *, q) -> Array:
    r"""FiRe-OPD's sequence filter: 1 for the sequences whose mean ``values`` over their valid
    tokens is at least the ``q``-quantile of those means (over sequences with a valid token).

    Returns float32 ``[B]`` (0 for sequences without a valid token).

    References: FiRe-OPD, arXiv 2606.02684 (keep a sequence if its mean teacher log-prob is at
    least the batch's 20th percentile).
    """
    _checks.check_same_shape(values=values, mask=mask)
    m = mask.astype(bool)
    n = jnp.sum(m, axis=-1)
    per_seq = jnp.sum(jnp.where(m, sg(values.astype(jnp.float32)), 0.0), -1) / jnp.maximum(n, 1)
    has = n > 0
    return (has & (per_seq >= masked_quantile(per_seq, has, q))).astype(jnp.float32)


def confidence_weights(teacher_entropy: Array, student_entropy: Array, mask: Array, *,
                       teacher_coef: float = 1.0, student_coef: float = 1.0) -> Array:
    r"""FiRe-OPD's token weights, normalised to mean 1 over the valid tokens of ``mask``.

    .. math::
       w_t \propto \Big(1 + a\,\big(1 - \tfrac{H_T(t)}{\max H_T}\big)\Big)
                   \Big(1 + b\,\tfrac{H_S(t)}{\max H_S}\Big)

    high where the teacher is confident and the student is confused; maxima over the valid
    tokens. Stop-gradient, 0 off the mask.

    References: FiRe-OPD, arXiv 2606.02684 (``dp_actor.py``; a = b = 1).
    """
    _checks.check_same_shape(teacher_entropy=teacher_entropy, student_entropy=student_entropy,
                             mask=mask)
    m = mask.astype(bool)

    def scaled(h):
        h = jnp.where(m, sg(h.astype(jnp.float32)), 0.0)
        return h / jnp.maximum(jnp.max(h), 1e-12)

    w = (1.0 + teacher_coef * (1.0 - scaled(teacher_entropy))) * (
        1.0 + student_coef * scaled(student_entropy))
    w = jnp.where(m, w, 0.0)
    return w / jnp.maximum(jnp.sum(w) / jnp.maximum(jnp.sum(m), 1), 1e-12)


def cosine_anneal(step, total_steps: int) -> Array:
    r"""``(1 + cos(pi min(step, K) / K)) / 2``: 1 at step 0, 0 from step K on (SEAD's
    forward-to-reverse KL weight)."""
    k = jnp.minimum(jnp.asarray(step, jnp.float32), float(total_steps))
    return 0.5 * (1.0 + jnp.cos(jnp.pi * k / total_steps))


def entropy_zones(student_entropy: Array, teacher_entropy: Array, mask: Array, *,
                  student_threshold=None, teacher_threshold=None) -> tuple[Array, Array]:
    r"""SEAD's zones: whether each token's student and teacher entropies are *high*.

    A token is high on an axis when its entropy exceeds the threshold (nats); a threshold of
    None is the batch median of that entropy over the valid tokens. Returns two bool
    ``[B, T]`` arrays (student high, teacher high), False off the mask.

    References: SEAD, arXiv 2606.28562 (zones from the joint entropies; thresholds not public).
    """
    _checks.check_same_shape(student_entropy=student_entropy, teacher_entropy=teacher_entropy,
                             mask=mask)
    m = mask.astype(bool)

    def high(h, threshold):
        h = sg(h.astype(jnp.float32))
        t = masked_quantile(h, m, 0.5) if threshold is None else threshold
        return m & (h > t)

    return high(student_entropy, student_threshold), high(teacher_entropy, teacher_threshold)


def horizon_mask(mask: Array, step=0, *, mode: str = "fixed_fraction", fraction=0.1,
                 grow_steps: int = 1000, max_length: int | None = None) -> Array:
    r"""POPD / TOPD's horizon: keep each completion's first ``H`` valid tokens,
    ``m_t <- m_t 1[n_t < H]`` (``n_t`` = valid tokens before t, so padding or a prompt inside
    the row is skipped).

    With ``L`` the row's valid length (or ``max_length``, a fixed token budget such as the
    sampler's ``max_new_tokens``, for every row) and :func:`fraction_count`'s rounding
    ``H_0 = max(floor(fraction L), 1)``:

    - ``"fixed_fraction"`` (TOPD): ``H = H_0``;
    - ``"growing"`` (POPD): ``H_k = H_0 + floor((L - H_0) min(k, K) / K)`` at optimizer step
      ``k`` (``step``) with ``K = grow_steps``: TOPD's horizon at step 0, linear growth, the
      whole completion from step K on (float32; within 1e-4 of an integer counts as it).

    Returns float32 ``[B, T]`` in {0, 1}, 0 off the mask (a row without valid tokens keeps none;
    with ``max_length``, a completion longer than it keeps ``H <= max_length`` tokens even at the
    end of the schedule). Each row's mask depends on that row only, so splitting a batch by rows
    (micro-batches, devices) or trimming padding columns leaves it unchanged.

    References: POPD / TOPD, arXiv 2605.31490 (abstract: TOPD fixes H at 10% of the length, POPD
    grows it). The rounding, the linear schedule and what "the length" is are this library's
    reading (reconstruction).
    """
    if mode not in ("fixed_fraction", "growing"):
        raise ValueError(f"mode must be 'fixed_fraction' or 'growing', got {mode!r}.")
    _checks.check_fraction(fraction, "fraction")
    if not isinstance(grow_steps, int) or grow_steps < 1:
        raise ValueError(f"grow_steps must be an int >= 1, got {grow_steps!r}.")
    m = mask.astype(bool)
    count = jnp.cumsum(m.astype(jnp.int32), axis=-1)
    before = count - m.astype(jnp.int32)
    length = count[..., -1:] if max_length is None else jnp.full_like(count[..., -1:], max_length)
    h = fraction_count(fraction, length)  # float32, exact integers
    if mode == "growing":
        u = jnp.minimum(jnp.asarray(step, jnp.float32), float(grow_steps)) / grow_steps
        h = h + jnp.floor(jnp.maximum(length.astype(jnp.float32) - h, 0.0) * u + 1e-4)
    return (m & (before.astype(jnp.float32) < h)).astype(jnp.float32)


def separator_indicator(tokens: Array, *, ids: tuple[int, ...] = ()) -> Array:
    """float32 ``[...]``: 1 where ``tokens`` is one of ``ids`` (the tokens that end a turn)."""
    if not ids:
        return jnp.zeros(jnp.shape(tokens), jnp.float32)
    return jnp.isin(tokens, jnp.asarray(ids, jnp.int32)).astype(jnp.float32)


def turn_mask(separator: Array, mask: Array, step=0, *, direction: str = "forward",
              grow_steps: int = 1000) -> Array:
    r"""TCOD's curriculum on trajectory depth: keep the tokens of each completion's first ``d_k``
    turns (``"forward"``: ``turn(t) <= d_k``) or of its last ``d_k`` (``"backward"``: ``turn(t) >
    n - d_k``).

    ``turn(t) = 1 +`` the separators among the valid tokens before t (a separator belongs to the
    turn it ends), ``n`` the row's turns (the last valid token's), and ``d_k = max(1, ceil(n
    min(k, K) / K))`` at optimizer step ``k`` (``step``) with ``K = grow_steps``: one turn at step
    0, the whole completion from step K on. Returns float32 ``[B, T]`` in {0, 1}, 0 off the mask;
    each row depends on itself only. Source: TCOD, arXiv 2604.24005 (abstract and README: turn
    masks growing to the full episode, both directions); the per-row linear schedule is this
    library's reading [INF].
    """
    if direction not in ("forward", "backward"):
        raise ValueError(f"direction must be 'forward' or 'backward', got {direction!r}.")
    if not isinstance(grow_steps, int) or grow_steps < 1:
        raise ValueError(f"grow_steps must be an int >= 1, got {grow_steps!r}.")
    m = mask.astype(bool)
    sep = jnp.where(m, separator > 0, False).astype(jnp.int32)
    turn = 1 + jnp.cumsum(sep, axis=-1) - sep
    n = jnp.max(jnp.where(m, turn, 0), axis=-1, keepdims=True)
    frac = jnp.minimum(jnp.asarray(step, jnp.float32), grow_steps) / grow_steps
    d = jnp.maximum(1, jnp.ceil(n * frac - 1e-4)).astype(jnp.int32)
    keep = turn <= d if direction == "forward" else turn > n - d
    return (m & keep).astype(jnp.float32)
