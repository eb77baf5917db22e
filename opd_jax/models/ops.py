"""Pure array functions of the transformer: RMSNorm, RoPE, the weight product, masked grouped-query
attention and the output head's product."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from opd_jax.models.config import Llama3RopeScaling, ModelConfig

# A finite "minus infinity": a query row with no visible key then gets a uniform (finite)
# softmax instead of NaN. Padded rows are don't-care, but NaN would poison gradients.
_MASKED = -1e30


def rms_norm(x, weight, eps: float):
    """RMSNorm with statistics in float32, result in ``x.dtype`` (as HF: normalise, cast, scale)."""
    x32 = x.astype(jnp.float32)
    inv = jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
    w = weight.astype(x.dtype).reshape((1,) * (x.ndim - weight.ndim) + weight.shape)
    return (x32 * inv).astype(x.dtype) * w


def rope_inv_freq(cfg: ModelConfig) -> np.ndarray:
    """Per-pair inverse frequencies ``[head_dim // 2]`` in float32, Llama-3 scaling applied if set."""
    dim = cfg.head_dim
    exponents = np.arange(0, dim, 2, dtype=np.int64).astype(np.float32) / np.float32(dim)
    inv_freq = (np.float32(1.0) / (np.float32(cfg.rope_theta) ** exponents)).astype(np.float32)
    if cfg.rope_scaling is not None:
        inv_freq = _llama3_scale(inv_freq, cfg.rope_scaling)
    return inv_freq


def _llama3_scale(inv_freq: np.ndarray, s: Llama3RopeScaling) -> np.ndarray:
    """Llama-3.1 scaling: keep high frequencies, divide low ones by ``factor``, blend in between."""
    wavelen = (2 * math.pi) / inv_freq
    low_freq_wavelen = s.original_max_position_embeddings / s.low_freq_factor
    high_freq_wavelen = s.original_max_position_embeddings / s.high_freq_factor
    scaled = np.where(wavelen > low_freq_wavelen, inv_freq / s.factor, inv_freq)
    smooth = ((s.original_max_position_embeddings / wavelen - s.low_freq_factor)
              / (s.high_freq_factor - s.low_freq_factor))
    blended = (1 - smooth) * scaled / s.factor + smooth * scaled
    is_mid = (wavelen >= high_freq_wavelen) & (wavelen <= low_freq_wavelen)
    return np.where(is_mid, blended, scaled).astype(np.float32)


def rope_tables(positions_BT, inv_freq: np.ndarray):
    """(cos, sin), each float32 ``[B, T, head_dim // 2]``, for integer positions."""
    angles_BTF = positions_BT.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq)[None, None, :]
    return jnp.cos(angles_BTF), jnp.sin(angles_BTF)


def apply_rope(x_BTNH, cos_BTF, sin_BTF):
    """Rotate (first half, second half) pairs of the head dimension; math in float32."""
    x32 = x_BTNH.astype(jnp.float32)
    half = x32.shape[-1] // 2
    x1, x2 = x32[..., :half], x32[..., half:]
    cos, sin = cos_BTF[:, :, None, :], sin_BTF[:, :, None, :]
    out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return out.astype(x_BTNH.dtype)


def _masked_scores(q_BKGTH, k_BKSH, visible_BTS):
    """Float32 scaled scores ``[B, K, G, T, S]``, ``_MASKED`` where a key is hidden."""
    scores_BKGTS = jnp.einsum("bkgth,bksh->bkgts", q_BKGTH, k_BKSH,
                              preferred_element_type=jnp.float32) * (q_BKGTH.shape[-1] ** -0.5)
    return jnp.where(visible_BTS[:, None, None, :, :], scores_BKGTS, _MASKED)


def _attention_fwd(q_BTNH, k_BSKH, v_BSKH, visible_BTS):
    # Batch and kv head lead, then query group and time, so each product's output is laid out as
    # the next step reads it: on CPU, XLA otherwise computed the scores as [S, T*G] and transposed
    # every [T, S] matrix (and back in the backward pass). Only q, k, v and the output (small) move.
    B, T, N, H = q_BTNH.shape
    K = k_BSKH.shape[2]
    q_BKGTH = q_BTNH.reshape(B, T, K, N // K, H).transpose(0, 2, 3, 1, 4)
    k_BKSH, v_BKSH = k_BSKH.transpose(0, 2, 1, 3), v_BSKH.transpose(0, 2, 1, 3)
    scores_BKGTS = _masked_scores(q_BKGTH, k_BKSH, visible_BTS)
    max_BKGT1 = jax.lax.stop_gradient(jnp.max(scores_BKGTS, axis=-1, keepdims=True))  # softmax ignores shifts
    exp_BKGTS = jnp.exp(scores_BKGTS - max_BKGT1)
    sum_BKGT1 = jnp.sum(exp_BKGTS, axis=-1, keepdims=True)
    probs_BKGTS = exp_BKGTS / sum_BKGT1
    out_BKGTH = jnp.einsum("bkgts,bksh->bkgth", probs_BKGTS.astype(v_BKSH.dtype), v_BKSH,
                           preferred_element_type=jnp.float32)
    out_BTNH = out_BKGTH.astype(v_BKSH.dtype).transpose(0, 3, 1, 2, 4).reshape(B, T, N, H)
    # The probabilities are not kept for the backward pass (T*S per head and layer): only each
    # query row's max and sum, from which it recomputes them.
    return out_BTNH, (q_BKGTH, k_BKSH, v_BKSH, visible_BTS, max_BKGT1, sum_BKGT1, out_BKGTH)


def _attention_bwd(residuals, g_BTNH):
    q_BKGTH, k_BKSH, v_BKSH, visible_BTS, max_BKGT1, sum_BKGT1, out_BKGTH = residuals
    B, K, G, T, H = q_BKGTH.shape
    g_BKGTH = g_BTNH.reshape(B, T, K, G, H).transpose(0, 2, 3, 1, 4)
    probs_BKGTS = jnp.exp(_masked_scores(q_BKGTH, k_BKSH, visible_BTS) - max_BKGT1) / sum_BKGT1
    # Key and value gradients as [H, S] (then transposed, small): the [T, S] matrices are read in
    # their own layout, never transposed.
    dv_BKHS = jnp.einsum("bkgth,bkgts->bkhs", g_BKGTH, probs_BKGTS.astype(v_BKSH.dtype))
    dprobs_BKGTS = jnp.einsum("bkgth,bksh->bkgts", g_BKGTH, v_BKSH, preferred_element_type=jnp.float32)
    # softmax's backward, p * (dp - sum_s dp * p), where sum_s dp * p = g . out (an [H] product per
    # query instead of an [S] one); masked keys get no gradient (as autodiff through the where).
    dot_BKGT1 = jnp.sum(g_BKGTH.astype(jnp.float32) * out_BKGTH, axis=-1, keepdims=True)
    dscores_BKGTS = jnp.where(visible_BTS[:, None, None, :, :], probs_BKGTS * (dprobs_BKGTS - dot_BKGT1), 0.0)
    # The scale applied to the (small) q and k gradients: on the scores it took a pass of its own.
    scale = jnp.asarray(H ** -0.5, q_BKGTH.dtype)
    dq_BKGTH = jnp.einsum("bkgts,bksh->bkgth", dscores_BKGTS.astype(q_BKGTH.dtype), k_BKSH) * scale
    dk_BKHS = jnp.einsum("bkgth,bkgts->bkhs", q_BKGTH, dscores_BKGTS.astype(q_BKGTH.dtype)) * scale
    return (dq_BKGTH.transpose(0, 3, 1, 2, 4).reshape(B, T, K * G, H), dk_BKHS.transpose(0, 3, 1, 2),
            dv_BKHS.transpose(0, 3, 1, 2), None)


@jax.custom_vjp
def attention(q_BTNH, k_BSKH, v_BSKH, visible_BTS):
    """Grouped-query attention; ``visible[b, t, s]`` says whether query t may see key s.

    Scores and softmax are float32; the value products run in the compute dtype (summed in
    float32). The gradient is written out (``_attention_bwd``) rather than left to autodiff
    (``attention_autodiff``): the same values, with the backward of ``where`` and ``softmax`` in
    one expression over the scores, which are recomputed from each query's max and sum instead of
    kept: in a scanned stack of layers (whose backward is a loop of its own) a train step holds
    O(T) per head and layer for attention, not O(T * S). (Layers unrolled in Python needed as much
    scratch either way on XLA:CPU: 59 MB for the tiny model below.) On XLA:CPU,
    ``benchmarks/attention_backward.py`` (2026-12-05, Intel Xeon; BENCHMARKS.md), against autodiff
    and against keeping the probabilities: the tiny benchmark model (layers in a Python loop) at
    4 x 256 tokens 2.4x and 1.1x faster, 32 against 48 and 31 MB of scratch; at 1 x 1024 2.5x and
    1.6x, 59 against 120 and 59 MB. At ~100M (scanned layers, which keep only the weight products'
    outputs, so the three need the same scratch) 1.31x and 1.17x at 1 x 1024, the same at 4 x 256.
    """
    return _attention_fwd(q_BTNH, k_BSKH, v_BSKH, visible_BTS)[0]


attention.defvjp(_attention_fwd, _attention_bwd)


def attention_autodiff(q_BTNH, k_BSKH, v_BSKH, visible_BTS):
    """``attention`` differentiated by JAX instead of by ``_attention_bwd``: the same values; kept
    as the reference its gradient is tested and benchmarked against."""
    return _attention_fwd(q_BTNH, k_BSKH, v_BSKH, visible_BTS)[0]


def matmul(x_MK, w_KN):
    """``x @ w`` for 2-D operands. Below float32 (bf16 compute, operands of one dtype) the products
    are in that dtype and the sums in float32, the result rounded once to the operands' dtype,
    forward and backward (``_low_precision_matmul``); otherwise the plain product."""
    if x_MK.dtype == w_KN.dtype and jnp.finfo(x_MK.dtype).bits < 32:
        return _low_precision_matmul(x_MK, w_KN)
    return x_MK @ w_KN


def _sum_f32(a, b, contract):
    return jax.lax.dot_general(a, b, (contract, ((), ())), preferred_element_type=jnp.float32)


@jax.custom_vjp
def _low_precision_matmul(x_MK, w_KN):
    """XLA:CPU runs this form on the CPU's bf16 dot-product instructions, faster than float32,
    and a bf16 product summed in bf16 slower than float32 (the ~100M bf16 train step: 1.92x
    faster with this form and its backward, BENCHMARKS.md). Autodiff of it would cast the bf16
    operands to float32 for the backward's products, so the backward is written out: both
    gradients are again products in the operands' dtype summed in float32."""
    return _sum_f32(x_MK, w_KN, ((1,), (0,))).astype(x_MK.dtype)


def _low_precision_matmul_fwd(x_MK, w_KN):
    return _low_precision_matmul(x_MK, w_KN), (x_MK, w_KN)


def _low_precision_matmul_bwd(res, g_MN):
    x_MK, w_KN = res
    g_MN = g_MN.astype(x_MK.dtype)
    dx_MK = _sum_f32(g_MN, w_KN, ((1,), (1,))).astype(x_MK.dtype)
    # Summed over the tokens as [1, M] x [1, M] (two contracted axes): XLA:CPU keeps that form in
    # bf16, while contracting the single leading axis it casts both operands to float32.
    dw_KN = _sum_f32(x_MK[None], g_MN[None], ((0, 1), (0, 1))).astype(w_KN.dtype)
    return dx_MK, dw_KN


_low_precision_matmul.defvjp(_low_precision_matmul_fwd, _low_precision_matmul_bwd)


def cached_attention(q_BTNH, k_BKHS, v_BKSH, visible_BTS):
    """``attention`` with keys and values in the KV-cache layouts: keys ``[B, K, H, S]``, values ``[B, K, S, H]``.

    Batch and kv-head lead in every operand and each product is a row-major ``[G*T, H] @ [H, S]``
    then ``[G*T, S] @ [S, H]``: nothing is transposed but the (small) query and output.
    """
    B, T, N, H = q_BTNH.shape
    K = k_BKHS.shape[1]
    q_BKGTH = q_BTNH.reshape(B, T, K, N // K, H).transpose(0, 2, 3, 1, 4)
    scores_BKGTS = jnp.einsum("bkgth,bkhs->bkgts", q_BKGTH, k_BKHS,
                              preferred_element_type=jnp.float32) * (H ** -0.5)
    scores_BKGTS = jnp.where(visible_BTS[:, None, None, :, :], scores_BKGTS, _MASKED)
    probs_BKGTS = jax.nn.softmax(scores_BKGTS, axis=-1).astype(v_BKSH.dtype)
    out_BKGTH = jnp.einsum("bkgts,bksh->bkgth", probs_BKGTS, v_BKSH)
    return out_BKGTH.transpose(0, 3, 1, 2, 4).reshape(B, T, N, H)


def write_slots(buf, update, index, axis: int):
    """``buf`` with ``update`` written from slot ``index >= 0`` along ``axis`` (static zeros elsewhere:
    no index arithmetic is traced or compiled for them, nor for a negative ``index``). An ``index``
    of one start per row (``[B]``, axis 0 the rows) writes each row from its own slot."""
    if jnp.ndim(index) == 1:
        return jax.vmap(lambda b, u, i: write_slots(b, u, i, axis - 1))(buf, update, index)
    starts = [np.int32(0)] * buf.ndim
    starts[axis] = index
    return jax.lax.dynamic_update_slice(buf, update.astype(buf.dtype), starts, allow_negative_indices=False)


def visibility(key_valid_BS, q_slots, num_keys: int):
    """Causal-and-valid mask ``[B, T, S]``: query in slot ``q_slots[t]`` (``[T]``, or ``[B, T]`` for
    rows at their own slots) sees valid keys in slots <= it."""
    keys = jnp.arange(num_keys, dtype=jnp.int32).reshape((1,) * q_slots.ndim + (num_keys,))
    causal = keys <= q_slots[..., None]
    return (causal if causal.ndim == 3 else causal[None]) & key_valid_BS[:, None, :]


@jax.custom_vjp
def output_logits(h_BTD, w_DV):
    """Float32 logits ``h @ w`` (``[B, T, D] x [D, V]``, summed in float32).

    The backward is written out so that the weight's gradient is summed as ``h^T g`` straight into
    ``w``'s ``[D, V]`` layout. For a tied head (``w`` the embedding transposed) autodiff's form
    made XLA:CPU transpose the whole ``[B*T, V]`` logit gradient first: ~10% of the tiny benchmark
    model's train step (``benchmarks/bench_model.py``).
    """
    return jnp.einsum("btd,dv->btv", h_BTD, w_DV, preferred_element_type=jnp.float32)


def _output_logits_fwd(h_BTD, w_DV):
    return output_logits(h_BTD, w_DV), (h_BTD, w_DV)


def _output_logits_bwd(res, g_BTV):
    h_BTD, w_DV = res
    g_BTV = g_BTV.astype(h_BTD.dtype)
    dh_BTD = jnp.einsum("btv,dv->btd", g_BTV, w_DV, preferred_element_type=jnp.float32)
    dw_DV = jnp.einsum("btd,btv->dv", h_BTD, g_BTV, preferred_element_type=jnp.float32)
    return dh_BTD.astype(h_BTD.dtype), dw_DV.astype(w_DV.dtype)


output_logits.defvjp(_output_logits_fwd, _output_logits_bwd)


def layer_slice(stacked, layer: int, layer_ids=None):
    """``stacked[layer]``; with ``layer_ids`` (int32 scalars, ``layer_ids[i] == i``, passed into the
    jitted program as separate arguments) a dynamic slice at ``layer_ids[layer]`` instead.

    The two are equal; they differ in compile time. XLA:CPU compiles one kernel per distinct fused
    computation, and a static slice bakes its offset in, so slicing 12 layers out of 9 stacked
    parameters is 108 kernels (~1 s to compile at the ~100M config); with the offset a runtime
    argument the 12 slices of a parameter are one kernel, compiled once (~0.2 s for all).
    """
    if layer_ids is None:
        return stacked[layer]
    return jax.lax.dynamic_index_in_dim(stacked, layer_ids[layer], keepdims=False, allow_negative_indices=False)
