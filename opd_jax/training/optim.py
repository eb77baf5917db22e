"""The optimizer of an experiment: AdamW with a warm-up and decay schedule and gradient clipping,
optionally wrapped in EffOPD's parameter extrapolation (:mod:`opd_jax.training.extrapolation`)."""

import optax

from opd_jax.training.config import OptimConfig
from opd_jax.training.extrapolation import extrapolate


def learning_rate(cfg: OptimConfig, total_steps: int) -> optax.Schedule:
    """Linear warm-up to ``cfg.lr``, then constant, cosine or linear decay to 0 at ``total_steps``."""
    decay_steps = max(total_steps - cfg.warmup_steps, 1)
    if cfg.schedule == "constant":
        decay = optax.constant_schedule(cfg.lr)
    elif cfg.schedule == "cosine":
        decay = optax.cosine_decay_schedule(cfg.lr, decay_steps)
    else:
        decay = optax.linear_schedule(cfg.lr, 0.0, decay_steps)
    if cfg.warmup_steps == 0:
        return decay
    warm = optax.linear_schedule(0.0, cfg.lr, cfg.warmup_steps)
    return optax.join_schedules([warm, decay], [cfg.warmup_steps])


def make_optimizer(cfg: OptimConfig, total_steps: int) -> optax.GradientTransformation:
    parts = [optax.clip_by_global_norm(cfg.clip_norm)] if cfg.clip_norm > 0 else []
    parts.append(optax.adamw(learning_rate(cfg, total_steps), b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
                             weight_decay=cfg.weight_decay))
    tx = optax.chain(*parts)
    if cfg.extrapolate_every > 0:
        tx = extrapolate(tx, cfg.extrapolate_every, cfg.extrapolate_scale, cfg.extrapolate_rule)
    return tx
