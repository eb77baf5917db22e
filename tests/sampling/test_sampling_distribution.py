"""The filtered next-token distribution: definition oracle, and chi-square tests of the sampler's draws."""

import jax
import numpy as np
import pytest
from flax import nnx
from hypothesis import given, settings, strategies as st
from scipy import stats

from sampling_fakes import Constant
from opd_jax.sampling import SamplerConfig, sample, sample_token, token_distribution
from opd_jax.sampling import distribution as D


def reference_distribution(logits, temperature, top_k=0, top_p=1.0, min_p=0.0):
    """The documented definition, step by step in float64 (a loop over tokens in probability order)."""
    logits = np.asarray(logits, np.float64)
    if temperature == 0:
        return (np.arange(logits.size) == np.argmax(logits)).astype(np.float64)
    p = np.exp(logits / temperature - np.max(logits / temperature))
    p /= p.sum()
    if top_k:
        p = np.where(p >= np.sort(p)[::-1][min(top_k, p.size) - 1], p, 0.0)
        p /= p.sum()
    if top_p < 1:
        mass, smallest_kept = 0.0, None
        for i in np.argsort(-p, kind="stable"):
            if mass >= top_p:
                break
            mass, smallest_kept = mass + p[i], p[i]
        p = np.where(p >= smallest_kept, p, 0.0)
        p /= p.sum()
    if min_p:
        p = np.where(p >= min_p * p.max(), p, 0.0)
        p /= p.sum()
    return p


FILTERS = st.fixed_dictionaries(dict(
    temperature=st.sampled_from([0.0, 0.5, 1.0, 1.7]),
    top_k=st.sampled_from([0, 1, 3, 10, 40]),
    top_p=st.sampled_from([1.0, 0.95, 0.6, 0.2, 1e-3]),
    min_p=st.sampled_from([0.0, 0.05, 0.3]),
))


@settings(max_examples=60, deadline=None, derandomize=True)
@given(FILTERS, st.integers(0, 2**31 - 1))
def test_token_distribution_matches_the_definition(filters, seed):
    logits = 2.0 * np.random.RandomState(seed).standard_normal((3, 23)).astype(np.float32)
    cfg = SamplerConfig(max_new_tokens=1, **filters)
    got = np.exp(np.asarray(token_distribution(logits, cfg), np.float64))
    for row, g in zip(logits, got):
        expected = reference_distribution(row, **filters)
        np.testing.assert_array_equal(g > 0, expected > 0)  # the same kept set
        np.testing.assert_allclose(g, expected, atol=2e-6, rtol=0)


@pytest.mark.parametrize("top_p", [0.05, 0.5, 0.9, 0.999])
def test_top_p_on_a_large_vocabulary_with_ties_and_filtered_tokens(top_p):
    """The top-p cut over 2000 tokens (no top-k, so no sort: bisection) keeps the definition's set:
    logits rounded to quarters (many ties), some already filtered out (-inf), batched [2, 3, V]."""
    rng = np.random.RandomState(int(top_p * 1000))
    logits = np.round(4 * rng.standard_normal((2, 3, 2000))) / 4
    logits[rng.rand(*logits.shape) < 0.1] = -np.inf
    cfg = SamplerConfig(max_new_tokens=1, top_p=top_p)
    got = np.exp(np.asarray(token_distribution(logits.astype(np.float32), cfg), np.float64))
    for row, g in zip(logits.reshape(-1, 2000), got.reshape(-1, 2000)):
        finite = np.isfinite(row)
        expected = np.zeros(2000)
        expected[finite] = reference_distribution(row[finite], 1.0, top_p=top_p)
        np.testing.assert_array_equal(g > 0, expected > 0)
        np.testing.assert_allclose(g, expected, atol=2e-6, rtol=0)


def test_ties_at_the_cut_are_kept():
    logits = np.log(np.array([[0.4, 0.2, 0.2, 0.1, 0.1]], np.float32))
    kept = lambda **kw: np.isfinite(np.asarray(token_distribution(logits, SamplerConfig(max_new_tokens=1, **kw))))[0]
    np.testing.assert_array_equal(kept(top_k=2), [1, 1, 1, 0, 0])
    np.testing.assert_array_equal(kept(top_p=0.5), [1, 1, 1, 0, 0])


def test_sample_token_logp_is_that_of_the_drawn_token():
    logits = np.random.RandomState(0).standard_normal((5, 11)).astype(np.float32)
    cfg = SamplerConfig(max_new_tokens=1, temperature=0.8, top_k=6)
    keys = jax.random.split(jax.random.key(0), 5)
    tokens, logp = sample_token(keys, logits, cfg)
    full = np.asarray(token_distribution(logits, cfg))
    np.testing.assert_array_equal(logp, full[np.arange(5), np.asarray(tokens)])


# Fixed logits without ties; each configuration below keeps a different set.
LOGITS = np.array([2.0, 1.6, 1.3, 0.9, 0.4, 0.1, -0.3, -0.8, -1.5, -2.5], np.float32)
CHI2_CASES = {
    "temperature-1": dict(temperature=1.0),
    "temperature-0.6": dict(temperature=0.6),
    "top-k": dict(temperature=1.5, top_k=4),
    "top-p": dict(temperature=1.0, top_p=0.8),
    "min-p": dict(temperature=1.0, min_p=0.15),
    "all": dict(temperature=0.8, top_k=7, top_p=0.9, min_p=0.05),
}
FALSE_ALARM = 1e-4  # per case; with 6 cases a correct sampler fails this file with probability < 6e-4


@pytest.mark.parametrize("case", sorted(CHI2_CASES))
def test_empirical_next_token_distribution_matches_filtered_softmax(case):
    """4000 samples x 4 steps of a model whose next-token logits never change: 16000 independent
    draws, compared with the filtered softmax by a chi-square goodness-of-fit test (fixed seed)."""
    filters = CHI2_CASES[case]
    cfg = SamplerConfig(max_new_tokens=4, num_samples=4000, new_token_buckets=(4,), **filters)
    graphdef, params = nnx.split(Constant(LOGITS), nnx.Param)
    r = sample(graphdef, params, np.zeros((1, 1), np.int32), np.ones((1, 1), bool), jax.random.key(7), cfg=cfg)
    draws = np.asarray(r.tokens)[:, r.prompt_len:].ravel()
    assert np.asarray(r.completion_mask)[:, r.prompt_len:].all()
    expected = reference_distribution(LOGITS, **filters)
    counts = np.bincount(draws, minlength=LOGITS.size)
    assert (counts[expected == 0] == 0).all(), "a filtered-out token was drawn"
    support = expected > 0
    chi2 = (((counts - draws.size * expected)[support]) ** 2 / (draws.size * expected[support])).sum()
    assert chi2 < stats.chi2.ppf(1 - FALSE_ALARM, df=support.sum() - 1), (chi2, counts, expected)
    # And each draw's recorded log-probability is the filtered softmax's.
    np.testing.assert_allclose(np.asarray(r.logp)[:, r.prompt_len:].ravel(), np.log(expected[draws]), atol=1e-5)


def test_draw_matches_its_weights_on_a_blocked_vocabulary():
    """``draw`` (two-level inverse CDF) on 300 tokens (blocks of 32, the last one padded), a third of
    them with zero weight and a 10^4 range of probabilities: 400000 draws from independent
    per-row keys never hit a zero-weight token and pass a chi-square test; each block's mass too."""
    rng = np.random.RandomState(3)
    logits = rng.uniform(-6.0, 3.0, 300).astype(np.float32)
    logits[rng.rand(300) < 1 / 3] = -np.inf
    expected = np.exp(logits.astype(np.float64) - logits.max())
    expected /= expected.sum()
    n = 400_000
    keys = jax.random.split(jax.random.key(11), n)
    tokens = np.asarray(jax.jit(lambda k: D.draw(np.broadcast_to(logits, (n, 300)), D.uniforms(k)))(keys))
    counts = np.bincount(tokens, minlength=300)
    assert tokens.min() >= 0 and tokens.max() < 300
    assert (counts[expected == 0] == 0).all(), "a zero-weight token was drawn"
    support = expected > 0
    chi2 = (((counts - n * expected)[support]) ** 2 / (n * expected[support])).sum()
    assert chi2 < stats.chi2.ppf(1 - FALSE_ALARM, df=support.sum() - 1), chi2


def test_draw_picks_only_positive_weights_at_the_ends_of_the_unit_interval():
    w = np.full((4, 50), -np.inf, np.float32)
    w[:, [3, 17, 40]] = [0.0, -1.0, -2.0]  # first and last positive tokens: 3 and 40
    top = np.float32(1.0) - np.float32(2.0 ** -24)
    u = np.array([[0.0, 0.0], [top, top], [0.0, top], [top, 0.0]], np.float32)
    np.testing.assert_array_equal(D.draw(w, u), [3, 40, 3, 40])
