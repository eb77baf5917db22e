"""Recipes through the real jitted train step (``make_train_step`` on a tiny Transformer), for
what the trainer must supply: nothing extra for TIP's fixed normalisation (the vocabulary size
is the logits' last axis), and the step number for SEAD's schedule (the state's step, as for
REOPOLD's switch)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import opd_jax.objectives as O
from opd_jax.models import Transformer
from opd_jax.models.config import tiny_config
from opd_jax.training.batch import Sequences, TrainBatch
from opd_jax.training.step import StepConfig, init_state, make_train_step

V = 40


def _setup(obj, one_pass=True):
    gs, ps = nnx.split(Transformer(tiny_config(vocab_size=V, hidden_size=32, num_layers=1),
                                   rngs=nnx.Rngs(0)), nnx.Param)
    gt, pt = nnx.split(Transformer(tiny_config(vocab_size=V, hidden_size=32, num_layers=1),
                                   rngs=nnx.Rngs(1)), nnx.Param)
    tx = optax.sgd(0.05)
    step = make_train_step(graphdef=gs, teacher_graphdef=gt, tx=tx, objective=obj,
                           cfg=StepConfig(chunk_size=4, one_pass=one_pass))
    k = jax.random.split(jax.random.key(0), 2)
    tokens = jax.random.randint(k[0], (4, 9), 0, V)
    lm = jnp.arange(6)[None] < jnp.array([6, 4, 2, 5])[:, None]
    batch = TrainBatch(student=Sequences.from_left_padded(tokens, jnp.ones((4, 9), bool)),
                       targets=tokens[:, 3:], loss_mask=lm,
                       behavior_logp=-3.0 * jax.random.uniform(k[1], (4, 6)))
    return step, init_state(ps, tx, obj, seed=0), batch, pt


def test_tip_fixed_and_sead_schedule_in_the_train_step():
    """One step program (generic path: neither recipe is token-local here) holding TIP with
    normalize="fixed" (h / ln V inside the vocabulary phase: no extra input; 17 valid tokens,
    frac 0.5: floor(8.5) = 8 kept) and SEAD, whose alpha_k = (1 + cos(pi k / K)) / 2 follows
    the state's step k = 0, 1, 2 (K = 4)."""
    tip, sead = O.TIPConfig(normalize="fixed"), O.SEADConfig(anneal_steps=4)
    assert O.required_inputs(tip) == O.required_inputs(sead) == frozenset()
    step, state, batch, pt = _setup(O.weighted_sum(tip=(1.0, O.build_objective(tip)),
                                                   sead=(1.0, O.build_objective(sead))))
    for k in range(3):
        state, m = step(state, batch, pt)
        assert np.isfinite(m["loss/total"]) and int(state.step) == k + 1
        np.testing.assert_allclose(m["tip/tip/kept_frac"], 8 / 17, rtol=1e-6)
        np.testing.assert_allclose(m["sead/sead/alpha"], 0.5 * (1 + np.cos(np.pi * k / 4)),
                                   rtol=1e-6)
