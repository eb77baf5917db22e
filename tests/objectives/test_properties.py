"""Properties of the per-token functions: signs, symmetries, masks, dtypes, extremes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import opd_jax.objectives as O
from tests.objectives import reference as R

DENSE = {
    "forward_kl": O.forward_kl,
    "reverse_kl": O.reverse_kl,
    "jsd_0.1": lambda a, b, **kw: O.generalized_jsd(a, b, beta=0.1, **kw),
    "jsd_0.5": lambda a, b, **kw: O.generalized_jsd(a, b, beta=0.5, **kw),
    "jsd_0.9": lambda a, b, **kw: O.generalized_jsd(a, b, beta=0.9, **kw),
    "tv": O.total_variation,
}
TOPK = {
    "teacher_topk_fkl": O.teacher_topk_forward_kl,
    "topk_rkl": O.student_topk_reverse_kl,
    "topk_rkl_sg": O.student_topk_reverse_kl_sg,
    "topk_rkl_tail": O.student_topk_reverse_kl_tail,
    "topk_rkl_renorm": O.student_topk_renormalized_reverse_kl,
    "topk_rkl_intersect": O.intersect_topk_reverse_kl,
    "topk_jsd": O.teacher_topk_generalized_jsd,
}
ALL = DENSE | {name: (lambda f: lambda a, b, **kw: f(a, b, k=4, **kw))(f) for name, f in TOPK.items()}


def logits(seed, shape, scale=3.0):
    return jax.random.normal(jax.random.key(seed), shape) * scale


@pytest.mark.parametrize("name", sorted(ALL))
def test_nonnegative_and_zero_on_identical(name):
    fn = ALL[name]
    z, zt = logits(0, (4, 5, 11)), logits(1, (4, 5, 11))
    assert np.all(np.asarray(fn(z, zt)) >= -1e-6)
    if name == "teacher_topk_fkl":
        # EOPD renormalises the teacher on its top-k but not the student, so identical inputs
        # give -log(teacher's top-k mass) >= 0, not 0.
        lq = jax.nn.log_softmax(z)
        mass = jnp.sum(jnp.exp(jax.lax.top_k(lq, 4)[0]), -1)
        np.testing.assert_allclose(fn(z, z), -jnp.log(mass), rtol=1e-5, atol=1e-6)
        return
    np.testing.assert_allclose(fn(z, z), 0.0, atol=2e-6)


def test_jsd_half_is_symmetric_and_other_betas_are_not():
    z, zt = logits(2, (6, 13)), logits(3, (6, 13))
    np.testing.assert_allclose(O.generalized_jsd(z, zt, beta=0.5), O.generalized_jsd(zt, z, beta=0.5),
                               rtol=1e-5, atol=1e-7)
    assert not np.allclose(O.generalized_jsd(z, zt, beta=0.1), O.generalized_jsd(zt, z, beta=0.1))


def test_jsd_ends_and_mirror_identity():
    """TRL's ends exactly; and JSD_beta(p, q) = JSD_(1-beta)(q, p) by the definition."""
    z, zt = logits(4, (5, 9)), logits(5, (5, 9))
    np.testing.assert_allclose(O.generalized_jsd(z, zt, beta=0.0), O.forward_kl(z, zt), rtol=1e-6)
    np.testing.assert_allclose(O.generalized_jsd(z, zt, beta=1.0), O.reverse_kl(z, zt), rtol=1e-6)
    for beta in (0.1, 0.3, 0.7):
        np.testing.assert_allclose(O.generalized_jsd(z, zt, beta=beta),
                                   O.generalized_jsd(zt, z, beta=1 - beta), rtol=1e-5, atol=1e-7)


def test_traced_beta_matches_static_beta():
    z, zt = logits(6, (3, 7)), logits(7, (3, 7))
    f = jax.jit(lambda b: O.generalized_jsd(z, zt, beta=b))
    for beta in (0.0, 0.25, 0.5, 1.0):
        np.testing.assert_allclose(f(beta), O.generalized_jsd(z, zt, beta=beta), rtol=2e-5, atol=1e-7)


def test_tv_bounded_and_topk_tail_below_full_kl():
    z, zt = logits(8, (8, 17)), logits(9, (8, 17))
    tv = np.asarray(O.total_variation(z, zt))
    assert np.all((tv >= 0) & (tv <= 1))
    # coarsening to top-k + one tail bucket cannot increase the KL (data processing inequality)
    assert np.all(np.asarray(O.student_topk_reverse_kl_tail(z, zt, k=5))
                  <= np.asarray(O.reverse_kl(z, zt)) + 1e-6)
    np.testing.assert_allclose(O.student_topk_reverse_kl_tail(z, zt, k=17), O.reverse_kl(z, zt),
                               rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", sorted(ALL))
def test_where_equals_slicing(name):
    fn = ALL[name]
    z, zt = logits(10, (12, 9)), logits(11, (12, 9))
    where = np.array([1, 0, 1, 1, 0, 0, 1, 0, 1, 1, 1, 0], bool)
    full = np.asarray(fn(z, zt, where=jnp.asarray(where)))
    np.testing.assert_allclose(full[where], fn(z[where], zt[where]), rtol=1e-6, atol=1e-7)
    assert np.all(full[~where] == 0.0)


@pytest.mark.parametrize("name", sorted(ALL))
def test_masked_rows_with_inf_logits_give_zero_and_finite_zero_grads(name):
    fn = ALL[name]
    z, zt = np.array(logits(12, (4, 3, 10))), np.array(logits(13, (4, 3, 10)))
    where = np.ones((4, 3), bool)
    where[1, :] = False  # a fully masked row (sequence)
    where[2, 2] = False
    z[~where] = -np.inf
    zt[~where] = -np.inf

    def loss(z):
        return jnp.sum(fn(z, jnp.asarray(zt), where=jnp.asarray(where)))
    value, grad = jax.value_and_grad(loss)(jnp.asarray(z))
    assert np.isfinite(value)
    grad = np.asarray(grad)
    assert np.all(np.isfinite(grad))
    assert np.all(grad[~where] == 0.0)


def test_entropy_and_gates_ranges():
    z = logits(14, (20, 7))
    h = np.asarray(O.token_entropy(z))
    assert np.all(h >= 0) and np.all(h <= np.log(7) + 1e-5)
    np.testing.assert_allclose(O.token_entropy(jnp.zeros((3, 7))), np.log(7), rtol=1e-6)
    for gate in (O.entropy_gate(jnp.asarray(h), min_nats=1.0),
                 O.entropy_gate(jnp.asarray(h), min_nats=1.0, soft_width=0.1)):
        g = np.asarray(gate)
        assert np.all((g >= 0) & (g <= 1))
    mask = jnp.asarray(np.arange(20) % 3 != 0)
    for sel in (O.quantile_select(jnp.asarray(h), mask, top_frac=0.5),
                O.top_fraction_select(jnp.asarray(h), mask, frac=0.3),
                O.minmax_normalize(jnp.asarray(h), mask),
                O.soft_or(O.minmax_normalize(jnp.asarray(h), mask), 0.5 * jnp.ones(20))):
        s = np.asarray(sel)
        assert np.all((s >= 0) & (s <= 1))


# float64 NumPy references (reference.py) of ALL's functions, values only
REFS = {
    "forward_kl": R.forward_kl, "reverse_kl": R.reverse_kl, "tv": R.total_variation,
    **{f"jsd_{b}": (lambda b: lambda a, c: R.generalized_jsd(a, c, b))(b) for b in (0.1, 0.5, 0.9)},
    "teacher_topk_fkl": lambda a, c: R.teacher_topk_forward_kl(a, c, 4),
    "topk_rkl": lambda a, c: R.student_topk_reverse_kl(a, c, 4),
    "topk_rkl_sg": lambda a, c: R.student_topk_reverse_kl_sg(a, c, 4),
    "topk_rkl_tail": lambda a, c: R.student_topk_reverse_kl_tail(a, c, 4),
    "topk_rkl_renorm": lambda a, c: R.student_topk_renormalized_reverse_kl(a, c, 4),
    "topk_rkl_intersect": lambda a, c: R.intersect_topk_reverse_kl(a, c, 4),
    "topk_jsd": lambda a, c: R.teacher_topk_generalized_jsd(a, c, 4),
}


def test_bf16_inputs_give_float32_values_of_the_rounded_logits():
    """bf16 logits are upcast before anything else: float32 output equal to the float64
    reference on the bf16-rounded values (float32 tolerance, not bf16's)."""
    z, zt = logits(15, (5, 64)), logits(16, (5, 64))
    zb, ztb = z.astype(jnp.bfloat16), zt.astype(jnp.bfloat16)
    z64, zt64 = np.asarray(zb, np.float64), np.asarray(ztb, np.float64)
    assert sorted(REFS) == sorted(ALL)
    for name, fn in ALL.items():
        out = fn(zb, ztb)
        assert out.dtype == jnp.float32, name
        tol = dict(rtol=1e-4, atol=2e-5) if name == "topk_rkl_tail" else dict(rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(np.asarray(out, np.float64), REFS[name](z64, zt64),
                                   err_msg=name, **tol)


big = hnp.arrays(np.float32, (3, 6), elements=st.floats(-1e4, 1e4, width=32))


@settings(max_examples=25, deadline=None)
@given(big, big)
def test_extreme_logits_stay_finite(z, zt):
    z, zt = jnp.asarray(z), jnp.asarray(zt)
    for name, fn in ALL.items():
        value, grad = jax.value_and_grad(lambda a: jnp.sum(fn(a, zt)))(z)
        assert np.isfinite(value), name
        assert np.all(np.isfinite(grad)), name
    assert np.all(np.isfinite(O.token_entropy(z)))
    assert np.all(np.isfinite(O.token_logp(z, jnp.zeros((3,), jnp.int32))))


@pytest.mark.parametrize("name", sorted(ALL))
def test_jit_equals_eager(name):
    fn = ALL[name]
    z, zt = logits(17, (3, 4, 12)), logits(18, (3, 4, 12))
    np.testing.assert_allclose(jax.jit(fn)(z, zt), fn(z, zt), rtol=1e-6, atol=1e-7)


def test_sampled_kl_estimators_are_unbiased_or_nonnegative():
    """k1 and k3 average to the exact KL(p||q) over y ~ p (enumerated); k2, k3 are >= 0."""
    z, zt = logits(19, (7,)), logits(20, (7,))
    lp, lq = jax.nn.log_softmax(z), jax.nn.log_softmax(zt)
    p = np.exp(np.asarray(lp, np.float64))
    exact = float(O.reverse_kl(z, zt))
    for est in ("k1", "k3"):
        vals = np.asarray(O.sampled_kl(lp, lq, estimator=est), np.float64)
        np.testing.assert_allclose(np.sum(p * vals), exact, rtol=1e-5)
    for est in ("k2", "k3"):
        assert np.all(np.asarray(O.sampled_kl(lp, lq, estimator=est)) >= 0)
