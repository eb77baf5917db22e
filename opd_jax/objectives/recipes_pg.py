"""Builders of the sampled-token recipes: a (stop-gradient) advantage per sampled token, fed to
a policy-gradient surrogate in the token's importance ratio.

OPD (Tinker), EOPD, AOPD, vOPD, IW-OPD, Uni-OPD's margin, PowerOPD, StableOPD's anchor,
LGR's look-ahead candidates, REINFORCE and SFT. Each builder maps its config to an
:class:`~opd_jax.objectives.base.Objective`.
"""

import jax.numpy as jnp

from opd_jax.objectives import advantages as A
from opd_jax.objectives import divergences as D
from opd_jax.objectives import lookahead as LA
from opd_jax.objectives import selection as S
from opd_jax.objectives import surrogates as P
from opd_jax.objectives import topk as K
from opd_jax.objectives.base import (TEACHER, TEACHER_LOGITS, Objective, extra, feature,
                                     stateless, token_objective)
from opd_jax.objectives.configs import (AOPDConfig, EOPDConfig, OPDConfig, ReinforceConfig,
                                        SFTConfig, VOPDConfig)
from opd_jax.objectives.configs_2026 import (REF_LOGP, IWOPDConfig, LGRConfig, PowerOPDConfig,
                                             StableOPDConfig, UniOPDConfig)
from opd_jax.objectives.recipe_parts import pg_loss, sampled_features, tinker_advantage
from opd_jax.objectives.reductions import (masked_mean, seq_mean_token_mean, seq_mean_token_sum,
                                           token_mean)


def opd(c: OPDConfig, dense: bool) -> Objective:
    feats = sampled_features(c.temperature, dense)
    if c.discount == 0.0 and c.reduction == "token_mean":
        return token_objective(lambda ctx: pg_loss(ctx, tinker_advantage(ctx, c.kl_coef), c),
                               feats, name="pg")

    def apply(ctx):
        adv = tinker_advantage(ctx, c.kl_coef)
        if c.discount:
            adv = A.discounted_future_sum(adv, ctx.mask, gamma=c.discount)
        loss = pg_loss(ctx, adv, c)
        reduce = token_mean if c.reduction == "token_mean" else seq_mean_token_sum
        return {"pg": reduce(loss, ctx.mask)}, {}
    return stateless(apply, feats)


def eopd(c: EOPDConfig, dense: bool) -> Objective:
    feats = sampled_features(c.temperature, dense) | {
        "teacher_entropy": feature(D.token_entropy, TEACHER_LOGITS, temperature=c.temperature),
        "fkl_topk": feature(K.teacher_topk_forward_kl, "logits", TEACHER, k=c.k,
                            temperature=c.temperature)}

    def gate(ctx):
        return S.entropy_gate(ctx["teacher_entropy"], min_nats=c.tau, soft_width=c.soft_width)

    def loss(ctx):
        m = ctx.mask.astype(bool)
        pg = P.ppo_clip_loss(ctx.logp, ctx.behavior_logp, tinker_advantage(ctx), eps=c.clip_eps,
                             where=m)
        return pg + c.fkl_coef * gate(ctx) * ctx["fkl_topk"]

    def metrics(ctx):
        return {"eopd/gate_open_frac": masked_mean(gate(ctx), ctx.mask),
                "eopd/fkl_topk": masked_mean(ctx["fkl_topk"], ctx.mask)}
    return token_objective(loss, feats, metrics=metrics)


def aopd(c: AOPDConfig, dense: bool) -> Objective:
    local = {"reverse_kl": feature(D.reverse_kl, "logits", TEACHER_LOGITS,
                                   temperature=c.temperature),
             "forward_kl": feature(D.forward_kl, "logits", TEACHER_LOGITS,
                                   temperature=c.temperature),
             "topk_reverse_kl_sg": feature(K.student_topk_reverse_kl_sg, "logits", TEACHER,
                                           k=c.k, temperature=c.temperature)}[c.local]
    feats = sampled_features(c.temperature, dense) | {"local": local}

    def advantage(ctx):  # the learner's log-prob: A = sg(log q - log p_theta)
        return A.opd_advantage(ctx.teacher_logp, ctx.logp, where=ctx.mask.astype(bool))

    def loss(ctx):
        adv = advantage(ctx)
        return P.sign_split_loss(pg_loss(ctx, adv, c), ctx["local"], adv, alpha=c.alpha,
                                 where=ctx.mask.astype(bool))

    def metrics(ctx):
        return {"aopd/pos_frac": masked_mean(A.positive_part(advantage(ctx)), ctx.mask),
                "aopd/local": masked_mean(ctx["local"], ctx.mask)}
    return token_objective(loss, feats, metrics=metrics)


def vopd(c: VOPDConfig, dense: bool) -> Objective:
    if c.baseline == "full":
        base = feature(D.reverse_kl, "logits", TEACHER_LOGITS, temperature=c.temperature)
    else:
        base = feature(K.student_topk_renormalized_reverse_kl, "logits", TEACHER, k=c.k,
                       temperature=c.temperature)
    feats = sampled_features(c.temperature, dense) | {"baseline_kl": base}
    floor = (None if c.reward_clip is None
             else A.mixture_clip_floor(c.reward_clip, reading="log_over"))

    def loss(ctx):
        adv = A.vopd_advantage(ctx.teacher_logp, ctx.logp, ctx["baseline_kl"],
                               reward_floor=floor, where=ctx.mask.astype(bool))
        return pg_loss(ctx, adv, c)
    return token_objective(loss, feats, name="pg")


def iw_opd(c: IWOPDConfig, dense: bool) -> Objective:
    def apply(ctx):
        adv = tinker_advantage(ctx)
        w = A.iw_opd_weights(adv, ctx.mask, gamma=c.gamma, eps=c.eps)
        return ({"pg": token_mean(pg_loss(ctx, w * adv, c), ctx.mask)},
                {"iw_opd/mean_weight": masked_mean(w, ctx.mask)})
    return stateless(apply, sampled_features(c.temperature, dense))


def uni_opd(c: UniOPDConfig, dense: bool) -> Objective:
    def apply(ctx):
        m = ctx.mask.astype(bool)
        # the trainer broadcasts each sequence's reward over its tokens: average it back
        n = jnp.maximum(jnp.sum(m, -1), 1)
        correct = jnp.sum(jnp.where(m, ctx["reward"], 0.0), -1) / n > c.correct_threshold
        base = tinker_advantage(ctx)
        adv = A.margin_shift(base, m, correct, delta=c.delta, mode=c.mode,
                             group_size=c.group_size)
        return ({"pg": token_mean(pg_loss(ctx, adv, c), m)},
                {"uni_opd/correct_frac": jnp.mean(correct.astype(jnp.float32)),
                 "uni_opd/mean_shift": masked_mean(adv - base, m)})
    return stateless(apply, sampled_features(c.temperature, dense))


def power_opd(c: PowerOPDConfig, dense: bool) -> Objective:
    def advantage(ctx):  # Tinker's form: the sampler's mu in the ratio
        return A.power_advantage(ctx.teacher_logp, ctx.behavior_logp, alpha=c.alpha,
                                 clip=c.reward_clip, where=ctx.mask.astype(bool))

    def metrics(ctx):
        return {"power_opd/advantage": masked_mean(advantage(ctx), ctx.mask)}
    return token_objective(lambda ctx: pg_loss(ctx, advantage(ctx), c),
                           sampled_features(c.temperature, dense), name="pg", metrics=metrics)


def stable_opd(c: StableOPDConfig, dense: bool) -> Objective:
    def anchor(ctx):  # the student's log-prob carries the gradient; the reference's is an input
        return D.sampled_kl(ctx.logp, ctx[REF_LOGP], estimator=c.ref_estimator,
                            where=ctx.mask.astype(bool))

    def metrics(ctx):
        return {"stable_opd/ref_kl": masked_mean(anchor(ctx), ctx.mask)}
    feats = sampled_features(c.temperature, dense)
    return token_objective(lambda ctx: pg_loss(ctx, tinker_advantage(ctx), c) + c.ref_coef * anchor(ctx),
                           feats, name="pg", metrics=metrics)


def lgr(c: LGRConfig, dense: bool) -> Objective:
    ids, reward = extra(LA.LGR_IDS), extra(LA.LGR_REWARD)
    if c.form == "advantage":  # the sampled token's reward, added to its advantage
        term = "sampled"
        lgr_feature = feature(LA.sampled_reward, "tokens", ids, reward)
    else:  # a loss on the candidates
        term = "candidates"
        lgr_feature = feature(LA.candidate_loss, "logits", ids, reward, temperature=c.temperature,
                              form=c.form)
    feats = sampled_features(c.temperature, dense) | {f"lgr_{term}": lgr_feature}

    def loss(ctx):
        if c.form == "advantage":
            return pg_loss(ctx, tinker_advantage(ctx) + c.coef * ctx["lgr_sampled"], c)
        return pg_loss(ctx, tinker_advantage(ctx), c) + c.coef * ctx["lgr_candidates"]

    def metrics(ctx):
        branched = ctx.mask.astype(bool) & jnp.any(ctx[LA.LGR_REWARD] != 0, axis=-1)
        return {"lgr/branch_frac": masked_mean(branched.astype(jnp.float32), ctx.mask),
                f"lgr/{term}": masked_mean(ctx[f"lgr_{term}"], branched)}
    return token_objective(loss, feats, name="pg", metrics=metrics)


def sft(c: SFTConfig, dense: bool) -> Objective:
    feats = {"logp": feature(D.token_logp, "logits", "tokens", temperature=c.temperature)}
    return token_objective(lambda ctx: -ctx.logp, feats, name="nll")


def reinforce(c: ReinforceConfig, dense: bool) -> Objective:
    feats = {"logp": feature(D.token_logp, "logits", "tokens", temperature=c.temperature)}

    def apply(ctx):
        m = ctx.mask.astype(bool)
        reward = ctx["reward"]
        if c.baseline == "batch_mean":
            reward = reward - seq_mean_token_mean(reward, m).value()
        loss = P.importance_sampling_loss(ctx.logp, ctx.behavior_logp, reward, where=m)
        return {"pg": token_mean(loss, m)}, {"reinforce/reward": masked_mean(ctx["reward"], m)}
    return stateless(apply, feats)
