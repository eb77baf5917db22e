"""Oracle: the PyTorch models of ``transformers`` on the same weights and the same padded batch."""

import json
import os

import numpy as np
import pytest
import torch
import transformers

from hf_reference import LLAMA3_ROPE, SIZES, hf_model, jax_logits, padded_batch, torch_logits
from opd_jax.models import ModelConfig, from_pretrained, save_pretrained
from opd_jax.models import ops

# Each case: (architecture, HF config overrides). Together they cover GQA, tied and untied
# embeddings, head_dim != hidden / heads, q/k/v (and Llama's o) biases, Llama-3 rope scaling.
CASES = {
    "llama-llama3rope-untied": ("llama", dict(rope_parameters=LLAMA3_ROPE, tie_word_embeddings=False)),
    "llama-bias-tied": ("llama", dict(attention_bias=True, tie_word_embeddings=True)),
    "qwen2-untied": ("qwen2", dict(tie_word_embeddings=False)),
    "qwen3-tied": ("qwen3", dict(tie_word_embeddings=True, rope_parameters={"rope_type": "default",
                                                                             "rope_theta": 1e6})),
    "qwen3-untied-mha": ("qwen3", dict(tie_word_embeddings=False, num_key_value_heads=4)),
}
LENGTHS, TOTAL = (12, 9, 4), 12  # left padding of 0, 3 and 8 tokens
F32_TOL = 1e-4


@pytest.mark.parametrize("case", sorted(CASES))
def test_f32_logits_match_torch_both_directions(case, tmp_path):
    arch, overrides = CASES[case]
    ref_model = hf_model(arch, **overrides)
    ref_model.save_pretrained(tmp_path / "torch")
    tokens, mask, positions = padded_batch(SIZES["vocab_size"], LENGTHS, TOTAL)
    ref = torch_logits(ref_model, tokens, mask, positions)

    ours = from_pretrained(tmp_path / "torch")
    assert ours.cfg.architecture == arch
    got = jax_logits(ours, tokens, mask, positions)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got[mask], ref[mask], atol=F32_TOL, rtol=0)
    assert np.isfinite(got).all()

    # Our writer -> transformers' reader gives the same model back.
    save_pretrained(ours, tmp_path / "ours")
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "ours", attn_implementation="eager")
    assert type(reloaded) is type(ref_model)
    back = torch_logits(reloaded.eval(), tokens, mask, positions)
    np.testing.assert_allclose(back[mask], ref[mask], atol=F32_TOL, rtol=0)


def test_llama3_scaling_changes_frequencies():
    """Guards the parity case above: its llama3 config hits all three regimes of the scaling
    (high frequencies kept, low ones divided by ``factor``, the band between blended)."""
    hf_cfg = hf_model("llama", rope_parameters=LLAMA3_ROPE).config.to_dict()
    cfg = ModelConfig.from_hf(hf_cfg)
    plain = ops.rope_inv_freq(cfg.replace(rope_scaling=None))
    ratio = ops.rope_inv_freq(cfg) / plain
    factor = LLAMA3_ROPE["factor"]
    assert (ratio == 1).any() and np.isclose(ratio, 1 / factor).any()
    assert ((ratio < 1) & (ratio > 1 / factor) & ~np.isclose(ratio, 1 / factor)).any()


def test_bfloat16_load_within_torch_bf16_error(tmp_path):
    """A bfloat16 checkpoint loaded with bf16 params and bf16 compute.

    Tolerance: against the float32 forward of the same (bf16-rounded) weights, our max error must
    be at most 2x PyTorch's own bfloat16 forward error plus one bf16 ulp (2^-8 relative) of the
    largest logit. Both implementations round activations to 8-bit mantissas at similar points, so
    their errors are of the same size; the factor 2 and the ulp absorb differing rounding points
    (we keep RoPE, softmax and the logits in float32, PyTorch rounds them to bf16).
    """
    ref_model = hf_model("qwen3", tie_word_embeddings=False).to(torch.bfloat16)
    ref_model.save_pretrained(tmp_path)
    tokens, mask, positions = padded_batch(SIZES["vocab_size"], LENGTHS, TOTAL)
    torch_bf16 = torch_logits(ref_model, tokens, mask, positions)
    exact = torch_logits(ref_model.float(), tokens, mask, positions)

    ours = from_pretrained(tmp_path, param_dtype="bfloat16")
    assert ours.cfg.dtype == "bfloat16"
    got = jax_logits(ours, tokens, mask, positions)
    assert got.dtype == np.float32
    ours_err = np.abs(got - exact)[mask].max()
    torch_err = np.abs(torch_bf16 - exact)[mask].max()
    assert ours_err <= 2 * torch_err + 2.0**-8 * np.abs(exact[mask]).max(), (ours_err, torch_err)

    # Saving the bf16 model writes the very same bf16 tensors back.
    save_pretrained(ours, tmp_path / "ours")
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "ours")
    assert back.dtype == torch.bfloat16
    original = ref_model.to(torch.bfloat16).state_dict()
    for name, tensor in back.state_dict().items():
        assert torch.equal(tensor, original[name]), name


def test_sharded_checkpoints_both_directions(tmp_path):
    """``model.safetensors.index.json`` checkpoints: torch-written read by us, ours read by torch."""
    ref_model = hf_model("qwen2")
    ref_model.save_pretrained(tmp_path / "torch", max_shard_size="20KB")
    assert os.path.exists(tmp_path / "torch" / "model.safetensors.index.json")
    tokens, mask, positions = padded_batch(SIZES["vocab_size"], LENGTHS, TOTAL)
    ref = torch_logits(ref_model, tokens, mask, positions)

    ours = from_pretrained(tmp_path / "torch")
    np.testing.assert_allclose(jax_logits(ours, tokens, mask, positions)[mask], ref[mask], atol=F32_TOL)

    save_pretrained(ours, tmp_path / "ours", max_shard_size=20_000)
    with open(tmp_path / "ours" / "model.safetensors.index.json") as f:
        assert len(set(json.load(f)["weight_map"].values())) > 1
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "ours").eval()
    np.testing.assert_allclose(torch_logits(back, tokens, mask, positions)[mask], ref[mask], atol=F32_TOL)
    again = from_pretrained(tmp_path / "ours")  # and our own sharded output reads back
    np.testing.assert_allclose(jax_logits(again, tokens, mask, positions)[mask], ref[mask], atol=F32_TOL)


def test_save_keeps_source_token_ids(tmp_path):
    ref_model = hf_model("qwen3", bos_token_id=3, eos_token_id=5, pad_token_id=7)
    ref_model.save_pretrained(tmp_path / "torch")
    save_pretrained(from_pretrained(tmp_path / "torch"), tmp_path / "ours")
    back = transformers.AutoConfig.from_pretrained(tmp_path / "ours")
    assert (back.bos_token_id, back.eos_token_id, back.pad_token_id) == (3, 5, 7)
