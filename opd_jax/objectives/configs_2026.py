"""Configs of the 2026 methods (``objectives_2026.md``): IW-OPD, FiRe-OPD, TA-OPD, Uni-OPD's
margin, SEAD's zones, PW-OPSD's position weights, PowerOPD's Box-Cox reward, POPD / TOPD's
horizon, TCOD's turn curriculum, StableOPD's reference anchor, DASD's divergence-aware selection, SimCT's virtual
vocabulary across tokenizers, LGR's look-ahead group rewards and Draft-OPD's drafter loss. Their sources give one-line
formulas; every choice they leave open is a field here, with the reconstruction's
default (see :mod:`opd_jax.objectives.recipes`)."""

import dataclasses
import math
from typing import Literal

from opd_jax.objectives.configs import PGRecipe, Recipe, check_int, choice, positive, unit

Zone = Literal["zero", "forward_kl", "reverse_kl", "schedule"]
ZONES = ("zero", "forward_kl", "reverse_kl", "schedule")


@dataclasses.dataclass(frozen=True, kw_only=True)
class IWOPDConfig(PGRecipe):
    """Importance-weighted OPD: a sequence's early tokens weigh up to 1 + gamma.

    ``a_t = sg(log q(y_t) - log mu(y_t))``, loss ``-w_t a_t rho_t`` with
    :func:`~opd_jax.objectives.advantages.iw_opd_weights`. Source: arXiv 2606.22600, TRL
    ``IWOPDTrainer._compute_iw_opd_loss`` (exact; TRL writes ``-w a log p``, whose gradient is
    the same on-policy).
    """
    gamma: float = 0.5  # w_t = 1 + gamma * (1 - sum_{s<t} |a_s| / max(eps, sum_s |a_s|))
    eps: float = 1e-8

    def __post_init__(self):
        super().__post_init__()
        if not self.gamma >= 0:
            raise ValueError(f"gamma must be >= 0, got {self.gamma}.")
        positive("eps", self.eps)


@dataclasses.dataclass(frozen=True, kw_only=True)
class FiReOPDConfig(PGRecipe):
    """FiRe-OPD: filter sequences by mean teacher log-prob, reweight tokens by confidence.

    Keep sequence i if ``mean_t log q(y_t) >= quantile_q`` over the batch's sequences;
    ``A_t = sg(w_t (log q - log mu)) keep_i`` with
    :func:`~opd_jax.objectives.selection.confidence_weights`; PPO-clipped; token mean over all
    valid tokens (dropped sequences count, with advantage 0). Source: arXiv 2606.02684, its
    ``dp_actor.py`` as summarised in objectives_2026.md. Reconstructed [INF]: the maxima and the
    mean-1 normalisation are taken over the kept tokens of the (micro-)batch.
    """
    surrogate: Literal["is", "ppo"] = "ppo"
    keep_quantile: float = 0.2  # keep a sequence if its mean log q(y_t) >= this batch quantile
    teacher_coef: float = 1.0  # a in (1 + a (1 - H_T / max H_T))
    student_coef: float = 1.0  # b in (1 + b H_S / max H_S)

    def __post_init__(self):
        super().__post_init__()
        unit("keep_quantile", self.keep_quantile, open_high=True)
        for name in ("teacher_coef", "student_coef"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}.")


@dataclasses.dataclass(frozen=True, kw_only=True)
class TAOPDConfig(PGRecipe):
    """TA-OPD: OPD only on the most teachable positions.

    ``s_t = minmax(RKL_t) * minmax(compat_t)``, ``compat_t = sum_{v in TopK(p_t)} q_t(v)``
    (:func:`~opd_jax.objectives.topk.student_topk_teacher_mass`); the loss acts on the top
    ``frac`` of the valid tokens by ``s_t``, averaged over them. Source: arXiv 2605.26844
    (abstract; formula via a third-party summary). Reconstructed [INF]: the divergence
    ``D_t`` (full reverse KL), the min-max normalisation, the OPD loss (``loss``).
    """
    k: int = 16  # K of the student's top-K candidates
    frac: float = 0.05  # rho: keeps max(floor(rho * N), 1) of the N valid tokens
    loss: Literal["pg", "reverse_kl"] = "pg"  # sampled-token OPD, or the full reverse KL

    def __post_init__(self):
        super().__post_init__()
        check_int("k", self.k, minimum=1)
        unit("frac", self.frac, open_low=True)
        choice("loss", self.loss, ("pg", "reverse_kl"))


@dataclasses.dataclass(frozen=True, kw_only=True)
class UniOPDConfig(PGRecipe):
    """Uni-OPD's outcome-aware margin: correct samples' advantages at least delta above the rest.

    Tinker's OPD advantage, then :func:`~opd_jax.objectives.advantages.margin_shift` with
    ``correct_i = reward_i > correct_threshold`` (the ``reward`` extra). Source: arXiv
    2605.03677, ``miles/Uni_OPD_utils/margin_calibration/margin_shift.py`` as summarised in
    objectives_2026.md. Reconstructed [INF]: ``delta``'s default, the correctness threshold, the
    group layout (consecutive rows); its batch balancing and offline upsampling are data-side.
    """
    delta: float = 0.1  # margin, nats per token
    mode: Literal["mean", "minmax"] = "mean"  # gap of group means, or min(correct) - max(incorrect)
    correct_threshold: float = 0.5  # a sample is verified-correct when its reward > this
    group_size: int = 0  # consecutive rows sharing a prompt; 0 = the whole (micro-)batch

    def __post_init__(self):
        super().__post_init__()
        if not self.delta >= 0:
            raise ValueError(f"delta must be >= 0, got {self.delta}.")
        choice("mode", self.mode, ("mean", "minmax"))
        check_int("group_size", self.group_size, minimum=0)


@dataclasses.dataclass(frozen=True, kw_only=True)
class SEADConfig(Recipe):
    """SEAD: entropy zones, each with its own divergence, and a forward-to-reverse KL schedule.

    ``L_t = cf_t FKL_t + cr_t RKL_t`` with ``(cf, cr)`` from the token's zone
    (:func:`~opd_jax.objectives.selection.entropy_zones`): ``zero`` (0, 0), ``forward_kl``
    (1, 0), ``reverse_kl`` (0, 1), ``schedule`` (alpha_k, 1 - alpha_k),
    ``alpha_k = (1 + cos(pi min(k, K) / K)) / 2`` at the optimizer step k; token mean over all
    valid tokens. Source: arXiv 2606.28562 (abstract). Reconstructed [INF]: the zone thresholds,
    which divergence each zone gets, the normalisation; its prompt curriculum is data-side.
    """
    anneal_steps: int = 1000  # K: alpha_k = (1 + cos(pi min(k, K) / K)) / 2 (forward -> reverse)
    student_threshold: float | None = None  # nats splitting low/high H(p); None = batch median
    teacher_threshold: float | None = None  # nats splitting low/high H(q); None = batch median
    # zone (student entropy, teacher entropy): "zero", "forward_kl", "reverse_kl" or "schedule"
    zone_low_low: Zone = "zero"  # both confident: nothing to learn
    zone_low_high: Zone = "forward_kl"  # student overconfident where the teacher hedges
    zone_high_low: Zone = "schedule"  # teacher confident, student unsure: the teaching zone
    zone_high_high: Zone = "zero"  # both unsure: the teacher's signal is noise

    def __post_init__(self):
        super().__post_init__()
        check_int("anneal_steps", self.anneal_steps, minimum=1)
        for name in ("zone_low_low", "zone_low_high", "zone_high_low", "zone_high_high"):
            choice(name, getattr(self, name), ZONES)


@dataclasses.dataclass(frozen=True, kw_only=True)
class PWOPSDConfig(Recipe):
    """PW-OPSD: a clipped forward KL to a (privileged) teacher, weighted up along the sequence.

    Per sequence ``sum_t w_t min(FKL_t, clip_value) / sum_t w_t`` with
    :func:`~opd_jax.objectives.advantages.relative_position_weights` (``w_t = 1 + gamma t / L``
    for ``direction="increasing"``, the paper's; ``"decreasing"`` gives the opposite axis of the
    ablation, IW-OPD's and "Prefix Teach, Suffix Fade"'s), then the mean over sequences.
    ``FKL_t = KL(q_t || p_t)`` over the vocabulary at the loss temperature. Source: arXiv
    2605.21606 (abstract). Reconstructed [INF]: the form of ``w`` (linear), ``gamma``, the clip
    value and the per-sequence normalisation.
    """
    temperature: float = 1.0
    gamma: float = 1.0
    direction: Literal["increasing", "decreasing"] = "increasing"
    clip_value: float | None = 10.0  # nats; None: no clip

    def __post_init__(self):
        super().__post_init__()
        if not self.gamma >= 0:
            raise ValueError(f"gamma must be >= 0, got {self.gamma}.")
        choice("direction", self.direction, ("increasing", "decreasing"))
        if self.clip_value is not None:
            positive("clip_value", self.clip_value)


@dataclasses.dataclass(frozen=True, kw_only=True)
class PowerOPDConfig(PGRecipe):
    """PowerOPD: OPD with the Box-Cox reward ``((q/mu)^alpha - 1) / alpha`` as the advantage.

    ``A_t = sg(expm1(alpha (log q(y_t) - log mu(y_t))) / alpha)``
    (:func:`~opd_jax.objectives.advantages.power_advantage`), loss ``-rho_t A_t`` (or PPO-clipped)
    averaged over the valid tokens, as :class:`~opd_jax.objectives.configs.OPDConfig`; ``alpha = 0``
    is exactly OPD. Source: arXiv 2606.17199 (abstract). Reconstructed [INF]: the ratio (the
    sampler's ``mu``, as Tinker's OPD), ``alpha``'s default, the optional symmetric clip.
    """
    alpha: float = 0.5  # Box-Cox power; 0 = the log-ratio; > 0 bounds the reward below by -1/alpha
    reward_clip: float | None = None  # clip A_t to [-reward_clip, reward_clip]; None: no clip

    def __post_init__(self):
        super().__post_init__()
        if not (isinstance(self.alpha, int | float) and math.isfinite(self.alpha)):
            raise ValueError(f"alpha must be a finite number, got {self.alpha!r}.")
        if self.reward_clip is not None:
            positive("reward_clip", self.reward_clip)


@dataclasses.dataclass(frozen=True, kw_only=True)
class HorizonOPDConfig(PGRecipe):
    """POPD / TOPD: OPD whose loss counts only the first ``H`` tokens of each completion.

    ``m_t <- m_t 1[n_t < H]`` (:func:`~opd_jax.objectives.selection.horizon_mask`; ``n_t`` counts
    the valid tokens before t) on Tinker's OPD loss ``-rho_t sg(log q - log mu)``. TOPD
    (``mode="fixed_fraction"``): ``H = max(floor(fraction L), 1)``; POPD (``"growing"``): H grows
    linearly from that to ``L`` over ``grow_steps`` optimizer steps (``TokenCtx.step``). ``L`` is
    each completion's own length, or ``max_length`` for all. The paper also saves generation
    compute by stopping sampling at H; this loss-side version samples whole completions and only
    masks the loss (the sampler is unchanged). Source: arXiv 2605.31490 (abstract).
    Reconstructed [INF]: the floor rounding, the linear schedule and its start, "the length", and
    the normalisation (``normalize``: "kept" = mean over the kept tokens, the loss of the modified
    mask; "all" = their sum over the count of all valid tokens, so a short horizon weighs less).
    """
    mode: Literal["fixed_fraction", "growing"] = "growing"  # TOPD, or POPD
    fraction: float = 0.1  # TOPD's H / L; POPD's at step 0
    grow_steps: int = 1000  # POPD: steps from H_0 to the whole completion
    max_length: int | None = None  # None: L = each completion's length; else this budget for all
    normalize: Literal["kept", "all"] = "kept"

    def __post_init__(self):
        super().__post_init__()
        choice("mode", self.mode, ("fixed_fraction", "growing"))
        unit("fraction", self.fraction, open_low=True)
        check_int("grow_steps", self.grow_steps, minimum=1)
        if self.max_length is not None:
            check_int("max_length", self.max_length, minimum=1)
        choice("normalize", self.normalize, ("kept", "all"))


@dataclasses.dataclass(frozen=True, kw_only=True)
class TCODConfig(PGRecipe):
    """TCOD: OPD on a curriculum over trajectory depth, the loss on each completion's first
    (``direction="forward"``) or last (``"backward"``) ``d_k`` turns, ``d_k`` growing from one turn
    to the whole completion over ``grow_steps`` optimizer steps
    (:func:`~opd_jax.objectives.selection.turn_mask`).

    A turn ends at any of the ``separators`` token ids (an agent episode's end-of-turn tokens; a
    reasoning trace's step separator); none (the default) makes the whole completion one turn:
    OPD exactly. Loss ``-rho_t sg(log q - log mu)`` on the kept tokens, normalised as
    :class:`HorizonOPDConfig`'s ``normalize``. Source: arXiv 2604.24005 (abstract and README).
    Reconstructed [INF]: the schedule (per row, linear in the step), what a turn is here.
    """
    separators: tuple[int, ...] = ()
    direction: Literal["forward", "backward"] = "forward"
    grow_steps: int = 1000
    normalize: Literal["kept", "all"] = "kept"

    def __post_init__(self):
        super().__post_init__()
        if not (isinstance(self.separators, tuple) and all(
                isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in self.separators)):
            raise ValueError(f"separators must be a tuple of token ids (ints >= 0), got {self.separators!r}.")
        choice("direction", self.direction, ("forward", "backward"))
        check_int("grow_steps", self.grow_steps, minimum=1)
        choice("normalize", self.normalize, ("kept", "all"))


REF_LOGP = "ref_logp"  # the extra input: the reference policy's log-prob of each sampled token


@dataclasses.dataclass(frozen=True, kw_only=True)
class StableOPDConfig(PGRecipe):
    """StableOPD's reference anchor: Tinker's OPD plus ``ref_coef`` times a sampled-token KL to a
    frozen reference policy (the student's initial weights).

    Loss per token ``-rho_t sg(log q - log mu) + ref_coef * k(log p, log p_ref)``, averaged over
    the valid tokens, with ``k`` a single-sample estimator of
    :func:`~opd_jax.objectives.divergences.sampled_kl` on the student's own tokens; ``log p_ref``
    is the extra input ``"ref_logp"`` (the training loop scores the reference). As a *loss* on
    tokens drawn from p, the estimators' expected gradients differ: ``"k2"`` (``(log p -
    log p_ref)^2 / 2``) gives the gradient of ``KL(p || p_ref)``, the constraint the paper
    names; ``"k3"`` (GRPO's) gives the gradient of ``KL(p_ref || p)``, the forward direction
    (tests/objectives/test_recipes_stable_dasd.py checks both by enumeration). Source: arXiv
    2604.08527 (abstract; ``ref_coef`` 0.01 as in the kiln reimplementation). The paper's second
    half, rollout-mixture distillation on golden trajectories, is the training loop's
    ``loop.golden_fraction`` (some rows' samples replaced by the records' reference completions,
    their behaviour log-prob the student's own), not a loss. Reconstructed [INF]: the estimator,
    the anchor as a loss term rather than a reward, and the mixture as replaced rows.
    """
    ref_coef: float = 0.01  # beta: weight of the reference KL term (0 = OPD exactly)
    ref_estimator: Literal["k2", "k3"] = "k2"

    def __post_init__(self):
        super().__post_init__()
        if not (isinstance(self.ref_coef, int | float) and math.isfinite(self.ref_coef)
                and self.ref_coef >= 0):
            raise ValueError(f"ref_coef must be a finite number >= 0, got {self.ref_coef!r}.")
        choice("ref_estimator", self.ref_estimator, ("k2", "k3"))


@dataclasses.dataclass(frozen=True, kw_only=True)
class DASDConfig(Recipe):
    """DASD's divergence-aware selection: supervised training on the sequences where the teacher is
    most sure and the student least, of the batch's completions.

    Keep sequence i if its mean ``sg(log q(y_t) - log p(y_t))`` over its valid tokens is at least
    the batch's ``keep_quantile`` quantile of those means
    (:func:`~opd_jax.objectives.selection.sequence_quantile_keep`); loss: the mean negative
    log-likelihood ``-log p(y_t)`` over the kept sequences' valid tokens. Meant for teacher samples
    (``loop.lmbda=0``, ``loop.seq_kd=true``) or the data's completions. Source: arXiv 2601.09088
    (abstract; objectives_2026.md). Not here: its temperature-scheduled teacher sampling and
    mixed-policy stage. Reconstructed [INF]: the score (the mean log-ratio), selection by a batch
    quantile, and its default (the top half).
    """
    keep_quantile: float = 0.5  # keep a sequence if its mean log q - log p >= this batch quantile

    def __post_init__(self):
        super().__post_init__()
        unit("keep_quantile", self.keep_quantile, open_high=True)


@dataclasses.dataclass(frozen=True, kw_only=True)
class SimCTConfig(Recipe):
    """SimCT: the reverse KL over a virtual vocabulary shared by two tokenizers, at the start of
    each aligned span (:mod:`opd_jax.objectives.virtual_vocab`); needs a teacher with its own
    tokenizer (``teacher.kind="cross_tokenizer"``), which supplies the alignment. Loss: the mean
    over span starts. ``span_dims=False`` drops the span dimensions (the reverse KL on the shared
    tokens alone, renormalised there: an ablation). ``span_logit``: the span dimension's logit is
    the mean of its tokens' own logits (``"logit"``, SimCT's code) or of their log-probs
    (``"logprob"``). Source: arXiv 2605.07711 and its code (objectives_2026.md); added [INF]: the
    teacher's top-K support and the log-prob form.
    """
    span_dims: bool = True  # one virtual dimension per span that is not one shared token
    span_logit: Literal["logit", "logprob"] = "logit"

    def __post_init__(self):
        super().__post_init__()
        if not isinstance(self.span_dims, bool):
            raise ValueError(f"span_dims must be true or false, got {self.span_dims!r}.")
        choice("span_logit", self.span_logit, ("logit", "logprob"))


@dataclasses.dataclass(frozen=True, kw_only=True)
class LGRConfig(PGRecipe):
    """Look-ahead group rewards (LGR): Tinker's OPD plus ``coef`` times a loss on the student's
    top-``k`` candidates at its ``branch_points`` most uncertain positions per completion (entropy
    at least ``min_entropy`` nats, at the loss temperature), each rewarded by the teacher's
    ``confidence`` one step after it, normalised within the position's group
    (:mod:`opd_jax.objectives.lookahead`; the extras ``lgr_ids``/``lgr_reward``, which the
    training loop's look-ahead teacher computes with one tree-attention pass of a local teacher).

    Loss per token ``-rho_t sg(log q - log mu) + coef * (-sum_k sg(r_k) f(p(v_k)))`` with ``f`` =
    log (``form="logprob"``) or the identity (``"prob"``), averaged over the valid tokens; or
    (``form="advantage"``) ``-rho_t sg(log q - log mu + coef * r(y_t))``, the sampled token's
    group reward (0 where it is not a candidate) added to its advantage. Source:
    arXiv 2605.30833 (abstract: top-K candidates, next-step teacher confidence, group-normalised
    reward, entropy-triggered tree attention). Reconstructed [INF]: ``confidence``, ``form``,
    ``coef``, the trigger as a per-row budget with a floor, and the candidates' rewards as a
    loss term beside OPD rather than a change of its advantage.
    """
    k: int = 4  # candidates per branch point (the student's top-k)
    branch_points: int = 8  # M: look-ahead positions per completion (static shape)
    min_entropy: float = 0.5  # nats: positions below it are never branch points
    confidence: Literal["max_prob", "neg_entropy"] = "max_prob"
    form: Literal["logprob", "prob", "advantage"] = "logprob"
    coef: float = 1.0  # weight of the candidates' loss beside OPD's (0 = OPD exactly)

    def __post_init__(self):
        super().__post_init__()
        check_int("k", self.k, minimum=2)
        check_int("branch_points", self.branch_points, minimum=1)
        if not (isinstance(self.min_entropy, int | float) and math.isfinite(self.min_entropy)
                and self.min_entropy >= 0):
            raise ValueError(f"min_entropy must be a finite number >= 0 (nats), got {self.min_entropy!r}.")
        choice("confidence", self.confidence, ("max_prob", "neg_entropy"))
        choice("form", self.form, ("logprob", "prob", "advantage"))
        if not (isinstance(self.coef, int | float) and math.isfinite(self.coef) and self.coef >= 0):
            raise ValueError(f"coef must be a finite number >= 0, got {self.coef!r}.")


DRAFT_ERROR = "draft_error"  # the extra input: 1 where the token replaced a draft the target rejected


@dataclasses.dataclass(frozen=True, kw_only=True)
class DraftOPDConfig(Recipe):
    """Draft-OPD: a speculative-decoding drafter (the student) matched to its target (the teacher)
    at every position of target-assisted rollouts, the positions where verification rejected a
    draft weighted ``1 + error_weight``.

    Loss ``sum_t w_t D_t / sum_t w_t`` over the batch's valid tokens, ``D_t`` the ``divergence``
    between the teacher's and the student's next-token distributions at the loss temperature
    (``"tv"``: total variation, one minus the chance that speculative sampling accepts the
    student's draft there; ``"forward_kl"``: KL(q || p); ``"reverse_kl"``: KL(p || q)) and
    ``w_t = 1 + error_weight * e_t``, ``e_t`` the extra ``"draft_error"`` that the training loop's
    speculative rollouts (``loop.draft_tokens``) supply. Source: arXiv 2605.29343 (abstract:
    target-assisted rollouts, replay of drafting from the error positions verification exposes).
    Reconstructed [INF]: the divergence, replay as a weight on the error positions (a drafter's
    state there is the rollout's prefix, so a full-distribution loss sees it already), the
    weight.
    """
    divergence: Literal["tv", "forward_kl", "reverse_kl"] = "tv"
    error_weight: float = 1.0  # extra weight of the rejected drafts' positions (0: none, no extra read)

    def __post_init__(self):
        super().__post_init__()
        choice("divergence", self.divergence, ("tv", "forward_kl", "reverse_kl"))
        if not (isinstance(self.error_weight, int | float) and math.isfinite(self.error_weight)
                and self.error_weight >= 0):
            raise ValueError(f"error_weight must be a finite number >= 0, got {self.error_weight!r}.")
