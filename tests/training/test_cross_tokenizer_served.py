"""A served teacher with its own tokenizer (teacher.kind=cross_tokenizer with teacher.served.url):
``python -m opd_jax.serve`` on the loopback interface, backed by the same checkpoint as the local
teacher, which is the oracle (the same spans, the same log-probs, a run that trains), and the
checks of the server's tokenizer against teacher.model.path's."""

import dataclasses

import jax
import numpy as np
import pytest

import opd_jax.objectives as O
from opd_jax import smoke
from opd_jax.teachers import TeacherServerError
from opd_jax.training.config import ServedSpec
from opd_jax.training.loop import Trainer
from test_served import start_server, stop
from tests.training.test_cross_tokenizer import toks, write_models, xtok_exp  # noqa: F401

pytestmark = pytest.mark.slow


def served_exp(exp, url, **served):
    return dataclasses.replace(exp, teacher=dataclasses.replace(
        exp.teacher, served=ServedSpec(url=url, top_k=4, **served)))


def test_a_served_teacher_of_another_tokenizer_scores_as_the_local_one(tmp_path, toks):  # noqa: F811
    sp, tp = write_models(tmp_path, toks["bpe400"], 512)
    other = smoke.write_checkpoint(str(tmp_path / "other"), smoke.teacher_config().replace(vocab_size=512),
                                   tokenizer=toks["bpe300"])
    proc, url = start_server(tp)
    try:
        local = Trainer(xtok_exp(tmp_path, sp, tp))
        exp = served_exp(xtok_exp(tmp_path, sp, tp), url)
        served = Trainer(dataclasses.replace(exp, run=dataclasses.replace(exp.run, workdir=str(tmp_path / "s"))))
        assert served.teacher.models(served.state.params) == []  # nothing of the teacher is local
        prompts = local.prompts(0)
        batch = local._batch("on_policy", prompts, jax.random.key(3), 0)[0]
        want = local.teacher.score(batch, prompts, local.state.params)
        got = served.teacher.score(batch, prompts, served.state.params)
        m = np.asarray(want.loss_mask)
        np.testing.assert_array_equal(np.asarray(got.loss_mask), m)
        np.testing.assert_allclose(np.asarray(got.extras["teacher_logp"])[m],
                                   np.asarray(want.extras["teacher_logp"])[m], rtol=1e-4, atol=1e-4)
        metrics = served.iteration()
        assert np.isfinite(metrics["loss/total"]) and metrics["teacher/requests"] > 0
        assert metrics["xtok/tokens_per_span"] > 1
        served.teacher.close()
        with pytest.raises(TeacherServerError, match="teacher.model.path must name the served model's tokenizer"):
            Trainer(served_exp(xtok_exp(tmp_path, sp, other), url))
    finally:
        stop(proc)


@pytest.mark.parametrize("change,match", [
    (dict(objective=O.SimCTConfig()), "a local teacher for objective=simct"),
    (dict(objective=O.OPDConfig(temperature=0.7)), "objective.temperature=1 with a served teacher"),
])
def test_what_a_served_teacher_of_another_tokenizer_cannot_do_is_refused(tmp_path, change, match):
    exp = served_exp(xtok_exp(tmp_path, "no/student", "no/teacher", data="no/data.jsonl"), "http://127.0.0.1:9")
    if "temperature" in match:
        exp = dataclasses.replace(exp, sampler=dataclasses.replace(exp.sampler, temperature=0.7))
    with pytest.raises(ValueError, match=match):
        Trainer(dataclasses.replace(exp, **change))
