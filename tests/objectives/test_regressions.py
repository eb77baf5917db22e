"""Regression tests of issue 11's defects, each written (and seen failing) before its fix."""

import jax
import jax.numpy as jnp
import numpy as np

import opd_jax.objectives as O
from tests.objectives.conftest import make_batch


def _apply(cfg, step=0, extras=None):
    b = make_batch()
    z, zt = b["hidden"] @ b["head"], b["t_hidden"] @ b["t_head"]
    obj = O.build_objective(cfg)
    ex = b["extras"] if extras is None else extras
    f = O.compute_features(obj.features, tokens=b["tokens"], mask=b["mask"], logits=z,
                           teacher_logits=zt)
    ctx = O.TokenCtx(mask=b["mask"], features=f, extras=ex, step=jnp.int32(step), key=b["key"])
    terms, _, metrics = obj.apply(ctx, obj.init())
    return O.total(terms), metrics, b


def test_1_jsd_gradient_with_shared_minus_inf_entries_is_finite():
    z = jnp.array([[-jnp.inf, -jnp.inf, 1.0, 2.0, 8.0]])
    zt = jnp.array([[-jnp.inf, -jnp.inf, 3.0, 0.0, 1.0]])
    for beta in (0.0, 0.5, 1.0):
        g = jax.grad(lambda a: O.generalized_jsd(a, zt, beta=beta).sum())(z)
        assert np.all(np.isfinite(np.asarray(g))), (beta, g)


def test_2_padded_minus_inf_behaviour_log_prob_does_not_poison_the_loss():
    b = make_batch()
    ex = dict(b["extras"])
    ex["behavior_logp"] = jnp.where(b["mask"], ex["behavior_logp"], -jnp.inf)
    z, zt = b["hidden"] @ b["head"], b["t_hidden"] @ b["t_head"]
    obj = O.build_objective(O.OPDConfig())

    def loss(a):
        f = O.compute_features(obj.features, tokens=b["tokens"], mask=b["mask"], logits=a,
                               teacher_logits=zt)
        return O.total(obj.apply(O.TokenCtx(mask=b["mask"], features=f, extras=ex), ())[0])
    v, g = jax.value_and_grad(loss)(z)
    assert np.isfinite(v) and np.all(np.isfinite(np.asarray(g)))


def test_3_sequence_agreement_changes_the_loss():
    plain, _, _ = _apply(O.UniSDConfig())
    weighted, _, _ = _apply(O.UniSDConfig(agreement="sequence"))
    assert abs(float(weighted) - float(plain)) > 1e-4


def test_4_reopold_after_the_switch_without_entropy_selection_keeps_every_token():
    _, m, _ = _apply(O.REOPOLDConfig(switch_step=1, entropy_select=False), step=5)
    assert float(m["reopold/kept_frac"]) == 1.0


def test_5_tip_fixed_normalisation_needs_no_vocab_size_input():
    loss, _, _ = _apply(O.TIPConfig(normalize="fixed"))
    assert np.isfinite(loss)
