"""Tunix's sampler (``google-tunix==0.1.7``, the JAX post-training library) as a benchmark peer.

Install beside our pins (Tunix pins ``safetensors<0.8``, which only its own loader's metadata
needs; the sampler and Qwen3 model run on ours)::

    pip install --no-deps -r requirements-bench-tunix.txt

Tunix's sampler takes strings and a tokenizer; here a tokenizer over space-separated ids feeds
it the benchmark's token ids unchanged (no BOS; left-padded by Tunix to ``max_prompt_length``).
Its faults, as the comparison must know them (read from its 0.1.7 source):

- its Qwen3 config has a ``rope_theta`` field that the model never passes on (its attention
  calls ``apply_rope`` with the default 1e6), so the benchmark checkpoints are built with
  ``rope_theta=1e6``;
- it masks every generated token equal to the pad id out of later attention, so a row that
  emits the pad id diverges from then on; :func:`pad_rows` counts them.
"""

from __future__ import annotations

import numpy as np

VERSION = "0.1.7"  # the release whose faults are listed above
ROPE_THETA = 1_000_000  # what the benchmark checkpoints use so that Tunix's model matches them


def available() -> str | None:
    """``None`` when Tunix imports, else why not (with the install command)."""
    try:
        import tunix.generate.sampler  # noqa: F401
        import tunix.models.qwen3.params  # noqa: F401
    except Exception as e:  # any import failure: missing package or a broken dependency
        return f"Tunix not available ({type(e).__name__}: {e}); pip install --no-deps -r requirements-bench-tunix.txt"
    return None


class IdTokenizer:
    """The tokenizer interface Tunix's sampler asks for, over space-separated token ids."""

    def __init__(self, pad_id: int, eos_id: int):
        self._pad, self._eos = pad_id, eos_id

    def encode(self, text: str, **_) -> list[int]:
        return [int(t) for t in text.split()]

    def decode(self, ids, **_) -> str:
        return " ".join(str(int(t)) for t in ids)

    def bos_id(self):
        return None  # no BOS: the prompts go in as given

    def eos_id(self) -> int:
        return self._eos

    def pad_id(self) -> int:
        return self._pad


class TunixSampler:
    """Tunix's Qwen3 loaded from a Hugging Face checkpoint directory, sampling greedily (or at a
    temperature) from left-padded id prompts exactly ``new_tokens`` tokens (an end-of-sequence id
    outside the vocabulary never fires)."""

    def __init__(self, path: str, hf_config: dict, dtype: str, pad_id: int, prompt_len: int, new_tokens: int):
        import jax.numpy as jnp
        from tunix.generate import sampler as sampler_lib
        from tunix.models.qwen3 import model as model_lib
        from tunix.models.qwen3 import params as params_lib

        c = hf_config
        jdtype = jnp.dtype(dtype)
        cfg = model_lib.ModelConfig(
            num_layers=c["num_hidden_layers"], vocab_size=c["vocab_size"], embed_dim=c["hidden_size"],
            hidden_dim=c["intermediate_size"], num_heads=c["num_attention_heads"], head_dim=c["head_dim"],
            num_kv_heads=c["num_key_value_heads"], rope_theta=ROPE_THETA, norm_eps=1e-6,
            use_tied_embedding=c.get("tie_word_embeddings", False), dtype=jdtype, param_dtype=jdtype)
        model = params_lib.create_model_from_safe_tensors(path, cfg, dtype=jdtype)
        self.vocab, self.prompt_len, self.new_tokens = c["vocab_size"], prompt_len, new_tokens
        cache = sampler_lib.CacheConfig(cache_size=prompt_len + new_tokens, num_layers=cfg.num_layers,
                                        num_kv_heads=cfg.num_kv_heads, head_dim=cfg.head_dim)
        self.sampler = sampler_lib.Sampler(model, IdTokenizer(pad_id, eos_id=self.vocab + 1), cache)

    def __call__(self, tokens: np.ndarray, mask: np.ndarray, temperature: float = 0.0, seed: int = 0) -> np.ndarray:
        """``[batch, new_tokens]`` generated ids for left-padded ``tokens`` with ``mask``."""
        strings = [" ".join(str(int(t)) for t, m in zip(row, mrow) if m) for row, mrow in zip(tokens, mask)]
        out = self.sampler(strings, max_generation_steps=self.new_tokens, max_prompt_length=self.prompt_len,
                           eos_tokens=[self.vocab + 1], temperature=temperature, seed=seed, pad_output=True,
                           **({"top_p": 1.0} if temperature else {}))
        return np.asarray(out.tokens)[:, : self.new_tokens]


def pad_rows(generated: np.ndarray, pad_id: int) -> np.ndarray:
    """Rows (bool ``[batch]``) in which a generator emitted ``pad_id``: Tunix masks such tokens
    out of later attention, so its tokens in these rows are not comparable after that point."""
    return (np.asarray(generated) == pad_id).any(axis=1)
