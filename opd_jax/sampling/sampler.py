"""The jitted sampler: prefill left-padded prompts, then decode with a KV cache in ``while_loop``s.

One compiled program per (model structure, sampler config, batch size, prompt bucket, generation
bucket). Inside it the decode state (``SamplingState``: KV caches, output buffers, next-token
logits) is the ``while_loop`` carry, which XLA donates from each iteration to the next: the cache
and the buffers are updated in place, one slot or column per step, never copied (a test bounds
the program's scratch memory). No state crosses the jit boundary, so there is nothing to donate
there: parameters stay with the trainer, prompts with the caller.

The cache grows in phases (``SamplerConfig.cache_phases``): one ``while_loop`` per cache size,
the cache padded to the next size between them, so that early steps attend over fewer slots.
``"auto"`` decides from the models' shapes (phases only where attention is a real share of a step)
and the rows (fewer phases for fewer rows, where each saves less decode time).

The prompts go through the model's scanned full-sequence forward once (``model.prefill``); the
decode steps through ``model.decoder()``, built once before the loop: per-layer weights that the
loop body reads in place (slicing stacked weights inside the loop would copy them every step).
A model without these methods (a test fake) is called as ``model.hidden(..., cache=)`` throughout;
so is a frozen model (``freeze``: the decoder's per-layer weights made once, outside the program).

PRNG: row ``r`` (sample ``j`` of prompt ``b``) owns the stream ``fold_in(key, row_ids[b] * n + j)``
and step ``s`` uses ``fold_in(stream, s)``, so a row's sample depends on its prompt, ``key`` and
its global id only: not on the other rows, the batch size or the sharding.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from opd_jax.models import ops
from opd_jax.models.cache import KVCache, init_cache
from opd_jax.sampling import distribution as D
from opd_jax.sampling import inputs
from opd_jax.sampling.frozen import is_frozen
from opd_jax.sampling.rollout import Rollout, SamplingState
from opd_jax.sampling.config import SamplerConfig
from opd_jax.sharding import shard


_TRACES = [0]


def trace_count() -> int:
    """How many times the sampling program has been traced (each trace is a compilation)."""
    return _TRACES[0]


def _shard_cache(cache: KVCache) -> KVCache:
    return jax.tree.map(lambda x, names: shard(x, *names), cache, KVCache.logical_axes(cache.num_layers))


def _repeat_rows(x, n: int):
    """Repeat every batch row ``n`` times (sample ``j`` of row ``b`` lands at ``b * n + j``)."""
    if n == 1:
        return x
    if isinstance(x, KVCache):
        return KVCache(k=[jnp.repeat(k, n, axis=0) for k in x.k], v=[jnp.repeat(v, n, axis=0) for v in x.v],
                       valid=jnp.repeat(x.valid, n, axis=0), index=x.index)
    return jnp.repeat(x, n, axis=0)


def _grow(cache: KVCache | None, max_len: int):
    return None if cache is None else _shard_cache(cache.grow(max_len))


def _prefill(model, prompts_BP, mask_BP, positions_BP, cache_len: int, cache_dtype, n: int, layer_ids):
    """Run the prompts through ``model`` once (not once per sample): next-token logits and cache, ``R`` rows."""
    if hasattr(model, "prefill"):
        h_BPD, cache = model.prefill(prompts_BP, positions_BP, mask=mask_BP, cache_len=cache_len,
                                     cache_dtype=cache_dtype, layer_ids=layer_ids)
    else:
        cache = _shard_cache(init_cache(model.cfg, prompts_BP.shape[0], cache_len, cache_dtype))
        h_BPD, cache = model.hidden(prompts_BP, positions_BP, mask=mask_BP, cache=cache)
    logits_BV = model.logits(h_BPD[:, -1:])[:, 0]  # left padding: the last column is always real
    return shard(_repeat_rows(logits_BV, n), "batch", "vocab"), _shard_cache(_repeat_rows(cache, n))


def _attention_share(models, cache_len: int) -> float | None:
    """Attention's share of the models' decode multiply-adds at a full cache (None for a model
    without ``cfg.decode_macs``: a test fake)."""
    macs = [getattr(getattr(m, "cfg", None), "decode_macs", None) for m in models]
    if any(m is None for m in macs):
        return None
    weights, attention = (sum(parts) for parts in zip(*(m(cache_len) for m in macs)))
    return attention / (weights + attention)


def _merge(graphdef, params):
    """The model inside the program: a ``Transformer``, or a frozen model's ``Decoder`` (``freeze``)."""
    return params if is_frozen(graphdef) else nnx.merge(graphdef, params)


def _decoder(model, max_positions: int, layer_ids):
    """What the decode loop calls: ``model.decoder()`` (per-layer weights, built once) if it has one;
    a frozen model's ``Decoder`` as it is, with RoPE tabulated."""
    if hasattr(model, "with_rope_tables"):
        return model.with_rope_tables(max_positions)
    return model.decoder(max_positions, layer_ids) if hasattr(model, "decoder") else model


def _decode(model, tokens_R, positions_R, mask_R, cache):
    h, cache = model.hidden(tokens_R[:, None], positions_R[:, None], mask=mask_R[:, None], cache=cache)
    return shard(model.logits(h)[:, 0], "batch", "vocab"), _shard_cache(cache)


def _write(buf, col, values):
    """``buf[:, col] = values``."""
    return ops.write_slots(buf, values[:, None], col, axis=1)


_RECORDED = ("topk_ids", "topk_logp", "entropy")  # SamplerConfig.record_topk's records

# Traced once per program, not once per cache phase (the phases' loops call it with the same shapes).
_choose_once = jax.jit(D.choose, static_argnums=0)


def _emit(cfg: SamplerConfig, state: SamplingState, col, keys_R, mix):
    """Sample column ``col`` from ``state.logits`` for every unfinished row and record it: the new
    state, and the column's tokens and mask (what the next forward takes; reading them back out of
    the updated buffers would make XLA copy the buffers on every step)."""
    tokens, logp, extras = _choose_once(cfg, keys_R, state.logits, state.teacher_logits, mix)
    if cfg.record_topk:
        extras = dict(extras, **dict(zip(_RECORDED, D.top_tokens(state.logits, cfg.record_topk,
                                                                 cfg.record_temperature))))
    live = ~state.done
    written = jnp.where(live, tokens, cfg.pad_id).astype(state.tokens.dtype)
    updates = dict(
        tokens=_write(state.tokens, col, written),
        mask=_write(state.mask, col, live),
        logp=_write(state.logp, col, jnp.where(live, logp, 0.0)),
        done=state.done | (live & _is_eos(tokens, cfg.eos_ids)),
    )
    for name, value in extras.items():
        alive = live.reshape(live.shape + (1,) * (value.ndim - 1))
        updates[name] = _write(getattr(state, name), col, jnp.where(alive, value, jnp.zeros_like(value)))
    return state.replace(**updates), written, live


def _is_eos(tokens_R, eos_ids: tuple[int, ...]):
    if not eos_ids:
        return jnp.zeros(tokens_R.shape, jnp.bool_)
    return jnp.any(tokens_R[:, None] == jnp.asarray(eos_ids, jnp.int32)[None, :], axis=1)


def _run_positions(first_R, count_R, width: int):
    """``max(cumsum(mask) - 1, 0)`` for rows whose mask is one run of ``count`` True from column
    ``first`` (a left-padded prompt, then its completion): one elementwise kernel, where XLA:CPU
    compiles a cumulative sum into ~5."""
    cols = jnp.arange(width, dtype=jnp.int32)[None, :]
    return jnp.clip(cols - first_R[:, None], 0, jnp.maximum(count_R - 1, 0)[:, None])


def _program(graphdef, params, prompts_BP, mask_BP, key, row_ids_B, max_new, mix, teacher_graphdef,
             teacher_params, layer_ids=None, *, cfg: SamplerConfig):
    """The whole sampler as one traced function; ``cfg.max_new_tokens`` is the buffer width N.

    ``layer_ids``: int32 scalars ``0, 1, ...`` (at least as many as either model has layers),
    runtime offsets for slicing layers out of the stacked weights (``layer_slice``: the same
    program, compiled faster); None slices at constant offsets.
    """
    _TRACES[0] += 1
    n, N = cfg.num_samples, cfg.max_new_tokens
    B, P = prompts_BP.shape
    R = B * n
    model = _merge(graphdef, params)
    teacher = None if teacher_graphdef is None else _merge(teacher_graphdef, teacher_params)
    cache_len = cfg.cache_size(P)
    share = _attention_share([model] if teacher is None else [model, teacher], cache_len)
    capacities = cfg.cache_capacities(P, share, R)  # the cache grows through these sizes to cache_len
    prompt_len_B = mask_BP.sum(axis=1, dtype=jnp.int32)
    positions_BP = _run_positions(P - prompt_len_B, prompt_len_B, P)
    prefill = lambda m: _prefill(m, prompts_BP, mask_BP, positions_BP, capacities[0], cfg.cache_dtype, n,
                                 layer_ids)
    logits, cache = prefill(model)
    t_logits, t_cache = (None, None) if teacher is None else prefill(teacher)
    # Built here, outside the loop: the loop body reads these weights, it never slices them.
    # A token's position is at most its cache slot, so every decode position is below cache_len.
    decoder = _decoder(model, cache_len, layer_ids)
    t_decoder = None if teacher is None else _decoder(teacher, cache_len, layer_ids)

    # Greedy decoding draws no random bits (a teacher's coin does): no key is derived, so none is
    # traced, lowered or compiled.
    random, keys_R = not cfg.greedy or (teacher is not None and cfg.teacher_blend == "coin"), None
    if random:
        streams_R = _repeat_rows(row_ids_B, n) * n + jnp.tile(jnp.arange(n, dtype=jnp.int32), B)
        keys_R = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(key, streams_R)
    next_pos_R = _repeat_rows(prompt_len_B, n)  # position of completion token 0

    def buffer(prompt_part, fill=0):
        rest = jnp.full((R, N), fill, prompt_part.dtype)
        return shard(jnp.concatenate([_repeat_rows(prompt_part, n), rest], axis=1), "batch", None)

    zeros_BP = jnp.zeros((B, P), jnp.float32)
    mixed, coin = teacher is not None, cfg.teacher_blend == "coin"
    state = SamplingState(
        step=jnp.zeros((), jnp.int32),
        tokens=buffer(jnp.where(mask_BP, prompts_BP, cfg.pad_id).astype(jnp.int32), cfg.pad_id),
        mask=buffer(mask_BP),
        logp=buffer(zeros_BP),
        done=jnp.zeros((R,), jnp.bool_),
        logits=logits, cache=cache, teacher_logits=t_logits, teacher_cache=t_cache,
        student_logp=buffer(zeros_BP) if mixed else None,
        teacher_logp=buffer(zeros_BP) if mixed else None,
        from_teacher=buffer(jnp.zeros((B, P), jnp.bool_)) if mixed and coin else None,
        teacher_weight=buffer(zeros_BP) if mixed and not coin else None,
    )
    if cfg.record_topk:
        top = lambda dtype: shard(jnp.zeros((R, P + N, cfg.record_topk), dtype), "batch", None, None)  # noqa: E731
        state = state.replace(topk_ids=top(jnp.int32), topk_logp=top(jnp.float32), entropy=buffer(zeros_BP))

    # The body samples a token, then feeds it to the model unless no token will follow: the
    # random-bit code exists once per phase (XLA compiles each copy of it slowly).
    def cond(state: SamplingState):
        # step < max_new, some row unfinished, a free cache slot for the token the body feeds.
        return (state.step < max_new) & ~jnp.all(state.done) & (state.cache.index < state.cache.max_len)

    def body(state: SamplingState):
        step_keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(keys_R, state.step) if random else None
        col = P + state.step
        state, token, real = _emit(cfg, state, col, step_keys, mix)
        pos = next_pos_R + state.step

        def forward(carry):
            logits, cache, t_logits, t_cache = carry
            logits, cache = _decode(decoder, token, pos, real, cache)
            if teacher is not None:
                t_logits, t_cache = _decode(t_decoder, token, pos, real, t_cache)
            return logits, cache, t_logits, t_cache

        # No forward after the last token (every row done, or max_new reached): its logits would go unused.
        more = (state.step + 1 < max_new) & ~jnp.all(state.done)
        carry = (state.logits, state.cache, state.teacher_logits, state.teacher_cache)
        logits, cache, t_logits, t_cache = jax.lax.cond(more, forward, lambda c: c, carry)
        return state.replace(step=state.step + 1, logits=logits, cache=cache, teacher_logits=t_logits,
                             teacher_cache=t_cache)

    for phase, capacity in enumerate(capacities):
        if phase:  # the cache is full (or decoding is over): grow it for the next phase
            state = state.replace(cache=_grow(state.cache, capacity),
                                  teacher_cache=_grow(state.teacher_cache, capacity))
        state = jax.lax.while_loop(cond, body, state)
    completion = state.mask & (jnp.arange(P + N, dtype=jnp.int32) >= P)[None, :]
    return Rollout(tokens=state.tokens, mask=state.mask, completion_mask=completion, logp=state.logp,
                   positions=_run_positions(P - next_pos_R, state.mask.sum(axis=1, dtype=jnp.int32), P + N),
                   finished=state.done, student_logp=state.student_logp,
                   teacher_logp=state.teacher_logp, from_teacher=state.from_teacher,
                   teacher_weight=state.teacher_weight, topk_ids=state.topk_ids,
                   topk_logp=state.topk_logp, entropy=state.entropy, prompt_len=P)


_STATIC = ("graphdef", "teacher_graphdef", "cfg")
# XLA:CPU's LLVM at level 1 compiles the sampling program 0.1-0.3 s (10-25%) faster than at its
# default, and decodes as fast (benchmarks/sampler_compile.py --opt-levels default,1). Other
# platforms keep theirs, and so does a level named in $XLA_FLAGS (the user's, or the tests' 0).
CPU_COMPILER_OPTIONS = {"xla_backend_optimization_level": 1}
sample_program = jax.jit(_program, static_argnames=_STATIC)
cpu_sample_program = jax.jit(_program, static_argnames=_STATIC, compiler_options=CPU_COMPILER_OPTIONS)


def platform_of(params) -> str:
    """The platform (``"cpu"``, ``"gpu"``, ``"tpu"``) the parameters live on (the default backend's
    for host arrays)."""
    sharding = getattr(jax.tree.leaves(params)[0], "sharding", None)
    return next(iter(sharding.device_set)).platform if sharding is not None else jax.default_backend()


def program_for(params):
    """``cpu_sample_program`` on CPU devices (unless $XLA_FLAGS names a level), else ``sample_program``."""
    named = any(option in os.environ.get("XLA_FLAGS", "") for option in CPU_COMPILER_OPTIONS)
    return cpu_sample_program if platform_of(params) == "cpu" and not named else sample_program


def cache_dtype_for(cfg: SamplerConfig, params) -> str | None:
    """The KV cache's dtype ``sample`` uses: ``cfg.cache_dtype``, or when that is None, float32 on
    CPU (XLA:CPU converts a bf16 cache to float32 for attention on every step, and a float32 cache
    beside bf16 weights is read in place: BENCHMARKS.md, "bf16: products summed in float32") and
    None (the compute dtype) elsewhere."""
    if cfg.cache_dtype is None and platform_of(params) == "cpu":
        return "float32"
    return cfg.cache_dtype


_MODEL_CFGS: dict = {}


def layer_ids(graphdef, params, teacher_graphdef=None, teacher_params=None) -> tuple:
    """The ``layer_ids`` argument of ``sample_program``: one int32 scalar per layer of the deeper model."""
    depth = [getattr(model_config(graphdef, params), "num_layers", 0)]
    if teacher_graphdef is not None:
        depth.append(getattr(model_config(teacher_graphdef, teacher_params), "num_layers", 0))
    return tuple(np.int32(i) for i in range(max(depth)))


def model_config(graphdef, params):
    """The ``ModelConfig`` of a split (or frozen) model (cached per graph definition)."""
    if is_frozen(graphdef):
        return graphdef.cfg
    if graphdef not in _MODEL_CFGS:
        _MODEL_CFGS[graphdef] = nnx.merge(graphdef, params).cfg
    return _MODEL_CFGS[graphdef]


def sample(graphdef, params, prompts, prompt_mask, key, *, cfg: SamplerConfig, row_ids=None,
           teacher=None, teacher_mix: float = 0.0) -> Rollout:
    """Sample ``cfg.num_samples`` completions per LEFT-padded prompt in one compiled program.

    ``graphdef, params = nnx.split(model, nnx.Param)``: new parameter values never retrace; or the
    pair ``freeze(graphdef, params)`` returns, for a model that does not change between calls.
    ``prompts int [B, P]``, ``prompt_mask bool [B, P]``; ``key`` a PRNG key; ``row_ids int [B]`` the
    prompts' global indices (default ``arange(B)``), which seed the per-row PRNG streams.
    ``teacher=(graphdef, params)`` of a model with the same vocabulary turns on teacher-mixed
    sampling (``teacher_mix`` is traced: a schedule does not retrace): with
    ``cfg.teacher_blend="coin"`` each token comes from the teacher with probability ``teacher_mix``,
    else from the student; with ``"geometric"`` (TRB) from the blend of both models' logits whose
    KL from the student's distribution is at most ``teacher_mix`` nats (``distribution.choose``).
    The same ``cfg`` shapes every distribution.
    Under ``jax.set_mesh(mesh)`` rows are sharded over the data axes and heads over ``tensor``.
    Inputs are checked here, before tracing; see ``Rollout`` for the result.
    """
    if not isinstance(cfg, SamplerConfig):
        raise TypeError(f"cfg must be a SamplerConfig, got {type(cfg).__name__}")
    vocab = model_config(graphdef, params).vocab_size
    mask_on_host = inputs.check_prompts(prompts, prompt_mask, vocab)
    inputs.check_ids(cfg, vocab)
    if teacher is not None and (not isinstance(teacher, tuple) or len(teacher) != 2):
        raise ValueError("teacher must be the pair (graphdef, params) = nnx.split(teacher_model, nnx.Param), "
                         f"got {type(teacher).__name__}")
    t_graphdef, t_params = (None, None) if teacher is None else teacher
    t_vocab = None if teacher is None else model_config(t_graphdef, t_params).vocab_size
    mix = inputs.check_teacher(teacher, teacher_mix, vocab, t_vocab, cfg.teacher_blend)
    key = inputs.check_key(key)
    row_ids = inputs.check_row_ids(row_ids, prompts.shape[0])
    prompts, prompt_mask = inputs.bucket_prompts(prompts, prompt_mask, mask_on_host, cfg)
    # Only the buffer width is static; the requested length is a traced loop bound.
    static_cfg = cfg.replace(max_new_tokens=cfg.new_token_bucket(), prompt_buckets=(), new_token_buckets=(),
                             cache_dtype=cache_dtype_for(cfg, params))
    return program_for(params)(graphdef, params, prompts, prompt_mask, key, row_ids,
                               np.int32(cfg.max_new_tokens), np.float32(mix), t_graphdef, t_params,
                               layer_ids(graphdef, params, t_graphdef, t_params), cfg=static_cfg)
