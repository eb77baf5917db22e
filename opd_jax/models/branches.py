"""One-token branches off a sequence, all in one forward (tree attention).

A branch puts a candidate token in place of the token at some column ``c`` of a row: it reads the
row's real tokens in columns ``< c`` and sits at column ``c``'s position, so its final hidden state
is the model's state after the prefix ``tokens[:c]`` followed by the candidate, the one that
predicts the token after it. Every branch of a batch is appended to its row as an extra token that
attends to its own prefix and itself only, and the row's own tokens attend causally as usual (they
never see a branch), so the one forward also gives the row's ordinary hidden states.

Used by look-ahead scoring (LGR: how confident a teacher is one step after each candidate token of
the student, :mod:`opd_jax.teachers.lookahead`). The cost is one forward over ``T + M * K`` tokens
instead of ``M * K`` forwards over prefixes.
"""

import jax.numpy as jnp

from opd_jax.models import ops


def branch_hidden(model, tokens, positions, mask, cols, candidates):
    """Final hidden states of a row and of its branches, in one forward.

    Args:
      model: a :class:`~opd_jax.models.Transformer` (its ``hidden`` takes ``visible=``).
      tokens, positions, mask: the rows ``[B, T]`` (int32 ids, RoPE positions, real-token mask).
      cols: int32 ``[B, M]``, the column each branch point replaces, in ``[1, T)`` (a branch
        at column ``c`` reads columns ``< c``).
      candidates: int32 ``[B, M, K]``, the K candidate tokens tried at each branch point.

    Returns:
      ``(h_rows [B, T, D], h_branches [B, M, K, D])``: the rows' hidden states (equal to
      ``model.hidden(tokens, positions, mask=mask)``'s) and each candidate's, the state that
      predicts the token after it.
    """
    tokens, positions = jnp.asarray(tokens, jnp.int32), jnp.asarray(positions, jnp.int32)
    mask, cols = jnp.asarray(mask, jnp.bool_), jnp.asarray(cols, jnp.int32)
    candidates = jnp.asarray(candidates, jnp.int32)
    B, T = tokens.shape
    if cols.ndim != 2 or cols.shape[0] != B or candidates.shape[:2] != cols.shape \
            or candidates.ndim != 3:
        raise ValueError(f"cols must be [B={B}, M] and candidates [B, M, K]; got {cols.shape} and "
                         f"{candidates.shape}")
    M, K = candidates.shape[1:]
    n = M * K
    col_Bn = jnp.repeat(cols, K, axis=1)
    all_tokens = jnp.concatenate([tokens, candidates.reshape(B, n)], axis=1)
    all_positions = jnp.concatenate([positions, jnp.take_along_axis(positions, col_Bn, axis=1)], 1)
    all_mask = jnp.concatenate([mask, jnp.ones((B, n), jnp.bool_)], axis=1)
    rows_BTT = ops.visibility(mask, jnp.arange(T, dtype=jnp.int32), T)
    prefix_BnT = (jnp.arange(T)[None, None, :] < col_Bn[:, :, None]) & mask[:, None, :]
    itself_Bnn = jnp.broadcast_to(jnp.eye(n, dtype=jnp.bool_), (B, n, n))
    visible = jnp.concatenate([
        jnp.concatenate([rows_BTT, jnp.zeros((B, T, n), jnp.bool_)], axis=2),
        jnp.concatenate([prefix_BnT, itself_Bnn], axis=2)], axis=1)
    h, _ = model.hidden(all_tokens, all_positions, mask=all_mask, visible=visible)
    return h[:, :T], h[:, T:].reshape(B, M, K, h.shape[-1])

