"""A Flax NNX decoder-only transformer covering Llama, Qwen2 and Qwen3.

Layer parameters are stacked on a leading ``layers`` axis and the full-sequence forward pass
(training, scoring, the sampler's prefill) is a ``lax.scan`` over layers: compile time does not
grow with depth, and per-layer rematerialisation is one ``jax.checkpoint`` around the scanned body.
Without remat the body is checkpointed too, keeping only the weight products' outputs for the
backward pass (``SCAN_SAVED``). Models of at most ``LOOP_LAYERS`` layers (the lab's) without remat
loop over layers in Python instead: the same computation without the scan's stacked residual
buffers.

Calls with a KV cache (decode steps) go through a ``Decoder``: the layers' weights sliced out of
the stacked parameters once, and a Python loop over layers. Build it once outside a decode loop
(``model.decoder()``) and its weights are loop-invariant buffers; scanning the stacked weights
inside the loop would copy every layer's weights, and every layer's cache, on every step.

Dtype policy: parameters are stored in ``cfg.param_dtype`` and cast to ``cfg.dtype`` (the
compute dtype) where used; RMSNorm statistics, RoPE, attention scores and softmax, and the
logits are float32.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx, struct

from opd_jax.models import lora, ops
from opd_jax.models.ops import layer_slice
from opd_jax.models.cache import KVCache
from opd_jax.models.config import ModelConfig
from opd_jax.sharding import shard

_INIT_STD = 0.02  # HF's initializer_range default; only matters for freshly built models
LOOP_LAYERS = 4  # models this shallow run their layers in a Python loop rather than a scan
# What the scanned layers keep for the backward pass (without remat): the outputs of the weight
# products; the elementwise rest (norms, RoPE, SiLU, attention) is recomputed from them. A scan
# keeps each saved value in a stacked [L, ...] buffer that XLA zero-fills, writes and reads back;
# autodiff alone kept ~6 MLP-sized values per layer where 2 suffice, and copies of the weights.
# ~100M, 4 x 256 tokens, XLA:CPU (benchmarks/scan_residuals.py, BENCHMARKS.md): float32 1.05-1.09x
# faster, 0.96 against 1.84 GB of scratch, 1.7 against 2.1 s of compile; bf16 1.75-2.06x faster.
SCAN_SAVED = jax.checkpoint_policies.dots_with_no_batch_dims_saveable


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
    return shapes | lora.factor_shapes(cfg, shapes)


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
            elif lora.is_factor(name):
                value = lora.init_factor(name, rngs.params(), full, lora.FACTOR_DTYPE)
            else:
                value = _INIT_STD * jax.random.normal(rngs.params(), full, cfg.param_jnp_dtype)
            setattr(self, name, _param(value, ("layers", *axes)))

    def __call__(self, x_BTD, cos_BTF, sin_BTF, visible_BTS, *, return_kv: bool = False, layer_ids=None):
        """Run every layer over the whole sequence (no cache), scanning the stacked weights.

        With ``return_kv``, also each layer's keys (RoPE applied) and values in the compute dtype:
        ``(k, v)`` stacked ``[L, B, T, K, Dh]`` from the scan, a list of ``L`` pairs of
        ``[B, T, K, Dh]`` from the Python loop. ``layer_ids``: see ``layer_slice`` (loop only).
        """
        params = {name: getattr(self, name)[...] for name in self.names}
        cfg = self.cfg

        def body(x_BTD, p):
            dt = cfg.compute_jnp_dtype
            w = {name: value.astype(dt) for name, value in p.items()}
            q_BTNH, k_BTKH, v_BTKH = _project_qkv(cfg, w, x_BTD, cos_BTF, sin_BTF)
            attn_BTNH = ops.attention(q_BTNH, k_BTKH, v_BTKH, visible_BTS)
            x_BTD = _attn_out_and_mlp(cfg, w, x_BTD, attn_BTNH)
            return x_BTD, ((k_BTKH, v_BTKH) if return_kv else None)

        if cfg.remat:
            body = jax.checkpoint(body, prevent_cse=False)  # prevent_cse is unneeded inside scan
        elif cfg.num_layers > LOOP_LAYERS:
            body = jax.checkpoint(body, policy=SCAN_SAVED, prevent_cse=False)
        else:
            # A Python loop: no stacked residual buffers to zero, copy and update in the backward
            # pass (on a 2 x 128 model, 64 x 36 tokens: ~10% of a training step on 2 CPU cores).
            kvs = []
            for layer in range(cfg.num_layers):
                x_BTD, kv = body(x_BTD, {name: layer_slice(value, layer, layer_ids)
                                         for name, value in params.items()})
                kvs.append(kv)
            return x_BTD, (kvs if return_kv else None)  # not stacked only to be sliced apart again
        return jax.lax.scan(body, x_BTD, params)

    def unstacked(self, layer_ids=None) -> tuple[dict[str, jax.Array], ...]:
        """Per-layer weight dicts in the compute dtype (one slice and cast of each stacked parameter).

        ``layer_ids``: see ``layer_slice``; inside a jitted program, pass runtime indices.
        """
        dt = self.cfg.compute_jnp_dtype  # adapters folded in once: decoding costs what it costs without
        stacked = lora.merged_weights(self.cfg, {name: getattr(self, name)[...] for name in self.names})
        return tuple({name: layer_slice(value, layer, layer_ids).astype(dt) for name, value in stacked.items()}
                     for layer in range(self.cfg.num_layers))


def _dense(x, w, adapter=None):
    """``x [..., D] @ w [D, ...]`` as one 2-D product ``[tokens, D] @ [D, rest]`` (``ops.matmul``:
    bf16 products sum in float32), plus a low-rank adapter's ``lora.delta``. On XLA:CPU the backward
    of the equivalent batched einsum, next to elementwise ops, runs ~1.3x slower."""
    x2 = x.reshape(-1, x.shape[-1])
    out = ops.matmul(x2, w.reshape(w.shape[0], -1))
    if adapter is not None:
        out = out + lora.delta(x2, adapter)
    return out.reshape(*x.shape[:-1], *w.shape[1:])


def _project_qkv(cfg, w, x_BTD, cos_BTF, sin_BTF):
    """Attention input: RMSNorm, then q ``[B, T, N, H]``, k and v ``[B, T, K, H]`` (RoPE on q and k)."""
    h_BTD = ops.rms_norm(x_BTD, w["attn_norm"], cfg.rms_norm_eps)
    q_BTNH = _dense(h_BTD, w["q"], lora.factors(cfg, w, "q"))
    k_BTKH = _dense(h_BTD, w["k"], lora.factors(cfg, w, "k"))
    v_BTKH = _dense(h_BTD, w["v"], lora.factors(cfg, w, "v"))
    if cfg.attention_bias:
        q_BTNH = q_BTNH + w["q_bias"][None, None]
        k_BTKH = k_BTKH + w["k_bias"][None, None]
        v_BTKH = v_BTKH + w["v_bias"][None, None]
    if cfg.qk_norm:  # Qwen3: per-head RMSNorm before RoPE
        q_BTNH = ops.rms_norm(q_BTNH, w["q_norm"], cfg.rms_norm_eps)
        k_BTKH = ops.rms_norm(k_BTKH, w["k_norm"], cfg.rms_norm_eps)
    q_BTNH = shard(ops.apply_rope(q_BTNH, cos_BTF, sin_BTF), "batch", "seq", "heads", None)
    k_BTKH = ops.apply_rope(k_BTKH, cos_BTF, sin_BTF)
    return q_BTNH, k_BTKH, v_BTKH


def _attn_out_and_mlp(cfg, w, x_BTD, attn_BTNH):
    """The rest of a pre-norm block: x + out_proj(attn), then + mlp(norm(.))."""
    # One contracting axis of N * H (a reshape of both operands): contracting (n, h) as two axes
    # lets XLA pick (h, n) order, which transposes the weight and the activations on every call.
    B, T, N, H = attn_BTNH.shape
    out_BTD = _dense(attn_BTNH.reshape(B, T, N * H), w["o"].reshape(N * H, -1), lora.factors(cfg, w, "o"))
    if cfg.out_proj_bias:
        out_BTD = out_BTD + w["o_bias"][None, None]
    x_BTD = shard(x_BTD + out_BTD, "batch", "seq", None)

    h_BTD = ops.rms_norm(x_BTD, w["mlp_norm"], cfg.rms_norm_eps)
    gate_BTF = _dense(h_BTD, w["gate"], lora.factors(cfg, w, "gate"))
    up_BTF = _dense(h_BTD, w["up"], lora.factors(cfg, w, "up"))
    act_BTF = shard(jax.nn.silu(gate_BTF) * up_BTF, "batch", "seq", "mlp")
    return shard(x_BTD + _dense(act_BTF, w["down"], lora.factors(cfg, w, "down")), "batch", "seq", None)


# The cached block's parts that do not depend on the cache's length, each traced once per shape: a
# sampling program calls them in every layer of every cache phase's decode loop (traced 8 times
# each at 2 layers and 4 phases otherwise). XLA inlines the calls.
_cached_qkv = jax.jit(_project_qkv, static_argnums=0)
_cached_out_and_mlp = jax.jit(_attn_out_and_mlp, static_argnums=0)


def _cached_layer(cfg, w, x_BTD, cos_BTF, sin_BTF, visible_BTS, k_BKHS, v_BKSH, index):
    """One block with this layer's cache: write the T new keys/values at ``index``, attend to all slots."""
    dt = cfg.compute_jnp_dtype
    q_BTNH, k_BTKH, v_BTKH = _cached_qkv(cfg, w, x_BTD, cos_BTF, sin_BTF)
    k_BKHS = ops.write_slots(k_BKHS, k_BTKH.transpose(0, 2, 3, 1), index, axis=3)
    v_BKSH = ops.write_slots(v_BKSH, v_BTKH.transpose(0, 2, 1, 3), index, axis=2)
    # Attention in the wider of the cache's and the compute dtype: a float32 cache beside bf16
    # weights is read as it is (casting it would copy every slot of every layer on every step).
    at = jnp.promote_types(k_BKHS.dtype, dt)
    attn_BTNH = ops.cached_attention(q_BTNH.astype(at), k_BKHS.astype(at), v_BKSH.astype(at), visible_BTS)
    return _cached_out_and_mlp(cfg, w, x_BTD, attn_BTNH.astype(dt)), k_BKHS, v_BKSH


def _check_inputs(tokens, positions, mask):
    tokens_BT, positions_BT = jnp.asarray(tokens), jnp.asarray(positions)
    if tokens_BT.ndim != 2 or positions_BT.shape != tokens_BT.shape:
        raise ValueError(f"tokens and positions must both be [B, T], got {tokens_BT.shape} and "
                         f"{positions_BT.shape}")
    B, T = tokens_BT.shape
    mask_BT = jnp.ones((B, T), jnp.bool_) if mask is None else jnp.asarray(mask, jnp.bool_)
    if mask_BT.shape != (B, T):
        raise ValueError(f"mask must be [B, T] = {(B, T)}, got {mask_BT.shape}")
    return tokens_BT, positions_BT, mask_BT


def _embed(cfg, embed_VD, tokens_BT):
    x_BTD = jnp.take(embed_VD, tokens_BT, axis=0).astype(cfg.compute_jnp_dtype)
    return shard(x_BTD, "batch", "seq", None)


@struct.dataclass
class Decoder:
    """A ``Transformer`` prepared for calls with a KV cache: ``Transformer.decoder()``.

    Holds the weights as a decode loop wants them: one dict per layer, in the compute dtype
    (the output head too; the embedding stays whole, only the looked-up rows are cast). Built
    outside a loop, they are loop-invariant buffers that no step copies. The cached forward is a
    Python loop over layers, each with its own cache buffers updated in place. With
    ``max_positions``, RoPE's cos/sin come from tables of positions ``[0, max_positions)`` (a
    position outside gives NaN) instead of being computed per call.
    ``decoder(tokens, positions, mask=, cache=)`` equals ``model(tokens, positions, mask=, cache=)``.
    """

    cfg: ModelConfig = struct.field(pytree_node=False)
    embed: jax.Array  # [V, D], parameter dtype
    layers: tuple  # num_layers dicts of per-layer weights, compute dtype
    final_norm: jax.Array
    head: jax.Array  # [D, V], compute dtype (a tied embedding transposed once)
    rope_cos: jax.Array | None = None  # float32 [max_positions, head_dim // 2]
    rope_sin: jax.Array | None = None

    def __call__(self, tokens, positions, *, mask=None, cache: KVCache):
        h_BTD, cache = self.hidden(tokens, positions, mask=mask, cache=cache)
        return self.logits(h_BTD), cache

    def hidden(self, tokens, positions, *, mask=None, cache: KVCache):
        """Final hidden states ``[B, T, D]`` and the cache with the T new tokens written at ``cache.index``."""
        cfg = self.cfg
        tokens_BT, positions_BT, mask_BT = _check_inputs(tokens, positions, mask)
        B, T = tokens_BT.shape
        if cache.batch != B or T > cache.max_len or cache.num_layers != cfg.num_layers:
            raise ValueError(f"cache holds {cache.num_layers} layers of batch {cache.batch} x {cache.max_len} "
                             f"slots; got a call with batch {B} and {T} new tokens to a model of "
                             f"{cfg.num_layers} layers")
        index = cache.index.astype(jnp.int32)
        key_valid_BS = ops.write_slots(cache.valid, mask_BT, index, axis=1)
        q_slots = index[..., None] + jnp.arange(T, dtype=jnp.int32).reshape((1,) * index.ndim + (T,))
        visible_BTS = ops.visibility(key_valid_BS, q_slots, cache.max_len)
        if self.rope_cos is None:
            cos_BTF, sin_BTF = ops.rope_tables(positions_BT, ops.rope_inv_freq(cfg))
        else:  # looked up: XLA would fuse cos/sin into every q and k element of every layer
            cos_BTF, sin_BTF = (jnp.take(t, positions_BT, axis=0, mode="fill", fill_value=jnp.nan)
                                for t in (self.rope_cos, self.rope_sin))

        x_BTD = _embed(cfg, self.embed, tokens_BT)
        k_cache, v_cache = [], []
        for w, k_BKHS, v_BKSH in zip(self.layers, cache.k, cache.v, strict=True):
            x_BTD, k_BKHS, v_BKSH = _cached_layer(cfg, w, x_BTD, cos_BTF, sin_BTF, visible_BTS, k_BKHS,
                                                  v_BKSH, index)
            k_cache.append(k_BKHS)
            v_cache.append(v_BKSH)
        h_BTD = ops.rms_norm(x_BTD, self.final_norm, cfg.rms_norm_eps)
        return h_BTD, KVCache(k=k_cache, v=v_cache, valid=key_valid_BS, index=cache.index + T)

    def with_rope_tables(self, max_positions: int) -> "Decoder":
        """This decoder with RoPE's cos/sin tabulated for positions ``[0, max_positions)``."""
        positions = jnp.arange(max_positions, dtype=jnp.int32)[None]
        cos, sin = ops.rope_tables(positions, ops.rope_inv_freq(self.cfg))
        return self.replace(rope_cos=cos[0], rope_sin=sin[0])

    def logits(self, h_BTD):
        """Float32 logits ``[B, T, V]``, as ``Transformer.logits``."""
        logits_BTV = jnp.einsum("btd,dv->btv", h_BTD, self.head.astype(h_BTD.dtype),
                                preferred_element_type=jnp.float32)
        return shard(logits_BTV, "batch", "seq", "vocab")


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

    def hidden(self, tokens, positions, *, mask=None, cache: KVCache | None = None, visible=None):
        """Final hidden states after the last RMSNorm, ``[B, T, D]`` in the compute dtype.

        Without a cache: the scanned full-sequence forward, returning ``(h, None)``. With one: the
        T tokens are written at ``cache.index`` and attend to every valid earlier slot; returns
        ``(h, updated cache)`` (through ``self.decoder()``, see ``Decoder`` for use in a loop).
        ``visible``: bool ``[B, T, T]``, which tokens each token attends to, in place of the
        causal-and-valid default (no cache; tree attention, see :mod:`opd_jax.models.branches`).
        """
        if cache is not None:
            if visible is not None:
                raise ValueError("visible= replaces the causal mask of a forward without a cache")
            return self.decoder().hidden(tokens, positions, mask=mask, cache=cache)
        h_BTD, _ = self._scan(tokens, positions, mask, return_kv=False, visible=visible)
        return h_BTD, None

    def prefill(self, tokens, positions, *, mask=None, cache_len: int, cache_dtype=None, layer_ids=None):
        """``hidden(tokens, positions, mask=mask, cache=init_cache(cfg, B, cache_len, cache_dtype))``.

        Computed by the scanned full-sequence forward (attention over the T tokens only, compile
        time independent of depth), whose per-layer keys and values then fill slots ``[0, T)``.
        ``layer_ids``: see ``layer_slice`` (the same result, compiled faster inside a program).
        """
        cfg = self.cfg
        (h_BTD, mask_BT), kv = self._scan(tokens, positions, mask, return_kv=True, layer_ids=layer_ids)
        B, T = mask_BT.shape
        if T > cache_len:
            raise ValueError(f"a cache of {cache_len} slots cannot hold a prefill of {T} tokens")
        dtype = cfg.compute_jnp_dtype if cache_dtype is None else jnp.dtype(cache_dtype)
        free = cache_len - T
        k_slots = lambda x_BTKH: jnp.pad(x_BTKH.transpose(0, 2, 3, 1).astype(dtype), ((0, 0),) * 3 + ((0, free),))
        v_slots = lambda x_BTKH: jnp.pad(x_BTKH.transpose(0, 2, 1, 3).astype(dtype),
                                         ((0, 0), (0, 0), (0, free), (0, 0)))
        layers = kv if isinstance(kv, list) else [tuple(layer_slice(x, layer, layer_ids) for x in kv)
                                                   for layer in range(cfg.num_layers)]
        cache = KVCache(k=[k_slots(k_BTKH) for k_BTKH, _ in layers], v=[v_slots(v_BTKH) for _, v_BTKH in layers],
                        valid=jnp.pad(mask_BT, ((0, 0), (0, cache_len - T))),
                        index=jnp.asarray(T, jnp.int32))
        return h_BTD, cache

    def _scan(self, tokens, positions, mask, *, return_kv: bool, layer_ids=None, visible=None):
        cfg = self.cfg
        tokens_BT, positions_BT, mask_BT = _check_inputs(tokens, positions, mask)
        B, T = tokens_BT.shape
        if visible is None:
            visible_BTS = ops.visibility(mask_BT, jnp.arange(T, dtype=jnp.int32), T)
        elif jnp.shape(visible) != (B, T, T):
            raise ValueError(f"visible must be [B, T, T] = {(B, T, T)}, got {jnp.shape(visible)}")
        else:
            visible_BTS = jnp.asarray(visible, jnp.bool_)
        cos_BTF, sin_BTF = ops.rope_tables(positions_BT, ops.rope_inv_freq(cfg))
        x_BTD = _embed(cfg, self.embed[...], tokens_BT)
        x_BTD, kv = self.layers(x_BTD, cos_BTF, sin_BTF, visible_BTS, return_kv=return_kv, layer_ids=layer_ids)
        h_BTD = ops.rms_norm(x_BTD, self.final_norm[...], cfg.rms_norm_eps)
        return ((h_BTD, mask_BT), kv) if return_kv else (h_BTD, None)

    def decoder(self, max_positions: int | None = None, layer_ids=None) -> Decoder:
        """The weights sliced per layer and cast to the compute dtype, for cached calls (see ``Decoder``).

        ``max_positions``: tabulate RoPE for positions below it (a decode loop knows its bound).
        ``layer_ids``: see ``layer_slice`` (the same weights, compiled faster inside a program).
        """
        cfg = self.cfg
        # [D, V] even when tied: a copy of the embedding, but on CPU the [B, D] @ [D, V] product
        # of a decode step is up to 1.8x faster than contracting the embedding's D axis in place.
        head = shard(self.lm_head_weight().astype(cfg.compute_jnp_dtype), "embed", "vocab")
        decoder = Decoder(cfg=cfg, embed=self.embed[...], layers=self.layers.unstacked(layer_ids),
                          final_norm=self.final_norm[...], head=head)
        return decoder if max_positions is None else decoder.with_rope_tables(max_positions)

    def lm_head_weight(self):
        """The output projection ``[D, V]`` in the parameter dtype (the embedding transposed if tied)."""
        return self.embed[...].T if self.cfg.tie_word_embeddings else self.lm_head[...]

    def logits(self, h_BTD):
        """Float32 logits ``[B, T, V]``: compute-dtype inputs, float32 accumulation."""
        logits_BTV = ops.output_logits(h_BTD, self.lm_head_weight().astype(h_BTD.dtype))
        return shard(logits_BTV, "batch", "seq", "vocab")


def count_params(model_or_state) -> int:
    """Number of parameter elements (works on abstract models from ``nnx.eval_shape`` too)."""
    if isinstance(model_or_state, nnx.Module):
        model_or_state = nnx.state(model_or_state, nnx.Param)
    return sum(math.prod(x.shape) for x in jax.tree.leaves(model_or_state))
