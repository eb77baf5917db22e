"""The key/value cache used by the sampler: fixed-size slots, one shared write index."""

from __future__ import annotations

import jax.numpy as jnp
from flax import struct

from opd_jax.models.config import ModelConfig

# Logical axis names of one layer's keys or values (see ``opd_jax.sharding``).
LAYER_AXES = ("batch", "kv_heads", "cache_seq", "head_dim")


@struct.dataclass
class KVCache:
    """Keys and values, one array per layer.

    k, v:  lists of ``num_layers`` arrays ``[B, K, S, Dh]`` (RoPE already applied to k).
    valid: ``bool [B, S]``, whether a slot holds a real (unmasked) token.
    index: ``int32 []``, the next slot to write, shared by every row.

    One array per layer (not one stacked ``[L, ...]`` array) so that a decode step writes its
    token into each layer's buffer in place and attends to it directly: reading one layer out of
    a stacked array would copy it every step. ``[B, K, S, Dh]`` is the layout the attention
    products consume without a transpose (batch and kv-head leading, then slots).

    A call with T new tokens writes slots ``[index, index + T)``. Writing past ``S`` is the
    caller's bug: ``dynamic_update_slice`` would clamp the start and overwrite earlier slots.
    """

    k: list
    v: list
    valid: jnp.ndarray
    index: jnp.ndarray

    @property
    def max_len(self) -> int:
        return self.valid.shape[1]

    @property
    def batch(self) -> int:
        return self.valid.shape[0]

    @property
    def num_layers(self) -> int:
        return len(self.k)

    @staticmethod
    def logical_axes(num_layers: int) -> KVCache:
        """Logical sharding names per field (for ``opd_jax.sharding.logical_sharding``)."""
        return KVCache(k=[LAYER_AXES] * num_layers, v=[LAYER_AXES] * num_layers,
                       valid=("batch", "cache_seq"), index=())


def init_cache(cfg: ModelConfig, batch: int, max_len: int, dtype=None) -> KVCache:
    """An empty cache (no valid slot, index 0); ``dtype`` defaults to the compute dtype."""
    dtype = cfg.compute_jnp_dtype if dtype is None else jnp.dtype(dtype)
    shape = (batch, cfg.num_kv_heads, max_len, cfg.head_dim)
    layers = lambda: [jnp.zeros(shape, dtype) for _ in range(cfg.num_layers)]
    return KVCache(k=layers(), v=layers(), valid=jnp.zeros((batch, max_len), jnp.bool_),
                   index=jnp.zeros((), jnp.int32))
