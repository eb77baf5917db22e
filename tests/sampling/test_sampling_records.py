"""``SamplerConfig.record_topk``: the student's top tokens, their log-probs and its entropy at each
step, against a float64 NumPy computation from one full forward over the finished sequences."""

import jax
import numpy as np
import pytest
from flax import nnx

from sampling_helpers import left_padded, split_model
from opd_jax.sampling import SamplerConfig, sample

LENGTHS, WIDTH = (9, 5, 1), 9
BASE = SamplerConfig(max_new_tokens=12, num_samples=2, eos_ids=(3, 7), temperature=0.7, top_k=20,
                     top_p=0.9)


def _oracle(graphdef, params, r, k, temperature):
    """float64 top-k ids, log-probs and entropy of ``softmax(logits / temperature)`` at every
    column (from the logits of the column before it)."""
    logits, _ = nnx.merge(graphdef, params)(r.tokens, r.positions, mask=r.mask)
    z = np.asarray(logits, np.float64)[:, :-1] / temperature
    logp = z - z.max(-1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
    order = np.argsort(-logp, axis=-1, kind="stable")[..., :k]
    entropy = -(np.exp(logp) * logp).sum(-1)
    pad = lambda x: np.concatenate([np.zeros_like(x[:, :1]), x], axis=1)  # noqa: E731
    return pad(order), pad(np.take_along_axis(logp, order, -1)), pad(entropy)


@pytest.mark.parametrize("k, temperature", [(5, 0.8), (1, 1.0)])
def test_records_equal_a_full_forward(k, temperature):
    _, graphdef, params = split_model("qwen3")
    tokens, mask = left_padded(97, LENGTHS, WIDTH)
    cfg = BASE.replace(record_topk=k, record_temperature=temperature)
    r = sample(graphdef, params, tokens, mask, jax.random.key(1), cfg=cfg)
    ids, logp, entropy = _oracle(graphdef, params, r, k, temperature)
    cm = np.asarray(r.completion_mask)
    assert cm.any() and not cm.all()
    assert r.topk_ids.shape == r.tokens.shape + (k,) and r.topk_ids.dtype == np.int32
    np.testing.assert_array_equal(np.asarray(r.topk_ids)[cm], ids[cm])
    np.testing.assert_allclose(np.asarray(r.topk_logp)[cm], logp[cm], atol=2e-5, rtol=0)
    np.testing.assert_allclose(np.asarray(r.entropy)[cm], entropy[cm], atol=2e-5, rtol=0)
    for name in ("topk_ids", "topk_logp", "entropy"):  # nothing outside the completions
        assert not np.asarray(getattr(r, name))[~cm].any(), name
    # Recording changes no draw. (Without the filters: these random models are near-uniform, so
    # float32 rounding that differs between two programs can move a token across the top-p edge.)
    plain_cfg = BASE.replace(top_k=0, top_p=1.0)
    plain = sample(graphdef, params, tokens, mask, jax.random.key(1), cfg=plain_cfg)
    recorded = sample(graphdef, params, tokens, mask, jax.random.key(1), cfg=plain_cfg.replace(record_topk=k))
    assert plain.topk_ids is None and plain.topk_logp is None and plain.entropy is None
    np.testing.assert_array_equal(np.asarray(plain.tokens), np.asarray(recorded.tokens))
    np.testing.assert_allclose(np.asarray(plain.logp), np.asarray(recorded.logp), atol=1e-5, rtol=0)


def test_records_are_the_students_own_under_teacher_mixing_and_greedy():
    _, graphdef, params = split_model("qwen3")
    _, t_graphdef, t_params = split_model("llama", seed=1)
    tokens, mask = left_padded(97, LENGTHS, WIDTH)
    for cfg, mix in ((BASE.replace(top_k=0, top_p=1.0), 0.5), (BASE.replace(temperature=0.0), 0.0)):
        cfg = cfg.replace(record_topk=3)
        teacher = (t_graphdef, t_params) if mix else None
        r = sample(graphdef, params, tokens, mask, jax.random.key(2), cfg=cfg, teacher=teacher,
                   teacher_mix=mix)
        ids, logp, entropy = _oracle(graphdef, params, r, 3, 1.0)
        cm = np.asarray(r.completion_mask)
        if mix:
            assert np.asarray(r.from_teacher)[cm].any()
        np.testing.assert_array_equal(np.asarray(r.topk_ids)[cm], ids[cm])
        np.testing.assert_allclose(np.asarray(r.topk_logp)[cm], logp[cm], atol=2e-5, rtol=0)
        np.testing.assert_allclose(np.asarray(r.entropy)[cm], entropy[cm], atol=2e-5, rtol=0)


@pytest.mark.parametrize("changes, field", [
    (dict(record_topk=-1), "record_topk"), (dict(record_topk=2.0), "record_topk"),
    (dict(record_temperature=0.0), "record_temperature"),
    (dict(record_temperature=float("inf")), "record_temperature")])
def test_bad_record_settings_name_the_field(changes, field):
    with pytest.raises(ValueError, match=field):
        BASE.replace(**changes)


def test_more_records_than_the_vocabulary_is_refused_before_compiling():
    _, graphdef, params = split_model("qwen3")
    tokens, mask = left_padded(97, LENGTHS, WIDTH)
    with pytest.raises(ValueError, match="record_topk=.*exceeds the model's vocabulary"):
        sample(graphdef, params, tokens, mask, jax.random.key(0), cfg=BASE.replace(record_topk=10**6))
