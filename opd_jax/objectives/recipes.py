"""The papers' methods as typed configs, and the ONE place that maps a config to an objective.

Each config is a frozen dataclass validated on construction; :func:`build_objective` is a
single ``match`` over them. Nothing else in the package looks functions up by name. Every
recipe is written with the public pieces of :mod:`opd_jax.objectives`, so a new method is a
new function in this style, not a new flag.

Conventions shared by all recipes:

- ``temperature`` is the *loss* temperature, applied to student and teacher logits alike; the
  student's sampled-token log-prob ``logp`` uses it too. Set it to the sampling temperature so
  that importance ratios are exactly 1 on-policy.
- ``behavior_logp`` (an extra input) is what the sampler recorded; ``teacher_logp`` is a
  feature for a dense teacher and an extra input for a sparse one.
- Every loss averages over the valid tokens of the batch unless the recipe says otherwise.
"""

import dataclasses
import math
from typing import Literal, Union

import jax
import jax.numpy as jnp

from opd_jax.objectives import advantages as A
from opd_jax.objectives import divergences as D
from opd_jax.objectives import selection as S
from opd_jax.objectives import self_distillation as SD
from opd_jax.objectives import surrogates as P
from opd_jax.objectives import topk as K
from opd_jax.objectives.base import (TEACHER, TEACHER_LOGITS, Objective, TokenCtx, feature,
                                     merge_features, stateless, token_objective)
from opd_jax.objectives.diagnostics import diagnostic_features, diagnostic_metrics
from opd_jax.objectives.reductions import (Reduced, seq_mean_token_mean, seq_mean_weighted_mean,
                                           token_mean, weighted_mean)

Surrogate = Literal["is", "ppo"]


def _positive(name, value):
    if not value > 0:
        raise ValueError(f"{name} must be > 0, got {value}.")


def _unit(name, value, *, open_low=False, open_high=False):
    lo_ok = value > 0 if open_low else value >= 0
    hi_ok = value < 1 if open_high else value <= 1
    if not (lo_ok and hi_ok):
        raise ValueError(f"{name} must lie in {'(' if open_low else '['}0, 1"
                         f"{')' if open_high else ']'}, got {value}.")


def _choice(name, value, options):
    if value not in options:
        raise ValueError(f"{name} must be one of {options}, got {value!r}.")


@dataclasses.dataclass(frozen=True, kw_only=True)
class _Recipe:
    temperature: float = 1.0  # loss temperature for student and teacher logits

    def __post_init__(self):
        _positive("temperature", self.temperature)


@dataclasses.dataclass(frozen=True, kw_only=True)
class OPDConfig(_Recipe):
    """Sampled-token reverse-KL OPD (Thinking Machines / Tinker)."""
    kl_coef: float = 1.0  # c in A_t = -c * (log mu(y_t) - log q(y_t))
    discount: float = 0.0  # gamma of the discounted future sum (0 = per-token)
    surrogate: Surrogate = "is"
    clip_eps: float = 0.2  # PPO clip (surrogate = "ppo")

    def __post_init__(self):
        super().__post_init__()
        _unit("discount", self.discount)
        _choice("surrogate", self.surrogate, ("is", "ppo"))


@dataclasses.dataclass(frozen=True, kw_only=True)
class GKDConfig(_Recipe):
    """Generalized KD: full-vocabulary JSD(beta) (TRL's convention: 0 = forward, 1 = reverse KL).

    GKD's lambda (the fraction of on-policy batches, 0.5 by default for this recipe) and
    ``seq_kd`` belong to the training loop (``loop.lmbda``, ``loop.seq_kd``); see
    :func:`opd_jax.objectives.loop_defaults`."""
    beta: float = 0.5

    def __post_init__(self):
        super().__post_init__()
        _unit("beta", self.beta)


@dataclasses.dataclass(frozen=True, kw_only=True)
class EOPDConfig(_Recipe):
    """PPO-clipped OPD plus forward KL on the teacher's top-k where the teacher's entropy > tau."""
    tau: float = 0.8  # nats
    k: int = 16
    clip_eps: float = 0.2
    fkl_coef: float = 1.0
    soft_width: float | None = None  # None: hard gate

    def __post_init__(self):
        super().__post_init__()
        _positive("k", self.k)


@dataclasses.dataclass(frozen=True, kw_only=True)
class AOPDConfig(_Recipe):
    """Policy gradient where A > 0, a local divergence (weight alpha) where A <= 0."""
    alpha: float = 1.0
    local: Literal["reverse_kl", "forward_kl", "topk_reverse_kl_sg"] = "reverse_kl"
    k: int = 16  # for local = topk_reverse_kl_sg
    surrogate: Surrogate = "is"
    clip_eps: float = 0.2

    def __post_init__(self):
        super().__post_init__()
        _choice("local", self.local, ("reverse_kl", "forward_kl", "topk_reverse_kl_sg"))
        _choice("surrogate", self.surrogate, ("is", "ppo"))


@dataclasses.dataclass(frozen=True, kw_only=True)
class REOPOLDConfig(_Recipe):
    """Relaxed OPD: reward clipping at F(lambda), student-entropy token selection, two stages."""
    lam: float = 0.2
    floor_reading: Literal["log_odds", "log_over"] = "log_odds"
    clip: bool = True
    entropy_select: bool = True
    top_frac: float = 0.5  # beta: fraction of tokens kept by student entropy
    switch_step: int | None = None  # exploration (reward mask) before it, entropy mask after

    def __post_init__(self):
        super().__post_init__()
        _unit("lam", self.lam, open_low=True, open_high=True)
        _unit("top_frac", self.top_frac, open_low=True)
        _choice("floor_reading", self.floor_reading, ("log_odds", "log_over"))


@dataclasses.dataclass(frozen=True, kw_only=True)
class TIPConfig(_Recipe):
    """Token-importance selection, then reverse-KL OPD on the selected tokens only."""
    select: Literal["all", "soft_or", "entropy_sampling", "random", "q3"] = "soft_or"
    frac: float = 0.5  # rho
    normalize: Literal["minmax", "fixed"] = "minmax"  # per-batch min-max, or h/ln V and JSD/ln 2
    alpha: float = 1.0  # entropy exponent (entropy_sampling)
    gamma: float = 0.0  # divergence exponent (entropy_sampling)
    q3_threshold: float = 0.5

    def __post_init__(self):
        super().__post_init__()
        _choice("select", self.select, ("all", "soft_or", "entropy_sampling", "random", "q3"))
        _choice("normalize", self.normalize, ("minmax", "fixed"))
        _unit("frac", self.frac, open_low=True)


@dataclasses.dataclass(frozen=True, kw_only=True)
class OPSDConfig(_Recipe):
    """On-policy self-distillation: JSD(beta) to the same model seeing privileged context."""
    temperature: float = 1.1
    beta: float = 0.5
    teacher_top_k: int | None = None  # renormalise both on the teacher's top-k
    loss: Literal["jsd", "sampled"] = "jsd"  # or the sampled-token PG of its Eq. 9

    def __post_init__(self):
        super().__post_init__()
        _unit("beta", self.beta)
        _choice("loss", self.loss, ("jsd", "sampled"))


@dataclasses.dataclass(frozen=True, kw_only=True)
class UniSDConfig(_Recipe):
    """Unified self-distillation: clipped divergence, agreement weights, contrastive, hidden."""
    temperature: float = 0.7
    alpha: float = 0.0  # divergence: 0 forward KL, 1 reverse KL, else JSD(alpha)
    clip: Literal["none", "static", "quantile"] = "none"
    clip_value: float = 10.0
    clip_q: float = 0.99
    agreement: Literal["none", "token", "sequence"] = "none"
    agreement_gamma: float = 1.0
    agreement_q: float = 0.95
    contrastive_coef: float = 0.0
    margin: float = 0.5
    hidden_coef: float = 0.0
    # The EMA teacher (UniSD's beta 0.9 every 10 steps by default) is the training loop's:
    # teacher.kind="ema", teacher.ema_decay, teacher.ema_every; see loop_defaults.

    def __post_init__(self):
        super().__post_init__()
        _unit("alpha", self.alpha)
        _choice("clip", self.clip, ("none", "static", "quantile"))
        _choice("agreement", self.agreement, ("none", "token", "sequence"))


@dataclasses.dataclass(frozen=True, kw_only=True)
class SGTopKConfig(_Recipe):
    """Top-k reverse KL on the student's top-k (Many Faces), stop-gradient by default."""
    k: int = 20
    variant: Literal["sg", "plain", "tail", "intersect", "renormalized"] = "sg"

    def __post_init__(self):
        super().__post_init__()
        _positive("k", self.k)
        _choice("variant", self.variant, ("sg", "plain", "tail", "intersect", "renormalized"))


@dataclasses.dataclass(frozen=True, kw_only=True)
class VOPDConfig(_Recipe):
    """Sampled-token OPD with vOPD's closed-form baseline ``-KL(p_t || q_t)``."""
    baseline: Literal["full", "topk"] = "full"
    k: int = 100
    surrogate: Surrogate = "is"
    clip_eps: float = 0.2

    def __post_init__(self):
        super().__post_init__()
        _choice("baseline", self.baseline, ("full", "topk"))
        _choice("surrogate", self.surrogate, ("is", "ppo"))


@dataclasses.dataclass(frozen=True, kw_only=True)
class TopKOPDConfig(_Recipe):
    """Rethinking-OPD's top-k policy gradient, optionally on (non-)overlap tokens only."""
    k: int = 16
    restrict: Literal["none", "overlap", "non_overlap"] = "none"

    def __post_init__(self):
        super().__post_init__()
        _choice("restrict", self.restrict, ("none", "overlap", "non_overlap"))


@dataclasses.dataclass(frozen=True, kw_only=True)
class SFTConfig(_Recipe):
    """Supervised fine-tuning: cross-entropy on the given tokens (teacher rollouts, data)."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class ReinforceConfig(_Recipe):
    """REINFORCE with a per-token ``reward`` extra (the sequence reward broadcast over its tokens)."""
    baseline: Literal["none", "batch_mean"] = "batch_mean"

    def __post_init__(self):
        super().__post_init__()
        _choice("baseline", self.baseline, ("none", "batch_mean"))


ObjectiveConfig = Union[OPDConfig, GKDConfig, EOPDConfig, AOPDConfig, REOPOLDConfig, TIPConfig,
                        OPSDConfig, UniSDConfig, SGTopKConfig, VOPDConfig, TopKOPDConfig,
                        SFTConfig, ReinforceConfig]

RECIPES: dict[str, type] = {
    "opd": OPDConfig, "gkd": GKDConfig, "eopd": EOPDConfig, "aopd": AOPDConfig,
    "reopold": REOPOLDConfig, "tip": TIPConfig, "opsd": OPSDConfig, "unisd": UniSDConfig,
    "sg_topk": SGTopKConfig, "vopd": VOPDConfig, "topk_opd": TopKOPDConfig, "sft": SFTConfig,
    "reinforce": ReinforceConfig,
}


def recipe_name(cfg) -> str:
    for name, cls in RECIPES.items():
        if type(cfg) is cls:
            return name
    raise TypeError(f"{type(cfg).__name__} is not an objective config; known: {sorted(RECIPES)}")


def make_config(kind: str, **fields) -> ObjectiveConfig:
    """``make_config("eopd", tau=0.9)``; unknown kinds and fields are errors that name them."""
    if kind not in RECIPES:
        raise ValueError(f"unknown objective {kind!r}; known: {sorted(RECIPES)}")
    cls = RECIPES[kind]
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise ValueError(f"objective {kind!r} has no field(s) {unknown}; its fields: {sorted(known)}")
    return cls(**fields)


# ---------------------------------------------------------------------------------------------
# Shared pieces


def _sampled(t: float, dense_teacher: bool) -> dict:
    f = {"logp": feature(D.token_logp, "logits", "tokens", temperature=t)}
    if dense_teacher:
        f["teacher_logp"] = feature(D.token_logp, TEACHER_LOGITS, "tokens", temperature=t)
    return f


def _surrogate(kind: Surrogate, eps: float):
    if kind == "is":
        return lambda ctx, adv: P.importance_sampling_loss(ctx.logp, ctx.behavior_logp, adv)
    return lambda ctx, adv: P.ppo_clip_loss(ctx.logp, ctx.behavior_logp, adv, eps=eps)


def _mean(x, m):
    return jnp.sum(jnp.where(m, x, 0.0)) / jnp.maximum(jnp.sum(m), 1)


# ---------------------------------------------------------------------------------------------
# The recipes


def _opd(c: OPDConfig, dense):
    surrogate = _surrogate(c.surrogate, c.clip_eps)
    feats = _sampled(c.temperature, dense)
    if c.discount == 0.0:
        def loss(ctx):
            return surrogate(ctx, A.opd_advantage(ctx.teacher_logp, ctx.behavior_logp,
                                                  coef=c.kl_coef))
        return token_objective(loss, feats, name="pg")

    def apply(ctx):
        adv = A.discounted_future_sum(
            A.opd_advantage(ctx.teacher_logp, ctx.behavior_logp, coef=c.kl_coef), ctx.mask,
            gamma=c.discount)
        return {"pg": token_mean(surrogate(ctx, adv), ctx.mask)}, {}
    return stateless(apply, feats)


def _gkd(c: GKDConfig, dense):
    feats = {"jsd": feature(D.generalized_jsd, "logits", TEACHER_LOGITS, beta=c.beta,
                            temperature=c.temperature)}
    return token_objective(lambda ctx: ctx["jsd"], feats, name="jsd")


def _eopd(c: EOPDConfig, dense):
    feats = _sampled(c.temperature, dense) | {
        "teacher_entropy": feature(D.token_entropy, TEACHER_LOGITS, temperature=c.temperature),
        "fkl_topk": feature(K.teacher_topk_forward_kl, "logits", TEACHER, k=c.k,
                            temperature=c.temperature)}

    def loss(ctx):
        adv = A.opd_advantage(ctx.teacher_logp, ctx.behavior_logp)
        gate = S.entropy_gate(ctx["teacher_entropy"], min_nats=c.tau, soft_width=c.soft_width)
        return (P.ppo_clip_loss(ctx.logp, ctx.behavior_logp, adv, eps=c.clip_eps)
                + c.fkl_coef * gate * ctx["fkl_topk"])

    def metrics(ctx):
        gate = S.entropy_gate(ctx["teacher_entropy"], min_nats=c.tau, soft_width=c.soft_width)
        return {"eopd/gate_open_frac": _mean(gate, ctx.mask),
                "eopd/fkl_topk": _mean(ctx["fkl_topk"], ctx.mask)}
    return token_objective(loss, feats, metrics=metrics)


def _aopd(c: AOPDConfig, dense):
    local = {"reverse_kl": feature(D.reverse_kl, "logits", TEACHER_LOGITS,
                                   temperature=c.temperature),
             "forward_kl": feature(D.forward_kl, "logits", TEACHER_LOGITS,
                                   temperature=c.temperature),
             "topk_reverse_kl_sg": feature(K.student_topk_reverse_kl_sg, "logits", TEACHER,
                                           k=c.k, temperature=c.temperature)}[c.local]
    feats = _sampled(c.temperature, dense) | {"local": local}
    surrogate = _surrogate(c.surrogate, c.clip_eps)

    def loss(ctx):
        adv = A.opd_advantage(ctx.teacher_logp, ctx.logp)
        return P.sign_split_loss(surrogate(ctx, adv), ctx["local"], adv, alpha=c.alpha)

    def metrics(ctx):
        adv = A.opd_advantage(ctx.teacher_logp, ctx.logp)
        return {"aopd/pos_frac": _mean(A.positive_part(adv), ctx.mask),
                "aopd/local": _mean(ctx["local"], ctx.mask)}
    return token_objective(loss, feats, metrics=metrics)


def _reopold(c: REOPOLDConfig, dense):
    floor = A.mixture_clip_floor(c.lam, reading=c.floor_reading)
    feats = _sampled(c.temperature, dense) | {
        "student_entropy": feature(D.token_entropy, "logits", temperature=c.temperature)}

    def apply(ctx):
        mask = ctx.mask.astype(bool)
        reward = A.opd_advantage(ctx.teacher_logp, ctx.logp)
        adv = A.clip_below(reward, floor) if c.clip else reward
        if c.switch_step is not None:
            keep = S.reopold_select(reward, ctx["student_entropy"], mask, floor=floor,
                                    top_frac=c.top_frac, step=ctx.step, switch_step=c.switch_step)
        elif c.entropy_select:
            keep = S.quantile_select(ctx["student_entropy"], mask, top_frac=c.top_frac)
        else:
            keep = mask.astype(jnp.float32)
        per_token = P.importance_sampling_loss(ctx.logp, ctx.behavior_logp, adv)
        metrics = {"reopold/kept_frac": _mean(keep, mask),
                   "reopold/clipped_frac": _mean((reward < floor).astype(jnp.float32), mask)}
        return {"pg": weighted_mean(per_token, keep)}, metrics
    return stateless(apply, feats)


def _tip(c: TIPConfig, dense):
    feats = _sampled(c.temperature, dense) | {
        "reverse_kl": feature(D.reverse_kl, "logits", TEACHER_LOGITS, temperature=c.temperature),
        "student_entropy": feature(D.token_entropy, "logits", temperature=c.temperature),
        "jsd": feature(D.generalized_jsd, "logits", TEACHER_LOGITS, beta=0.5,
                       temperature=c.temperature)}

    def apply(ctx):
        mask = ctx.mask.astype(bool)
        h, d = ctx["student_entropy"], ctx["jsd"]
        if c.normalize == "minmax":
            hn, dn = S.minmax_normalize(h, mask), S.minmax_normalize(d, mask)
        else:
            vocab = ctx["vocab_size"] if "vocab_size" in ctx else None
            if vocab is None:
                raise ValueError("TIP normalize='fixed' needs the extra input 'vocab_size'.")
            hn = jnp.clip(h / jnp.log(vocab), 0, 1)
            dn = jnp.clip(d / math.log(2.0), 0, 1)
        if c.select == "all":
            keep = mask.astype(jnp.float32)
        elif c.select == "soft_or":
            keep = S.top_fraction_select(S.soft_or(hn, dn), mask, frac=c.frac)
        elif c.select == "q3":
            keep = S.quadrant_select(hn, dn, mask, high_entropy=False, high_divergence=True,
                                     threshold=c.q3_threshold)
        else:
            if ctx.key is None:
                raise ValueError(f"TIP select={c.select!r} samples tokens and needs ctx.key.")
            w = (jnp.ones_like(hn) if c.select == "random"
                 else S.tip_sampling_weights(hn, dn, alpha=c.alpha, gamma=c.gamma))
            keep = S.sampled_fraction_select(w, mask, ctx.key, frac=c.frac)
        return ({"rkl": weighted_mean(ctx["reverse_kl"], keep)},
                {"tip/kept_frac": _mean(keep, mask)})
    return stateless(apply, feats)


def _opsd(c: OPSDConfig, dense):
    if c.loss == "sampled":
        def loss(ctx):
            adv = A.opd_advantage(ctx.teacher_logp, ctx.logp)
            return P.importance_sampling_loss(ctx.logp, jax.lax.stop_gradient(ctx.logp), adv)
        return token_objective(loss, _sampled(c.temperature, dense), name="pg")
    if c.teacher_top_k is None:
        jsd = feature(D.generalized_jsd, "logits", TEACHER_LOGITS, beta=c.beta,
                      temperature=c.temperature)
    else:
        jsd = feature(K.teacher_topk_generalized_jsd, "logits", TEACHER, k=c.teacher_top_k,
                      beta=c.beta, temperature=c.temperature)
    return token_objective(lambda ctx: ctx["jsd"], {"jsd": jsd}, name="jsd")


def _unisd(c: UniSDConfig, dense):
    feats = _sampled(c.temperature, dense) | {
        "div": feature(D.generalized_jsd, "logits", TEACHER_LOGITS, beta=c.alpha,
                       temperature=c.temperature)}

    def apply(ctx):
        mask = ctx.mask.astype(bool)
        div = ctx["div"]
        if c.clip == "static":
            div = SD.clip_divergence(div, max_value=c.clip_value)
        elif c.clip == "quantile":
            div = SD.quantile_clip_divergence(div, mask, q=c.clip_q)
        if c.agreement == "token":
            w = SD.token_agreement_weights(ctx["aux_teacher_logp"], mask, gamma=c.agreement_gamma,
                                           q=c.agreement_q)
        elif c.agreement == "sequence":
            w = SD.sequence_agreement_weights(ctx["aux_teacher_logp"], mask,
                                              gamma=c.agreement_gamma)
        else:
            w = mask.astype(jnp.float32)
        terms = {"div": seq_mean_weighted_mean(div, w)}
        if c.contrastive_coef:
            hinge = SD.contrastive_hinge(ctx.logp, ctx.teacher_logp, ctx["bad_teacher_logp"],
                                         margin=c.margin)
            terms["contrastive"] = seq_mean_token_mean(hinge, mask).scale(c.contrastive_coef)
        if c.hidden_coef:
            hid = SD.hidden_state_matching(ctx["hidden"], ctx["teacher_hidden"])
            terms["hidden"] = seq_mean_token_mean(hid, mask).scale(c.hidden_coef)
        return terms, {"unisd/mean_weight": _mean(w, mask)}
    return stateless(apply, feats)


_TOPK_RKL = {"sg": K.student_topk_reverse_kl_sg, "plain": K.student_topk_reverse_kl,
             "tail": K.student_topk_reverse_kl_tail, "intersect": K.intersect_topk_reverse_kl,
             "renormalized": K.student_topk_renormalized_reverse_kl}


def _sg_topk(c: SGTopKConfig, dense):
    feats = {"topk_rkl": feature(_TOPK_RKL[c.variant], "logits", TEACHER, k=c.k,
                                 temperature=c.temperature)}
    return token_objective(lambda ctx: ctx["topk_rkl"], feats, name="topk_rkl")


def _vopd(c: VOPDConfig, dense):
    if c.baseline == "full":
        base = feature(D.reverse_kl, "logits", TEACHER_LOGITS, temperature=c.temperature)
    else:
        base = feature(K.student_topk_renormalized_reverse_kl, "logits", TEACHER, k=c.k,
                       temperature=c.temperature)
    feats = _sampled(c.temperature, dense) | {"baseline_kl": base}
    surrogate = _surrogate(c.surrogate, c.clip_eps)

    def loss(ctx):
        adv = A.vopd_advantage(ctx.teacher_logp, ctx.logp, ctx["baseline_kl"])
        return surrogate(ctx, adv)
    return token_objective(loss, feats, name="pg")


def _topk_opd(c: TopKOPDConfig, dense):
    feats = {"topk_pg": feature(K.topk_opd_loss, "logits", TEACHER, k=c.k, restrict=c.restrict,
                                temperature=c.temperature)}
    return token_objective(lambda ctx: ctx["topk_pg"], feats, name="pg")


def _sft(c: SFTConfig, dense):
    feats = {"logp": feature(D.token_logp, "logits", "tokens", temperature=c.temperature)}
    return token_objective(lambda ctx: -ctx.logp, feats, name="nll")


def _reinforce(c: ReinforceConfig, dense):
    feats = {"logp": feature(D.token_logp, "logits", "tokens", temperature=c.temperature)}

    def apply(ctx):
        mask = ctx.mask.astype(bool)
        reward = ctx["reward"]
        if c.baseline == "batch_mean":
            per_seq = seq_mean_token_mean(reward, mask)
            reward = reward - per_seq.value()
        loss = P.importance_sampling_loss(ctx.logp, ctx.behavior_logp, reward)
        return {"pg": token_mean(loss, mask)}, {"reinforce/reward": _mean(ctx["reward"], mask)}
    return stateless(apply, feats)


def build_objective(cfg: ObjectiveConfig, *, dense_teacher: bool = True,
                    diagnostics_k: int | None = None) -> Objective:
    """The objective of a recipe config (the only config → function map in the package).

    Args:
      cfg: one of the recipe configs (see :data:`RECIPES`).
      dense_teacher: False when the teacher arrives only as top-k log-probs
        (:class:`~opd_jax.objectives.topk.TeacherTopK`) plus its sampled-token log-prob (the
        ``teacher_logp`` extra input); recipes that need full teacher logits then fail here.
      diagnostics_k: if set, add the token diagnostics (top-k overlap with this k, entropies,
        exact vs estimated KL) to the objective's metrics.
    """
    match cfg:
        case OPDConfig():
            obj = _opd(cfg, dense_teacher)
        case GKDConfig():
            obj = _gkd(cfg, dense_teacher)
        case EOPDConfig():
            obj = _eopd(cfg, dense_teacher)
        case AOPDConfig():
            obj = _aopd(cfg, dense_teacher)
        case REOPOLDConfig():
            obj = _reopold(cfg, dense_teacher)
        case TIPConfig():
            obj = _tip(cfg, dense_teacher)
        case OPSDConfig():
            obj = _opsd(cfg, dense_teacher)
        case UniSDConfig():
            obj = _unisd(cfg, dense_teacher)
        case SGTopKConfig():
            obj = _sg_topk(cfg, dense_teacher)
        case VOPDConfig():
            obj = _vopd(cfg, dense_teacher)
        case TopKOPDConfig():
            obj = _topk_opd(cfg, dense_teacher)
        case SFTConfig():
            obj = _sft(cfg, dense_teacher)
        case ReinforceConfig():
            obj = _reinforce(cfg, dense_teacher)
        case _:
            raise TypeError(f"not an objective config: {cfg!r}; known: {sorted(RECIPES)}")
    if not dense_teacher:
        need = sorted(n for n, f in obj.features.items() if f.needs_teacher_logits)
        if need:
            raise ValueError(f"objective {recipe_name(cfg)!r} needs full teacher logits for "
                             f"{need}, but the teacher is sparse (top-k log-probs only).")
    if diagnostics_k is not None:
        obj = with_diagnostics(obj, k=diagnostics_k, temperature=cfg.temperature,
                               dense_teacher=dense_teacher)
    return obj


def required_inputs(cfg: ObjectiveConfig) -> frozenset[str]:
    """The extra inputs (beyond features and ``behavior_logp``) a recipe reads from its batch,
    so that a trainer can refuse a run that cannot supply them before compiling anything:
    ``"reward"`` (a reward function), ``"aux_teacher_logp"`` (auxiliary teacher contexts),
    ``"bad_teacher_logp"`` (a corrupted teacher context)."""
    need = set()
    if isinstance(cfg, ReinforceConfig):
        need.add("reward")
    if isinstance(cfg, UniSDConfig):
        if cfg.agreement != "none":
            need.add("aux_teacher_logp")
        if cfg.contrastive_coef:
            need.add("bad_teacher_logp")
    return frozenset(need)


def with_diagnostics(obj: Objective, *, k: int = 16, temperature: float = 1.0,
                     dense_teacher: bool = True) -> Objective:
    """``obj`` plus the token diagnostics in its metrics (same loss, same token-locality)."""
    feats = merge_features(obj.features, diagnostic_features(k=k, temperature=temperature,
                                                             dense_teacher=dense_teacher))
    if "logp" not in feats:
        feats = merge_features(feats, _sampled(temperature, dense_teacher))

    def apply(ctx, state):
        terms, state, metrics = obj.apply(ctx, state)
        return terms, state, {**metrics, **diagnostic_metrics(ctx)}
    return obj._replace(features=feats, apply=apply)


__all__ = ["ObjectiveConfig", "RECIPES", "build_objective", "make_config", "recipe_name",
           "required_inputs", "with_diagnostics", "Reduced"] + [c.__name__ for c in RECIPES.values()]
