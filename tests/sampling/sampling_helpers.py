"""Shared models and the full-forward oracle for the sampler tests."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from hf_reference import random_model
from opd_jax.models import tiny_config
from opd_jax.sampling import token_distribution


@functools.lru_cache(maxsize=None)
def split_model(arch: str = "qwen3", seed: int = 0, **overrides):
    """``(model, graphdef, params)`` of a random tiny model, built once per test session."""
    model = random_model(tiny_config(arch, **overrides), seed)
    graphdef, params = nnx.split(model, nnx.Param)
    return model, graphdef, params


def left_padded(vocab: int, lengths, width: int, seed: int = 0):
    """Random left-padded prompts (ids in [1, vocab)) and their mask."""
    rng = np.random.RandomState(seed)
    tokens = rng.randint(1, vocab, (len(lengths), width)).astype(np.int32)
    mask = np.arange(width)[None, :] >= (width - np.asarray(lengths))[:, None]
    return np.where(mask, tokens, 0).astype(np.int32), mask


@functools.partial(jax.jit, static_argnames=("graphdef", "cfg"))
def rescored_logp(graphdef, params, tokens, mask, positions, *, cfg):
    """One full forward over the finished sequences: log-prob of token t from the logits at t - 1."""
    logits, _ = nnx.merge(graphdef, params)(tokens, positions, mask=mask)
    logp = token_distribution(logits[:, :-1], cfg)
    picked = jnp.take_along_axis(logp, tokens[:, 1:, None], axis=-1)[..., 0]
    return jnp.concatenate([jnp.zeros_like(picked[:, :1]), picked], axis=1)


def completion(rollout, field="tokens"):
    """A rollout field's completion columns as numpy."""
    return np.asarray(getattr(rollout, field))[:, rollout.prompt_len:]
