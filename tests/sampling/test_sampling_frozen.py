"""``freeze``: a model laid out per layer once samples what the model samples, copies no weights
per call, and is refused where it cannot work."""

import dataclasses

import jax
import numpy as np
import pytest
from flax import nnx

from sampling_fakes import Successor
from sampling_helpers import left_padded, split_model
from opd_jax.models import Transformer, tiny_config
from opd_jax.sampling import FrozenDef, SamplerConfig, freeze, sample
from opd_jax.sampling.frozen import freeze_if_possible
from opd_jax.sampling.sampler import sample_program
from opd_jax.sharding import logical_sharding, make_mesh


def _place(params, mesh):
    return jax.device_put(params, logical_sharding(nnx.get_partition_spec(params), mesh))


@pytest.mark.parametrize("where", ["one device", "mesh"])
def test_frozen_model_samples_what_the_model_samples(where, n_devices):
    """Student and teacher frozen or not, on one device or sharded over (data, fsdp, tensor):
    the same tokens, masks and teacher coins under a nucleus filter; log-probabilities to float32
    rounding without one (the frozen prefill is the cached per-layer forward, not the scanned one,
    and these random models' distributions are near-uniform, so a rounding difference can move a
    token across the filter's edge and renormalise the kept mass: a jump, not a rounding error)."""
    _, graphdef, params = split_model("qwen2", vocab_size=128)
    _, t_graphdef, t_params = split_model("qwen3", seed=3, vocab_size=128)
    tokens, mask = left_padded(128, (7, 2, 5, 1), 7)
    cfg = SamplerConfig(max_new_tokens=9, num_samples=2, eos_ids=(5,), temperature=0.9, top_p=0.95)
    row_ids = np.array([10, 11, 12, 13], np.int32)

    def runs(g, p, t):
        return [sample(g, p, tokens, mask, jax.random.key(0), cfg=c, row_ids=row_ids, teacher=t,
                       teacher_mix=0.25) for c in (cfg, dataclasses.replace(cfg, top_p=1.0))]
    expected = runs(graphdef, params, (t_graphdef, t_params))
    mesh = make_mesh(data=2, fsdp=2, tensor=2) if where == "mesh" else make_mesh(data=1)
    with jax.set_mesh(mesh):
        if where == "mesh":
            params, t_params = _place(params, mesh), _place(t_params, mesh)
        frozen, t_frozen = freeze(graphdef, params), freeze(t_graphdef, t_params)
        assert isinstance(frozen[0], FrozenDef) and frozen[0].cfg == nnx.merge(graphdef, params).cfg
        got = {"student frozen": runs(*frozen, (t_graphdef, t_params)),
               "both frozen": runs(*frozen, t_frozen)}
    for name, (filtered, unfiltered) in got.items():
        for field in ("tokens", "mask", "completion_mask", "positions", "finished", "from_teacher"):
            for a, b in ((filtered, expected[0]), (unfiltered, expected[1])):
                np.testing.assert_array_equal(getattr(a, field), getattr(b, field), err_msg=f"{name}: {field}")
        for field in ("logp", "student_logp", "teacher_logp"):
            np.testing.assert_allclose(getattr(unfiltered, field), getattr(expected[1], field), atol=2e-5,
                                       rtol=0, err_msg=f"{name}: {field}")
    assert np.asarray(expected[0].completion_mask).any() and np.asarray(expected[0].from_teacher).any()


def test_frozen_program_copies_no_layer_weights():
    """The stacked-weight program holds a per-layer copy of every layer weight for the whole call
    (its scratch memory); the frozen program reads the frozen weights in place, so its scratch is
    smaller by at least those weights (and the RoPE and output-head copies)."""
    model_cfg = tiny_config("llama", num_layers=6, hidden_size=256, intermediate_size=768, vocab_size=256)
    graphdef, params = nnx.split(nnx.eval_shape(lambda: Transformer(model_cfg, rngs=nnx.Rngs(0))), nnx.Param)
    frozen = jax.eval_shape(lambda p: freeze(graphdef, p)[1], params)
    cfg = SamplerConfig(max_new_tokens=32, prompt_buckets=(4,))
    sds = jax.ShapeDtypeStruct
    args = (sds((2, 4), np.int32), sds((2, 4), np.bool_), jax.random.key(0), sds((2,), np.int32), np.int32(32),
            np.float32(0), None, None)
    scratch = {name: sample_program.trace(g, p, *args, cfg=cfg).lower().compile().memory_analysis().temp_size_in_bytes
               for name, (g, p) in {"stacked": (graphdef, params), "frozen": (FrozenDef(model_cfg), frozen)}.items()}
    layer_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(frozen.layers))
    assert scratch["stacked"] - scratch["frozen"] >= layer_bytes, (scratch, layer_bytes)


def test_freeze_refuses_what_it_cannot_lay_out():
    _, graphdef, params = split_model("qwen3", vocab_size=128)
    frozen = freeze(graphdef, params)
    with pytest.raises(ValueError, match="frozen already"):
        freeze(*frozen)
    with pytest.raises(TypeError, match="decoder"):
        freeze(*nnx.split(Successor(16), nnx.Param))


def test_freeze_if_possible_passes_through_what_freeze_refuses():
    _, graphdef, params = split_model("qwen3", vocab_size=128)
    frozen = freeze_if_possible(graphdef, params)
    assert isinstance(frozen[0], FrozenDef)
    assert freeze_if_possible(*frozen) == frozen
    fake = nnx.split(Successor(16), nnx.Param)
    assert freeze_if_possible(*fake) == fake
