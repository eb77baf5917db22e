"""Draft-OPD's drafter loss: the weighted mean of a full-vocabulary divergence against NumPy in
float64, its gradient against finite differences, and the error positions' weight."""

import jax
import numpy as np
import pytest
from scipy.special import log_softmax

import opd_jax.objectives as O
from tests.objectives.conftest import make_batch
from tests.objectives.test_recipes import fd_entries, fd_grad, recipe_loss


def oracle(z, zt, mask, error, divergence, weight, temperature):
    lp = log_softmax(np.asarray(z, np.float64) / temperature, axis=-1)
    lq = log_softmax(np.asarray(zt, np.float64) / temperature, axis=-1)
    p, q = np.exp(lp), np.exp(lq)
    div = {"tv": 0.5 * np.abs(p - q).sum(-1), "forward_kl": (q * (lq - lp)).sum(-1),
           "reverse_kl": (p * (lp - lq)).sum(-1)}[divergence]
    w = np.where(np.asarray(mask), 1.0 + weight * np.asarray(error, np.float64), 0.0)
    return float((w * div).sum() / w.sum())


@pytest.mark.parametrize("divergence", ["tv", "forward_kl", "reverse_kl"])
@pytest.mark.parametrize("weight", [0.0, 1.0, 3.0])
def test_weighted_divergence_against_numpy(divergence, weight):
    b = make_batch(1, b=4, t=5, d=8, v=12)
    z, zt = b["hidden"] @ b["head"], b["t_hidden"] @ b["t_head"]
    cfg = O.DraftOPDConfig(divergence=divergence, error_weight=weight, temperature=0.8)
    loss, metrics = recipe_loss(cfg, b, z, zt)
    want = oracle(z, zt, b["mask"], b["extras"][O.DRAFT_ERROR], divergence, weight, 0.8)
    np.testing.assert_allclose(float(loss), want, rtol=1e-5)
    m = np.asarray(b["mask"])
    if weight:
        err = np.asarray(b["extras"][O.DRAFT_ERROR])
        assert float(metrics["draft_opd/error_frac"]) == pytest.approx(err[m].mean())
        assert 0 < err[m].mean() < 1  # the weights matter in this batch
    # without the extra the weightless loss still runs; the weighted one names what is missing
    extras = {k: v for k, v in b["extras"].items() if k != O.DRAFT_ERROR}
    if weight:
        with pytest.raises(KeyError, match="draft_error"):
            recipe_loss(cfg, b, z, zt, extras=extras)
    else:
        assert float(recipe_loss(cfg, b, z, zt, extras=extras)[0]) == pytest.approx(float(loss))


@pytest.mark.parametrize("divergence", ["tv", "forward_kl"])
def test_gradient_against_finite_differences(divergence):
    b = make_batch(2, b=4, t=5, d=8, v=12)
    z, zt = b["hidden"] @ b["head"], b["t_hidden"] @ b["t_head"]
    cfg = O.DraftOPDConfig(divergence=divergence, error_weight=2.0)
    grad = np.asarray(jax.grad(lambda a: recipe_loss(cfg, b, a, zt)[0])(z))
    z64 = np.asarray(z, np.float64)
    fn = lambda a: oracle(a, zt, b["mask"], b["extras"][O.DRAFT_ERROR], divergence, 2.0, 1.0)  # noqa: E731
    entries = fd_entries(np.asarray(b["mask"]), 12)
    want = fd_grad(fn, z64, entries)
    got = np.array([grad[e] for e in entries])
    np.testing.assert_allclose(got, want, atol=2e-5, rtol=2e-3)
    assert np.all(grad[~np.asarray(b["mask"])] == 0.0)


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="divergence"):
        O.DraftOPDConfig(divergence="jsd")
    for bad in (-1.0, float("inf"), "1"):
        with pytest.raises(ValueError, match="error_weight"):
            O.DraftOPDConfig(error_weight=bad)
