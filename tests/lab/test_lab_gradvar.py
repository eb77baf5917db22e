"""The gradient-variance measure (vOPD's claim): each estimator's gradient through the project's
train step against the closed form on a position-table model, the statistics against NumPy,
and the statistics' behaviour on estimators with equal and with different expectations."""

import numpy as np
import pytest
from table_model import POSITIONS, V, split

import opd_jax.objectives as O
from opd_jax.data import load_examples
from opd_jax.lab import countdown as C
from opd_jax.lab import data as L
from opd_jax.lab import gradvar as G
from opd_jax.lab import measures as M
from opd_jax.lab import tokenizer as T
from opd_jax.models import load_tokenizer
from opd_jax.sharding import make_mesh


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("gradvar")
    tok = load_tokenizer(T.save(root / "tok"))
    path = str(root / "train.jsonl")
    L.write_records(path, [L.record(C.Problem((9, 8, 5), t), tok) for t in (67, 13, 72, 77)])
    examples = load_examples(path, tokenizer=tok, max_prompt_len=32)
    rng = np.random.default_rng(0)
    student = rng.normal(0, 1.0, (POSITIONS, V)).astype(np.float32)
    teacher = rng.normal(0, 1.0, (POSITIONS, V)).astype(np.float32)
    # short answers: EOS likely from the first tokens on, so completions stay a few tokens long
    student[:, T.EOS_ID] += 3.0
    mesh = make_mesh(data=1, fsdp=1, tensor=1)
    return tok, examples, student, teacher, mesh


def _ctx(setup, student, teacher, seed=0):
    tok, examples, _, _, mesh = setup
    return M.Context(student=split(student), teacher=split(teacher), examples=examples, tokenizer=tok, k=2,
                     mesh=mesh, seed=seed, train_examples=examples, prompts=2, samples=3, max_new_tokens=6)


def _softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _closed_form(batch, s_table, t_table, estimator):
    """The table's gradient of the token-mean policy-gradient loss -A_t rho_t, float64."""
    tokens = np.asarray(batch.student.tokens)
    n = batch.targets.shape[1]
    pos = np.asarray(batch.student.positions)[:, -n - 1:-1]
    y, m = np.asarray(batch.targets), np.asarray(batch.loss_mask)
    mu = np.asarray(batch.behavior_logp, np.float64)
    assert tokens.shape[1] > n
    grad = np.zeros((POSITIONS, V))
    count = m.sum()
    for r, t in zip(*np.nonzero(m)):
        p, q = _softmax(s_table[pos[r, t]].astype(np.float64)), _softmax(t_table[pos[r, t]].astype(np.float64))
        lp, lq = np.log(p[y[r, t]]), np.log(q[y[r, t]])
        a = lq - mu[r, t] if estimator == "opd" else lq - lp + np.sum(p * (np.log(p) - np.log(q)))
        rho = np.exp(lp - mu[r, t])
        onehot = np.eye(V)[y[r, t]]
        grad[pos[r, t]] += -a * rho * (onehot - p) / count
    return grad.reshape(-1)


def test_each_estimators_gradient_is_the_closed_form(setup):
    _, _, s_table, t_table, mesh = setup
    ctx = _ctx(setup, s_table, t_table)
    batches = G.batches(ctx, 2)
    assert not np.array_equal(np.asarray(batches[0].targets), np.asarray(batches[1].targets))
    grads = G.gradients(ctx.student, ctx.teacher, batches, G.ESTIMATORS, mesh)
    for name in G.ESTIMATORS:
        assert grads[name].shape == (2, POSITIONS * V)
        for s, batch in enumerate(batches):
            np.testing.assert_allclose(grads[name][s], _closed_form(batch, s_table, t_table, name),
                                       rtol=1e-4, atol=1e-7, err_msg=name)
    # the parameters the step saw were copies: the student is unchanged and still usable
    np.testing.assert_array_equal(np.asarray(ctx.student[1]["table"][...]), s_table)


def test_statistics_match_numpy():
    rng = np.random.default_rng(3)
    a, b = rng.normal(0, 2, (5, 7)), rng.normal(0.1, 1, (5, 7))
    out = G.statistics({"opd": a, "vopd": b})
    va, vb = a.var(0, ddof=1).sum(), b.var(0, ddof=1).sum()
    d = a - b
    assert out["grad_variance/opd"] == pytest.approx(va) and out["grad_variance/vopd"] == pytest.approx(vb)
    assert out["grad_variance/log_ratio"] == pytest.approx(np.log(vb / va))
    assert out["grad_variance/mean_gap"] == pytest.approx((d.mean(0) ** 2).sum() / (d.var(0, ddof=1).sum() / 5))
    assert out["grad_variance/norm_opd"] == pytest.approx(np.linalg.norm(a.mean(0)))
    with pytest.raises(ValueError, match=">= 2 batches"):
        G.statistics({"opd": a[:1], "vopd": b[:1]})


def test_the_baseline_lowers_the_variance_at_the_same_expected_gradient(setup):
    """A teacher far from the student: every sampled token's reward is shifted by about -KL,
    which the baseline removes. Over 48 batches the two mean gradients differ by noise only
    (gap ~ 1), and both agree with the full-vocabulary reverse KL's gradient, the exact
    per-token expectation; the same statistic tells that objective from the forward KL."""
    _, _, s_table, _, mesh = setup
    far = np.random.default_rng(7).normal(0, 4.0, (POSITIONS, V)).astype(np.float32)
    ctx = _ctx(setup, s_table, far, seed=1)
    exact = {"rkl": O.GKDConfig(beta=1.0), "fkl": O.GKDConfig(beta=0.0)}
    grads = G.gradients(ctx.student, ctx.teacher, G.batches(ctx, 48), {**G.ESTIMATORS, **exact}, mesh)
    same = G.statistics(grads)
    assert same["grad_variance/log_ratio"] < np.log(0.5)
    assert same["grad_variance/mean_gap"] < 3.0
    assert G.statistics(grads, "vopd", "rkl")["grad_variance/mean_gap"] < 3.0
    assert G.statistics(grads, "rkl", "fkl")["grad_variance/mean_gap"] > 100.0


def test_the_measure_needs_a_teacher_and_training_prompts(setup):
    tok, examples, s_table, t_table, _ = setup
    with pytest.raises(ValueError, match="needs a teacher"):
        G.measure(M.Context(student=split(s_table), teacher=None, examples=examples, tokenizer=tok, k=2), 2)
    with pytest.raises(ValueError, match="training examples"):
        G.batches(M.Context(student=split(s_table), teacher=split(t_table), examples=examples, tokenizer=tok,
                            k=2), 2)
