"""EffOPD's parameter extrapolation (opd_jax.training.extrapolation): the transform against a
NumPy loop of the rule, closed forms on a fixed direction and on reversing windows, its state's
placement on a mesh, the configuration's checks, and the train step's report of the jump."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import opd_jax.objectives as O
from opd_jax.sharding import logical_sharding, make_mesh
from opd_jax.training.config import OptimConfig
from opd_jax.training.extrapolation import extrapolate, last_scale
from opd_jax.training.optim import make_optimizer
from opd_jax.training.step import StepConfig, init_state, sharded_init_state, train_step
from tests.training.test_step import make_batch, models


def reference(updates, every, max_scale):
    """The rule written out in NumPy, float64: flat vectors, one per step."""
    window, previous, out, scales = np.zeros_like(updates[0]), None, [], []
    for i, u in enumerate(updates, 1):
        window = window + u
        if i % every:
            out.append(u)
            continue
        if previous is None or not np.linalg.norm(previous) or not np.linalg.norm(window):
            eta = 0.0
        else:
            cos = window @ previous / (np.linalg.norm(window) * np.linalg.norm(previous))
            eta = max_scale * max(0.0, min(1.0, cos))
        out.append(u + eta * window)
        scales.append(eta)
        previous, window = window, np.zeros_like(window)
    return out, scales


def tree(v):
    """A flat vector as a two-leaf pytree (the cosine spans every leaf)."""
    return {"a": jnp.asarray(v[:3], jnp.float32), "b": jnp.asarray(v[3:].reshape(2, 2), jnp.float32)}


def flat(t):
    return np.concatenate([np.asarray(t["a"]).ravel(), np.asarray(t["b"]).ravel()])


def run(updates, every, max_scale):
    tx = extrapolate(optax.identity(), every, max_scale)
    state = tx.init(tree(np.zeros(7)))
    step = jax.jit(tx.update)
    out, scales = [], []
    for i, u in enumerate(updates, 1):
        o, state = step(tree(u), state)  # the identity's updates are the "gradients" given
        out.append(flat(o))
        if i % every == 0:
            scales.append(float(last_scale(state)))
    return out, scales


@pytest.mark.parametrize("every,max_scale", [(1, 1.0), (3, 2.0), (4, 0.5)])
def test_matches_the_rule_written_out(every, max_scale):
    rng = np.random.default_rng(every)
    drift = rng.normal(size=7)  # a shared direction, so that windows agree in part
    updates = [drift * rng.uniform(0, 1) + rng.normal(size=7) for _ in range(5 * every + 2)]
    got, got_scales = run(updates, every, max_scale)
    want, want_scales = reference(updates, every, max_scale)
    np.testing.assert_allclose(np.stack(got), np.stack(want), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got_scales, want_scales, rtol=1e-5, atol=1e-6)
    assert got_scales[0] == 0.0 and any(s > 0 for s in got_scales)  # no predecessor at the first


def test_a_fixed_direction_jumps_by_the_full_scale():
    """Every update u: from the second window on, each window's last step adds scale * every * u."""
    u, every, scale, steps = np.arange(1.0, 8.0), 4, 1.5, 12
    out, scales = run([u] * steps, every, scale)
    total = np.sum(out, axis=0)
    np.testing.assert_allclose(total, (steps + scale * every * 2) * u, rtol=1e-5)
    np.testing.assert_allclose(scales, [0.0, scale, scale], rtol=1e-6)


def test_reversing_windows_never_jump():
    """Windows that alternate in sign have cosine -1: the updates pass through unchanged."""
    u, every = np.linspace(-1, 1, 7), 2
    updates = [u, u, -u, -u, u, u, -u, -u]
    out, scales = run(updates, every, 3.0)
    np.testing.assert_array_equal(np.stack(out), np.stack(updates).astype(np.float32))
    assert scales == [0.0] * 4


def test_off_window_steps_and_zero_scale_pass_updates_through():
    rng = np.random.default_rng(0)
    updates = [rng.normal(size=7) for _ in range(6)]
    out, _ = run(updates, 6, 0.0)
    np.testing.assert_array_equal(np.stack(out), np.stack(updates).astype(np.float32))
    out, _ = run(updates, 4, 2.0)  # one window ends, with no predecessor
    np.testing.assert_array_equal(np.stack(out), np.stack(updates).astype(np.float32))


@pytest.mark.parametrize("bad", [dict(every=0, max_scale=1.0), dict(every=2.0, max_scale=1.0),
                                 dict(every=2, max_scale=-1.0), dict(every=2, max_scale=float("nan")),
                                 dict(every=2, max_scale=1.0, rule="newton"),
                                 dict(every=1, max_scale=1.0, rule="secant")])
def test_bad_arguments_are_refused(bad):
    with pytest.raises(ValueError, match="every|max_scale|rule"):
        extrapolate(optax.identity(), **bad)


@pytest.mark.parametrize("fields", [dict(extrapolate_every=-1), dict(extrapolate_every=1.5),
                                    dict(extrapolate_scale=-0.1), dict(extrapolate_scale=float("inf")),
                                    dict(extrapolate_rule="adam"),
                                    dict(extrapolate_rule="secant", extrapolate_every=1)])
def test_the_config_refuses_bad_settings(fields):
    with pytest.raises(ValueError, match="optim.extrapolate"):
        OptimConfig(**fields)


def test_the_optimizer_has_it_only_when_asked():
    params = {"w": jnp.ones(3)}
    assert last_scale(make_optimizer(OptimConfig(), 10).init(params)) is None
    state = make_optimizer(OptimConfig(extrapolate_every=2), 10).init(params)
    assert float(last_scale(state)) == 0.0


@pytest.mark.parametrize("rule", ["cosine", "secant"])
def test_state_sums_are_placed_like_the_parameters(rule):
    gs, ps, gt, pt = models()
    tx = make_optimizer(OptimConfig(extrapolate_every=2, extrapolate_rule=rule), 10)
    mesh = make_mesh(data=2, fsdp=2, tensor=2)
    p_sh = logical_sharding(nnx.get_partition_spec(ps), mesh)
    obj = O.build_objective(O.OPDConfig())
    state, sh = sharded_init_state(jax.device_put(ps, p_sh), tx, obj, 0, mesh, p_sh)
    ext = sh.opt_state
    for part in (ext.window, ext.previous if rule == "cosine" else ext.first_grad):
        for a, b in zip(jax.tree.leaves(part), jax.tree.leaves(p_sh)):
            assert a == b


def test_the_train_step_reports_the_jump_and_applies_it():
    """One-step windows on one batch twice: the first step has no predecessor (no jump); the
    second's update is nearly the first's, so it jumps by ~its own length (scale 1), and the
    parameters move ~1.5x as far as without the jump."""
    gs, ps, gt, pt = models()
    obj = O.build_objective(O.GKDConfig())
    batch = make_batch()
    results = {}
    for scale in (0.0, 1.0):
        tx = extrapolate(optax.sgd(1e-2), 1, scale)
        fn = jax.jit(lambda s, b, t, tx=tx: train_step(s, b, t, graphdef=gs, teacher_graphdef=gt, tx=tx,
                                                       objective=obj, cfg=StepConfig(chunk_size=4)))
        state = init_state(ps, tx, obj, seed=0)
        state, m1 = fn(state, batch, pt)
        state, m2 = fn(state, batch, pt)
        results[scale] = (state.params, m1, m2)
    (p0, a1, a2), (p1, b1, b2) = results[0.0], results[1.0]
    assert float(a2["opt/extrapolation_scale"]) == 0.0 and float(b1["opt/extrapolation_scale"]) == 0.0
    # the steps' gradients agree until the jump, so the second step's cosine is near 1
    assert 0.9 < float(b2["opt/extrapolation_scale"]) <= 1.0
    moved0 = sum(float(jnp.sum(jnp.abs(x - y))) for x, y in zip(jax.tree.leaves(p0), jax.tree.leaves(ps)))
    moved1 = sum(float(jnp.sum(jnp.abs(x - y))) for x, y in zip(jax.tree.leaves(p1), jax.tree.leaves(ps)))
    assert moved1 > 1.3 * moved0


def secant_reference(grads, updates, every, max_scale):
    """The secant rule written out in NumPy, float64, one flat vector per step."""
    out, scales, window = [], [], np.zeros_like(updates[0])
    for i, (g, u) in enumerate(zip(grads, updates)):
        if i % every == 0:
            first, window = g, np.zeros_like(u)
        before, window = window, window + u
        if (i + 1) % every:
            out.append(u)
            continue
        a, b, dd = first @ window, g @ window, window @ window
        eta = 0.0
        if dd > 0 and b < 0 and a < b:
            eta = min(max(a * (before @ window / dd) / (a - b) - 1.0, 0.0), max_scale)
        out.append(u + eta * window)
        scales.append(eta)
    return out, scales


def test_the_secant_rule_matches_its_formula():
    rng = np.random.default_rng(3)
    direction = rng.normal(size=7)
    grads = [-direction * rng.uniform(0.2, 1.0) + 0.3 * rng.normal(size=7) for _ in range(12)]
    inner = optax.sgd(0.1, momentum=0.5)  # updates are not the gradients' multiples
    tx = extrapolate(inner, 3, 4.0, rule="secant")
    state, params = tx.init(tree(np.zeros(7))), tree(np.zeros(7))
    got, got_scales, inner_updates = [], [], []
    inner_state = inner.init(params)
    for i, g in enumerate(grads, 1):
        u, inner_state = inner.update(tree(g), inner_state)
        inner_updates.append(flat(u))
        o, state = jax.jit(tx.update)(tree(g), state)
        got.append(flat(o))
        if i % 3 == 0:
            got_scales.append(float(last_scale(state)))
    want, want_scales = secant_reference(grads, inner_updates, 3, 4.0)
    np.testing.assert_allclose(np.stack(got), np.stack(want), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got_scales, want_scales, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("every,lr", [(2, 0.1), (3, 0.05), (4, 0.2)])
def test_the_secant_jump_lands_on_an_isotropic_quadratics_minimum(every, lr):
    """f = lambda |theta|^2 / 2 under SGD moves along a straight line to 0: one window and its
    jump reach 0 (the line's minimum), from any start."""
    lam = 1.5
    tx = extrapolate(optax.sgd(lr), every, 100.0, rule="secant")
    theta = tree(np.random.default_rng(every).normal(size=7))
    state = tx.init(theta)
    for _ in range(every):
        grads = jax.tree.map(lambda x: lam * x, theta)
        u, state = tx.update(grads, state, theta)
        theta = optax.apply_updates(theta, u)
    assert np.max(np.abs(flat(theta))) < 1e-5
    assert float(last_scale(state)) > 0
