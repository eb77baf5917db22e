"""SimCT with a teacher of another tokenizer (objective=simct, teacher.kind=cross_tokenizer):
the shared vocabulary, the extras at span starts against a hand-built case, the oracle (a teacher
of the student's own tokenizer gives exactly the exact reverse KL's loss), a BPE-teacher run, and
the set-up refusals."""

import dataclasses

import numpy as np
import pytest

import opd_jax.objectives as O
from opd_jax.objectives import virtual_vocab as VV
from opd_jax.teachers import virtual as VT
from opd_jax.training.config import LoopConfig, TeacherSpec
from opd_jax.training.loop import Trainer
from tests.training.test_cross_tokenizer import toks, write_models, xtok_exp  # noqa: F401


def test_shared_tokens_write_the_same_text(toks):  # noqa: F811
    s_ids, t_ids = VT.shared_vocabulary(toks["char"], toks["bpe400"])
    assert len(s_ids) == len(set(s_ids.tolist())) == len(set(t_ids.tolist())) > 20
    for s, t in zip(s_ids.tolist(), t_ids.tolist()):
        assert toks["char"].decode([s, s]) == toks["bpe400"].decode([t, t])
    same_s, same_t = VT.shared_vocabulary(toks["bpe400"], toks["bpe400"])
    np.testing.assert_array_equal(same_s, same_t)  # one tokenizer: each token is its own pair
    assert len(same_s) == len(VT.token_texts(toks["bpe400"]))


def test_extras_sit_at_span_starts_with_the_teachers_span_mean():
    """Student spans [0], [1, 2], [3] (position 4: padding); teacher spans [0, 1], [2], [3]."""
    s_span, t_span = np.array([[0, 1, 1, 2, -1]]), np.array([[0, 0, 1, 2, -1, -1]])
    s_ids, t_ids = np.array([[7, 8, 9, 5, 0]]), np.array([[17, 18, 19, 15, 0, 0]])
    shared = (np.array([5, 6, 7]), np.array([15, 16, 17]))  # student 5 <-> teacher 15, ...
    own = np.array([[-1.0, -3.0, -0.5, -0.25, 0.0, 0.0]])
    rng = np.random.default_rng(0)
    top = np.sort(rng.normal(size=(1, 6, 2)), axis=-1)[..., ::-1] - 2
    where = rng.integers(0, 3, size=(1, 6, 2))
    ids, logp, ex = VT.virtual_extras(own, top, where, t_span, s_span, t_ids, s_ids, shared)
    np.testing.assert_array_equal(ex[VV.XTOK_START][0], [1, 1, 0, 1, 0])
    np.testing.assert_array_equal(ex[VV.XTOK_END][0], [0, 2, 0, 3, 0])
    # span 0: one student token, two teacher tokens; span 1: two student tokens; span 2: the pair
    # (5, 15), one shared token on both sides, so no span dimension
    np.testing.assert_array_equal(ex[VV.XTOK_SPAN_DIM][0], [1, 1, 0, 0, 0])
    np.testing.assert_allclose(ex[VV.XTOK_SPAN_LOGP][0], [-2.0, -0.5, 0, -0.25, 0])
    lse = np.array([[0.5, 1.5, 2.0, 0.0, 0.0, 0.0]])  # with logits: the mean own logit less lse[start]
    ex_logit = VT.virtual_extras(own, top, where, t_span, s_span, t_ids, s_ids, shared, lse)[2]
    np.testing.assert_allclose(ex_logit[VV.XTOK_SPAN_LOGP][0], [-2.0 + 1.0 - 0.5, -0.5, 0, -0.25, 0])
    for s, t in ((0, 0), (1, 2), (3, 3)):
        np.testing.assert_array_equal(ids[0, s], shared[0][where[0, t]])
        np.testing.assert_allclose(logp[0, s], top[0, t], rtol=1e-6)
        np.testing.assert_allclose(ex[VV.XTOK_LOG_MASS][0, s], np.logaddexp.reduce(top[0, t]), rtol=1e-6)


def test_a_teacher_of_the_students_own_tokenizer_gives_the_exact_reverse_kl(tmp_path, toks):  # noqa: F811
    """The oracle: every span is one shared token and the support is the whole vocabulary, so the
    first step's loss is GKD(beta=1)'s with the same model as a teacher of the same tokenizer."""
    tok = toks["char"]
    assert len(VT.token_texts(tok)) == len(tok)  # every token writes its own text
    sp, tp = write_models(tmp_path, tok, len(tok), len(tok))
    simct = Trainer(xtok_exp(tmp_path, sp, tp, objective=O.SimCTConfig()))
    losses = [simct.iteration()["loss/total"]]
    assert simct.teacher.metrics()["xtok/one_token_spans"] == 1.0
    exact = xtok_exp(tmp_path, sp, tp, objective=O.GKDConfig(beta=1.0),
                     teacher=TeacherSpec(kind="model", model=simct.exp.teacher.model))
    exact = dataclasses.replace(exact, run=dataclasses.replace(exact.run, workdir=str(tmp_path / "exact")))
    losses.append(Trainer(exact).iteration()["loss/total"])
    np.testing.assert_allclose(losses[0], losses[1], rtol=1e-4)


@pytest.mark.parametrize("span_logit", ["logit", "logprob"])
def test_a_run_with_a_bpe_teacher_trains_on_span_dimensions(tmp_path, toks, span_logit):  # noqa: F811
    sp, tp = write_models(tmp_path, toks["bpe400"], 512)
    exp = xtok_exp(tmp_path, sp, tp, objective=O.SimCTConfig(span_logit=span_logit))
    trainer = Trainer(dataclasses.replace(exp, teacher=dataclasses.replace(exp.teacher, shared_topk=8)))
    assert trainer.teacher.k == 8 and trainer.teacher.span_logit == span_logit
    m = trainer.iteration()
    assert np.isfinite(m["loss/total"]) and m["loss/total"] > 0
    assert 0 < m["simct/span_dims"] < 1 and 0 < m["simct/support_mass"] <= 1
    assert np.isfinite(trainer.iteration()["loss/total"])


def test_simct_needs_a_cross_tokenizer_teacher_and_its_top_k_needs_simct(tmp_path):
    exp = xtok_exp(tmp_path, "no/student", "no/teacher", data="no/data.jsonl")
    simct = dataclasses.replace(exp, objective=O.SimCTConfig())
    with pytest.raises(ValueError, match="use teacher.kind='cross_tokenizer'"):
        Trainer(dataclasses.replace(simct, teacher=dataclasses.replace(exp.teacher, kind="model")))
    with pytest.raises(ValueError, match="on-policy steps only"):
        Trainer(dataclasses.replace(simct, loop=LoopConfig(lmbda=0.5)))
    with pytest.raises(ValueError, match="only objective=simct reads them"):
        Trainer(dataclasses.replace(exp, teacher=dataclasses.replace(exp.teacher, shared_topk=4)))
    with pytest.raises(ValueError, match="shared_topk must be an integer >= 0"):
        TeacherSpec(kind="cross_tokenizer", model=exp.teacher.model, shared_topk=-1)


def test_consistent_shared_tokens_leave_out_the_digits_a_number_vocabulary_extends(toks):  # noqa: F811
    """The lab's pair: '7' is a whole number to the number tokenizer ('7' + '5' is one token) and a
    first digit to the character tokenizer; '+' is the same event on both sides."""
    from opd_jax.lab import tokenizer as LT
    digits, numbers = LT.build(), LT.build_numbers()
    s_text, t_text = VT.shared_vocabulary(digits, numbers)
    s_cons, t_cons = VT.shared_vocabulary(digits, numbers, consistent=True)
    text_of = lambda tok, ids: {tok.decode([i, i])[len(tok.decode([i])):] for i in ids}  # noqa: E731
    assert {"7", "+"} <= text_of(digits, s_text)
    assert "+" in text_of(digits, s_cons) and not set("123456789") & text_of(digits, s_cons)  # "05": no token
    assert set(s_cons.tolist()) < set(s_text.tolist())


def test_alignment_settings_for_a_teacher_of_the_students_tokenizer_are_refused(tmp_path):
    exp = xtok_exp(tmp_path, "no/student", "no/teacher", data="no/data.jsonl")
    model = dataclasses.replace(exp.teacher, kind="model", span_cuts="text", shared_topk=3)
    with pytest.raises(ValueError, match=r"teacher.span_cuts='text', teacher.shared_topk=3: only "
                                         r"teacher.kind='cross_tokenizer' reads them"):
        Trainer(dataclasses.replace(exp, teacher=model))
