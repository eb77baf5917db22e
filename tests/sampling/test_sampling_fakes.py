"""Oracles from fake models with known outputs: exact sequences, EOS handling, cache limit, teacher mixing."""

import math

import jax
import numpy as np
import pytest
from flax import nnx

from sampling_fakes import BIG, Successor
from sampling_helpers import completion
from opd_jax.sampling import SamplerConfig, sample

V = 64


def _prompts(last_tokens, width=5):
    """Left-padded prompts ending in ``last_tokens``, of lengths 1, 2, ... (row b has b + 1 tokens)."""
    tokens, mask = np.zeros((len(last_tokens), width), np.int32), np.zeros((len(last_tokens), width), bool)
    for b, last in enumerate(last_tokens):
        n = b % width + 1
        tokens[b, width - n:] = (last - np.arange(n)[::-1]) % V
        mask[b, width - n:] = True
    return tokens, mask


def _run(model, tokens, mask, cfg, seed=0, **kw):
    graphdef, params = nnx.split(model, nnx.Param)
    return sample(graphdef, params, tokens, mask, jax.random.key(seed), cfg=cfg, **kw)


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_successor_model_gives_the_exact_sequence(temperature):
    last = [5, 20, 62, 40]
    tokens, mask = _prompts(last)
    cfg = SamplerConfig(max_new_tokens=7, temperature=temperature, num_samples=2)
    r = _run(Successor(V), tokens, mask, cfg)
    expected = (np.repeat(last, 2)[:, None] + np.arange(1, 8)[None, :]) % V  # wraps past V - 1
    got = completion(r)
    np.testing.assert_array_equal(got[:, :7], expected)
    assert (got[:, 7:] == cfg.pad_id).all() and got.shape[1] == cfg.new_token_bucket()
    np.testing.assert_array_equal(completion(r, "completion_mask"), np.broadcast_to(np.arange(got.shape[1]) < 7, got.shape))
    np.testing.assert_array_equal(np.asarray(r.mask)[:, :r.prompt_len], np.repeat(_bucketed(mask, r), 2, 0))
    # log-probability of a BIG-margin token: exactly 0 when greedy, -log(1 + (V-1) e^-BIG) otherwise
    np.testing.assert_allclose(completion(r, "logp")[:, :7], 0.0, atol=1e-9 + (V - 1) * math.exp(-BIG))
    assert not np.asarray(r.finished).any()


def _bucketed(mask, r):
    """The prompt mask as the sampler re-padded it (left-padded to the prompt bucket)."""
    out = np.zeros((mask.shape[0], r.prompt_len), bool)
    out[:, r.prompt_len - mask.shape[1]:] = mask
    return out


def test_eos_stops_a_row_and_masks_the_rest():
    eos = (10, 12)
    last = [7, 11, 30, 9]  # EOS after 3 tokens, after 1 (the first), never, after 1 (10)
    tokens, mask = _prompts(last)
    cfg = SamplerConfig(max_new_tokens=6, temperature=1.0, eos_ids=eos, pad_id=63)
    r = _run(Successor(V), tokens, mask, cfg)
    got, cmask = completion(r), completion(r, "completion_mask")
    lengths = [3, 1, 6, 1]
    for b, n in enumerate(lengths):
        np.testing.assert_array_equal(got[b, :n], (last[b] + np.arange(1, n + 1)) % V)
        assert (got[b, n:] == 63).all()
        np.testing.assert_array_equal(cmask[b], np.arange(got.shape[1]) < n)
    np.testing.assert_array_equal(np.asarray(r.finished), [True, True, False, True])
    assert (completion(r, "logp")[~cmask] == 0).all()
    np.testing.assert_array_equal(np.asarray(r.mask)[:, r.prompt_len:], cmask)
    # Positions continue the prompt on completion tokens; everywhere they are cumsum(mask) - 1, clipped at 0.
    pos = np.asarray(r.positions)
    for b, n in enumerate(lengths):
        np.testing.assert_array_equal(pos[b, r.prompt_len:r.prompt_len + n], np.arange(n) + mask[b].sum())
    np.testing.assert_array_equal(pos, np.maximum(np.cumsum(np.asarray(r.mask), axis=1) - 1, 0))


def test_full_cache_stops_decoding():
    """With ``cache_len`` = prompt bucket + 3, 3 tokens fit."""
    tokens, mask = _prompts([3, 4])
    cfg = SamplerConfig(max_new_tokens=10, temperature=0.0, prompt_buckets=(8,), cache_len=8 + 3)
    r = _run(Successor(V), tokens, mask, cfg)
    np.testing.assert_array_equal(completion(r, "completion_mask").sum(axis=1), [3, 3])
    np.testing.assert_array_equal(completion(r)[:, :3], np.array([[4, 5, 6], [5, 6, 7]]))


_FED: list[int] = []  # tokens fed per model call (a module global: an nnx graph must hash)


class _CountingSuccessor(Successor):
    """``Successor`` that reports, from inside the compiled program, how many tokens each call feeds."""

    def hidden(self, tokens, positions, *, mask=None, cache=None):
        jax.debug.callback(lambda t: _FED.append(int(t)), tokens.shape[1])
        return super().hidden(tokens, positions, mask=mask, cache=cache)


@pytest.mark.parametrize("eos_ids, steps", [((), 6), ((9,), 3)])  # all rows end at step 3 with EOS 9
def test_no_forward_after_the_last_token(eos_ids, steps):
    """The prefill, then one decode forward per sampled token except the last (its logits are unused)."""
    _FED.clear()
    tokens, mask = _prompts([6, 6, 6])
    r = _run(_CountingSuccessor(V), tokens, mask, SamplerConfig(max_new_tokens=6, eos_ids=eos_ids))
    assert completion(r, "completion_mask").sum(axis=1).tolist() == [steps] * 3
    assert sorted(_FED, reverse=True) == [r.prompt_len] + [1] * (steps - 1)  # (callbacks are unordered)


def test_max_new_tokens_shorter_than_its_bucket():
    tokens, mask = _prompts([1])
    r = _run(Successor(V), tokens, mask, SamplerConfig(max_new_tokens=3, new_token_buckets=(8,)))
    assert completion(r).shape[1] == 8
    np.testing.assert_array_equal(completion(r, "completion_mask")[0], np.arange(8) < 3)


def test_teacher_mixed_sampling_draws_from_each_with_probability_mix():
    """Student predicts +1, teacher +2: the increment says who drew each token."""
    mix, rows, steps = 0.3, 64, 12
    tokens, mask = _prompts([0] * rows)
    teacher = nnx.split(Successor(V, shift=2), nnx.Param)
    cfg = SamplerConfig(max_new_tokens=steps, new_token_buckets=(steps,))
    r = _run(Successor(V), tokens, mask, cfg, teacher=teacher, teacher_mix=mix)
    full = np.asarray(r.tokens)[:, r.prompt_len - 1:]
    step = (full[:, 1:] - full[:, :-1]) % V
    from_teacher = completion(r, "from_teacher")
    np.testing.assert_array_equal(step, np.where(from_teacher, 2, 1))
    # log-probabilities: each model's own token has probability ~1, the other's ~e^-BIG
    tiny = (V - 1) * math.exp(-BIG)
    np.testing.assert_allclose(completion(r, "teacher_logp")[from_teacher], 0.0, atol=tiny)
    np.testing.assert_allclose(completion(r, "student_logp")[~from_teacher], 0.0, atol=tiny)
    np.testing.assert_allclose(completion(r, "logp"), np.where(from_teacher, math.log(mix), math.log(1 - mix)),
                               atol=1e-6)
    # The number of teacher tokens is Binomial(rows * steps, mix); a false alarm has probability < 1e-4.
    n, k = rows * steps, from_teacher.sum()
    assert abs(k - n * mix) <= 3.9 * math.sqrt(n * mix * (1 - mix))
    assert completion(r, "completion_mask").all()


@pytest.mark.parametrize("temperature", [0.0, 1.0])
@pytest.mark.parametrize("mix, expected", [(0.0, False), (1.0, True)])
def test_teacher_mix_extremes(mix, expected, temperature):
    tokens, mask = _prompts([0, 5])
    teacher = nnx.split(Successor(V, shift=2), nnx.Param)
    cfg = SamplerConfig(max_new_tokens=4, new_token_buckets=(4,), temperature=temperature)
    r = _run(Successor(V), tokens, mask, cfg, teacher=teacher, teacher_mix=np.float32(mix))  # a schedule's value
    assert (completion(r, "from_teacher") == expected).all()
    np.testing.assert_array_equal(np.diff(np.asarray(r.tokens)[:, r.prompt_len - 1:], axis=1) % V, 2 if expected else 1)
    np.testing.assert_allclose(completion(r, "logp"), 0.0, atol=(V - 1) * math.exp(-BIG))
