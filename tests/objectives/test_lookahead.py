"""LGR's pieces (opd_jax.objectives.lookahead) and its recipe (LGRConfig) against float64 NumPy:
the candidates' loss and its gradient in both forms, the group rewards' normalisation, the
entropy-triggered branch points against a sort, the confidence measures, and the recipe as OPD
plus coef times the candidates' mean loss (coef 0 or no branch point: OPD's loss and gradient
exactly)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import opd_jax.objectives as O
from tests.objectives.conftest import make_batch
from tests.objectives.test_recipes import SHAPE, recipe_loss


def _softmax64(z, t):
    x = np.asarray(z, np.float64) / t
    x = x - x.max(-1, keepdims=True)
    p = np.exp(x)
    return p / p.sum(-1, keepdims=True)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("form", ["logprob", "prob"])
def test_candidate_loss_and_gradient_match_numpy(form, temperature):
    rng = np.random.default_rng(0)
    z = rng.normal(size=(3, 5, 11)) * 2
    ids = np.stack([rng.choice(11, 4, replace=False) for _ in range(15)]).reshape(3, 5, 4)
    r = rng.normal(size=(3, 5, 4))
    fn = lambda a: O.candidate_loss(a, ids, r, temperature=temperature, form=form)  # noqa: E731
    got = fn(jnp.asarray(z, jnp.float32))
    grad = jax.grad(lambda a: jnp.sum(fn(a)))(jnp.asarray(z, jnp.float32))
    p = _softmax64(z, temperature)
    pk = np.take_along_axis(p, ids, -1)
    onehot = np.zeros((3, 5, 4, 11))
    np.put_along_axis(onehot, ids[..., None], 1.0, -1)
    dlogp = (onehot - p[..., None, :]) / temperature  # d log p_k / d z, [.., K, V]
    if form == "logprob":
        want, weight = -(r * np.log(pk)).sum(-1), r
    else:
        want, weight = -(r * pk).sum(-1), r * pk
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(grad, -(weight[..., None] * dlogp).sum(-2), rtol=1e-4, atol=1e-5)


def test_candidate_loss_reads_zero_probabilities_as_the_floor_and_masks():
    z = jnp.array([[0.0, -jnp.inf, 1.0], [jnp.nan, jnp.nan, jnp.nan]])
    ids = jnp.array([[1, 2], [0, 1]])
    r = jnp.array([[1.0, -1.0], [1.0, -1.0]])
    out = O.candidate_loss(z, ids, r, where=jnp.array([True, False]))
    want = -(O.LOG_FLOOR - float(jax.nn.log_softmax(jnp.array([0.0, 1.0]))[1]))
    np.testing.assert_allclose(out, [want, 0.0], rtol=1e-6)
    g = jax.grad(lambda a: jnp.sum(O.candidate_loss(a, ids, r, where=jnp.array([True, False]))))(z)
    assert np.isfinite(np.asarray(g)[0, [0, 2]]).all() and not np.asarray(g)[1].any()


def test_group_rewards_are_standardised_within_each_active_group():
    rng = np.random.default_rng(1)
    c = rng.uniform(size=(4, 6, 5))
    active = rng.uniform(size=(4, 6)) < 0.6
    r = np.asarray(O.group_rewards(c, active, eps=0.0))
    want = (c - c.mean(-1, keepdims=True)) / c.std(-1, keepdims=True)
    np.testing.assert_allclose(r[active], want[active], rtol=1e-5, atol=1e-6)
    assert not r[~active].any()
    # invariant to a positive affine change of the confidence
    np.testing.assert_allclose(O.group_rewards(3 * c + 2, active, eps=0.0), r, rtol=1e-4, atol=1e-5)
    assert not np.asarray(O.group_rewards(np.ones((2, 3)), np.array([True, True]))).any()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_branch_points_are_the_most_uncertain_positions_above_the_floor(seed):
    rng = np.random.default_rng(seed)
    h = rng.uniform(0, 2, size=(5, 9))
    where = rng.uniform(size=(5, 9)) < 0.7
    idx, active = (np.asarray(x) for x in O.branch_points(h, where, 3, min_entropy=0.8))
    for b in range(5):
        ok = [t for t in np.argsort(-h[b], kind="stable") if where[b, t] and h[b, t] >= 0.8][:3]
        assert list(idx[b][active[b]]) == ok
        assert active[b].sum() == len(ok) and active[b][:len(ok)].all()


def test_confidence_measures():
    rng = np.random.default_rng(2)
    z = rng.normal(size=(4, 13)) * 3
    p = _softmax64(z, 0.8)
    np.testing.assert_allclose(O.confidence(z, "max_prob", temperature=0.8), p.max(-1), rtol=1e-5)
    np.testing.assert_allclose(O.confidence(z, "neg_entropy", temperature=0.8),
                               (p * np.log(p)).sum(-1), rtol=1e-5)
    with pytest.raises(ValueError, match="confidence must be"):
        O.confidence(z, "margin")
    h, top = O.entropy_and_topk(z, 3)
    np.testing.assert_array_equal(top, np.argsort(-z, -1)[:, :3])
    p1 = _softmax64(z, 1.0)
    np.testing.assert_allclose(h, -(p1 * np.log(p1)).sum(-1), rtol=1e-5)


@pytest.mark.parametrize("form", ["logprob", "prob"])
def test_the_recipe_is_opd_plus_coef_times_the_candidates_mean_loss(form):
    b = make_batch(0, **SHAPE)
    z, zt, m = b["hidden"] @ b["head"], b["t_hidden"] @ b["t_head"], b["mask"]
    ex = b["extras"]
    cand = O.candidate_loss(z, ex["lgr_ids"], ex["lgr_reward"], form=form, where=m)
    opd = recipe_loss(O.OPDConfig(), b, z, zt)[0]
    got, metrics = recipe_loss(O.LGRConfig(coef=0.4, form=form), b, z, zt)
    np.testing.assert_allclose(got, opd + 0.4 * jnp.sum(cand) / jnp.sum(m), rtol=1e-5)
    branched = np.asarray(m) & np.asarray(ex["lgr_reward"] != 0).any(-1)
    np.testing.assert_allclose(metrics["lgr/branch_frac"], branched.sum() / np.sum(m), rtol=1e-6)
    opd_grad = jax.grad(lambda a: recipe_loss(O.OPDConfig(), b, a, zt)[0])(z)
    for cfg, extras in [(O.LGRConfig(coef=0.0, form=form), None),
                        (O.LGRConfig(form=form), {**ex, "lgr_reward": jnp.zeros_like(ex["lgr_reward"])})]:
        g = jax.grad(lambda a, c=cfg, e=extras: recipe_loss(c, b, a, zt, extras=e)[0])(z)
        np.testing.assert_array_equal(g, opd_grad)


def test_sampled_reward_picks_the_sampled_tokens_candidate():
    ids = np.array([[[3, 1, 4], [2, 7, 5]]])
    r = np.array([[[0.5, -1.0, 0.25], [1.0, 2.0, 3.0]]])
    np.testing.assert_allclose(O.sampled_reward(np.array([[1, 9]]), ids, r), [[-1.0, 0.0]])


def test_the_advantage_form_adds_the_sampled_tokens_reward_to_opds_advantage():
    b = make_batch(1, **SHAPE)
    z, zt, m = b["hidden"] @ b["head"], b["t_hidden"] @ b["t_head"], b["mask"]
    ex = b["extras"]
    r = O.sampled_reward(b["tokens"], ex["lgr_ids"], ex["lgr_reward"])
    assert np.count_nonzero(np.asarray(r)[np.asarray(m)]) > 0  # some sampled tokens are candidates

    def want(a):
        adv = O.opd_advantage(O.token_logp(zt, b["tokens"]), ex["behavior_logp"], where=m) + 0.4 * r
        return jnp.sum(O.importance_sampling_loss(O.token_logp(a, b["tokens"]), ex["behavior_logp"],
                                                  adv, where=m)) / jnp.sum(m)
    cfg = O.LGRConfig(coef=0.4, form="advantage")
    got, metrics = recipe_loss(cfg, b, z, zt)
    np.testing.assert_allclose(got, want(z), rtol=1e-5)
    np.testing.assert_allclose(jax.grad(lambda a: recipe_loss(cfg, b, a, zt)[0])(z), jax.grad(want)(z),
                               rtol=1e-5, atol=1e-7)
    assert "lgr/sampled" in metrics


@pytest.mark.parametrize("bad, match", [(dict(k=1), "k must be an int >= 2"),
                                        (dict(branch_points=0), "branch_points must be"),
                                        (dict(min_entropy=-1.0), "min_entropy must be"),
                                        (dict(confidence="margin"), "confidence must be one of"),
                                        (dict(form="sum"), "form must be one of"),
                                        (dict(coef=float("nan")), "coef must be")])
def test_bad_settings_are_refused(bad, match):
    with pytest.raises(ValueError, match=match):
        O.LGRConfig(**bad)
