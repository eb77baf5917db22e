"""What XLA:CPU makes of the model's hand-written gradients: the big per-token matrices (attention's
``[T, S]`` scores, the head's ``[B*T, V]`` logit gradient) are read in their own layout, never
transposed; and the output head's gradient against autodiff of the plain product."""

import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from opd_jax.models import ops


def _shapes_of(op: str, hlo: str) -> list[tuple[int, ...]]:
    """Output shapes of every ``op`` instruction in compiled HLO text (inside fusions too)."""
    found = re.findall(r"= \w+\[([\d,]*)\]\S* " + op + r"\(", hlo)
    return [tuple(int(d) for d in dims.split(",") if d) for dims in found]


def _head_inputs(dtype, B=4, T=32, D=16, V=256):
    keys = jax.random.split(jax.random.key(1), 3)
    h = jax.random.normal(keys[0], (B, T, D), jnp.float32).astype(dtype)
    embed = jax.random.normal(keys[1], (V, D), jnp.float32).astype(dtype)
    g = jax.random.normal(keys[2], (B, T, V), jnp.float32)
    return h, embed, g


def _plain_logits(h, w):
    return jnp.einsum("btd,dv->btv", h, w, preferred_element_type=jnp.float32)


@pytest.mark.parametrize("tied", [True, False])
def test_output_logits_gradient_equals_autodiff(tied):
    h, embed, g = _head_inputs(jnp.float32)
    w_of = (lambda e: e.T) if tied else (lambda e: e.T.copy())  # tied: the embedding transposed
    grads = jax.vjp(lambda h, e: ops.output_logits(h, w_of(e)), h, embed)[1](g)
    ref = jax.vjp(lambda h, e: _plain_logits(h, w_of(e)), h, embed)[1](g)
    np.testing.assert_allclose(ops.output_logits(h, embed.T), _plain_logits(h, embed.T), rtol=1e-6, atol=1e-5)
    for name, a, b in zip(["h", "w"], grads, ref):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-4, err_msg=name)


def test_output_logits_gradient_keeps_bf16_and_tracks_float32():
    h, embed, g = _head_inputs(jnp.bfloat16)
    grads = jax.vjp(lambda h, e: ops.output_logits(h, e.T), h, embed)[1](g)
    f32 = [x.astype(jnp.float32) for x in (h, embed)]
    ref = jax.vjp(lambda h, e: _plain_logits(h, e.T), *f32)[1](g)
    for name, a, b in zip(["h", "w"], grads, ref):
        assert a.dtype == jnp.bfloat16, name
        assert float(jnp.abs(a.astype(jnp.float32) - b).max()) < 0.02 * float(jnp.abs(b).max()), name


def test_tied_head_gradient_does_not_transpose_the_logit_gradient():
    """Autodiff of the plain product gives XLA:CPU a ``[V, B*T]`` transpose of the logit gradient
    (the check below fails for ``_plain_logits``); ``output_logits`` sums ``h^T g`` instead."""
    h, embed, g = _head_inputs(jnp.float32)
    B, T, _ = h.shape
    V = embed.shape[0]

    def hlo(fn):
        grad = jax.jit(lambda h, e, g: jax.vjp(lambda h, e: fn(h, e.T), h, e)[1](g))
        return grad.lower(h, embed, g).compile().as_text()

    def transposed(fn):
        return [s for op in ("transpose", "copy") for s in _shapes_of(op, hlo(fn))
                if math.prod(s) == V * B * T and s[0] == V]

    assert transposed(_plain_logits), "autodiff no longer transposes: output_logits may be unneeded"
    assert not transposed(ops.output_logits)


def test_attention_never_transposes_the_score_matrices():
    """Forward and backward of ``ops.attention`` compiled: no transpose or copy moves a tensor the
    size of the scores ``[B, N, T, S]``; only q, k, v and their gradients are rearranged."""
    B, T, N, K, H = 2, 32, 4, 2, 8
    keys = jax.random.split(jax.random.key(0), 4)
    q, g = (jax.random.normal(key, (B, T, N, H)) for key in keys[:2])
    k, v = (jax.random.normal(key, (B, T, K, H)) for key in keys[2:])
    visible = jnp.asarray(np.tril(np.ones((T, T), bool)))[None].repeat(B, 0)
    hlo = jax.jit(lambda q, k, v, g: jax.vjp(lambda q, k, v: ops.attention(q, k, v, visible), q, k, v)[1](g)
                  ).lower(q, k, v, g).compile().as_text()
    moved = [s for op in ("transpose", "copy") for s in _shapes_of(op, hlo) if math.prod(s) == B * N * T * T]
    assert not moved, moved
