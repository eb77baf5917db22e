"""Real Qwen3 configurations, abstractly: parameter counts and HF tensor layout vs PyTorch on `meta`."""

import jax
import pytest
import torch
import transformers
from flax import nnx

from opd_jax.models import Transformer, count_params, named_config
from opd_jax.models.config import NAMED_CONFIG_DIR
from opd_jax.models.hf_layout import hf_tensor_specs


@pytest.mark.parametrize("name", ["qwen3-0.6b", "qwen3-1.7b", "qwen3-8b"])
def test_eval_shape_parameter_count_matches_torch_meta_model(name):
    cfg = named_config(name)
    abstract = nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0)))
    leaves = jax.tree.leaves(nnx.state(abstract, nnx.Param))
    assert all(isinstance(x, jax.ShapeDtypeStruct) for x in leaves)  # nothing allocated

    hf_cfg = transformers.AutoConfig.from_pretrained(f"{NAMED_CONFIG_DIR}/{name}.json")
    with torch.device("meta"):  # shapes only, no memory
        reference = transformers.AutoModelForCausalLM.from_config(hf_cfg)
    assert count_params(abstract) == sum(p.numel() for p in reference.parameters())

    # The name/shape table used for loading and saving is exactly PyTorch's state dict.
    theirs = {k: tuple(v.shape) for k, v in reference.state_dict().items()}
    if cfg.tie_word_embeddings:
        theirs.pop("lm_head.weight")  # tied: one tensor, saved under the embedding's name
    assert {s.hf_name: s.hf_shape for s in hf_tensor_specs(cfg)} == theirs


@pytest.mark.parametrize("architecture", ["qwen3", "llama", "qwen2"])
@pytest.mark.parametrize("tied", [True, False])
def test_decode_macs_match_torch_flop_counter(architecture, tied):
    """``ModelConfig.decode_macs`` against PyTorch's FLOP counter on the reference model's one-token
    step after ``S - 1`` cached tokens (eager attention: every product is a counted matmul), at
    two cache lengths so the attention part and the weight part are each checked."""
    from torch.utils.flop_counter import FlopCounterMode

    from opd_jax.models import tiny_config

    cfg = tiny_config(architecture, tie_word_embeddings=tied)
    hf_cfg = transformers.AutoConfig.for_model(**cfg.to_hf())
    torch.manual_seed(0)
    reference = transformers.AutoModelForCausalLM.from_config(hf_cfg, attn_implementation="eager").eval()
    counted = {}
    for S in (9, 25):
        with torch.no_grad():
            cache = reference(torch.zeros((1, S - 1), dtype=torch.long), use_cache=True).past_key_values
            with FlopCounterMode(display=False) as counter:
                reference(torch.zeros((1, 1), dtype=torch.long), past_key_values=cache, use_cache=True)
        counted[S] = counter.get_total_flops() // 2  # a multiply-add is two FLOPs
        weights, attention = cfg.decode_macs(S)
        assert weights + attention == counted[S], (S, weights, attention, counted[S])
    assert cfg.decode_macs(25)[1] - cfg.decode_macs(9)[1] == counted[25] - counted[9]
