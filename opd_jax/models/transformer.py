"""A Flax NNX decoder-only transformer covering Llama, Qwen2 and Qwen3.

Layer parameters are stacked on a leading ``layers`` axis and the forward pass is a
``lax.scan`` over layers: compile time does not grow with depth, and per-layer
rematerialisation is one ``jax.checkpoint`` around the scanned body.

Dtype policy: parameters are stored in ``cfg.param_dtype`` and cast to ``cfg.dtype`` (the
compute dtype) where used; RMSNorm statistics, RoPE, attention scores and softmax, and the
logits are float32.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from opd_jax.models import ops
from opd_jax.models.cache import KVCache
from opd_jax.models.config import ModelConfig
from opd_jax.sharding import shard

_INIT_STD = 0.02  # HF's initializer_range default; only matters for freshly built models


def _param(value, names):
    # Logical names only: placement is decided by the caller's mesh (see from_pretrained).
    return nnx.Param(value, out_sharding=names, eager_sharding=False)


def layer_param_shapes(cfg: ModelConfig) -> dict[str, tuple[tuple[int, ...], tuple[str, ...]]]:
    """Per-layer parameter name -> (shape without the layer axis, logical axis names)."""
    D, F, N, K, H = cfg.hidden_size, cfg.intermediate_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    shapes = {
        "attn_norm": ((D,), ("norm",)),
        "q": ((D, N, H), ("embed", "heads", "head_dim")),
        "k": ((D, K, H), ("embed", "kv_heads", "head_dim")),
        "v": ((D, K, H), ("embed", "kv_heads", "head_dim")),
        "o": ((N, H, D), ("heads", "head_dim", "embed")),
        "mlp_norm": ((D,), ("norm",)),
        "gate": ((D, F), ("embed", "mlp")),
        "up": ((D, F), ("embed", "mlp")),
        "down": ((F, D), ("mlp", "embed")),
    }
    if cfg.attention_bias:
        shapes["q_bias"] = ((N, H), ("heads", "head_dim"))
        shapes["k_bias"] = ((K, H), ("kv_heads", "head_dim"))
        shapes["v_bias"] = ((K, H), ("kv_heads", "head_dim"))
    if cfg.out_proj_bias:
        shapes["o_bias"] = ((D,), ("norm",))
    if cfg.qk_norm:
        shapes["q_norm"] = ((H,), ("norm",))
        shapes["k_norm"] = ((H,), ("norm",))
    return shapes


class DecoderLayers(nnx.Module):
    """All decoder layers, each parameter stacked as ``[num_layers, ...]``."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.names = tuple(layer_param_shapes(cfg))
        for name, (shape, axes) in layer_param_shapes(cfg).items():
            full = (cfg.num_layers, *shape)
            if name.endswith("norm"):
                value = jnp.ones(full, cfg.param_jnp_dtype)
            elif name.endswith("bias"):
                value = jnp.zeros(full, cfg.param_jnp_dtype)
            else:
                value = _INIT_STD * jax.random.normal(rngs.params(), full, cfg.param_jnp_dtype)
            setattr(self, name, _param(value, ("layers", *axes)))

    def __call__(self, x_BTD, cos_BTF, sin_BTF, visible_BTS, cache: KVCache | None):
        """Run every layer; with a cache, write this call's k/v at ``cache.index`` first."""
        params = {name: getattr(self, name)[...] for name in self.names}
        layer_ids = jnp.arange(self.cfg.num_layers, dtype=jnp.int32)

        def body(carry, xs):
            x_BTD, k_cache, v_cache = carry
            p, layer = xs
            x_BTD, k_cache, v_cache = _decoder_layer(self.cfg, p, layer, x_BTD, cos_BTF, sin_BTF,
                                                     visible_BTS, k_cache, v_cache,
                                                     None if cache is None else cache.index)
            return (x_BTD, k_cache, v_cache), None

        if self.cfg.remat:
            body = jax.checkpoint(body, prevent_cse=False)  # prevent_cse is unneeded inside scan
        kv = (None, None) if cache is None else (cache.k, cache.v)
        (x_BTD, k_cache, v_cache), _ = jax.lax.scan(body, (x_BTD, *kv), (params, layer_ids))
        return x_BTD, k_cache, v_cache


def _decoder_layer(cfg, p, layer, x_BTD, cos_BTF, sin_BTF, visible_BTS, k_cache, v_cache, index):
    """One pre-norm block: x + attn(norm(x)), then + mlp(norm(.))."""
    dt = cfg.compute_jnp_dtype
    w = {name: value.astype(dt) for name, value in p.items()}
    h_BTD = ops.rms_norm(x_BTD, w["attn_norm"], cfg.rms_norm_eps)
    q_BTNH = jnp.einsum("btd,dnh->btnh", h_BTD, w["q"])
    k_BTKH = jnp.einsum("btd,dkh->btkh", h_BTD, w["k"])
    v_BTKH = jnp.einsum("btd,dkh->btkh", h_BTD, w["v"])
    if cfg.attention_bias:
        q_BTNH = q_BTNH + w["q_bias"][None, None]
        k_BTKH = k_BTKH + w["k_bias"][None, None]
        v_BTKH = v_BTKH + w["v_bias"][None, None]
    if cfg.qk_norm:  # Qwen3: per-head RMSNorm before RoPE
        q_BTNH = ops.rms_norm(q_BTNH, w["q_norm"], cfg.rms_norm_eps)
        k_BTKH = ops.rms_norm(k_BTKH, w["k_norm"], cfg.rms_norm_eps)
    q_BTNH = shard(ops.apply_rope(q_BTNH, cos_BTF, sin_BTF), "batch", "seq", "heads", None)
    k_BTKH = ops.apply_rope(k_BTKH, cos_BTF, sin_BTF)
    if k_cache is None:
        k_BSKH, v_BSKH = k_BTKH, v_BTKH
    else:
        zero = jnp.zeros((), jnp.int32)
        start = (layer, zero, index, zero, zero)
        k_cache = jax.lax.dynamic_update_slice(k_cache, k_BTKH.astype(k_cache.dtype)[None], start)
        v_cache = jax.lax.dynamic_update_slice(v_cache, v_BTKH.astype(v_cache.dtype)[None], start)
        k_BSKH, v_BSKH = k_cache[layer].astype(dt), v_cache[layer].astype(dt)
    attn_BTNH = ops.attention(q_BTNH, k_BSKH, v_BSKH, visible_BTS)
    out_BTD = jnp.einsum("btnh,nhd->btd", attn_BTNH, w["o"])
    if cfg.out_proj_bias:
        out_BTD = out_BTD + w["o_bias"][None, None]
    x_BTD = shard(x_BTD + out_BTD, "batch", "seq", None)

    h_BTD = ops.rms_norm(x_BTD, w["mlp_norm"], cfg.rms_norm_eps)
    gate_BTF = jnp.einsum("btd,df->btf", h_BTD, w["gate"])
    up_BTF = jnp.einsum("btd,df->btf", h_BTD, w["up"])
    act_BTF = shard(jax.nn.silu(gate_BTF) * up_BTF, "batch", "seq", "mlp")
    x_BTD = shard(x_BTD + jnp.einsum("btf,fd->btd", act_BTF, w["down"]), "batch", "seq", None)
    return x_BTD, k_cache, v_cache


class Transformer(nnx.Module):
    """Decoder-only language model: ``model(tokens, positions, mask=, cache=) -> (logits, cache)``."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        pdt = cfg.param_jnp_dtype
        V, D = cfg.vocab_size, cfg.hidden_size
        self.embed = _param(_INIT_STD * jax.random.normal(rngs.params(), (V, D), pdt), ("vocab", "embed"))
        self.layers = DecoderLayers(cfg, rngs=rngs)
        self.final_norm = _param(jnp.ones((D,), pdt), ("norm",))
        if not cfg.tie_word_embeddings:
            self.lm_head = _param(_INIT_STD * jax.random.normal(rngs.params(), (D, V), pdt),
                                  ("embed", "vocab"))

    def __call__(self, tokens, positions, *, mask=None, cache: KVCache | None = None):
        h_BTD, cache = self.hidden(tokens, positions, mask=mask, cache=cache)
        return self.logits(h_BTD), cache

    def hidden(self, tokens, positions, *, mask=None, cache: KVCache | None = None):
        """Final hidden states after the last RMSNorm, ``[B, T, D]`` in the compute dtype."""
        cfg = self.cfg
        tokens_BT, positions_BT = jnp.asarray(tokens), jnp.asarray(positions)
        if tokens_BT.ndim != 2 or positions_BT.shape != tokens_BT.shape:
            raise ValueError(f"tokens and positions must both be [B, T], got {tokens_BT.shape} and "
                             f"{positions_BT.shape}")
        B, T = tokens_BT.shape
        mask_BT = jnp.ones((B, T), jnp.bool_) if mask is None else jnp.asarray(mask, jnp.bool_)
        if mask_BT.shape != (B, T):
            raise ValueError(f"mask must be [B, T] = {(B, T)}, got {mask_BT.shape}")

        if cache is None:
            q_slots_T = jnp.arange(T, dtype=jnp.int32)
            key_valid_BS = mask_BT
        else:
            if cache.k.shape[1] != B or T > cache.max_len:
                raise ValueError(f"cache holds batch {cache.k.shape[1]} x {cache.max_len} slots; "
                                 f"got a call with batch {B} and {T} new tokens")
            index = cache.index.astype(jnp.int32)
            key_valid_BS = jax.lax.dynamic_update_slice(cache.valid, mask_BT, (jnp.int32(0), index))
            q_slots_T = index + jnp.arange(T, dtype=jnp.int32)
        visible_BTS = ops.visibility(key_valid_BS, q_slots_T, key_valid_BS.shape[1])
        cos_BTF, sin_BTF = ops.rope_tables(positions_BT, ops.rope_inv_freq(cfg))

        x_BTD = jnp.take(self.embed[...], tokens_BT, axis=0).astype(cfg.compute_jnp_dtype)
        x_BTD = shard(x_BTD, "batch", "seq", None)
        x_BTD, k_cache, v_cache = self.layers(x_BTD, cos_BTF, sin_BTF, visible_BTS, cache)
        h_BTD = ops.rms_norm(x_BTD, self.final_norm[...], cfg.rms_norm_eps)
        if cache is not None:
            cache = KVCache(k=k_cache, v=v_cache, valid=key_valid_BS, index=cache.index + T)
        return h_BTD, cache

    def lm_head_weight(self):
        """The output projection ``[D, V]`` in the parameter dtype (the embedding transposed if tied)."""
        return self.embed[...].T if self.cfg.tie_word_embeddings else self.lm_head[...]

    def logits(self, h_BTD):
        """Float32 logits ``[B, T, V]``: compute-dtype inputs, float32 accumulation."""
        w_DV = self.lm_head_weight().astype(h_BTD.dtype)
        logits_BTV = jnp.einsum("btd,dv->btv", h_BTD, w_DV, preferred_element_type=jnp.float32)
        return shard(logits_BTV, "batch", "seq", "vocab")


def count_params(model_or_state) -> int:
    """Number of parameter elements (works on abstract models from ``nnx.eval_shape`` too)."""
    if isinstance(model_or_state, nnx.Module):
        model_or_state = nnx.state(model_or_state, nnx.Param)
    return sum(math.prod(x.shape) for x in jax.tree.leaves(model_or_state))
