"""The vocabulary phase: per-token features without holding several ``B x T x V`` arrays.

Three evaluations of the same :class:`~opd_jax.objectives.base.Feature` map, equal in values
and gradients:

- **naive** — the features on whole ``[B, T, V]`` logits (:func:`compute_features` with
  ``chunk_size=None``);
- **chunked** — logits are given, the features run over blocks of ``chunk_size`` positions
  under :func:`jax.checkpoint`, so the forward and the backward hold one block's ``V``-wide
  intermediates at a time;
- **fused** — no logits at all: from the final hidden states and LM-head weights of student
  and teacher, each block's logits are computed, used and dropped (the backward recomputes
  them).

:func:`fused_token_loss` is the one-pass form for token-local objectives: it computes the loss
*and* its gradient with respect to the hidden states and head weights block by block in the
forward pass (as Liger's fused linear losses do), so it needs no recomputation: four
``N x D x V`` matmuls, like the naive loss, and one block of logits in memory.

Blocks run along the sequence axis and keep the batch axis whole, so a batch sharded over
devices stays sharded. Rows where ``mask`` is False are zeroed before any softmax (logits and
any per-token extra a feature reads), and their features are exactly 0 with zero gradient.
"""

from collections.abc import Callable, Mapping
from functools import partial

import jax
import jax.numpy as jnp

from opd_jax.objectives.base import Feature, TokenCtx, VocabInputs, mask_rows
from opd_jax.objectives.topk import TeacherTopK

Array = jax.Array
sg = jax.lax.stop_gradient


def _blocks(x: Array, n: int, c: int) -> Array:
    """``[B, T, ...]`` → ``[n, B, c, ...]``, zero-padding T up to ``n * c``."""
    pad = n * c - x.shape[1]
    if pad:
        x = jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2))
    return jnp.moveaxis(x.reshape(x.shape[0], n, c, *x.shape[2:]), 1, 0)


def _unblock(x: Array, t: int) -> Array:
    """``[n, B, c, ...]`` → ``[B, T, ...]``."""
    x = jnp.moveaxis(x, 0, 1)
    return x.reshape(x.shape[0], -1, *x.shape[3:])[:, :t]


def _head_logits(h: Array, w: Array) -> Array:
    return jnp.einsum("...d,dv->...v", h, w, preferred_element_type=jnp.float32)


def _row_features(features, mask, tokens, logits, teacher_logits, teacher_topk, extras=None):
    """Zero the masked rows, evaluate every feature, zero masked outputs."""
    logits = jnp.where(mask[..., None], logits.astype(jnp.float32), 0.0)
    if teacher_logits is not None:
        teacher_logits = jnp.where(mask[..., None], sg(teacher_logits).astype(jnp.float32), 0.0)
    extras = {k: mask_rows(sg(x), mask) for k, x in (extras or {}).items()}
    v = VocabInputs(logits, teacher_logits, teacher_topk, tokens, extras)
    return {name: jnp.where(mask, f(v).astype(jnp.float32), 0.0) for name, f in features.items()}


def _vocab_extras(features, extras, tokens):
    """The extras the features read (checked: present, ``[B, T, ...]``); the others stay out."""
    extras = dict(extras or {})
    out = {}
    for name, f in features.items():
        for key in f.extra_inputs:
            if key not in extras:
                raise ValueError(f"feature {name!r} reads the extra input {key!r}, which was not "
                                 f"given (extras: {sorted(extras)}); pass the batch's extras to "
                                 "the vocabulary phase (see required_inputs).")
            if extras[key].shape[:2] != tokens.shape:
                raise ValueError(f"extra input {key!r} has shape {extras[key].shape}; extras must "
                                 f"start with [B, T] = {tokens.shape}.")
            out[key] = extras[key]
    return out


def _check_inputs(features, tokens, mask, logits, hidden, head, teacher_logits, teacher_hidden,
                  teacher_head, teacher_topk):
    if tokens.ndim != 2 or mask.shape != tokens.shape:
        raise ValueError(f"tokens and mask must both be [B, T]; got {tokens.shape} and {mask.shape}.")
    if (logits is None) == (hidden is None):
        raise ValueError("give the student as exactly one of `logits` or (`hidden`, `head`).")
    if (hidden is None) != (head is None):
        raise ValueError("`hidden` and `head` go together (final hidden states and LM-head weights).")
    if (teacher_hidden is None) != (teacher_head is None):
        raise ValueError("`teacher_hidden` and `teacher_head` go together.")
    if teacher_logits is not None and teacher_hidden is not None:
        raise ValueError("give the teacher as `teacher_logits` or (`teacher_hidden`, `teacher_head`), "
                         "not both.")
    student = logits if logits is not None else hidden
    if student.shape[:2] != tokens.shape:
        raise ValueError(f"student inputs cover {student.shape[:2]}, tokens cover {tokens.shape}.")
    v = logits.shape[-1] if logits is not None else head.shape[-1]
    if hidden is not None and hidden.shape[-1] != head.shape[0]:
        raise ValueError(f"hidden width {hidden.shape[-1]} does not match head {head.shape}.")
    tv = (teacher_logits.shape[-1] if teacher_logits is not None
          else teacher_head.shape[-1] if teacher_head is not None else v)
    if tv != v:
        raise ValueError(f"vocabulary sizes differ: student V={v}, teacher V={tv}.")
    dense_teacher = teacher_logits is not None or teacher_hidden is not None
    missing = [n for n, f in features.items() if f.needs_teacher_logits and not dense_teacher]
    if missing:
        raise ValueError(f"features {missing} need dense teacher logits, but the teacher was given "
                         "only as top-k log-probs (or not at all).")


def compute_features(features: Mapping[str, Feature], *, tokens: Array, mask: Array,
                     logits: Array | None = None, hidden: Array | None = None,
                     head: Array | None = None, teacher_logits: Array | None = None,
                     teacher_hidden: Array | None = None, teacher_head: Array | None = None,
                     teacher_topk: TeacherTopK | None = None,
                     extras: Mapping[str, Array] | None = None,
                     chunk_size: int | None = None) -> dict[str, Array]:
    """Evaluate named features per token; returns ``{name: float32 [B, T]}``.

    Args:
      features: name → :class:`Feature`.
      tokens: sampled tokens ``int [B, T]`` (the token at each position whose log-prob counts).
      mask: bool ``[B, T]``; False rows give 0.
      logits: student logits ``[B, T, V]`` (naive or chunked), or instead
      hidden, head: final student hidden states ``[B, T, D]`` and LM head ``[D, V]`` (fused).
      teacher_logits, teacher_hidden, teacher_head, teacher_topk: the teacher, dense (logits or
        hidden + head) and/or sparse. Always stop-gradient.
      extras: the batch's per-token extra inputs ``{name: [B, T, ...]}``; only those a feature
        reads (``extra("name")``) are used, without gradient.
      chunk_size: positions per block; None evaluates everything at once (naive). The fused form
        always runs in blocks (default 256 positions).
    """
    _check_inputs(features, tokens, mask, logits, hidden, head, teacher_logits, teacher_hidden,
                  teacher_head, teacher_topk)
    extras = _vocab_extras(features, extras, tokens)
    mask = mask.astype(bool)
    if hidden is None and chunk_size is None:
        return _row_features(features, mask, tokens, logits, teacher_logits, teacher_topk, extras)
    c = 256 if chunk_size is None else chunk_size
    if c < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}.")
    t = tokens.shape[1]
    n = -(-t // c)
    blocked = lambda x: None if x is None else _blocks(x, n, c)  # noqa: E731
    xs = dict(tokens=blocked(tokens), mask=blocked(mask), student=blocked(
        logits if logits is not None else hidden), teacher=blocked(
        None if teacher_logits is None and teacher_hidden is None else
        sg(teacher_logits if teacher_logits is not None else teacher_hidden)),
        topk=None if teacher_topk is None else jax.tree.map(blocked, sg(teacher_topk)),
        extras={k: blocked(sg(v)) for k, v in extras.items()})
    t_head = None if teacher_head is None else sg(teacher_head)

    @jax.checkpoint
    def body(x, head):
        s = x["student"] if hidden is None else _head_logits(x["student"], head)
        tl = x["teacher"]
        if tl is not None and t_head is not None:
            tl = _head_logits(tl, t_head)
        return _row_features(features, x["mask"], x["tokens"], s, tl, x["topk"], x["extras"])

    out = jax.lax.map(lambda x: body(x, head), xs)
    return {k: _unblock(v, t) for k, v in out.items()}


def fused_token_loss(token_loss: Callable[[TokenCtx], Array], features: Mapping[str, Feature], *,
                     tokens: Array, mask: Array, weights: Array, hidden: Array, head: Array,
                     teacher_hidden: Array | None = None, teacher_head: Array | None = None,
                     teacher_topk: TeacherTopK | None = None,
                     extras: Mapping[str, Array] | None = None, step=0,
                     chunk_size: int = 256) -> tuple[Array, dict[str, Array]]:
    """``sum_t weights_t * token_loss(ctx)_t`` and its gradient, in one blocked pass.

    ``token_loss`` must be token-local (each token's loss depends only on that token's features
    and extras); ``weights`` (no gradient) carry the mask and the normalisation, e.g.
    ``mask / mask.sum()`` for a token mean. The gradient with respect to ``hidden`` and
    ``head`` is computed block by block during the forward pass and stored (``[B, T, D]`` and
    ``[D, V]``), so the backward pass is a scaling. The teacher gets no gradient. ``extras``
    (``[B, T, ...]``, no gradient) reach ``token_loss`` and the features that read them.

    Returns:
      ``(loss, feature_values)``, the latter ``{name: [B, T]}`` without gradient (for metrics).
    """
    _check_inputs(features, tokens, mask, None, hidden, head, None, teacher_hidden, teacher_head,
                  teacher_topk)
    _vocab_extras(features, extras, tokens)
    extras = dict(extras or {})
    for name, x in extras.items():
        if x.shape[:2] != tokens.shape:
            raise ValueError(f"extra input {name!r} has shape {x.shape}; extras must start with "
                             f"[B, T] = {tokens.shape}.")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}.")
    return _fused(token_loss, features, chunk_size, hidden, head, tokens, mask.astype(bool),
                  weights.astype(jnp.float32), teacher_hidden, teacher_head, teacher_topk,
                  extras, jnp.asarray(step, jnp.int32))


@partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2))
def _fused(token_loss, features, c, hidden, head, tokens, mask, weights, t_hidden, t_head, topk,
           extras, step):
    (loss, feats), _ = _fused_fwd(token_loss, features, c, hidden, head, tokens, mask, weights,
                                  t_hidden, t_head, topk, extras, step)
    return loss, feats


def _fused_fwd(token_loss, features, c, hidden, head, tokens, mask, weights, t_hidden, t_head,
               topk, extras, step):
    t = tokens.shape[1]
    n = -(-t // c)
    blocked = lambda x: None if x is None else _blocks(x, n, c)  # noqa: E731
    xs = dict(h=blocked(hidden), tokens=blocked(tokens), mask=blocked(mask), w=blocked(weights),
              th=blocked(None if t_hidden is None else sg(t_hidden)),
              topk=None if topk is None else jax.tree.map(blocked, sg(topk)),
              extras={k: blocked(sg(v)) for k, v in extras.items()})
    t_head = None if t_head is None else sg(t_head)

    def block(carry, x):
        loss_acc, dw_acc = carry
        tl = None if x["th"] is None else _head_logits(x["th"], t_head)

        def loss_of_logits(z):
            f = _row_features(features, x["mask"], x["tokens"], z, tl, x["topk"], x["extras"])
            ctx = TokenCtx(mask=x["mask"], features=f, extras=x["extras"], step=step)
            per_token = jnp.where(x["mask"], token_loss(ctx), 0.0)
            return jnp.sum(x["w"] * per_token), f

        z = _head_logits(x["h"], head)
        loss, vjp, f = jax.vjp(loss_of_logits, z, has_aux=True)
        (dz,) = vjp(jnp.ones((), jnp.float32))
        dh = jnp.einsum("...v,dv->...d", dz, head, preferred_element_type=jnp.float32)
        dw = jnp.einsum("...d,...v->dv", x["h"], dz, preferred_element_type=jnp.float32)
        return (loss_acc + loss, dw_acc + dw), (dh.astype(hidden.dtype), sg(f))

    init = (jnp.zeros((), jnp.float32), jnp.zeros(head.shape, jnp.float32))
    (loss, dw), (dh, feats) = jax.lax.scan(block, init, xs)
    feats = {k: _unblock(v, t) for k, v in feats.items()}
    return (loss, feats), (_unblock(dh, t), dw.astype(head.dtype))


def _fused_bwd(token_loss, features, c, res, cotangents):
    dh, dw = res
    g, _ = cotangents  # feature values are reported without gradient
    # each cotangent in its primal's dtype (a bf16 hidden state gets a bf16 gradient)
    return ((g * dh).astype(dh.dtype), (g * dw).astype(dw.dtype)) + (None,) * 8


_fused.defvjp(_fused_fwd, _fused_bwd)
