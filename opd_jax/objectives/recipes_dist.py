"""Builders of the distribution-matching recipes: a divergence between the student's and the
teacher's next-token distributions at each position (full vocabulary or a top-k support).

GKD, OPSD, PW-OPSD, UniSD, the Many Faces top-k reverse KLs, Rethinking-OPD's top-k policy gradient,
SimCT's virtual vocabulary (a teacher with another tokenizer) and Draft-OPD's drafter loss.
"""

import jax
import jax.numpy as jnp

from opd_jax.objectives import advantages as A
from opd_jax.objectives import divergences as D
from opd_jax.objectives import self_distillation as SD
from opd_jax.objectives import surrogates as P
from opd_jax.objectives import topk as K
from opd_jax.objectives import topk_opd as TO
from opd_jax.objectives import virtual_vocab as VV
from opd_jax.objectives.base import (TEACHER, TEACHER_LOGITS, TEACHER_TOPK, Objective, extra,
                                     feature, stateless, token_objective)
from opd_jax.objectives.configs import (GKDConfig, OPSDConfig, SGTopKConfig, TopKOPDConfig,
                                        UniSDConfig)
from opd_jax.objectives.configs_2026 import DRAFT_ERROR, DraftOPDConfig, PWOPSDConfig, SimCTConfig
from opd_jax.objectives.recipe_parts import sampled_features
from opd_jax.objectives.reductions import (masked_mean, seq_mean_token_mean,
                                           seq_mean_weighted_mean, token_mean, weighted_mean)

# The extra inputs of TopKOPDConfig(surrogate="ppo"): the behaviour policy's top-k ids and
# log-probs at each position, recorded by the sampler.
BEHAVIOR_TOPK_IDS, BEHAVIOR_TOPK_LOGP = "behavior_topk_ids", "behavior_topk_logp"


def gkd(c: GKDConfig, dense: bool) -> Objective:
    feats = {"jsd": feature(D.generalized_jsd, "logits", TEACHER_LOGITS, beta=c.beta,
                            temperature=c.temperature)}
    return token_objective(lambda ctx: ctx["jsd"], feats, name="jsd")


def opsd(c: OPSDConfig, dense: bool) -> Objective:
    if c.loss == "sampled":  # Eq. 9: A = sg(log p_T(y) - log p_S(y)), loss -A log p_S(y)
        def loss(ctx):
            m = ctx.mask.astype(bool)
            adv = A.opd_advantage(ctx.teacher_logp, ctx.logp, where=m)
            return P.importance_sampling_loss(ctx.logp, jax.lax.stop_gradient(ctx.logp), adv,
                                              where=m)
        return token_objective(loss, sampled_features(c.temperature, dense), name="pg")
    if c.teacher_top_k is None:
        jsd = feature(D.generalized_jsd, "logits", TEACHER_LOGITS, beta=c.beta,
                      temperature=c.temperature)
    else:
        jsd = feature(K.teacher_topk_generalized_jsd, "logits", TEACHER, k=c.teacher_top_k,
                      beta=c.beta, temperature=c.temperature)
    return token_objective(lambda ctx: ctx["jsd"], {"jsd": jsd}, name="jsd")


def pw_opsd(c: PWOPSDConfig, dense: bool) -> Objective:
    feats = {"fkl": feature(D.generalized_jsd, "logits", TEACHER_LOGITS, beta=0.0,
                            temperature=c.temperature)}

    def apply(ctx):
        m = ctx.mask.astype(bool)
        div = ctx["fkl"]
        if c.clip_value is not None:
            div = SD.clip_divergence(div, max_value=c.clip_value)
        w = A.relative_position_weights(m, gamma=c.gamma, direction=c.direction)
        return {"fkl": seq_mean_weighted_mean(div, w)}, {"pw_opsd/mean_weight": masked_mean(w, m)}
    return stateless(apply, feats)


def unisd(c: UniSDConfig, dense: bool) -> Objective:
    feats = sampled_features(c.temperature, dense) | {
        "div": feature(D.generalized_jsd, "logits", TEACHER_LOGITS, beta=c.alpha,
                       temperature=c.temperature)}

    def apply(ctx):
        m = ctx.mask.astype(bool)
        div = ctx["div"]
        if c.clip == "static":
            div = SD.clip_divergence(div, max_value=c.clip_value)
        elif c.clip == "quantile":
            div = SD.quantile_clip_divergence(div, m, q=c.clip_q)
        if c.agreement == "token":
            w = SD.token_agreement_weights(ctx["aux_teacher_logp"], m, gamma=c.agreement_gamma,
                                           q=c.agreement_q)
            terms = {"div": seq_mean_weighted_mean(div, w)}
        elif c.agreement == "sequence":
            # one weight per sequence, scaling that sequence's share of the batch loss
            w = SD.sequence_agreement_weights(ctx["aux_teacher_logp"], m,
                                              gamma=c.agreement_gamma)
            terms = {"div": seq_mean_token_mean(div, m, seq_weights=jnp.max(w, axis=-1))}
        else:
            w = m.astype(jnp.float32)
            terms = {"div": seq_mean_token_mean(div, m)}
        if c.contrastive_coef:
            hinge = SD.contrastive_hinge(ctx.logp, ctx.teacher_logp, ctx["bad_teacher_logp"],
                                         margin=c.margin, where=m)
            terms["contrastive"] = seq_mean_token_mean(hinge, m).scale(c.contrastive_coef)
        if c.hidden_coef:
            hid = SD.hidden_state_matching(ctx["hidden"], ctx["teacher_hidden"], where=m)
            terms["hidden"] = seq_mean_token_mean(hid, m).scale(c.hidden_coef)
        return terms, {"unisd/mean_weight": masked_mean(w, m)}
    return stateless(apply, feats)


TOPK_RKL = {"sg": K.student_topk_reverse_kl_sg, "plain": K.student_topk_reverse_kl,
            "tail": K.student_topk_reverse_kl_tail, "intersect": K.intersect_topk_reverse_kl,
            "renormalized": K.student_topk_renormalized_reverse_kl}


def sg_topk(c: SGTopKConfig, dense: bool) -> Objective:
    feats = {"topk_rkl": feature(TOPK_RKL[c.variant], "logits", TEACHER, k=c.k,
                                 temperature=c.temperature)}
    return token_objective(lambda ctx: ctx["topk_rkl"], feats, name="topk_rkl")


def topk_opd(c: TopKOPDConfig, dense: bool) -> Objective:
    kw = dict(k=c.k, support=c.support, weights=c.weights, temperature=c.temperature)
    if c.surrogate == "is":
        pg = feature(TO.topk_opd_loss, "logits", TEACHER, **kw)
    else:
        pg = feature(TO.topk_opd_behavior_loss, "logits", TEACHER, extra(BEHAVIOR_TOPK_IDS),
                     extra(BEHAVIOR_TOPK_LOGP), clip_eps=c.clip_eps, **kw)
    return token_objective(lambda ctx: ctx["topk_pg"], {"topk_pg": pg}, name="pg")


def simct(c: SimCTConfig, dense: bool) -> Objective:
    t = c.temperature
    feats = {"logp": feature(D.token_logp, "logits", "tokens", temperature=t),
             "log_mass": feature(VV.support_log_mass, "logits", TEACHER_TOPK, temperature=t),
             "support_kl": feature(VV.support_reverse_kl, "logits", TEACHER_TOPK, temperature=t)}
    if c.span_logit == "logit":
        feats["own_logit"] = feature(VV.token_logit, "logits", "tokens", temperature=t)
        feats["log_normalizer"] = feature(VV.log_normalizer, "logits", temperature=t)

    def apply(ctx):
        m = ctx.mask.astype(bool)
        start = m & (ctx[VV.XTOK_START] > 0)
        dim = start & (ctx[VV.XTOK_SPAN_DIM] > 0) & c.span_dims
        if c.span_logit == "logit":  # the mean own logit, on the scale of the start's log-probs
            span = VV.span_mean(ctx["own_logit"], ctx[VV.XTOK_END], m) - ctx["log_normalizer"]
        else:  # the span's tokens are all valid
            span = VV.span_mean(ctx.logp, ctx[VV.XTOK_END], m)
        kl = VV.virtual_reverse_kl(ctx["log_mass"], ctx["support_kl"], span, ctx[VV.XTOK_LOG_MASS],
                                   ctx[VV.XTOK_SPAN_LOGP], dim, where=start)
        return {"virtual_rkl": token_mean(kl, start)}, {
            "simct/span_dims": masked_mean(dim.astype(jnp.float32), start),
            "simct/support_mass": masked_mean(jnp.exp(ctx["log_mass"]), start)}
    return stateless(apply, feats)


DRAFT_DIVERGENCES = {"tv": D.total_variation, "forward_kl": D.forward_kl, "reverse_kl": D.reverse_kl}


def draft_opd(c: DraftOPDConfig, dense: bool) -> Objective:
    feats = {"draft_div": feature(DRAFT_DIVERGENCES[c.divergence], "logits", TEACHER_LOGITS,
                                  temperature=c.temperature)}

    def apply(ctx):
        m = ctx.mask.astype(bool)
        if not c.error_weight:
            return {"draft": token_mean(ctx["draft_div"], m)}, {}
        error = ctx[DRAFT_ERROR].astype(jnp.float32)
        w = jnp.where(m, 1.0 + c.error_weight * error, 0.0)
        return {"draft": weighted_mean(ctx["draft_div"], w)}, {"draft_opd/error_frac": masked_mean(error, m)}
    return stateless(apply, feats)
