r"""Look-ahead group rewards (LGR, Liu et al., arXiv 2605.30833): the student's top-K candidate
tokens at a position, scored by how confident the teacher is one step after each of them.

OPD's teacher grows less confident, and its per-token signal weaker, as the student's own prefix
grows ("supervision fidelity decay"). LGR steers the student, at its uncertain positions, toward
the candidates after which the teacher knows what comes next. The pieces, each pure:

- :func:`branch_points`: the M positions of a row where the student is most uncertain (entropy at
  least ``min_entropy``), where look-ahead is worth a teacher pass ("entropy-triggered");
- :func:`confidence`: the teacher's confidence in its next-token distribution, from its logits one
  step after a candidate (``"max_prob"``: its largest probability; ``"neg_entropy"``: ``-H``);
- :func:`group_rewards`: ``r_k = (c_k - mean_k c) / (std_k c + eps)`` over a position's K
  candidates (zero where the position is not a branch point);
- :func:`candidate_loss` (a vocabulary-phase feature): the student's loss on its candidates,
  ``-sum_k sg(r_k) log p(v_k)`` (``"logprob"``: each candidate as a member of a group, GRPO-style)
  or ``-sum_k sg(r_k) p(v_k)`` (``"prob"``: the gradient of the expected reward over the
  enumerated candidates);
- :func:`sampled_reward`: the reward of the sampled token where it is one of the candidates (0
  elsewhere), to add to a sampled-token advantage (the recipe's ``form="advantage"``).

The training loop's look-ahead teacher (:mod:`opd_jax.teachers.lookahead`) sends the candidates
and their rewards as the extras :data:`LGR_IDS` and :data:`LGR_REWARD`. The paper's abstract fixes
the top-K candidates, the next-step teacher confidence, the group normalisation and the entropy
trigger; the confidence measure, the loss form and its weight beside OPD are reconstructed [INF].
"""

import jax
import jax.numpy as jnp

from opd_jax.objectives import divergences as D

sg = jax.lax.stop_gradient
Array = jax.Array

LGR_IDS = "lgr_ids"  # int32 [B, T, K]: the student's top-K candidates at each branch point
LGR_REWARD = "lgr_reward"  # float32 [B, T, K]: their group rewards (0 off the branch points)
LOOKAHEAD_INPUTS = (LGR_IDS, LGR_REWARD)


def entropy_and_topk(logits, k: int, *, temperature: float = 1.0, where=None):
    """``(H [...], top-k ids [...,  k])`` of the distributions ``softmax(logits / temperature)``."""
    entropy = D.token_entropy(logits, temperature=temperature, where=where)
    return entropy, jax.lax.top_k(logits, k)[1].astype(jnp.int32)


def branch_points(entropy, where, m: int, *, min_entropy: float = 0.0):
    """The ``m`` positions of each row with the highest entropy among ``where`` and at least
    ``min_entropy``: ``(index [B, m] int32, active [B, m] bool)``; an inactive slot (a row with
    fewer such positions) holds some other index and must be ignored."""
    ok = jnp.asarray(where, bool) & (entropy >= min_entropy)
    score = jnp.where(ok, entropy, -jnp.inf)
    top, index = jax.lax.top_k(score, m)
    return index.astype(jnp.int32), jnp.isfinite(top)


def confidence(logits, kind: str = "max_prob", *, temperature: float = 1.0, where=None):
    """The confidence of each distribution ``softmax(logits / temperature)``, ``[...]``."""
    if kind == "max_prob":
        return D.masked(jnp.exp(jnp.max(D.log_probs(logits, temperature=temperature, where=where),
                                        axis=-1)), where)
    if kind == "neg_entropy":
        return -D.token_entropy(logits, temperature=temperature, where=where)
    raise ValueError(f"confidence must be 'max_prob' or 'neg_entropy', got {kind!r}")


def group_rewards(conf, active, *, eps: float = 1e-6):
    """``(c - mean_K c) / (std_K c + eps)`` over the last axis (population std), 0 where not
    ``active`` (``active`` broadcasts against ``conf[..., 0]``)."""
    conf = conf.astype(jnp.float32)
    centered = conf - jnp.mean(conf, axis=-1, keepdims=True)
    std = jnp.sqrt(jnp.mean(centered ** 2, axis=-1, keepdims=True))
    return jnp.where(jnp.asarray(active, bool)[..., None], centered / (std + eps), 0.0)


def candidate_loss(logits, ids, reward, *, temperature: float = 1.0, form: str = "logprob",
                   where=None):
    """``-sum_k sg(reward_k) log p(ids_k)`` (``form="logprob"``) or ``-sum_k sg(reward_k) p(ids_k)``
    (``"prob"``), ``p = softmax(logits / temperature)``; ``logits [..., V]``, ``ids``/``reward``
    ``[..., K]``; returns ``[...]`` (0 where every reward is 0). A candidate of probability 0 has
    log-prob :data:`~opd_jax.objectives.divergences.LOG_FLOOR` (no gradient)."""
    if form not in ("logprob", "prob"):
        raise ValueError(f"form must be 'logprob' or 'prob', got {form!r}")
    logp = D.log_probs(logits, temperature=temperature, where=where)
    cand = D.floor_log_probs(jnp.take_along_axis(logp, jnp.asarray(ids, jnp.int32), axis=-1))
    if form == "prob":
        cand = jnp.exp(cand)
    return D.masked(-jnp.sum(sg(reward).astype(jnp.float32) * cand, axis=-1), where)


def sampled_reward(tokens, ids, reward):
    """``sum_k reward_k [ids_k == token]``: the group reward of each sampled token that is one of
    its position's candidates, 0 elsewhere; ``tokens [...]``, ``ids``/``reward`` ``[..., K]``
    (the candidates are distinct, so at most one term counts)."""
    hit = jnp.asarray(ids, jnp.int32) == jnp.asarray(tokens, jnp.int32)[..., None]
    return jnp.sum(jnp.where(hit, sg(reward).astype(jnp.float32), 0.0), axis=-1)
