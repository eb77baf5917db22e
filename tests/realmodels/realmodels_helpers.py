"""Helpers of the real-model tests: the test suite's other helper modules (loaded by path, so
that they are shared, not copied), JSONL writing, and a scripted fake model."""

import gzip
import importlib.util
import json
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from opd_jax.models import KVCache, tiny_config

TESTS = Path(__file__).resolve().parents[1]


def _load(name: str, path: Path):
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


hf_reference = _load("hf_reference", TESTS / "models" / "hf_reference.py")
cli_helpers = _load("cli_helpers", TESTS / "training" / "cli_helpers.py")


def write_records(path, records, *, gz: bool = False) -> str:
    opener = gzip.open if gz else open
    with opener(path, "wt", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    return str(path)


class Scripted(nnx.Module):
    """Next token = ``successor[current token]`` with margin ``big`` (``default`` where unlisted):
    a model whose completions are known in advance. ``successor`` may map a token to several
    (equally likely) next tokens."""

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
        mask = jnp.ones(tokens.shape, jnp.bool_) if mask is None else mask
        if cache is not None:
            valid = jax.lax.dynamic_update_slice(cache.valid, mask, (jnp.int32(0), cache.index))
            cache = cache.replace(valid=valid, index=cache.index + tokens.shape[1])
        return jax.nn.one_hot(tokens, self.cfg.vocab_size, dtype=jnp.float32), cache

    def logits(self, h):
        return h @ self.table[...]


def script_model(tokenizer, text: str, after: str, end: int, vocab: int) -> Scripted:
    """A model that, after the character ``after``, writes ``text`` (distinct characters) then the
    token ``end``."""
    ids = tokenizer(after + text, add_special_tokens=False)["input_ids"]
    assert len(set(ids)) == len(ids), "the script's characters must be distinct"
    successor = dict(zip(ids, ids[1:]))
    successor[ids[-1]] = end
    return Scripted(vocab, successor, default=end)
