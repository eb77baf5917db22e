"""Shared random batches for the objective tests."""

import jax
import jax.numpy as jnp
import pytest

import opd_jax.objectives as O


def make_batch(seed=0, b=3, t=7, d=8, v=40):
    ks = jax.random.split(jax.random.key(seed), 10)
    hidden = jax.random.normal(ks[0], (b, t, d))
    head = jax.random.normal(ks[1], (d, v)) * 0.7
    t_hidden = jax.random.normal(ks[2], (b, t, d))
    t_head = jax.random.normal(ks[3], (d, v)) * 0.7
    tokens = jax.random.randint(ks[4], (b, t), 0, v)
    lengths = jnp.array([t - 2, t, 2][:b] + [t] * max(0, b - 3))
    mask = jnp.arange(t)[None, :] < lengths[:, None]
    logits = hidden @ head
    top_logp, top_ids = jax.lax.top_k(jax.nn.log_softmax(logits), 4)
    extras = {
        "behavior_logp": O.token_logp(logits, tokens) + 0.05 * jax.random.normal(ks[5], (b, t)),
        "aux_teacher_logp": jax.random.normal(ks[6], (b, t, 3)) - 2.0,
        "bad_teacher_logp": jax.random.normal(ks[7], (b, t)) - 3.0,
        "hidden": hidden, "teacher_hidden": t_hidden,
        "reward": jnp.broadcast_to((jnp.arange(b) % 2).astype(jnp.float32)[:, None], (b, t)),
        # the behaviour policy's top-4 (TopKOPDConfig(k=4, surrogate="ppo")), slightly stale
        "behavior_topk_ids": top_ids,
        "behavior_topk_logp": top_logp + 0.1 * jax.random.normal(ks[9], top_logp.shape),
        # a reference policy's log-probs of the sampled tokens (StableOPDConfig's anchor)
        "ref_logp": O.token_logp(0.8 * logits, tokens),
        # LGR's candidates (the student's top-4) and group rewards, at about half the positions
        "lgr_ids": top_ids,
        "lgr_reward": O.group_rewards(jax.random.uniform(ks[9], top_ids.shape),
                                      jax.random.bernoulli(ks[7], 0.5, (b, t))),
        # Draft-OPD's rejected drafts' positions (about a third)
        "draft_error": jax.random.bernoulli(ks[6], 0.3, (b, t)).astype(jnp.float32),
    }
    return dict(hidden=hidden, head=head, t_hidden=t_hidden, t_head=t_head, tokens=tokens,
                mask=mask, extras=extras, key=ks[8])


def recipe_configs():
    """Every recipe, plus the variants whose vocabulary-wide features differ (another divergence
    or top-k estimator). Variants that only change the per-token arithmetic after the features
    (surrogates, selection, clipping, schedules) are covered by test_recipes against NumPy.
    SimCT is left out: it reads a cross-tokenizer alignment that this batch does not have (its
    own tests: test_virtual_vocab.py)."""
    cfgs = [cls() for cls in O.RECIPES.values() if cls is not O.SimCTConfig]
    cfgs += [O.GKDConfig(beta=0.0), O.GKDConfig(beta=1.0),
             O.AOPDConfig(local="topk_reverse_kl_sg", k=5, surrogate="ppo"),
             O.OPSDConfig(teacher_top_k=8), O.TIPConfig(select="entropy_sampling", gamma=1.0),
             O.UniSDConfig(alpha=0.5, clip="quantile", agreement="token", contrastive_coef=0.1,
                           hidden_coef=0.1),
             O.VOPDConfig(baseline="topk", k=10, surrogate="ppo"),
             O.TopKOPDConfig(support="union", weights="teacher"),
             O.TopKOPDConfig(k=4, surrogate="ppo"), O.TIPConfig(normalize="fixed"),
             O.SEADConfig(student_threshold=2.0, teacher_threshold=2.0),
             O.LGRConfig(form="advantage")]
    cfgs += [O.SGTopKConfig(variant=v, k=6) for v in ("tail", "intersect", "renormalized")]
    return cfgs


@pytest.fixture
def batch():
    return make_batch()
