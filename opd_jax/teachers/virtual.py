"""The teacher's side of SimCT's virtual vocabulary (``objective=simct`` with
``teacher.kind="cross_tokenizer"``; the loss: :mod:`opd_jax.objectives.virtual_vocab`).

- :func:`shared_vocabulary`: the pairs of token ids, one per tokenizer, that write the same text
  (read as what each token adds after a copy of itself, so a leading space that a decoder drops
  at the start of a text counts; tokens that write nothing, part of a character, or the same
  text as another token of their vocabulary are left out; optionally also those that the same
  characters would not extend alike on both sides).
- :func:`teacher_scores` (jitted): the teacher's log-prob of each of its completion tokens, its
  log-normaliser, and at each position its ``k`` most likely shared tokens with their log-probs
  (full-vocabulary log-softmax at the loss temperature), computed over blocks of positions.
- :func:`virtual_extras` (host): those scores at each span's first student token, in the
  student's ids, with the extra inputs the loss reads.
"""

import numpy as np
import jax
import jax.numpy as jnp
from flax import nnx

from opd_jax.objectives import virtual_vocab as VV
from opd_jax.objectives.divergences import LOG_FLOOR
from opd_jax.teachers.spans import REPLACEMENT, Extensions, decode_many
from opd_jax.training.batch import Sequences, completion_hidden

sg = jax.lax.stop_gradient


def token_texts(tokenizer) -> dict[str, int]:
    """The text each token id of ``tokenizer`` writes, for the ids whose text is unambiguous."""
    ids = list(range(len(tokenizer)))
    one = decode_many(tokenizer, [[i] for i in ids])
    two = decode_many(tokenizer, [[i, i] for i in ids])
    seen: dict[str, int] = {}
    dropped = set()
    for i, a, b in zip(ids, one, two):
        piece = b[len(a):] if b.startswith(a) else ""
        if not piece or REPLACEMENT in a or REPLACEMENT in b or piece in dropped:
            continue
        if piece in seen:
            dropped.add(piece)
            del seen[piece]
            continue
        seen[piece] = i
    return seen


def shared_vocabulary(student_tokenizer, teacher_tokenizer, *, consistent: bool = False,
                      extensions: tuple[Extensions, Extensions] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(student_ids, teacher_ids)``, int32 ``[S]``: the tokens both vocabularies write alike.

    ``consistent``: only those whose text the same characters would extend on both sides
    (:class:`~opd_jax.teachers.spans.Extensions`): a digit-by-digit vocabulary's ``"2"`` and a
    number vocabulary's ``"2"`` write the same text but are different events (the second also
    says that no digit follows), so they are left out. One tokenization per shared token and probe
    character, once per run: 15 s for 8,064 shared tokens on 2 CPU cores (scratch measurement,
    the BPE pair of benchmarks/bench_alignment.py), so a few minutes for ~150k.
    """
    s, t = token_texts(student_tokenizer), token_texts(teacher_tokenizer)
    both = sorted(set(s) & set(t), key=lambda p: t[p])
    if consistent and both:
        ext = extensions or (Extensions(student_tokenizer), Extensions(teacher_tokenizer))
        both = [p for p, a, b in zip(both, ext[0](both), ext[1](both)) if a == b]
    if not both:
        raise ValueError(f"objective=simct: the student's and the teacher's tokenizers share no "
                         f"token{' that extends alike' if consistent else ' text'}, so there is no "
                         "virtual vocabulary to match; use objective=opd (span log-ratios need no "
                         "shared tokens)")
    return (np.asarray([s[p] for p in both], np.int32), np.asarray([t[p] for p in both], np.int32))


def _scores(graphdef, params, seq: Sequences, targets, group, temperature, chunk, shared, k):
    model = nnx.merge(graphdef, sg(params))
    hidden = completion_hidden(model, seq, targets.shape[1], group)
    head = model.lm_head_weight()
    b, n = targets.shape
    blocks = -(-n // chunk)
    pad = blocks * chunk - n
    h = jnp.pad(hidden, ((0, 0), (0, pad), (0, 0))).reshape(b, blocks, chunk, -1)
    y = jnp.pad(targets, ((0, 0), (0, pad))).reshape(b, blocks, chunk)

    def block(x):
        hb, yb = x
        z = jnp.einsum("bcd,dv->bcv", hb, head, preferred_element_type=jnp.float32) / temperature
        lse = jax.nn.logsumexp(z, axis=-1)  # once: the log-probs and the span's logit form read it
        lq = z - lse[..., None]
        own = jnp.take_along_axis(lq, yb[..., None], axis=-1)[..., 0]
        top, where = jax.lax.top_k(lq[..., shared], k)
        return own, lse, top, where.astype(jnp.int32)

    out = jax.lax.map(block, (jnp.moveaxis(h, 1, 0), jnp.moveaxis(y, 1, 0)))
    return tuple(jnp.moveaxis(x, 0, 1).reshape(b, blocks * chunk, *x.shape[3:])[:, :n] for x in out)


# (graphdef, params, sequences, targets [B, N], rows sharing a prompt, temperature, positions per
# block, shared teacher ids [S], k) -> (own log-probs [B, N], log-normalisers [B, N], top-k
# log-probs [B, N, k], their indices into the shared ids [B, N, k]).
teacher_scores = jax.jit(_scores, static_argnums=(0, 4, 5, 6, 8))


def _runs(span: np.ndarray):
    """``(ids, first, last)`` of the spans of one row's span indices (``-1``: none), in order."""
    pos = np.flatnonzero(span >= 0)
    k = span[pos]
    first = np.r_[True, k[1:] != k[:-1]] if len(k) else np.zeros(0, bool)
    last = np.r_[k[1:] != k[:-1], True] if len(k) else np.zeros(0, bool)
    return k[first], pos[first], pos[last]


def virtual_extras(own, top, where, t_span, s_span, t_ids, s_ids, shared: tuple[np.ndarray, np.ndarray],
                   lse: np.ndarray | None = None):
    """The sparse teacher and the extra inputs of :mod:`opd_jax.objectives.virtual_vocab` for local
    rows: arrays ``[R, N]`` (``[R, N, k]`` for the top-k) on the student's positions, filled at
    each span's first token. ``own``/``top``/``where`` are :func:`teacher_scores`' (teacher
    positions), ``t_span``/``s_span`` both sides' span indices, ``t_ids``/``s_ids`` the tokens.
    The span's value is the mean of its own log-probs, or with the log-normalisers ``lse`` the
    mean of its own logits less the start's log-normaliser (``span_logit="logit"``)."""
    s_shared, t_shared = shared
    pair = dict(zip(s_shared.tolist(), t_shared.tolist()))
    r_n, n = s_span.shape
    k = top.shape[-1]
    ids = np.zeros((r_n, n, k), np.int32)
    logp = np.full((r_n, n, k), LOG_FLOOR, np.float32)
    ex = {name: np.zeros((r_n, n), np.float32) for name in VV.VIRTUAL_INPUTS}
    ex[VV.XTOK_END] = np.zeros((r_n, n), np.int32)
    for r in range(r_n):
        s_k, s0, s1 = _runs(s_span[r])
        t_k, t0, t1 = _runs(t_span[r])
        at = np.searchsorted(t_k, s_k)  # every student span has its teacher span (same index)
        t0, t1 = t0[at], t1[at]
        logit = own[r] if lse is None else own[r].astype(np.float64) + lse[r]
        cum = np.r_[0.0, np.cumsum(logit, dtype=np.float64)]
        one = (s1 == s0) & (t1 == t0)
        same = np.array([pair.get(int(s_ids[r, a])) == int(t_ids[r, b]) for a, b in zip(s0, t0)], bool)
        ids[r, s0] = s_shared[where[r, t0]]
        logp[r, s0] = top[r, t0]
        ex[VV.XTOK_START][r, s0] = 1.0
        ex[VV.XTOK_END][r, s0] = s1
        ex[VV.XTOK_SPAN_DIM][r, s0] = ~(one & same)
        ex[VV.XTOK_SPAN_LOGP][r, s0] = (cum[t1 + 1] - cum[t0]) / (t1 - t0 + 1) - (0 if lse is None else lse[r, t0])
        ex[VV.XTOK_LOG_MASS][r, s0] = np.logaddexp.reduce(top[r, t0].astype(np.float64), axis=-1)
    return ids, logp, ex
