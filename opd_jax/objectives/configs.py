"""The recipes' typed configs: one frozen dataclass per method, validated on construction.

A config holds every choice of its method, including the uncertain ones (each documented in
:mod:`opd_jax.objectives.recipes`' table); :func:`make_config` builds one by name, which is how
``--set objective=<name>`` reaches it. The 2026 methods' configs are in
:mod:`opd_jax.objectives.configs_2026`; :data:`RECIPES` (in :mod:`opd_jax.objectives.recipes`)
names them all.
"""

import dataclasses
from typing import Literal

Surrogate = Literal["is", "ppo"]


def positive(name, value):
    if not value > 0:
        raise ValueError(f"{name} must be > 0, got {value}.")


def unit(name, value, *, open_low=False, open_high=False):
    lo_ok = value > 0 if open_low else value >= 0
    hi_ok = value < 1 if open_high else value <= 1
    if not (lo_ok and hi_ok):
        raise ValueError(f"{name} must lie in {'(' if open_low else '['}0, 1"
                         f"{')' if open_high else ']'}, got {value}.")


def choice(name, value, options):
    if value not in options:
        raise ValueError(f"{name} must be one of {options}, got {value!r}.")


def check_int(name, value, *, minimum):
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}.")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Recipe:
    """Fields every recipe has."""
    temperature: float = 1.0  # loss temperature for student and teacher logits

    def __post_init__(self):
        positive("temperature", self.temperature)


@dataclasses.dataclass(frozen=True, kw_only=True)
class PGRecipe(Recipe):
    """A recipe whose loss is a policy-gradient surrogate in the sampled token's ratio."""
    surrogate: Surrogate = "is"  # "is": -A rho; "ppo": PPO-clipped in rho (behaviour log-prob)
    clip_eps: float = 0.2  # PPO clip (surrogate = "ppo")

    def __post_init__(self):
        super().__post_init__()
        choice("surrogate", self.surrogate, ("is", "ppo"))
        if not self.clip_eps >= 0:
            raise ValueError(f"clip_eps must be >= 0, got {self.clip_eps}.")


@dataclasses.dataclass(frozen=True, kw_only=True)
class OPDConfig(PGRecipe):
    """Sampled-token reverse-KL OPD (Thinking Machines / Tinker)."""
    kl_coef: float = 1.0  # c in A_t = -c * (log mu(y_t) - log q(y_t))
    discount: float = 0.0  # gamma of the discounted future sum (0 = per-token)
    # "token_mean": mean over the batch's valid tokens; "sum_per_sequence": each sequence's
    # token losses summed (Tinker's importance_sampling loss), then the mean over sequences
    reduction: Literal["token_mean", "sum_per_sequence"] = "token_mean"

    def __post_init__(self):
        super().__post_init__()
        unit("discount", self.discount)
        choice("reduction", self.reduction, ("token_mean", "sum_per_sequence"))


@dataclasses.dataclass(frozen=True, kw_only=True)
class GKDConfig(Recipe):
    """Generalized KD: full-vocabulary JSD(beta) (TRL's convention: 0 = forward, 1 = reverse KL).

    GKD's lambda (the fraction of on-policy batches, 0.5 by default for this recipe) and
    ``seq_kd`` belong to the training loop (``loop.lmbda``, ``loop.seq_kd``); see
    :func:`opd_jax.objectives.loop_defaults`."""
    beta: float = 0.5

    def __post_init__(self):
        super().__post_init__()
        unit("beta", self.beta)


@dataclasses.dataclass(frozen=True, kw_only=True)
class EOPDConfig(Recipe):
    """PPO-clipped OPD plus forward KL on the teacher's top-k where the teacher's entropy > tau."""
    tau: float = 0.8  # nats
    k: int = 16
    clip_eps: float = 0.2
    fkl_coef: float = 1.0
    soft_width: float | None = None  # None: hard gate; else sigmoid((H - tau) / soft_width)

    def __post_init__(self):
        super().__post_init__()
        positive("k", self.k)
        if self.soft_width is not None:
            positive("soft_width", self.soft_width)


@dataclasses.dataclass(frozen=True, kw_only=True)
class AOPDConfig(PGRecipe):
    """Policy gradient where A > 0, a local divergence (weight alpha) where A <= 0."""
    alpha: float = 1.0
    local: Literal["reverse_kl", "forward_kl", "topk_reverse_kl_sg"] = "reverse_kl"
    k: int = 16  # for local = topk_reverse_kl_sg

    def __post_init__(self):
        super().__post_init__()
        choice("local", self.local, ("reverse_kl", "forward_kl", "topk_reverse_kl_sg"))


@dataclasses.dataclass(frozen=True, kw_only=True)
class REOPOLDConfig(PGRecipe):
    """Relaxed OPD: reward clipping at F(lambda), student-entropy token selection, two stages."""
    lam: float = 0.2
    floor_reading: Literal["log_odds", "log_over"] = "log_odds"
    clip: bool = True
    entropy_select: bool = True
    top_frac: float = 0.5  # beta: fraction of tokens kept by student entropy
    switch_step: int | None = None  # exploration (reward mask) before it, refinement after

    def __post_init__(self):
        super().__post_init__()
        unit("lam", self.lam, open_low=True, open_high=True)
        unit("top_frac", self.top_frac, open_low=True)
        choice("floor_reading", self.floor_reading, ("log_odds", "log_over"))


@dataclasses.dataclass(frozen=True, kw_only=True)
class TIPConfig(Recipe):
    """Token-importance selection, then reverse-KL OPD on the selected tokens only."""
    select: Literal["all", "soft_or", "entropy_sampling", "random", "q3"] = "soft_or"
    frac: float = 0.5  # rho: keeps max(floor(rho * N), 1) of the N valid tokens
    normalize: Literal["minmax", "fixed"] = "minmax"  # per-batch min-max, or h/ln V and JSD/ln 2
    alpha: float = 1.0  # entropy exponent (entropy_sampling)
    gamma: float = 0.0  # divergence exponent (entropy_sampling)
    q3_threshold: float = 0.5

    def __post_init__(self):
        super().__post_init__()
        choice("select", self.select, ("all", "soft_or", "entropy_sampling", "random", "q3"))
        choice("normalize", self.normalize, ("minmax", "fixed"))
        unit("frac", self.frac, open_low=True)


@dataclasses.dataclass(frozen=True, kw_only=True)
class OPSDConfig(Recipe):
    """On-policy self-distillation: JSD(beta) to the same model seeing privileged context."""
    temperature: float = 1.1
    beta: float = 0.5
    teacher_top_k: int | None = None  # renormalise both on the teacher's top-k
    loss: Literal["jsd", "sampled"] = "jsd"  # or the sampled-token PG of its Eq. 9

    def __post_init__(self):
        super().__post_init__()
        unit("beta", self.beta)
        choice("loss", self.loss, ("jsd", "sampled"))


@dataclasses.dataclass(frozen=True, kw_only=True)
class UniSDConfig(Recipe):
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
        unit("alpha", self.alpha)
        choice("clip", self.clip, ("none", "static", "quantile"))
        choice("agreement", self.agreement, ("none", "token", "sequence"))


@dataclasses.dataclass(frozen=True, kw_only=True)
class SGTopKConfig(Recipe):
    """Top-k reverse KL on the student's top-k (Many Faces), stop-gradient by default."""
    k: int = 20
    variant: Literal["sg", "plain", "tail", "intersect", "renormalized"] = "sg"

    def __post_init__(self):
        super().__post_init__()
        positive("k", self.k)
        choice("variant", self.variant, ("sg", "plain", "tail", "intersect", "renormalized"))


@dataclasses.dataclass(frozen=True, kw_only=True)
class VOPDConfig(PGRecipe):
    """Sampled-token OPD with vOPD's closed-form baseline ``-KL(p_t || q_t)``."""
    baseline: Literal["full", "topk"] = "full"
    k: int = 100
    # lambda of vOPD's optional reward clipping max(r_t, log(lambda) / (1 - lambda)); None = off
    reward_clip: float | None = None

    def __post_init__(self):
        super().__post_init__()
        choice("baseline", self.baseline, ("full", "topk"))
        if self.reward_clip is not None:
            unit("reward_clip", self.reward_clip, open_low=True, open_high=True)


@dataclasses.dataclass(frozen=True, kw_only=True)
class TopKOPDConfig(Recipe):
    """Rethinking-OPD's top-k policy gradient (see :mod:`opd_jax.objectives.topk_opd`)."""
    k: int = 16
    support: Literal["student", "overlap", "non_overlap", "teacher", "union"] = "student"
    weights: Literal["student", "teacher", "uniform"] = "student"
    # "ppo": clipped in each top-k token's ratio to the behaviour policy, whose top-k ids and
    # log-probs the sampler must record (extras behavior_topk_ids / behavior_topk_logp)
    surrogate: Surrogate = "is"
    clip_eps: float = 0.2

    def __post_init__(self):
        super().__post_init__()
        positive("k", self.k)
        choice("support", self.support, ("student", "overlap", "non_overlap", "teacher", "union"))
        choice("weights", self.weights, ("student", "teacher", "uniform"))
        choice("surrogate", self.surrogate, ("is", "ppo"))
        if self.surrogate == "ppo" and self.support not in ("student", "overlap"):
            raise ValueError(f"surrogate='ppo' needs behaviour log-probs of every support token; "
                             f"the sampler records the student's top-k only, so support must be "
                             f"'student' or 'overlap', got {self.support!r}.")


@dataclasses.dataclass(frozen=True, kw_only=True)
class SFTConfig(Recipe):
    """Supervised fine-tuning: cross-entropy on the given tokens (teacher rollouts, data)."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class ReinforceConfig(Recipe):
    """REINFORCE with a per-token ``reward`` extra (the sequence reward broadcast over its tokens)."""
    baseline: Literal["none", "batch_mean"] = "batch_mean"

    def __post_init__(self):
        super().__post_init__()
        choice("baseline", self.baseline, ("none", "batch_mean"))
