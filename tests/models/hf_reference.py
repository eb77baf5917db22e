"""Helpers for tests: PyTorch reference models from ``transformers`` and padded batches."""

import jax
import jax.numpy as jnp
import numpy as np
import torch
import transformers
from flax import nnx

from opd_jax.models import Transformer

SIZES = dict(vocab_size=97, hidden_size=48, intermediate_size=80, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2, head_dim=16)  # head_dim != 48 / 4
LLAMA3_ROPE = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 64}


def hf_model(arch: str, *, seed: int = 0, **overrides):
    """A tiny random ``transformers`` causal LM; norms and biases randomised too (HF inits them 1/0)."""
    kwargs = {**SIZES, **overrides}
    cfg = transformers.AutoConfig.for_model(arch, **kwargs)
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(cfg, attn_implementation="eager").eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.normal_(1.0, 0.3)
            elif name.endswith("bias"):
                p.normal_(0.0, 0.3)
            else:
                p.normal_(0.0, 0.1)  # larger than HF's 0.02, so attention is far from uniform
    return model


def padded_batch(vocab: int, lengths, total: int, seed: int = 0):
    """Left-padded tokens, mask and positions (``cumsum(mask) - 1``, pads at 0), all ``[B, total]``."""
    rng = np.random.RandomState(seed)
    tokens = rng.randint(0, vocab, (len(lengths), total)).astype(np.int32)
    mask = np.zeros((len(lengths), total), bool)
    for b, n in enumerate(lengths):
        mask[b, total - n:] = True
    positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0).astype(np.int32)
    return tokens, mask, positions


def torch_logits(model, tokens, mask, positions) -> np.ndarray:
    with torch.no_grad():
        out = model(input_ids=torch.tensor(tokens, dtype=torch.long),
                    attention_mask=torch.tensor(mask, dtype=torch.long),
                    position_ids=torch.tensor(positions, dtype=torch.long))
    return out.logits.float().numpy()


def jit_forward(model):
    """``model(tokens, positions, mask=, cache=)`` jitted through ``nnx.split``/``merge``."""
    graphdef, params = nnx.split(model, nnx.Param)

    @jax.jit
    def run(params, tokens, positions, mask, cache):
        return nnx.merge(graphdef, params)(tokens, positions, mask=mask, cache=cache)

    return lambda tokens, positions, mask=None, cache=None: run(params, tokens, positions, mask, cache)


def jax_logits(model, tokens, mask, positions) -> np.ndarray:
    return np.asarray(jit_forward(model)(tokens, positions, mask)[0])


def random_model(cfg, seed: int = 0):
    """A ``Transformer`` with numpy-random parameters (fast: no per-shape JAX compiles).

    Norm scales ~ N(1, 0.3) and biases ~ N(0, 0.3), so neither is trivially 1 or 0.
    """
    abstract = nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(abstract)
    rng = np.random.RandomState(seed)

    def fill(path, leaf):
        name = [k.key for k in path if isinstance(k, jax.tree_util.DictKey)][-1]
        center, scale = (1.0, 0.3) if name.endswith("norm") else (0.0, 0.3 if "bias" in name else 0.1)
        return jnp.asarray((center + scale * rng.standard_normal(leaf.shape)).astype(leaf.dtype))

    return nnx.merge(graphdef, jax.tree_util.tree_map_with_path(fill, state))
