"""Several optimizer steps per sampled batch (``loop.minibatches``, ``loop.epochs``): an iteration
equals the train step run by hand on the batch's slices (and again per epoch), the clipped
surrogate's ratios leave 1 after the first step, a run split and resumed ends where an
uninterrupted one does, the cadences fire when a multiple of them is crossed, and layouts that do
not divide are refused before any model is built."""

import dataclasses

import jax
import numpy as np
import pytest

import opd_jax.objectives as O
from opd_jax.training.config import LoopConfig
from opd_jax.training.loop import Trainer
from opd_jax.training.outputs import due
from test_loop import experiment

EOPD = O.EOPDConfig(k=4, clip_eps=0.05)


def _exp(path, minibatches=1, epochs=1, steps=2, objective=EOPD, **kw):
    path.mkdir(exist_ok=True)
    return experiment(path, objective, steps=steps, lr=3e-2, samples=2,
                      loop=LoopConfig(lmbda=1.0, minibatches=minibatches, epochs=epochs), **kw)


def _params(trainer):
    return jax.tree.map(np.asarray, jax.device_get(trainer.state.params))


@pytest.mark.parametrize("minibatches, epochs", [(2, 1), (1, 2), (2, 2)])
def test_an_iteration_is_the_train_step_on_each_slice(tmp_path, minibatches, epochs):
    trainer = Trainer(_exp(tmp_path / "a", minibatches, epochs, steps=minibatches * epochs))
    oracle = Trainer(_exp(tmp_path / "b", steps=minibatches * epochs))
    batch = oracle._prepare(0, 0).finish()  # the batch the trainer will sample and score
    rows = batch.targets.shape[0] // minibatches
    state = oracle.state
    for _ in range(epochs):
        for i in range(minibatches):
            part = jax.tree.map(lambda x: x[i * rows:(i + 1) * rows], batch)
            state, _ = oracle.step_fn(state, part, oracle.teacher.step_params(state.params))
    metrics = trainer.iteration()
    assert int(trainer.state.step) == minibatches * epochs
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6),
                 _params(trainer), jax.tree.map(np.asarray, jax.device_get(state.params)))
    assert metrics["loss/tokens"] == pytest.approx(epochs * float(np.sum(np.asarray(batch.loss_mask))))


def test_later_steps_train_off_policy(tmp_path):
    """One step per batch trains on-policy (every ratio 1, up to float32 rounding); the second of
    two steps on the same batch sees the moved student (policy/ratio_dev: mean |pi / mu - 1|)."""
    one = Trainer(_exp(tmp_path / "one", steps=1)).iteration()
    two = Trainer(_exp(tmp_path / "two", epochs=2, steps=2))
    first, both = one["policy/ratio_dev"], two.iteration()["policy/ratio_dev"]
    assert first < 1e-5 and abs(one["policy/approx_kl"]) < 1e-5
    assert both / 2 > 100 * max(first, 1e-7)  # the second step's drift (the mean of the two)


def test_a_resumed_run_ends_where_an_uninterrupted_one_does(tmp_path):
    whole = Trainer(_exp(tmp_path / "whole", 2, steps=4))
    whole.run()
    first = Trainer(_exp(tmp_path / "split", 2, steps=4))
    first.run(until=2)
    second = Trainer(_exp(tmp_path / "split", 2, steps=4))
    second.run()
    assert int(second.state.step) == 4
    jax.tree.map(np.testing.assert_array_equal, _params(second), _params(whole))


def test_cadences_fire_when_a_multiple_is_crossed():
    # every 3 steps, batches of 2 optimizer steps: due at 4 (3 crossed) and 6, not at 2
    assert [s for s in (2, 4, 6, 8) if due(3, s, 100, 2)] == [4, 6]
    assert [s for s in (1, 2, 3) if due(2, s, 100)] == [2]  # one step per batch: multiples
    assert due(0, 8, 8, 2) and not due(0, 6, 8, 2)  # only at the end


@pytest.mark.parametrize("changes, match", [
    (dict(steps=3), r"run.steps=3 is not a multiple of the 2 optimizer steps each sampled batch"),
    (dict(minibatches=3, steps=3), r"data.batch_size=8 prompts cannot be split into loop.minibatches=3"),
])
def test_layouts_that_do_not_divide_are_refused(tmp_path, changes, match):
    kw = {"minibatches": 2, **changes}
    with pytest.raises(ValueError, match=match):
        Trainer(_exp(tmp_path / "run", kw.pop("minibatches"), steps=kw.pop("steps")))


@pytest.mark.parametrize("value", [0, 1.5, True])
def test_bad_counts_name_the_field(value):
    with pytest.raises(ValueError, match="loop.minibatches must be an int >= 1"):
        LoopConfig(minibatches=value)
    with pytest.raises(ValueError, match="loop.epochs must be an int >= 1"):
        dataclasses.replace(LoopConfig(), epochs=value)


def test_policy_drift_against_a_hand_count():
    import jax.numpy as jnp
    from opd_jax.training.step import policy_drift
    logp = jnp.log(jnp.array([[0.5, 0.2, 0.9]]))
    behavior = jnp.log(jnp.array([[0.25, 0.2, 0.1]]))
    got = policy_drift(logp, behavior, jnp.array([[True, True, False]]))  # the last is masked
    assert float(got["policy/ratio_dev"]) == pytest.approx((1.0 + 0.0) / 2, abs=1e-6)
    assert float(got["policy/approx_kl"]) == pytest.approx((np.log(0.25 / 0.5) + 0.0) / 2, abs=1e-6)
