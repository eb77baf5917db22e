"""Checks and bucketing of the sampler's inputs, on the host, before anything is traced or compiled."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from opd_jax.sampling.config import SamplerConfig


def _on_host(x):
    """``x`` as a numpy array, or None when its values live on other processes."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        return None
    return np.asarray(x)


def _rows(bad) -> str:
    idx = np.flatnonzero(bad)
    return ", ".join(map(str, idx[:8])) + (" ..." if idx.size > 8 else "")


def check_prompts(prompts, prompt_mask, vocab_size: int):
    """Shapes and dtypes; with the values at hand: non-empty, left-padded, ids in the vocabulary."""
    if getattr(prompts, "ndim", None) != 2:
        raise ValueError(f"prompts must be an int array [batch, prompt_len], got shape "
                         f"{getattr(prompts, 'shape', type(prompts).__name__)}")
    if not jnp.issubdtype(prompts.dtype, jnp.integer):
        raise ValueError(f"prompts must hold integer token ids, got dtype {prompts.dtype}")
    if getattr(prompt_mask, "shape", None) != prompts.shape:
        raise ValueError(f"prompt_mask must have the shape of prompts {tuple(prompts.shape)}, got "
                         f"{getattr(prompt_mask, 'shape', type(prompt_mask).__name__)}")
    if prompt_mask.dtype != jnp.bool_:
        raise ValueError(f"prompt_mask must be bool (True on real tokens), got dtype {prompt_mask.dtype}")
    B, P = prompts.shape
    if B == 0:
        raise ValueError("prompts is an empty batch (0 rows); pass at least one prompt")
    if P == 0:
        raise ValueError("prompts has no columns (empty prompts); every prompt needs at least one "
                         "token, e.g. a BOS token")
    mask = _on_host(prompt_mask)
    if mask is None:
        return None
    empty = ~mask.any(axis=1)
    if empty.any():
        raise ValueError(f"prompt_mask has empty prompts (no True) in rows {_rows(empty)}; every "
                         "prompt needs at least one token, e.g. a BOS token")
    right_padded = (mask[:, 1:] < mask[:, :-1]).any(axis=1)
    if right_padded.any():
        raise ValueError(f"prompts must be LEFT-padded (prompt_mask False... then True...), rows "
                         f"{_rows(right_padded)} are not; move their padding to the left")
    ids = _on_host(prompts)
    out_of_range = (mask & ((ids < 0) | (ids >= vocab_size))).any(axis=1)
    if out_of_range.any():
        raise ValueError(f"prompts has token ids outside [0, {vocab_size}) in rows {_rows(out_of_range)}")
    return mask


def bucket_prompts(prompts, prompt_mask, mask_on_host, cfg: SamplerConfig):
    """Drop all-padding leading columns, then left-pad with ``pad_id`` to the prompt bucket."""
    P = prompts.shape[1]
    longest = P if mask_on_host is None else int(mask_on_host.sum(axis=1).max())
    if cfg.cache_len is not None and longest >= cfg.cache_len:
        raise ValueError(f"a prompt of {longest} tokens leaves no room for new tokens in the cache "
                         f"(cache_len={cfg.cache_len}); raise cache_len or shorten the prompts")
    size = cfg.prompt_bucket(longest)
    xp = np if isinstance(prompts, np.ndarray) and isinstance(prompt_mask, np.ndarray) else jnp
    prompts, prompt_mask = prompts[:, P - longest:], prompt_mask[:, P - longest:]
    widths = ((0, 0), (size - longest, 0))
    return (xp.pad(prompts.astype(np.int32), widths, constant_values=cfg.pad_id),
            xp.pad(prompt_mask, widths, constant_values=False))


def check_ids(cfg: SamplerConfig, vocab_size: int) -> None:
    for name, ids in (("pad_id", (cfg.pad_id,)), ("eos_ids", cfg.eos_ids)):
        if any(i >= vocab_size for i in ids):
            raise ValueError(f"SamplerConfig.{name}={getattr(cfg, name)} is outside the model's "
                             f"vocabulary [0, {vocab_size})")
    if cfg.record_topk > vocab_size:
        raise ValueError(f"SamplerConfig.record_topk={cfg.record_topk} exceeds the model's vocabulary "
                         f"({vocab_size} tokens); record at most that many")


def check_key(key):
    """A typed PRNG key (raw ``uint32 [2]`` keys are wrapped)."""
    key = jnp.asarray(key) if not isinstance(key, jax.Array) else key
    if not jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        if key.dtype != jnp.uint32:
            raise ValueError(f"key must be a PRNG key (jax.random.key(seed)), got dtype {key.dtype}")
        key = jax.random.wrap_key_data(key)
    if key.shape != ():
        raise ValueError(f"key must be a single PRNG key (one stream is derived per row), got shape {key.shape}")
    return key


def check_row_ids(row_ids, batch: int):
    """Global row indices ``int32 [B]``; default ``arange(B)``."""
    if row_ids is None:
        return np.arange(batch, dtype=np.int32)
    if getattr(row_ids, "shape", None) != (batch,) or not jnp.issubdtype(row_ids.dtype, jnp.integer):
        raise ValueError(f"row_ids must be an int array [batch={batch}] of global row indices, got "
                         f"{getattr(row_ids, 'dtype', type(row_ids).__name__)} "
                         f"{getattr(row_ids, 'shape', '')}")
    return row_ids.astype(np.int32) if isinstance(row_ids, np.ndarray) else row_ids.astype(jnp.int32)


def check_teacher(teacher, teacher_mix, vocab_size: int, teacher_vocab: int | None,
                  blend: str = "coin") -> float:
    try:  # a Python, numpy or 0-d JAX number (a schedule's value); not a bool
        mix = float(teacher_mix) if not isinstance(teacher_mix, bool) else None
    except (TypeError, ValueError):
        mix = None
    if blend == "coin" and (mix is None or not 0 <= mix <= 1):
        raise ValueError(f"teacher_mix must be a number in [0, 1] (the chance a token comes from "
                         f"the teacher), got {teacher_mix!r}")
    if blend != "coin" and (mix is None or not 0 <= mix < math.inf):
        raise ValueError(f"teacher_mix must be a finite number >= 0 (with teacher_blend="
                         f"'geometric': the KL budget in nats of each token's blend), got {teacher_mix!r}")
    teacher_mix = mix
    if teacher is None:
        if teacher_mix > 0:
            raise ValueError(f"teacher_mix={teacher_mix} needs a teacher: pass teacher=(graphdef, params)")
        return float(teacher_mix)
    if teacher_vocab != vocab_size:
        raise ValueError(f"teacher vocabulary ({teacher_vocab}) differs from the student's ({vocab_size}); "
                         "teacher-mixed sampling needs one shared tokenizer")
    return float(teacher_mix)
