"""SimCT's virtual-vocabulary reverse KL (SimCTConfig, opd_jax.objectives.virtual_vocab) against a
float64 NumPy construction of the virtual distributions, its gradient against autodiff of a direct
JAX construction, the exact reverse KL when every span is one shared token and the support is the
whole vocabulary, span_dims=False, and the span mean."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import opd_jax.objectives as O
from opd_jax.objectives import virtual_vocab as VV

B, T, V, K = 2, 7, 11, 5
# Spans of each row as (first, last) student positions; position 6 of row 1 is padding.
SPANS = [[(0, 0), (1, 3), (4, 4), (5, 6)], [(0, 1), (2, 2), (3, 5)]]


def lsm(x):
    return x - np.logaddexp.reduce(x, axis=-1, keepdims=True)


def problem(seed, *, span_dims=True, k=K):
    """Random student logits, a teacher's log-probs, the teacher's top-k ids at span starts and
    the extras, as the cross-tokenizer teacher sends them."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(B, T, V)) * 2.0
    lq = lsm(rng.normal(size=(B, T, V)) * 2.0)
    tokens = rng.integers(0, V, size=(B, T))
    mask = np.ones((B, T), bool)
    mask[1, 6] = False
    ids = np.zeros((B, T, k), np.int64)
    top = np.full((B, T, k), O.LOG_FLOOR)
    ex = {n: np.zeros((B, T), np.float32) for n in VV.VIRTUAL_INPUTS}
    ex[VV.XTOK_END] = np.zeros((B, T), np.int32)
    for b, spans in enumerate(SPANS):
        for first, last in spans:
            ids[b, first] = rng.permutation(V)[:k]  # the teacher's shared tokens there
            top[b, first] = lq[b, first, ids[b, first]]
            ex[VV.XTOK_START][b, first] = 1
            ex[VV.XTOK_END][b, first] = last
            ex[VV.XTOK_SPAN_DIM][b, first] = float(span_dims and (last > first or rng.random() < 0.5))
            ex[VV.XTOK_SPAN_LOGP][b, first] = rng.uniform(-4, -0.1)
            ex[VV.XTOK_LOG_MASS][b, first] = np.logaddexp.reduce(top[b, first])
    return z, tokens, mask, O.TeacherTopK(jnp.asarray(ids, jnp.int32), jnp.asarray(top, jnp.float32)), ex


def recipe_loss(cfg, z, tokens, mask, topk, ex):
    obj = O.build_objective(cfg, dense_teacher=False)
    extras = {k: jnp.asarray(v) for k, v in ex.items()}
    feats = O.compute_features(obj.features, tokens=jnp.asarray(tokens), mask=jnp.asarray(mask),
                               logits=z, teacher_topk=topk, extras=extras)
    ctx = O.TokenCtx(mask=jnp.asarray(mask), features=feats, extras=extras)
    terms, _, metrics = obj.apply(ctx, obj.init())
    return O.total(terms), metrics


def oracle(z, tokens, topk, ex, temperature=1.0, span_logit="logit"):
    """Mean over span starts of KL(p~ || q~), each side's virtual distribution built explicitly
    (the student's from its raw logits, or its log-probs)."""
    zt = np.asarray(z, np.float64) / temperature
    lp = zt if span_logit == "logit" else lsm(zt)
    ids, top = np.asarray(topk.ids), np.asarray(topk.logp, np.float64)
    kls = []
    for b, spans in enumerate(SPANS):
        for first, last in spans:
            own = lp[b, np.arange(first, last + 1), tokens[b, first:last + 1]]
            a, q = lp[b, first, ids[b, first]], top[b, first]
            if ex[VV.XTOK_SPAN_DIM][b, first]:
                a, q = np.append(a, own.mean()), np.append(q, ex[VV.XTOK_SPAN_LOGP][b, first])
            a, q = lsm(a), lsm(q)
            kls.append(np.sum(np.exp(a) * (a - q)))
    return np.mean(kls)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("span_logit", ["logit", "logprob"])
def test_loss_is_the_reverse_kl_of_the_virtual_distributions(seed, temperature, span_logit):
    z, tokens, mask, topk, ex = problem(seed)
    cfg = O.SimCTConfig(temperature=temperature, span_logit=span_logit)
    loss, metrics = recipe_loss(cfg, jnp.asarray(z, jnp.float32), tokens, mask, topk, ex)
    np.testing.assert_allclose(float(loss), oracle(z, tokens, topk, ex, temperature, span_logit),
                               rtol=2e-5, atol=2e-6)
    dims = [ex[VV.XTOK_SPAN_DIM][b, f] for b, s in enumerate(SPANS) for f, _ in s]
    np.testing.assert_allclose(float(metrics["simct/span_dims"]), np.mean(dims), rtol=1e-6)


@pytest.mark.parametrize("seed", [3, 4])
@pytest.mark.parametrize("span_logit", ["logit", "logprob"])
def test_gradient_matches_a_direct_construction(seed, span_logit):
    """Autodiff of the decomposed loss equals autodiff of the virtual distributions built directly
    (the span dimension's gradient reaches every token of its span)."""
    z, tokens, mask, topk, ex = problem(seed)

    def direct(z):
        lp = z if span_logit == "logit" else jax.nn.log_softmax(z, axis=-1)
        kls = []
        for b, spans in enumerate(SPANS):
            for first, last in spans:
                own = lp[b, jnp.arange(first, last + 1), tokens[b, first:last + 1]]
                a, q = lp[b, first, topk.ids[b, first]], topk.logp[b, first]
                if ex[VV.XTOK_SPAN_DIM][b, first]:
                    a = jnp.append(a, own.mean())
                    q = jnp.append(q, ex[VV.XTOK_SPAN_LOGP][b, first])
                a, q = jax.nn.log_softmax(a), jax.nn.log_softmax(q)
                kls.append(jnp.sum(jnp.exp(a) * (a - q)))
        return jnp.mean(jnp.stack(kls))

    z = jnp.asarray(z, jnp.float32)
    cfg = O.SimCTConfig(span_logit=span_logit)
    got = jax.grad(lambda z: recipe_loss(cfg, z, tokens, mask, topk, ex)[0])(z)
    want = jax.grad(direct)(z)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-4, atol=1e-6)
    assert float(jnp.abs(got[1, 6]).max()) == 0.0  # padding


def test_one_shared_token_spans_over_the_whole_vocabulary_give_the_exact_reverse_kl():
    """One tokenizer on both sides: every span is one shared token, A is the vocabulary, and the
    loss is GKD(beta=1)'s exact reverse KL, gradient included."""
    rng = np.random.default_rng(5)
    z = jnp.asarray(rng.normal(size=(B, T, V)) * 2, jnp.float32)
    zt = jnp.asarray(rng.normal(size=(B, T, V)) * 2, jnp.float32)
    tokens = jnp.asarray(rng.integers(0, V, size=(B, T)))
    mask = jnp.asarray(np.arange(T)[None] < np.array([[T], [4]]))
    topk = O.teacher_topk(zt, k=V)  # the whole vocabulary, sorted
    ex = {VV.XTOK_START: mask.astype(jnp.float32), VV.XTOK_END: jnp.broadcast_to(jnp.arange(T), (B, T)),
          VV.XTOK_SPAN_DIM: jnp.zeros((B, T)), VV.XTOK_SPAN_LOGP: jnp.zeros((B, T)),
          VV.XTOK_LOG_MASS: jax.nn.logsumexp(topk.logp, axis=-1)}

    def exact(z):
        obj = O.build_objective(O.GKDConfig(beta=1.0))
        feats = O.compute_features(obj.features, tokens=tokens, mask=mask, logits=z, teacher_logits=zt)
        return O.total(obj.apply(O.TokenCtx(mask=mask, features=feats), obj.init())[0])

    ours = lambda z: recipe_loss(O.SimCTConfig(), z, tokens, mask, topk, ex)[0]  # noqa: E731
    np.testing.assert_allclose(float(ours(z)), float(exact(z)), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(jax.grad(ours)(z)), np.asarray(jax.grad(exact)(z)), rtol=1e-4,
                               atol=1e-7)


def test_without_span_dims_it_is_the_renormalised_reverse_kl_on_the_shared_tokens():
    z, tokens, mask, topk, ex = problem(6)
    off = dict(ex, **{VV.XTOK_SPAN_DIM: np.zeros((B, T), np.float32)})
    got, metrics = recipe_loss(O.SimCTConfig(span_dims=False), jnp.asarray(z, jnp.float32), tokens, mask,
                               topk, ex)
    np.testing.assert_allclose(float(got), oracle(z, tokens, topk, off), rtol=2e-5)
    assert float(metrics["simct/span_dims"]) == 0.0


def test_padded_positions_contribute_nothing_whatever_they_hold():
    z, tokens, mask, topk, ex = problem(7)
    pad = ~mask

    def loss(z, ids, logp, ex):
        return recipe_loss(O.SimCTConfig(), z, tokens, mask, O.TeacherTopK(ids, logp), ex)[0]
    step = jax.value_and_grad(loss)
    clean = step(jnp.asarray(z, jnp.float32), topk.ids, topk.logp, ex)
    dz = np.where(pad[..., None], np.nan, z)
    dl = np.where(pad[..., None], -np.inf, np.asarray(topk.logp))
    dex = {k: np.where(pad, (np.nan if v.dtype.kind == "f" else 99), v).astype(v.dtype) for k, v in ex.items()}
    dirty = step(jnp.asarray(dz, jnp.float32), topk.ids, jnp.asarray(dl, jnp.float32), dex)
    np.testing.assert_allclose(dirty[0], clean[0], rtol=1e-6)
    np.testing.assert_allclose(dirty[1], clean[1], rtol=1e-6, atol=1e-8)
    assert np.all(np.asarray(dirty[1])[pad] == 0.0)


def test_the_logit_form_moves_with_a_shift_of_one_positions_logits_and_the_logprob_form_does_not():
    z, tokens, mask, topk, ex = problem(9)
    shifted = z.copy()
    shifted[0, 2] += 3.0  # inside the span (1, 3) of row 0
    for form, moves in (("logit", True), ("logprob", False)):
        cfg = O.SimCTConfig(span_logit=form)
        a, b = (float(recipe_loss(cfg, jnp.asarray(x, jnp.float32), tokens, mask, topk, ex)[0]) for x in (z, shifted))
        assert (abs(a - b) > 1e-4) == moves


def test_span_mean():
    x = jnp.asarray([[1.0, 2.0, 3.0, 4.0, 100.0]])
    end = jnp.asarray([[2, 0, 3, 3, 4]])
    where = jnp.asarray([[True, True, True, True, False]])
    np.testing.assert_allclose(np.asarray(VV.span_mean(x, end, where)), [[2.0, 0.0, 3.5, 4.0, 0.0]])


def test_config_and_inputs():
    assert O.required_inputs(O.SimCTConfig()) == frozenset(VV.VIRTUAL_INPUTS)
    z, tokens, mask, topk, ex = problem(8)
    z = jnp.asarray(z, jnp.float32)
    base = recipe_loss(O.SimCTConfig(), z, tokens, mask, topk, ex)[0]
    other = recipe_loss(O.SimCTConfig(), z, tokens, mask, topk._replace(logp=topk.logp * 1.5), ex)[0]
    assert O.reads_teacher(O.SimCTConfig()) and float(base) != float(other)
    assert not O.needs_behavior_logp(O.SimCTConfig())  # it reads no behaviour log-prob at all
    assert "behavior_logp" not in ex
    with pytest.raises(ValueError, match="span_dims"):
        O.SimCTConfig(span_dims="yes")
    with pytest.raises(ValueError, match="span_logit"):
        O.SimCTConfig(span_logit="probs")
    assert O.recipe_name(O.make_config("simct", span_dims=False)) == "simct"
