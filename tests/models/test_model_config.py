"""ModelConfig: validation, hashability, and HF config round trips checked against transformers."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import pytest
import transformers

from opd_jax.models import Llama3RopeScaling, ModelConfig, named_config, tiny_config
from opd_jax.models.config import ConfigError, MissingConfigField

LLAMA3 = Llama3RopeScaling(factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                           original_max_position_embeddings=8192)


@pytest.mark.parametrize("cfg", [
    tiny_config("llama"), tiny_config("llama", attention_bias=True, tie_word_embeddings=True),
    tiny_config("llama", rope_scaling=LLAMA3, rope_theta=500000.0), tiny_config("qwen2"),
    tiny_config("qwen3", tie_word_embeddings=True), named_config("qwen3-8b"),
], ids=lambda c: f"{c.architecture}-{c.hidden_size}-{c.tie_word_embeddings}-{c.rope_scaling is not None}")
def test_to_hf_round_trips_and_transformers_reads_the_same_values(cfg):
    hf = cfg.to_hf()
    assert ModelConfig.from_hf(json.loads(json.dumps(hf))) == cfg
    theirs = transformers.AutoConfig.for_model(**hf)
    assert theirs.model_type == cfg.architecture
    assert (theirs.hidden_size, theirs.num_hidden_layers, theirs.num_key_value_heads, theirs.head_dim) == \
        (cfg.hidden_size, cfg.num_layers, cfg.num_kv_heads, cfg.head_dim)
    assert theirs.rope_parameters["rope_theta"] == cfg.rope_theta
    assert theirs.rope_parameters["rope_type"] == ("default" if cfg.rope_scaling is None else "llama3")
    assert theirs.tie_word_embeddings == cfg.tie_word_embeddings
    # And what transformers writes back parses to the same config.
    assert ModelConfig.from_hf(theirs.to_dict()) == cfg


def test_legacy_rope_layout_and_hf_defaults():
    """A transformers-4 style config: top-level rope_theta / rope_scaling, optional fields absent."""
    legacy = {"model_type": "llama", "vocab_size": 10, "hidden_size": 32, "intermediate_size": 64,
              "num_hidden_layers": 1, "num_attention_heads": 4, "rope_theta": 500000.0,
              "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                               "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}}
    cfg = ModelConfig.from_hf(legacy)
    theirs = transformers.AutoConfig.for_model(**legacy)
    assert cfg.rope_scaling == LLAMA3 and cfg.rope_theta == theirs.rope_parameters["rope_theta"]
    assert (cfg.num_kv_heads, cfg.head_dim) == (theirs.num_key_value_heads, theirs.head_dim) == (4, 8)
    assert cfg.max_position_embeddings == theirs.max_position_embeddings
    assert cfg.rms_norm_eps == theirs.rms_norm_eps
    qwen3 = {**legacy, "model_type": "qwen3", "rope_scaling": None}
    assert ModelConfig.from_hf(qwen3).head_dim == transformers.AutoConfig.for_model(**qwen3).head_dim


def test_named_configs_match_official_sizes():
    small = named_config("qwen3-0.6b")
    assert (small.hidden_size, small.num_layers, small.num_heads, small.num_kv_heads, small.head_dim,
            small.intermediate_size, small.vocab_size, small.tie_word_embeddings, small.rope_theta,
            small.rms_norm_eps, small.max_position_embeddings) == \
        (1024, 28, 16, 8, 128, 3072, 151936, True, 1e6, 1e-6, 40960)
    assert named_config("qwen3-8b", param_dtype="bfloat16").param_dtype == "bfloat16"
    with pytest.raises(KeyError, match="qwen3-0.6b"):
        named_config("qwen9")


def test_hashable_and_static_under_jit():
    cfg = tiny_config("qwen3", rope_scaling=LLAMA3)
    assert hash(cfg) == hash(dataclasses.replace(cfg)) and {cfg: 1}[tiny_config("qwen3", rope_scaling=LLAMA3)]
    f = jax.jit(lambda x, cfg: x * cfg.hidden_size, static_argnums=1)
    assert f(jnp.ones(()), cfg) == cfg.hidden_size
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.hidden_size = 1


@pytest.mark.parametrize("change, field", [
    (dict(architecture="gpt2"), "architecture"), (dict(hidden_size=0), "hidden_size"),
    (dict(num_kv_heads=3), "num_kv_heads"), (dict(head_dim=15), "head_dim"),
    (dict(param_dtype="float16"), "param_dtype"), (dict(dtype="int8"), "dtype"),
    (dict(qk_norm=False), "qk_norm"), (dict(rms_norm_eps=0.0), "rms_norm_eps"),
    (dict(rope_scaling={"factor": 8}), "rope_scaling"),
])
def test_invalid_fields_are_named(change, field):
    with pytest.raises(ConfigError, match=field):
        tiny_config("qwen3").replace(**change)


def test_family_constraints():
    with pytest.raises(ConfigError, match="attention_bias"):
        tiny_config("qwen2", attention_bias=False)
    with pytest.raises(ConfigError, match="qk_norm"):
        tiny_config("llama", qk_norm=True)
    with pytest.raises(ConfigError, match="high_freq_factor"):
        Llama3RopeScaling(factor=8.0, low_freq_factor=4.0, high_freq_factor=1.0,
                          original_max_position_embeddings=8192)


@pytest.mark.parametrize("field", ["model_type", "vocab_size", "hidden_size", "intermediate_size",
                                   "num_hidden_layers", "num_attention_heads", "rope_theta"])
def test_from_hf_missing_field_is_named(field):
    hf = tiny_config("qwen3").to_hf()
    hf.pop(field)
    if field == "rope_theta":
        hf.pop("rope_parameters")
    with pytest.raises(MissingConfigField, match=field) as info:
        ModelConfig.from_hf(hf)
    assert isinstance(info.value, KeyError) and isinstance(info.value, ValueError)


@pytest.mark.parametrize("change, match", [
    (dict(model_type="mistral"), "mistral"), (dict(hidden_act="gelu"), "hidden_act"),
    (dict(use_sliding_window=True), "sliding_window"), (dict(mlp_bias=True), "mlp_bias"),
    (dict(rope_parameters={"rope_type": "yarn", "rope_theta": 1e4, "factor": 4.0}), "yarn"),
    (dict(rope_parameters={"rope_type": "llama3", "rope_theta": 1e4, "factor": 4.0}), "low_freq_factor"),
])
def test_from_hf_unsupported_is_refused(change, match):
    with pytest.raises(ValueError, match=match):
        ModelConfig.from_hf({**tiny_config("llama").to_hf(), **change})
