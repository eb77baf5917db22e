"""Tree-attention branches (opd_jax.models.branches) against one plain forward per branch."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hf_reference import padded_batch, random_model
from opd_jax.models import tiny_config
from opd_jax.models.branches import branch_hidden

TOL = 2e-5


def _one_by_one(model, tokens, positions, mask, cols, candidates):
    """Each branch as its own forward over the real prefix tokens and the candidate."""
    B, M, K = candidates.shape
    out = np.zeros((B, M, K, model.cfg.hidden_size), np.float32)
    for b in range(B):
        for m in range(M):
            c = int(cols[b, m])
            keep = mask[b, :c]
            for k in range(K):
                tok = np.concatenate([tokens[b, :c][keep], [candidates[b, m, k]]])
                pos = np.concatenate([positions[b, :c][keep], [positions[b, c]]])
                h, _ = model.hidden(jnp.asarray(tok[None], jnp.int32), jnp.asarray(pos[None], jnp.int32))
                out[b, m, k] = np.asarray(h[0, -1])
    return out


@pytest.mark.parametrize("arch", ["qwen3", "llama"])
def test_branches_equal_separate_forwards_and_rows_are_unchanged(arch):
    model = random_model(tiny_config(arch), 0)
    rng = np.random.RandomState(3)
    T, M, K = 12, 3, 2
    tokens = rng.randint(0, model.cfg.vocab_size, (3, T)).astype(np.int32)
    mask = padded_batch(model.cfg.vocab_size, (12, 9, 6), T)[1]  # left padding 0, 3, 6
    positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0).astype(np.int32)
    cols = np.stack([rng.choice(np.arange(7, T), M, replace=False) for _ in range(3)]).astype(np.int32)
    cols[0, 0] = 1  # a branch right after the first token
    candidates = rng.randint(0, model.cfg.vocab_size, (3, M, K)).astype(np.int32)
    h_rows, h_branches = jax.jit(lambda *a: branch_hidden(model, *a))(tokens, positions, mask, cols,
                                                                      candidates)
    plain, _ = model.hidden(tokens, positions, mask=mask)
    np.testing.assert_allclose(np.asarray(h_rows)[mask], np.asarray(plain)[mask], atol=TOL, rtol=0)
    expected = _one_by_one(model, tokens, positions, mask, cols, candidates)
    np.testing.assert_allclose(np.asarray(h_branches), expected, atol=TOL, rtol=0)


def test_a_branch_with_the_rows_own_token_is_the_rows_state():
    model = random_model(tiny_config("qwen3"), 1)
    tokens = np.random.RandomState(0).randint(0, model.cfg.vocab_size, (2, 8)).astype(np.int32)
    mask = np.ones((2, 8), bool)
    positions = np.tile(np.arange(8, dtype=np.int32), (2, 1))
    cols = np.array([[2, 5], [7, 4]], np.int32)
    own = np.take_along_axis(tokens, cols, axis=1)[..., None]
    h_rows, h_branches = branch_hidden(model, tokens, positions, mask, cols, own)
    np.testing.assert_allclose(np.asarray(h_branches)[..., 0, :],
                               np.take_along_axis(np.asarray(h_rows), cols[..., None], axis=1),
                               atol=TOL, rtol=0)


def test_bad_shapes_are_refused():
    model = random_model(tiny_config("qwen3"), 0)
    tokens = np.zeros((2, 6), np.int32)
    with pytest.raises(ValueError, match=r"cols must be \[B=2, M\]"):
        branch_hidden(model, tokens, tokens, tokens > -1, np.ones((2, 3), np.int32),
                      np.ones((2, 2, 4), np.int32))
    with pytest.raises(ValueError, match=r"visible must be \[B, T, T\]"):
        model.hidden(tokens, tokens, visible=np.ones((2, 6, 5), bool))
