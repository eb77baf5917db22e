"""Fake models with known outputs, shaped like ``opd_jax.models.Transformer`` for the sampler.

The sampler needs ``.cfg`` (for the cache shape), ``.hidden(tokens, positions, mask=, cache=)`` and
``.logits(h)``. These ignore the cache contents but advance it as the real model does.
"""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from opd_jax.models import KVCache, tiny_config

BIG = 30.0  # logit margin: the runner-up has probability < V * exp(-30)


def fake_config(vocab: int):
    return tiny_config("llama", vocab_size=vocab, num_layers=1, num_heads=1, num_kv_heads=1, head_dim=2)


def _advance(cache: KVCache | None, mask_BT):
    if cache is None:
        return None
    valid = jax.lax.dynamic_update_slice(cache.valid, mask_BT, (jnp.int32(0), cache.index))
    return cache.replace(valid=valid, index=cache.index + mask_BT.shape[1])


class Successor(nnx.Module):
    """Predicts ``token + shift (mod V)`` with logit margin ``BIG``: near-deterministic."""

    def __init__(self, vocab: int, shift: int = 1):
        self.cfg = fake_config(vocab)
        self.shift = shift
        self.margin = nnx.Param(jnp.float32(BIG))

    def hidden(self, tokens, positions, *, mask=None, cache=None):
        mask = jnp.ones(tokens.shape, jnp.bool_) if mask is None else mask
        return jax.nn.one_hot(tokens, self.cfg.vocab_size, dtype=jnp.float32), _advance(cache, mask)

    def logits(self, h):
        return self.margin[...] * jnp.roll(h, self.shift, axis=-1)

    def __call__(self, tokens, positions, *, mask=None, cache=None):
        h, cache = self.hidden(tokens, positions, mask=mask, cache=cache)
        return self.logits(h), cache


class Constant(nnx.Module):
    """The same next-token logits after every prefix."""

    def __init__(self, logits):
        logits = np.asarray(logits, np.float32)
        self.cfg = fake_config(logits.shape[-1])
        self.table = nnx.Param(jnp.asarray(logits))

    def hidden(self, tokens, positions, *, mask=None, cache=None):
        mask = jnp.ones(tokens.shape, jnp.bool_) if mask is None else mask
        return jnp.zeros((*tokens.shape, 1), jnp.float32), _advance(cache, mask)

    def logits(self, h):
        return h + self.table[...][None, None, :]
