"""TCOD's curriculum on trajectory depth (selection.turn_mask, TCODConfig) against a plain-Python
count of turns: both directions across the schedule, padding inside rows, the recipe as OPD on
the kept tokens (no separators, or the schedule's end: OPD's loss and gradient exactly), the
separators settable from the command line, and bad settings refused."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import opd_jax.objectives as O
from opd_jax.config import override
from tests.objectives.conftest import make_batch
from tests.objectives.test_composition import _Holder
from tests.objectives.test_recipes import SHAPE, recipe_loss


def turns_by_hand(sep, mask, step, direction, grow):
    keep = np.zeros(mask.shape, np.float32)
    for b in range(mask.shape[0]):
        valid = [t for t in range(mask.shape[1]) if mask[b, t]]
        turn, turns = 1, {}
        for t in valid:
            turns[t] = turn
            turn += int(sep[b, t])
        n = max(turns.values(), default=0)
        d = max(1, math.ceil(n * min(step, grow) / grow))
        for t in valid:
            keep[b, t] = turns[t] <= d if direction == "forward" else turns[t] > n - d
    return keep


@pytest.mark.parametrize("direction", ["forward", "backward"])
@pytest.mark.parametrize("step", [0, 7, 20, 30, 45])
def test_turn_mask_matches_a_count_by_hand(direction, step):
    rng = np.random.default_rng(step)
    sep = rng.uniform(size=(6, 14)) < 0.3
    mask = rng.uniform(size=(6, 14)) < 0.85  # holes inside rows: counted as padding
    mask[0] = False  # a row with nothing valid keeps nothing
    got = np.asarray(O.turn_mask(sep.astype(np.float32), mask, step, direction=direction, grow_steps=30))
    np.testing.assert_array_equal(got, turns_by_hand(sep, mask, step, direction, 30))


def test_separator_indicator():
    tokens = np.array([[3, 5, 7, 5], [1, 2, 3, 4]])
    np.testing.assert_array_equal(O.separator_indicator(tokens, ids=(5, 4)), [[0, 1, 0, 1], [0, 0, 0, 1]])
    assert not np.asarray(O.separator_indicator(tokens)).any()


@pytest.mark.parametrize("direction", ["forward", "backward"])
def test_the_recipe_is_opd_on_the_kept_tokens(direction):
    b = make_batch(0, **SHAPE)
    z, zt, m = b["hidden"] @ b["head"], b["t_hidden"] @ b["t_head"], b["mask"]
    seps = tuple(int(t) for t in np.unique(np.asarray(b["tokens"]))[:4])
    cfg = O.TCODConfig(separators=seps, direction=direction, grow_steps=10)
    sep = np.isin(np.asarray(b["tokens"]), seps)
    keep = turns_by_hand(sep, np.asarray(m), 3, direction, 10)
    assert 0 < keep.sum() < np.asarray(m).sum()  # the curriculum drops some tokens at step 3

    def want(a):
        lp = O.token_logp(a, b["tokens"])
        adv = O.opd_advantage(O.token_logp(zt, b["tokens"]), b["extras"]["behavior_logp"], where=m)
        loss = O.importance_sampling_loss(lp, b["extras"]["behavior_logp"], adv, where=m)
        return jnp.sum(loss * keep) / keep.sum()
    got, metrics = recipe_loss(cfg, b, z, zt, step=3)
    np.testing.assert_allclose(got, want(z), rtol=1e-5)
    np.testing.assert_allclose(metrics["tcod/kept_frac"], keep.sum() / np.asarray(m).sum(), rtol=1e-6)
    np.testing.assert_allclose(jax.grad(lambda a: recipe_loss(cfg, b, a, zt, step=3)[0])(z), jax.grad(want)(z),
                               rtol=1e-5, atol=1e-7)
    opd = recipe_loss(O.OPDConfig(), b, z, zt)[0]
    opd_grad = jax.grad(lambda a: recipe_loss(O.OPDConfig(), b, a, zt)[0])(z)
    for c, step in [(O.TCODConfig(direction=direction), 3), (cfg, 10), (cfg, 25)]:
        np.testing.assert_allclose(recipe_loss(c, b, z, zt, step=step)[0], opd, rtol=1e-6)
        np.testing.assert_allclose(jax.grad(lambda a, c=c, s=step: recipe_loss(c, b, a, zt, step=s)[0])(z),
                                   opd_grad, rtol=1e-5, atol=1e-8)


def test_separators_are_settable_from_the_command_line():
    holder = override(override(_Holder(), "objective=tcod"), "objective.separators=[22, 2]")
    assert holder.objective.separators == (22, 2)


@pytest.mark.parametrize("bad, match", [(dict(separators=(-1,)), "separators must be a tuple"),
                                        (dict(separators=[3]), "separators must be a tuple"),
                                        (dict(direction="sideways"), "direction must be one of"),
                                        (dict(grow_steps=0), "grow_steps must be an int >= 1")])
def test_bad_settings_are_refused(bad, match):
    with pytest.raises(ValueError, match=match):
        O.TCODConfig(**bad)
