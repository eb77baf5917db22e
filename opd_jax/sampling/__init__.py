"""Jitted autoregressive sampling for on-policy distillation (see ``sample``)."""

from opd_jax.sampling.config import SamplerConfig
from opd_jax.sampling.distribution import sample_token, token_distribution
from opd_jax.sampling.sampler import Rollout, SamplingState, sample, trace_count

__all__ = ["Rollout", "SamplerConfig", "SamplingState", "sample", "sample_token", "token_distribution",
           "trace_count"]
