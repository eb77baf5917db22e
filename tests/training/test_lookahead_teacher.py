"""Look-ahead scoring for LGR (opd_jax.teachers.WithLookahead): its candidates and rewards against
a brute-force construction (the student's whole-sequence logits, a sort for the branch points, one
plain teacher forward per candidate prefix), its teacher scores equal the plain teacher's, a run
trains with it, and a teacher kind it cannot read is refused before any model is built."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import opd_jax.objectives as O
from opd_jax.teachers.lookahead import WithLookahead, lookahead_scores
from opd_jax.training.batch import completion_hidden
from opd_jax.training.config import ServedSpec, TeacherSpec
from opd_jax.training.loop import Trainer
from test_loop import experiment
from test_reference import batch

CFG = O.LGRConfig(k=3, branch_points=2, min_entropy=0.0, temperature=0.9)


def brute_force(s_model, t_model, tb, cfg):
    """The candidates and rewards, position by position, with no tree attention."""
    s = tb.student
    n = tb.targets.shape[1]
    logits, _ = s_model(s.tokens, s.positions, mask=s.mask)
    z = np.asarray(logits[:, -n - 1:-1], np.float64) / cfg.temperature
    lp = z - np.log(np.exp(z - z.max(-1, keepdims=True)).sum(-1, keepdims=True)) - z.max(-1, keepdims=True)
    entropy = -(np.exp(lp) * lp).sum(-1)
    m = np.asarray(tb.loss_mask)
    ids, rewards = np.zeros((*m.shape, cfg.k), int), np.zeros((*m.shape, cfg.k))
    tokens, positions = np.asarray(s.tokens), np.asarray(s.positions)
    width = tokens.shape[1]
    for b in range(m.shape[0]):
        points = [t for t in np.argsort(-entropy[b], kind="stable")
                  if m[b, t] and entropy[b, t] >= cfg.min_entropy][:cfg.branch_points]
        for t in points:
            cands = np.argsort(-z[b, t], kind="stable")[:cfg.k]
            col = width - n + t
            keep = np.asarray(s.mask[b, :col])
            conf = []
            for v in cands:
                tok = np.concatenate([tokens[b, :col][keep], [v]])[None]
                pos = np.concatenate([positions[b, :col][keep], [positions[b, col]]])[None]
                out, _ = t_model(jnp.asarray(tok, jnp.int32), jnp.asarray(pos, jnp.int32))
                q = np.exp(np.asarray(jax.nn.log_softmax(out[0, -1] / cfg.temperature), np.float64))
                conf.append(q.max())
            conf = np.array(conf)
            ids[b, t] = cands
            rewards[b, t] = (conf - conf.mean()) / (conf.std() + 1e-6)
    return ids, rewards


def test_candidates_and_rewards_match_a_brute_force_construction(tmp_path):
    trainer = Trainer(experiment(tmp_path, CFG, steps=1, lr=1e-3, samples=4))
    assert isinstance(trainer.teacher, WithLookahead)
    inner = trainer.teacher.inner
    tb = batch(3)
    hidden, extras = lookahead_scores(trainer.s_graph, trainer.state.params, inner.graphdef,
                                      inner.params, tb.student, tb.student, tb.loss_mask, 1, CFG)
    ids, rewards = brute_force(nnx.merge(trainer.s_graph, trainer.state.params),
                               nnx.merge(inner.graphdef, inner.params), tb, CFG)
    active = np.abs(rewards).sum(-1) > 0
    assert active.sum() == 2 * 4  # every row has two branch points
    np.testing.assert_array_equal(np.asarray(extras[O.LGR_IDS])[active], ids[active])
    np.testing.assert_allclose(np.asarray(extras[O.LGR_REWARD]), rewards, atol=2e-4)
    plain = completion_hidden(nnx.merge(inner.graphdef, inner.params), tb.student, 6)
    m = np.asarray(tb.loss_mask)
    np.testing.assert_allclose(np.asarray(hidden)[m], np.asarray(plain)[m], atol=1e-5)


def test_a_run_trains_with_lookahead_rewards(tmp_path):
    cfg = dataclasses.replace(CFG, branch_points=3, coef=0.5)
    trainer = Trainer(experiment(tmp_path, cfg, steps=3, lr=1e-2, samples=4))
    metrics = [trainer.iteration() for _ in range(3)]
    for mt in metrics:
        assert np.isfinite(mt["loss/total"])
        assert 0 < mt["lgr/branch_frac"] <= 1
    assert metrics[0]["lgr/candidates"] != 0


def test_a_teacher_that_is_not_one_model_is_refused(tmp_path):
    spec = experiment(tmp_path, CFG, steps=1, lr=1e-3).teacher.model
    teacher = TeacherSpec(kind="models", models=(spec, dataclasses.replace(spec, seed=2)), combine="mix")
    exp = experiment(tmp_path, dataclasses.replace(CFG, temperature=1.0), steps=1, lr=1e-3,
                     teacher=teacher)
    with pytest.raises(ValueError, match=r"teacher.kind in \['model', 'self', 'initial', 'ema', 'served'\]"):
        Trainer(exp)


def test_a_served_teacher_is_refused_a_confidence_it_cannot_send(tmp_path):
    teacher = TeacherSpec(kind="served", served=ServedSpec(url="http://127.0.0.1:9"))
    exp = experiment(tmp_path, dataclasses.replace(CFG, temperature=1.0, confidence="neg_entropy"),
                     steps=1, lr=1e-3, teacher=teacher)
    with pytest.raises(ValueError, match=r"objective.confidence='neg_entropy' needs the teacher's whole"):
        Trainer(exp)
