"""A run lowers and compiles its sampling program and its train step once, and its state keeps
the shardings the trainer declared for it (those checkpoints are restored into). Trainers of one
process with the same static pieces share their train steps (``opd_jax.training.shared``)."""

import dataclasses

import jax
import jax.monitoring
import numpy as np
import pytest

import opd_jax.objectives as O
from opd_jax.training import shared
from opd_jax.training.config import LoopConfig, MeshConfig
from opd_jax.training.loop import Trainer
from tests.training.test_loop import experiment

# jax.monitoring's events for each lowering to MLIR and each XLA compile
EVENTS = ("/jax/core/compile/jaxpr_to_mlir_module_duration", "/jax/core/compile/backend_compile_duration")


@pytest.mark.parametrize("mesh,rank", [(dict(data=1), 0), (dict(data=8), 0), (dict(data=2, fsdp=2, tensor=2), 0),
                                       (dict(data=2, fsdp=2, tensor=2), 4)],
                         ids=["one device", "data 8", "data-fsdp-tensor 2-2-2", "adapters on 2-2-2"])
def test_later_steps_compile_neither_the_sampler_nor_the_step(tmp_path, mesh, rank):
    # one completion width for every step (completion_slices=1), so no step has new shapes
    exp = experiment(tmp_path, O.OPDConfig(), steps=3, lr=1e-3, loop=LoopConfig(lmbda=1.0, completion_slices=1))
    exp = dataclasses.replace(exp, student=dataclasses.replace(exp.student, lora_rank=rank))
    jax.clear_caches()  # earlier tests' programs of the same shapes: this run must build its own
    shared.clear()
    trainer = Trainer(dataclasses.replace(exp, mesh=MeshConfig(**mesh)))
    lowered = []

    def listener(event, seconds, fun_name=None, **_):
        if event in EVENTS:
            lowered.append(fun_name)

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        trainer.iteration()
        first = list(lowered)
        trainer.iteration()
        trainer.iteration()
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
    # the listener sees the programs' names (so the check below can fail)...
    assert {"jit(train_step)", "jit(_program)"} <= set(first), first
    later = lowered[len(first):]
    assert "jit(train_step)" not in later and "jit(_program)" not in later, later
    # the new state has the declared shardings, not XLA's equivalent choice (P() for replicated)
    for leaf, want in zip(jax.tree.leaves(trainer.state), jax.tree.leaves(trainer.state_sh)):
        assert leaf.sharding == want, (leaf.sharding, want)


def _trainer(tmp_path, name, objective=O.OPDConfig(), lr=1e-3, seed=0):
    (tmp_path / name).mkdir()
    exp = experiment(tmp_path / name, objective, steps=2, lr=lr)
    return Trainer(dataclasses.replace(exp, run=dataclasses.replace(exp.run, seed=seed)))


def test_trainers_with_the_same_static_pieces_share_their_train_steps(tmp_path):
    shared.clear()
    a = _trainer(tmp_path, "a")
    b = _trainer(tmp_path, "b", seed=1)  # another seed and work directory: the same programs
    assert (b.step_fn, b.sft_fn, b.tx, b.objective) == (a.step_fn, a.sft_fn, a.tx, a.objective)
    other_lr = _trainer(tmp_path, "c", lr=2e-3)  # the optimizer's schedule is in the step
    other_obj = _trainer(tmp_path, "d", objective=O.GKDConfig(beta=0.5))
    assert other_lr.step_fn is not a.step_fn and other_lr.objective is a.objective
    assert other_obj.step_fn is not a.step_fn and other_obj.tx is a.tx
    assert other_obj.sft_fn is a.sft_fn  # SFT at the same temperature


def test_a_shared_train_step_trains_exactly_as_a_new_one(tmp_path):
    first = _trainer(tmp_path, "first")
    first.iteration()  # its step is compiled, and stays in the shared cache
    again = _trainer(tmp_path, "shared")
    shared.clear()
    fresh = _trainer(tmp_path, "fresh")
    assert again.step_fn is first.step_fn and fresh.step_fn is not first.step_fn
    for _ in range(2):
        m_again, m_fresh = again.iteration(), fresh.iteration()
        numbers = [k for k in m_fresh if not k.startswith(("time/", "throughput/"))]
        assert "loss/total" in numbers and {k: m_again[k] for k in numbers} == {k: m_fresh[k] for k in numbers}
    for x, y in zip(jax.tree.leaves(jax.device_get(again.state)), jax.tree.leaves(jax.device_get(fresh.state))):
        np.testing.assert_array_equal(x, y)
