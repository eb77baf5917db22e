"""Bad input fails while tracing (before any compilation), with a message naming the problem."""

import jax
import jax.numpy as jnp
import pytest

import opd_jax.objectives as O

Z = jnp.zeros((2, 3, 8))
ZT = jnp.zeros((2, 3, 8))
TOK = jnp.zeros((2, 3), jnp.int32)
MASK = jnp.ones((2, 3), bool)


def jitted(fn, *args, **kwargs):
    return jax.jit(lambda *a: fn(*a, **kwargs))(*args)


@pytest.mark.parametrize("fn", [O.forward_kl, O.reverse_kl, O.generalized_jsd, O.total_variation])
def test_vocabulary_mismatch(fn):
    with pytest.raises(ValueError, match=r"vocabulary sizes differ: logits has V=8, teacher_logits has V=9"):
        jitted(fn, Z, jnp.zeros((2, 3, 9)))


def test_vocabulary_mismatch_topk_and_vocab_phase():
    with pytest.raises(ValueError, match="vocabulary sizes differ"):
        jitted(O.student_topk_reverse_kl_sg, Z, jnp.zeros((2, 3, 9)), k=2)
    obj = O.build_objective(O.GKDConfig())
    with pytest.raises(ValueError, match="vocabulary sizes differ: student V=8, teacher V=9"):
        O.compute_features(obj.features, tokens=TOK, mask=MASK, hidden=jnp.zeros((2, 3, 4)),
                           head=jnp.zeros((4, 8)), teacher_hidden=jnp.zeros((2, 3, 4)),
                           teacher_head=jnp.zeros((4, 9)))


def test_shape_mismatches_name_the_arguments():
    with pytest.raises(ValueError, match=r"shapes differ: logits \(2, 3, 8\) vs teacher_logits \(3, 2, 8\)"):
        jitted(O.reverse_kl, Z, jnp.zeros((3, 2, 8)))
    with pytest.raises(ValueError, match=r"where has shape \(3,\), expected \(2, 3\)"):
        O.reverse_kl(Z, ZT, where=jnp.ones((3,), bool))
    with pytest.raises(ValueError, match=r"tokens has shape \(2,\)"):
        O.token_logp(Z, jnp.zeros((2,), jnp.int32))
    with pytest.raises(TypeError, match="tokens must be integer ids"):
        O.token_logp(Z, jnp.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"logp \(2, 3\), behavior_logp \(2,\)"):
        O.importance_sampling_loss(jnp.zeros((2, 3)), jnp.zeros((2,)), jnp.zeros((2, 3)))


@pytest.mark.parametrize("beta", [-0.1, 1.5])
def test_beta_outside_unit_interval(beta):
    with pytest.raises(ValueError, match=f"beta must lie in \\[0, 1\\], got {beta}"):
        jitted(O.generalized_jsd, Z, ZT, beta=beta)
    with pytest.raises(ValueError, match="beta must lie in"):
        O.GKDConfig(beta=beta)


@pytest.mark.parametrize("t", [0.0, -1.0])
def test_non_positive_temperature(t):
    for fn in (O.forward_kl, O.reverse_kl, O.generalized_jsd):
        with pytest.raises(ValueError, match=f"temperature must be > 0, got {t}"):
            jitted(fn, Z, ZT, temperature=t)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        O.token_entropy(Z, temperature=t)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        O.OPDConfig(temperature=t)


@pytest.mark.parametrize("fn", [O.teacher_topk_forward_kl, O.student_topk_reverse_kl,
                                O.student_topk_reverse_kl_sg, O.student_topk_reverse_kl_tail,
                                O.intersect_topk_reverse_kl, O.topk_opd_loss])
def test_k_larger_than_the_vocabulary(fn):
    with pytest.raises(ValueError, match=r"k=9 must lie in \[1, V\] with V=8"):
        jitted(fn, Z, ZT, k=9)


def test_sparse_teacher_with_too_few_entries():
    top = O.teacher_topk(ZT, k=3)
    with pytest.raises(ValueError, match="k=5 exceeds the 3 entries the sparse teacher sent"):
        O.teacher_topk_forward_kl(Z, top, k=5)
    with pytest.raises(TypeError, match="k must be a Python int"):
        O.teacher_topk(ZT, k=3.0)


def test_config_errors():
    with pytest.raises(ValueError, match=r"unknown objective 'opdd'; known: \['aopd'"):
        O.make_config("opdd")
    with pytest.raises(ValueError, match=r"objective 'eopd' has no field\(s\) \['taus'\]"):
        O.make_config("eopd", taus=0.5)
    with pytest.raises(ValueError, match=r"surrogate must be one of \('is', 'ppo'\), got 'ppo2'"):
        O.OPDConfig(surrogate="ppo2")
    with pytest.raises(ValueError, match=r"lam must lie in \(0, 1\)"):
        O.REOPOLDConfig(lam=1.0)
    with pytest.raises(ValueError, match=r"frac must lie in \(0, 1\]"):
        O.TIPConfig(frac=0.0)
    with pytest.raises(TypeError, match="not an objective config"):
        O.build_objective(object())


def test_sparse_teacher_recipes_that_need_logits_fail_early():
    with pytest.raises(ValueError, match=r"objective 'gkd' needs full teacher logits for \['jsd'\]"):
        O.build_objective(O.GKDConfig(), dense_teacher=False)
    O.build_objective(O.SGTopKConfig(), dense_teacher=False)  # fine: top-k only
    obj = O.build_objective(O.GKDConfig())
    with pytest.raises(ValueError, match=r"features \['jsd'\] need dense teacher logits"):
        O.compute_features(obj.features, tokens=TOK, mask=MASK, logits=Z,
                           teacher_topk=O.teacher_topk(ZT, k=2))


def test_vocab_phase_argument_errors():
    obj = O.build_objective(O.SFTConfig())
    with pytest.raises(ValueError, match="exactly one of `logits` or"):
        O.compute_features(obj.features, tokens=TOK, mask=MASK)
    with pytest.raises(ValueError, match="tokens and mask must both be"):
        O.compute_features(obj.features, tokens=TOK[0], mask=MASK, logits=Z)
    with pytest.raises(ValueError, match="chunk_size must be >= 1"):
        O.compute_features(obj.features, tokens=TOK, mask=MASK, logits=Z, chunk_size=0)
    with pytest.raises(ValueError, match="extras must start with"):
        O.fused_token_loss(obj.token_loss, obj.features, tokens=TOK, mask=MASK, weights=MASK,
                           hidden=jnp.zeros((2, 3, 4)), head=jnp.zeros((4, 8)),
                           extras={"behavior_logp": jnp.zeros((3, 2))})
    ctx = O.TokenCtx(mask=MASK, features={"logp": jnp.zeros((2, 3))})
    with pytest.raises(KeyError, match=r"'behavior_logp' is neither a feature \(\['logp'\]\)"):
        ctx.behavior_logp
