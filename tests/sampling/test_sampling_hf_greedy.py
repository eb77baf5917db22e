"""Oracle: greedy decoding equals ``transformers``' ``generate`` (PyTorch, greedy) token for token."""

import jax
import numpy as np
import pytest
import torch
import transformers
from flax import nnx

from hf_reference import SIZES, hf_model
from sampling_helpers import left_padded
from opd_jax.models import from_pretrained
from opd_jax.sampling import SamplerConfig, sample

NEW, PAD = 16, 0


def _generate(ref, tokens, mask, eos):
    cfg = transformers.GenerationConfig(do_sample=False, max_new_tokens=NEW, pad_token_id=PAD, eos_token_id=eos)
    with torch.no_grad():
        out = ref.generate(input_ids=torch.tensor(tokens, dtype=torch.long),
                           attention_mask=torch.tensor(mask, dtype=torch.long), generation_config=cfg)
    new = out[:, tokens.shape[1]:].numpy()
    return np.pad(new, ((0, 0), (0, NEW - new.shape[1])), constant_values=PAD)  # all rows may stop early


@pytest.mark.parametrize("arch, overrides", [("qwen3", dict(tie_word_embeddings=True)),
                                             ("llama", dict(attention_bias=True))])
def test_greedy_equals_transformers_generate(arch, overrides, tmp_path):
    ref = hf_model(arch, **overrides)
    ref.save_pretrained(tmp_path)
    graphdef, params = nnx.split(from_pretrained(tmp_path), nnx.Param)
    tokens, mask = left_padded(SIZES["vocab_size"], (10, 6, 1, 8), 10, seed=2)

    free = _generate(ref, tokens, mask, eos=None)
    eos = int(free[0, 4])  # a token greedy decoding emits: it must end row 0 at step 4 (or earlier)
    expected = _generate(ref, tokens, mask, eos=eos)
    cfg = SamplerConfig(max_new_tokens=NEW, temperature=0.0, eos_ids=(eos,), pad_id=PAD, new_token_buckets=(NEW,))
    r = sample(graphdef, params, tokens, mask, jax.random.key(0), cfg=cfg)
    got = np.asarray(r.tokens)[:, r.prompt_len:]
    np.testing.assert_array_equal(got, expected)
    ended = (expected == eos).cumsum(axis=1)  # HF pads after the first EOS; our mask ends there
    np.testing.assert_array_equal(np.asarray(r.completion_mask)[:, r.prompt_len:], (ended - (expected == eos)) == 0)
    assert np.asarray(r.finished)[0]
