"""The vocabulary phase: naive ≡ chunked ≡ fused ≡ one-pass, sharded ≡ single device."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

import opd_jax.objectives as O
from opd_jax.sharding import make_mesh
from tests.objectives.conftest import make_batch, recipe_configs



def _path_configs():
    """The recipe variants whose vocabulary phase adds something: every token-local one (its
    ``token_loss`` runs the one-pass path) and every other one that brings a feature not seen
    before. The rest share features with those, and their token phase is the same function of
    the same features on every path (it is oracle-tested in test_recipes)."""
    seen, out = set(), []
    for cfg in recipe_configs():
        obj = O.build_objective(cfg)
        feats = set(obj.features.values())
        if obj.token_loss is not None or not feats <= seen:
            out.append(cfg)
            seen |= feats
    return out


CFGS = _path_configs()


def _loss(obj, feats, b, step=3):
    ctx = O.TokenCtx(mask=b["mask"], features=feats, extras=b["extras"], step=jnp.int32(step),
                     key=b["key"])
    terms, _, metrics = obj.apply(ctx, obj.init())
    return O.total(terms), metrics


def _all_modes(obj, b, chunk=3):
    """Loss, metrics and gradients by every evaluation path, compiled as one program."""
    def generic(mode):
        def loss(hidden, head):
            kw = dict(tokens=b["tokens"], mask=b["mask"], extras=b["extras"])
            if mode == "fused":
                kw.update(hidden=hidden, head=head, teacher_hidden=b["t_hidden"],
                          teacher_head=b["t_head"], chunk_size=chunk)
            else:
                kw.update(logits=hidden @ head, teacher_logits=b["t_hidden"] @ b["t_head"],
                          chunk_size=chunk if mode == "chunked" else None)
            return _loss(obj, O.compute_features(obj.features, **kw), b)
        return jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)

    def one_pass(hidden, head):
        value, feats = O.fused_token_loss(
            obj.token_loss, obj.features, tokens=b["tokens"], mask=b["mask"],
            weights=b["mask"] / jnp.sum(b["mask"]), hidden=hidden, head=head,
            teacher_hidden=b["t_hidden"], teacher_head=b["t_head"], extras=b["extras"], step=3,
            chunk_size=chunk)
        return value

    def everything(hidden, head):
        out = {m: generic(m)(hidden, head) for m in ("naive", "chunked", "fused")}
        if obj.token_loss is not None:
            value, grads = jax.value_and_grad(one_pass, argnums=(0, 1))(hidden, head)
            out["one_pass"] = ((value, {}), grads)
        return out
    return jax.jit(everything)(b["hidden"], b["head"])


@pytest.mark.parametrize("cfg", CFGS, ids=lambda c: repr(c)[:60])
def test_naive_chunked_fused_one_pass_agree(cfg):
    """Chunk 3 does not divide T = 7: the padded last block is covered too."""
    b = make_batch()
    obj = O.build_objective(cfg, diagnostics_k=4)
    out = _all_modes(obj, b)
    (l0, m0), g0 = out.pop("naive")
    assert np.isfinite(l0) and all(np.all(np.isfinite(g)) for g in g0)
    for mode, ((l1, m1), g1) in out.items():
        np.testing.assert_allclose(l1, l0, rtol=2e-5, atol=1e-6, err_msg=mode)
        for a, c in zip(g1, g0):
            np.testing.assert_allclose(a, c, rtol=2e-4, atol=2e-6, err_msg=mode)
        for k in m1:
            np.testing.assert_allclose(m1[k], m0[k], rtol=2e-5, atol=1e-6, err_msg=f"{mode} {k}")


def test_token_locality_is_declared_where_expected():
    local = {O.recipe_name(c) for c in recipe_configs()
             if O.build_objective(c).token_loss is not None}
    assert {"opd", "gkd", "eopd", "aopd", "opsd", "sg_topk", "vopd", "topk_opd", "sft",
            "sead"} <= local
    assert not local & {"tip", "reopold", "unisd", "reinforce", "iw_opd", "fire_opd", "ta_opd",
                        "uni_opd"}
    assert O.build_objective(O.OPDConfig(discount=0.5)).token_loss is None
    assert O.build_objective(O.OPDConfig(reduction="sum_per_sequence")).token_loss is None
    assert O.build_objective(O.SEADConfig()).token_loss is None  # batch-median zones


def test_one_pass_returns_the_feature_values_and_no_teacher_gradient():
    b = make_batch(seed=2)
    obj = O.build_objective(O.EOPDConfig(k=5))
    weights = b["mask"] / jnp.sum(b["mask"])

    def loss(t_hidden, t_head):
        value, feats = O.fused_token_loss(
            obj.token_loss, obj.features, tokens=b["tokens"], mask=b["mask"], weights=weights,
            hidden=b["hidden"], head=b["head"], teacher_hidden=t_hidden, teacher_head=t_head,
            extras=b["extras"], chunk_size=4)
        return value, feats
    (value, feats), g = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(b["t_hidden"], b["t_head"])
    assert all(np.all(np.asarray(x) == 0) for x in g)
    ref = O.compute_features(obj.features, tokens=b["tokens"], mask=b["mask"],
                             logits=b["hidden"] @ b["head"], teacher_logits=b["t_hidden"] @ b["t_head"])
    for k in ref:
        np.testing.assert_allclose(feats[k], ref[k], rtol=2e-5, atol=1e-6)


def test_bfloat16_hidden_and_head():
    b = make_batch(seed=3)
    obj = O.build_objective(O.GKDConfig())
    hb, wb = b["hidden"].astype(jnp.bfloat16), b["head"].astype(jnp.bfloat16)
    f16 = O.compute_features(obj.features, tokens=b["tokens"], mask=b["mask"], hidden=hb, head=wb,
                             teacher_hidden=b["t_hidden"], teacher_head=b["t_head"], chunk_size=4)
    f32 = O.compute_features(obj.features, tokens=b["tokens"], mask=b["mask"],
                             logits=hb.astype(jnp.float32) @ wb.astype(jnp.float32),
                             teacher_logits=b["t_hidden"] @ b["t_head"])
    assert f16["jsd"].dtype == jnp.float32
    np.testing.assert_allclose(f16["jsd"], f32["jsd"], rtol=1e-4, atol=1e-6)


def test_sharded_equals_single_device():
    b = make_batch(seed=4, b=8, t=6)
    mesh = make_mesh(data=2, fsdp=2, tensor=2)
    obj = O.build_objective(O.EOPDConfig(k=5), diagnostics_k=4)

    def step(hidden, head, t_hidden, t_head):
        def loss(hidden, head):
            feats = O.compute_features(obj.features, tokens=b["tokens"], mask=b["mask"],
                                       hidden=hidden, head=head, teacher_hidden=t_hidden,
                                       teacher_head=t_head, chunk_size=4)
            return _loss(obj, feats, b)
        return jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(hidden, head)
    args = (b["hidden"], b["head"], b["t_hidden"], b["t_head"])
    ref = jax.jit(step)(*args)
    batch_sh = NamedSharding(mesh, P(("data", "fsdp"), None, None))
    head_sh = NamedSharding(mesh, P(None, "tensor"))
    placed = [jax.device_put(a, s) for a, s in zip(args, (batch_sh, head_sh, batch_sh, head_sh))]
    out = jax.jit(step)(*placed)
    assert out[1][0].sharding.is_equivalent_to(batch_sh, 3)
    for a, c in zip(jax.tree.leaves(out), jax.tree.leaves(ref)):
        np.testing.assert_allclose(a, c, rtol=2e-5, atol=1e-6)


def test_sparse_teacher_features_match_dense_when_the_list_is_complete():
    b = make_batch(seed=5)
    v = b["head"].shape[1]
    t_logits = b["t_hidden"] @ b["t_head"]
    dense = O.build_objective(O.SGTopKConfig(k=6))
    sparse = O.build_objective(O.SGTopKConfig(k=6), dense_teacher=False)
    top = O.teacher_topk(t_logits, k=v)
    kw = dict(tokens=b["tokens"], mask=b["mask"], logits=b["hidden"] @ b["head"])
    f_dense = O.compute_features(dense.features, teacher_logits=t_logits, **kw)
    f_sparse = O.compute_features(sparse.features, teacher_topk=top, **kw)
    np.testing.assert_allclose(f_sparse["topk_rkl"], f_dense["topk_rkl"], rtol=1e-5, atol=1e-6)
    f_chunk = O.compute_features(sparse.features, teacher_topk=top, chunk_size=3, **kw)
    np.testing.assert_allclose(f_chunk["topk_rkl"], f_dense["topk_rkl"], rtol=1e-5, atol=1e-6)
