"""The key/value cache used by the sampler: fixed-size slots, one shared write index."""

from __future__ import annotations

import jax.numpy as jnp
from flax import struct

from opd_jax.models.config import ModelConfig


@struct.dataclass
class KVCache:
    """Per-layer keys and values stacked on a leading layer axis.

    k, v:  ``[L, B, S, K, Dh]`` (RoPE already applied to k).
    valid: ``bool [B, S]``, whether a slot holds a real (unmasked) token.
    index: ``int32 []``, the next slot to write, shared by every row.

    A call with T new tokens writes slots ``[index, index + T)``. Writing past ``S`` is the
    caller's bug: ``dynamic_update_slice`` would clamp the start and overwrite earlier slots.
    """

    k: jnp.ndarray
    v: jnp.ndarray
    valid: jnp.ndarray
    index: jnp.ndarray

    @property
    def max_len(self) -> int:
        return self.k.shape[2]

    @staticmethod
    def logical_axes() -> KVCache:
        """Logical sharding names per field (for ``opd_jax.sharding.logical_sharding``)."""
        kv = ("layers", "batch", "cache_seq", "kv_heads", "head_dim")
        return KVCache(k=kv, v=kv, valid=("batch", "cache_seq"), index=())


def init_cache(cfg: ModelConfig, batch: int, max_len: int, dtype=None) -> KVCache:
    """An empty cache (no valid slot, index 0); ``dtype`` defaults to the compute dtype."""
    dtype = cfg.compute_jnp_dtype if dtype is None else jnp.dtype(dtype)
    shape = (cfg.num_layers, batch, max_len, cfg.num_kv_heads, cfg.head_dim)
    return KVCache(k=jnp.zeros(shape, dtype), v=jnp.zeros(shape, dtype),
                   valid=jnp.zeros((batch, max_len), jnp.bool_), index=jnp.zeros((), jnp.int32))
