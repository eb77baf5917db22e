"""Pieces shared by the recipe builders: the sampled-token features, the advantage of
Tinker's OPD and the policy-gradient surrogate a config names."""

from opd_jax.objectives import advantages as A
from opd_jax.objectives import divergences as D
from opd_jax.objectives import surrogates as P
from opd_jax.objectives.base import TEACHER_LOGITS, TokenCtx, feature
from opd_jax.objectives.configs import PGRecipe


def sampled_features(t: float, dense_teacher: bool) -> dict:
    """``logp`` (the student's log-prob of the sampled token, with gradient) and, for a dense
    teacher, ``teacher_logp`` (a sparse teacher brings it as an extra input)."""
    f = {"logp": feature(D.token_logp, "logits", "tokens", temperature=t)}
    if dense_teacher:
        f["teacher_logp"] = feature(D.token_logp, TEACHER_LOGITS, "tokens", temperature=t)
    return f


def pg_loss(ctx: TokenCtx, advantage, cfg: PGRecipe):
    """The per-token surrogate of ``cfg.surrogate`` in the ratio to the behaviour policy."""
    m = ctx.mask.astype(bool)
    if cfg.surrogate == "is":
        return P.importance_sampling_loss(ctx.logp, ctx.behavior_logp, advantage, where=m)
    return P.ppo_clip_loss(ctx.logp, ctx.behavior_logp, advantage, eps=cfg.clip_eps, where=m)


def tinker_advantage(ctx: TokenCtx, coef: float = 1.0):
    """``coef * sg(log q(y_t) - log mu(y_t))`` with the sampler's recorded ``mu``."""
    return A.opd_advantage(ctx.teacher_logp, ctx.behavior_logp, coef=coef,
                           where=ctx.mask.astype(bool))
