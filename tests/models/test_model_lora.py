"""Low-rank adapters: PEFT's LoRA on ``transformers``' PyTorch models is the oracle of the
adapted forward and of the adapter files; a fresh adapter changes nothing; the cached decoder,
the merged export and the sampler compute what the adapted forward computes."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import peft
import pytest
import transformers
from flax import nnx

from hf_reference import SIZES, hf_model, jax_logits, padded_batch, torch_logits
from opd_jax.models import Transformer, from_pretrained, init_cache, lora, save_pretrained, tiny_config
from opd_jax.models.config import ConfigError
from opd_jax.models.lora_io import CONFIG_FILE, WEIGHTS_FILE, load_adapter, save_adapter
from opd_jax.sampling import SamplerConfig, sample
from opd_jax.sharding import logical_to_mesh, make_mesh

LENGTHS, TOTAL = (12, 9, 4), 12
TOL = 2e-5


def perturbed(model, scale=0.3, seed=7):
    """``model`` with random B factors (a fresh adapter's are zero, so its A factors would not show)."""
    for i, name in enumerate(model.cfg.lora_targets):
        b = getattr(model.layers, lora.factor_names(name)[1])
        b.set_value(scale * jax.random.normal(jax.random.key(seed + i), b[...].shape, b[...].dtype))
    return model


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    path = tmp_path_factory.mktemp("base")
    ref = hf_model("qwen3", tie_word_embeddings=False)
    ref.save_pretrained(path)
    return path, ref


def test_a_fresh_adapter_changes_nothing_and_sits_where_its_weight_does():
    mesh = make_mesh(data=2, fsdp=2, tensor=2)
    model = Transformer(tiny_config(), rngs=nnx.Rngs(0))
    tokens, mask, positions = padded_batch(97, LENGTHS, TOTAL)
    np.testing.assert_array_equal(jax_logits(lora.attach(model, rank=4, alpha=8.0, seed=1), tokens, mask, positions),
                                  jax_logits(model, tokens, mask, positions))
    adapted = lora.attach(model, rank=4, alpha=8.0, seed=1, mesh=mesh)
    layers = adapted.layers
    assert layers.lora_a_q[...].shape == (2, 48, 4) and layers.lora_b_q[...].shape == (2, 4, 4, 16)
    assert layers.lora_a_o[...].shape == (2, 4, 16, 4) and layers.lora_b_o[...].shape == (2, 4, 48)
    assert not np.any(np.asarray(layers.lora_b_down[...])) and np.std(np.asarray(layers.lora_a_down[...])) > 0
    # A's input axes shard like the weight's: q's embed over fsdp, o's heads over tensor; rank replicated
    assert layers.lora_a_q[...].sharding.spec == logical_to_mesh(("layers", "embed", "lora_rank"))
    assert layers.lora_b_q[...].sharding.spec == logical_to_mesh(("layers", "lora_rank", "heads", "head_dim"))
    assert layers.lora_a_o[...].sharding.spec == logical_to_mesh(("layers", "heads", "head_dim", "lora_rank"))
    assert layers.q[...] is model.layers.q[...]  # the base weights are shared, not copied
    bf16 = lora.attach(Transformer(tiny_config(param_dtype="bfloat16", dtype="bfloat16"), rngs=nnx.Rngs(0)),
                       rank=2, alpha=2.0)
    assert bf16.layers.lora_a_v[...].dtype == jnp.float32 and bf16.layers.v[...].dtype == jnp.bfloat16
    with pytest.raises(ValueError, match="already has adapters"):
        lora.attach(adapted, rank=2, alpha=2.0)


@pytest.mark.parametrize("arch,targets,rslora", [("qwen3", lora.TARGETS, False), ("qwen2", ("q", "v"), False),
                                                 ("llama", ("o", "gate", "down"), False),
                                                 ("qwen3", ("k", "up"), True)])  # rsLoRA: alpha / sqrt(r)
def test_the_adapted_forward_and_its_files_match_peft(arch, targets, rslora, tmp_path):
    ref = hf_model(arch, tie_word_embeddings=False)
    ref.save_pretrained(tmp_path / "base")
    ours = perturbed(lora.attach(from_pretrained(tmp_path / "base"), rank=4, alpha=6.0, targets=targets, seed=2,
                                 rslora=rslora))
    assert lora.scale(ours.cfg) == (3.0 if rslora else 1.5)
    save_adapter(ours, tmp_path / "adapter", base_model=str(tmp_path / "base"))
    tokens, mask, positions = padded_batch(SIZES["vocab_size"], LENGTHS, TOTAL)
    theirs = torch_logits(peft.PeftModel.from_pretrained(ref, tmp_path / "adapter").eval(), tokens, mask, positions)
    mine = jax_logits(ours, tokens, mask, positions)
    np.testing.assert_allclose(mine[mask], theirs[mask], atol=TOL, rtol=0)
    plain = jax_logits(from_pretrained(tmp_path / "base"), tokens, mask, positions)
    assert np.abs(mine - plain)[mask].max() > 0.1  # the adapters do change the model
    back = load_adapter(from_pretrained(tmp_path / "base"), tmp_path / "adapter")
    assert back.cfg.lora_targets == tuple(t for t in lora.TARGETS if t in targets) and back.cfg.lora_rslora == rslora
    np.testing.assert_array_equal(jax_logits(back, tokens, mask, positions), mine)


def test_merged_export_and_cached_decoder_equal_the_adapted_forward(base, tmp_path):
    path, _ = base
    ours = perturbed(lora.attach(from_pretrained(path), rank=4, alpha=4.0, seed=3))
    tokens, mask, positions = padded_batch(SIZES["vocab_size"], LENGTHS, TOTAL)
    want = jax_logits(ours, tokens, mask, positions)
    save_pretrained(ours, tmp_path / "merged")
    with open(tmp_path / "merged" / "config.json") as f:
        assert "lora" not in f.read()
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "merged", attn_implementation="eager")
    np.testing.assert_allclose(torch_logits(reloaded.eval(), tokens, mask, positions)[mask], want[mask],
                               atol=TOL, rtol=0)
    # one token at a time through the cache (the decoder folds the adapters into its weights)
    cache = init_cache(ours.cfg, len(LENGTHS), TOTAL)
    steps = []
    for t in range(TOTAL):
        out, cache = ours(jnp.asarray(tokens[:, t:t + 1]), jnp.asarray(positions[:, t:t + 1]),
                          mask=jnp.asarray(mask[:, t:t + 1]), cache=cache)
        steps.append(np.asarray(out[:, 0]))
    np.testing.assert_allclose(np.stack(steps, 1)[mask], want[mask], atol=TOL, rtol=0)


def test_the_sampler_draws_with_the_adapted_model(base):
    path, _ = base
    ours = perturbed(lora.attach(from_pretrained(path), rank=4, alpha=4.0, seed=4))
    tokens, mask, _ = padded_batch(SIZES["vocab_size"], (6, 3), 6)
    graphdef, params = nnx.split(ours, nnx.Param)
    roll = sample(graphdef, params, tokens, mask, jax.random.key(0),
                  cfg=SamplerConfig(max_new_tokens=6, temperature=1.0, pad_id=0))
    seq, full_mask = np.asarray(roll.tokens), np.asarray(roll.mask)
    positions = np.maximum(np.cumsum(full_mask, 1) - 1, 0).astype(np.int32)
    logits = jax_logits(ours, seq, full_mask, positions)
    logp = jax.nn.log_softmax(logits[:, :-1], axis=-1)
    want = np.take_along_axis(np.asarray(logp), seq[:, 1:, None], axis=-1)[..., 0]
    completion = np.asarray(roll.completion_mask)[:, 1:]
    np.testing.assert_allclose(np.asarray(roll.logp)[:, 1:][completion], want[completion], atol=1e-4, rtol=0)


def test_bad_adapter_settings_and_files_are_refused(base, tmp_path):
    with pytest.raises(ConfigError, match="lora_rank"):
        tiny_config(lora_rank=-1, lora_targets=("q",))
    with pytest.raises(ConfigError, match="lora_targets"):
        tiny_config(lora_rank=2, lora_targets=("q", "qkv"))
    with pytest.raises(ConfigError, match="need both"):
        tiny_config(lora_rank=2)
    with pytest.raises(ValueError, match="no adapters"):
        save_adapter(Transformer(tiny_config(), rngs=nnx.Rngs(0)), tmp_path / "none")
    path, _ = base
    ours = lora.attach(from_pretrained(path), rank=2, alpha=2.0, targets=("q",))
    save_adapter(ours, tmp_path / "a")
    config = json.loads((tmp_path / "a" / CONFIG_FILE).read_text())
    for change, match in [({"use_dora": True}, "plain LoRA"), ({"target_modules": ["q_proj", "lm_head"]},
                                                               "lm_head")]:
        (tmp_path / "a" / CONFIG_FILE).write_text(json.dumps({**config, **change}))
        with pytest.raises(ValueError, match=match):
            load_adapter(from_pretrained(path), tmp_path / "a")
    (tmp_path / "a" / CONFIG_FILE).write_text(json.dumps({**config, "target_modules": ["q_proj", "k_proj"]}))
    with pytest.raises(ValueError, match="no tensor"):
        load_adapter(from_pretrained(path), tmp_path / "a")
    (tmp_path / "a" / CONFIG_FILE).write_text(json.dumps({**config, "r": 3}))
    with pytest.raises(ValueError, match="does not fit"):
        load_adapter(from_pretrained(path), tmp_path / "a")
    assert sorted(os.listdir(tmp_path / "a")) == [CONFIG_FILE, WEIGHTS_FILE]
