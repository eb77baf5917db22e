"""Several teachers (teacher.kind="models"): routed per record, or mixed log-linearly.

Oracles: the combined teacher's logits equal each row's weighted sum of the teachers' own
logits; a run whose records all name teacher B equals a run with B as the only teacher; routed
teacher rollouts equal each teacher's own samples row by row.
"""

import dataclasses
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import opd_jax.objectives as O
from opd_jax import data as D
from opd_jax.models import Transformer
from opd_jax.models.config import tiny_config
from opd_jax.sampling import sample
from opd_jax.training.batch import Sequences, TrainBatch, completion_hidden
from opd_jax.training.config import LoopConfig, ModelSpec, TeacherSpec
from opd_jax.training.loop import Trainer, evaluate
from opd_jax.training.step import combine_teachers, teacher_view
from test_loop import V, experiment

SPEC_A = ModelSpec(config=tiny_config(vocab_size=V, hidden_size=48, num_layers=2), seed=1)
SPEC_B = ModelSpec(config=tiny_config(vocab_size=V, hidden_size=40, num_layers=1), seed=2)


def _with_routes(exp, tmp_path, routes):
    """The experiment's prompts, each record naming its teacher (``routes`` cycles)."""
    src = exp.data.path
    path = tmp_path / "routed.jsonl"
    with open(src) as f, open(path, "w") as g:
        for i, line in enumerate(f):
            rec = json.loads(line)
            rec["teacher"] = routes[i % len(routes)]
            g.write(json.dumps(rec) + "\n")
    return dataclasses.replace(exp, data=dataclasses.replace(exp.data, path=str(path)))


def _two(**kw):
    return TeacherSpec(kind="models", models=(SPEC_A, SPEC_B), names=("a", "b"), **kw)


def test_combined_logits_are_the_weighted_sum_of_each_teachers_logits():
    models = [Transformer(s.config, rngs=nnx.Rngs(s.seed)) for s in (SPEC_A, SPEC_B)]
    key = jax.random.key(0)
    tokens = jax.random.randint(key, (3, 9), 2, V)
    mask = jnp.ones((3, 9), bool).at[0, :2].set(False)  # a left-padded row
    seq = Sequences.from_left_padded(tokens, mask)
    n = 5
    logits = [completion_hidden(m, seq, n) @ m.lm_head_weight() for m in models]
    w = jax.random.uniform(jax.random.key(1), (3, 2))
    hidden = combine_teachers([completion_hidden(m, seq, n) for m in models], w)
    batch = TrainBatch(student=seq, targets=tokens[:, -n:], loss_mask=mask[:, -n:],
                       behavior_logp=jnp.zeros((3, n)), teacher_hidden=hidden)
    graphs, params = zip(*(nnx.split(m) for m in models))
    h, head = teacher_view(batch, tuple(graphs), tuple(params), n)
    want = w[:, 0, None, None] * logits[0] + w[:, 1, None, None] * logits[1]
    np.testing.assert_allclose(h @ head, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("teacher", [_two(), _two(combine="mix", weights=(0.0, 2.0))],
                         ids=["route", "mix"])
def test_all_rows_on_teacher_b_equal_b_alone(tmp_path, teacher):
    """Routing every record to B (or mixing with weights (0, 1)) trains like B alone."""
    kw = dict(steps=2, lr=1e-2, samples=2)
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    ref = Trainer(experiment(tmp_path / "one", O.GKDConfig(beta=0.5), teacher=TeacherSpec(
        kind="model", model=SPEC_B), **kw))
    two = Trainer(_with_routes(experiment(tmp_path / "two", O.GKDConfig(beta=0.5),
                                          teacher=teacher, **kw), tmp_path, ["b", 1]))
    for _ in range(2):
        m_ref, m_two = ref.iteration(), two.iteration()
        np.testing.assert_allclose(m_two["loss/total"], m_ref["loss/total"], rtol=1e-5)
    for a, b in zip(jax.tree.leaves(two.state.params), jax.tree.leaves(ref.state.params)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert m_two["flops/score"] > m_ref["flops/score"]  # both teachers scored every row
    e_ref, e_two = evaluate(ref), evaluate(two)
    for k in e_ref:
        np.testing.assert_allclose(e_two[k], e_ref[k], rtol=1e-5, atol=1e-6, err_msg=k)


def test_routed_teacher_rollouts_come_from_each_rows_teacher(tmp_path):
    exp = _with_routes(experiment(tmp_path, O.GKDConfig(), steps=2, lr=1e-3, samples=2,
                                  teacher=_two(), loop=LoopConfig(cold_start_steps=1)),
                       tmp_path, ["a", "b", "b"])
    trainer = Trainer(exp)
    prompts = trainer.prompts(0)
    exs, p, m = prompts.examples, prompts.tokens, prompts.mask
    weights = trainer.teacher.row_weights(exs, exp.sampler.num_samples)
    pick = np.argmax(np.asarray(weights), axis=1)
    want = [int(e.record["teacher"] == "b") for e in exs]
    assert list(pick[::2]) == list(pick[1::2]) == want and 0 < sum(want) < 8  # both teachers
    rep = lambda x: trainer.rows.to_global(np.asarray(x))  # noqa: E731
    key, rows = jax.random.key(5), rep(np.arange(8, dtype=np.int32))
    with jax.set_mesh(trainer.mesh):
        roll = trainer.teacher.rollout(rep(p), rep(m), key, rows, exs, trainer.state.params)
        own = [sample(g, par, rep(p), rep(m), key, cfg=exp.sampler, row_ids=rows)
               for g, par in trainer.teacher.models(trainer.state.params)]
    for j in (0, 1):
        np.testing.assert_array_equal(np.asarray(roll.tokens)[pick == j],
                                      np.asarray(own[j].tokens)[pick == j])
        np.testing.assert_array_equal(np.asarray(roll.logp)[pick == j],
                                      np.asarray(own[j].logp)[pick == j])
    m0 = trainer.iteration()  # the cold start trains on those rollouts
    assert m0["source/cold_start"] == 1.0 and np.isfinite(m0["loss/total"])


def test_several_teacher_errors(tmp_path):
    exp = experiment(tmp_path, O.OPDConfig(), steps=1, lr=1e-3, teacher=_two())
    with pytest.raises(D.DataError, match=r"prompts.jsonl:1: .*`teacher` field naming one of"):
        Trainer(exp)  # no record names its teacher
    with pytest.raises(D.DataError, match=r":2: .*got 'c'"):
        Trainer(_with_routes(exp, tmp_path, ["a", "c"]))
    with pytest.raises(ValueError, match="teacher_mix"):
        Trainer(dataclasses.replace(exp, loop=LoopConfig(teacher_mix=0.5)))
    mixed = dataclasses.replace(exp, teacher=_two(combine="mix"))
    with pytest.raises(ValueError, match="need teacher.combine='route'"):
        Trainer(dataclasses.replace(mixed, loop=LoopConfig(cold_start_steps=2)))
    with pytest.raises(ValueError, match="teacher.names has 1 names for 2"):
        TeacherSpec(kind="models", models=(SPEC_A, SPEC_B), names=("a",))
    with pytest.raises(ValueError, match="weights must be >= 0"):
        TeacherSpec(kind="models", models=(SPEC_A, SPEC_B), combine="mix", weights=(0.0, 0.0))
    other = dataclasses.replace(SPEC_B, config=tiny_config(vocab_size=V + 1, hidden_size=40,
                                                           num_layers=1))
    with pytest.raises(ValueError, match=r"teacher.models\[1\]'s vocabulary \(33\)"):
        Trainer(dataclasses.replace(exp, teacher=TeacherSpec(  # mixed: the records route nothing
            kind="models", models=(SPEC_A, other), combine="mix")))


@pytest.mark.parametrize("combine", ["route", "mix"])
def test_the_multi_teacher_experiment_smoke_runs(tmp_path, combine):
    from opd_jax.config import apply_overrides, load_experiment, load_module
    path = str(Path(__file__).resolve().parents[2] / "experiments" / "multi_teacher_opd.py")
    exp = apply_overrides(load_experiment(path + ":smoke"),
                          [f"run.workdir={tmp_path}", f"teacher.combine={combine}",
                           "run.progress=false"])
    exp = load_module(path).prepare(exp)
    metrics = Trainer(exp).run()
    assert np.isfinite(metrics["loss/total"]) and (tmp_path / "checkpoints" / "4").exists()
