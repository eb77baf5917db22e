"""Each named recipe equals its formula written by hand with the level-1 functions, and the
composition layer (weighted sums, schedules, reductions) behaves like the arithmetic it names."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import opd_jax.objectives as O
from tests.objectives.conftest import make_batch

sg = jax.lax.stop_gradient


def _setup(seed=0):
    b = make_batch(seed)
    z = b["hidden"] @ b["head"]
    zt = b["t_hidden"] @ b["t_head"]
    return b, z, zt


CONCRETE = {}


def _recipe_loss(cfg, b, z, zt, step=3):
    obj = O.build_objective(cfg)
    feats = O.compute_features(obj.features, tokens=b["tokens"], mask=b["mask"], logits=z,
                               teacher_logits=zt)
    ctx = O.TokenCtx(mask=b["mask"], features=feats, extras=b["extras"], step=jnp.int32(step),
                     key=b["key"])
    terms, _, metrics = obj.apply(ctx, obj.init())
    return O.total(terms), metrics


def _mean(x, m):
    return jnp.sum(jnp.where(m, x, 0.0)) / jnp.sum(m)


def _check(cfg, expected_fn, seed=0, step=3):
    """``expected_fn(z, zt, batch, mask)``; NumPy work on logits must use ``CONCRETE["z"]``."""
    b, z, zt = _setup(seed)
    CONCRETE["z"] = z
    m = b["mask"]
    got, got_g = jax.value_and_grad(lambda a: _recipe_loss(cfg, b, a, zt, step)[0])(z)
    exp, exp_g = jax.value_and_grad(lambda a: expected_fn(a, zt, b, m))(z)
    # selections are computed with NumPy from the concrete logits (they carry no gradient)
    np.testing.assert_allclose(got, exp, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got_g, exp_g, rtol=1e-4, atol=1e-6)


def _lp(z, b, t=1.0):
    return O.token_logp(z, b["tokens"], temperature=t)


def test_opd():
    def exp(z, zt, b, m):
        adv = sg(_lp(zt, b) - b["extras"]["behavior_logp"])
        return _mean(-adv * jnp.exp(_lp(z, b) - b["extras"]["behavior_logp"]), m)
    _check(O.OPDConfig(), exp)


def test_opd_discounted_ppo():
    def exp(z, zt, b, m):
        beh = b["extras"]["behavior_logp"]
        r = jnp.where(m, 2.0 * (_lp(zt, b) - beh), 0.0)
        adv = np.zeros(r.shape, np.float32)
        r = np.asarray(r)
        for t in reversed(range(r.shape[1])):
            adv[:, t] = r[:, t] + (0.5 * adv[:, t + 1] if t + 1 < r.shape[1] else 0.0)
        rho = jnp.exp(_lp(z, b) - beh)
        loss = jnp.maximum(-rho * adv, -jnp.clip(rho, 0.8, 1.2) * adv)
        return _mean(loss, m)
    _check(O.OPDConfig(discount=0.5, kl_coef=2.0, surrogate="ppo"), exp)


@pytest.mark.parametrize("beta", [0.0, 0.3, 1.0])
def test_gkd(beta):
    _check(O.GKDConfig(beta=beta, temperature=0.9),
           lambda z, zt, b, m: _mean(O.generalized_jsd(z, zt, beta=beta, temperature=0.9), m))


def test_eopd():
    def exp(z, zt, b, m):
        beh = b["extras"]["behavior_logp"]
        adv = sg(_lp(zt, b) - beh)
        rho = jnp.exp(_lp(z, b) - beh)
        pg = jnp.maximum(-rho * adv, -jnp.clip(rho, 0.8, 1.2) * adv)
        gate = (O.token_entropy(zt) > 2.0).astype(jnp.float32)
        return _mean(pg + 0.5 * gate * O.teacher_topk_forward_kl(z, zt, k=5), m)
    _check(O.EOPDConfig(tau=2.0, k=5, fkl_coef=0.5), exp)


def test_aopd():
    def exp(z, zt, b, m):
        lp = _lp(z, b)
        adv = sg(_lp(zt, b) - lp)
        pg = -adv * jnp.exp(lp - b["extras"]["behavior_logp"])
        return _mean(jnp.where(adv > 0, pg, 0.7 * O.reverse_kl(z, zt)), m)
    _check(O.AOPDConfig(alpha=0.7), exp)


@pytest.mark.parametrize("step", [1, 5])
def test_reopold_two_stages(step):
    floor = np.log(0.2 / 0.8)

    def exp(z, zt, b, m):
        lp = _lp(z, b)
        r = sg(_lp(zt, b) - lp)
        if step < 3:
            keep = m & (r >= floor)
        else:
            h = np.asarray(O.token_entropy(CONCRETE["z"]))[np.asarray(m)]
            keep = m & (O.token_entropy(z) >= np.quantile(h, 0.5))
        loss = -jnp.maximum(r, floor) * jnp.exp(lp - b["extras"]["behavior_logp"])
        return jnp.sum(jnp.where(keep, loss, 0.0)) / jnp.sum(keep)
    _check(O.REOPOLDConfig(switch_step=3), exp, step=step)


def test_tip_soft_or():
    def exp(z, zt, b, m):
        mm = np.asarray(m)
        h = np.asarray(O.token_entropy(CONCRETE["z"]))
        d = np.asarray(O.generalized_jsd(CONCRETE["z"], zt, beta=0.5))
        norm = lambda x: (x - x[mm].min()) / (x[mm].max() - x[mm].min())  # noqa: E731
        s = np.where(mm, 1 - (1 - norm(h)) * (1 - norm(d)), -np.inf)
        n_keep = int(np.ceil(0.3 * mm.sum()))
        keep = np.zeros(mm.shape, bool)
        keep.flat[np.argsort(-s, axis=None, kind="stable")[:n_keep]] = True
        return jnp.sum(jnp.where(keep, O.reverse_kl(z, zt), 0.0)) / n_keep
    _check(O.TIPConfig(frac=0.3), exp)


def test_opsd_teacher_topk():
    def exp(z, zt, b, m):
        return _mean(O.teacher_topk_generalized_jsd(z, zt, k=6, beta=0.5, temperature=1.1), m)
    _check(O.OPSDConfig(teacher_top_k=6), exp)


def test_unisd_star():
    cfg = O.UniSDConfig(alpha=0.0, clip="static", clip_value=3.0, agreement="token",
                        contrastive_coef=0.1, hidden_coef=0.1)

    def exp(z, zt, b, m):
        e = b["extras"]
        div = jnp.minimum(O.forward_kl(z, zt, temperature=0.7), 3.0)
        w = O.token_agreement_weights(e["aux_teacher_logp"], m)
        mf = m.astype(jnp.float32)
        per_seq = jnp.sum(w * div, 1) / jnp.sum(w, 1)
        lp = _lp(z, b, 0.7)
        hinge = jax.nn.relu(0.5 + jnp.abs(lp - _lp(zt, b, 0.7)) - jnp.abs(lp - e["bad_teacher_logp"]))
        seq = lambda x: jnp.mean(jnp.sum(x * mf, 1) / jnp.sum(mf, 1))  # noqa: E731
        hid = jnp.mean((e["hidden"] - e["teacher_hidden"]) ** 2, -1)
        return jnp.mean(per_seq) + 0.1 * seq(hinge) + 0.1 * seq(hid)
    _check(cfg, exp)


@pytest.mark.parametrize("variant,fn", [("sg", O.student_topk_reverse_kl_sg),
                                        ("tail", O.student_topk_reverse_kl_tail),
                                        ("intersect", O.intersect_topk_reverse_kl)])
def test_sg_topk(variant, fn):
    _check(O.SGTopKConfig(k=6, variant=variant), lambda z, zt, b, m: _mean(fn(z, zt, k=6), m))


def test_vopd_topk_baseline():
    def exp(z, zt, b, m):
        lp = _lp(z, b)
        base = O.student_topk_renormalized_reverse_kl(z, zt, k=10)
        adv = sg(_lp(zt, b) - lp + base)
        return _mean(-adv * jnp.exp(lp - b["extras"]["behavior_logp"]), m)
    _check(O.VOPDConfig(baseline="topk", k=10), exp)


def test_topk_opd_and_sft_and_reinforce():
    _check(O.TopKOPDConfig(k=5, restrict="overlap"),
           lambda z, zt, b, m: _mean(O.topk_opd_loss(z, zt, k=5, restrict="overlap"), m))
    _check(O.SFTConfig(), lambda z, zt, b, m: _mean(-_lp(z, b), m))

    def reinforce(z, zt, b, m):
        r = b["extras"]["reward"]
        per_seq = jnp.sum(r * m, 1) / jnp.sum(m, 1)
        baseline = jnp.mean(per_seq)
        return _mean(-(r - baseline) * jnp.exp(_lp(z, b) - b["extras"]["behavior_logp"]), m)
    _check(O.ReinforceConfig(), reinforce)


def test_topk_opd_on_policy_gradient_is_the_weighted_log_prob_gradient():
    """Rethinking-OPD: on-policy, grad = -sum_{v in S_k} A(v) grad log p(v)."""
    z, zt = jax.random.normal(jax.random.key(1), (9,)), jax.random.normal(jax.random.key(2), (9,))
    g = jax.grad(lambda a: O.topk_opd_loss(a, zt, k=4))(z)
    lp, lq = jax.nn.log_softmax(z), jax.nn.log_softmax(zt)
    top = jax.lax.top_k(lp, 4)[1]
    w = jax.nn.softmax(lp[top])
    adv = w * (lq[top] - lp[top])
    exp = jax.grad(lambda a: -jnp.sum(adv * jax.nn.log_softmax(a)[top]))(z)
    np.testing.assert_allclose(g, exp, rtol=1e-5, atol=1e-7)


# ------------------------------------------------------------------ composition


def test_weighted_sum_equals_the_sum_by_hand_with_schedules():
    b, z, zt = _setup(1)
    sched = optax.linear_schedule(0.0, 1.0, transition_steps=10)
    gkd = O.build_objective(O.GKDConfig(beta=0.5))
    sft = O.build_objective(O.SFTConfig())
    combo = O.weighted_sum(jsd=(2.0, gkd), ce=(sched, sft))
    assert combo.token_loss is not None
    feats = O.compute_features(combo.features, tokens=b["tokens"], mask=b["mask"], logits=z,
                               teacher_logits=zt)
    ctx = O.TokenCtx(mask=b["mask"], features=feats, step=jnp.int32(4))
    terms, state, metrics = combo.apply(ctx, combo.init())
    assert set(terms) == {"jsd/jsd", "ce/nll"}
    m = b["mask"]
    expected = (2.0 * _mean(O.generalized_jsd(z, zt), m) + 0.4 * _mean(-_lp(z, b), m))
    np.testing.assert_allclose(O.total(terms), expected, rtol=1e-5)
    np.testing.assert_allclose(metrics["ce/coef"], 0.4, rtol=1e-6)
    np.testing.assert_allclose(_mean(combo.token_loss(ctx), m), expected, rtol=1e-5)


def test_feature_name_conflicts_are_errors():
    a = O.build_objective(O.GKDConfig(beta=0.1))
    c = O.build_objective(O.GKDConfig(beta=0.9))
    with pytest.raises(ValueError, match="'jsd' is defined twice"):
        O.weighted_sum(a=(1.0, a), c=(1.0, c))
    # the same feature asked for twice is shared, not an error
    O.weighted_sum(a=(1.0, a), b=(1.0, O.build_objective(O.GKDConfig(beta=0.1))))


@pytest.mark.parametrize("reduce", [O.token_mean, O.seq_mean_token_mean, O.seq_mean_token_sum])
def test_reductions_add_over_microbatches(reduce):
    x = jax.random.normal(jax.random.key(3), (6, 5))
    m = jax.random.bernoulli(jax.random.key(4), 0.7, (6, 5)).at[2].set(False)
    whole = reduce(x, m)
    parts = reduce(x[:2], m[:2]) + reduce(x[2:], m[2:])
    np.testing.assert_allclose(parts.num, whole.num, rtol=1e-6)
    np.testing.assert_allclose(parts.den, whole.den, rtol=1e-6)
    assert float(O.Reduced(jnp.float32(3.0), jnp.float32(0.0)).value()) == 0.0
