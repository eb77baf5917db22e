"""Speculative sampling: a drafter proposes ``draft_tokens`` tokens, the target verifies them in one
forward, and the emitted text is distributed exactly as the target's own sampling (Leviathan et
al., arXiv 2211.17192; Chen et al., arXiv 2302.01318). What Draft-OPD (arXiv 2605.29343) trains a
drafter on: target-assisted rollouts, with the positions where verification rejected a draft.

    rollout, stats = speculative_sample((d_graphdef, d_params), (t_graphdef, t_params), prompts,
                                        prompt_mask, key, cfg=cfg, draft_tokens=4)
    stats.acceptance_length()   # completion tokens per target forward

One block, for every unfinished row at once (one ``while_loop`` iteration):

1. the drafter takes the pending token, then its own draws, one token per forward:
   ``gamma + 1`` forwards give drafts ``d_1..d_gamma`` with their distributions ``p_1..p_(gamma+1)``;
2. the target reads ``[pending, d_1..d_gamma]`` in one forward: ``q_1..q_(gamma+1)``;
3. draft ``d_i`` is accepted with probability ``min(1, q_i(d_i) / p_i(d_i))``, up to the first
   rejection; after ``a`` accepted drafts one more token is drawn from ``max(q_(a+1) - p_(a+1), 0)``
   (renormalised), or from ``q_(gamma+1)`` when all were accepted. Both distributions are
   ``token_distribution(logits, cfg)`` (temperature and filters); greedy accepts a draft iff it is
   the target's arg-max and emits the target's arg-max (the target's greedy text, token for token).

Rows accept different numbers of drafts, so each row writes its caches from its own slot
(``KVCache.index`` of shape ``[R]``): a block writes ``gamma + 1`` slots, and the row's next block
starts right after its accepted drafts, overwriting the rejected ones before any query can see
them (attention is causal in slots). The caches hold ``prompt_len - 1 + max_new_tokens + gamma``
slots, ``gamma`` more than plain sampling's.

``Rollout.logp`` and ``teacher_logp`` are the target's log-probability of each emitted token (its
behaviour distribution), ``student_logp`` the drafter's at the same prefix (also for a bonus
token, from the drafter's last forward of the block). ``DraftStats`` counts the blocks, drafts and
acceptances per row and marks the error positions: the columns whose token replaced a rejected draft.

PRNG: row ``r`` owns the stream ``fold_in(key, row_ids[b] * n + j)`` as in ``sample``; block ``k``
uses ``fold_in(stream, k)``, and in it ``fold_in(., i)`` for draft ``i + 1``, ``gamma + 1`` for the
acceptance uniforms and ``gamma + 2`` for the corrected token. Not sharded over a mesh; the
``cache_phases`` and teacher-mixing settings of ``SamplerConfig`` do not apply.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, struct

from opd_jax.models.cache import init_cache
from opd_jax.sampling import distribution as D
from opd_jax.sampling import inputs
from opd_jax.sampling.config import SamplerConfig
from opd_jax.sampling.frozen import is_frozen
from opd_jax.sampling.rollout import Rollout
from opd_jax.sampling.sampler import cache_dtype_for, model_config


@struct.dataclass
class DraftStats:
    """Per row ``[R]``: ``blocks`` (target forwards while the row was unfinished), ``drafted``
    (``gamma`` per block), ``accepted`` (drafts the target accepted, also where an EOS or the token
    limit then cut the block short), ``emitted`` (completion tokens); ``draft_error`` bool
    ``[R, P + N]``: the token at this column was drawn after the target rejected the drafter's."""

    blocks: jax.Array
    drafted: jax.Array
    accepted: jax.Array
    emitted: jax.Array
    draft_error: jax.Array

    def acceptance_length(self) -> float:
        """Completion tokens per target forward, over all rows (``gamma + 1`` at most)."""
        return float(jnp.sum(self.emitted)) / max(float(jnp.sum(self.blocks)), 1.0)

    def acceptance_rate(self) -> float:
        """The fraction of drafted tokens the target accepted."""
        return float(jnp.sum(self.accepted)) / max(float(jnp.sum(self.drafted)), 1.0)


@struct.dataclass
class _State:
    block: jax.Array  # int32 []
    n: jax.Array  # int32 [R]: completion tokens emitted
    done: jax.Array  # bool [R]
    last: jax.Array  # int32 [R]: the pending token (emitted, not yet in either cache)
    pos: jax.Array  # int32 [R]: its position
    d_cache: object
    t_cache: object
    tokens: jax.Array
    mask: jax.Array
    logp: jax.Array
    student_logp: jax.Array
    draft_error: jax.Array
    blocks: jax.Array
    accepted: jax.Array


def _decoder(graphdef, params, max_positions: int):
    """The cached forward of a split model, or of a frozen one (``freeze``), with RoPE tabulated (a
    model without ``decoder()``, a test fake, is called as it is)."""
    if is_frozen(graphdef):
        return params.with_rope_tables(max_positions)
    model = nnx.merge(graphdef, params)
    return model.decoder(max_positions) if hasattr(model, "decoder") else model


def _forward(model, tokens, positions, mask, cache):
    h, cache = model.hidden(tokens, positions, mask=mask, cache=cache)
    return model.logits(h), cache


def _draw(keys, logp, cfg: SamplerConfig):
    """One token per row from log-probabilities ``[R, V]`` (``-inf`` = never): arg-max when greedy."""
    return D.argmax(logp) if cfg.greedy else D.draw(logp, D.uniforms(keys))


def _take(logp_RTV, tokens_RT):
    return jnp.take_along_axis(logp_RTV, tokens_RT[..., None], axis=-1)[..., 0]


def _verify(cfg: SamplerConfig, keys, drafts, lp, lq):
    """Accepted drafts ``a [R]`` and the emitted tokens ``[R, gamma + 1]`` (``d_1..d_a``, then the
    corrected or bonus token, then unused) from the drafts ``[R, gamma]`` and both models'
    log-probabilities ``[R, gamma + 1, V]``."""
    gamma = drafts.shape[1]
    ratio = jnp.exp(jnp.minimum(_take(lq[:, :gamma], drafts) - _take(lp[:, :gamma], drafts), 0.0))
    u = (jnp.zeros(drafts.shape, jnp.float32) if cfg.greedy else
         jax.vmap(lambda k: jax.random.uniform(jax.random.fold_in(k, gamma + 1), (gamma,)))(keys))
    a = jnp.sum(jnp.cumprod(u < ratio, axis=1), axis=1).astype(jnp.int32)
    rows = jnp.arange(drafts.shape[0])
    lq_a = lq[rows, a]
    lp_a = jnp.where((a < gamma)[:, None], lp[rows, a], -jnp.inf)  # after all accepted: q itself
    excess = jnp.exp(lq_a) - jnp.exp(lp_a)
    residual = jnp.where(excess > 0, jnp.log(jnp.maximum(excess, 1e-38)), -jnp.inf)
    # p >= q everywhere only when p == q, where nothing is rejected (up to rounding): q then
    residual = jnp.where(jnp.any(excess > 0, axis=-1, keepdims=True), residual, lq_a)
    fix = _draw(None if cfg.greedy else jax.vmap(jax.random.fold_in, in_axes=(0, None))(keys, gamma + 2),
                residual, cfg)
    cols = jnp.arange(gamma + 1)[None, :]
    padded = jnp.concatenate([drafts, jnp.zeros_like(drafts[:, :1])], axis=1)
    return a, jnp.where(cols < a[:, None], padded, jnp.where(cols == a[:, None], fix[:, None], 0))


def _program(d_graphdef, d_params, t_graphdef, t_params, prompts_BP, mask_BP, key, row_ids_B, max_new, *,
             cfg: SamplerConfig, gamma: int):
    n, N = cfg.num_samples, cfg.max_new_tokens
    B, P = prompts_BP.shape
    R = B * n
    S = P - 1 + N + gamma  # a live row's pending token sits at slot P - 1 + (tokens so far) <= P + N - 2
    drafter, target = _decoder(d_graphdef, d_params, S), _decoder(t_graphdef, t_params, S)
    prompts_RP = jnp.repeat(jnp.where(mask_BP, prompts_BP, cfg.pad_id).astype(jnp.int32), n, axis=0)
    mask_RP = jnp.repeat(mask_BP, n, axis=0)
    positions_RP = jnp.maximum(jnp.cumsum(mask_RP, axis=1, dtype=jnp.int32) - 1, 0)

    def prefill(dec):  # every prompt column but the last (always real): that one is the pending token
        cache = init_cache(dec.cfg, R, S, cfg.cache_dtype).replace(index=jnp.zeros((R,), jnp.int32))
        if P > 1:
            _, cache = dec.hidden(prompts_RP[:, :-1], positions_RP[:, :-1], mask=mask_RP[:, :-1], cache=cache)
        return cache

    streams = jnp.repeat(row_ids_B, n) * n + jnp.tile(jnp.arange(n, dtype=jnp.int32), B)
    # greedy decoding draws no random bits: no key is derived, so none is traced or compiled
    keys_R = None if cfg.greedy else jax.vmap(jax.random.fold_in, in_axes=(None, 0))(key, streams)
    buffer = lambda part, fill=0: jnp.concatenate([part, jnp.full((R, N), fill, part.dtype)], axis=1)  # noqa: E731
    zeros = jnp.zeros((R, P), jnp.float32)
    state = _State(block=jnp.zeros((), jnp.int32), n=jnp.zeros((R,), jnp.int32), done=jnp.zeros((R,), jnp.bool_),
                   last=prompts_RP[:, -1], pos=positions_RP[:, -1], d_cache=prefill(drafter),
                   t_cache=prefill(target), tokens=buffer(prompts_RP, cfg.pad_id), mask=buffer(mask_RP),
                   logp=buffer(zeros), student_logp=buffer(zeros), draft_error=buffer(jnp.zeros((R, P), jnp.bool_)),
                   blocks=jnp.zeros((R,), jnp.int32), accepted=jnp.zeros((R,), jnp.int32))
    eos = jnp.asarray(cfg.eos_ids or (-1,), jnp.int32)

    def cond(s: _State):
        return (s.block < max_new) & ~jnp.all(s.done) & (jnp.max(s.d_cache.index) + gamma + 1 <= S)

    def body(s: _State):
        live = ~s.done
        keys = None if cfg.greedy else jax.vmap(jax.random.fold_in, in_axes=(0, None))(keys_R, s.block)
        start = s.d_cache.index

        def draft(carry, i):
            cache, token = carry
            logits, cache = _forward(drafter, token[:, None], (s.pos + i)[:, None], live[:, None], cache)
            lp = D.token_distribution(logits[:, 0], cfg)
            step_keys = None if cfg.greedy else jax.vmap(jax.random.fold_in, in_axes=(0, None))(keys, i)
            nxt = _draw(step_keys, lp, cfg)
            return (cache, nxt), (nxt, lp)

        (d_cache, _), (drafts, lp) = jax.lax.scan(draft, (s.d_cache, s.last), jnp.arange(gamma + 1))
        drafts, lp = drafts[:gamma].T, lp.transpose(1, 0, 2)  # [R, gamma], [R, gamma + 1, V]
        seq = jnp.concatenate([s.last[:, None], drafts], axis=1)
        cols = jnp.arange(gamma + 1, dtype=jnp.int32)[None, :]
        logits, t_cache = _forward(target, seq, s.pos[:, None] + cols, jnp.broadcast_to(live[:, None], seq.shape),
                                   s.t_cache)
        lq = D.token_distribution(logits, cfg)
        a, out = _verify(cfg, keys, drafts, lp, lq)

        is_eos = jnp.any(out[..., None] == eos[None, None, :], axis=-1)
        emitted = (cols <= a[:, None]) & live[:, None]
        eos_before = jnp.cumsum(is_eos & emitted, axis=1) - (is_eos & emitted)
        keep = emitted & (eos_before == 0) & (s.n[:, None] + cols < max_new)
        where = jnp.where(keep, P + s.n[:, None] + cols, P + N)  # out of range: dropped
        rows = jnp.arange(R)[:, None]
        put = lambda buf, values: buf.at[rows, where].set(values.astype(buf.dtype), mode="drop")  # noqa: E731
        count = jnp.sum(keep, axis=1, dtype=jnp.int32)
        n_new = s.n + count
        # a row's next block starts after its accepted drafts (the rejected ones are overwritten)
        index = jnp.where(live, start + 1 + a, start)
        d_cache, t_cache = d_cache.replace(index=index), t_cache.replace(index=index)
        return s.replace(
            block=s.block + 1, n=n_new, done=s.done | jnp.any(keep & is_eos, axis=1) | (n_new >= max_new),
            last=jnp.where(live, out[jnp.arange(R), a], s.last), pos=jnp.where(live, s.pos + a + 1, s.pos),
            d_cache=d_cache, t_cache=t_cache, tokens=put(s.tokens, out), mask=put(s.mask, keep),
            logp=put(s.logp, _take(lq, out)), student_logp=put(s.student_logp, _take(lp, out)),
            draft_error=put(s.draft_error, (cols == a[:, None]) & (a[:, None] < gamma)),
            blocks=s.blocks + live, accepted=s.accepted + jnp.where(live, a, 0))

    s = jax.lax.while_loop(cond, body, state)
    completion = s.mask & (jnp.arange(P + N) >= P)[None, :]
    positions = jnp.maximum(jnp.cumsum(s.mask, axis=1, dtype=jnp.int32) - 1, 0)
    rollout = Rollout(tokens=s.tokens, mask=s.mask, completion_mask=completion, logp=s.logp, positions=positions,
                      finished=jnp.any(completion & jnp.isin(s.tokens, eos), axis=1),
                      student_logp=s.student_logp, teacher_logp=s.logp, prompt_len=P)
    return rollout, DraftStats(blocks=s.blocks, drafted=s.blocks * gamma, accepted=s.accepted, emitted=s.n,
                               draft_error=s.draft_error)


speculative_program = jax.jit(_program, static_argnames=("d_graphdef", "t_graphdef", "cfg", "gamma"))


def speculative_sample(drafter, target, prompts, prompt_mask, key, *, cfg: SamplerConfig, draft_tokens: int = 4,
                       row_ids=None) -> tuple[Rollout, DraftStats]:
    """``cfg.num_samples`` completions per LEFT-padded prompt, drawn from the target's distribution
    (``cfg``'s temperature and filters) with the drafter proposing ``draft_tokens`` tokens per target
    forward. ``drafter`` and ``target`` are ``(graphdef, params)`` pairs (``nnx.split(model,
    nnx.Param)`` or ``freeze``) of models with one vocabulary. Inputs are checked before tracing."""
    if not isinstance(cfg, SamplerConfig):
        raise TypeError(f"cfg must be a SamplerConfig, got {type(cfg).__name__}")
    for name, pair in (("drafter", drafter), ("target", target)):
        if not isinstance(pair, tuple) or len(pair) != 2:
            raise ValueError(f"{name} must be the pair (graphdef, params) = nnx.split(model, nnx.Param), "
                             f"got {type(pair).__name__}")
    if isinstance(draft_tokens, bool) or not isinstance(draft_tokens, (int, np.integer)) or draft_tokens < 1:
        raise ValueError(f"draft_tokens must be an int >= 1 (tokens the drafter proposes per target forward), "
                         f"got {draft_tokens!r}")
    if cfg.record_topk or cfg.cache_len is not None:
        raise ValueError("speculative sampling sizes its own caches and records no top-k: use a SamplerConfig "
                         f"with cache_len=None and record_topk=0 (got {cfg.cache_len}, {cfg.record_topk})")
    vocab = model_config(*drafter).vocab_size
    t_vocab = model_config(*target).vocab_size
    if t_vocab != vocab:
        raise ValueError(f"the target's vocabulary ({t_vocab}) differs from the drafter's ({vocab}); "
                         "speculative sampling needs one shared tokenizer")
    mask_on_host = inputs.check_prompts(prompts, prompt_mask, vocab)
    inputs.check_ids(cfg, vocab)
    key = inputs.check_key(key)
    row_ids = inputs.check_row_ids(row_ids, prompts.shape[0])
    prompts, prompt_mask = inputs.bucket_prompts(prompts, prompt_mask, mask_on_host, cfg)
    static_cfg = cfg.replace(max_new_tokens=cfg.new_token_bucket(), prompt_buckets=(), new_token_buckets=(),
                             cache_dtype=cache_dtype_for(cfg, drafter[1]))
    return speculative_program(drafter[0], drafter[1], target[0], target[1], prompts, prompt_mask, key, row_ids,
                               np.int32(cfg.max_new_tokens), cfg=static_cfg, gamma=int(draft_tokens))
