"""A reference policy beside the teacher (opd_jax.teachers.WithReference) for StableOPD's anchor:
its log-probs are the student's initial weights' (against an independent forward), the anchor
is 0 at the first step and grows as the student moves, and a checkpoint restores the reference
(not a rebuilt copy)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import opd_jax.objectives as O
from opd_jax.teachers import WithReference
from opd_jax.training.batch import Sequences, TrainBatch
from opd_jax.training.config import CheckpointConfig
from opd_jax.training.loop import Trainer
from test_loop import V, experiment


def stable(tmp_path, **kw):
    return experiment(tmp_path, O.StableOPDConfig(ref_coef=0.5), steps=4, lr=2e-2, samples=4, **kw)


def batch(seed=0, b=4, p=5, n=6):
    k = jax.random.split(jax.random.key(seed), 2)
    tokens = jax.random.randint(k[0], (b, p + n), 1, V)
    mask = jnp.concatenate([jnp.arange(p)[None] >= jnp.array([0, 2, 1, 3])[:, None],
                            jnp.ones((b, n), bool)], 1)
    lm = jnp.arange(n)[None] < jnp.array([6, 4, 2, 6])[:, None]
    return TrainBatch(student=Sequences.from_left_padded(tokens, mask), targets=tokens[:, p:],
                      loss_mask=lm, behavior_logp=jnp.zeros((b, n)))


def independent_logp(graphdef, params, tb):
    """Log-probs of the completion tokens from one whole-sequence forward and a log-softmax."""
    model = nnx.merge(graphdef, params)
    s = tb.student
    logits, _ = model(s.tokens, s.positions, mask=s.mask)
    n = tb.targets.shape[1]
    lp = jax.nn.log_softmax(logits[:, -n - 1:-1].astype(jnp.float32), axis=-1)
    return jnp.take_along_axis(lp, tb.targets[..., None], axis=-1)[..., 0]


def test_the_anchor_is_the_initial_student_and_grows_as_the_student_moves(tmp_path):
    trainer = Trainer(stable(tmp_path))
    assert isinstance(trainer.teacher, WithReference)
    initial = jax.tree.map(np.array, trainer.state.params)
    inner = trainer.teacher.inner
    inner.params = jax.tree_util.tree_map_with_path(  # a peaked teacher: much to learn
        lambda path, x: x * 10.0 if "final_norm" in jax.tree_util.keystr(path) else x, inner.params)
    metrics = [trainer.iteration() for _ in range(4)]
    # step 1 samples from the initial student: the reference's log-probs are the student's own
    assert metrics[0]["stable_opd/ref_kl"] < 1e-9
    assert metrics[-1]["stable_opd/ref_kl"] > 1e-4
    tb = batch()
    got = trainer.teacher.reference_logp(tb, trainer.state.params)
    m = np.asarray(tb.loss_mask)
    want = independent_logp(trainer.s_graph, initial, tb)
    np.testing.assert_allclose(np.asarray(got)[m], np.asarray(want)[m], rtol=1e-5, atol=1e-5)
    now = independent_logp(trainer.s_graph, trainer.state.params, tb)
    assert np.max(np.abs(np.asarray(now - want)[m])) > 1e-3  # the student did move away


def test_other_objectives_get_no_reference(tmp_path):
    trainer = Trainer(experiment(tmp_path, O.OPDConfig(), steps=1, lr=1e-3, samples=4))
    assert not isinstance(trainer.teacher, WithReference)


def test_a_checkpoint_restores_the_reference(tmp_path):
    exp = dataclasses.replace(stable(tmp_path), ckpt=CheckpointConfig(async_save=False, export=False))
    first = Trainer(exp)
    first.iteration()
    # a reference no rebuild could produce: only a restore brings it back
    first.teacher.ref_params = jax.tree.map(lambda x: x + 0.25, first.teacher.ref_params)
    first.save()
    second = Trainer(exp)
    assert second.restore()
    for a, b in zip(jax.tree.leaves(second.teacher.ref_params), jax.tree.leaves(first.teacher.ref_params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    for a, b in zip(jax.tree.leaves(second.state.params), jax.tree.leaves(first.state.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
