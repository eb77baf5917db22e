"""On the 8-fake-device mesh the sampler gives the 1-device result."""

import jax
import numpy as np
from flax import nnx

from sampling_helpers import left_padded, split_model
from opd_jax.sampling import SamplerConfig, sample
from opd_jax.sharding import logical_sharding, make_mesh


def test_sharded_sampling_equals_one_device(n_devices):
    """Rows over (data, fsdp), heads, kv heads, MLP and vocabulary over tensor; teacher mixing on."""
    model, graphdef, params = split_model("qwen2", vocab_size=128)  # every sharded size divides by 2
    _, t_graphdef, t_params = split_model("qwen3", seed=3, vocab_size=128)
    tokens, mask = left_padded(128, (7, 2, 5, 1), 7)
    cfg = SamplerConfig(max_new_tokens=9, num_samples=2, eos_ids=(5,), temperature=0.9, top_p=0.95)
    row_ids = np.array([10, 11, 12, 13], np.int32)
    run = lambda g, p, tg, tp: sample(g, p, tokens, mask, jax.random.key(0), cfg=cfg, row_ids=row_ids,
                                      teacher=(tg, tp), teacher_mix=0.25)
    expected = run(graphdef, params, t_graphdef, t_params)

    mesh = make_mesh(data=2, fsdp=2, tensor=2)
    place = lambda p: jax.device_put(p, logical_sharding(nnx.get_partition_spec(p), mesh))
    with jax.set_mesh(mesh):
        got = run(graphdef, place(params), t_graphdef, place(t_params))
    assert got.tokens.sharding.spec[0] == ("data", "fsdp")
    assert len(got.tokens.sharding.device_set) == n_devices
    for field in ("tokens", "mask", "completion_mask", "positions", "finished", "from_teacher"):
        np.testing.assert_array_equal(getattr(got, field), getattr(expected, field), err_msg=field)
    for field in ("logp", "student_logp", "teacher_logp"):
        np.testing.assert_allclose(getattr(got, field), getattr(expected, field), atol=1e-5, rtol=0, err_msg=field)
    assert np.asarray(expected.completion_mask).any()
