"""The static config, buckets (no retrace within one), and bad input refused before compiling."""

import dataclasses
import math
import os
import re

import jax
import numpy as np
import pytest
from flax import nnx

from sampling_fakes import Successor
from sampling_helpers import left_padded
from opd_jax.models import Transformer, tiny_config
from opd_jax.models.transformer import layer_param_shapes
from opd_jax.sampling import SamplerConfig, sample, trace_count
from opd_jax.sampling.sampler import sample_program

V = 32


def _successor():
    return nnx.split(Successor(V), nnx.Param)


def test_config_is_frozen_and_hashable():
    a, b = SamplerConfig(max_new_tokens=8, eos_ids=(1, 2)), SamplerConfig(max_new_tokens=8, eos_ids=(1, 2))
    assert a == b and hash(a) == hash(b) and a != a.replace(top_k=5)
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.top_k = 3
    with pytest.raises(TypeError):
        SamplerConfig(8)  # keyword-only


@pytest.mark.parametrize("changes, field", [
    (dict(max_new_tokens=0), "max_new_tokens"),
    (dict(max_new_tokens=-3), "max_new_tokens"),
    (dict(temperature=-0.1), "temperature"),
    (dict(temperature=float("nan")), "temperature"),
    (dict(top_p=0.0), "top_p"),
    (dict(top_p=1.5), "top_p"),
    (dict(top_k=-1), "top_k"),
    (dict(min_p=1.0), "min_p"),
    (dict(eos_ids=5), "eos_ids"),
    (dict(num_samples=0), "num_samples"),
    (dict(prompt_buckets=(64, 32)), "prompt_buckets"),
    (dict(max_new_tokens=40, new_token_buckets=(16, 32)), "new_token_buckets"),
    (dict(cache_len=0), "cache_len"),
    (dict(cache_phases=0), "cache_phases"),
    (dict(cache_phases="many"), "cache_phases"),
])
def test_bad_config_names_the_field(changes, field):
    with pytest.raises(ValueError, match=field):
        SamplerConfig(**{"max_new_tokens": 4, **changes})


def test_buckets():
    cfg = SamplerConfig(max_new_tokens=100)
    assert [cfg.prompt_bucket(n) for n in (1, 16, 17, 300)] == [16, 16, 32, 512]
    assert cfg.new_token_bucket() == 128 and cfg.cache_size(32) == 160
    cfg = SamplerConfig(max_new_tokens=5, prompt_buckets=(8, 24), new_token_buckets=(5, 10), cache_len=20)
    assert cfg.prompt_bucket(9) == 19 and cfg.new_token_bucket() == 5 and cfg.cache_size(8) == 20
    with pytest.raises(ValueError, match="prompt_buckets"):
        cfg.prompt_bucket(25)


def test_cache_capacities():
    """Phases of >= 32 generated slots, capacities rounded up to 8, the last one the cache size."""
    cfg = SamplerConfig(max_new_tokens=100)
    assert cfg.cache_capacities(32) == (64, 96, 128, 160)
    assert cfg.replace(cache_phases=2).cache_capacities(32) == (96, 160)
    assert cfg.replace(cache_phases=1).cache_capacities(32) == (160,)
    assert SamplerConfig(max_new_tokens=16).cache_capacities(2) == (18,)  # too few slots to split
    assert SamplerConfig(max_new_tokens=64).cache_capacities(16) == (48, 80)
    assert SamplerConfig(max_new_tokens=100, cache_len=40).cache_capacities(8) == (40,)
    assert SamplerConfig(max_new_tokens=1000, cache_len=200).cache_capacities(8) == (56, 104, 152, 200)


def test_auto_cache_phases_follow_attention_share():
    """``"auto"``: 4 phases unless attention is known to be under 5% of a decode step; an int is kept."""
    cfg = SamplerConfig(max_new_tokens=100)
    assert cfg.cache_phases == "auto"
    assert [cfg.phases(share) for share in (None, 0.049, 0.05, 0.5)] == [4, 1, 4, 4]
    assert cfg.cache_capacities(32, 0.01) == (160,) and cfg.cache_capacities(32, 0.2) == (64, 96, 128, 160)
    assert [cfg.replace(cache_phases=2).phases(share) for share in (None, 0.01, 0.5)] == [2, 2, 2]
    # fewer rows, fewer phases where attention counts (1 where it does not); rows never override an int
    cases = [(0.5, 1), (None, 1), (0.01, 1), (0.5, 2), (0.5, 32), (0.01, 32), (0.5, 33), (0.5, None)]
    assert [cfg.phases(share, rows) for share, rows in cases] == [2, 2, 1, 3, 3, 1, 4, 4]
    assert cfg.cache_capacities(32, 0.2, rows=1) == (96, 160)
    assert [cfg.replace(cache_phases=k).phases(0.5, rows=1) for k in (1, 3, 4)] == [1, 3, 4]


@pytest.mark.parametrize("wide", [False, True])
def test_sampler_picks_phases_from_the_model(wide):
    """The same sampler config decodes in 4 loops (the program of ``cache_phases=4``) for a model
    whose attention is a large share of a step (the tiny model, ~50% at 160 slots) and in one for
    a model dominated by its weights; with fewer rows in fewer: 2 loops for a single row (one prompt,
    one sample), 3 for 2 to 32 rows."""
    model_cfg = tiny_config("qwen3")
    if wide:  # weights 64x the tiny model's products per token, attention 4x
        model_cfg = model_cfg.replace(hidden_size=384, intermediate_size=1536, vocab_size=4096)
    weights, attention = model_cfg.decode_macs(160)
    assert (attention / (weights + attention) < 0.05) == wide
    graphdef, params = nnx.split(nnx.eval_shape(lambda: Transformer(model_cfg, rngs=nnx.Rngs(0))), nnx.Param)
    sds = jax.ShapeDtypeStruct
    loops = {}
    for phases, B, n in [("auto", 33, 1), (1, 2, 1), (2, 2, 1), (3, 2, 1), (4, 2, 1), ("auto", 1, 1),
                         ("auto", 2, 1), ("auto", 1, 2), ("auto", 16, 2), ("auto", 11, 3)]:
        text = sample_program.trace(
            graphdef, params, sds((B, 32), np.int32), sds((B, 32), np.bool_), jax.random.key(0),
            sds((B,), np.int32), np.int32(128), np.float32(0), None, None,
            cfg=SamplerConfig(max_new_tokens=128, cache_phases=phases, num_samples=n)).lower().as_text()
        loops[phases, B, n] = text.count("stablehlo.while")
    assert loops[4, 2, 1] == loops[3, 2, 1] + 1 == loops[2, 2, 1] + 2 == loops[1, 2, 1] + 3, loops
    assert loops["auto", 33, 1] == loops[1 if wide else 4, 2, 1], loops
    assert loops["auto", 1, 1] == loops[1 if wide else 2, 2, 1], loops  # one row
    assert loops["auto", 2, 1] == loops[1 if wide else 3, 2, 1], loops
    assert loops["auto", 1, 2] == loops["auto", 16, 2] == loops["auto", 2, 1], loops  # prompts x samples
    assert loops["auto", 11, 3] == loops["auto", 33, 1], loops


def test_no_retrace_within_a_bucket():
    """New prompt lengths and widths, max_new_tokens, keys, row ids and parameter values in the same
    buckets reuse the compiled program; a new bucket compiles once more."""
    graphdef, params = _successor()
    cfg = SamplerConfig(max_new_tokens=5, eos_ids=(3,), new_token_buckets=(8, 16))
    tokens, mask = left_padded(V, (5, 3), 6)
    sample(graphdef, params, tokens, mask, jax.random.key(0), cfg=cfg)
    before = trace_count()
    other_params = jax.tree.map(lambda x: x * 1.01, params)
    for width, lengths, n_new, p in [(9, (9, 2), 7, params), (12, (4, 1), 8, other_params), (3, (3, 3), 1, params)]:
        tokens, mask = left_padded(V, lengths, width, seed=width)
        sample(graphdef, p, tokens, mask, jax.random.key(width), cfg=cfg.replace(max_new_tokens=n_new),
               row_ids=np.array([4, 1], np.int32))
    assert trace_count() == before
    tokens, mask = left_padded(V, (17, 3), 17)  # the next prompt bucket
    sample(graphdef, params, tokens, mask, jax.random.key(0), cfg=cfg)
    sample(graphdef, params, tokens, mask, jax.random.key(0), cfg=cfg.replace(max_new_tokens=9))
    assert trace_count() == before + 2


def _bad_calls():
    tokens, mask = np.array([[0, 4, 5]], np.int32), np.array([[False, True, True]])
    cfg = SamplerConfig(max_new_tokens=3)
    teacher = _successor()
    return {
        "prompt longer than the cache": (dict(tokens=np.ones((1, 6), np.int32), mask=np.ones((1, 6), bool),
                                              cfg=SamplerConfig(max_new_tokens=3, cache_len=4)), "cache_len"),
        "empty prompt (no columns)": (dict(tokens=np.zeros((2, 0), np.int32), mask=np.zeros((2, 0), bool)), "prompt"),
        "empty prompt (row all padding)": (dict(mask=np.array([[False, False, False]])), "prompt_mask"),
        "right padding": (dict(mask=np.array([[True, True, False]])), "LEFT-padded"),
        "mask shape": (dict(mask=np.ones((1, 4), bool)), "prompt_mask"),
        "mask dtype": (dict(mask=np.ones((1, 3), np.int32)), "prompt_mask"),
        "float prompts": (dict(tokens=np.ones((1, 3), np.float32)), "prompts"),
        "1-D prompts": (dict(tokens=np.ones((3,), np.int32), mask=np.ones((3,), bool)), "prompts"),
        "token id out of range": (dict(tokens=np.array([[0, 4, V]], np.int32)), "prompts"),
        "eos id out of range": (dict(cfg=SamplerConfig(max_new_tokens=3, eos_ids=(V,))), "eos_ids"),
        "pad id out of range": (dict(cfg=SamplerConfig(max_new_tokens=3, pad_id=V + 1)), "pad_id"),
        "row_ids shape": (dict(row_ids=np.arange(2, dtype=np.int32)), "row_ids"),
        "key": (dict(key=np.float32(1.0)), "key"),
        "mix without teacher": (dict(teacher_mix=0.5), "teacher"),
        "mix out of range": (dict(teacher=teacher, teacher_mix=1.5), "teacher_mix"),
        "teacher not a pair": (dict(teacher=Successor(V), teacher_mix=0.5), "teacher"),
        "teacher vocabulary": (dict(teacher=nnx.split(Successor(V + 1), nnx.Param), teacher_mix=0.5), "teacher"),
        "cfg type": (dict(cfg=dict(max_new_tokens=3)), "SamplerConfig"),
    }, dict(tokens=tokens, mask=mask, cfg=cfg, key=jax.random.key(0))


@pytest.mark.parametrize("case", sorted(_bad_calls()[0]))
def test_bad_input_is_refused_before_compiling(case):
    cases, defaults = _bad_calls()
    changes, message = cases[case]
    call = {**defaults, **changes}
    graphdef, params = _successor()
    before = trace_count()
    extra = {k: call[k] for k in ("row_ids", "teacher", "teacher_mix") if k in call}
    with pytest.raises((ValueError, TypeError), match=message):
        sample(graphdef, params, call["tokens"], call["mask"], call["key"], cfg=call["cfg"], **extra)
    assert trace_count() == before


def test_decode_state_is_updated_in_place():
    """The while-loop carry (KV cache and buffers) is not double-buffered: the compiled program's
    scratch memory stays well under two caches (a copy per step would need at least two)."""
    model_cfg = tiny_config("llama", num_layers=4)
    graphdef, params = nnx.split(nnx.eval_shape(lambda: Transformer(model_cfg, rngs=nnx.Rngs(0))), nnx.Param)
    cfg = SamplerConfig(max_new_tokens=1024, prompt_buckets=(2,))
    sds = jax.ShapeDtypeStruct
    compiled = sample_program.trace(
        graphdef, params, sds((8, 2), np.int32), sds((8, 2), np.bool_), jax.random.key(0), sds((8,), np.int32),
        np.int32(1024), np.float32(0), None, None, cfg=cfg).lower().compile()
    slots = cfg.cache_size(2)
    kv_bytes = 2 * model_cfg.num_layers * 8 * slots * model_cfg.num_kv_heads * model_cfg.head_dim * 4
    assert compiled.memory_analysis().temp_size_in_bytes < 1.6 * kv_bytes


def _hlo_ops(text: str, root: str, small: int = 0):
    """``(opcode, dtype, dims)`` of every array-valued instruction in computation ``root`` and
    everything it calls (fusions, nested loops, conditional branches), from compiled HLO text.

    The inside of a fusion whose result has fewer than ``small`` elements is skipped: such a
    fusion reads its operands element by element (a fused ``convert`` then ``gather`` of a table
    converts only the gathered rows) and writes nothing larger than its result.
    """
    comps, current = {}, None
    for line in text.splitlines():
        header = re.match(r"^(?:ENTRY )?%?([\w.\-]+) .*\{$", line)
        if header and not line.startswith(" "):
            current = comps.setdefault(header.group(1), [])
        elif current is not None:
            current.append(line)
    seen, todo, ops = set(), [root], []
    while todo:
        name = todo.pop()
        if name in seen or name not in comps:
            continue
        seen.add(name)
        for line in comps[name]:
            m = re.search(r"= (\w+)\[([\d,]*)\](?:\{[^}]*\})? ([\w\-]+)\(", line)
            if m:
                ops.append((m.group(3), m.group(1), tuple(int(d) for d in m.group(2).split(",") if d)))
            if m and m.group(3) == "fusion" and math.prod(ops[-1][2]) < small:
                continue
            todo += re.findall(r"(?:calls|to_apply|body|condition|true_computation|false_computation)=%?([\w.\-]+)",
                               line)
            for branches in re.findall(r"branch_computations=\{([^}]*)\}", line):
                todo += re.findall(r"%?([\w.\-]+)", branches)
    return ops


@pytest.mark.parametrize("param_dtype", ["float32", "bfloat16"])
def test_decode_loop_copies_no_weights_and_no_cache(param_dtype):
    """In the compiled program, the decode ``while`` body (the loop whose carry holds the KV cache)
    neither slices, casts, transposes nor copies any layer weight or cache buffer: every array
    it moves is smaller than the smallest weight matrix. The caches are written in place."""
    model_cfg = tiny_config("llama", num_layers=3, param_dtype=param_dtype, dtype="float32")
    graphdef, params = nnx.split(nnx.eval_shape(lambda: Transformer(model_cfg, rngs=nnx.Rngs(0))), nnx.Param)
    B, P = 4, 2
    cfg = SamplerConfig(max_new_tokens=64, prompt_buckets=(P,), new_token_buckets=(64,), cache_phases=4)
    sds = jax.ShapeDtypeStruct
    text = sample_program.trace(
        graphdef, params, sds((B, P), np.int32), sds((B, P), np.bool_), jax.random.key(0), sds((B,), np.int32),
        np.int32(64), np.float32(0), None, None, cfg=cfg).lower().compile().as_text()
    K, H = model_cfg.num_kv_heads, model_cfg.head_dim
    smallest_weight = min(math.prod(shape) for name, (shape, _) in layer_param_shapes(model_cfg).items()
                          if not name.endswith(("norm", "bias")))
    assert len(cfg.cache_capacities(P)) == 2
    for S in cfg.cache_capacities(P):  # one decode loop per cache phase
        cache_types = (f"f32[{B},{K},{H},{S}]", f"f32[{B},{K},{S},{H}]")  # one layer's keys, values
        loops = [line for line in text.splitlines()
                 if " while(" in line and all(t in line.split(" while(")[0] for t in cache_types)]
        assert len(loops) == 1, (S, loops)
        ops = _hlo_ops(text, re.search(r"body=%?([\w.\-]+)", loops[0]).group(1), small=smallest_weight)
        assert B * model_cfg.num_heads * S < smallest_weight  # attention scores count as small here
        moved = [op for op in ops if op[0] in ("copy", "transpose", "dynamic-slice", "slice", "convert", "pad",
                                               "concatenate", "gather") and math.prod(op[2]) >= smallest_weight]
        assert not moved, moved
        cache_writes = [op for op in ops
                        if op[0] == "dynamic-update-slice" and op[2] in ((B, K, H, S), (B, K, S, H))]
        assert len(cache_writes) == 2 * model_cfg.num_layers


def _distinct_fusions(text: str) -> int:
    """How many different fused computations (bodies with names erased) a compiled program holds:
    XLA:CPU compiles one kernel per different body, so this is what compile time grows with."""
    bodies, current = set(), None
    for line in text.splitlines():
        if re.match(r"^%fused\S* .*\{$", line):
            current = []
        elif current is not None and line.startswith("}"):
            bodies.add("\n".join(current))
            current = None
        elif current is not None:
            current.append(re.sub(r"%[\w.\-]+", "%", re.sub(r", metadata=\{[^}]*\}", "", line)).strip())
    return len(bodies)


def test_layer_slicing_kernels_do_not_grow_with_depth():
    """With runtime layer ids (what ``sample`` passes) the program's distinct kernels are the same for
    5 and 10 layers: slicing a layer's weights out of the stacked parameters is one kernel per
    parameter, not per (parameter, layer). With constant offsets (``layer_ids=None``) they grow."""
    sds = jax.ShapeDtypeStruct
    B, P = 4, 2
    cfg = SamplerConfig(max_new_tokens=8, prompt_buckets=(P,), new_token_buckets=(8,), cache_phases=1)
    counts = {}
    for layers in (5, 10):
        model_cfg = tiny_config("qwen3", num_layers=layers)
        graphdef, params = nnx.split(nnx.eval_shape(lambda: Transformer(model_cfg, rngs=nnx.Rngs(0))), nnx.Param)
        for runtime in (True, False):
            ids = tuple(np.int32(i) for i in range(layers)) if runtime else None
            text = sample_program.trace(
                graphdef, params, sds((B, P), np.int32), sds((B, P), np.bool_), jax.random.key(0),
                sds((B,), np.int32), np.int32(8), np.float32(0), None, None, ids, cfg=cfg).lower().compile().as_text()
            counts[layers, runtime] = _distinct_fusions(text)
    assert counts[5, True] == counts[10, True], counts
    assert counts[10, False] > counts[5, False] > counts[5, True], counts


def test_cpu_program_samples_what_the_default_program_samples(monkeypatch):
    """On CPU ``sample`` runs ``cpu_sample_program`` (compiled at ``CPU_COMPILER_OPTIONS``) unless
    $XLA_FLAGS names an LLVM level (as the tests' conftest does); it draws the same tokens, with the
    same log-probabilities, as the program at the flags' options."""
    from opd_jax.sampling import sampler as S

    model_cfg = tiny_config("qwen3")
    graphdef, params = nnx.split(Transformer(model_cfg, rngs=nnx.Rngs(3)), nnx.Param)
    assert "xla_backend_optimization_level" in os.environ["XLA_FLAGS"]  # conftest names one
    assert S.program_for(params) is S.sample_program
    assert S.cpu_sample_program is not S.sample_program
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
    calls, cpu_program = [], S.cpu_sample_program
    monkeypatch.setattr(S, "cpu_sample_program", lambda *a, **kw: calls.append(1) or cpu_program(*a, **kw))
    assert S.program_for(params) is S.cpu_sample_program
    tokens, mask = left_padded(model_cfg.vocab_size, [3, 7, 5], 8)
    cfg = SamplerConfig(max_new_tokens=40, temperature=1.0, top_k=20, prompt_buckets=(8,), new_token_buckets=(40,))
    ours = sample(graphdef, params, tokens, mask, jax.random.key(1), cfg=cfg)
    assert calls == [1]  # sample ran the CPU program
    default = S.sample_program(graphdef, params, tokens, mask, jax.random.key(1), np.arange(3, dtype=np.int32),
                               np.int32(40), np.float32(0), None, None, S.layer_ids(graphdef, params), cfg=cfg)
    np.testing.assert_array_equal(ours.tokens, default.tokens)
    np.testing.assert_allclose(ours.logp, default.logp, rtol=1e-5, atol=1e-6)


def test_cache_is_float32_on_cpu_unless_named():
    """``cache_dtype=None`` on CPU is ``"float32"``, whatever the compute dtype: the very program of
    ``cache_dtype="float32"`` (calling with it traces nothing new, and samples the same), while a
    named bf16 cache is a program of its own."""
    from opd_jax.sampling import sampler as S

    model_cfg = tiny_config("qwen3", param_dtype="bfloat16", dtype="bfloat16")
    graphdef, params = nnx.split(Transformer(model_cfg, rngs=nnx.Rngs(3)), nnx.Param)
    assert S.platform_of(params) == "cpu"
    tokens, mask = left_padded(model_cfg.vocab_size, [3, 7, 5], 8)
    cfg = SamplerConfig(max_new_tokens=12, temperature=0.0, prompt_buckets=(8,), new_token_buckets=(12,))
    assert [S.cache_dtype_for(cfg.replace(cache_dtype=d), params) for d in (None, "float32", "bfloat16")] == [
        "float32", "float32", "bfloat16"]
    default = sample(graphdef, params, tokens, mask, jax.random.key(1), cfg=cfg)
    before = trace_count()
    named = sample(graphdef, params, tokens, mask, jax.random.key(1), cfg=cfg.replace(cache_dtype="float32"))
    assert trace_count() == before
    np.testing.assert_array_equal(default.tokens, named.tokens)
    np.testing.assert_array_equal(default.logp, named.logp)
    sample(graphdef, params, tokens, mask, jax.random.key(1), cfg=cfg.replace(cache_dtype="bfloat16"))
    assert trace_count() == before + 1
