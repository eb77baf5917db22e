"""Speculative sampling: greedy gives the target's own greedy text; sampled text has the target's
law (two-token joint against the exact one from full forwards, within the spread of exact draws);
the recorded log-probabilities are both models' from full forwards; the counts add up; bad input
is refused before tracing."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from sampling_helpers import left_padded, split_model
from opd_jax.sampling import SamplerConfig, freeze, sample
from opd_jax.sampling.speculative import speculative_sample

V = 16


def _peaked(seed: int, scale: float = 25.0):
    """A random tiny model whose next-token distributions are far from uniform (the tied
    embedding scaled: the logits grow, RMSNorm undoes it on the way in)."""
    _, graphdef, params = split_model("qwen3", seed=seed, vocab_size=V)
    params = jax.tree.map(lambda x: x, params)
    params["embed"].set_value(params["embed"].get_value() * scale)
    return nnx.merge(graphdef, params), graphdef, params


@pytest.mark.parametrize("gamma", [1, 3])
def test_greedy_speculative_text_is_the_targets_greedy_text(gamma):
    _, t_graphdef, t_params = split_model("qwen3", seed=0)
    _, d_graphdef, d_params = split_model("qwen3", seed=1)
    # eos 28 is what row 0's greedy text reaches early: rows stop at different blocks
    tokens, mask = left_padded(97, (3, 7, 1, 5), 8)
    cfg = SamplerConfig(max_new_tokens=12, temperature=0.0, eos_ids=(28,), pad_id=0, num_samples=2)
    want = sample(t_graphdef, t_params, tokens, mask, jax.random.key(0), cfg=cfg)
    got, stats = speculative_sample((d_graphdef, d_params), (t_graphdef, t_params), tokens, mask,
                                    jax.random.key(0), cfg=cfg, draft_tokens=gamma)
    for field in ("tokens", "mask", "completion_mask", "positions", "finished"):
        np.testing.assert_array_equal(np.asarray(getattr(got, field)), np.asarray(getattr(want, field)), field)
    assert np.asarray(want.finished).any() and not np.asarray(want.finished).all()
    np.testing.assert_array_equal(np.asarray(stats.emitted), np.asarray(want.completion_mask).sum(1))
    # the drafter as the target: every draft accepted, gamma + 1 tokens per block (the last one cut)
    _, same = speculative_sample((t_graphdef, t_params), (t_graphdef, t_params), tokens, mask,
                                 jax.random.key(0), cfg=cfg, draft_tokens=gamma)
    np.testing.assert_array_equal(np.asarray(same.accepted), np.asarray(same.drafted))
    np.testing.assert_array_equal(np.asarray(same.blocks), -(-np.asarray(same.emitted) // (gamma + 1)))
    assert not np.asarray(same.draft_error).any()


def test_sampled_text_has_the_targets_law_and_both_models_log_probs():
    target, t_graphdef, t_params = _peaked(0)
    drafter, d_graphdef, d_params = _peaked(1)
    prompt = np.array([[3, 7, 2]], np.int32)
    M = 6000  # rows, one PRNG stream each

    def next_probs(model, tokens):
        logits, _ = model(jnp.asarray(tokens), jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape))
        return np.asarray(jax.nn.softmax(logits[:, -1]), np.float64)

    q1, p1 = next_probs(target, prompt)[0], next_probs(drafter, prompt)[0]
    extended = np.concatenate([np.repeat(prompt, V, 0), np.arange(V, dtype=np.int32)[:, None]], axis=1)
    joint = q1[:, None] * next_probs(target, extended)  # exact law of the first two tokens
    assert 0.5 * np.abs(p1 - q1).sum() > 0.3  # the drafter is often rejected at the first token

    cfg = SamplerConfig(max_new_tokens=3, temperature=1.0)
    rollout, stats = speculative_sample((d_graphdef, d_params), (t_graphdef, t_params), np.repeat(prompt, M, 0),
                                        np.ones((M, 3), bool), jax.random.key(1), cfg=cfg, draft_tokens=2)
    P = rollout.prompt_len
    first_two = np.asarray(rollout.tokens)[:, P:P + 2]
    freq = np.zeros((V, V))
    np.add.at(freq, (first_two[:, 0], first_two[:, 1]), 1.0 / M)
    tv = 0.5 * np.abs(freq - joint).sum()
    rng = np.random.default_rng(0)  # the TV of M exact draws from the joint, 200 times
    null = [0.5 * np.abs(rng.multinomial(M, joint.ravel() / joint.sum()) / M - joint.ravel()).sum()
            for _ in range(200)]
    # correct: 0.069 (null median 0.073, max 0.086); the correction drawn from q instead of
    # max(q - p, 0) gives 0.21
    assert tv < max(null), (tv, np.quantile(null, [0.5, 1.0]))
    assert 0.2 < stats.acceptance_rate() < 0.8 and np.asarray(stats.draft_error).any()

    # logp: the target's probability of each emitted token; student_logp: the drafter's (256 rows)
    rows = slice(0, 256)
    tokens = np.asarray(rollout.tokens)[rows]
    completion = np.asarray(rollout.completion_mask)[rows, 1:]
    for model, field in ((target, "logp"), (drafter, "student_logp")):
        logits, _ = model(tokens, rollout.positions[rows], mask=rollout.mask[rows])
        logp = np.asarray(jax.nn.log_softmax(logits[:, :-1]))
        want = np.take_along_axis(logp, tokens[:, 1:, None], axis=-1)[..., 0]
        np.testing.assert_allclose(np.asarray(getattr(rollout, field))[rows, 1:][completion], want[completion],
                                   atol=2e-4, err_msg=field)
    np.testing.assert_array_equal(np.asarray(rollout.teacher_logp), np.asarray(rollout.logp))


def test_counts_add_up_and_frozen_models_sample_the_same():
    _, t_graphdef, t_params = split_model("qwen3", seed=0, vocab_size=V)
    _, d_graphdef, d_params = split_model("qwen2", seed=2, vocab_size=V)
    tokens, mask = left_padded(V, (4, 2, 6), 6, seed=3)
    cfg = SamplerConfig(max_new_tokens=10, temperature=0.8, top_k=6, num_samples=3)
    args = (tokens, mask, jax.random.key(4))
    rollout, stats = speculative_sample((d_graphdef, d_params), (t_graphdef, t_params), *args, cfg=cfg,
                                        draft_tokens=3)
    blocks, accepted, emitted = (np.asarray(x) for x in (stats.blocks, stats.accepted, stats.emitted))
    np.testing.assert_array_equal(emitted, np.asarray(rollout.completion_mask).sum(1))
    assert (emitted == 10).all()  # no EOS: every row runs to the limit
    # each block emits its accepted drafts and one more token; only the last block can be cut
    assert ((emitted <= accepted + blocks) & (emitted >= accepted + blocks - 3)).all()
    errors = np.asarray(stats.draft_error).sum(1)
    assert (errors <= blocks).all() and (errors >= blocks - 1 - accepted // 3).all()
    assert not (np.asarray(stats.draft_error) & ~np.asarray(rollout.completion_mask)).any()

    frozen = speculative_sample(freeze(d_graphdef, d_params), freeze(t_graphdef, t_params), *args, cfg=cfg,
                                draft_tokens=3)
    np.testing.assert_array_equal(np.asarray(frozen[0].tokens), np.asarray(rollout.tokens))
    np.testing.assert_array_equal(np.asarray(frozen[1].accepted), accepted)


def test_bad_input_is_refused():
    _, t_graphdef, t_params = split_model("qwen3", seed=0, vocab_size=V)
    _, d_graphdef, d_params = split_model("qwen3", seed=1, vocab_size=V + 1)
    tokens, mask = left_padded(V, (2, 3), 3)
    cfg = SamplerConfig(max_new_tokens=4)
    target = (t_graphdef, t_params)
    with pytest.raises(ValueError, match="draft_tokens must be an int >= 1"):
        speculative_sample(target, target, tokens, mask, jax.random.key(0), cfg=cfg, draft_tokens=0)
    with pytest.raises(ValueError, match="differs from the drafter's"):
        speculative_sample((d_graphdef, d_params), target, tokens, mask, jax.random.key(0), cfg=cfg)
    with pytest.raises(ValueError, match="record_topk=0"):
        speculative_sample(target, target, tokens, mask, jax.random.key(0), cfg=cfg.replace(record_topk=2))
    with pytest.raises(ValueError, match="drafter must be the pair"):
        speculative_sample(t_params, target, tokens, mask, jax.random.key(0), cfg=cfg)
