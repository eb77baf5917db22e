"""StableOPD's reference anchor (StableOPDConfig) and DASD's divergence-aware selection
(DASDConfig) against closed forms and float64 oracles. The anchor: the expected gradient of
each estimator as a loss on the student's own tokens (enumerated over the vocabulary) is the
gradient of the KL it names; the recipe is OPD plus ref_coef times the estimator (ref_coef 0:
OPD's gradient exactly); a batch without the reference log-probs; configuration checks. DASD:
the kept sequences and their NLL against NumPy, no gradient to the dropped ones, keep-all = SFT."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import opd_jax.objectives as O
from tests.objectives.conftest import make_batch
from tests.objectives.test_recipes import SHAPE, recipe_loss

V = 7


def anchor_loss(cfg, z, ref_logits, y):
    """The recipe's loss on one position whose sampled token is ``y``, with the teacher equal to
    the sampler (advantage 0: only the anchor has a gradient) and the behaviour log-prob the
    student's own at ``z`` (on-policy)."""
    tokens = jnp.full((1, 1), y, jnp.int32)
    mask = jnp.ones((1, 1), bool)
    logits = z[None, None]
    extras = {"behavior_logp": jax.lax.stop_gradient(O.token_logp(logits, tokens)),
              "ref_logp": O.token_logp(ref_logits[None, None], tokens)}
    obj = O.build_objective(cfg)
    feats = O.compute_features(obj.features, tokens=tokens, mask=mask, logits=logits,
                               teacher_logits=jax.lax.stop_gradient(logits), extras=extras)
    ctx = O.TokenCtx(mask=mask, features=feats, extras=extras)
    return O.total(obj.apply(ctx, obj.init())[0])


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("estimator", ["k2", "k3"])
def test_expected_gradient_is_the_named_kl(estimator, seed):
    rng = np.random.default_rng(seed)
    z = rng.normal(size=V) * 1.5
    r = rng.normal(size=V) * 1.5
    p = np.exp(z - np.logaddexp.reduce(z))
    q = np.exp(r - np.logaddexp.reduce(r))
    cfg = O.StableOPDConfig(ref_coef=1.0, ref_estimator=estimator)
    grad = jax.grad(anchor_loss, argnums=1)
    expected = sum(p[y] * np.asarray(grad(cfg, jnp.asarray(z, jnp.float32), jnp.asarray(r, jnp.float32), y),
                                      np.float64) for y in range(V))
    if estimator == "k2":  # d/dz KL(p || ref) = p (log p - log ref - KL(p || ref))
        kl = np.sum(p * (np.log(p) - np.log(q)))
        want = p * (np.log(p) - np.log(q) - kl)
    else:  # d/dz KL(ref || p) = p - ref
        want = p - q
    np.testing.assert_allclose(expected, want, rtol=1e-4, atol=1e-6)


def test_it_is_opd_plus_the_scaled_estimator():
    b = make_batch(0, **SHAPE)
    z, zt = b["hidden"] @ b["head"], b["t_hidden"] @ b["t_head"]
    m = b["mask"]
    lp = O.token_logp(z, b["tokens"])
    for est in ("k2", "k3"):
        got = recipe_loss(O.StableOPDConfig(ref_coef=0.3, ref_estimator=est), b, z, zt)[0]
        opd = recipe_loss(O.OPDConfig(), b, z, zt)[0]
        kl = O.sampled_kl(lp, b["extras"]["ref_logp"], estimator=est, where=m)
        np.testing.assert_allclose(got, opd + 0.3 * jnp.sum(kl) / jnp.sum(m), rtol=1e-5)
    zero = jax.grad(lambda a: recipe_loss(O.StableOPDConfig(ref_coef=0.0), b, a, zt)[0])(z)
    np.testing.assert_array_equal(zero, jax.grad(lambda a: recipe_loss(O.OPDConfig(), b, a, zt)[0])(z))


def test_a_batch_without_the_reference_is_a_clear_error():
    b = make_batch(0, **SHAPE)
    extras = {k: v for k, v in b["extras"].items() if k != "ref_logp"}
    with pytest.raises(KeyError, match="ref_logp"):
        recipe_loss(O.StableOPDConfig(), b, b["hidden"] @ b["head"], b["t_hidden"] @ b["t_head"], extras=extras)


@pytest.mark.parametrize("bad", [dict(ref_coef=-0.1), dict(ref_coef=float("nan")), dict(ref_estimator="k1")])
def test_bad_settings_are_refused(bad):
    with pytest.raises(ValueError, match="ref_coef|ref_estimator"):
        O.StableOPDConfig(**bad)


# ------------------------------------------------------------------ DASD's selection


def dasd_oracle(lp, lq, mask, q):
    """float64: the kept sequences (mean log q - log p at least the batch's q-quantile, NumPy's
    linear interpolation over the sequences with a valid token) and their mean NLL."""
    lp, lq, m = np.asarray(lp, np.float64), np.asarray(lq, np.float64), np.asarray(mask, bool)
    n = m.sum(-1)
    score = np.where(m, lq - lp, 0.0).sum(-1) / np.maximum(n, 1)
    has = n > 0
    keep = has & (score >= np.quantile(score[has], q))
    kept = m & keep[:, None]
    return keep, float(-(lp * kept).sum() / kept.sum())


@pytest.mark.parametrize("q", [0.0, 0.3, 0.5, 0.9])
@pytest.mark.parametrize("seed", [0, 1])
def test_dasd_keeps_the_most_divergent_sequences_and_fits_them(q, seed):
    b = make_batch(seed, b=6, t=5, d=8, v=12)
    z, zt = b["hidden"] @ b["head"], b["t_hidden"] @ b["t_head"]
    (loss, metrics), grad = jax.value_and_grad(
        lambda a: recipe_loss(O.DASDConfig(keep_quantile=q), b, a, zt), has_aux=True)(z)
    lp, lq = O.token_logp(z, b["tokens"]), O.token_logp(zt, b["tokens"])
    keep, want = dasd_oracle(lp, lq, b["mask"], q)
    np.testing.assert_allclose(float(loss), want, rtol=1e-5)
    assert float(metrics["dasd/kept_seq_frac"]) == pytest.approx(keep.mean())
    # the dropped sequences get no gradient; the kept ones the NLL's
    g = np.asarray(grad)
    assert np.all(g[~keep] == 0.0) and np.any(g[keep] != 0.0)
    if q == 0.0:  # keep everything: plain SFT
        sft = recipe_loss(O.SFTConfig(), b, z, zt)[0]
        np.testing.assert_allclose(float(loss), float(sft), rtol=1e-6)


def test_dasd_refuses_a_bad_quantile():
    for bad in (-0.1, 1.0, float("nan")):
        with pytest.raises(ValueError, match="keep_quantile"):
            O.DASDConfig(keep_quantile=bad)
