"""PowerOPD (Box-Cox reward) and POPD / TOPD (horizon mask) against float64 NumPy oracles written
from their formulas (objectives_2026.md and the configs' documented choices), not from the library:
the reward's values and limits, the horizon mask by a loop over rows, the recipes' losses and
gradients, their reductions to plain OPD, padding, and config validation."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import opd_jax.objectives as O
from tests.objectives import recipe_oracles as RO
from tests.objectives.conftest import make_batch
from tests.objectives.test_nonfinite import with_garbage_padding
from tests.objectives.test_recipes import SHAPE, check, lps, recipe_loss

FLOOR = -87.33654475055310898657  # log(2**-126): a -inf log-prob reads as this


def box_cox(lq, lmu, alpha):
    """((q/mu)^alpha - 1) / alpha in float64; the log-ratio at alpha = 0."""
    lq, lmu = np.asarray(lq, np.float64), np.asarray(lmu, np.float64)
    if alpha == 0:
        return lq - lmu
    return ((np.exp(lq) / np.exp(lmu)) ** alpha - 1.0) / alpha


def horizon_keep(mask, step, mode, fraction, grow_steps, max_length=None):
    """The horizon mask by a loop over rows: the first H valid tokens of each row."""
    m = np.asarray(mask, bool)
    keep = np.zeros(m.shape, bool)
    for i, row in enumerate(m):
        length = int(row.sum()) if max_length is None else max_length
        if length == 0:
            continue
        h = RO.n_keep(fraction, length)  # max(floor(fraction L), 1)
        if mode == "growing":  # integer arithmetic: floor((L - H_0) min(k, K) / K)
            h += (length - h) * min(step, grow_steps) // grow_steps
        seen = 0
        for t in range(len(row)):
            if row[t]:
                keep[i, t] = seen < h
                seen += 1
    return keep


def value_and_grad(cfg, seed=0, step=3):
    b = make_batch(seed, **SHAPE)
    zt = b["t_hidden"] @ b["t_head"]
    return jax.value_and_grad(lambda z: recipe_loss(cfg, b, z, zt, step)[0])(b["hidden"] @ b["head"])


def assert_same(a, b, rtol=1e-6, atol=1e-7):
    np.testing.assert_allclose(float(a[0]), float(b[0]), rtol=rtol, atol=atol)
    np.testing.assert_allclose(np.asarray(a[1]), np.asarray(b[1]), rtol=rtol, atol=atol)


# ------------------------------------------------------------------ PowerOPD's reward


@pytest.mark.parametrize("alpha", [-1.5, -0.5, -0.1, 0.0, 0.2, 0.5, 1.0])
def test_box_cox_reward_against_numpy(alpha):
    rng = np.random.default_rng(0)
    lq = rng.uniform(-8.0, -0.01, (4, 9)).astype(np.float32)
    lmu = rng.uniform(-8.0, -0.01, (4, 9)).astype(np.float32)
    mask = rng.random((4, 9)) < 0.7
    got = np.asarray(O.power_advantage(jnp.asarray(lq), jnp.asarray(lmu), alpha=alpha,
                                       where=jnp.asarray(mask)))
    want = np.where(mask, box_cox(lq, lmu, alpha), 0.0)
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=1e-6)
    assert np.all(got[~mask] == 0.0)
    if alpha > 0:  # bounded below by -1/alpha; increasing in the log-ratio, sign kept
        assert np.all(got >= -1.0 / alpha)
    r = (lq - lmu)[mask]
    assert np.all(np.sign(got[mask]) == np.sign(r))
    order = np.argsort(r)
    assert np.all(np.diff(got[mask][order]) >= 0)


def test_box_cox_clip_and_zero_probabilities():
    lq = jnp.array([-0.1, -9.0, -jnp.inf, -2.0])
    lmu = jnp.array([-7.0, -0.2, -0.5, -2.0])
    got = np.asarray(O.power_advantage(lq, lmu, alpha=0.5, clip=3.0))
    want = np.clip(box_cox([-0.1, -9.0, FLOOR, -2.0], [-7.0, -0.2, -0.5, -2.0], 0.5), -3.0, 3.0)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    assert got[0] == 3.0 and got[3] == 0.0  # clipped above; q = mu gives 0 at any alpha
    np.testing.assert_allclose(got[2], (math.exp(0.5 * (FLOOR + 0.5)) - 1) / 0.5, rtol=1e-6)
    # the extreme ratio at |alpha| > 0.9 stays finite (exponent capped), for either sign
    for alpha in (1.0, 3.0, -3.0):
        x = O.power_advantage(jnp.array([0.0, FLOOR]), jnp.array([FLOOR, 0.0]), alpha=alpha)
        assert np.all(np.isfinite(np.asarray(x)))


@pytest.mark.parametrize("alpha", [1e-3, -1e-4, 1e-6, 1e-9, 1e-30])
def test_small_alpha_is_the_log_ratio_plus_its_series(alpha):
    """expm1(a r)/a = r + a r^2/2 + a^2 r^3/6 + ...: no cancellation as alpha -> 0."""
    r = np.array([-20.0, -3.0, -0.5, 0.25, 4.0])
    got = np.asarray(O.power_advantage(jnp.asarray(r, jnp.float32), jnp.zeros(5), alpha=alpha))
    want = r + alpha * r ** 2 / 2 + alpha ** 2 * r ** 3 / 6 + alpha ** 3 * r ** 4 / 24
    np.testing.assert_allclose(got, want, rtol=2e-6)


def test_the_reward_is_data_no_gradient_flows_through_it():
    lq, lmu = jnp.array([-1.0, -3.0, -0.2]), jnp.array([-2.0, -0.5, -0.2])
    g = jax.grad(lambda a, b: jnp.sum(O.power_advantage(a, b, alpha=0.7)), argnums=(0, 1))(lq, lmu)
    assert all(np.all(np.asarray(x) == 0.0) for x in g)


# ------------------------------------------------------------------ PowerOPD's recipe


@pytest.mark.parametrize("alpha,surrogate,clip", [(0.5, "is", None), (-0.7, "is", None),
                                                  (1.0, "ppo", None), (0.3, "is", 1.5)])
def test_power_opd_against_oracle(alpha, surrogate, clip):
    """Token mean of the surrogate in rho = p/mu with A = Box-Cox(q/mu), frozen."""
    def oracle(z, z0, nb):
        lp, _, lq, beh = lps(z, z0, nb)
        a = box_cox(lq, beh, alpha)
        if clip is not None:
            a = np.clip(a, -clip, clip)
        return RO.tmean(RO.surrogate(surrogate, a, lp, beh), nb["mask"])
    check(O.PowerOPDConfig(alpha=alpha, surrogate=surrogate, reward_clip=clip), oracle)


def test_power_opd_gradient_is_minus_rho_a_grad_log_p_with_a_fixed():
    """Closed form: d loss / dz = -(1/N) sum_t rho_t A_t (onehot(y_t) - softmax(z_t)), and no
    gradient reaches the teacher's logits."""
    b = make_batch(4, **SHAPE)
    z, zt = b["hidden"] @ b["head"], b["t_hidden"] @ b["t_head"]
    cfg = O.PowerOPDConfig(alpha=0.4)
    g, gt = jax.grad(lambda a, c: recipe_loss(cfg, b, a, c)[0], argnums=(0, 1))(z, zt)
    m, tok = np.asarray(b["mask"]), np.asarray(b["tokens"])
    lz = RO.lsm(np.asarray(z, np.float64))
    beh = np.asarray(b["extras"]["behavior_logp"], np.float64)
    lp = np.take_along_axis(lz, tok[..., None], -1)[..., 0]
    a = box_cox(RO.token_lp(np.asarray(zt, np.float64), tok), beh, 0.4)
    coef = np.where(m, -np.exp(lp - beh) * a, 0.0) / m.sum()
    want = coef[..., None] * (np.eye(lz.shape[-1])[tok] - np.exp(lz))
    np.testing.assert_allclose(np.asarray(g), want, rtol=2e-4, atol=1e-7)
    assert np.all(np.asarray(gt) == 0.0)


@pytest.mark.parametrize("surrogate", ["is", "ppo"])
def test_alpha_zero_is_opd_and_small_alpha_tends_to_it(surrogate):
    opd = value_and_grad(O.OPDConfig(surrogate=surrogate))
    assert_same(value_and_grad(O.PowerOPDConfig(alpha=0.0, surrogate=surrogate)), opd)
    assert_same(value_and_grad(O.PowerOPDConfig(alpha=1e-6, surrogate=surrogate)), opd,
                rtol=1e-4, atol=1e-6)
    far = value_and_grad(O.PowerOPDConfig(alpha=0.5, surrogate=surrogate))
    assert abs(float(far[0]) - float(opd[0])) > 1e-3


# ------------------------------------------------------------------ the horizon mask


MASK_ROWS = [[0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0],  # a prompt inside the row, then padding
             [1] * 13, [0] * 13, [1, 1] + [0] * 11, [1, 0, 1, 1, 0, 1, 1, 0, 1, 1, 1, 0, 1]]


@pytest.mark.parametrize("mode,fraction,step,grow_steps,max_length", [
    ("fixed_fraction", 0.1, 0, 8, None), ("fixed_fraction", 0.3, 5, 8, None),
    ("fixed_fraction", 1.0, 0, 8, None), ("fixed_fraction", 0.5, 0, 8, 6),
    ("growing", 0.1, 0, 8, None), ("growing", 0.25, 3, 8, None), ("growing", 0.1, 8, 8, None),
    ("growing", 0.1, 100, 8, None), ("growing", 0.2, 5, 7, None), ("growing", 0.1, 4, 8, 20)])
def test_horizon_mask_against_a_loop_over_rows(mode, fraction, step, grow_steps, max_length):
    rng = np.random.default_rng(step)
    mask = np.concatenate([np.array(MASK_ROWS, bool), rng.random((6, 13)) < 0.8])
    kw = dict(mode=mode, fraction=fraction, grow_steps=grow_steps, max_length=max_length)
    want = horizon_keep(mask, step, **kw)
    got = jax.jit(lambda s: O.horizon_mask(jnp.asarray(mask), s, **kw))(jnp.int32(step))
    assert got.dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(got), want.astype(np.float32))


def test_horizon_mask_closed_forms():
    mask = jnp.asarray(np.array(MASK_ROWS[:2], bool))
    topd = np.asarray(O.horizon_mask(mask, mode="fixed_fraction", fraction=0.1))
    assert topd[0].tolist() == [0, 0, 1] + [0] * 10 and topd[1].tolist() == [1] + [0] * 12
    popd = np.asarray(O.horizon_mask(mask, 4, mode="growing", fraction=0.1, grow_steps=8))
    assert popd[0].sum() == 1 + 9 // 2 and popd[1].sum() == 1 + 12 // 2  # H_0 + floor((L - H_0) 4 / 8)
    assert popd[1, :7].all() and not popd[1, 7:].any()
    with pytest.raises(ValueError, match="mode"):
        O.horizon_mask(mask, mode="nope")
    with pytest.raises(ValueError, match="fraction"):
        O.horizon_mask(mask, fraction=0.0)


# ------------------------------------------------------------------ POPD / TOPD's recipe


@pytest.mark.parametrize("mode,fraction,step,normalize,surrogate", [
    ("fixed_fraction", 0.5, 3, "kept", "is"), ("fixed_fraction", 0.5, 3, "all", "is"),
    ("growing", 0.2, 3, "kept", "ppo"), ("growing", 0.2, 5, "all", "is")])
def test_horizon_opd_against_oracle(mode, fraction, step, normalize, surrogate):
    """Tinker's OPD surrogate on the first H tokens; mean over them ("kept") or over all valid."""
    def oracle(z, z0, nb):
        lp, _, lq, beh = lps(z, z0, nb)
        m = np.asarray(nb["mask"], bool)
        keep = horizon_keep(m, nb["step"], mode, fraction, 8)
        loss = np.where(keep, RO.surrogate(surrogate, lq - beh, lp, beh), 0.0)
        return float(loss.sum() / (keep.sum() if normalize == "kept" else m.sum()))
    cfg = O.HorizonOPDConfig(mode=mode, fraction=fraction, grow_steps=8, normalize=normalize,
                             surrogate=surrogate)
    check(cfg, oracle, step=step)


@pytest.mark.parametrize("normalize", ["kept", "all"])
def test_topd_at_fraction_one_is_opd(normalize):
    for surrogate in ("is", "ppo"):
        assert_same(value_and_grad(O.HorizonOPDConfig(mode="fixed_fraction", fraction=1.0,
                                                      normalize=normalize, surrogate=surrogate)),
                    value_and_grad(O.OPDConfig(surrogate=surrogate)))


def test_popd_starts_as_topd_and_ends_as_opd():
    def popd(step):
        return value_and_grad(O.HorizonOPDConfig(fraction=0.3, grow_steps=8), step=step)
    assert_same(popd(0), value_and_grad(O.HorizonOPDConfig(mode="fixed_fraction", fraction=0.3)))
    opd = value_and_grad(O.OPDConfig())
    for step in (8, 50):
        assert_same(popd(step), opd)
    assert abs(float(popd(4)[0]) - float(opd[0])) > 1e-4  # mid-schedule: a shorter horizon


# ------------------------------------------------------------------ padding, configs


@pytest.mark.parametrize("cfg", [O.PowerOPDConfig(alpha=-0.5), O.PowerOPDConfig(surrogate="ppo"),
                                 O.HorizonOPDConfig(mode="fixed_fraction", fraction=0.5),
                                 O.HorizonOPDConfig(grow_steps=4, normalize="all")],
                         ids=lambda c: repr(c)[:50])
def test_padded_positions_give_zero_loss_and_finite_zero_gradients(cfg):
    b = make_batch(seed=13)
    m = np.asarray(b["mask"])

    def loss(z, zt, extras):
        return recipe_loss(cfg, b, z, zt, step=2, extras=extras)[0]
    clean = jax.value_and_grad(loss)(b["hidden"] @ b["head"], b["t_hidden"] @ b["t_head"],
                                     b["extras"])
    dirty = jax.value_and_grad(loss)(*with_garbage_padding(b))
    assert np.isfinite(float(dirty[0])) and np.all(np.isfinite(np.asarray(dirty[1])))
    assert_same(dirty, clean)
    assert np.all(np.asarray(dirty[1])[~m] == 0.0)


def test_recipes_by_name_and_what_they_need():
    for name, cls in (("power_opd", O.PowerOPDConfig), ("horizon_opd", O.HorizonOPDConfig)):
        cfg = O.make_config(name)
        assert type(cfg) is cls and O.recipe_name(cfg) == name
        assert O.needs_behavior_logp(cfg) and O.reads_teacher(cfg)
        assert not O.required_inputs(cfg) and not O.loop_defaults(cfg)
        O.build_objective(cfg, dense_teacher=False)  # a served (sparse) teacher is enough
    assert O.PowerOPDConfig().alpha == 0.5 and O.PowerOPDConfig().reward_clip is None
    h = O.HorizonOPDConfig()
    assert (h.mode, h.fraction, h.grow_steps, h.max_length, h.normalize) == (
        "growing", 0.1, 1000, None, "kept")
    assert O.build_objective(O.PowerOPDConfig()).token_loss is not None  # token-local
    assert O.build_objective(h).token_loss is None  # the horizon needs the whole row


@pytest.mark.parametrize("cls,fields,name", [
    (O.PowerOPDConfig, dict(alpha=float("nan")), "alpha"),
    (O.PowerOPDConfig, dict(alpha=float("inf")), "alpha"),
    (O.PowerOPDConfig, dict(reward_clip=0.0), "reward_clip"),
    (O.HorizonOPDConfig, dict(mode="fixed"), "mode"),
    (O.HorizonOPDConfig, dict(fraction=0.0), "fraction"),
    (O.HorizonOPDConfig, dict(fraction=1.5), "fraction"),
    (O.HorizonOPDConfig, dict(grow_steps=0), "grow_steps"),
    (O.HorizonOPDConfig, dict(grow_steps=2.5), "grow_steps"),
    (O.HorizonOPDConfig, dict(max_length=0), "max_length"),
    (O.HorizonOPDConfig, dict(normalize="sum"), "normalize")])
def test_config_validation_names_the_field(cls, fields, name):
    with pytest.raises(ValueError, match=name):
        cls(**fields)
