"""Oracle tests: every per-token objective function against an independent float64 NumPy
reference (``reference.py``, written from objectives.md), plus the spec's reference values.

JAX runs in float32, the references in float64 on the same float32 inputs. Default tolerance
rtol 1e-5 / atol 1e-6 (a few float32 ulps of O(1) quantities summed over <= 11 entries);
exceptions say why. Spec numbers are given to 6-7 decimals, so they are compared at 2e-6.
"""

import importlib.util
import math
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import opd_jax.objectives as O
from opd_jax.objectives import diagnostics as DG

# Load the reference by path under a unique name: test directories here are not packages, so a
# plain ``import reference`` could collide with another directory's module of the same name.
_spec = importlib.util.spec_from_file_location("opd_objectives_oracle_reference",
                                               pathlib.Path(__file__).with_name("reference.py"))
R = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(R)

RTOL, ATOL = 1e-5, 1e-6
SPEC_ATOL = 2e-6  # the spec's tables are rounded to 6-7 decimals

# Eager JAX compiles each primitive once per (shape, static parameters): new shapes and new k
# cost compile time, new seeds and temperatures do not. So a few shapes are reused everywhere
# and seeds are paired with temperatures.
SHAPES = [(2, 3, 5), (4, 5, 11)]  # batch + vocabulary; (2, 3, 5) is TRL's, [4, 5] is TOK's
SEEDS = [0, 1, 2]
TEMPS = [1.0, 0.7, 1.6]
SEED_TEMPS = list(zip(SEEDS, TEMPS))
TOK = (4, 5)  # the one shape of every per-token ([B, T]) input


def rand_logits(seed, shape, scale=2.0):
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32)


def rand_mask(seed, shape):
    m = np.random.default_rng(seed + 1000).random(shape) < 0.6
    flat = m.reshape(-1)
    flat[0], flat[-1] = False, True
    return m


def close(got, want, rtol=RTOL, atol=ATOL):
    np.testing.assert_allclose(np.asarray(got, np.float64), np.asarray(want, np.float64),
                               rtol=rtol, atol=atol)


def grad_of(fn, x):
    """Gradient of ``sum(fn(x))``: per-position functions give per-position gradients."""
    return np.asarray(jax.grad(lambda a: jnp.sum(fn(a)))(jnp.asarray(x)))


def pair(seed, shape):
    return rand_logits(seed, shape), rand_logits(seed + 100, shape)


def to_topk(sp):
    return O.TeacherTopK(jnp.asarray(sp.ids, jnp.int32), jnp.asarray(sp.logp, jnp.float32))


# ============================================================================================
# 0. the reference itself: analytic gradients vs finite differences, inclusion probabilities


@pytest.mark.parametrize("name", ["rkl", "fkl", "jsd0.0", "jsd0.3", "jsd1.0", "ent", "tv", "logp"])
def test_reference_analytic_gradients_match_finite_differences(name):
    z, zt = rand_logits(7, (7,)).astype(np.float64), rand_logits(8, (7,)).astype(np.float64)
    tau = 0.8
    cases = {
        "rkl": (lambda a: R.reverse_kl(a, zt, tau), R.grad_reverse_kl(z, zt, tau)),
        "fkl": (lambda a: R.forward_kl(a, zt, tau), R.grad_forward_kl(z, zt, tau)),
        **{f"jsd{b}": ((lambda b: lambda a: R.generalized_jsd(a, zt, b, tau))(b),
                       R.grad_generalized_jsd(z, zt, b, tau)) for b in (0.0, 0.3, 1.0)},
        "ent": (lambda a: R.token_entropy(a, tau), R.grad_token_entropy(z, tau)),
        "tv": (lambda a: R.total_variation(a, zt, tau), R.grad_total_variation(z, zt, tau)),
        "logp": (lambda a: R.token_logp(a, np.array(3), tau),
                 R.grad_token_logp(z, np.array(3), tau)),
    }
    fn, analytic = cases[name]
    close(R.numerical_grad(lambda a: float(fn(a)), z), analytic, rtol=1e-6, atol=1e-8)


TOPK_REF = {
    "rkl": (R.student_topk_reverse_kl, {}),
    "rkl_sg": (R.student_topk_reverse_kl_sg, {}),
    "rkl_tail": (R.student_topk_reverse_kl_tail, {}),
    "renorm": (R.student_topk_renormalized_reverse_kl, {}),
    "intersect": (R.intersect_topk_reverse_kl, {}),
    "opd_none": (R.topk_opd_loss, {"support": "student"}),
    "teacher_fkl": (R.teacher_topk_forward_kl, {}),
    "teacher_jsd0": (R.teacher_topk_generalized_jsd, {"beta": 0.0}),
    "teacher_jsd0.3": (R.teacher_topk_generalized_jsd, {"beta": 0.3}),
    "teacher_jsd1": (R.teacher_topk_generalized_jsd, {"beta": 1.0}),
}


@pytest.mark.parametrize("name", sorted(TOPK_REF))
def test_reference_topk_gradients_match_finite_differences(name):
    """Top-k sets are locally constant, so finite differences of the reference's value give its
    gradient -- except for the sg top-k RKL and the PG loss, whose gradients are not the
    derivative of their value; those are checked against what they differentiate."""
    fn, kw = TOPK_REF[name]
    z, zt = rand_logits(11, (9,)).astype(np.float64), rand_logits(12, (9,)).astype(np.float64)
    tau = 1.3
    _, analytic = fn(z, zt, 4, temperature=tau, grad=True, **kw)
    numeric = R.numerical_grad(lambda a: float(fn(a, zt, 4, temperature=tau, **kw)), z)
    if name == "opd_none":  # value -sum A with A frozen: differentiate -sum_v A(v) rho(v) instead
        lp, lq = R.log_softmax(z, tau), R.log_softmax(zt, tau)
        S = R.topk_ids(lp, 4)
        A = np.exp(lp[S]) / np.exp(lp[S]).sum() * (lq[S] - lp[S])
        surrogate = lambda a: float(-np.sum(A * np.exp(R.log_softmax(a, tau)[S] - lp[S])))
        close(R.numerical_grad(surrogate, z), analytic, rtol=1e-6, atol=1e-8)
        return
    if name == "rkl_sg":  # = no-sg gradient minus the gradient of the top-k mass
        _, g_full = R.student_topk_reverse_kl(z, zt, 4, temperature=tau, grad=True)
        lp = R.log_softmax(z, tau)
        S = R.topk_ids(lp, 4)
        mass_grad = R.numerical_grad(lambda a: float(np.exp(R.log_softmax(a, tau))[S].sum()), z)
        close(analytic, g_full - mass_grad, rtol=1e-6, atol=1e-8)
        return
    close(numeric, analytic, rtol=1e-6, atol=1e-8)


def test_reference_inclusion_probabilities():
    incl = R.inclusion_probabilities([1.0, 2.0, 3.0, 4.0], 2)
    assert math.isclose(incl.sum(), 2.0)
    # first pick: 4/10; P(pick 4 second) = sum_i w_i/10 * 4/(10-w_i)
    p4 = 0.4 + sum(w / 10 * 4 / (10 - w) for w in (1, 2, 3))
    assert math.isclose(incl[3], p4)


# ============================================================================================
# 1. spec reference values (objectives.md §0, §1, §2, §5, §8, §11)

P0 = np.array([0.2, 0.3, 0.5])
Q0 = np.array([0.6, 0.3, 0.1])
Z0 = np.repeat(np.log(P0).astype(np.float32)[None], 3, 0)  # [3, 3]: three identical rows,
ZT0 = np.repeat(np.log(Q0).astype(np.float32)[None], 3, 0)  # the shape _pg_grads uses for V = 3

SPEC0 = {
    "rkl": 0.5849965, "fkl": 0.4982236, "jsd0.1": 0.0444207, "jsd0.5": 0.1251006,
    "jsd0.9": 0.0500295, "hp": 1.0296530, "hq": 0.8979457, "gap": 0.1317073, "hp_norm": 0.9372306,
    "r": [1.0986123, 0.0, -1.6094379],
    "drkl": [-0.336722, -0.175499, 0.512221], "dfkl": [-0.4, 0.0, 0.4],
    "pg0": [-0.878890, 0.329584, 0.549306], "pg2": [-0.321888, -0.482831, 0.804719],
}


def test_reference_reproduces_spec_section0():
    """The NumPy reference itself reproduces §0's table (guards the oracle)."""
    z, zt = np.log(P0), np.log(Q0)
    assert abs(R.reverse_kl(z, zt) - SPEC0["rkl"]) < 1e-7
    assert abs(R.forward_kl(z, zt) - SPEC0["fkl"]) < 1e-7
    for b in (0.1, 0.5, 0.9):
        assert abs(R.generalized_jsd(z, zt, b) - SPEC0[f"jsd{b}"]) < 1e-7
    assert abs(R.token_entropy(z) - SPEC0["hp"]) < 1e-7
    assert abs(R.token_entropy(zt) - SPEC0["hq"]) < 1e-7
    close(R.grad_reverse_kl(z, zt), SPEC0["drkl"], atol=1e-6)
    close(R.grad_forward_kl(z, zt), SPEC0["dfkl"], atol=1e-12)
    r = np.log(Q0) - np.log(P0)
    close(R.pg_grad(z, 0, r[0]), SPEC0["pg0"], atol=1e-6)
    close(R.pg_grad(z, 2, r[2]), SPEC0["pg2"], atol=1e-6)
    close(sum(P0[y] * R.pg_grad(z, y, r[y]) for y in range(3)), SPEC0["drkl"], atol=1e-6)


def test_spec_section0_divergences_and_entropies():
    close(O.reverse_kl(Z0, ZT0), [SPEC0["rkl"]] * 3, atol=SPEC_ATOL)
    close(O.forward_kl(Z0, ZT0), [SPEC0["fkl"]] * 3, atol=SPEC_ATOL)
    for b in (0.1, 0.5, 0.9):
        close(O.generalized_jsd(Z0, ZT0, beta=b), [SPEC0[f"jsd{b}"]] * 3, atol=SPEC_ATOL)
    hp, hq = O.token_entropy(Z0), O.token_entropy(ZT0)
    close(hp, [SPEC0["hp"]] * 3, atol=SPEC_ATOL)
    close(hq, [SPEC0["hq"]] * 3, atol=SPEC_ATOL)
    close(jnp.abs(hp - hq), [SPEC0["gap"]] * 3, atol=SPEC_ATOL)
    close(hp / math.log(3), [SPEC0["hp_norm"]] * 3, atol=SPEC_ATOL)


def test_spec_section0_token_reward():
    y = jnp.arange(3, dtype=jnp.int32)
    z3, zt3 = Z0, ZT0
    r = O.log_ratio(O.token_logp(z3, y), O.token_logp(zt3, y))
    close(r, SPEC0["r"], atol=SPEC_ATOL)
    close(O.opd_advantage(O.token_logp(zt3, y), O.token_logp(z3, y)), SPEC0["r"], atol=SPEC_ATOL)


def test_spec_section0_divergence_gradients():
    close(grad_of(lambda a: O.reverse_kl(a, ZT0), Z0), [SPEC0["drkl"]] * 3, atol=SPEC_ATOL)
    close(grad_of(lambda a: O.forward_kl(a, ZT0), Z0), [SPEC0["dfkl"]] * 3, atol=SPEC_ATOL)


def _pg_grads(z, zt, advantage_fn, temperature=1.0):
    """Per-token PG gradients for every token y (row y of a [V, V] batch), on-policy."""
    V = z.shape[-1]
    zz, ztt = np.repeat(z[None], V, 0), np.repeat(zt[None], V, 0)
    y = jnp.arange(V, dtype=jnp.int32)

    def loss(a):
        lp = O.token_logp(a, y, temperature=temperature)
        adv = advantage_fn(a, ztt, y, lp)
        return O.importance_sampling_loss(lp, jax.lax.stop_gradient(lp), adv)

    return grad_of(loss, zz)


def _opd_adv(a, zt, y, lp, temperature=1.0):
    return O.opd_advantage(O.token_logp(zt, y, temperature=temperature), lp)


def _vopd_adv(a, zt, y, lp, temperature=1.0):
    kl = O.reverse_kl(a, zt, temperature=temperature)
    return O.vopd_advantage(O.token_logp(zt, y, temperature=temperature), lp, kl)


def test_spec_section0_pg_gradients_and_unbiasedness():
    g = _pg_grads(Z0[0], ZT0[0], _opd_adv)
    close(g[0], SPEC0["pg0"], atol=SPEC_ATOL)
    close(g[2], SPEC0["pg2"], atol=SPEC_ATOL)
    close(P0 @ g, SPEC0["drkl"], atol=SPEC_ATOL)


SPEC11_A = [1.6836088, 0.5849965, -1.0244414]
SPEC11_G = [[-1.346887, 0.505083, 0.841804], [0.116999, -0.409498, 0.292498],
            [-0.204888, -0.307332, 0.512221]]


def test_spec_section11_vopd_advantage_and_gradients():
    y = jnp.arange(3, dtype=jnp.int32)
    z3, zt3 = Z0, ZT0
    adv = O.vopd_advantage(O.token_logp(zt3, y), O.token_logp(z3, y), O.reverse_kl(z3, zt3))
    close(adv, SPEC11_A, atol=SPEC_ATOL)
    g = _pg_grads(Z0[0], ZT0[0], _vopd_adv)
    close(g, SPEC11_G, atol=SPEC_ATOL)
    close(P0 @ g, SPEC0["drkl"], atol=SPEC_ATOL)
    # the reference agrees with the spec too
    ref_a = R.vopd_advantage(np.log(Q0), np.log(P0), R.reverse_kl(np.log(P0), np.log(Q0)))
    close(ref_a, SPEC11_A, atol=1e-7)
    close([R.pg_grad(np.log(P0), j, ref_a[j]) for j in range(3)], SPEC11_G, atol=1e-6)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("adv", ["opd", "vopd"])
def test_pg_gradient_expectation_is_reverse_kl_gradient(seed, temperature, adv):
    """§0 key identity (and §11 unbiasedness of the baseline) on random logits (V = 3, the
    shape of the spec tests, to share their compilations)."""
    z, zt = rand_logits(seed, (3,)), rand_logits(seed + 100, (3,))
    fn = {"opd": _opd_adv, "vopd": _vopd_adv}[adv]
    g = _pg_grads(z, zt, lambda a, b, y, lp: fn(a, b, y, lp, temperature), temperature)
    p = np.exp(R.log_softmax(z, temperature))
    close(p @ g, R.grad_reverse_kl(z, zt, temperature), atol=2e-6)
    # and each row is -A (onehot(y) - p) / tau with the reference advantage
    lp, lq = R.log_softmax(z, temperature), R.log_softmax(zt, temperature)
    A = lq - lp + (R.reverse_kl(z, zt, temperature) if adv == "vopd" else 0.0)
    close(g, [R.pg_grad(z, y, A[y], temperature) for y in range(3)], atol=2e-6)


TRL_S = np.log(np.array([[0.1, 0.9]], np.float32))
TRL_T = np.log(np.array([[0.9, 0.1]], np.float32))


def test_spec_section1_trl_edge_cases():
    for b in (0.0, 0.1, 0.5, 0.9, 1.0):
        ones = np.ones((1, 1, 5), np.float32)
        np.testing.assert_allclose(O.generalized_jsd(ones, ones, beta=b), 0.0, atol=1e-5)
        z = rand_logits(3, SHAPES[0])
        np.testing.assert_allclose(O.generalized_jsd(z, z, beta=b), 0.0, atol=1e-6)
    # the spec's printed values (TRL's test: beta = 0 and 1 are both 0.8 ln 9 here)
    expect = {0.0: 1.7577797, 1.0: 1.7577797, 0.5: 0.3680642, 0.1: 0.1463105, 0.9: 0.1463105}
    for b, v in expect.items():
        close(O.generalized_jsd(TRL_S, TRL_T, beta=b), [v], atol=SPEC_ATOL)
        close(R.generalized_jsd(TRL_S, TRL_T, b), [v], atol=1e-6)
    for b in (0.0, 1.0):  # and the closed form: KL([.1, .9] || [.9, .1]) = 0.8 ln 9
        close(O.generalized_jsd(TRL_S, TRL_T, beta=b), [0.8 * math.log(9)], atol=2e-6)
    close(O.generalized_jsd(TRL_S, TRL_T, beta=1.0), R.kl(np.exp(TRL_S), np.exp(TRL_T)), atol=2e-6)
    close(O.generalized_jsd(TRL_S, TRL_T, beta=0.0), R.kl(np.exp(TRL_T), np.exp(TRL_S)), atol=2e-6)


def test_spec_section1_symmetry_and_sensitivity():
    z, zt = pair(4, SHAPES[1])
    close(O.generalized_jsd(z, zt, beta=0.5), O.generalized_jsd(zt, z, beta=0.5), atol=2e-6)
    a = np.asarray(O.generalized_jsd(z, zt, beta=0.1))
    b = np.asarray(O.generalized_jsd(zt, z, beta=0.1))
    assert np.max(np.abs(a - b)) > 1e-3
    assert np.max(np.abs(np.asarray(O.generalized_jsd(z, zt, beta=0.0))
                         - np.asarray(O.generalized_jsd(z, zt, beta=1.0)))) > 1e-3
    assert np.max(np.abs(np.asarray(O.generalized_jsd(z, zt, temperature=1.0))
                         - np.asarray(O.generalized_jsd(z, zt, temperature=2.0)))) > 1e-3


def test_spec_section2_discounted_sum():
    x = np.array([[1.0, 2.0, 3.0]], np.float32)
    m = np.ones((1, 3), bool)
    close(O.discounted_future_sum(x, m, gamma=0.5), [[2.75, 3.5, 3.0]], atol=0)
    close(O.discounted_future_sum(x, m, gamma=0.0), x, atol=0)
    close(R.discounted_future_sum(x, m, 0.5), [[2.75, 3.5, 3.0]], atol=0)


def test_spec_section5_reopold_floors():
    assert abs(O.mixture_clip_floor(0.2) - (-1.3863)) < 5e-5
    assert abs(O.mixture_clip_floor(0.2, reading="log_over") - (-2.0118)) < 5e-5
    for lam in (0.05, 0.2, 0.5, 0.8):
        for reading in ("log_odds", "log_over"):
            close(O.mixture_clip_floor(lam, reading=reading), R.mixture_clip_floor(lam, reading),
                  atol=1e-6)
    # reading A is the lower asymptote of the mixture log-ratio (q/p -> 0)
    lam, p, q = 0.2, 0.5, 1e-12
    mix = math.log(((1 - lam) * q + lam * p) / ((1 - lam) * p + lam * q))
    assert abs(mix - O.mixture_clip_floor(lam)) < 1e-6


SPEC8 = {"K": 0.8047190, "dKsg": [-0.160944, -0.241416, 0.402359],
         "dK": [-0.320944, -0.181416, 0.502359], "renorm": 0.3127515}


def test_spec_section8_sg_topk_values_and_gradients():
    close(O.student_topk_reverse_kl(Z0, ZT0, k=2), [SPEC8["K"]] * 3, atol=SPEC_ATOL)
    close(O.student_topk_reverse_kl_sg(Z0, ZT0, k=2), [SPEC8["K"]] * 3, atol=SPEC_ATOL)
    close(grad_of(lambda a: O.student_topk_reverse_kl_sg(a, ZT0, k=2), Z0), [SPEC8["dKsg"]] * 3,
          atol=SPEC_ATOL)
    close(grad_of(lambda a: O.student_topk_reverse_kl(a, ZT0, k=2), Z0), [SPEC8["dK"]] * 3,
          atol=SPEC_ATOL)
    close(O.student_topk_renormalized_reverse_kl(Z0, ZT0, k=2), [SPEC8["renorm"]] * 3,
          atol=SPEC_ATOL)
    # the reference reproduces them as well
    z, zt = np.log(P0), np.log(Q0)
    v, g = R.student_topk_reverse_kl_sg(z[None], zt[None], 2, grad=True)
    close(v, [SPEC8["K"]], atol=1e-7)
    close(g, [SPEC8["dKsg"]], atol=1e-6)
    close(R.student_topk_reverse_kl(z[None], zt[None], 2, grad=True)[1], [SPEC8["dK"]], atol=1e-6)
    close(R.student_topk_renormalized_reverse_kl(z[None], zt[None], 2), [SPEC8["renorm"]],
          atol=1e-7)
    # the library's two gradients differ by the gradient of the student's top-k mass P_S,
    # d P_S / dz_j = 1[j in S] p_j - p_j P_S (S = {1, 2}: [-0.16, 0.06, 0.10])
    in_s = np.array([0.0, 1.0, 1.0])
    mass_grad = in_s * P0 - P0 * np.sum(in_s * P0)
    close(grad_of(lambda a: O.student_topk_reverse_kl(a, ZT0, k=2), Z0)
          - grad_of(lambda a: O.student_topk_reverse_kl_sg(a, ZT0, k=2), Z0), [mass_grad] * 3,
          atol=SPEC_ATOL)


# ============================================================================================
# 2. divergences vs reference on random inputs


# name: (library fn, reference value, reference gradient (z, zt, temperature), kwargs)
DIVERGENCES = {
    "reverse_kl": (O.reverse_kl, R.reverse_kl, R.grad_reverse_kl, {}),
    "forward_kl": (O.forward_kl, R.forward_kl, R.grad_forward_kl, {}),
    "total_variation": (O.total_variation, R.total_variation, R.grad_total_variation, {}),
    **{f"jsd_{b}": (O.generalized_jsd, R.generalized_jsd,
                    (lambda b: lambda z, zt, t: R.grad_generalized_jsd(z, zt, b, t))(b),
                    {"beta": b})
       for b in (0.0, 0.1, 0.5, 0.9, 1.0)},
}


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("seed,temperature", SEED_TEMPS)
@pytest.mark.parametrize("name", sorted(DIVERGENCES))
def test_divergence_value_and_gradient(name, seed, temperature, shape):
    fn, ref, ref_grad, kw = DIVERGENCES[name]
    z, zt = pair(seed, shape)
    close(fn(z, zt, temperature=temperature, **kw), ref(z, zt, temperature=temperature, **kw))
    close(grad_of(lambda a: fn(a, zt, temperature=temperature, **kw), z),
          ref_grad(z, zt, temperature))


@pytest.mark.parametrize("seed,temperature", SEED_TEMPS)
def test_entropy_logp_log_probs(seed, temperature):
    shape = SHAPES[1]
    z = rand_logits(seed, shape)
    close(O.log_probs(z, temperature=temperature), R.log_softmax(z, temperature))
    close(O.token_entropy(z, temperature=temperature), R.token_entropy(z, temperature))
    close(grad_of(lambda a: O.token_entropy(a, temperature=temperature), z),
          R.grad_token_entropy(z, temperature))
    y = np.random.default_rng(seed).integers(0, shape[-1], shape[:-1]).astype(np.int32)
    close(O.token_logp(z, y, temperature=temperature), R.token_logp(z, y, temperature))
    close(grad_of(lambda a: O.token_logp(a, y, temperature=temperature), z),
          R.grad_token_logp(z, y, temperature))


@pytest.mark.parametrize("seed", [0, 1])
def test_log_probs_where(seed):
    """Masked rows are replaced by zeros before the softmax: log(1/V) there, even from -inf."""
    z = rand_logits(seed, SHAPES[1])
    w = rand_mask(seed, SHAPES[1][:-1])
    z_inf = np.where(w[..., None], z, -np.inf).astype(np.float32)
    for a in (z, z_inf):
        close(O.log_probs(a, temperature=0.7, where=w), R.log_softmax(z, 0.7, where=w))
        assert np.all(np.isfinite(grad_of(lambda x: O.log_probs(x, where=w)[..., 0], a)))


@pytest.mark.parametrize("seed", SEEDS)
def test_traced_beta_matches_concrete(seed):
    """``beta`` may be a traced scalar (a schedule); the TRL ends must still be exact."""
    z, zt = pair(seed, SHAPES[1])
    jitted = jax.jit(lambda a, b, beta: O.generalized_jsd(a, b, beta=beta))
    for beta in (0.0, 0.3, 1.0):
        close(jitted(z, zt, jnp.float32(beta)), R.generalized_jsd(z, zt, beta))


@pytest.mark.parametrize("estimator", ["k1", "k2", "k3"])
@pytest.mark.parametrize("seed", SEEDS)
def test_log_ratio_and_sampled_kl(seed, estimator):
    rng = np.random.default_rng(seed)
    lp = np.log(rng.uniform(0.05, 1.0, TOK)).astype(np.float32)
    lq = np.log(rng.uniform(0.05, 1.0, TOK)).astype(np.float32)
    w = rand_mask(seed, TOK)
    close(O.log_ratio(lp, lq), R.log_ratio(lp, lq))
    close(O.log_ratio(lp, lq, where=w), R.log_ratio(lp, lq, where=w))
    close(O.sampled_kl(lp, lq, estimator=estimator), R.sampled_kl(lp, lq, estimator))
    close(O.sampled_kl(lp, lq, estimator=estimator, where=w), R.sampled_kl(lp, lq, estimator, w))


@pytest.mark.parametrize("seed", SEEDS)
def test_sampled_kl_exact_expectations(seed):
    """Over y ~ p (exact sum over the vocabulary), k1 and k3 are unbiased for KL(p || q)."""
    z, zt = pair(seed, SHAPES[0])
    lp, lq = np.asarray(O.log_probs(z)), np.asarray(O.log_probs(zt))
    p = np.exp(R.log_softmax(z))
    for est in ("k1", "k3"):
        values = np.asarray(O.sampled_kl(lp, lq, estimator=est))
        close(np.sum(p * values, -1), R.reverse_kl(z, zt), atol=2e-6)


# ============================================================================================
# 3. top-k family vs reference (dense teacher)


TOPK = {
    "student_topk_reverse_kl": (O.student_topk_reverse_kl, R.student_topk_reverse_kl, {}),
    "student_topk_reverse_kl_sg": (O.student_topk_reverse_kl_sg, R.student_topk_reverse_kl_sg, {}),
    "student_topk_reverse_kl_tail": (O.student_topk_reverse_kl_tail,
                                     R.student_topk_reverse_kl_tail, {}),
    "renormalized": (O.student_topk_renormalized_reverse_kl,
                     R.student_topk_renormalized_reverse_kl, {}),
    "renormalized_sg_logp": (lambda *a, **kw: O.student_topk_renormalized_reverse_kl(
        *a, stop_gradient_logp=True, **kw), R.student_topk_renormalized_reverse_kl, {}),
    "intersect": (O.intersect_topk_reverse_kl, R.intersect_topk_reverse_kl, {}),
    **{f"topk_opd_{r}": (O.topk_opd_loss, R.topk_opd_loss, {"support": r})
       for r in ("student", "overlap", "non_overlap")},
    "teacher_topk_fkl": (O.teacher_topk_forward_kl, R.teacher_topk_forward_kl, {}),
    **{f"teacher_topk_jsd_{b}": (O.teacher_topk_generalized_jsd, R.teacher_topk_generalized_jsd,
                                 {"beta": b}) for b in (0.0, 0.3, 1.0)},
}
# Compile time is per (shape, k): every top-k test below uses the [4, 5] x 11 shape (the spec
# tests cover a 1-D batch) with k = 5, plus k = 1 -- the degenerate edge (empty
# intersections and overlaps, one-token renormalisation) -- for the functions where it is one.
# Seeds and temperatures cost no compilation.
TOPK_SHAPE = SHAPES[1]
K1_EDGE = ["intersect", "topk_opd_overlap", "renormalized", "teacher_topk_fkl"]
TOPK_CASES = [(name, seed, temperature, TOPK_SHAPE, 5) for name in sorted(TOPK)
              for seed, temperature in SEED_TEMPS]
TOPK_CASES += [(name, seed, temperature, TOPK_SHAPE, 1) for name in K1_EDGE
               for seed, temperature in SEED_TEMPS[:2]]
# 1 - sum_{S_k} q and 1 - sum_{S_k} p are float32 differences with cancellation: the tail
# term's absolute error is ~1e-7 / qbar, so this one function gets a looser tolerance.
TOPK_TOL = {"student_topk_reverse_kl_tail": dict(rtol=1e-4, atol=2e-5)}


@pytest.mark.parametrize("name,seed,temperature,shape,k", TOPK_CASES)
def test_topk_value_and_gradient(name, seed, temperature, shape, k):
    fn, ref, kw = TOPK[name]
    tol = TOPK_TOL.get(name, {})
    z, zt = pair(seed, shape)
    got = fn(z, zt, k=k, temperature=temperature, **kw)
    want, want_grad = ref(z, zt, k, temperature=temperature, grad=True, **kw)
    close(got, want, **tol)
    close(grad_of(lambda a: fn(a, zt, k=k, temperature=temperature, **kw), z), want_grad, **tol)


@pytest.mark.parametrize("seed", SEEDS)
def test_teacher_topk_and_teacher_logp_at(seed):
    z, zt = pair(seed, SHAPES[1])
    for k, t in ((1, 1.0), (5, 0.7)):
        top = O.teacher_topk(zt, k=k, temperature=t)
        ref = R.teacher_topk(zt, k, t)
        np.testing.assert_array_equal(top.ids, ref.ids)
        close(top.logp, ref.logp)
    ids = np.random.default_rng(seed).integers(0, 11, (4, 5, 5)).astype(np.int32)
    lq, known = O.teacher_logp_at(ids, zt, temperature=0.7)
    want, want_known = R.teacher_logp_at(ids, zt, 0.7)
    close(lq, want)
    np.testing.assert_array_equal(known, want_known)
    sparse = R.sparse_from_logits(zt, 5)
    lq, known = O.teacher_logp_at(ids, to_topk(sparse))
    want, want_known = R.teacher_logp_at(ids, sparse)
    np.testing.assert_array_equal(known, want_known)
    assert not want_known.all() and want_known.any()
    close(np.asarray(lq)[want_known], want[want_known])
    assert np.all(np.asarray(lq)[~want_known] == -np.inf)  # default fill
    fill = np.full(ids.shape, -3.25, np.float32)
    lq, _ = O.teacher_logp_at(ids, to_topk(sparse), fill=fill)
    close(lq, R.teacher_logp_at(ids, sparse, fill=fill)[0])


def test_tail_form_is_a_coarsened_kl():
    """Docstring claim: the tail-corrected top-k RKL is in [0, full RKL] (data processing)."""
    z, zt = pair(5, SHAPES[1])
    full = np.asarray(O.reverse_kl(z, zt))
    for k in (1, 5):
        tail = np.asarray(O.student_topk_reverse_kl_tail(z, zt, k=k))
        assert np.all(tail >= -1e-6) and np.all(tail <= full + 1e-6)


# ============================================================================================
# 4. sparse teacher (TeacherTopK)


def _cover_K(z, zt, k, temperature):
    """Smallest K whose teacher top-K contains every position's student top-k."""
    lp, lq = R.log_softmax(z, temperature), R.log_softmax(zt, temperature)
    K = k
    for idx in np.ndindex(*lp.shape[:-1]):
        rank = {int(v): i for i, v in enumerate(R.topk_ids(lq[idx], lp.shape[-1]))}
        K = max(K, 1 + max(rank[int(v)] for v in R.topk_ids(lp[idx], k)))
    return K


SPARSE_CASES = [(0, 1.0, TOPK_SHAPE, 5), (2, 1.6, TOPK_SHAPE, 5)]


@pytest.mark.parametrize("K_mode", ["K=V", "K=cover"])
@pytest.mark.parametrize("seed,temperature,shape,k", SPARSE_CASES)
@pytest.mark.parametrize("name", sorted(TOPK))
def test_sparse_teacher_covering_student_topk_equals_dense(name, seed, temperature, shape, k,
                                                           K_mode):
    """A TeacherTopK holding the teacher's top-K, K large enough to contain every student top-k
    token, gives the dense-teacher value and gradient."""
    fn, ref, kw = TOPK[name]
    tol = TOPK_TOL.get(name, {})
    z, zt = pair(seed, shape)
    if K_mode == "K=cover":  # a teacher correlated with the student, so that K < V suffices
        zt = (z + 0.5 * rand_logits(seed + 200, shape, 1.0)).astype(np.float32)
    K = shape[-1] if K_mode == "K=V" else _cover_K(z, zt, k, temperature)
    assert k <= K and (K_mode == "K=V" or K < shape[-1])
    sparse = R.sparse_from_logits(zt, K, temperature)  # built in NumPy, not by the library
    got = fn(z, to_topk(sparse), k=k, temperature=temperature, **kw)
    want, want_grad = ref(z, zt, k, temperature=temperature, grad=True, **kw)  # dense reference
    close(got, want, **tol)
    close(grad_of(lambda a: fn(a, to_topk(sparse), k=k, temperature=temperature, **kw), z),
          want_grad, **tol)
    close(got, fn(z, zt, k=k, temperature=temperature, **kw), **tol)


# functions that accept a sparse teacher with fewer than k entries (they never need T_k)
STUDENT_ONLY = ["student_topk_reverse_kl", "student_topk_reverse_kl_sg",
                "student_topk_reverse_kl_tail", "renormalized", "renormalized_sg_logp"]
MISSING_CASES = [(name, K_mode) for name in sorted(set(TOPK) - {"topk_opd_student"})
                 for K_mode in (["K=k", "K=1"] if name in STUDENT_ONLY else ["K=k"])]


@pytest.mark.parametrize("seed,temperature,shape,k", SPARSE_CASES)
@pytest.mark.parametrize("name,K_mode", MISSING_CASES)
def test_sparse_teacher_missing_tokens_follow_fill_rule(name, K_mode, seed, temperature, shape, k):
    """Student top-k tokens absent from the teacher's list take the student's own full-vocab
    log-prob as teacher log-prob (module docstring of ``topk``; the reference's ``_support_row``
    applies it before anything else, so the renormalised RKL renormalises the filled values --
    its own docstring's stronger claim is tested separately below). K = 1 < k only for the
    functions that never need the teacher's top-k. ``topk_opd_loss(support="student")`` has its
    own test below."""
    fn, ref, kw = TOPK[name]
    tol = TOPK_TOL.get(name, {})
    z, zt = pair(seed, shape)
    K = k if K_mode == "K=k" else 1
    sparse = R.sparse_from_logits(zt, K, temperature)
    assert _cover_K(z, zt, k, temperature) > K  # some student tokens really are missing
    got = fn(z, to_topk(sparse), k=k, temperature=temperature, **kw)
    want, want_grad = ref(z, sparse, k, temperature=temperature, grad=True, **kw)
    close(got, want, **tol)
    close(grad_of(lambda a: fn(a, to_topk(sparse), k=k, temperature=temperature, **kw), z),
          want_grad, **tol)


def _top1_only_teacher(z, zt):
    """A sparse teacher that sent a single token: the student's most likely one (``[..., 1]``)."""
    lp, lq = R.log_softmax(z), R.log_softmax(zt)
    top1 = np.argmax(lp, -1)[..., None]
    sparse = R.Sparse(top1, np.take_along_axis(lq, top1, -1))
    assert np.all(np.abs(np.take_along_axis(lp - lq, top1, -1)) > 0.05)
    return lp, lq, top1, sparse


@pytest.mark.parametrize("seed", [0, 1])
def test_sparse_topk_opd_none_missing_tokens(seed):
    """k = 5 student tokens, the teacher sent only the top-1 (v): the documented value is
    -p(v)/P_{S_k} (lT(v) - lS(v)) (w renormalised on S_k, missing tokens A = 0)."""
    k = 5
    z, zt = pair(seed, TOPK_SHAPE)
    lp, lq, v, sparse = _top1_only_teacher(z, zt)
    want = np.zeros(TOPK_SHAPE[:-1])
    for idx in np.ndindex(*want.shape):
        P_S = np.exp(lp[idx][R.topk_ids(lp[idx], k)]).sum()
        j = v[idx][0]
        want[idx] = -np.exp(lp[idx][j]) / P_S * (lq[idx][j] - lp[idx][j])
    close(R.topk_opd_loss(z, sparse, k), want, atol=1e-12)  # the reference agrees
    close(O.topk_opd_loss(z, to_topk(sparse), k=k), want)


@pytest.mark.parametrize("seed", SEEDS)
def test_sparse_missing_tokens_add_zero_to_topk_reverse_kl(seed):
    """A student token the teacher did not send adds exactly 0 to K_t (fill rule): with a
    sparse teacher holding only the student's top-1, K_t is that one token's term."""
    z, zt = pair(seed, TOPK_SHAPE)
    lp, lq, v, sparse = _top1_only_teacher(z, zt)
    lp_v, lq_v = np.take_along_axis(lp, v, -1)[..., 0], np.take_along_axis(lq, v, -1)[..., 0]
    want = np.exp(lp_v) * (lp_v - lq_v)
    for fn in (O.student_topk_reverse_kl, O.student_topk_reverse_kl_sg):
        close(fn(z, to_topk(sparse), k=5), want)


@pytest.mark.parametrize("stop_gradient_logp", [False, True])
def test_sparse_renormalized_missing_tokens_add_zero(stop_gradient_logp):
    """k = 5, the teacher sent only the student's top-1 token. If each missing token has
    q~ = p~ and q~ is a distribution on S_5, the known one has q~ = p~ as well: value 0."""
    z, zt = pair(0, TOPK_SHAPE)
    _, _, _, sparse = _top1_only_teacher(z, zt)
    got = O.student_topk_renormalized_reverse_kl(z, to_topk(sparse), k=5,
                                                 stop_gradient_logp=stop_gradient_logp)
    np.testing.assert_allclose(got, 0.0, atol=1e-6)


# ============================================================================================
# 5. diagnostics


DIAG = {
    "overlap_ratio": (DG.overlap_ratio, R.overlap_ratio),
    "overlap_count": (DG.overlap_count, R.overlap_count),
    "overlap_mass_student": (DG.overlap_mass_student, R.overlap_mass_student),
    "overlap_mass_teacher": (DG.overlap_mass_teacher, R.overlap_mass_teacher),
    "overlap_advantage_sum": (DG.overlap_advantage_sum, R.overlap_advantage_sum),
}


@pytest.mark.parametrize("teacher_form", ["dense", "sparse_K=k", "sparse_K=V"])
@pytest.mark.parametrize("seed,temperature,shape,k", [
    (0, 1.0, TOPK_SHAPE, 5), (1, 0.7, TOPK_SHAPE, 5), (2, 1.6, TOPK_SHAPE, 1)])
@pytest.mark.parametrize("name", sorted(DIAG))
def test_overlap_diagnostics(name, seed, temperature, shape, k, teacher_form):
    fn, ref = DIAG[name]
    z, zt = pair(seed, shape)
    if teacher_form == "dense":
        teacher, ref_teacher = zt, zt
    else:
        K = k if teacher_form == "sparse_K=k" else shape[-1]
        ref_teacher = R.sparse_from_logits(zt, K, temperature)
        teacher = to_topk(ref_teacher)
    got = fn(z, teacher, k=k, temperature=temperature)
    close(got, ref(z, ref_teacher, k, temperature))
    if teacher_form != "dense":  # the overlap set only needs T_k and the overlap's log-probs
        close(got, ref(z, zt, k, temperature))


@pytest.mark.parametrize("seed", SEEDS)
def test_top1_agreement(seed):
    z, zt = pair(seed, SHAPES[1])
    zt = np.where(np.arange(4 * 5 * 11).reshape(4, 5, 11) < 55, z, zt).astype(np.float32)
    want = R.top1_agreement(z, zt)
    assert want.any() and not want.all()
    close(DG.top1_agreement(z, zt), want, atol=0)
    close(O.top1_agreement(z, zt), want, atol=0)


# ============================================================================================
# 6. where= masks: masked positions give exactly 0 (also with -inf logits), finite gradients


MASKED_LOGIT_FNS = {
    **{n: (lambda f, kw: lambda z, zt, w: f(z, zt, where=w, temperature=0.7, **kw))(f, kw)
       for n, (f, _, _, kw) in DIVERGENCES.items()},
    "token_entropy": lambda z, zt, w: O.token_entropy(z, where=w, temperature=0.7),
    "token_logp": lambda z, zt, w: O.token_logp(z, jnp.zeros(z.shape[:-1], jnp.int32), where=w),
    **{n: (lambda f, kw: lambda z, zt, w: f(z, zt, k=5, where=w, temperature=0.7, **kw))(f, kw)
       for n, (f, _, kw) in TOPK.items()},
}
MASKED_REFS = {
    **{n: (lambda f, kw: lambda z, zt, w: f(z, zt, where=w, temperature=0.7, **kw))(f, kw)
       for n, (_, f, _, kw) in DIVERGENCES.items()},
    "token_entropy": lambda z, zt, w: R.token_entropy(z, 0.7, where=w),
    "token_logp": lambda z, zt, w: R.token_logp(z, np.zeros(z.shape[:-1], int), where=w),
    **{n: (lambda f, kw: lambda z, zt, w: f(z, zt, 5, where=w, temperature=0.7, **kw))(f, kw)
       for n, (_, f, kw) in TOPK.items()},
}


@pytest.mark.parametrize("name", sorted(MASKED_LOGIT_FNS))
def test_where_masks_logit_functions(name, seed=0):
    shape = SHAPES[1]
    z, zt = pair(seed, shape)
    w = rand_mask(seed, shape[:-1])
    z_inf = np.where(w[..., None], z, -np.inf).astype(np.float32)
    zt_inf = np.where(w[..., None], zt, -np.inf).astype(np.float32)
    fn = MASKED_LOGIT_FNS[name]
    for a, b in ((z, zt), (z_inf, zt_inf)):
        got = np.asarray(fn(a, b, w))
        assert np.all(got[~w] == 0.0), got[~w]
        close(got[w], MASKED_REFS[name](z, zt, w)[w], **TOPK_TOL.get(name, {}))
        g = grad_of(lambda x: fn(x, b, w), a)
        assert np.all(np.isfinite(g))
        assert np.all(g[~w] == 0.0)


def _token_inputs(seed, shape=TOK):
    rng = np.random.default_rng(seed)
    lp = np.log(rng.uniform(0.05, 1.0, shape)).astype(np.float32)
    lq = np.log(rng.uniform(0.05, 1.0, shape)).astype(np.float32)
    adv = (rng.standard_normal(shape) * 1.5).astype(np.float32)
    return lp, lq, adv


@pytest.mark.parametrize("seed", [0, 1])
def test_where_masks_token_functions_with_inf_inputs(seed):
    lp, lq, adv = _token_inputs(seed)
    w = rand_mask(seed, lp.shape)
    lp_inf = np.where(w, lp, -np.inf).astype(np.float32)
    lq_inf = np.where(w, lq, -np.inf).astype(np.float32)
    d = np.abs(adv)
    fns = {
        "log_ratio": (lambda: O.log_ratio(lp_inf, lq_inf, where=w), R.log_ratio(lp, lq, w)),
        **{e: ((lambda e: lambda: O.sampled_kl(lp_inf, lq_inf, estimator=e, where=w))(e),
               R.sampled_kl(lp, lq, e, w)) for e in ("k1", "k2", "k3")},
        "opd_advantage": (lambda: O.opd_advantage(lq_inf, lp_inf, where=w),
                          R.opd_advantage(lq, lp, where=w)),
        "vopd_advantage": (lambda: O.vopd_advantage(lq_inf, lp_inf, d, where=w),
                           R.vopd_advantage(lq, lp, d, w)),
        "clip_below": (lambda: O.clip_below(np.where(w, adv, -np.inf).astype(np.float32), -1.0,
                                            where=w),
                       R.clip_below(adv, -1.0, w)),
        "clip": (lambda: O.clip(np.where(w, adv, np.inf).astype(np.float32), -1.0, 1.0, where=w),
                 R.clip(adv, -1.0, 1.0, w)),
        "is_loss": (lambda: O.importance_sampling_loss(lp_inf, lp_inf, adv, where=w),
                    R.importance_sampling_loss(lp, lp, adv, where=w)[0]),
        "ppo": (lambda: O.ppo_clip_loss(lp_inf, lp_inf, adv, where=w),
                R.ppo_clip_loss(lp, lp, adv, where=w)[0]),
        "sign_split": (lambda: O.sign_split_loss(lp_inf, lq_inf, adv, where=w),
                       R.sign_split_loss(lp, lq, adv, where=w)),
        "hinge": (lambda: O.contrastive_hinge(lp_inf, lq_inf, lq_inf - 1.0, where=w),
                  R.contrastive_hinge(lp, lq, lq - 1.0, where=w)[0]),
    }
    for name, (fn, want) in fns.items():
        got = np.asarray(fn())
        assert np.all(got[~w] == 0.0), (name, got[~w])
        close(got[w], want[w])


# ============================================================================================
# 7. advantages


@pytest.mark.parametrize("seed", SEEDS)
def test_advantages(seed):
    lp, lq, adv = _token_inputs(seed)
    w = rand_mask(seed, lp.shape)
    kl = np.abs(adv)
    close(O.opd_advantage(lq, lp, coef=0.5, where=w), R.opd_advantage(lq, lp, 0.5, w))
    close(O.opd_advantage(lq, lp), R.opd_advantage(lq, lp))
    close(O.vopd_advantage(lq, lp, kl, where=w), R.vopd_advantage(lq, lp, kl, w))
    close(O.clip_below(adv, -0.7, where=w), R.clip_below(adv, -0.7, w))
    close(O.clip_below(adv, O.mixture_clip_floor(0.2)),
          R.clip_below(adv, R.mixture_clip_floor(0.2)))
    for low, high in ((-0.5, 0.8), (None, 0.3), (-0.2, None)):
        close(O.clip(adv, low, high), R.clip(adv, low, high))
        close(O.clip(adv, low, high, where=w), R.clip(adv, low, high, w))
    adv0 = adv.copy()
    adv0[0, :2] = 0.0  # A = 0 belongs to the non-positive side
    close(O.positive_part(adv0), R.positive_part(adv0), atol=0)
    close(O.scale_by_sign(adv0, pos=2.0, neg=0.25), R.scale_by_sign(adv0, 2.0, 0.25))
    # advantages are data: no gradient reaches their inputs
    for fn in (lambda a: O.opd_advantage(lq, a), lambda a: O.vopd_advantage(lq, a, kl),
               lambda a: O.clip_below(a, -0.5), lambda a: O.clip(a, -0.5, 0.5),
               lambda a: O.scale_by_sign(a, pos=2.0), lambda a: O.positive_part(a),
               lambda a: O.discounted_future_sum(a, w, gamma=0.9)):
        assert np.all(grad_of(fn, lp) == 0.0)


@pytest.mark.parametrize("gamma", [0.0, 0.5, 0.9, 1.0])
@pytest.mark.parametrize("seed", SEEDS)
def test_discounted_future_sum(seed, gamma):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(TOK).astype(np.float32)
    m = rand_mask(seed, TOK)
    close(O.discounted_future_sum(x, m, gamma=gamma), R.discounted_future_sum(x, m, gamma))


# ============================================================================================
# 8. surrogates


@pytest.mark.parametrize("seed", SEEDS)
def test_surrogates_values_and_gradients(seed):
    lp, _, adv = _token_inputs(seed, TOK)
    rng = np.random.default_rng(seed + 7)
    blp = (lp - rng.uniform(-0.45, 0.45, lp.shape)).astype(np.float32)  # rho in ~[0.64, 1.57]
    w = rand_mask(seed, lp.shape)
    rho = R.importance_ratio(lp, blp)
    close(O.importance_ratio(lp, blp), rho)
    close(grad_of(lambda a: O.importance_ratio(a, blp), lp), rho)
    assert np.all(grad_of(lambda b: O.importance_ratio(lp, b), blp) == 0.0)
    for max_ratio in (None, 1.2):
        v, g = R.importance_sampling_loss(lp, blp, adv, max_ratio, w)
        close(O.importance_sampling_loss(lp, blp, adv, max_ratio=max_ratio, where=w), v)
        close(grad_of(lambda a: O.importance_sampling_loss(a, blp, adv, max_ratio=max_ratio,
                                                           where=w), lp), g)
        assert np.all(grad_of(lambda a: O.importance_sampling_loss(lp, blp, a), adv) == 0.0)
    for eps, eps_high in ((0.2, None), (0.2, 0.28), (0.1, 0.3)):
        lo, hi = 1 - eps, 1 + (eps if eps_high is None else eps_high)
        assert np.min(np.abs(rho - lo)) > 1e-4 and np.min(np.abs(rho - hi)) > 1e-4  # no kinks
        v, g = R.ppo_clip_loss(lp, blp, adv, eps, eps_high, w)
        close(O.ppo_clip_loss(lp, blp, adv, eps=eps, eps_high=eps_high, where=w), v)
        close(grad_of(lambda a: O.ppo_clip_loss(a, blp, adv, eps=eps, eps_high=eps_high,
                                                where=w), lp), g)
    # on-policy, PPO and IS have the same gradient -A grad log p
    close(grad_of(lambda a: O.ppo_clip_loss(a, lp, adv), lp), -adv.astype(np.float64))
    close(grad_of(lambda a: O.importance_sampling_loss(a, lp, adv), lp), -adv.astype(np.float64))


@pytest.mark.parametrize("seed", SEEDS)
def test_sign_split_loss(seed):
    lp, lq, adv = _token_inputs(seed)
    adv[0, 0] = 0.0
    pg, dl = -lp, np.abs(lq)
    w = rand_mask(seed, lp.shape)
    for alpha in (1.0, 0.3):
        close(O.sign_split_loss(pg, dl, adv, alpha=alpha, where=w),
              R.sign_split_loss(pg, dl, adv, alpha, w))
        pos = (adv > 0) & w
        close(grad_of(lambda a: O.sign_split_loss(a, dl, adv, alpha=alpha, where=w), pg), pos * 1.0)
        close(grad_of(lambda d: O.sign_split_loss(pg, d, adv, alpha=alpha, where=w), dl),
              ((adv <= 0) & w) * alpha)


# ============================================================================================
# 9. selection


@pytest.mark.parametrize("seed", SEEDS)
def test_entropy_gate_soft_or_weights_quadrants(seed):
    rng = np.random.default_rng(seed)
    h = rng.uniform(0, 2, TOK).astype(np.float32)
    d = rng.uniform(0, 1, TOK).astype(np.float32)
    hn = rng.uniform(0, 1, TOK).astype(np.float32)
    m = rand_mask(seed, TOK)
    close(O.entropy_gate(h, min_nats=0.8), R.entropy_gate(h, 0.8), atol=0)
    close(O.entropy_gate(h, min_nats=0.8, soft_width=0.1), R.entropy_gate(h, 0.8, 0.1))
    close(O.soft_or(hn, d), R.soft_or(hn, d))
    for alpha, gamma in ((1.0, 0.0), (0.5, 2.0), (2.0, 1.0)):
        close(O.tip_sampling_weights(hn, d, alpha=alpha, gamma=gamma),
              R.tip_sampling_weights(hn, d, alpha, gamma))
    for he in (True, False):
        for hd in (True, False):
            close(O.quadrant_select(hn, d, m, high_entropy=he, high_divergence=hd),
                  R.quadrant_select(hn, d, m, he, hd), atol=0)
            close(O.quadrant_select(hn, d, m, high_entropy=he, high_divergence=hd, threshold=0.3),
                  R.quadrant_select(hn, d, m, he, hd, 0.3), atol=0)
    close(O.minmax_normalize(h, m), R.minmax_normalize(h, m))
    const = np.full(TOK, 0.4, np.float32)
    close(O.minmax_normalize(const, m), np.zeros(TOK), atol=0)


@pytest.mark.parametrize("q", [0.0, 0.3, 0.5, 0.95, 1.0])
@pytest.mark.parametrize("seed", SEEDS)
def test_masked_quantile_and_quantile_select(seed, q):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(TOK).astype(np.float32)
    m = rand_mask(seed, TOK)
    close(O.masked_quantile(x, m, q), R.masked_quantile(x, m, q))
    assert np.isinf(O.masked_quantile(x, np.zeros_like(m), q))
    if q > 0:
        close(O.quantile_select(x, m, top_frac=q), R.quantile_select(x, m, q), atol=0)


@pytest.mark.parametrize("seed", SEEDS)
def test_reopold_select_and_two_stage(seed):
    rng = np.random.default_rng(seed)
    r = (rng.standard_normal(TOK) * 1.5).astype(np.float32)
    h = rng.uniform(0, 3, TOK).astype(np.float32)
    m = rand_mask(seed, TOK)
    floor = O.mixture_clip_floor(0.2)
    for step in (0, 49, 50, 80):
        close(O.reopold_select(r, h, m, floor=floor, top_frac=0.5, step=step, switch_step=50),
              R.reopold_select(r, h, m, floor, 0.5, step, 50), atol=0)
        close(O.two_stage(step, 50, r, h), R.two_stage(step, 50, r, h), atol=0)


@pytest.mark.parametrize("frac", [0.1, 0.25, 0.3, 0.5, 1.0])
@pytest.mark.parametrize("seed", SEEDS)
def test_top_fraction_select(seed, frac):
    rng = np.random.default_rng(seed)
    s = rng.standard_normal(TOK).astype(np.float32)
    s[1, :3] = s[0, 0]  # ties, broken by position
    m = rand_mask(seed, TOK)
    m[0, 0] = m[1, :3] = True
    got = np.asarray(O.top_fraction_select(s, m, frac=frac))
    close(got, R.top_fraction_select(s, m, frac), atol=0)
    m10 = np.zeros(TOK, bool)
    m10.reshape(-1)[:10] = True  # n = 10 valid: frac * n is (nearly) an integer
    close(O.top_fraction_select(s, m10, frac=frac), R.top_fraction_select(s, m10, frac), atol=0)


# one compiled sampler for both tests: 4000 keys, ``frac`` traced
_SAMPLE = jax.jit(jax.vmap(lambda w, m, key, frac: O.sampled_fraction_select(w, m, key, frac=frac),
                           in_axes=(None, None, 0, None)))
_KEYS = jax.random.split(jax.random.key(1234), 4000)


def test_sampled_fraction_select_structure():
    """Exactly max(floor(frac n), 1) valid tokens (TIP's floor(rho N)), never an invalid one,
    zero weights picked last."""
    w = np.array([[0.5, 0.0, 2.0, 1.0, 9.0, 3.0]], np.float32)
    m = np.array([[True, True, True, True, False, True]])
    sel = np.asarray(_SAMPLE(w, m, _KEYS, 0.99))[:, 0]  # 5 valid -> floor(4.95) = 4
    assert R.n_keep(0.99, 5) == 4 and np.all(sel.sum(-1) == 4) and np.all(sel[:, 4] == 0)
    assert np.all(sel[:, [0, 2, 3, 5]] == 1)  # every positive weight before the zero one
    sel = np.asarray(_SAMPLE(w, m, _KEYS, 0.7))[:, 0]  # floor(3.5): 3 of the 4 positive weights
    assert np.all(sel.sum(-1) == 3) and np.all(sel[:, 1] == 0) and np.all(sel[:, 4] == 0)
    sel = np.asarray(_SAMPLE(w, m, _KEYS, 0.1))[:, 0]  # floor(0.5) = 0 -> at least one
    assert R.n_keep(0.1, 5) == 1 and np.all(sel.sum(-1) == 1) and np.all(sel[:, [1, 4]] == 0)


def test_sampled_fraction_select_inclusion_probabilities():
    """Sampling without replacement proportional to w: inclusion frequencies over 4000 keys vs
    the exact successive-sampling probabilities (4 sigma ~ 0.03)."""
    w = np.array([[1.0, 2.0, 3.0, 4.0, 9.0, 5.0]], np.float32)
    m = np.array([[True, True, True, True, False, False]])
    freq = np.asarray(_SAMPLE(w, m, _KEYS, 0.5)).mean(0)[0]
    close(freq[:4], R.inclusion_probabilities(w[0, :4], 2), atol=0.03)
    assert freq[4] == 0 and freq[5] == 0


# ============================================================================================
# 10. self-distillation


@pytest.mark.parametrize("seed", SEEDS)
def test_clipping(seed):
    rng = np.random.default_rng(seed)
    l = rng.uniform(0, 3, TOK).astype(np.float32)
    m = rand_mask(seed, TOK)
    close(O.clip_divergence(l, max_value=1.5), R.clip_divergence(l, 1.5))
    close(grad_of(lambda a: O.clip_divergence(a, max_value=1.5), l), (l < 1.5) * 1.0)
    for q in (0.5, 0.9, 0.99):
        c = R.masked_quantile(l, m, q)
        close(O.quantile_clip_divergence(l, m, q=q), R.quantile_clip_divergence(l, m, q))
        g = grad_of(lambda a: O.quantile_clip_divergence(a, m, q=q), l)
        not_at_c = np.abs(l - c) > 1e-4
        close(g[not_at_c], (l < c)[not_at_c] * 1.0)


@pytest.mark.parametrize("mode", ["var", "range"])
@pytest.mark.parametrize("seed", SEEDS)
def test_agreement_weights(seed, mode):
    rng = np.random.default_rng(seed)
    aux = (np.log(rng.uniform(0.05, 1.0, TOK + (4,)))).astype(np.float32)
    m = rand_mask(seed, TOK)
    m[2] = False  # a sequence with no valid token
    for gamma, q in ((1.0, 0.95), (3.0, 0.5)):
        close(O.token_agreement_weights(aux, m, gamma=gamma, q=q, mode=mode),
              R.token_agreement_weights(aux, m, gamma, q, mode))
        close(O.sequence_agreement_weights(aux, m, gamma=gamma, mode=mode),
              R.sequence_agreement_weights(aux, m, gamma, mode))
    # weight floors: 0.01 (token) and 1e-6 (sequence)
    big = aux.copy()
    big[-1, -1] = [0.0, -50.0, 0.0, -50.0]  # a valid position (rand_mask keeps the last one)
    want_tok = R.token_agreement_weights(big, m, 200.0, 0.95, mode)
    want_seq = R.sequence_agreement_weights(big, m, 200.0, mode)
    assert want_tok[-1, -1] == 0.01 and want_seq[-1, -1] == 1e-6
    close(O.token_agreement_weights(big, m, gamma=200.0, mode=mode), want_tok)
    close(O.sequence_agreement_weights(big, m, gamma=200.0, mode=mode), want_seq)


@pytest.mark.parametrize("seed", SEEDS)
def test_contrastive_hinge_and_hidden_matching(seed):
    lp, good, _ = _token_inputs(seed, TOK)
    bad = np.log(np.random.default_rng(seed + 3).uniform(0.05, 1.0, TOK)).astype(np.float32)
    w = rand_mask(seed, TOK)
    for margin in (0.5, 0.0, 2.0):
        v, g = R.contrastive_hinge(lp, good, bad, margin, w)
        close(O.contrastive_hinge(lp, good, bad, margin=margin, where=w), v)
        close(grad_of(lambda a: O.contrastive_hinge(a, good, bad, margin=margin, where=w), lp), g)
        assert np.all(grad_of(lambda a: O.contrastive_hinge(lp, a, bad, margin=margin), good) == 0)
        assert np.all(grad_of(lambda a: O.contrastive_hinge(lp, good, a, margin=margin), bad) == 0)
    rng = np.random.default_rng(seed)
    h, ht = (rng.standard_normal(TOK + (8,)).astype(np.float32) for _ in range(2))
    for where in (None, w):
        v, g = R.hidden_state_matching(h, ht, where)
        close(O.hidden_state_matching(h, ht, where=where), v)
        close(grad_of(lambda a: O.hidden_state_matching(a, ht, where=where), h), g)
        assert np.all(grad_of(lambda a: O.hidden_state_matching(h, a, where=where), ht) == 0)


# ============================================================================================
# 11. reductions


@pytest.mark.parametrize("seed", SEEDS)
def test_reductions(seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(TOK).astype(np.float32)
    m = rand_mask(seed, TOK)
    m[1] = False  # an empty sequence
    wts = (rng.uniform(0, 2, TOK) * m).astype(np.float32)
    cases = {
        "token_mean": (O.token_mean(x, m), R.token_mean(x, m)),
        "weighted_mean": (O.weighted_mean(x, wts), R.weighted_mean(x, wts)),
        "seq_mean_token_mean": (O.seq_mean_token_mean(x, m), R.seq_mean_token_mean(x, m)),
        "seq_mean_weighted_mean": (O.seq_mean_weighted_mean(x, wts),
                                   R.seq_mean_weighted_mean(x, wts)),
        "seq_mean_token_sum": (O.seq_mean_token_sum(x, m), R.seq_mean_token_sum(x, m)),
    }
    for name, (got, (num, den)) in cases.items():
        close(got.num, num, atol=2e-6)
        close(got.den, den, atol=0)
        close(got.value(), R.reduced_value(num, den), atol=2e-6)
    empty = O.token_mean(x, np.zeros(TOK, bool))
    assert float(empty.value()) == 0.0
    g = grad_of(lambda a: O.token_mean(a, np.zeros(TOK, bool)).value(), x)
    assert np.all(g == 0)
    a, b = cases["token_mean"][0], cases["seq_mean_token_mean"][0]
    close((a + a).value(), R.reduced_value(2 * a.num, 2 * a.den), atol=2e-6)
    close(a.scale(3.0).num, 3 * R.token_mean(x, m)[0], atol=5e-6)
    close(O.total({"a": a.scale(0.5), "b": b}),
          0.5 * R.reduced_value(*R.token_mean(x, m))
          + R.reduced_value(*R.seq_mean_token_mean(x, m)),
          atol=2e-6)
    close(grad_of(lambda a_: O.token_mean(a_, m).value(), x), m / m.sum())
