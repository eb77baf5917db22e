"""Properties of the JAX transformer: cache == full forward, padding invariance, jit/sharding."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from hf_reference import jit_forward, padded_batch, random_model
from opd_jax.models import KVCache, Transformer, init_cache, tiny_config
from opd_jax.sharding import logical_sharding, make_mesh
from opd_jax.models.transformer import LOOP_LAYERS

TOL = 1e-5


def _model(arch="qwen3", seed=0, **overrides):
    return random_model(tiny_config(arch, **overrides), seed)


def test_cached_prefill_and_decode_equal_full_forward():
    """Prefill (in two chunks) then 1-token decode steps reproduce one full forward pass.

    Row 1 has a masked 'decode' token (e.g. a finished row): later tokens must not see its slot.
    """
    model = _model("qwen3")
    forward = jit_forward(model)
    prompt, steps = 7, 4
    tokens = np.random.RandomState(1).randint(0, model.cfg.vocab_size, (3, prompt + steps)).astype(np.int32)
    prompt_mask = padded_batch(model.cfg.vocab_size, (7, 5, 2), prompt)[1]  # left padding 0, 2, 5
    mask = np.concatenate([prompt_mask, np.ones((3, steps), bool)], axis=1)
    mask[1, prompt + 1] = False
    positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0).astype(np.int32)
    full, _ = forward(tokens, positions, mask)

    cache = init_cache(model.cfg, batch=3, max_len=16)
    pieces = []
    for start, stop in [(0, 3), (3, prompt)] + [(t, t + 1) for t in range(prompt, prompt + steps)]:
        logits, cache = forward(tokens[:, start:stop], positions[:, start:stop], mask[:, start:stop], cache)
        pieces.append(logits)
        assert int(cache.index) == stop
    cached = np.concatenate(pieces, axis=1)
    np.testing.assert_allclose(cached[mask], np.asarray(full)[mask], atol=TOL, rtol=0)
    assert np.isfinite(cached).all()
    np.testing.assert_array_equal(np.asarray(cache.valid)[:, :prompt + steps], mask)
    assert not np.asarray(cache.valid)[:, prompt + steps:].any()


def test_prefill_and_decoder_equal_the_cached_forward():
    """``prefill`` (scanned, T keys) equals ``hidden`` with an empty cache (looped, S slots), slot for
    slot; ``decoder()`` calls equal ``model(..., cache=)``, with RoPE tables too; the cache holds one
    keys ``[B, K, Dh, S]`` and one values ``[B, K, S, Dh]`` array per layer. Shallow models run their
    layers in a Python loop, deeper ones (``LOOP_LAYERS``) in a scan: both are checked."""
    for arch, overrides in [("qwen3", {}), ("qwen2", dict(tie_word_embeddings=False)), ("llama", {}),
                            ("qwen3", dict(num_layers=LOOP_LAYERS + 1))]:
        model = _model(arch, **overrides)
        cfg = model.cfg
        graphdef, params = nnx.split(model, nnx.Param)
        tokens, mask, positions = padded_batch(cfg.vocab_size, (6, 3, 1), 6)
        S = 10

        @jax.jit
        def run(params):
            m = nnx.merge(graphdef, params)
            h_pre, pre = m.prefill(tokens, positions, mask=mask, cache_len=S)
            h_ref, ref = m.hidden(tokens, positions, mask=mask, cache=init_cache(cfg, 3, S))
            step = (tokens[:, :1], positions[:, -1:] + 1, mask[:, -1:])
            via_model = m(*step[:2], mask=step[2], cache=pre)
            via_decoder = m.decoder()(*step[:2], mask=step[2], cache=pre)
            via_tables = m.decoder(max_positions=S)(*step[:2], mask=step[2], cache=pre)[0]
            beyond = m.decoder(max_positions=1)(*step[:2], mask=step[2], cache=pre)[0]  # positions 6, 3, 1
            return h_pre, pre, h_ref, ref, via_model, via_decoder, via_tables, beyond

        h_pre, pre, h_ref, ref, (logits_m, cache_m), (logits_d, cache_d), logits_t, beyond = run(params)
        np.testing.assert_allclose(logits_t, logits_m, atol=TOL, rtol=0)  # RoPE tables = RoPE computed
        assert np.isnan(np.asarray(beyond)).all()  # a position past the tables is loud, not clamped
        # Padding positions are don't-care (never visible): compare real tokens and valid slots.
        np.testing.assert_allclose(np.asarray(h_pre)[mask], np.asarray(h_ref)[mask], atol=TOL, rtol=0)
        assert len(pre.k) == len(pre.v) == cfg.num_layers
        kv_pairs = [(a, b, 3) for a, b in zip(pre.k, ref.k)] + [(a, b, 2) for a, b in zip(pre.v, ref.v)]
        for a, b, slot_axis in kv_pairs:  # keys [B, K, Dh, S], values [B, K, S, Dh]
            shape = [3, cfg.num_kv_heads, cfg.head_dim]
            assert a.shape == b.shape == tuple(shape[:slot_axis] + [S] + shape[slot_axis:])
            a, b = np.moveaxis(np.asarray(a), slot_axis, 1), np.moveaxis(np.asarray(b), slot_axis, 1)  # [B, S, ...]
            np.testing.assert_allclose(a[:, :6][mask], b[:, :6][mask], atol=TOL, rtol=0)
            assert not a[:, 6:].any()  # slots past the prompt stay empty
        np.testing.assert_array_equal(pre.valid, ref.valid)
        assert int(pre.index) == int(ref.index) == 6
        np.testing.assert_array_equal(logits_m, logits_d)
        for a, b in zip(jax.tree.leaves(cache_m), jax.tree.leaves(cache_d)):
            np.testing.assert_array_equal(a, b)
        assert int(cache_d.index) == 7


def test_grown_cache_decodes_like_a_full_size_cache():
    """``KVCache.grow`` keeps every slot and appends empty ones: decoding on equals decoding in a
    cache that had the larger size from the start."""
    model = _model("llama")
    forward = jit_forward(model)
    tokens, mask, positions = padded_batch(model.cfg.vocab_size, (5, 2), 5)
    step = (tokens[:, :1], positions[:, -1:] + 1, np.ones((2, 1), bool))
    _, small = forward(tokens, positions, mask, init_cache(model.cfg, 2, 6))
    grown = small.grow(9)
    assert grown.max_len == 9 and int(grown.index) == 5 and small.grow(6) is small
    pairs = [(a, b, 3) for a, b in zip(grown.k, small.k)] + [(a, b, 2) for a, b in zip(grown.v, small.v)]
    for a, b, slot_axis in pairs:  # keys [B, K, Dh, S], values [B, K, S, Dh]
        a, b = np.moveaxis(np.asarray(a), slot_axis, -1), np.moveaxis(np.asarray(b), slot_axis, -1)
        assert a.shape == b.shape[:3] + (9,)
        np.testing.assert_array_equal(a[..., :6], b)
        assert not a[..., 6:].any()
    np.testing.assert_array_equal(np.asarray(grown.valid)[:, :6], small.valid)
    assert not np.asarray(grown.valid)[:, 6:].any()
    _, full = forward(tokens, positions, mask, init_cache(model.cfg, 2, 9))
    expected, _ = forward(*step, full)
    got, _ = forward(*step, grown)
    np.testing.assert_allclose(got, expected, atol=TOL, rtol=0)
    with pytest.raises(ValueError, match="grow"):
        small.grow(5)


def test_rows_writing_from_their_own_slots_equal_the_full_forward():
    """A cache whose index is one slot per row (speculative sampling): row 0 keeps a stale,
    then overwritten, token in the slots it rewrites and row 1 an invalid gap before its tokens;
    each row's logits equal the full forward of its own tokens."""
    model = _model("qwen3")
    forward = jit_forward(model)
    V = model.cfg.vocab_size
    rng = np.random.default_rng(0)
    seq = rng.integers(1, V, (2, 6)).astype(np.int32)
    positions = np.broadcast_to(np.arange(6, dtype=np.int32), (2, 6))
    want, _ = forward(seq, positions, np.ones((2, 6), bool), None)
    cache = init_cache(model.cfg, 2, 12).replace(index=jnp.array([0, 3], jnp.int32))
    # row 0 from slot 0, row 1 from slot 3 (slots 0-2 never valid); tokens 0-3, then a wrong 4th
    wrong = seq[:, :4].copy()
    wrong[:, 3] = (wrong[:, 3] + 1) % V
    _, cache = forward(wrong, positions[:, :4], np.ones((2, 4), bool), cache)
    np.testing.assert_array_equal(np.asarray(cache.index), [4, 7])
    cache = cache.replace(index=cache.index - 1)  # reject the 4th: the next call overwrites it
    got, cache = forward(seq[:, 3:], positions[:, 3:], np.ones((2, 3), bool), cache)
    np.testing.assert_allclose(got, want[:, 3:], atol=TOL, rtol=0)
    np.testing.assert_array_equal(np.asarray(cache.valid).sum(1), [6, 6])


def test_left_padded_rows_equal_unpadded_rows():
    model = _model("qwen2")
    lengths, total = (10, 6, 1), 10
    tokens, mask, positions = padded_batch(model.cfg.vocab_size, lengths, total)
    forward = jit_forward(model)
    batched, _ = forward(tokens, positions, mask)
    for b, n in enumerate(lengths):
        alone, _ = forward(tokens[b:b + 1, total - n:], np.arange(n, dtype=np.int32)[None])
        np.testing.assert_allclose(np.asarray(batched)[b, total - n:], np.asarray(alone)[0], atol=TOL, rtol=0)


def test_padding_rows_are_finite_with_finite_gradients():
    """An all-padding row and padded query positions give finite logits and gradients."""
    model = _model("llama")
    tokens, mask, positions = padded_batch(model.cfg.vocab_size, (6, 0), 6)
    graphdef, params = nnx.split(model, nnx.Param)

    def loss(params):
        logits, _ = nnx.merge(graphdef, params)(tokens, positions, mask=mask)
        return jnp.sum(jnp.where(mask[..., None], jax.nn.log_softmax(logits), 0.0))

    logits, _ = jit_forward(model)(tokens, positions, mask)
    assert np.isfinite(np.asarray(logits)).all()
    grads = jax.jit(jax.grad(loss))(params)
    assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads))


def test_split_merge_under_jit_matches_eager_and_trains():
    model = _model("qwen3")
    tokens, mask, positions = padded_batch(model.cfg.vocab_size, (8, 5), 8)
    eager, _ = model(tokens, positions, mask=mask)  # the one un-jitted forward of the suite
    graphdef, params = nnx.split(model, nnx.Param)

    @jax.jit
    def forward(params, tokens, positions, mask):
        return nnx.merge(graphdef, params)(tokens, positions, mask=mask)[0]

    np.testing.assert_allclose(forward(params, tokens, positions, mask), eager, atol=TOL, rtol=0)

    # An optax step through the same functional boundary lowers the next-token loss.
    def loss(params):
        logits = forward(params, tokens, positions, mask)[:, :-1]
        nll = optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:])
        return jnp.sum(jnp.where(mask[:, 1:], nll, 0.0)) / mask[:, 1:].sum()

    tx = optax.adam(1e-2)

    @jax.jit
    def step(params):
        before, grads = jax.value_and_grad(loss)(params)
        updates, _ = tx.update(grads, tx.init(params), params)
        return before, loss(optax.apply_updates(params, updates))

    before, after = step(params)
    assert after < before


def test_hidden_logits_and_lm_head_contract():
    for tied in (True, False):
        model = _model("qwen3", tie_word_embeddings=tied)
        tokens, mask, positions = padded_batch(model.cfg.vocab_size, (5, 3), 5)
        graphdef, params = nnx.split(model, nnx.Param)

        @jax.jit
        def run(params):
            m = nnx.merge(graphdef, params)
            h, cache = m.hidden(tokens, positions, mask=mask)
            return h, cache, m.lm_head_weight(), m.logits(h), m(tokens, positions, mask=mask)[0]

        h, cache, w, from_h, logits = run(params)
        assert cache is None and h.shape == (2, 5, model.cfg.hidden_size)
        assert w.shape == (model.cfg.hidden_size, model.cfg.vocab_size)
        if tied:
            np.testing.assert_array_equal(w, model.embed[...].T)
        np.testing.assert_array_equal(from_h, logits)
        np.testing.assert_allclose(logits, np.einsum("btd,dv->btv", h, w), atol=TOL, rtol=0)


def test_dtype_policy_bfloat16():
    tokens, mask, positions = padded_batch(97, (4,), 4)
    for param_dtype in ("bfloat16", "float32"):
        cfg = tiny_config("qwen3", param_dtype=param_dtype, dtype="bfloat16")

        def run():  # under eval_shape: dtypes are checked without computing anything
            model = Transformer(cfg, rngs=nnx.Rngs(0))
            h, _ = model.hidden(tokens, positions, mask=mask)
            logits, cache = model(tokens, positions, mask=mask, cache=init_cache(cfg, 1, 8))
            return nnx.state(model, nnx.Param), h, logits, cache

        params, h, logits, cache = nnx.eval_shape(run)
        assert {x.dtype for x in jax.tree.leaves(params)} == {jnp.dtype(param_dtype)}
        assert h.dtype == jnp.bfloat16
        assert {x.dtype for x in cache.k + cache.v} == {jnp.dtype(jnp.bfloat16)}
        assert logits.dtype == jnp.float32


def test_remat_gives_same_logits_and_gradients():
    model = _model("llama")
    remat = random_model(model.cfg.replace(remat=True))
    tokens, mask, positions = padded_batch(model.cfg.vocab_size, (6, 4), 6)

    def grads(m):
        graphdef, params = nnx.split(m, nnx.Param)
        f = lambda p: jnp.sum(nnx.merge(graphdef, p)(tokens, positions, mask=mask)[0] ** 2)
        return jax.jit(jax.grad(f))(params)

    for a, b in zip(jax.tree.leaves(grads(model)), jax.tree.leaves(grads(remat))):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)


def test_layer_loop_equals_scan(monkeypatch):
    """Shallow models loop over layers in Python; the scan computes the same logits, gradients
    and prefilled cache."""
    import opd_jax.models.transformer as transformer
    model = _model("qwen3")
    assert model.cfg.num_layers <= transformer.LOOP_LAYERS
    tokens, mask, positions = padded_batch(model.cfg.vocab_size, (6, 4, 1), 6)
    graphdef, params = nnx.split(model, nnx.Param)

    def run():
        f = lambda p: jnp.sum(nnx.merge(graphdef, p)(tokens, positions, mask=mask)[0] ** 2)
        prefill = lambda p: nnx.merge(graphdef, p).prefill(tokens, positions, mask=mask,
                                                             cache_len=8)
        return jax.jit(jax.value_and_grad(f))(params), jax.jit(prefill)(params)

    looped = run()
    monkeypatch.setattr(transformer, "LOOP_LAYERS", 0)
    scanned = run()
    # Two programs that sum in different orders: float32 rounding apart (5e-5 relative in a few
    # gradient entries under XLA:CPU's older emitters); a layer out of place moves them by O(1).
    for a, b in zip(jax.tree.leaves(looped), jax.tree.leaves(scanned), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-4, rtol=2e-4)


def test_sharded_forward_equals_unsharded(n_devices):
    """Parameters placed by their logical names on a (data=2, fsdp=2, tensor=2) mesh."""
    model = _model("qwen2", vocab_size=128)  # every sharded size divides by 2
    tokens, mask, positions = padded_batch(model.cfg.vocab_size, (8, 5, 3, 1), 8)
    expected, _ = jit_forward(model)(tokens, positions, mask)

    mesh = make_mesh(data=2, fsdp=2, tensor=2)
    graphdef, params = nnx.split(model, nnx.Param)
    shardings = logical_sharding(nnx.get_partition_spec(params), mesh)
    params = jax.device_put(params, shardings)
    assert params["layers"]["gate"].sharding.spec == jax.sharding.PartitionSpec(None, "fsdp", "tensor")

    @jax.jit
    def forward(params, tokens, positions, mask):
        return nnx.merge(graphdef, params)(tokens, positions, mask=mask)[0]

    with jax.set_mesh(mesh):
        got = forward(params, tokens, positions, mask)
    np.testing.assert_allclose(got, expected, atol=TOL, rtol=0)


def test_cache_logical_axes_shard_a_cache(n_devices):
    cfg = tiny_config("llama")
    mesh = make_mesh(data=2, fsdp=2, tensor=2)
    cache = jax.device_put(init_cache(cfg, 4, 8), logical_sharding(KVCache.logical_axes(cfg.num_layers), mesh))
    assert len(cache.k) == len(cache.v) == cfg.num_layers
    for x in cache.k:
        assert x.shape == (4, cfg.num_kv_heads, cfg.head_dim, 8)
        assert x.sharding.spec == jax.sharding.PartitionSpec(("data", "fsdp"), "tensor", None, None)
    for x in cache.v:
        assert x.shape == (4, cfg.num_kv_heads, 8, cfg.head_dim)
        assert x.sharding.spec == jax.sharding.PartitionSpec(("data", "fsdp"), "tensor", None, None)
    assert cache.valid.sharding.spec == jax.sharding.PartitionSpec(("data", "fsdp"), None)


def test_bad_call_shapes_raise():
    model = _model("llama")
    tokens = np.zeros((2, 3), np.int32)
    with pytest.raises(ValueError, match="positions"):
        model(tokens, tokens[:, :2])
    with pytest.raises(ValueError, match="mask"):
        model(tokens, tokens, mask=np.ones((2, 4), bool))
    with pytest.raises(ValueError, match="cache"):
        model(tokens, tokens, cache=init_cache(model.cfg, 2, 2))


def test_runtime_layer_ids_change_nothing_but_the_program():
    """``layer_ids`` (runtime slice offsets, which compile faster) give bit-identical prefill caches,
    hidden states and decoder weights to static slicing, for a looped (2-layer) and a scanned
    (6-layer) model."""
    for layers in (2, 6):
        model = _model("qwen3", num_layers=layers)
        graphdef, params = nnx.split(model, nnx.Param)
        tokens, mask, positions = padded_batch(model.cfg.vocab_size, (6, 3, 1), 6)

        @jax.jit
        def run(params, ids):
            m = nnx.merge(graphdef, params)
            return m.prefill(tokens, positions, mask=mask, cache_len=8, layer_ids=ids), m.decoder(8, ids).layers

        static = run(params, None)
        dynamic = run(params, tuple(np.int32(i) for i in range(layers)))
        assert len(dynamic[1]) == layers
        jax.tree.map(np.testing.assert_array_equal, static, dynamic)


def test_scanned_layers_keep_only_the_products_outputs(monkeypatch):
    """A scanned model's backward pass keeps the weight products' outputs and recomputes the
    rest (``transformer.SCAN_SAVED``): the gradients of saving everything, in less memory."""
    import opd_jax.models.transformer as transformer
    model = _model("qwen3", num_layers=transformer.LOOP_LAYERS + 2, intermediate_size=192)
    tokens, mask, positions = padded_batch(model.cfg.vocab_size, (64, 50, 33, 64), 64)
    graphdef, params = nnx.split(model, nnx.Param)
    f = lambda p: jnp.sum(nnx.merge(graphdef, p)(tokens, positions, mask=mask)[0] ** 2)  # noqa: E731

    def compiled():
        step = jax.jit(jax.value_and_grad(f)).lower(params).compile()
        return step(params), step.memory_analysis().temp_size_in_bytes

    (loss, grads), scratch = compiled()
    monkeypatch.setattr(transformer, "SCAN_SAVED", jax.checkpoint_policies.everything_saveable)
    (loss_all, grads_all), scratch_all = compiled()
    np.testing.assert_allclose(loss, loss_all, rtol=1e-6)
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(grads_all), strict=True):  # float32 rounding
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * float(np.abs(b).max()))
    assert scratch < 0.8 * scratch_all, (scratch, scratch_all)
