"""StableOPD's rollout mixture (``loop.golden_fraction``): the chosen prompts' last sample is their
record's reference completion with the student's own log-probs (against an independent forward),
every other row is the sample it would have been, the draw is deterministic per prompt and
roughly at the fraction, a run trains, and records without completions or peer contexts are
refused before any model is built."""

import dataclasses

import jax
import numpy as np
import pytest

import opd_jax.objectives as O
from opd_jax.data import DataError
from opd_jax.training import batches as B
from opd_jax.training.config import LoopConfig
from opd_jax.training.loop import Trainer
from test_loop import experiment
from test_reference import independent_logp


def mixed(tmp_path, fraction, **kw):
    return experiment(tmp_path, O.StableOPDConfig(), steps=2, lr=1e-2, samples=2,
                      loop=LoopConfig(lmbda=1.0, golden_fraction=fraction),
                      data_kw={"completions": True}, **kw)


def local(x):
    return np.asarray(jax.device_get(x))


def test_golden_rows_are_the_reference_with_the_students_own_logp(tmp_path):
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    plain, gold = Trainer(mixed(tmp_path / "a", 0.0)), Trainer(mixed(tmp_path / "b", 1.0))
    prompts = gold.prompts(0)
    key = jax.random.key(5)
    a, _ = plain._batch("on_policy", prompts, key, 0)
    b, stats = gold._batch("on_policy", prompts, key, 0)
    assert stats["sample/golden_frac"] == 1.0
    ta, tb, ma, mb = (local(x) for x in (a.targets, b.targets, a.loss_mask, b.loss_mask))
    n = tb.shape[1]
    for i, e in enumerate(prompts.examples):
        want = np.array(e.completion_ids[:n])
        np.testing.assert_array_equal(tb[2 * i + 1][mb[2 * i + 1]], want)  # the last sample: golden
        np.testing.assert_array_equal(tb[2 * i][mb[2 * i]], ta[2 * i][ma[2 * i]])  # the first: sampled
    own = local(independent_logp(gold.s_graph, gold.state.params, b))
    got, sampled = local(b.behavior_logp), local(a.behavior_logp)
    golden_rows = np.arange(len(tb)) % 2 == 1
    np.testing.assert_allclose(got[golden_rows][mb[golden_rows]], own[golden_rows][mb[golden_rows]],
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(got[~golden_rows][mb[~golden_rows]], sampled[~golden_rows][ma[~golden_rows]])


def test_the_draw_is_per_prompt_deterministic_and_at_the_fraction(tmp_path):
    trainer = Trainer(mixed(tmp_path, 0.3))
    prompts = trainer.prompts(0)
    loop = trainer.exp.loop
    draws = np.stack([B.golden_rows(loop, jax.random.key(s), prompts) for s in range(200)])
    assert abs(draws.mean() - 0.3) < 0.03
    again = B.golden_rows(loop, jax.random.key(7), prompts)
    np.testing.assert_array_equal(again, draws[7])
    # a prompt's draw does not depend on which other prompts a host holds
    half = dataclasses.replace(prompts, row_ids=prompts.row_ids[3:], examples=prompts.examples[3:])
    np.testing.assert_array_equal(B.golden_rows(loop, jax.random.key(7), half), draws[7][3:])


def test_a_run_trains_with_the_mixture(tmp_path):
    trainer = Trainer(mixed(tmp_path, 0.5))
    metrics = [trainer.iteration() for _ in range(2)]
    assert all(np.isfinite(m["loss/total"]) and 0.0 <= m["sample/golden_frac"] <= 1.0 for m in metrics)


def test_records_without_a_completion_are_refused(tmp_path):
    exp = mixed(tmp_path, 0.1)
    exp = dataclasses.replace(exp, data=dataclasses.replace(
        exp.data, path=str(tmp_path / "prompts.jsonl").replace("prompts", "plain")))
    from test_loop import write_prompts
    write_prompts(tmp_path / "plain.jsonl")
    with pytest.raises(DataError, match=r"plain.jsonl:1: loop.golden_fraction=0.1 mixes"):
        Trainer(exp)


def test_bad_fraction_is_refused():
    with pytest.raises(ValueError, match=r"loop.golden_fraction must lie in \[0, 1\]"):
        LoopConfig(golden_fraction=1.5)
