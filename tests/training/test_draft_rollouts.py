"""Draft-OPD in the loop (``loop.draft_tokens``): on-policy steps sample by speculative decoding
with the student drafting for the teacher's model. Greedy, the batch is the teacher's own greedy
text (on one device and sharded over a data x fsdp x tensor mesh); the rejected drafts'
positions reach the objective; a short Draft-OPD run raises the rate at which the teacher accepts
the student's drafts; bad combinations are refused before compiling."""

import dataclasses

import jax
import numpy as np
import pytest

import opd_jax.objectives as O
from opd_jax.sampling import sample
from opd_jax.sampling.speculative import speculative_sample
from opd_jax.training import batches as B
from opd_jax.training.config import EvalConfig, LoopConfig, MeshConfig
from opd_jax.training.loop import Trainer
from test_loop import experiment, sharpen_teacher


def drafting(tmp_path, objective=None, gamma=3, **kw):
    return experiment(tmp_path, objective or O.DraftOPDConfig(), lr=1e-2, samples=2,
                      loop=LoopConfig(lmbda=1.0, draft_tokens=gamma), **kw)


def local(x):
    return np.asarray(jax.device_get(x))


@pytest.mark.parametrize("mesh", [MeshConfig(data=1), MeshConfig(data=2, fsdp=2, tensor=2)], ids=["one", "mesh"])
def test_a_greedy_speculative_batch_is_the_teachers_greedy_text(tmp_path, mesh, n_devices):
    exp = drafting(tmp_path, steps=1)
    trainer = Trainer(dataclasses.replace(exp, mesh=mesh, sampler=exp.sampler.replace(temperature=0.0, num_samples=1)))
    sharpen_teacher(trainer)  # the student's drafts are often rejected
    prompts = trainer.prompts(0)
    batch, stats = trainer._batch("on_policy", prompts, jax.random.key(3), 0)
    sp, sm = B.sampling_prompts(trainer.rows, prompts, "on_policy")
    t_graph, t_params = trainer.teacher.mixer(trainer.state.params)
    want = sample(t_graph, t_params, sp, sm, jax.random.key(0), cfg=trainer.exp.sampler)
    n = batch.targets.shape[1]
    got_mask, want_mask = local(batch.loss_mask), local(want.completion_mask)[:, want.prompt_len:][:, :n]
    np.testing.assert_array_equal(got_mask, want_mask)
    np.testing.assert_array_equal(local(batch.targets)[got_mask],
                                  local(want.tokens)[:, want.prompt_len:][:, :n][want_mask])
    assert 1.0 <= stats["sample/acceptance_length"] <= 4.0 and 0 <= stats["sample/acceptance_rate"] < 1
    # the error positions are the speculative sampler's own, cut like the completion columns
    _, drafts = speculative_sample((trainer.s_graph, trainer.state.params), (t_graph, t_params), sp, sm,
                                   jax.random.fold_in(jax.random.key(3), 2), cfg=trainer.exp.sampler,
                                   draft_tokens=3, row_ids=trainer.rows.to_global(prompts.row_ids))
    error = local(batch.extras[O.DRAFT_ERROR])
    np.testing.assert_array_equal(error, local(drafts.draft_error)[:, want.prompt_len:][:, :n].astype(np.float32))
    assert error[got_mask].any() and not error[~got_mask].any()


def test_draft_opd_raises_the_acceptance_of_the_students_drafts(tmp_path):
    trainer = Trainer(drafting(tmp_path, O.DraftOPDConfig(error_weight=1.0), steps=60))
    sharpen_teacher(trainer)
    runs = [trainer.iteration() for _ in range(60)]
    for m in runs:
        assert np.isfinite(m["loss/total"]) and 0 <= m["draft_opd/error_frac"] < 1
    rate = lambda ms: np.mean([m["sample/acceptance_rate"] for m in ms])  # noqa: E731
    length = lambda ms: np.mean([m["sample/acceptance_length"] for m in ms])  # noqa: E731
    # measured (means of 10 steps): acceptance rate 0.34 in the first ten, 0.58 in the last ten
    assert rate(runs[-10:]) > rate(runs[:10]) + 0.12
    assert length(runs[-10:]) > length(runs[:10])


def test_bad_combinations_are_refused(tmp_path):
    with pytest.raises(ValueError, match="loop.draft_tokens must be an int >= 0"):
        LoopConfig(draft_tokens=-1)
    weighted = experiment(tmp_path, O.DraftOPDConfig(), steps=1, lr=1e-3)  # draft_tokens=0
    with pytest.raises(ValueError, match="only speculative rollouts have"):
        Trainer(weighted)
    mixed = drafting(tmp_path, O.OPDConfig(), steps=1)
    mixed = dataclasses.replace(mixed, loop=dataclasses.replace(mixed.loop, teacher_mix=0.5))
    with pytest.raises(ValueError, match="cannot be combined with loop.teacher_mix > 0"):
        Trainer(mixed)
    lgr = drafting(tmp_path, O.LGRConfig(), steps=1)
    with pytest.raises(ValueError, match="reads what the student's own sampler records"):
        Trainer(lgr)
    with pytest.raises(ValueError, match="eval.draft_tokens must be an int >= 0"):
        EvalConfig(draft_tokens=-2)
    no_eval = experiment(tmp_path, O.OPDConfig(), steps=1, lr=1e-3)
    with pytest.raises(ValueError, match="this run has none: set eval.path"):
        Trainer(dataclasses.replace(no_eval, eval=EvalConfig(draft_tokens=2)))
    # without the error weight, the divergence alone trains on the student's own samples
    Trainer(experiment(tmp_path, O.DraftOPDConfig(error_weight=0.0), steps=1, lr=1e-3)).iteration()
