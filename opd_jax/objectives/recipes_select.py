"""Builders of the recipes that choose *where* the loss acts: token masks, sequence filters,
per-token weights and per-zone divergences computed from batch statistics or the step.

REOPOLD, TIP, TA-OPD, FiRe-OPD, SEAD, POPD / TOPD, TCOD and DASD's sequence selection. Their
selections are stop-gradient and most use statistics of the whole batch (quantiles, min/max,
medians) or of a whole sequence (the POPD / TOPD horizon), so they are not token-local and take
the two-pass path of the train step; SEAD with fixed thresholds is token-local.
"""

import math

import jax
import jax.numpy as jnp

from opd_jax.objectives import advantages as A
from opd_jax.objectives import divergences as D
from opd_jax.objectives import selection as S
from opd_jax.objectives import topk as K
from opd_jax.objectives.base import (TEACHER, TEACHER_LOGITS, Objective, feature, stateless,
                                     token_objective)
from opd_jax.objectives.configs import REOPOLDConfig, TIPConfig
from opd_jax.objectives.configs_2026 import (DASDConfig, FiReOPDConfig, HorizonOPDConfig, SEADConfig,
                                             TAOPDConfig, TCODConfig)
from opd_jax.objectives.recipe_parts import pg_loss, sampled_features, tinker_advantage
from opd_jax.objectives.reductions import masked_mean, token_mean, weighted_mean

sg = jax.lax.stop_gradient


def reopold(c: REOPOLDConfig, dense: bool) -> Objective:
    floor = A.mixture_clip_floor(c.lam, reading=c.floor_reading)
    feats = sampled_features(c.temperature, dense) | {
        "student_entropy": feature(D.token_entropy, "logits", temperature=c.temperature)}

    def apply(ctx):
        m = ctx.mask.astype(bool)
        reward = A.opd_advantage(ctx.teacher_logp, ctx.logp, where=m)  # R_t, learner log-prob
        adv = A.clip_below(reward, floor, where=m) if c.clip else reward
        if c.switch_step is not None:
            keep = S.reopold_select(reward, ctx["student_entropy"], m, floor=floor,
                                    top_frac=c.top_frac, step=ctx.step,
                                    switch_step=c.switch_step, entropy_select=c.entropy_select)
        elif c.entropy_select:
            keep = S.quantile_select(ctx["student_entropy"], m, top_frac=c.top_frac)
        else:
            keep = m.astype(jnp.float32)
        metrics = {"reopold/kept_frac": masked_mean(keep, m),
                   "reopold/clipped_frac": masked_mean((reward < floor).astype(jnp.float32), m)}
        return {"pg": weighted_mean(pg_loss(ctx, adv, c), keep)}, metrics
    return stateless(apply, feats)


def tip(c: TIPConfig, dense: bool) -> Objective:
    t = c.temperature
    feats = {"reverse_kl": feature(D.reverse_kl, "logits", TEACHER_LOGITS, temperature=t),
             "jsd": feature(D.generalized_jsd, "logits", TEACHER_LOGITS, beta=0.5, temperature=t)}
    if c.normalize == "minmax":
        feats["student_entropy"] = feature(D.token_entropy, "logits", temperature=t)
    else:  # h / ln V: V is the logits' last axis, known inside the feature
        feats["student_entropy_norm"] = feature(D.normalized_entropy, "logits", temperature=t)

    def apply(ctx):
        m = ctx.mask.astype(bool)
        if c.normalize == "minmax":
            hn = S.minmax_normalize(ctx["student_entropy"], m)
            dn = S.minmax_normalize(ctx["jsd"], m)
        else:
            hn = jnp.clip(sg(ctx["student_entropy_norm"]), 0.0, 1.0)
            dn = jnp.clip(sg(ctx["jsd"]) / math.log(2.0), 0.0, 1.0)
        if c.select == "all":
            keep = m.astype(jnp.float32)
        elif c.select == "soft_or":
            keep = S.top_fraction_select(S.soft_or(hn, dn), m, frac=c.frac)
        elif c.select == "q3":
            keep = S.quadrant_select(hn, dn, m, high_entropy=False, high_divergence=True,
                                     threshold=c.q3_threshold)
        else:
            if ctx.key is None:
                raise ValueError(f"TIP select={c.select!r} samples tokens and needs ctx.key.")
            w = (jnp.ones_like(hn) if c.select == "random"
                 else S.tip_sampling_weights(hn, dn, alpha=c.alpha, gamma=c.gamma))
            keep = S.sampled_fraction_select(w, m, ctx.key, frac=c.frac)
        return ({"rkl": weighted_mean(ctx["reverse_kl"], keep)},
                {"tip/kept_frac": masked_mean(keep, m)})
    return stateless(apply, feats)


def ta_opd(c: TAOPDConfig, dense: bool) -> Objective:
    t = c.temperature
    feats = sampled_features(t, dense) | {
        "reverse_kl": feature(D.reverse_kl, "logits", TEACHER_LOGITS, temperature=t),
        "teachability": feature(K.student_topk_teacher_mass, "logits", TEACHER, k=c.k,
                                temperature=t)}

    def apply(ctx):
        m = ctx.mask.astype(bool)
        score = (S.minmax_normalize(ctx["reverse_kl"], m)
                 * S.minmax_normalize(ctx["teachability"], m))
        keep = S.top_fraction_select(score, m, frac=c.frac)
        per_token = (pg_loss(ctx, tinker_advantage(ctx), c) if c.loss == "pg"
                     else ctx["reverse_kl"])
        return ({"loss": weighted_mean(per_token, keep)},
                {"ta_opd/kept_frac": masked_mean(keep, m),
                 "ta_opd/teachability": masked_mean(ctx["teachability"], m)})
    return stateless(apply, feats)


def fire_opd(c: FiReOPDConfig, dense: bool) -> Objective:
    t = c.temperature
    feats = sampled_features(t, dense) | {
        "teacher_entropy": feature(D.token_entropy, TEACHER_LOGITS, temperature=t),
        "student_entropy": feature(D.token_entropy, "logits", temperature=t)}

    def apply(ctx):
        m = ctx.mask.astype(bool)
        keep = S.sequence_quantile_keep(ctx.teacher_logp, m, q=c.keep_quantile)
        kept = m & (keep[:, None] > 0)
        w = S.confidence_weights(ctx["teacher_entropy"], ctx["student_entropy"], kept,
                                 teacher_coef=c.teacher_coef, student_coef=c.student_coef)
        adv = w * tinker_advantage(ctx)  # 0 on the dropped sequences (w = 0 there)
        return ({"pg": token_mean(pg_loss(ctx, adv, c), m)},
                {"fire_opd/kept_seq_frac": jnp.sum(keep) / jnp.maximum(
                    jnp.sum(jnp.any(m, -1)), 1)})
    return stateless(apply, feats)


def _zone_coefficients(c: SEADConfig, s_high, t_high, alpha):
    """Per-token weights of the forward and the reverse KL from each token's zone."""
    per_zone = {"zero": (0.0, 0.0), "forward_kl": (1.0, 0.0), "reverse_kl": (0.0, 1.0),
                "schedule": (alpha, 1.0 - alpha)}
    zones = ((~s_high & ~t_high, c.zone_low_low), (~s_high & t_high, c.zone_low_high),
             (s_high & ~t_high, c.zone_high_low), (s_high & t_high, c.zone_high_high))
    cf = sum(jnp.where(z, per_zone[kind][0], 0.0) for z, kind in zones)
    cr = sum(jnp.where(z, per_zone[kind][1], 0.0) for z, kind in zones)
    return cf, cr


def sead(c: SEADConfig, dense: bool) -> Objective:
    t = c.temperature
    feats = {"forward_kl": feature(D.forward_kl, "logits", TEACHER_LOGITS, temperature=t),
             "reverse_kl": feature(D.reverse_kl, "logits", TEACHER_LOGITS, temperature=t),
             "student_entropy": feature(D.token_entropy, "logits", temperature=t),
             "teacher_entropy": feature(D.token_entropy, TEACHER_LOGITS, temperature=t)}

    def parts(ctx):
        m = ctx.mask.astype(bool)
        s_high, t_high = S.entropy_zones(ctx["student_entropy"], ctx["teacher_entropy"], m,
                                         student_threshold=c.student_threshold,
                                         teacher_threshold=c.teacher_threshold)
        alpha = S.cosine_anneal(ctx.step, c.anneal_steps)
        cf, cr = _zone_coefficients(c, s_high, t_high, alpha)
        return cf * ctx["forward_kl"] + cr * ctx["reverse_kl"], cf + cr, alpha

    def metrics(ctx):
        _, weight, alpha = parts(ctx)
        return {"sead/alpha": alpha,
                "sead/zero_frac": masked_mean((weight == 0).astype(jnp.float32), ctx.mask)}

    if c.student_threshold is not None and c.teacher_threshold is not None:
        return token_objective(lambda ctx: parts(ctx)[0], feats, name="kl", metrics=metrics)

    def apply(ctx):
        return {"kl": token_mean(parts(ctx)[0], ctx.mask)}, metrics(ctx)
    return stateless(apply, feats)


def _kept_opd(ctx, keep, c):
    """Tinker's OPD loss on the ``keep`` tokens: their mean (``c.normalize="kept"``) or their sum
    over all valid tokens (``"all"``)."""
    loss = pg_loss(ctx, tinker_advantage(ctx), c)
    if c.normalize == "kept":
        return weighted_mean(loss, keep)
    return token_mean(jnp.where(keep > 0, loss, 0.0), ctx.mask.astype(bool))


def horizon_opd(c: HorizonOPDConfig, dense: bool) -> Objective:
    def apply(ctx):
        m = ctx.mask.astype(bool)
        keep = S.horizon_mask(m, ctx.step, mode=c.mode, fraction=c.fraction,
                              grow_steps=c.grow_steps, max_length=c.max_length)
        return {"pg": _kept_opd(ctx, keep, c)}, {"horizon_opd/kept_frac": masked_mean(keep, m)}
    return stateless(apply, sampled_features(c.temperature, dense))


def tcod(c: TCODConfig, dense: bool) -> Objective:
    feats = sampled_features(c.temperature, dense) | {
        "turn_end": feature(S.separator_indicator, "tokens", ids=c.separators)}

    def apply(ctx):
        m = ctx.mask.astype(bool)
        keep = S.turn_mask(ctx["turn_end"], m, ctx.step, direction=c.direction, grow_steps=c.grow_steps)
        return {"pg": _kept_opd(ctx, keep, c)}, {"tcod/kept_frac": masked_mean(keep, m)}
    return stateless(apply, feats)


def dasd(c: DASDConfig, dense: bool) -> Objective:
    def apply(ctx):
        m = ctx.mask.astype(bool)
        keep = S.sequence_quantile_keep(ctx.teacher_logp - ctx.logp, m, q=c.keep_quantile)
        kept = m & (keep[:, None] > 0)
        return ({"nll": token_mean(-ctx.logp, kept)},
                {"dasd/kept_seq_frac": jnp.sum(keep) / jnp.maximum(jnp.sum(jnp.any(m, -1)), 1)})
    return stateless(apply, sampled_features(c.temperature, dense))
