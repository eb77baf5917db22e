"""The on-policy loop learns, and each of its data sources and teacher kinds works."""

import json

import jax
import numpy as np
import pytest

import opd_jax.objectives as O
from opd_jax.models.config import tiny_config
from opd_jax.sampling import SamplerConfig
from opd_jax.training.config import (DataConfig, Experiment, LoopConfig, MeshConfig, ModelSpec,
                                     OptimConfig, RunConfig, TeacherSpec)
from opd_jax.training.loop import Trainer, evaluate

V = 32


def write_prompts(path, n=64, seed=0, teacher_prompts=False, completions=False):
    rng = np.random.default_rng(seed)
    with open(path, "w") as f:
        for _ in range(n):
            rec = {"prompt_ids": rng.integers(2, V, rng.integers(2, 5)).tolist()}
            if teacher_prompts:
                rec["teacher_prompt_ids"] = [1] + rec["prompt_ids"]  # a privileged marker token
            if completions:
                rec["completion_ids"] = rng.integers(2, V, rng.integers(1, 8)).tolist()
            f.write(json.dumps(rec) + "\n")
    return str(path)


def experiment(tmp_path, objective, *, steps, lr, teacher=None, loop=LoopConfig(lmbda=1.0), samples=8,
               data_kw=None, **run_kw):
    student = ModelSpec(config=tiny_config(vocab_size=V, hidden_size=32, num_layers=1,
                                           intermediate_size=64), seed=0)
    if teacher is None:
        teacher = TeacherSpec(kind="model", model=ModelSpec(
            config=tiny_config(vocab_size=V, hidden_size=48, num_layers=2), seed=1))
    data = write_prompts(tmp_path / "prompts.jsonl", **(data_kw or {}))
    return Experiment(student=student, teacher=teacher, objective=objective, loop=loop,
                      sampler=SamplerConfig(max_new_tokens=8, pad_id=0, num_samples=samples),
                      optim=OptimConfig(lr=lr), data=DataConfig(path=data, batch_size=8),
                      mesh=MeshConfig(data=1),
                      run=RunConfig(steps=steps, workdir=str(tmp_path / "run"), progress=False,
                                    tensorboard=False, diagnostics_k=0, **run_kw))


def sharpen_teacher(trainer, factor=10.0):
    """A peaked teacher (scaled final norm → logits x factor), so the student has much to learn."""
    trainer.teacher.params = jax.tree_util.tree_map_with_path(
        lambda path, x: x * factor if "final_norm" in jax.tree_util.keystr(path) else x,
        trainer.teacher.params)


# Reverse KL to the teacher on fresh student samples, before vs after a short run. The student
# (1 layer, width 32) cannot match the teacher (2 layers, width 48) exactly; the runs below reach
# 6-8x on this machine and the test asks for at least 4x.
FACTOR = 4.0


@pytest.mark.parametrize("objective,steps,lr,samples", [
    (O.OPDConfig(), 300, 5e-3, 8),  # sampled-token reverse KL (Thinking Machines)
    (O.GKDConfig(beta=0.5), 150, 1e-2, 4),  # full-vocabulary JSD(0.5)
    (O.EOPDConfig(k=8, tau=0.5), 200, 1e-2, 4),  # PPO-clipped OPD + gated top-k forward KL
], ids=["opd", "jsd", "eopd"])
def test_opd_cuts_the_reverse_kl_to_the_teacher(tmp_path, objective, steps, lr, samples):
    trainer = Trainer(experiment(tmp_path, objective, steps=steps, lr=lr, samples=samples))
    sharpen_teacher(trainer)
    before = evaluate(trainer)
    trainer.run()
    after = evaluate(trainer)
    assert before["eval/reverse_kl"] > 0.5  # the task is not trivial
    assert after["eval/reverse_kl"] * FACTOR < before["eval/reverse_kl"], (before, after)


def test_lambda_mixing_uses_both_sources_and_data_completions(tmp_path):
    exp = experiment(tmp_path, O.GKDConfig(), steps=6, lr=1e-3, loop=LoopConfig(lmbda=0.5),
                     data_kw=dict(completions=True))
    trainer = Trainer(exp)
    sources = [trainer.iteration()["source/on_policy"] for _ in range(6)]
    assert 0 < sum(sources) < 6  # with this seed both kinds of step occur
    again = Trainer(exp)
    assert [again.iteration()["source/on_policy"] for _ in range(6)] == sources  # deterministic


def test_seq_kd_and_cold_start_train_on_teacher_samples(tmp_path):
    exp = experiment(tmp_path, O.GKDConfig(), steps=3, lr=1e-3,
                     loop=LoopConfig(lmbda=0.0, seq_kd=True, cold_start_steps=1))
    trainer = Trainer(exp)
    m0 = trainer.iteration()
    assert m0["source/cold_start"] == 1.0 and "loss/nll" in m0  # the SFT objective
    m1 = trainer.iteration()
    assert m1["source/on_policy"] == 0.0 and "loss/jsd" in m1


def test_self_distillation_with_privileged_prompts_and_ema_teacher(tmp_path):
    exp = experiment(tmp_path, O.OPSDConfig(), steps=2, lr=1e-3,
                     teacher=TeacherSpec(kind="ema", ema_decay=0.5, ema_every=1),
                     data_kw=dict(teacher_prompts=True))
    trainer = Trainer(exp)
    t0 = jax.tree.map(np.array, trainer.teacher.params)
    m = trainer.iteration()
    assert np.isfinite(m["loss/total"])
    moved = jax.tree.map(lambda a, b: np.max(np.abs(np.asarray(a) - b)), trainer.teacher.params,
                         t0)
    assert max(jax.tree.leaves(moved)) > 0  # the EMA teacher followed the student
    expected = jax.tree.map(lambda t, s: 0.5 * t + 0.5 * np.asarray(s), t0, trainer.state.params)
    for a, b in zip(jax.tree.leaves(trainer.teacher.params), jax.tree.leaves(expected)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_reinforce_with_a_verifier_reward_and_teacher_mixed_sampling(tmp_path):
    exp = experiment(tmp_path, O.ReinforceConfig(), steps=2, lr=1e-3,
                     loop=LoopConfig(teacher_mix=0.5))
    calls = []

    def reward(example, completion):
        calls.append(len(completion))
        return float(len(completion) > 0 and completion[0] % 2 == 0)
    trainer = Trainer(exp, reward_fn=reward)
    m = trainer.iteration()
    assert len(calls) == 8 * 8 and np.isfinite(m["loss/total"]) and "reinforce/reward" in m


def test_unisd_star_runs_with_auxiliary_contexts_bad_teacher_and_hidden_matching(tmp_path):
    """UniSD*: agreement over K = 2 auxiliary teacher contexts, the contrastive hinge against a
    teacher seeing a bad demonstration, and final-hidden-state matching (same-width teacher)."""
    rng = np.random.default_rng(3)
    path = tmp_path / "unisd.jsonl"
    with open(path, "w") as f:
        for _ in range(16):
            p = rng.integers(2, V, 3).tolist()
            f.write(json.dumps({"prompt_ids": p, "teacher_prompt_ids": [1] + p,
                                "aux_teacher_prompts_ids": [[2] + p, [3, 4] + p],
                                "bad_teacher_prompt_ids": [5] + p}) + "\n")
    exp = experiment(tmp_path, O.UniSDConfig(clip="quantile", agreement="token",
                                             contrastive_coef=0.1, hidden_coef=0.1),
                     steps=2, lr=1e-3, teacher=TeacherSpec(kind="initial"))
    import dataclasses
    exp = dataclasses.replace(exp, data=dataclasses.replace(exp.data, path=str(path)))
    trainer = Trainer(exp)
    m = trainer.iteration()
    for key in ("loss/div", "loss/contrastive", "loss/hidden", "unisd/mean_weight"):
        assert np.isfinite(m[key]), key
    assert 0.01 <= m["unisd/mean_weight"] <= 1.0
    assert m["loss/hidden"] >= 0.0 and m["loss/contrastive"] >= 0.0
    assert m["flops/update"] > m["flops/score"] > 0
