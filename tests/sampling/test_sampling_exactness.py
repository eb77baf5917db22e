"""Real (random tiny) models: recorded log-probabilities equal a full-forward rescoring; padding and
batch composition do not change a row's sample."""

import jax
import numpy as np
import pytest

from sampling_helpers import completion, left_padded, rescored_logp, split_model
from opd_jax.sampling import SamplerConfig, sample

TOL = 1e-5
LENGTHS, WIDTH = (9, 5, 1), 9
CONFIGS = {
    "training-default": SamplerConfig(max_new_tokens=12, num_samples=2, eos_ids=(3, 7)),
    "truncated": SamplerConfig(max_new_tokens=12, num_samples=2, eos_ids=(3,), temperature=0.7, top_k=20,
                               top_p=0.9, min_p=0.02),
    "greedy": SamplerConfig(max_new_tokens=12, temperature=0.0, eos_ids=(3,)),
}


def _assert_rescored(graphdef, params, r, cfg, field="logp"):
    """The recorded log-probabilities equal one full forward + the same filter (importance ratio 1)."""
    rescored = np.asarray(rescored_logp(graphdef, params, r.tokens, r.mask, r.positions, cfg=cfg))
    cm = np.asarray(r.completion_mask)
    recorded = np.asarray(getattr(r, field))
    assert cm.any() and np.isfinite(rescored[cm]).all()
    np.testing.assert_allclose(recorded[cm], rescored[cm], atol=TOL, rtol=0)
    np.testing.assert_allclose(np.exp(rescored[cm] - recorded[cm]), 1.0, atol=TOL, rtol=0)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_recorded_logp_equals_full_forward_rescoring(name):
    cfg = CONFIGS[name]
    _, graphdef, params = split_model("qwen3")
    tokens, mask = left_padded(97, LENGTHS, WIDTH)
    r = sample(graphdef, params, tokens, mask, jax.random.key(1), cfg=cfg)
    _assert_rescored(graphdef, params, r, cfg)
    if cfg.greedy:  # every token is the arg-max of the full forward's logits (the point mass)
        assert (completion(r, "logp") == 0).all()


def test_teacher_mixed_logps_equal_each_models_rescoring():
    cfg = CONFIGS["training-default"]
    _, graphdef, params = split_model("qwen3")
    _, t_graphdef, t_params = split_model("llama", seed=1)  # another family, same vocabulary
    tokens, mask = left_padded(97, LENGTHS, WIDTH)
    mix = 0.4
    r = sample(graphdef, params, tokens, mask, jax.random.key(2), cfg=cfg, teacher=(t_graphdef, t_params),
               teacher_mix=mix)
    _assert_rescored(graphdef, params, r, cfg, "student_logp")
    _assert_rescored(t_graphdef, t_params, r, cfg, "teacher_logp")
    cm = np.asarray(r.completion_mask)
    mixture = np.logaddexp(np.log(mix) + np.asarray(r.teacher_logp), np.log1p(-mix) + np.asarray(r.student_logp))
    np.testing.assert_allclose(np.asarray(r.logp)[cm], mixture[cm], atol=TOL, rtol=0)
    ft = np.asarray(r.from_teacher)
    assert ft[cm].any() and not ft[cm].all() and not ft[~cm].any()


def test_mix_zero_samples_like_the_student_alone():
    cfg = CONFIGS["training-default"]
    _, graphdef, params = split_model("qwen3")
    _, t_graphdef, t_params = split_model("llama", seed=1)
    tokens, mask = left_padded(97, LENGTHS, WIDTH)
    alone = sample(graphdef, params, tokens, mask, jax.random.key(3), cfg=cfg)
    mixed = sample(graphdef, params, tokens, mask, jax.random.key(3), cfg=cfg, teacher=(t_graphdef, t_params))
    np.testing.assert_array_equal(mixed.tokens, alone.tokens)
    np.testing.assert_allclose(mixed.logp, alone.logp, atol=TOL, rtol=0)


def test_padded_equals_unpadded_and_rows_ignore_the_batch():
    """A prompt sampled alone and unpadded equals the same prompt (same row id) left-padded by 12 in a
    batch with other prompts: tokens exactly, log-probs to 1e-5."""
    _, graphdef, params = split_model("qwen3")
    tokens, mask = left_padded(97, (4, 11, 7), 11, seed=5)
    cfg = SamplerConfig(max_new_tokens=10, num_samples=2, eos_ids=(3,), temperature=1.2, top_k=50,
                        prompt_buckets=(4, 16))
    row_ids = np.array([7, 2, 9], np.int32)
    batch = sample(graphdef, params, tokens, mask, jax.random.key(4), cfg=cfg, row_ids=row_ids)
    alone = sample(graphdef, params, tokens[:1, -4:], mask[:1, -4:], jax.random.key(4), cfg=cfg,
                   row_ids=row_ids[:1])
    assert alone.prompt_len == 4 and batch.prompt_len == 16
    np.testing.assert_array_equal(completion(alone), completion(batch)[:2])
    np.testing.assert_array_equal(completion(alone, "mask"), completion(batch, "mask")[:2])
    np.testing.assert_allclose(completion(alone, "logp"), completion(batch, "logp")[:2], atol=TOL, rtol=0)
    assert completion(alone, "mask").sum() > 4


def test_samples_differ_across_rows_and_keys():
    """The n samples of one prompt use different streams; a new key gives new samples."""
    _, graphdef, params = split_model("qwen3")
    tokens, mask = left_padded(97, LENGTHS, WIDTH)
    cfg = CONFIGS["training-default"]
    a = completion(sample(graphdef, params, tokens, mask, jax.random.key(0), cfg=cfg))
    b = completion(sample(graphdef, params, tokens, mask, jax.random.key(1), cfg=cfg))
    assert len({row.tobytes() for row in a}) == a.shape[0]
    assert not (a == b).all(axis=1).any()


@pytest.mark.parametrize("name", ["training-default", "greedy"])
def test_cache_phases_do_not_change_samples(name):
    """Growing the cache in phases (several decode loops, fewer slots early) samples what one
    full-size cache samples: tokens exactly, log-probabilities to 1e-5."""
    _, graphdef, params = split_model("qwen3")
    tokens, mask = left_padded(97, LENGTHS, WIDTH)
    cfg = CONFIGS[name].replace(max_new_tokens=70, eos_ids=())  # 70 new tokens: up to 3 phases of >= 32
    assert len(cfg.cache_capacities(16)) > 1
    runs = [sample(graphdef, params, tokens, mask, jax.random.key(5), cfg=cfg.replace(cache_phases=k))
            for k in (1, 4)]
    for r in runs[1:]:
        np.testing.assert_array_equal(r.tokens, runs[0].tokens)
        np.testing.assert_array_equal(r.mask, runs[0].mask)
        np.testing.assert_allclose(r.logp, runs[0].logp, atol=TOL, rtol=0)
    assert np.asarray(runs[0].completion_mask).sum() == 70 * runs[0].tokens.shape[0]
