"""A teacher with its own tokenizer (opd_jax.teachers.aligned, opd_jax.teachers.spans)."""

import dataclasses
import json

import jax
import numpy as np
import pytest

import opd_jax.objectives as O
from opd_jax import data as D
from opd_jax import smoke
from opd_jax.sampling import SamplerConfig
from opd_jax.teachers import spans as S
from opd_jax.teachers.local import sequence_logp
from opd_jax.training.config import (DataConfig, EvalConfig, Experiment, LoopConfig, MeshConfig,
                                     ModelSpec, OptimConfig, RunConfig, TeacherSpec)
from opd_jax.training.loop import Trainer

TEXTS = ["What is 12 * 7? The answer is \\boxed{84}.", "  two  spaces\nand a new line ",
         "é→∑ naïve café 3.5", "x", "{}}{{", "12+12=24 so \\boxed{24}"]


@pytest.fixture(scope="module")
def toks():
    return {"char": smoke.chat_tokenizer(), "bpe400": smoke.bpe_chat_tokenizer(400),
            "bpe300": smoke.bpe_chat_tokenizer(300, seed=1)}


def prefix_cuts(tok, ids):
    """Brute force: the character positions where a prefix of ``ids`` decodes to a prefix of
    the whole text (never inside a character)."""
    full = tok.decode(ids)
    cuts = set()
    for k in range(1, len(ids) + 1):
        head = tok.decode(ids[:k])
        if full.startswith(head) and not (head.endswith(S.REPLACEMENT) and k < len(ids)):
            cuts.add(len(head))
    return full, cuts


def random_text(rng, n):
    alphabet = list("abc xyz 0123456789+-*=.{}\\\n") + ["é", "→", "∑", "ï"]
    return "".join(rng.choice(alphabet, size=n))


@pytest.mark.parametrize("pair", [("char", "bpe400"), ("bpe400", "char"), ("bpe400", "bpe300"),
                                  ("bpe300", "bpe300")])
@pytest.mark.parametrize("seed", range(6))
def test_text_spans_are_the_brute_force_common_cuts_and_hold_the_same_text(toks, pair, seed):
    s_tok, t_tok = toks[pair[0]], toks[pair[1]]
    rng = np.random.default_rng(seed)
    text = TEXTS[seed] if seed < len(TEXTS) else random_text(rng, 40)
    if "char" in pair:
        text = "".join(c for c in text if c.isascii())  # the character vocabulary is ASCII
    ids = s_tok(text, add_special_tokens=False)["input_ids"]
    a = S.align(s_tok, t_tok, ids, eos=False, teacher_eos=t_tok.eos_token_id, cuts="text")
    assert a["exact"]
    full, s_cuts = prefix_cuts(s_tok, ids)
    t_full, t_cuts = prefix_cuts(t_tok, a["teacher_ids"])
    assert t_full == full
    assert a["spans"] == len(s_cuts & t_cuts)  # one span per common cut (the end included)
    for j in range(a["spans"]):
        s_in = [t for t, sp in zip(ids, a["student_span"]) if sp == j]
        t_in = [t for t, sp in zip(a["teacher_ids"], a["teacher_span"]) if sp == j]
        assert s_in and t_in
    # the spans are in order, and the text of each side's first j spans is the same prefix
    for side, tok, tids in ((a["student_span"], s_tok, ids), (a["teacher_span"], t_tok, a["teacher_ids"])):
        assert list(side) == sorted(side)
    ends = sorted(s_cuts & t_cuts)
    for j, end in enumerate(ends):
        s_pre = [t for t, sp in zip(ids, a["student_span"]) if sp <= j]
        t_pre = [t for t, sp in zip(a["teacher_ids"], a["teacher_span"]) if sp <= j]
        assert s_tok.decode(s_pre) == t_tok.decode(t_pre) == full[:end]


def test_pieces_of_a_byte_level_vocabulary_keep_a_split_character_with_its_last_byte(toks):
    tok = toks["bpe300"]
    ids = tok("a→b", add_special_tokens=False)["input_ids"]
    pieces, exact = S.token_pieces(tok, ids)
    assert exact and "".join(pieces) == "a→b" and "→" in pieces
    assert len(ids) > 3 and pieces.count("") == len(ids) - 3  # the arrow's bytes: 3 tokens here


def extensions_by_hand(tok, piece):
    """The probe characters that change how ``piece`` is tokenized, one tokenizer call each."""
    base = tok(piece, add_special_tokens=False)["input_ids"]
    return {c for c in S.PROBE if tok(piece + c, add_special_tokens=False)["input_ids"][:len(base)] != base}


@pytest.mark.parametrize("pair", [("char", "bpe400"), ("bpe400", "bpe300"), ("char", "char")])
@pytest.mark.parametrize("seed", range(3))
def test_consistent_spans_end_where_both_tokens_extend_alike(toks, pair, seed):
    s_tok, t_tok = toks[pair[0]], toks[pair[1]]
    text = "".join(c for c in (TEXTS + [random_text(np.random.default_rng(seed), 40)])[seed * 2] if c.isascii())
    ids = s_tok(text, add_special_tokens=False)["input_ids"]
    a = S.align(s_tok, t_tok, ids, eos=False, teacher_eos=t_tok.eos_token_id)
    plain = S.align(s_tok, t_tok, ids, eos=False, teacher_eos=t_tok.eos_token_id, cuts="text")
    assert a["teacher_ids"] == plain["teacher_ids"]
    full, s_cuts = prefix_cuts(s_tok, ids)
    _, t_cuts = prefix_cuts(t_tok, a["teacher_ids"])
    want = set()  # the common cuts whose two tokens (found by prefix decodes) extend alike
    for c in sorted(s_cuts & t_cuts):
        s_piece = full[max(x for x in s_cuts | {0} if x < c):c]
        t_piece = full[max(x for x in t_cuts | {0} if x < c):c]
        if c == len(full) or extensions_by_hand(s_tok, s_piece) == extensions_by_hand(t_tok, t_piece):
            want.add(c)
    ends = set()
    for j in range(a["spans"]):
        ends.add(len(s_tok.decode([t for t, sp in zip(ids, a["student_span"]) if sp <= j])))
    assert ends == want
    if pair[0] == pair[1]:  # one tokenizer: every common cut is consistent
        assert a["student_span"] == plain["student_span"]


def test_the_numbers_of_a_digit_student_and_a_number_teacher_end_with_what_follows(toks):
    from opd_jax.lab import tokenizer as LT
    c, n = LT.build(), LT.build_numbers()
    ids = c("21+6=28", add_special_tokens=False)["input_ids"] + [LT.EOS_ID]
    plain = S.align(c, n, ids, eos=True, teacher_eos=LT.EOS_ID, cuts="text")
    a = S.align(c, n, ids, eos=True, teacher_eos=LT.EOS_ID)
    assert plain["student_span"] == [0, 0, 1, 2, 3, 4, 4, 5]  # "21" "+" "6" "=" "28" <eos>
    assert a["student_span"] == [0, 0, 0, 1, 1, 2, 2, 2]  # "21+" "6=" "28<eos>": the same events
    assert a["teacher_span"] == [0, 0, 1, 1, 2, 2] and a["spans"] == 3


def test_an_end_of_sequence_token_after_a_consistent_cut_is_its_own_last_span(toks):
    s_tok, t_tok = toks["char"], toks["bpe400"]
    eos = s_tok.convert_tokens_to_ids(smoke.EOS)
    ids = s_tok("12 * 7.", add_special_tokens=False)["input_ids"] + [eos]
    for cuts in S.CUTS:
        a = S.align(s_tok, t_tok, ids, eos=True, teacher_eos=t_tok.eos_token_id, cuts=cuts)
        assert a["teacher_ids"][-1] == t_tok.eos_token_id
        assert a["student_span"][-1] == a["teacher_span"][-1] == a["spans"] - 1
        assert a["student_span"][-2] == a["teacher_span"][-2] == a["spans"] - 2


@pytest.mark.parametrize("seed", range(4))
def test_spread_gives_each_span_the_teachers_log_prob_and_its_tokens_one_share(seed):
    rng = np.random.default_rng(seed)
    b, n, nt = 3, 9, 12
    s_span = np.sort(rng.integers(0, 5, (b, n)), axis=1)
    t_span = np.sort(rng.integers(0, 5, (b, nt)), axis=1)
    s_span[:, -2:], t_span[:, -3:] = -1, -1  # padding
    lq, lp = rng.normal(size=(b, nt)), rng.normal(size=(b, n))
    got = S.spread(lq, t_span, s_span, lp)
    for r in range(b):
        for j in set(s_span[r][s_span[r] >= 0]) & set(t_span[r][t_span[r] >= 0]):
            s_in, t_in = s_span[r] == j, t_span[r] == j
            np.testing.assert_allclose(got[r, s_in].sum(), lq[r, t_in].sum(), rtol=1e-5, atol=1e-5)
            adv = got[r, s_in] - lp[r, s_in]
            np.testing.assert_allclose(adv, adv[0], atol=1e-5)  # one share per token
            if s_in.sum() == 1 and t_in.sum() == 1:
                np.testing.assert_allclose(got[r, s_in], lq[r, t_in], rtol=1e-6)
        np.testing.assert_array_equal(got[r, s_span[r] < 0], lp[r, s_span[r] < 0].astype(np.float32))


def write_models(tmp, t_tok, t_vocab, s_vocab=128):
    sp = smoke.write_checkpoint(str(tmp / "student"), smoke.student_config().replace(vocab_size=s_vocab))
    tp = smoke.write_checkpoint(str(tmp / "teacher"), smoke.teacher_config().replace(vocab_size=t_vocab),
                                tokenizer=t_tok)
    return sp, tp


def xtok_exp(tmp, sp, tp, *, data=None, max_new=12, **changes):
    data = data or smoke.write_jsonl(str(tmp / "train.jsonl"), smoke.math_records(8))
    exp = Experiment(student=ModelSpec(path=sp), teacher=TeacherSpec(kind="cross_tokenizer",
                                                                     model=ModelSpec(path=tp)),
                     objective=O.OPDConfig(), loop=LoopConfig(lmbda=1.0),
                     sampler=SamplerConfig(max_new_tokens=max_new, num_samples=2),
                     optim=OptimConfig(lr=1e-3),
                     data=DataConfig(path=data, batch_size=2, max_prompt_len=128, chat_template=True),
                     mesh=MeshConfig(data=1), run=RunConfig(steps=2, workdir=str(tmp / "run"),
                                                            progress=False, tensorboard=False))
    return dataclasses.replace(exp, **changes)


def test_a_teacher_of_the_students_own_tokenizer_scores_exactly_its_token_log_probs(tmp_path, toks):
    """The oracle: with the student's tokenizer every span is one token, so the scores are the
    teacher model's log-probs of the student's own sequence. (Both vocabularies are the
    tokenizer's: ids beyond it decode to nothing and would join the next span.)"""
    sp, tp = write_models(tmp_path, toks["char"], len(toks["char"]), len(toks["char"]))
    trainer = Trainer(xtok_exp(tmp_path, sp, tp))
    prompts = trainer.prompts(0)
    batch = trainer._batch("on_policy", prompts, jax.random.key(3), 0)[0]
    scored = trainer.teacher.score(batch, prompts, trainer.state.params)
    assert trainer.teacher.metrics()["xtok/one_token_spans"] == 1.0
    g, p = trainer.teacher.model_pair
    want = sequence_logp(g, p, batch.student, batch.targets, batch.loss_mask, batch.group, 1.0, 64)
    m = np.asarray(batch.loss_mask)
    np.testing.assert_array_equal(np.asarray(scored.loss_mask), m)
    np.testing.assert_allclose(np.asarray(scored.extras["teacher_logp"])[m], np.asarray(want)[m],
                               rtol=2e-5, atol=2e-5)


def test_a_run_with_a_bpe_teacher_trains_and_reports_its_spans(tmp_path, toks):
    sp, tp = write_models(tmp_path, toks["bpe400"], 512)
    held_out = smoke.write_jsonl(str(tmp_path / "eval.jsonl"), smoke.math_records(2, seed=1))
    trainer = Trainer(xtok_exp(tmp_path, sp, tp, reward="math",
                               eval=EvalConfig(path=held_out, k=1, max_new_tokens=8)))
    before = jax.tree.map(np.array, trainer.state.params)
    m = trainer.iteration()
    assert np.isfinite(m["loss/total"]) and m["xtok/cut"] == 0 and m["xtok/inexact"] == 0
    assert m["xtok/tokens_per_span"] > 1 and 0 < m["xtok/one_token_spans"] < 1
    assert "diag/overlap_ratio" not in m  # no distribution to compare
    moved = [not np.array_equal(a, np.asarray(b))
             for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(trainer.state.params))]
    assert any(moved)
    assert np.isfinite(trainer.evaluate()["eval/reverse_kl_k1"])
    held = trainer.evaluate_heldout()  # pass@k; no token diagnostics across two vocabularies
    assert "pass@1" in held and not any("overlap" in k or "reverse_kl" in k for k in held)


def test_teacher_tokens_past_the_width_mask_their_spans_out(tmp_path, toks):
    sp, tp = write_models(tmp_path, toks["bpe400"], 512)
    exp = xtok_exp(tmp_path, sp, tp)
    trainer = Trainer(dataclasses.replace(exp, teacher=dataclasses.replace(exp.teacher, token_ratio=0.25)))
    prompts = trainer.prompts(0)
    batch = trainer._batch("on_policy", prompts, jax.random.key(3), 0)[0]
    scored = trainer.teacher.score(batch, prompts, trainer.state.params)
    assert trainer.teacher.metrics()["xtok/cut"] > 0
    kept, was = np.asarray(scored.loss_mask), np.asarray(batch.loss_mask)
    assert (kept <= was).all() and kept.sum() < was.sum()
    for row in kept:  # what is kept is a prefix of the completion
        assert not row[np.argmin(row):].any() or row.all()


@pytest.mark.parametrize("change,match", [
    (dict(objective=O.GKDConfig()), "sampled token's teacher log-prob"),
    (dict(loop=LoopConfig(lmbda=0.5)), "on-policy steps only"),
    (dict(sampler=SamplerConfig(max_new_tokens=12, num_samples=2, top_p=0.9)), "without truncation"),
])
def test_the_trainer_refuses_what_the_teacher_cannot_feed_before_building_a_model(tmp_path, change, match):
    exp = xtok_exp(tmp_path, "no/student", "no/teacher", data="no/data.jsonl", **change)
    with pytest.raises(ValueError, match=match):
        Trainer(exp)


def test_records_of_token_ids_and_long_prompts_are_refused(tmp_path, toks):
    sp, tp = write_models(tmp_path, toks["bpe400"], 512)
    path = tmp_path / "ids.jsonl"
    path.write_text(json.dumps({"prompt": "1 + 1?"}) + "\n" + json.dumps({"prompt_ids": [5, 6]}) + "\n")
    with pytest.raises(D.DataError, match=r"line 2: a teacher with its own tokenizer reads the prompt as text"):
        Trainer(xtok_exp(tmp_path, sp, tp, data=str(path)))
    with pytest.raises(ValueError, match="exceed its 512 positions"):
        Trainer(xtok_exp(tmp_path, sp, tp, max_new=300))
