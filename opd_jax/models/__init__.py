"""Decoder-only transformers (Llama, Qwen2, Qwen3) and Hugging Face checkpoint interop."""

from opd_jax.models.cache import KVCache, init_cache
from opd_jax.models.config import Llama3RopeScaling, ModelConfig, named_config, tiny_config
from opd_jax.models.hf_io import CheckpointError, from_pretrained, load_tokenizer, save_pretrained
from opd_jax.models.transformer import Transformer, count_params

__all__ = [
    "CheckpointError", "KVCache", "Llama3RopeScaling", "ModelConfig", "Transformer", "count_params",
    "from_pretrained", "init_cache", "load_tokenizer", "named_config", "save_pretrained", "tiny_config",
]
