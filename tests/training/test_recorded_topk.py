"""What the sampler records for the trainer (``batches.student_sampler``): topk_opd's PPO form gets
the sampling policy's top-k from the rollout (against an independent forward) and its first step
equals the on-policy form's; LGR's look-ahead reads the recorded top-k instead of a student
forward and gets the same candidates and rewards; settings that would leave rows without records
are refused before any model is built."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import opd_jax.objectives as O
from opd_jax.teachers.lookahead import lookahead_scores
from opd_jax.training.batch import BEHAVIOR_ENTROPY
from opd_jax.training.config import LoopConfig
from opd_jax.training.loop import Trainer
from test_loop import experiment

PPO = O.TopKOPDConfig(k=4, surrogate="ppo", clip_eps=0.2, temperature=0.9)


def local(x):
    return np.asarray(jax.device_get(x), np.float64 if jnp.issubdtype(x.dtype, jnp.floating) else None)


def independent_topk(graphdef, params, tb, k, temperature):
    """float64 top-k ids, log-probs and entropy at the completion positions, one whole forward."""
    s, n = tb.student, tb.targets.shape[1]
    logits, _ = nnx.merge(graphdef, params)(s.tokens, s.positions, mask=s.mask)
    z = np.asarray(logits[:, -n - 1:-1], np.float64) / temperature
    lp = z - z.max(-1, keepdims=True)
    lp -= np.log(np.exp(lp).sum(-1, keepdims=True))
    order = np.argsort(-lp, axis=-1, kind="stable")[..., :k]
    return order, np.take_along_axis(lp, order, -1), -(np.exp(lp) * lp).sum(-1)


def test_an_on_policy_batch_carries_the_sampling_policys_topk(tmp_path):
    trainer = Trainer(experiment(tmp_path, PPO, steps=1, lr=1e-3, samples=2))
    prompts = trainer.prompts(0)
    tb, _ = trainer._batch("on_policy", prompts, jax.random.key(3), 0)
    ids, logp, entropy = independent_topk(trainer.s_graph, trainer.state.params, tb, 4, 0.9)
    m = local(tb.loss_mask).astype(bool)
    assert m.any() and tb.extras[O.BEHAVIOR_TOPK_IDS].shape == m.shape + (4,)
    np.testing.assert_array_equal(local(tb.extras[O.BEHAVIOR_TOPK_IDS])[m], ids[m])
    np.testing.assert_allclose(local(tb.extras[O.BEHAVIOR_TOPK_LOGP])[m], logp[m], atol=2e-5)
    np.testing.assert_allclose(local(tb.extras[BEHAVIOR_ENTROPY])[m], entropy[m], atol=2e-5)
    # an objective that reads no records gets none (the sampler records nothing)
    (tmp_path / "opd").mkdir()
    plain = Trainer(experiment(tmp_path / "opd", O.OPDConfig(), steps=1, lr=1e-3, samples=2))
    assert not plain._batch("on_policy", prompts, jax.random.key(3), 0)[0].extras


def test_ppo_first_step_equals_the_on_policy_form(tmp_path):
    """At step 1 the behaviour policy is the student: every ratio is 1 and the clip is inactive,
    so the PPO form's update is the plain (on-policy) surrogate's."""
    runs = {}
    for form in ("ppo", "is"):
        (tmp_path / form).mkdir()
        trainer = Trainer(experiment(tmp_path / form, dataclasses.replace(PPO, surrogate=form),
                                     steps=2, lr=1e-2, samples=2))
        metrics = trainer.iteration()
        runs[form] = metrics, jax.tree.map(np.asarray, trainer.state.params), trainer
    (m_ppo, p_ppo, t_ppo), (m_is, p_is, _) = runs["ppo"], runs["is"]
    for name in ("loss/total", "opt/grad_norm"):
        assert m_ppo[name] == pytest.approx(m_is[name], rel=1e-4, abs=1e-6), name
    # Adam's first step is about lr * sign(g): elements whose gradient is ~0 may differ by rounding
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-4), p_ppo, p_is)
    assert np.isfinite(t_ppo.iteration()["loss/total"])  # and it goes on training


def test_lookahead_reads_the_recorded_topk_instead_of_a_student_forward(tmp_path):
    cfg = O.LGRConfig(k=3, branch_points=2, min_entropy=0.0, temperature=0.9)
    trainer = Trainer(experiment(tmp_path, cfg, steps=1, lr=1e-3, samples=2))
    tb, _ = trainer._batch("on_policy", trainer.prompts(0), jax.random.key(4), 0)
    assert tb.extras[O.BEHAVIOR_TOPK_IDS].shape[-1] == 3
    scored = trainer.teacher.score(tb, None, trainer.state.params)
    assert set(scored.extras) == {O.LGR_IDS, O.LGR_REWARD}  # the records are not carried on
    inner = trainer.teacher.inner
    hidden, forward = lookahead_scores(trainer.s_graph, trainer.state.params, inner.graphdef,
                                       inner.params, tb.student, tb.student, tb.loss_mask,
                                       tb.group, cfg)
    reward = local(forward[O.LGR_REWARD])
    active = np.abs(reward).sum(-1) > 0
    assert active.sum() > 0
    np.testing.assert_array_equal(local(scored.extras[O.LGR_IDS])[active],
                                  local(forward[O.LGR_IDS])[active])
    np.testing.assert_allclose(local(scored.extras[O.LGR_REWARD]), reward, atol=1e-4)
    np.testing.assert_allclose(local(scored.teacher_hidden), local(hidden), atol=1e-5)


@pytest.mark.parametrize("loop, match", [
    (LoopConfig(lmbda=0.5), r"loop.lmbda=0.5 < 1 also trains on other completions \(set it to 1\)"),
    (LoopConfig(lmbda=1.0, golden_fraction=0.2), r"loop.golden_fraction=0.2 mixes in reference"),
])
def test_settings_that_leave_rows_without_records_are_refused(tmp_path, loop, match):
    exp = experiment(tmp_path, PPO, steps=1, lr=1e-3, loop=loop, data_kw={"completions": True})
    with pytest.raises(ValueError, match=r"objective 'topk_opd' reads the sampling policy's top-k.*"
                                         + match):
        Trainer(exp)


def test_a_configured_record_topk_is_refused(tmp_path):
    exp = experiment(tmp_path, O.OPDConfig(), steps=1, lr=1e-3)
    exp = dataclasses.replace(exp, sampler=exp.sampler.replace(record_topk=4))
    with pytest.raises(ValueError, match=r"sampler.record_topk=4: the trainer sets what the sampler"):
        Trainer(exp)
