"""TRB's geometric blend (``teacher_blend="geometric"``): the teacher weight against an independent
root finder in float64, the draw's law and its recorded log-probabilities, and the sampler's
rollouts against a full-forward rescoring of both models."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from scipy.optimize import brentq
from scipy.special import log_softmax

from sampling_helpers import left_padded, split_model
from opd_jax.sampling import SamplerConfig, distribution as D, sample


def _kl64(zs, zt, beta, temperature):
    """KL(mu_beta || p) per row in float64, straight from the definition."""
    lp = log_softmax(zs / temperature, axis=-1)
    lm = log_softmax(((1 - beta) * zs + beta * zt) / temperature, axis=-1)
    return np.sum(np.exp(lm) * (lm - lp), axis=-1)


def _beta64(zs, zt, budget, temperature):
    """The largest feasible beta by Brent's method on KL(beta) - budget (one row)."""
    f = lambda b: _kl64(zs, zt, b, temperature) - budget  # noqa: E731
    return 1.0 if f(1.0) <= 0 else brentq(f, 0.0, 1.0, xtol=1e-12)


def _logits(rows, vocab, seed, scale=2.0):
    rng = np.random.default_rng(seed)
    return ((rng.normal(size=(rows, vocab)) * scale).astype(np.float32),
            (rng.normal(size=(rows, vocab)) * scale).astype(np.float32))


@pytest.mark.parametrize("temperature", [1.0, 0.6])
@pytest.mark.parametrize("budget", [0.003, 0.05, 0.5, 5.0])
def test_blend_weight_is_the_largest_beta_within_the_budget(budget, temperature):
    zs, zt = _logits(6, 40, seed=1)
    beta = np.asarray(D.blend_weight(jnp.asarray(zs), jnp.asarray(zt), budget, temperature))
    want = np.array([_beta64(zs[r].astype(np.float64), zt[r].astype(np.float64), budget, temperature)
                     for r in range(len(zs))])
    np.testing.assert_allclose(beta, want, atol=2e-4, rtol=0)
    kl = _kl64(zs.astype(np.float64), zt.astype(np.float64), beta[:, None], temperature)
    assert (kl <= budget * (1 + 1e-4) + 1e-6).all()
    # the blend's KL as the library computes it, against the float64 one
    np.testing.assert_allclose(np.asarray(D.blend_kl(jnp.asarray(zs), jnp.asarray(zt), jnp.asarray(beta),
                                                     temperature)), kl, atol=1e-5, rtol=1e-4)


def test_blend_weight_extremes():
    zs, zt = _logits(4, 30, seed=2)
    zs_, zt_ = jnp.asarray(zs), jnp.asarray(zt)
    assert (np.asarray(D.blend_weight(zs_, zt_, 0.0, 1.0)) == 0).all()  # no budget: the student
    assert (np.asarray(D.blend_weight(zs_, zt_, 1e3, 1.0)) == 1).all()  # the teacher fits in the budget
    # a teacher whose logits differ by a constant per row is the same distribution: beta 1
    same = zs_ + jnp.arange(4, dtype=jnp.float32)[:, None]
    assert (np.asarray(D.blend_weight(zs_, same, 1e-3, 1.0)) == 1).all()
    # more budget never lowers beta
    betas = [np.asarray(D.blend_weight(zs_, zt_, b, 1.0)) for b in (0.01, 0.1, 1.0)]
    assert (np.diff(np.stack(betas), axis=0) >= 0).all()


@pytest.mark.parametrize("top_k", [0, 3])
def test_geometric_choice_draws_from_the_blend_and_records_its_log_probabilities(top_k):
    """20,000 draws from one pair of 6-token distributions: frequencies within 4.5 sigma of the
    blend's law (a false alarm has probability below 1e-4), and each draw's recorded log-probs."""
    n, vocab, budget = 20_000, 6, 0.1
    cfg = SamplerConfig(max_new_tokens=1, top_k=top_k, teacher_blend="geometric")
    zs = np.array([2.0, 1.0, 0.5, 0.0, -1.0, -3.0], np.float32)
    zt = np.array([-1.0, 0.5, 2.5, 0.0, 1.0, -2.0], np.float32)
    keys = jax.random.split(jax.random.key(7), n)
    tokens, logp, extras = D.choose(cfg, keys, jnp.tile(zs, (n, 1)), jnp.tile(zt, (n, 1)), jnp.float32(budget))
    tokens, logp = np.asarray(tokens), np.asarray(logp)
    beta = _beta64(zs.astype(np.float64), zt.astype(np.float64), budget, 1.0)
    np.testing.assert_allclose(np.asarray(extras["teacher_weight"]), beta, atol=2e-4)
    blend = (1 - beta) * zs + beta * zt
    law = log_softmax(blend)
    if top_k:
        kept = np.argsort(-blend)[:top_k]
        law = np.full(vocab, -np.inf)
        law[kept] = log_softmax(blend[kept])
    np.testing.assert_allclose(logp, law[tokens], atol=1e-4)
    p = np.exp(law)
    freq = np.bincount(tokens, minlength=vocab) / n
    assert (np.abs(freq - p) <= 4.5 * np.sqrt(p * (1 - p) / n) + 1e-12).all()

    def own(z):
        lp = log_softmax(z.astype(np.float64))
        if top_k:
            cut = np.sort(lp)[-top_k]
            lp = np.where(lp >= cut, lp - np.log(np.sum(np.exp(lp[lp >= cut]))), -np.inf)
        return lp[tokens]
    np.testing.assert_allclose(np.asarray(extras["student_logp"]), own(zs), atol=1e-5)
    np.testing.assert_allclose(np.asarray(extras["teacher_logp"]), own(zt), atol=1e-5)


@pytest.mark.parametrize("temperature", [1.0, 0.0])
def test_sampled_rollouts_record_the_blend_of_both_models(temperature):
    """Real tiny models of two families: every recorded behaviour log-prob and teacher weight equals
    the blend rebuilt from one full forward of each model (greedy: the blend's arg-max)."""
    cfg = SamplerConfig(max_new_tokens=10, num_samples=2, eos_ids=(3,), temperature=temperature,
                        teacher_blend="geometric")
    _, g, p = split_model("qwen3")
    _, tg, tp = split_model("llama", seed=1)
    tokens, mask = left_padded(97, (9, 5, 1), 9)
    budget = 0.05
    r = sample(g, p, tokens, mask, jax.random.key(2), cfg=cfg, teacher=(tg, tp), teacher_mix=budget)
    assert r.from_teacher is None
    zs, zt = (np.asarray(x, np.float64)[:, :-1] for x in jax.jit(
        lambda a, b, c: (nnx.merge(g, p)(a, c, mask=b)[0], nnx.merge(tg, tp)(a, c, mask=b)[0]))(
            r.tokens, r.mask, r.positions))
    cm = np.asarray(r.completion_mask)[:, 1:]
    nxt = np.asarray(r.tokens)[:, 1:]
    weight = np.asarray(r.teacher_weight)[:, 1:]
    t = temperature or 1.0
    rows, cols = np.nonzero(cm)
    assert len(rows) > 10 and (weight[cm] > 0).all() and (weight[cm] < 1).all()
    for i, j in zip(rows, cols):
        beta = _beta64(zs[i, j], zt[i, j], budget, t)
        assert abs(weight[i, j] - beta) < 2e-3
        blend = (1 - weight[i, j]) * zs[i, j] + weight[i, j] * zt[i, j]
        if temperature:
            assert abs(np.asarray(r.logp)[i, j + 1] - log_softmax(blend / t)[nxt[i, j]]) < 1e-4
            for field, z in (("student_logp", zs), ("teacher_logp", zt)):
                assert abs(np.asarray(getattr(r, field))[i, j + 1] - log_softmax(z[i, j])[nxt[i, j]]) < 1e-4
        else:
            assert nxt[i, j] == np.argmax(blend) and np.asarray(r.logp)[i, j + 1] == 0
    assert not np.asarray(r.teacher_weight)[~np.asarray(r.completion_mask)].any()


def test_a_zero_budget_samples_like_the_student_alone():
    cfg = SamplerConfig(max_new_tokens=10, num_samples=2, eos_ids=(3,), teacher_blend="geometric")
    _, g, p = split_model("qwen3")
    _, tg, tp = split_model("llama", seed=1)
    tokens, mask = left_padded(97, (9, 5, 1), 9)
    alone = sample(g, p, tokens, mask, jax.random.key(3), cfg=cfg)
    blended = sample(g, p, tokens, mask, jax.random.key(3), cfg=cfg, teacher=(tg, tp), teacher_mix=0.0)
    np.testing.assert_array_equal(blended.tokens, alone.tokens)
    np.testing.assert_allclose(blended.logp, alone.logp, atol=1e-5, rtol=0)
    assert not np.asarray(blended.teacher_weight).any()


def test_bad_blend_settings_are_refused_before_tracing():
    with pytest.raises(ValueError, match="teacher_blend"):
        SamplerConfig(max_new_tokens=4, teacher_blend="arithmetic")
    _, g, p = split_model("qwen3")
    _, tg, tp = split_model("llama", seed=1)
    tokens, mask = left_padded(97, (3,), 3)
    geometric = SamplerConfig(max_new_tokens=4, teacher_blend="geometric")
    for bad in (-0.1, math.inf, float("nan")):
        with pytest.raises(ValueError, match="KL budget"):
            sample(g, p, tokens, mask, jax.random.key(0), cfg=geometric, teacher=(tg, tp), teacher_mix=bad)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):  # a coin's chance is a probability
        sample(g, p, tokens, mask, jax.random.key(0), cfg=geometric.replace(teacher_blend="coin"),
               teacher=(tg, tp), teacher_mix=1.5)
