"""A scripted fake model for tests: its next token is a fixed function of the current one, so its
completions (greedy or sampled) are known in advance. Shared by the lab's and the real-model
tests (``tests/`` is on ``sys.path`` through its ``conftest.py``)."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from opd_jax.models import KVCache, ops, tiny_config


def advance(cache: KVCache | None, tokens, mask=None) -> KVCache | None:
    """The KV cache of a model without attention after it read ``tokens``: only the slots'
    validity and the write index move (what the sampler reads of a cache)."""
    if cache is None:
        return None
    mask = jnp.ones(tokens.shape, jnp.bool_) if mask is None else mask
    valid = ops.write_slots(cache.valid, mask, cache.index, axis=1)  # a shared index or one per row
    return cache.replace(valid=valid, index=cache.index + tokens.shape[1])


class Scripted(nnx.Module):
    """Next token = ``successor[current token]`` with margin ``big`` (``default`` where unlisted).
    ``successor`` may map a token to several (equally likely) next tokens."""

    def __init__(self, vocab: int, successor: dict, default: int, big: float = 40.0):
        self.cfg = tiny_config("llama", vocab_size=vocab, num_layers=1, num_heads=1, num_kv_heads=1,
                               head_dim=2, max_position_embeddings=4096)
        table = np.zeros((vocab, vocab), np.float32)
        table[:, default] = big
        for a, b in successor.items():
            table[a] = 0.0
            table[a, list(b) if isinstance(b, (list, tuple)) else b] = big
        self.table = nnx.Param(jnp.asarray(table))

    def hidden(self, tokens, positions, *, mask=None, cache: KVCache | None = None):
        return jax.nn.one_hot(tokens, self.cfg.vocab_size, dtype=jnp.float32), advance(
            cache, tokens, mask)

    def logits(self, h):
        return h @ self.table[...]
