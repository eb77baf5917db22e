"""The papers' methods as typed configs, and the ONE place that maps a config to an objective.

Each config is a frozen dataclass validated on construction (:mod:`~opd_jax.objectives.configs`,
:mod:`~opd_jax.objectives.configs_2026`); :func:`build_objective` is a single ``match`` over
them, and :data:`RECIPES` names them for :func:`make_config` (``--set objective=<name>``).
Nothing else in the package looks functions up by name. The builders live by family:
:mod:`~opd_jax.objectives.recipes_pg` (sampled-token policy gradients),
:mod:`~opd_jax.objectives.recipes_dist` (distribution matching) and
:mod:`~opd_jax.objectives.recipes_select` (token / sequence selection and gating).

Status: *exact* = the formula of the cited code or paper, every option; *reconstruction* =
the source gives a concept or a one-line formula, and the fields listed carry the choices it
leaves open (defaults are the reconstruction's best reading, see objectives.md /
objectives_2026.md).

===========  ===================================================  ===========================
name         method (minimised loss; stop-gradient on A and q)    status
===========  ===================================================  ===========================
opd          Thinking Machines / Tinker: -(pi/mu) A,               exact (tinker-cookbook);
             A = -c (log mu - log q), optional discounted sum;    ``reduction`` =
             token mean or summed per sequence                    "sum_per_sequence" is
                                                                  Tinker's summed loss
gkd          GKD / TRL: mean_t JSD_beta(q || p)                    exact (TRL); lambda and
                                                                  seq_kd are the loop's
eopd         EOPD: PPO-clip(-rho A) + 1[H(q) > tau] FKL_topk       reconstruction: tau, k,
                                                                  clip_eps, fkl_coef,
                                                                  soft_width
aopd         AOPD: PG where A > 0, alpha D_loc where A <= 0        reconstruction: alpha,
                                                                  local, k, surrogate
reopold      REOPOLD: -rho max(R, F(lambda)) on selected tokens    reconstruction: lam,
                                                                  floor_reading, clip,
                                                                  entropy_select, top_frac,
                                                                  switch_step, surrogate
unisd        UniSD: clipped D_alpha, agreement weights,            exact (Ahren09/UniSD);
             contrastive hinge, hidden-state MSE                  ``agreement="sequence"``
                                                                  scales each sequence's
                                                                  share (the code's
                                                                  normalisation divides it
                                                                  back out)
opsd         OPSD: mean_t JSD_0.5(p_T || p_S), or Eq. 9 PG         exact (paper + code)
sg_topk      Many Faces: top-k reverse KLs (sg, plain, tail,       exact (code)
             intersect, renormalised)
topk_opd     Rethinking OPD: -sum_{v in support} A(v) rho(v),      exact (thunlp code); ppo
             A(v) = w(v)(log q - log p_old); supports student,    needs the behaviour top-k
             overlap, non_overlap, teacher, union; weights        (extras)
             student / teacher / uniform; IS or PPO
tip          TIP: reverse KL on tokens chosen by soft-OR of        reconstruction: select,
             entropy and divergence (or sampled, random, Q3)      frac (floor rounding),
                                                                  normalize, alpha, gamma,
                                                                  q3_threshold
vopd         vOPD: -rho sg(r + KL(p||q)), optional reward clip     exact (holi-lab/vOPD)
iw_opd       IW-OPD: -rho w_t a_t, w_t = 1 + gamma (1 - prefix     exact (TRL IWOPDTrainer;
             |a| / total |a|)                                     IS ratio in place of
                                                                  log p: same gradient)
fire_opd     FiRe-OPD: drop sequences below a mean-log q           reconstruction:
             quantile; A = w (log q - log mu),                    keep_quantile,
             w ~ (1 + a conf_T)(1 + b confusion_S); PPO            teacher_coef, student_coef,
                                                                  surrogate
ta_opd       TA-OPD: OPD on the top-rho positions by               reconstruction: k, frac,
             norm(RKL) * norm(teacher mass on student top-K)      loss
uni_opd      Uni-OPD margin: correct samples' A shifted to lie     reconstruction: delta,
             delta above incorrect ones' (needs a reward)         mode, correct_threshold,
                                                                  group_size
sead         SEAD: per entropy zone zero / FKL / RKL /             reconstruction: zones,
             alpha_k FKL + (1 - alpha_k) RKL, cosine schedule     thresholds, anneal_steps
pw_opsd      PW-OPSD: per sequence sum w_t min(FKL_t, c) / sum w_t,  reconstruction: gamma,
             w_t = 1 + gamma t/L (or 1 + gamma (1 - t/L))         direction, clip_value
power_opd    PowerOPD: -(pi/mu) A, A = sg(((q/mu)^alpha - 1) /     reconstruction: alpha,
             alpha), the Box-Cox reward (alpha = 0: OPD's          reward_clip (the ratio
             log-ratio)                                           q/mu, Tinker's)
horizon_opd  POPD / TOPD: OPD on each completion's first H         reconstruction: mode,
             tokens; TOPD H = max(floor(fraction L), 1), POPD     fraction, grow_steps,
             grows H linearly to L over grow_steps (loss only;    max_length (what L is),
             the paper also stops sampling at H)                  normalize
tcod         TCOD: OPD on the tokens of each completion's first     reconstruction: the
             (or last) d_k turns, d_k growing from 1 to all over  schedule, separators (what
             grow_steps; a turn ends at a separator token         ends a turn), normalize
stable_opd   StableOPD's anchor: -(pi/mu) A + beta k(log p,          reconstruction: ref_coef,
             log p_ref), A Tinker's, k a sampled KL to the       ref_estimator (k2:
             student's initial weights (needs ``ref_logp``);      KL(p || ref)'s gradient;
             the rollout mixture is loop.golden_fraction          k3: KL(ref || p)'s)
dasd         DASD's selection: cross-entropy on the sequences      reconstruction:
             whose mean sg(log q - log p) is at least the         keep_quantile (the score,
             batch's keep_quantile quantile (teacher samples)     the quantile rule)
simct        SimCT: reverse KL over a virtual vocabulary (shared     reconstruction: the
             tokens + one dimension per aligned span, its logit   teacher's top-K support
             the mean of its tokens' own logits), per span        (teacher.shared_topk),
             start; a teacher with another tokenizer              span_logit, span_dims
lgr          LGR: OPD plus -coef sum_k sg(r_k) log p(v_k) over the    reconstruction: confidence,
             student's top-k candidates v_k at its most uncertain  form, coef, min_entropy,
             positions, r_k the teacher's group-normalised        branch_points (needs
             confidence one step after v_k                        ``lgr_ids``/``lgr_reward``)
draft_opd    Draft-OPD: a drafter's sum w_t D(q_t, p_t) / sum w_t on    reconstruction: divergence
             target-assisted rollouts (loop.draft_tokens), w_t =  (TV: 1 - acceptance),
             1 + error_weight at rejected drafts' positions       error_weight (needs
                                                                  ``draft_error``)
sft          cross-entropy on the given tokens                    exact
reinforce    REINFORCE on a ``reward`` extra, batch-mean baseline  exact
===========  ===================================================  ===========================

Conventions shared by all recipes:

- ``temperature`` is the *loss* temperature, applied to student and teacher logits alike; the
  student's sampled-token log-prob ``logp`` uses it too. Set it to the sampling temperature so
  that importance ratios are exactly 1 on-policy.
- ``behavior_logp`` (an extra input) is what the sampler recorded; ``teacher_logp`` is a
  feature for a dense teacher and an extra input for a sparse one.
- ``step`` (the optimizer step, for schedules: REOPOLD's ``switch_step``, SEAD's anneal,
  POPD's growing horizon) is the ``TokenCtx.step`` the train step passes; it is not an extra
  input.
- Every loss averages over the valid tokens of the batch unless the recipe says otherwise;
  padded positions contribute exactly 0, with zero gradient, whatever they hold.
"""

import dataclasses
from typing import Union

from opd_jax.objectives import recipes_dist as RD
from opd_jax.objectives import recipes_pg as RP
from opd_jax.objectives import recipes_select as RS
from opd_jax.objectives.base import Objective, merge_features
from opd_jax.objectives.configs import (AOPDConfig, EOPDConfig, GKDConfig, OPDConfig,
                                        OPSDConfig, REOPOLDConfig, ReinforceConfig, SFTConfig,
                                        SGTopKConfig, TIPConfig, TopKOPDConfig, UniSDConfig,
                                        VOPDConfig)
from opd_jax.objectives.configs_2026 import (DRAFT_ERROR, REF_LOGP, DASDConfig, DraftOPDConfig,
                                             FiReOPDConfig, HorizonOPDConfig,
                                             IWOPDConfig, LGRConfig, PowerOPDConfig, PWOPSDConfig,
                                             SEADConfig, SimCTConfig, StableOPDConfig,
                                             TAOPDConfig, TCODConfig, UniOPDConfig)
from opd_jax.objectives.lookahead import LOOKAHEAD_INPUTS
from opd_jax.objectives.virtual_vocab import VIRTUAL_INPUTS
from opd_jax.objectives.diagnostics import diagnostic_features, diagnostic_metrics
from opd_jax.objectives.recipe_parts import sampled_features
from opd_jax.objectives.reductions import Reduced

ObjectiveConfig = Union[OPDConfig, GKDConfig, EOPDConfig, AOPDConfig, REOPOLDConfig, TIPConfig,
                        OPSDConfig, UniSDConfig, SGTopKConfig, VOPDConfig, TopKOPDConfig,
                        SFTConfig, ReinforceConfig, IWOPDConfig, FiReOPDConfig, TAOPDConfig,
                        UniOPDConfig, SEADConfig, PWOPSDConfig, PowerOPDConfig,
                        HorizonOPDConfig, StableOPDConfig, DASDConfig, SimCTConfig, LGRConfig,
                        TCODConfig, DraftOPDConfig]

RECIPES: dict[str, type] = {
    "opd": OPDConfig, "gkd": GKDConfig, "eopd": EOPDConfig, "aopd": AOPDConfig,
    "reopold": REOPOLDConfig, "tip": TIPConfig, "opsd": OPSDConfig, "unisd": UniSDConfig,
    "sg_topk": SGTopKConfig, "vopd": VOPDConfig, "topk_opd": TopKOPDConfig, "sft": SFTConfig,
    "reinforce": ReinforceConfig, "iw_opd": IWOPDConfig, "fire_opd": FiReOPDConfig,
    "ta_opd": TAOPDConfig, "uni_opd": UniOPDConfig, "sead": SEADConfig,
    "pw_opsd": PWOPSDConfig, "power_opd": PowerOPDConfig, "horizon_opd": HorizonOPDConfig,
    "stable_opd": StableOPDConfig, "dasd": DASDConfig, "simct": SimCTConfig, "lgr": LGRConfig,
    "tcod": TCODConfig, "draft_opd": DraftOPDConfig,
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
            obj = RP.opd(cfg, dense_teacher)
        case GKDConfig():
            obj = RD.gkd(cfg, dense_teacher)
        case EOPDConfig():
            obj = RP.eopd(cfg, dense_teacher)
        case AOPDConfig():
            obj = RP.aopd(cfg, dense_teacher)
        case REOPOLDConfig():
            obj = RS.reopold(cfg, dense_teacher)
        case TIPConfig():
            obj = RS.tip(cfg, dense_teacher)
        case OPSDConfig():
            obj = RD.opsd(cfg, dense_teacher)
        case UniSDConfig():
            obj = RD.unisd(cfg, dense_teacher)
        case SGTopKConfig():
            obj = RD.sg_topk(cfg, dense_teacher)
        case VOPDConfig():
            obj = RP.vopd(cfg, dense_teacher)
        case TopKOPDConfig():
            obj = RD.topk_opd(cfg, dense_teacher)
        case SFTConfig():
            obj = RP.sft(cfg, dense_teacher)
        case ReinforceConfig():
            obj = RP.reinforce(cfg, dense_teacher)
        case IWOPDConfig():
            obj = RP.iw_opd(cfg, dense_teacher)
        case FiReOPDConfig():
            obj = RS.fire_opd(cfg, dense_teacher)
        case TAOPDConfig():
            obj = RS.ta_opd(cfg, dense_teacher)
        case UniOPDConfig():
            obj = RP.uni_opd(cfg, dense_teacher)
        case SEADConfig():
            obj = RS.sead(cfg, dense_teacher)
        case PWOPSDConfig():
            obj = RD.pw_opsd(cfg, dense_teacher)
        case PowerOPDConfig():
            obj = RP.power_opd(cfg, dense_teacher)
        case HorizonOPDConfig():
            obj = RS.horizon_opd(cfg, dense_teacher)
        case StableOPDConfig():
            obj = RP.stable_opd(cfg, dense_teacher)
        case DASDConfig():
            obj = RS.dasd(cfg, dense_teacher)
        case SimCTConfig():
            obj = RD.simct(cfg, dense_teacher)
        case LGRConfig():
            obj = RP.lgr(cfg, dense_teacher)
        case TCODConfig():
            obj = RS.tcod(cfg, dense_teacher)
        case DraftOPDConfig():
            obj = RD.draft_opd(cfg, dense_teacher)
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
    """The extra inputs (beyond features, ``behavior_logp`` and the step) a recipe reads from its
    batch, so that a trainer can refuse a run that cannot supply them before compiling anything.

    - ``"reward"`` float32 ``[B, T]``: each sequence's reward broadcast over its tokens
      (``reinforce``; ``uni_opd``, which counts a sample correct when reward > threshold);
    - ``"aux_teacher_logp"`` float32 ``[B, T, K]``, K >= 2: auxiliary teacher contexts' log-probs
      of the sampled tokens (``unisd`` agreement);
    - ``"bad_teacher_logp"`` float32 ``[B, T]``: a corrupted teacher context's (``unisd``
      contrastive term);
    - ``"behavior_topk_ids"`` int32 ``[B, T, k]`` and ``"behavior_topk_logp"`` float32
      ``[B, T, k]``: the behaviour (sampling) policy's top-k token ids and their log-probs at
      each position, at the loss temperature (``topk_opd`` with ``surrogate="ppo"``). They are
      read in the vocabulary phase, so the trainer passes them to ``compute_features`` /
      ``fused_token_loss`` as ``extras``;
    - ``"ref_logp"`` float32 ``[B, T]``: a frozen reference policy's log-probs of the sampled
      tokens (``stable_opd``; the training loop's reference is the student's initial weights);
    - :data:`~opd_jax.objectives.virtual_vocab.VIRTUAL_INPUTS` ``[B, T]``: the span alignment of
      a teacher with another tokenizer (``simct``; ``teacher.kind="cross_tokenizer"`` sends them);
    - :data:`~opd_jax.objectives.lookahead.LOOKAHEAD_INPUTS` ``[B, T, k]``: the student's top-k
      candidates at its branch points and their look-ahead rewards (``lgr``; the training loop's
      look-ahead teacher sends them);
    - ``"draft_error"`` float32 ``[B, T]``: 1 where the token replaced a draft the target
      rejected (``draft_opd`` with ``error_weight > 0``; the loop's speculative rollouts,
      ``loop.draft_tokens``, send it).
    """
    need = set()
    if isinstance(cfg, ReinforceConfig | UniOPDConfig):
        need.add("reward")
    if isinstance(cfg, UniSDConfig):
        if cfg.agreement != "none":
            need.add("aux_teacher_logp")
        if cfg.contrastive_coef:
            need.add("bad_teacher_logp")
    if isinstance(cfg, StableOPDConfig):
        need.add(REF_LOGP)
    if isinstance(cfg, SimCTConfig):
        need |= set(VIRTUAL_INPUTS)
    if isinstance(cfg, LGRConfig):
        need |= set(LOOKAHEAD_INPUTS)
    if isinstance(cfg, DraftOPDConfig) and cfg.error_weight:
        need.add(DRAFT_ERROR)
    if isinstance(cfg, TopKOPDConfig) and cfg.surrogate == "ppo":
        need |= {RD.BEHAVIOR_TOPK_IDS, RD.BEHAVIOR_TOPK_LOGP}
    return frozenset(need)


def with_diagnostics(obj: Objective, *, k: int = 16, temperature: float = 1.0,
                     dense_teacher: bool = True) -> Objective:
    """``obj`` plus the token diagnostics in its metrics (same loss, same token-locality)."""
    feats = merge_features(obj.features, diagnostic_features(k=k, temperature=temperature,
                                                             dense_teacher=dense_teacher))
    if "logp" not in feats:
        feats = merge_features(feats, sampled_features(temperature, dense_teacher))

    def apply(ctx, state):
        terms, state, metrics = obj.apply(ctx, state)
        return terms, state, {**metrics, **diagnostic_metrics(ctx.masked())}
    return obj._replace(features=feats, apply=apply)


__all__ = ["ObjectiveConfig", "RECIPES", "build_objective", "make_config", "recipe_name",
           "required_inputs", "with_diagnostics", "Reduced"] + [c.__name__ for c in RECIPES.values()]
