"""The one table mapping HF tensor names and layouts to this model's parameters.

HF ``nn.Linear`` weights are ``[out, in]``; ours are ``[in, ...out]`` with heads split out,
so attention kernels reshape as well as transpose. All conversions are numpy views where
possible (reshape of a contiguous array, transposes), so loading from a memory map copies
only the slice a device needs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np

from opd_jax.models.config import ModelConfig


# The HF module of each projection (its weight is ``<module>.weight``; PEFT's adapters on it are
# ``<module>.lora_A`` / ``lora_B``).
PROJECTIONS = {"q": "self_attn.q_proj", "k": "self_attn.k_proj", "v": "self_attn.v_proj", "o": "self_attn.o_proj",
               "gate": "mlp.gate_proj", "up": "mlp.up_proj", "down": "mlp.down_proj"}


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    hf_name: str
    hf_shape: tuple[int, ...]
    param: tuple[str, ...]  # our parameter path, e.g. ("layers", "q")
    layer: int | None  # index on the stacked layer axis, None for unstacked parameters
    to_ours: Callable[[np.ndarray], np.ndarray]
    to_hf: Callable[[np.ndarray], np.ndarray]


def _identity(x):
    return x


def _transpose(x):
    return x.T


def _heads_in(n: int, h: int, d: int):
    """HF ``[n*h, d]`` (out, in) <-> ours ``[d, n, h]``."""
    return (lambda w: w.reshape(n, h, d).transpose(2, 0, 1),
            lambda w: w.transpose(1, 2, 0).reshape(n * h, d))


def _heads_out(n: int, h: int, d: int):
    """HF ``[d, n*h]`` (out, in) <-> ours ``[n, h, d]``."""
    return (lambda w: w.reshape(d, n, h).transpose(1, 2, 0),
            lambda w: w.transpose(2, 0, 1).reshape(d, n * h))


def _split_heads(n: int, h: int):
    """HF bias ``[n*h]`` <-> ours ``[n, h]``."""
    return (lambda b: b.reshape(n, h), lambda b: b.reshape(n * h))


def hf_tensor_specs(cfg: ModelConfig) -> list[TensorSpec]:
    """Every tensor an HF checkpoint of ``cfg`` holds, in a stable order."""
    D, F, V = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size
    N, K, H = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    ident, trans = (_identity, _identity), (_transpose, _transpose)
    specs = [TensorSpec("model.embed_tokens.weight", (V, D), ("embed",), None, *ident)]
    for i in range(cfg.num_layers):
        p = f"model.layers.{i}."
        layer = [
            ("input_layernorm.weight", (D,), "attn_norm", ident),
            (f"{PROJECTIONS['q']}.weight", (N * H, D), "q", _heads_in(N, H, D)),
            (f"{PROJECTIONS['k']}.weight", (K * H, D), "k", _heads_in(K, H, D)),
            (f"{PROJECTIONS['v']}.weight", (K * H, D), "v", _heads_in(K, H, D)),
            (f"{PROJECTIONS['o']}.weight", (D, N * H), "o", _heads_out(N, H, D)),
            ("post_attention_layernorm.weight", (D,), "mlp_norm", ident),
            (f"{PROJECTIONS['gate']}.weight", (F, D), "gate", trans),
            (f"{PROJECTIONS['up']}.weight", (F, D), "up", trans),
            (f"{PROJECTIONS['down']}.weight", (D, F), "down", trans),
        ]
        if cfg.attention_bias:
            layer += [("self_attn.q_proj.bias", (N * H,), "q_bias", _split_heads(N, H)),
                      ("self_attn.k_proj.bias", (K * H,), "k_bias", _split_heads(K, H)),
                      ("self_attn.v_proj.bias", (K * H,), "v_bias", _split_heads(K, H))]
        if cfg.out_proj_bias:
            layer.append(("self_attn.o_proj.bias", (D,), "o_bias", ident))
        if cfg.qk_norm:
            layer += [("self_attn.q_norm.weight", (H,), "q_norm", ident),
                      ("self_attn.k_norm.weight", (H,), "k_norm", ident)]
        specs += [TensorSpec(p + name, shape, ("layers", ours), i, *conv)
                  for name, shape, ours, conv in layer]
    specs.append(TensorSpec("model.norm.weight", (D,), ("final_norm",), None, *ident))
    if not cfg.tie_word_embeddings:
        specs.append(TensorSpec("lm_head.weight", (V, D), ("lm_head",), None, *trans))
    return specs
