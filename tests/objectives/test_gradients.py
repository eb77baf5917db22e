"""Gradient identities and stop-gradient placement."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import opd_jax.objectives as O

sg = jax.lax.stop_gradient


def _pair(seed, v=6):
    k1, k2 = jax.random.split(jax.random.key(seed))
    return jax.random.normal(k1, (v,)) * 2.0, jax.random.normal(k2, (v,)) * 2.0


def _expected_pg_grad(z, zt, advantage_fn):
    """E_{y~p}[grad of the on-policy IS surrogate for token y], by enumerating the vocabulary."""
    v = z.shape[0]
    p = jax.nn.softmax(z)

    def grad_for(y):
        def loss(z_):
            logp = O.token_logp(z_, jnp.int32(y))
            teacher_logp = O.token_logp(zt, jnp.int32(y))
            adv = advantage_fn(z_, teacher_logp, logp)
            return O.importance_sampling_loss(logp, sg(logp), adv)
        return jax.grad(loss)(z)
    grads = jnp.stack([grad_for(y) for y in range(v)])
    return jnp.einsum("y,yv->v", p, grads)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sampled_token_pg_is_unbiased_for_reverse_kl(seed):
    """E_y~p[-sg(r_y) grad log p(y)] == grad KL(p||q), exactly (objectives.md §0)."""
    z, zt = _pair(seed)
    exact = jax.grad(lambda a: O.reverse_kl(a, zt))(z)
    est = _expected_pg_grad(z, zt, lambda z_, lt, lp: O.opd_advantage(lt, lp))
    np.testing.assert_allclose(est, exact, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("seed", [3, 4])
def test_vopd_baseline_keeps_the_expected_gradient(seed):
    z, zt = _pair(seed)
    exact = jax.grad(lambda a: O.reverse_kl(a, zt))(z)
    est = _expected_pg_grad(z, zt, lambda z_, lt, lp: O.vopd_advantage(lt, lp, O.reverse_kl(z_, zt)))
    np.testing.assert_allclose(est, exact, rtol=1e-5, atol=1e-6)


def test_vopd_baseline_lowers_the_gradient_variance():
    z, zt = _pair(5, v=8)
    p = np.asarray(jax.nn.softmax(z), np.float64)

    def per_token_grads(adv_fn):
        out = []
        for y in range(8):
            def loss(z_):
                logp = O.token_logp(z_, jnp.int32(y))
                return O.importance_sampling_loss(logp, sg(logp), adv_fn(z_, O.token_logp(zt, jnp.int32(y)), logp))
            out.append(np.asarray(jax.grad(loss)(z), np.float64))
        return np.stack(out)

    def variance(g):
        mean = np.einsum("y,yv->v", p, g)
        return float(np.einsum("y,y->", p, np.sum((g - mean) ** 2, -1)))
    plain = per_token_grads(lambda z_, lt, lp: O.opd_advantage(lt, lp))
    vopd = per_token_grads(lambda z_, lt, lp: O.vopd_advantage(lt, lp, O.reverse_kl(z_, zt)))
    assert variance(vopd) < variance(plain)


def test_ppo_and_is_agree_on_policy():
    z = jax.random.normal(jax.random.key(6), (4, 5))
    adv = jax.random.normal(jax.random.key(7), (4, 5))
    g_is = jax.grad(lambda a: jnp.sum(O.importance_sampling_loss(a, sg(a), adv)))(z)
    g_ppo = jax.grad(lambda a: jnp.sum(O.ppo_clip_loss(a, sg(a), adv, eps=0.2)))(z)
    np.testing.assert_allclose(g_ppo, g_is, rtol=1e-6)
    np.testing.assert_allclose(g_is, -adv, rtol=1e-6)  # d/dlogp of -A*exp(logp - sg(logp))


def test_ppo_clip_stops_the_gradient_outside_the_trust_region():
    logp = jnp.log(jnp.array([0.5, 0.5, 0.5, 0.5]))
    behavior = jnp.log(jnp.array([0.3, 0.3, 0.7, 0.7]))  # rho = 1.67, 1.67, 0.71, 0.71
    adv = jnp.array([1.0, -1.0, 1.0, -1.0])
    g = jax.grad(lambda a: jnp.sum(O.ppo_clip_loss(a, behavior, adv, eps=0.2)))(logp)
    rho = np.exp(np.asarray(logp - behavior))
    # clipped (zero gradient) where the ratio left [0.8, 1.2] in the direction the advantage favours
    np.testing.assert_allclose(g, [0.0, rho[1], -rho[2], 0.0], rtol=1e-5)


@pytest.mark.parametrize("seed", [8, 9])
def test_sg_topk_gradient_is_the_restricted_exact_gradient(seed):
    """d K^sg / dz_j = 1[j in S_k] p_j r_j - p_j sum_{S_k} p r (objectives.md §8)."""
    z, zt = _pair(seed, v=9)
    k = 4
    g = np.asarray(jax.grad(lambda a: O.student_topk_reverse_kl_sg(a, zt, k=k))(z), np.float64)
    lp = np.asarray(jax.nn.log_softmax(z), np.float64)
    lq = np.asarray(jax.nn.log_softmax(zt), np.float64)
    p, r = np.exp(lp), lp - lq
    top = np.argsort(-lp)[:k]
    ind = np.zeros(9)
    ind[top] = 1
    expected = ind * p * r - p * np.sum((p * r)[top])
    np.testing.assert_allclose(g, expected, rtol=1e-4, atol=1e-6)
    # with k = V it is the exact reverse-KL gradient
    np.testing.assert_allclose(jax.grad(lambda a: O.student_topk_reverse_kl_sg(a, zt, k=9))(z),
                               jax.grad(lambda a: O.reverse_kl(a, zt))(z), rtol=1e-4, atol=1e-6)


def test_plain_topk_gradient_adds_the_topk_mass_gradient():
    z, zt = _pair(10, v=9)
    k = 3
    g_plain = jax.grad(lambda a: O.student_topk_reverse_kl(a, zt, k=k))(z)
    g_sg = jax.grad(lambda a: O.student_topk_reverse_kl_sg(a, zt, k=k))(z)
    top = jax.lax.top_k(z, k)[1]
    g_mass = jax.grad(lambda a: jnp.sum(jax.nn.softmax(a)[top]))(z)
    np.testing.assert_allclose(g_plain - g_sg, g_mass, rtol=1e-4, atol=1e-6)


FUNCS = {
    "forward_kl": O.forward_kl, "reverse_kl": O.reverse_kl, "tv": O.total_variation,
    "jsd": lambda a, b: O.generalized_jsd(a, b, beta=0.3),
    "teacher_topk_fkl": lambda a, b: O.teacher_topk_forward_kl(a, b, k=3),
    "topk_rkl": lambda a, b: O.student_topk_reverse_kl(a, b, k=3),
    "topk_rkl_sg": lambda a, b: O.student_topk_reverse_kl_sg(a, b, k=3),
    "topk_rkl_tail": lambda a, b: O.student_topk_reverse_kl_tail(a, b, k=3),
    "topk_renorm": lambda a, b: O.student_topk_renormalized_reverse_kl(a, b, k=3),
    "intersect": lambda a, b: O.intersect_topk_reverse_kl(a, b, k=3),
    "topk_opd": lambda a, b: O.topk_opd_loss(a, b, k=3, support="non_overlap"),
    "topk_jsd": lambda a, b: O.teacher_topk_generalized_jsd(a, b, k=3),
}


@pytest.mark.parametrize("name", sorted(FUNCS))
def test_no_gradient_reaches_the_teacher(name):
    z, zt = jax.random.normal(jax.random.key(11), (3, 7)), jax.random.normal(jax.random.key(12), (3, 7))
    g_teacher = jax.grad(lambda b: jnp.sum(FUNCS[name](z, b)))(zt)
    assert np.all(np.asarray(g_teacher) == 0.0)
    g_student = jax.grad(lambda a: jnp.sum(FUNCS[name](a, zt)))(z)
    assert np.any(np.asarray(g_student) != 0.0)


def test_advantages_and_selections_carry_no_gradient():
    x = jax.random.normal(jax.random.key(13), (2, 6))
    mask = jnp.ones((2, 6), bool)
    fns = [
        lambda a: O.opd_advantage(a, 0.5 * a), lambda a: O.vopd_advantage(a, a * a, a),
        lambda a: O.discounted_future_sum(a, mask, gamma=0.9), lambda a: O.clip_below(a, -1.0),
        lambda a: O.entropy_gate(a, min_nats=0.0, soft_width=0.5),
        lambda a: O.minmax_normalize(a, mask), lambda a: O.quantile_select(a, mask, top_frac=0.5),
        lambda a: O.token_agreement_weights(jnp.stack([a, 2 * a, a * a], -1), mask),
    ]
    for fn in fns:
        assert np.all(np.asarray(jax.grad(lambda a: jnp.sum(fn(a)))(x)) == 0.0)
