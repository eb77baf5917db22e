"""A scripted model whose logits are a free table indexed by position: ``logits = table[position]``.

Its distributions are whatever the table says (a known soft distribution, or a near-deterministic
answer with a large margin), and the table *is* its only parameter, so the gradient of any loss
with respect to it is the sum of the per-position logit gradients: closed forms to test the lab's
measures and gradients against. It runs through the sampler (KV cache bookkeeping only) and the
train step (``lm_head_weight`` is the table; the hidden state is the one-hot position)."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from opd_jax.lab import tokenizer as T
from opd_jax.models import tiny_config
from scripted_model import advance

V = T.vocab_size()
POSITIONS = 64


class Table(nnx.Module):
    def __init__(self, table: np.ndarray):
        assert table.shape == (POSITIONS, V), table.shape
        self.cfg = tiny_config("llama", vocab_size=V, num_layers=1, num_heads=1, num_kv_heads=1, head_dim=2)
        self.table = nnx.Param(jnp.asarray(table, jnp.float32))

    def hidden(self, tokens, positions, *, mask=None, cache=None):
        return jax.nn.one_hot(positions, POSITIONS, dtype=jnp.float32), advance(cache, tokens, mask)

    def __call__(self, tokens, positions, *, mask=None, cache=None):
        h, cache = self.hidden(tokens, positions, mask=mask, cache=cache)
        return self.logits(h), cache

    def lm_head_weight(self):
        return self.table[...]

    def logits(self, h):
        return h @ self.table[...]


def split(table: np.ndarray):
    """``(graphdef, params)`` of a :class:`Table`."""
    return nnx.split(Table(table), nnx.Param)


def script(answer: list[int], start: int, margin: float, base: np.ndarray | None = None) -> np.ndarray:
    """A table answering ``answer`` (then EOS) to any prompt of ``start`` tokens: logit ``margin``
    on each of its tokens, over ``base`` (zeros by default)."""
    table = np.zeros((POSITIONS, V), np.float32) if base is None else base.astype(np.float32).copy()
    for n, t in enumerate(answer + [T.EOS_ID]):
        table[start - 1 + n, t] += margin
    return table
