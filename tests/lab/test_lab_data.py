"""The lab's tokenizer (through AutoTokenizer), records (through the trainer's data loader),
privileged contexts, verifier reward and pass@k."""

import itertools
import math

import numpy as np
import pytest

from opd_jax.data import load_examples
from opd_jax.lab import countdown as C
from opd_jax.lab import data as L
from opd_jax.lab import metrics, tokenizer as T
from opd_jax.models import load_tokenizer

PROBLEM = C.Problem((11, 8, 7, 4), 25)
STEPS = [C.Step(11, "-", 8, 3), C.Step(7, "*", 4, 28), C.Step(28, "-", 3, 25)]


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    """The lab tokenizer as a model's would be loaded: saved, then read back with AutoTokenizer."""
    return load_tokenizer(T.save(tmp_path_factory.mktemp("lab_tokenizer")))


def test_tokenizer_round_trips_through_auto_tokenizer_one_token_per_character(tok):
    texts = [L.prompt(PROBLEM), C.write(STEPS, "forward"), C.write(STEPS, "backward"),
             L.teacher_prompt(PROBLEM, rule="no_subtraction"),
             L.teacher_prompt(PROBLEM, hint=C.write(STEPS, "forward"))]
    for text in texts:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert len(ids) == len(text) and T.UNK_ID not in ids
        assert tok.decode(ids) == text
    assert len(tok) == T.vocab_size()
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, tok.unk_token_id) == (
        T.PAD_ID, T.BOS_ID, T.EOS_ID, T.UNK_ID)
    assert tok("9?", add_special_tokens=False)["input_ids"] == [T.SPECIALS.__len__() + 9, T.UNK_ID]


def test_records_load_through_the_trainers_data_loader(tok, tmp_path):
    path = str(tmp_path / "lab.jsonl")
    recs = [L.record(PROBLEM, tok, steps=STEPS, fmt="forward", teacher_context={"rule": "multiply_first"}),
            L.record(C.Problem((3, 5, 9), 24), tok, fmt="backward")]
    assert L.write_records(path, recs) == 2
    examples = load_examples(path, tokenizer=tok, max_prompt_len=64, vocab_size=T.vocab_size())
    first, second = examples
    assert tok.decode(list(first.prompt_ids)) == "11 8 7 4 -> 25:"
    assert first.completion_ids[-1] == T.EOS_ID and tok.decode(list(first.completion_ids[:-1])) == "11-8=3 7*4=28 28-3=25"
    assert tok.decode(list(first.teacher_prompt_ids)) == "rule * first | 11 8 7 4 -> 25:"
    assert second.completion_ids is None and second.teacher_prompt_ids is None
    assert L.answer_problem(second.answer) == (C.Problem((3, 5, 9), 24), "backward")


def test_reward_is_the_verifiers_verdict_on_the_text_before_eos(tok, tmp_path):
    path = str(tmp_path / "lab.jsonl")
    L.write_records(path, [L.record(PROBLEM, tok, fmt="forward"), L.record(PROBLEM, tok, fmt="backward")])
    fwd, bwd = load_examples(path, tokenizer=tok, max_prompt_len=64)
    reward = L.reward_fn(tok)
    ids = lambda text: tok(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    good = ids("4*7=28 11-8=3 28-3=25") + [T.EOS_ID]
    assert reward(fwd, np.array(good)) == 1.0
    assert reward(fwd, np.array(good + ids("1+1=2") + [T.PAD_ID] * 3)) == 1.0  # after EOS: ignored
    assert reward(fwd, np.array(ids("4*7=28 11-8=3 28-3=24") + [T.EOS_ID])) == 0.0
    assert reward(fwd, np.array(ids("4*7=28 11-8=3 28-3=25 3+3=6"))) == 0.0  # cut off: no EOS, extra step
    assert reward(bwd, np.array(good)) == 0.0  # the other format
    assert reward(bwd, np.array(ids("25=28-3 28=7*4 3=11-8") + [T.EOS_ID])) == 1.0
    assert reward(fwd, np.array([T.EOS_ID])) == 0.0
    with pytest.raises(ValueError, match="answer must be"):
        L.answer_problem({"numbers": [1, 2]})


def test_rules_separate_solutions_and_contexts_are_checked():
    sols = C.solutions(C.Problem((2, 3, 5, 9), 15))
    no_minus = [s for s in sols if L.RULES["no_subtraction"].holds(list(s))]
    mul_first = [s for s in sols if L.RULES["multiply_first"].holds(list(s))]
    assert 0 < len(no_minus) < len(sols) and 0 < len(mul_first) < len(sols)
    assert all(all(step.op != "-" for step in s) for s in no_minus)
    assert all(s[0].op == "*" for s in mul_first)
    with pytest.raises(ValueError, match="exactly one"):
        L.teacher_prompt(PROBLEM)
    with pytest.raises(ValueError, match="unknown rule"):
        L.teacher_prompt(PROBLEM, rule="be_nice")


@pytest.mark.parametrize("n", [1, 4, 7])
def test_pass_at_k_is_the_chance_that_k_draws_include_a_correct_one(n):
    for c in range(n + 1):
        outcomes = [True] * c + [False] * (n - c)
        for k in range(1, n + 1):
            subsets = list(itertools.combinations(outcomes, k))
            expected = sum(any(s) for s in subsets) / len(subsets)
            assert metrics.pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)
    assert metrics.pass_at_k(200, 3, 1) == pytest.approx(3 / 200)
    assert metrics.pass_at_k(16, 1, 8) == pytest.approx(1 - math.comb(15, 8) / math.comb(16, 8))
    with pytest.raises(ValueError):
        metrics.pass_at_k(4, 5, 1)
    with pytest.raises(ValueError):
        metrics.pass_at_k(4, 1, 0)
