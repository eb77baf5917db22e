"""The model configuration: one frozen, hashable dataclass for Llama, Qwen2 and Qwen3.

``ModelConfig.from_hf`` reads a Hugging Face ``config.json`` (current ``rope_parameters``
layout or the older ``rope_theta`` / ``rope_scaling`` one); ``to_hf`` writes one that
``transformers`` loads back. Fields the HF classes default are defaulted the same way;
the structural sizes must be present.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp

ARCHITECTURES = ("llama", "qwen2", "qwen3")
HF_CLASS = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM"}
PARAM_DTYPES = ("float32", "bfloat16")
COMPUTE_DTYPES = ("float32", "bfloat16", "float16")
# HF class defaults for fields a config.json may leave out.
_DEFAULT_MAX_POSITIONS = {"llama": 2048, "qwen2": 32768, "qwen3": 32768}
_REQUIRED_HF_FIELDS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                       "num_attention_heads")
NAMED_CONFIG_DIR = os.path.join(os.path.dirname(__file__), "configs")


class ConfigError(ValueError):
    """A configuration is invalid or cannot be represented."""


class MissingConfigField(ConfigError, KeyError):
    """A required field is missing from a Hugging Face config."""

    def __str__(self):  # KeyError would repr() the message
        return str(self.args[0])


@dataclasses.dataclass(frozen=True, kw_only=True)
class Llama3RopeScaling:
    """Llama-3.1 frequency-dependent RoPE scaling (HF ``rope_type: "llama3"``)."""

    factor: float
    low_freq_factor: float
    high_freq_factor: float
    original_max_position_embeddings: int

    def __post_init__(self):
        if not self.factor > 0:
            raise ConfigError(f"rope_scaling.factor must be > 0, got {self.factor}")
        if not 0 < self.low_freq_factor < self.high_freq_factor:
            raise ConfigError("rope_scaling needs 0 < low_freq_factor < high_freq_factor, got "
                              f"{self.low_freq_factor} and {self.high_freq_factor}")
        if self.original_max_position_embeddings <= 0:
            raise ConfigError("rope_scaling.original_max_position_embeddings must be > 0")


@dataclasses.dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """Sizes and options of a decoder-only transformer; hashable, so usable as a static jit argument.

    ``attention_bias`` means q/k/v projections have biases; as in HF, Llama and Qwen3 then also
    give the output projection a bias, Qwen2 never does (and always has q/k/v biases).
    ``qk_norm`` (Qwen3 only) is a per-head RMSNorm on queries and keys before RoPE.
    """

    architecture: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: Llama3RopeScaling | None = None
    max_position_embeddings: int = 2048
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    qk_norm: bool = False
    param_dtype: str = "float32"
    dtype: str = "float32"
    remat: bool = False
    # Low-rank adapters (opd_jax.models.lora): rank 0 = none; scale lora_alpha / lora_rank, or
    # lora_alpha / sqrt(lora_rank) with lora_rslora (rank-stabilized LoRA, PEFT's use_rslora)
    lora_rank: int = 0
    lora_alpha: float = 32.0
    lora_targets: tuple[str, ...] = ()
    lora_rslora: bool = False

    def __post_init__(self):
        if self.architecture not in ARCHITECTURES:
            raise ConfigError(f"unknown architecture {self.architecture!r}; supported: {ARCHITECTURES}")
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads",
                     "num_kv_heads", "head_dim", "max_position_embeddings"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"{name} must be a positive int, got {value!r}")
        if self.num_heads % self.num_kv_heads:
            raise ConfigError(f"num_heads ({self.num_heads}) must be a multiple of num_kv_heads "
                              f"({self.num_kv_heads})")
        if self.head_dim % 2:
            raise ConfigError(f"head_dim must be even for RoPE, got {self.head_dim}")
        if not self.rms_norm_eps > 0 or not self.rope_theta > 0:
            raise ConfigError(f"rms_norm_eps and rope_theta must be > 0, got {self.rms_norm_eps}, "
                              f"{self.rope_theta}")
        if self.rope_scaling is not None and not isinstance(self.rope_scaling, Llama3RopeScaling):
            raise ConfigError(f"rope_scaling must be None or Llama3RopeScaling, got {self.rope_scaling!r}")
        if self.param_dtype not in PARAM_DTYPES:
            raise ConfigError(f"param_dtype must be one of {PARAM_DTYPES}, got {self.param_dtype!r}")
        if self.dtype not in COMPUTE_DTYPES:
            raise ConfigError(f"dtype must be one of {COMPUTE_DTYPES}, got {self.dtype!r}")
        _check_lora(self)
        # Each family's HF module layout is fixed; refuse what save_pretrained could not express.
        if self.qk_norm != (self.architecture == "qwen3"):
            raise ConfigError(f"qk_norm={self.qk_norm} is not possible for {self.architecture!r} "
                              "(qwen3 always has q/k norms, llama and qwen2 never)")
        if self.architecture == "qwen2" and not self.attention_bias:
            raise ConfigError("qwen2 always has q/k/v biases: attention_bias must be True")

    @property
    def out_proj_bias(self) -> bool:
        """Whether the attention output projection has a bias (HF semantics per family)."""
        return self.attention_bias and self.architecture != "qwen2"

    @property
    def param_jnp_dtype(self):
        return jnp.dtype(self.param_dtype)

    @property
    def compute_jnp_dtype(self):
        return jnp.dtype(self.dtype)

    def replace(self, **changes) -> ModelConfig:
        return dataclasses.replace(self, **changes)

    def decode_macs(self, cache_len: int) -> tuple[int, int]:
        """Multiply-adds of one token's cached forward: ``(weight products, attention)``.

        The weight products are every layer's projections and the output head; attention is
        scores and weighted values over ``cache_len`` cache slots in every layer (norms, RoPE and
        softmax are left out). The ratio says how much a shorter cache can save a decode step.
        """
        D, L = self.hidden_size, self.num_layers
        q, kv = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        weights = L * (D * (q + 2 * kv) + q * D + 3 * D * self.intermediate_size) + D * self.vocab_size
        return weights, L * 2 * q * cache_len

    # ------------------------------------------------------------------ HF interop
    @classmethod
    def from_hf(cls, config: Mapping[str, Any] | str | os.PathLike, **overrides) -> ModelConfig:
        """Build from an HF config dict, a ``config.json`` path, or a directory holding one.

        ``overrides`` set fields HF does not know (``param_dtype``, ``dtype``, ``remat``).
        """
        if not isinstance(config, Mapping):
            path = os.fspath(config)
            if os.path.isdir(path):
                path = os.path.join(path, "config.json")
            with open(path) as f:
                config = json.load(f)
        c = dict(config)
        if "model_type" not in c:
            raise MissingConfigField("HF config has no 'model_type' field")
        arch = c["model_type"]
        if arch not in ARCHITECTURES:
            raise ConfigError(f"unknown architecture model_type={arch!r}; supported: {ARCHITECTURES}")
        for name in _REQUIRED_HF_FIELDS:
            if c.get(name) is None:
                raise MissingConfigField(f"{arch} config is missing required field {name!r}")
        _reject_unsupported(arch, c)
        heads = c["num_attention_heads"]
        head_dim = c.get("head_dim")
        if head_dim is None:  # HF: Qwen3Config defaults to 128, the others derive it
            head_dim = 128 if arch == "qwen3" else c["hidden_size"] // heads
        theta, scaling = _rope_from_hf(c)
        fields = dict(
            architecture=arch,
            vocab_size=c["vocab_size"],
            hidden_size=c["hidden_size"],
            intermediate_size=c["intermediate_size"],
            num_layers=c["num_hidden_layers"],
            num_heads=heads,
            num_kv_heads=c.get("num_key_value_heads") or heads,
            head_dim=head_dim,
            rms_norm_eps=float(c.get("rms_norm_eps", 1e-6)),
            rope_theta=theta,
            rope_scaling=scaling,
            max_position_embeddings=c.get("max_position_embeddings", _DEFAULT_MAX_POSITIONS[arch]),
            tie_word_embeddings=bool(c.get("tie_word_embeddings", False)),
            attention_bias=True if arch == "qwen2" else bool(c.get("attention_bias", False)),
            qk_norm=arch == "qwen3",
        )
        fields.update(overrides)
        return cls(**fields)

    def to_hf(self) -> dict[str, Any]:
        """An HF ``config.json`` dict (current layout plus the legacy rope keys for older readers)."""
        rope = {"rope_type": "default", "rope_theta": self.rope_theta}
        legacy_scaling = None
        if self.rope_scaling is not None:
            legacy_scaling = {"rope_type": "llama3", **dataclasses.asdict(self.rope_scaling)}
            rope.update(legacy_scaling)
        out = {
            "architectures": [HF_CLASS[self.architecture]],
            "model_type": self.architecture,
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "rms_norm_eps": self.rms_norm_eps,
            "rope_parameters": rope,
            "rope_theta": self.rope_theta,
            "rope_scaling": legacy_scaling,
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings,
            "attention_dropout": 0.0,
            "dtype": self.param_dtype,
        }
        if self.architecture != "qwen2":  # Qwen2Config has no attention_bias field
            out["attention_bias"] = self.attention_bias
        if self.architecture == "llama":
            out["mlp_bias"] = False
        else:
            out["use_sliding_window"] = False
        return out


LORA_TARGETS = ("q", "k", "v", "o", "gate", "up", "down")


def _check_lora(cfg: ModelConfig) -> None:
    rank, targets = cfg.lora_rank, cfg.lora_targets
    if not isinstance(rank, int) or isinstance(rank, bool) or rank < 0:
        raise ConfigError(f"lora_rank must be an int >= 0 (0: no adapters), got {rank!r}")
    if not (isinstance(cfg.lora_alpha, int | float) and cfg.lora_alpha > 0):
        raise ConfigError(f"lora_alpha must be > 0, got {cfg.lora_alpha!r}")
    if not isinstance(targets, tuple) or len(set(targets)) != len(targets) or not set(targets) <= set(LORA_TARGETS):
        raise ConfigError(f"lora_targets must be distinct names among {LORA_TARGETS}, got {targets!r}")
    if not isinstance(cfg.lora_rslora, bool):
        raise ConfigError(f"lora_rslora must be True or False, got {cfg.lora_rslora!r}")
    if bool(rank) != bool(targets):
        raise ConfigError(f"lora_rank={rank} with lora_targets={targets!r}: adapters need both a rank > 0 "
                          "and at least one target (or neither)")


def _reject_unsupported(arch: str, c: Mapping[str, Any]) -> None:
    """Raise for HF options this implementation does not compute, instead of silently ignoring them."""
    if c.get("hidden_act", "silu") != "silu":
        raise ConfigError(f"hidden_act={c['hidden_act']!r} is not supported (only 'silu')")
    if c.get("mlp_bias"):
        raise ConfigError("mlp_bias=True is not supported")
    if c.get("use_sliding_window"):
        raise ConfigError("use_sliding_window=True is not supported")
    if c.get("partial_rotary_factor", 1.0) != 1.0:
        raise ConfigError("partial_rotary_factor != 1 is not supported")


def _rope_from_hf(c: Mapping[str, Any]) -> tuple[float, Llama3RopeScaling | None]:
    """(rope_theta, scaling) from ``rope_parameters`` or the legacy ``rope_theta``/``rope_scaling``."""
    params = c.get("rope_parameters")
    if params is None:
        params = dict(c.get("rope_scaling") or {})
        if "rope_theta" in c:
            params.setdefault("rope_theta", c["rope_theta"])
    if "rope_theta" not in params:
        raise MissingConfigField("config is missing required field 'rope_theta' "
                                 "(neither in rope_parameters nor at top level)")
    if params.get("partial_rotary_factor", 1.0) != 1.0:
        raise ConfigError("partial_rotary_factor != 1 is not supported")
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type == "default":
        return float(params["rope_theta"]), None
    if rope_type != "llama3":
        raise ConfigError(f"rope_type={rope_type!r} is not supported (only 'default' and 'llama3')")
    try:
        scaling = Llama3RopeScaling(
            factor=float(params["factor"]),
            low_freq_factor=float(params["low_freq_factor"]),
            high_freq_factor=float(params["high_freq_factor"]),
            original_max_position_embeddings=int(params.get(
                "original_max_position_embeddings", c.get("max_position_embeddings", 0))),
        )
    except KeyError as e:
        raise MissingConfigField(f"llama3 rope scaling is missing field {e.args[0]!r}") from None
    return float(params["rope_theta"]), scaling


def named_config(name: str, **overrides) -> ModelConfig:
    """A configuration shipped in ``opd_jax/models/configs`` (e.g. ``"qwen3-0.6b"``)."""
    path = os.path.join(NAMED_CONFIG_DIR, f"{name}.json")
    if not os.path.exists(path):
        known = sorted(f[:-5] for f in os.listdir(NAMED_CONFIG_DIR) if f.endswith(".json"))
        raise KeyError(f"no named config {name!r}; known: {known}")
    return ModelConfig.from_hf(path, **overrides)


def tiny_config(architecture: str = "qwen3", **overrides) -> ModelConfig:
    """A small test configuration with GQA and head_dim != hidden/heads (overridable)."""
    fields = dict(architecture=architecture, vocab_size=97, hidden_size=48, intermediate_size=80,
                  num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16, rope_theta=10000.0,
                  max_position_embeddings=128, attention_bias=architecture == "qwen2",
                  qk_norm=architecture == "qwen3")
    fields.update(overrides)
    return ModelConfig(**fields)
