"""The weight product in bf16: float32 sums forward and backward (``ops.matmul``), and a float32
KV cache beside bf16 weights read without a per-step copy."""

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from flax import nnx

from hf_reference import padded_batch
from opd_jax.models import Transformer, init_cache, ops, tiny_config

BF16 = jnp.bfloat16


def _eqns(jaxpr):
    """Every equation of ``jaxpr``, those of the jaxprs in its equations' parameters included."""
    for eqn in jaxpr.eqns:
        yield eqn
        for value in eqn.params.values():
            for sub in value if isinstance(value, (tuple, list)) else (value,):
                sub = getattr(sub, "jaxpr", sub)  # a ClosedJaxpr's jaxpr
                if hasattr(sub, "eqns"):
                    yield from _eqns(sub)


def _operands(m=24, k=160, n=48, seed=0):
    rng = np.random.RandomState(seed)
    return (jnp.asarray(rng.randn(m, k), BF16), jnp.asarray(rng.randn(k, n), BF16),
            jnp.asarray(rng.randn(m, n), BF16))


def _round_bf16(a):
    return np.asarray(a, np.float64).astype(ml_dtypes.bfloat16).astype(np.float64)


def _f64(a):
    return np.asarray(a.astype(jnp.float32), np.float64)


def test_bf16_product_sums_in_float32_and_rounds_once():
    """The result is the exact (float64) product of the bf16 operands rounded once to bf16: at
    most one bf16 step (2^-8 relative) from it, where summing 160 products in bf16 drifts further."""
    x, w, _ = _operands()
    exact = _f64(x) @ _f64(w)
    assert ops.matmul(x, w).dtype == BF16
    ours = _f64(ops.matmul(x, w))
    np.testing.assert_allclose(ours, _round_bf16(exact), rtol=2.0 ** -8, atol=1e-6)
    in_bf16 = _f64(jax.lax.dot_general(x, w, (((1,), (0,)), ((), ())), preferred_element_type=BF16))
    assert np.abs(ours - exact).max() <= np.abs(in_bf16 - exact).max()


def test_float32_product_is_the_plain_product():
    x, w, _ = _operands()
    x32, w32 = x.astype(jnp.float32), w.astype(jnp.float32)
    np.testing.assert_array_equal(ops.matmul(x32, w32), x32 @ w32)


def test_bf16_gradients_are_float32_sums_of_bf16_products():
    """The written-out backward: dx = g @ w.T and dw = x.T @ g from the bf16 values, each rounded
    once to bf16 (checked against float64), in the operands' dtype."""
    x, w, g = _operands(seed=1)
    dx, dw = jax.vjp(ops.matmul, x, w)[1](g)
    assert dx.dtype == BF16 and dw.dtype == BF16
    np.testing.assert_allclose(_f64(dx), _round_bf16(_f64(g) @ _f64(w).T), rtol=2.0 ** -8, atol=1e-6)
    np.testing.assert_allclose(_f64(dw), _round_bf16(_f64(x).T @ _f64(g)), rtol=2.0 ** -8, atol=1e-6)


def test_bf16_backward_keeps_bf16_operands():
    """Every product in the gradient's program takes bf16 operands and sums in float32 (autodiff
    of the forward would cast the operands to float32 instead)."""
    x, w, g = _operands()
    jaxpr = jax.make_jaxpr(lambda x, w: jax.vjp(ops.matmul, x, w)[1](g))(x, w)
    found = [eqn for eqn in _eqns(jaxpr.jaxpr) if eqn.primitive.name == "dot_general"]
    assert len(found) == 3  # the forward (for the residuals' sake) and the two gradients
    for eqn in found:
        assert [v.aval.dtype for v in eqn.invars] == [BF16, BF16]
        assert eqn.params["preferred_element_type"] == jnp.float32


def test_float32_cache_beside_bf16_weights_is_read_in_place():
    """With bf16 compute and a float32 cache, a decode step attends in float32 without casting
    the cache (no conversion of a cache-shaped array), and its logits match the bf16 full forward."""
    cfg = tiny_config("qwen3", dtype="bfloat16")
    model = Transformer(cfg, rngs=nnx.Rngs(0))
    tokens, mask, positions = padded_batch(cfg.vocab_size, (6, 4), 6)
    full, _ = model(tokens, positions, mask=mask)
    cache = init_cache(cfg, batch=2, max_len=8, dtype=jnp.float32)
    decoder = model.decoder()
    _, cache = decoder(tokens[:, :5], positions[:, :5], mask=mask[:, :5], cache=cache)
    step = lambda c: decoder(tokens[:, 5:], positions[:, 5:], mask=mask[:, 5:], cache=c)
    logits, after = step(cache)
    assert {a.dtype for a in after.k + after.v} == {jnp.dtype(jnp.float32)}
    np.testing.assert_allclose(logits[:, 0], full[:, 5], atol=0.05, rtol=0)
    cache_shapes = {a.shape for a in cache.k + cache.v}
    converted = {eqn.invars[0].aval.shape for eqn in _eqns(jax.make_jaxpr(step)(cache).jaxpr)
                 if eqn.primitive.name == "convert_element_type"}
    assert not cache_shapes & converted


def test_xla_cpu_runs_the_bf16_gradients_without_float32_copies():
    """Compiled (XLA:CPU here), the gradient's program casts no operand to float32: summing the
    weight gradient over one leading axis instead makes XLA:CPU copy x and g to float32."""
    x, w, g = _operands(m=64, k=96, n=128)
    compiled = jax.jit(lambda x, w: jax.vjp(ops.matmul, x, w)[1](g)).lower(x, w).compile().as_text()
    float32_copies = [line for line in compiled.splitlines() if "convert" in line and "= f32[" in line
                      and any(f"f32[{a},{b}]" in line for a, b in [(64, 96), (96, 128), (64, 128)])]
    assert not float32_copies
