"""The train step: exact gradient accumulation, one-pass ≡ generic, no teacher updates,
sharded ≡ single device with the declared output shardings."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import opd_jax.objectives as O
from opd_jax.models import Transformer
from opd_jax.models.config import tiny_config
from opd_jax.sharding import logical_sharding, make_mesh
from opd_jax.training.batch import Sequences, TrainBatch
from opd_jax.training.step import StepConfig, init_state, sharded_init_state, train_step

V = 50


def models(student_dtype="float32", teacher_dtype="float32"):
    """Student float32 weights computing in ``student_dtype``; teacher weights and compute in
    ``teacher_dtype``."""
    gs, ps = nnx.split(Transformer(tiny_config(vocab_size=V, hidden_size=32, num_layers=1,
                                               dtype=student_dtype), rngs=nnx.Rngs(0)), nnx.Param)
    gt, pt = nnx.split(Transformer(tiny_config(vocab_size=V, hidden_size=48, num_layers=2,
                                               param_dtype=teacher_dtype, dtype=teacher_dtype),
                                   rngs=nnx.Rngs(1)), nnx.Param)
    return gs, ps, gt, pt


def make_batch(b=4, p=5, n=6, seed=0):
    k = jax.random.split(jax.random.key(seed), 3)
    tokens = jax.random.randint(k[0], (b, p + n), 0, V)
    plen = jnp.array([5, 3, 4, 2] * (b // 4))
    mask = jnp.concatenate([jnp.arange(p)[None] >= (p - plen)[:, None], jnp.ones((b, n), bool)], 1)
    lm = jnp.arange(n)[None] < jnp.array([6, 4, 2, 6] * (b // 4))[:, None]
    return TrainBatch(student=Sequences.from_left_padded(tokens, mask), targets=tokens[:, p:],
                      loss_mask=lm, behavior_logp=-3.0 * jax.random.uniform(k[1], (b, n)))


def run(cfg, step_cfg, batch, tx=optax.sgd(0.1)):
    gs, ps, gt, pt = models()
    obj = O.build_objective(cfg)
    state = init_state(ps, tx, obj, seed=0)
    fn = jax.jit(lambda s, b, t: train_step(s, b, t, graphdef=gs, teacher_graphdef=gt, tx=tx,
                                            objective=obj, cfg=step_cfg))
    return fn(state, batch, pt)


def max_diff(a, b):
    return max(float(jnp.max(jnp.abs(x - y))) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


@pytest.mark.parametrize("cfg,variants", [
    (O.EOPDConfig(k=4, tau=0.5), [StepConfig(grad_accum=4, one_pass=False, chunk_size=4),
                                  StepConfig(grad_accum=2, one_pass=True, chunk_size=3)]),
    # not token-local: accumulation needs the forward-only pass that finds the global counts
    (O.UniSDConfig(clip="static", clip_value=0.5), [StepConfig(grad_accum=4, chunk_size=16)]),
], ids=["eopd", "unisd"])
def test_accumulation_and_one_pass_give_the_same_step(cfg, variants):
    batch = make_batch(b=8)
    ref_state, ref_m = run(cfg, StepConfig(grad_accum=1, one_pass=False, chunk_size=4), batch)
    for sc in variants:
        state, m = run(cfg, sc, batch)
        assert max_diff(state.params, ref_state.params) < 1e-7, sc
        np.testing.assert_allclose(m["loss/total"], ref_m["loss/total"], rtol=1e-5)
    assert int(state.step) == 1


@pytest.mark.parametrize("one_pass", [True, False], ids=["one_pass", "generic"])
def test_bf16_compute_step_tracks_the_float32_step(one_pass):
    """Mixed precision (float32 student weights computing in bf16, a bf16 teacher): the step
    runs on both vocabulary paths, keeps float32 weights and moves them like the float32 step
    with the same teacher weights (bf16-valued in both; the head x 8 makes the teacher peaked,
    so the gradient stands well above bf16 rounding)."""
    batch, sc, tx = make_batch(), StepConfig(chunk_size=4, one_pass=one_pass), optax.sgd(0.1)
    obj = O.build_objective(O.GKDConfig())
    _, ps, _, pt32 = models()
    pt32 = jax.tree.map(lambda x: x.astype(jnp.bfloat16).astype(jnp.float32), pt32)
    pt32["lm_head"].value = 8 * pt32["lm_head"].value
    out = {}
    for dtype in ("float32", "bfloat16"):
        gs, _, gt, _ = models(dtype, dtype)
        pt = jax.tree.map(lambda x: x.astype(dtype), pt32)  # noqa: B023
        fn = jax.jit(lambda s, b, t: train_step(s, b, t, graphdef=gs, teacher_graphdef=gt, tx=tx,  # noqa: B023
                                                objective=obj, cfg=sc))
        state, m = fn(init_state(ps, tx, obj, seed=0), batch, pt)
        assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(state.params))
        out[dtype] = (jnp.concatenate([(a - b).ravel() for a, b in zip(jax.tree.leaves(state.params),
                                                                       jax.tree.leaves(ps))]), m)
    (d_ref, m_ref), (d_got, m_got) = out["float32"], out["bfloat16"]
    assert float(jnp.linalg.norm(d_got - d_ref) / jnp.linalg.norm(d_ref)) < 0.05
    np.testing.assert_allclose(m_got["loss/total"], m_ref["loss/total"], rtol=0.02)


def test_the_step_descends_and_leaves_the_teacher_alone():
    gs, ps, gt, pt = models()
    obj = O.build_objective(O.GKDConfig())
    tx = optax.adam(1e-2)
    batch = make_batch()
    fn = jax.jit(lambda s, b, t: train_step(s, b, t, graphdef=gs, teacher_graphdef=gt, tx=tx,
                                            objective=obj, cfg=StepConfig(chunk_size=4)))
    teacher_before = jax.tree.map(np.array, pt)
    state = init_state(ps, tx, obj, seed=0)
    losses = []
    for _ in range(5):
        state, m = fn(state, batch, pt)
        losses.append(float(m["loss/total"]))
    assert losses[-1] < losses[0]
    assert max_diff(pt, teacher_before) == 0.0
    assert all(np.isfinite(float(v)) for v in m.values())


def test_sharded_step_equals_single_device_and_keeps_declared_shardings():
    gs, ps, gt, pt = models()
    obj = O.build_objective(O.OPDConfig())
    # Adam's first update is lr * g / (|g| + eps): with the default eps 1e-8 a gradient near 0
    # turns summation-order noise into differences up to lr. eps 1e-3 keeps it proportional.
    tx = optax.adam(1e-2, eps=1e-3)
    batch = make_batch(b=8)
    step = lambda s, b, t: train_step(s, b, t, graphdef=gs, teacher_graphdef=gt, tx=tx,  # noqa: E731
                                      objective=obj, cfg=StepConfig(chunk_size=4, grad_accum=2))
    ref, ref_m = jax.jit(step)(init_state(ps, tx, obj, seed=0), batch, pt)

    mesh = make_mesh(data=2, fsdp=2, tensor=2)
    p_sh = logical_sharding(nnx.get_partition_spec(ps), mesh)
    t_sh = logical_sharding(nnx.get_partition_spec(pt), mesh)
    state, state_sh = sharded_init_state(jax.device_put(ps, p_sh), tx, obj, 0, mesh, p_sh)
    b_sh = jax.tree.map(lambda x: jax.sharding.NamedSharding(
        mesh, jax.sharding.PartitionSpec(("data", "fsdp"))), batch)
    fn = jax.jit(step, in_shardings=(state_sh, b_sh, t_sh), out_shardings=(state_sh, None))
    out, m = fn(state, jax.device_put(batch, b_sh), jax.device_put(pt, t_sh))
    assert max_diff(out.params, ref.params) < 1e-5
    np.testing.assert_allclose(m["loss/total"], ref_m["loss/total"], rtol=1e-5)
    for a, s in zip(jax.tree.leaves(out), jax.tree.leaves(state_sh)):
        assert a.sharding.is_equivalent_to(s, a.ndim)


def test_bad_batches():
    batch = make_batch()
    with pytest.raises(ValueError, match="not divisible by grad_accum=3"):
        run(O.OPDConfig(), StepConfig(grad_accum=3), batch)
    bad = batch.replace(behavior_logp=batch.behavior_logp[:, :3])
    with pytest.raises(ValueError, match=r"behavior_logp has shape \(4, 3\), expected \(4, 6\)"):
        run(O.OPDConfig(), StepConfig(), bad)
    with pytest.raises(ValueError, match="grad_accum must be >= 1"):
        StepConfig(grad_accum=0)
