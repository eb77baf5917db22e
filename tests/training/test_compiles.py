"""A run lowers and compiles its sampling program and its train step once, and its state keeps
the shardings the trainer declared for it (those checkpoints are restored into)."""

import dataclasses

import jax
import jax.monitoring
import pytest

import opd_jax.objectives as O
from opd_jax.training.config import LoopConfig, MeshConfig
from opd_jax.training.loop import Trainer
from tests.training.test_loop import experiment

# jax.monitoring's events for each lowering to MLIR and each XLA compile
EVENTS = ("/jax/core/compile/jaxpr_to_mlir_module_duration", "/jax/core/compile/backend_compile_duration")


@pytest.mark.parametrize("mesh", [dict(data=1), dict(data=8), dict(data=2, fsdp=2, tensor=2)],
                         ids=["one device", "data 8", "data-fsdp-tensor 2-2-2"])
def test_later_steps_compile_neither_the_sampler_nor_the_step(tmp_path, mesh):
    # one completion width for every step (completion_slices=1), so no step has new shapes
    exp = experiment(tmp_path, O.OPDConfig(), steps=3, lr=1e-3, loop=LoopConfig(lmbda=1.0, completion_slices=1))
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
