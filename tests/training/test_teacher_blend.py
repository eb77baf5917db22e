"""Teacher-mixed sampling in the loop: TRB's geometric blend under a KL budget and MiniLLM's coin,
with ``loop.teacher_mix_steps``' linear decay (TRB's warm-up) and the metrics of the teacher's share."""

import dataclasses

import numpy as np
import pytest

import opd_jax.objectives as O
from opd_jax.training.config import LoopConfig
from opd_jax.training.loop import Trainer
from test_loop import experiment, sharpen_teacher


def test_teacher_mix_decays_linearly_to_zero_over_its_steps():
    assert [LoopConfig(teacher_mix=0.3).teacher_mix_at(s) for s in (0, 7, 10_000)] == [0.3] * 3
    decay = LoopConfig(teacher_mix=0.2, teacher_mix_steps=4)
    np.testing.assert_allclose([decay.teacher_mix_at(s) for s in range(6)], [0.2, 0.15, 0.1, 0.05, 0, 0])


def test_mix_settings_are_checked_against_the_blend(tmp_path):
    exp = experiment(tmp_path, O.OPDConfig(), steps=1, lr=1e-3)
    geometric = dataclasses.replace(exp, sampler=exp.sampler.replace(teacher_blend="geometric"))
    with pytest.raises(ValueError, match=r"probability .*\[0, 1\]"):  # a coin's chance
        dataclasses.replace(exp, loop=LoopConfig(teacher_mix=1.5))
    dataclasses.replace(geometric, loop=LoopConfig(teacher_mix=1.5))  # a KL budget of 1.5 nats
    for bad, field in ((dict(teacher_mix=-0.1), "teacher_mix"), (dict(teacher_mix=float("inf")), "teacher_mix"),
                       (dict(teacher_mix=0.1, teacher_mix_steps=-1), "teacher_mix_steps")):
        with pytest.raises(ValueError, match=field):
            LoopConfig(**bad)


def test_a_geometric_blend_warm_up_trains_and_reports_the_teachers_weight(tmp_path):
    exp = experiment(tmp_path, O.OPDConfig(), steps=3, lr=1e-3, samples=4,
                     loop=LoopConfig(lmbda=1.0, teacher_mix=0.2, teacher_mix_steps=2))
    trainer = Trainer(dataclasses.replace(exp, sampler=exp.sampler.replace(teacher_blend="geometric")))
    sharpen_teacher(trainer)  # far from the student: the budget binds
    first, second, third = (trainer.iteration() for _ in range(3))
    for m in (first, second, third):
        assert np.isfinite(m["loss/total"])
    assert (first["sample/teacher_mix"], second["sample/teacher_mix"], third["sample/teacher_mix"]) == (0.2, 0.1, 0)
    assert 0 < second["sample/teacher_weight"] < first["sample/teacher_weight"] < 1
    assert "sample/teacher_weight" not in third  # after the warm-up the student samples alone
    assert "sample/from_teacher" not in first


def test_the_coins_share_of_teacher_tokens_is_reported(tmp_path):
    exp = experiment(tmp_path, O.OPDConfig(), steps=1, lr=1e-3, samples=4,
                     loop=LoopConfig(lmbda=1.0, teacher_mix=0.5))
    m = Trainer(exp).iteration()
    assert m["sample/teacher_mix"] == 0.5 and 0.2 < m["sample/from_teacher"] < 0.8
    assert "sample/teacher_weight" not in m
