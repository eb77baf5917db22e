"""Jitted autoregressive sampling for on-policy distillation.

    graphdef, params = nnx.split(student, nnx.Param)
    cfg = SamplerConfig(max_new_tokens=512, eos_ids=(eos,), pad_id=pad, num_samples=4)
    rollout = sample(graphdef, params, prompts, prompt_mask, key, cfg=cfg, row_ids=global_rows)

``rollout.logp`` is the behaviour log-probability of every completion token; with the default
config (temperature 1, no top-k/top-p/min-p) it equals the student's own log-softmax, so the
importance ratio is exactly 1 before the first update. ``SamplerConfig`` explains how truncation
changes that ratio; ``token_distribution`` rebuilds the behaviour distribution from logits.
A model that does not change between calls (an evaluated checkpoint, a teacher) can be laid out
for sampling once, ``graphdef, params = freeze(graphdef, params)``: no weight copies per call.
``speculative_sample(drafter, target, ...)`` draws from a target with a drafter proposing tokens
(speculative sampling): the target's distribution, with acceptance counts (Draft-OPD's rollouts).
"""

from opd_jax.sampling.config import SamplerConfig
from opd_jax.sampling.distribution import sample_token, token_distribution
from opd_jax.sampling.frozen import FrozenDef, freeze
from opd_jax.sampling.rollout import Rollout, SamplingState
from opd_jax.sampling.sampler import sample, trace_count
from opd_jax.sampling.speculative import DraftStats, speculative_sample

__all__ = ["DraftStats", "FrozenDef", "Rollout", "SamplerConfig", "SamplingState", "freeze", "sample", "sample_token",
           "speculative_sample", "token_distribution", "trace_count"]
