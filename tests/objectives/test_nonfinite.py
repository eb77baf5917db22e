"""Zero probabilities and huge logits: finite values and gradients everywhere, correct values.

- Level 1: every vocabulary-wide function on rows with *shared* ``-inf`` entries (both models
  give the token probability 0), *one-sided* ``-inf`` entries (one model does) and logits of
  about ±1e4, against a float64 NumPy oracle of the documented rule (divergences module
  docstring): shared zeros drop out, a one-sided ``-inf`` log-prob reads as ``LOG_FLOOR``. The
  oracle is ``reference.py`` evaluated on floored float64 log-probabilities; gradients are its
  central differences over the finite logits.
- Every vocabulary path (naive, chunked, fused, one-pass) evaluates every feature of every
  recipe (and the diagnostics) on such rows: finite, and equal across paths.
- Padded positions holding ``-inf`` / NaN (logits, behaviour or sparse-teacher log-probs,
  rewards) change no recipe's loss or gradient, and get zero gradient.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import opd_jax.objectives as O
from tests.objectives import reference as R
from tests.objectives.conftest import make_batch, recipe_configs

FLOOR = -87.33654475055310898657  # log(2**-126)
V = 8


def _rows():
    """Student and teacher logits [3, V]: shared -inf (row 0), one-sided both ways (row 1),
    ±1e4 (row 2)."""
    rng = np.random.default_rng(0)
    z = rng.standard_normal((3, V)) * 2.0
    zt = rng.standard_normal((3, V)) * 2.0
    z[0, :3] = zt[0, :3] = -np.inf
    zt[1, [1, 4]] = -np.inf  # the teacher forbids tokens the student likes
    z[1, 6] = -np.inf  # the student forbids a token the teacher likes
    z[1, 1] = 3.0
    z[2] *= 5e3
    zt[2] *= 5e3
    return z.astype(np.float32), zt.astype(np.float32)


def floored(z):
    """Float64 log-probs with -inf read as LOG_FLOOR (the documented rule)."""
    lp = R.log_softmax(np.asarray(z, np.float64))
    return np.where(np.isneginf(lp), FLOOR, lp)


def oracle(ref):
    """``ref(lp, lq)`` of reference.py on floored log-probs (they renormalise to themselves)."""
    return lambda z, zt: ref(floored(z), floored(zt))


TOKENS = np.array([0, 1, 3])  # row 0: a shared-zero token; row 1: one the teacher forbids
# name: (library fn(z, zt), oracle(z, zt), gradient = derivative of the value?)
def kl_logspace(la, lb):
    """KL from log-probs (probabilities of the ±1e4 row underflow even in float64)."""
    return np.sum(np.exp(la) * (la - lb), -1)


FUNCS = {
    "reverse_kl": (O.reverse_kl, lambda z, zt: kl_logspace(floored(z), floored(zt)), True),
    "forward_kl": (O.forward_kl, lambda z, zt: kl_logspace(floored(zt), floored(z)), True),
    "jsd_0.3": (lambda a, b: O.generalized_jsd(a, b, beta=0.3),
                oracle(lambda a, b: R.generalized_jsd(a, b, 0.3)), True),
    "jsd_0.5": (lambda a, b: O.generalized_jsd(a, b, beta=0.5),
                oracle(lambda a, b: R.generalized_jsd(a, b, 0.5)), True),
    "tv": (O.total_variation, oracle(R.total_variation), True),
    "entropy": (lambda a, b: O.token_entropy(a), oracle(lambda a, b: R.token_entropy(a)), True),
    "normalized_entropy": (lambda a, b: O.normalized_entropy(a),
                           oracle(lambda a, b: R.token_entropy(a) / np.log(V)), True),
    "token_logp": (lambda a, b: O.token_logp(a, jnp.asarray(TOKENS)),
                   oracle(lambda a, b: R.token_logp(a, TOKENS)), True),
    "topk_rkl": (lambda a, b: O.student_topk_reverse_kl(a, b, k=4),
                 oracle(lambda a, b: R.student_topk_reverse_kl(a, b, 4)), True),
    "topk_rkl_sg": (lambda a, b: O.student_topk_reverse_kl_sg(a, b, k=4),
                    oracle(lambda a, b: R.student_topk_reverse_kl(a, b, 4)), False),
    "topk_rkl_tail": (lambda a, b: O.student_topk_reverse_kl_tail(a, b, k=4),
                      oracle(lambda a, b: R.student_topk_reverse_kl_tail(a, b, 4)), True),
    "topk_renorm": (lambda a, b: O.student_topk_renormalized_reverse_kl(a, b, k=4),
                    oracle(lambda a, b: R.student_topk_renormalized_reverse_kl(a, b, 4)), True),
    "intersect": (lambda a, b: O.intersect_topk_reverse_kl(a, b, k=4),
                  oracle(lambda a, b: R.intersect_topk_reverse_kl(a, b, 4)), False),
    "teacher_topk_fkl": (lambda a, b: O.teacher_topk_forward_kl(a, b, k=4),
                         oracle(lambda a, b: R.teacher_topk_forward_kl(a, b, 4)), True),
    "teacher_topk_jsd": (lambda a, b: O.teacher_topk_generalized_jsd(a, b, k=4, beta=0.3),
                         oracle(lambda a, b: R.teacher_topk_generalized_jsd(a, b, 4, 0.3)), True),
    "topk_opd": (lambda a, b: O.topk_opd_loss(a, b, k=4),
                 oracle(lambda a, b: R.topk_opd_loss(a, b, 4)), False),
    "topk_opd_non_overlap": (lambda a, b: O.topk_opd_loss(a, b, k=4, support="non_overlap"),
                             oracle(lambda a, b: R.topk_opd_loss(a, b, 4, "non_overlap")), False),
}


def test_floor_is_the_smallest_normal_float32_probability():
    assert O.LOG_FLOOR == pytest.approx(np.log(np.finfo(np.float32).tiny), abs=1e-12)


@pytest.mark.parametrize("name", sorted(FUNCS))
def test_shared_one_sided_and_huge_logits(name):
    fn, ref, differentiable = FUNCS[name]
    z, zt = _rows()
    value, grad = jax.value_and_grad(lambda a: jnp.sum(fn(a, jnp.asarray(zt))), )(jnp.asarray(z))
    per_row = np.asarray(fn(jnp.asarray(z), jnp.asarray(zt)), np.float64)
    assert np.all(np.isfinite(per_row)) and np.all(np.isfinite(np.asarray(grad)))
    want = ref(z, zt)
    np.testing.assert_allclose(per_row, want, rtol=1e-5, atol=1e-5)
    finite = np.isfinite(z)
    assert np.all(np.asarray(grad)[~finite] == 0.0)  # a -inf logit gets no gradient
    if differentiable:  # rows 0 and 1 (row 2's softmax is saturated: gradients ~ e^-1e4)
        g = np.zeros_like(z, np.float64)
        z64 = z.astype(np.float64)
        for i, j in zip(*np.nonzero(finite[:2])):
            up, down = z64.copy(), z64.copy()
            up[i, j] += 1e-6
            down[i, j] -= 1e-6
            g[i, j] = (ref(up, zt)[i] - ref(down, zt)[i]) / 2e-6
        np.testing.assert_allclose(np.asarray(grad)[:2], g[:2], rtol=1e-4, atol=2e-5)


def test_one_sided_values_follow_the_floor():
    """Row 1 by hand: KL(p || q) counts p(v)(log p(v) - LOG_FLOOR) where q(v) = 0."""
    z, zt = _rows()
    lp, lq = R.log_softmax(z[1].astype(np.float64)), R.log_softmax(zt[1].astype(np.float64))
    p = np.exp(lp)
    rkl = sum(p[v] * (lp[v] - (FLOOR if np.isneginf(lq[v]) else lq[v]))
              for v in range(V) if p[v] > 0)
    assert rkl > 40  # large (the student puts mass where the teacher forbids) but finite
    np.testing.assert_allclose(float(O.reverse_kl(z[1], zt[1])), rkl, rtol=1e-5)


# ------------------------------------------------------------------ every vocabulary path


def _all_features():
    """One feature per distinct computation among every recipe variant's and the diagnostics'
    (same function and code path; temperatures and k do not change the code path)."""
    feats, seen = {}, set()
    for i, cfg in enumerate(recipe_configs()):
        for name, f in O.build_objective(cfg, diagnostics_k=4).features.items():
            kw = dict(f.kwargs)
            key = (f.fn, f.inputs, kw.get("beta"), kw.get("support"))
            if key not in seen:
                seen.add(key)
                feats[f"{i}/{name}"] = f
    return feats


FEATURES = _all_features()


def _pathological_batch():
    """make_batch's shapes; rows: 0 shared -inf, 1 one-sided, 2 ±1e4; positions 5-6 padded
    and holding -inf / NaN in the logits."""
    b = make_batch(seed=11)
    z = np.array(b["hidden"] @ b["head"])
    zt = np.array(b["t_hidden"] @ b["t_head"])
    z[0, :, :4] = zt[0, :, :4] = -np.inf
    zt[1, :, [2, 7]] = -np.inf
    z[1, :, 9] = -np.inf
    z[2] *= 2e3
    zt[2] *= 2e3
    mask = np.ones(z.shape[:2], bool)
    mask[:, 5:] = False
    z[:, 5:] = np.nan
    zt[:, 5:] = -np.inf
    return b, jnp.asarray(z), jnp.asarray(zt), jnp.asarray(mask)


def _feature_sum(feats, mask):
    return sum(jnp.sum(jnp.where(mask, v, 0.0)) for v in feats.values())


def test_naive_and_chunked_paths_on_pathological_logits():
    b, z, zt, mask = _pathological_batch()

    def run(chunk):
        def total(a):
            f = O.compute_features(FEATURES, tokens=b["tokens"], mask=mask, logits=a,
                                   teacher_logits=zt, extras=b["extras"], chunk_size=chunk)
            return _feature_sum(f, mask), f
        return jax.value_and_grad(total, has_aux=True)(z)
    (v0, f0), g0 = jax.jit(lambda: run(None))()
    (v1, f1), g1 = jax.jit(lambda: run(3))()
    for name, x in f0.items():
        assert np.all(np.isfinite(np.asarray(x))), name
        np.testing.assert_allclose(f1[name], x, rtol=2e-5, atol=2e-5, err_msg=name)
    g0 = np.asarray(g0)
    assert np.all(np.isfinite(g0)) and np.all(g0[~np.asarray(mask)] == 0.0)
    assert np.all(g0[~np.isfinite(np.asarray(z))] == 0.0)
    np.testing.assert_allclose(g1, g0, rtol=2e-4, atol=1e-4)


def test_fused_and_one_pass_paths_with_a_forbidding_teacher_and_huge_logits():
    """Hidden states and heads (a -inf logit cannot come out of finite weights for the student):
    the teacher's head forbids two tokens (-inf column, positive hidden states), one row has
    logits of ~±1e3-1e4; fused and one-pass equal the naive path on the same logits."""
    b = make_batch(seed=12)
    hidden = b["hidden"].at[2].multiply(3e3)
    t_hidden = jnp.abs(b["t_hidden"]) + 0.1
    t_head = b["t_head"].at[:, jnp.array([3, 8])].set(-jnp.inf)
    mask = b["mask"]
    topk = {k: v for k, v in FEATURES.items()}
    kw = dict(tokens=b["tokens"], mask=mask, extras=b["extras"])

    def naive(h, w):
        f = O.compute_features(topk, logits=h @ w, teacher_logits=t_hidden @ t_head, **kw)
        return _feature_sum(f, mask), f

    def fused(h, w):
        f = O.compute_features(topk, hidden=h, head=w, teacher_hidden=t_hidden,
                               teacher_head=t_head, chunk_size=3, **kw)
        return _feature_sum(f, mask), f

    def one_pass(h, w):
        return O.fused_token_loss(lambda ctx: sum(ctx.features.values()), topk,
                                  weights=mask.astype(jnp.float32), hidden=h, head=w,
                                  teacher_hidden=t_hidden, teacher_head=t_head, chunk_size=3,
                                  **kw)

    def everything(h, w):
        return [jax.value_and_grad(fn, argnums=(0, 1), has_aux=True)(h, w)
                for fn in (naive, fused, one_pass)]
    (ref, ref_g), *others = jax.jit(everything)(hidden, b["head"])
    assert np.isfinite(ref[0]) and all(np.all(np.isfinite(np.asarray(g))) for g in ref_g)
    for name, x in ref[1].items():
        assert np.all(np.isfinite(np.asarray(x))), name
    for (value, feats), grads in others:
        np.testing.assert_allclose(value, ref[0], rtol=2e-5)
        for name, x in feats.items():
            np.testing.assert_allclose(x, ref[1][name], rtol=2e-5, atol=2e-5, err_msg=name)
        for a, c in zip(grads, ref_g):
            np.testing.assert_allclose(a, c, rtol=2e-4, atol=1e-4)


# ------------------------------------------------------------------ padded positions


def with_garbage_padding(b):
    """The same batch with every padded position holding -inf / NaN (logits and extras)."""
    m = np.asarray(b["mask"])
    z = np.array(b["hidden"] @ b["head"])
    z[~m] = -np.inf
    zt = np.array(b["t_hidden"] @ b["t_head"])
    zt[~m] = np.nan
    ex = {}
    for k, v in b["extras"].items():
        x = np.array(v)
        if np.issubdtype(x.dtype, np.floating):
            x[~m] = -np.inf if "logp" in k else np.nan
        ex[k] = jnp.asarray(x)
    return jnp.asarray(z), jnp.asarray(zt), ex


@pytest.mark.parametrize("cfg", recipe_configs(), ids=lambda c: repr(c)[:60])
def test_padded_positions_contribute_nothing_whatever_they_hold(cfg):
    b = make_batch(seed=13)
    obj = O.build_objective(cfg)
    m = b["mask"]

    def loss(z, zt, extras):
        f = O.compute_features(obj.features, tokens=b["tokens"], mask=m, logits=z,
                               teacher_logits=zt, extras=extras)
        ctx = O.TokenCtx(mask=m, features=f, extras=extras, step=jnp.int32(3), key=b["key"])
        return O.total(obj.apply(ctx, obj.init())[0])
    step = jax.value_and_grad(loss)
    clean = step(b["hidden"] @ b["head"], b["t_hidden"] @ b["t_head"], b["extras"])
    dirty = step(*with_garbage_padding(b))
    assert np.isfinite(dirty[0]) and np.all(np.isfinite(np.asarray(dirty[1])))
    np.testing.assert_allclose(dirty[0], clean[0], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(dirty[1], clean[1], rtol=1e-6, atol=1e-7)
    assert np.all(np.asarray(dirty[1])[~np.asarray(m)] == 0.0)
