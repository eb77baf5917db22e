"""The math verifier on a table of real-looking completions (the expected verdicts are the
mathematics, not a run's output), and rewards looked up by name."""

import pytest

from opd_jax import rewards, smoke
from opd_jax.data import Example

# (completion text, reference answer, correct?)
TABLE = [
    ("So 3/6 simplifies, giving $\\boxed{\\frac{1}{2}}$.", "1/2", True),
    ("Dividing, x = 0.5, hence \\boxed{0.5}", "\\frac{1}{2}", True),
    ("The area is \\boxed{2\\sqrt{2}}.", "\\sqrt{8}", True),
    ("Expanding gives \\boxed{x^2 + 2x + 1}", "(x+1)^2", True),
    ("\\boxed{-\\frac{7}{3}}", "-7/3", True),
    ("The angle is \\boxed{\\pi/2}", "\\frac{\\pi}{2}", True),
    ("There are \\boxed{1000} ways.", "1000", True),
    ("The total is 12 apples.\nFinal answer: 12", "12", True),  # no box: the final answer
    ("The answer is 42.", 42, True),  # a numeric reference
    ("First I got \\boxed{3}, but rechecking: \\boxed{4}", "4", True),  # the last box counts
    ("First I got \\boxed{4}, but rechecking: \\boxed{3}", "4", False),
    ("<think>maybe \\boxed{5}</think>\nThe answer is \\boxed{6}.", "6", True),  # after thinking
    ("<think>it is \\boxed{6}</think>\nSo the answer is \\boxed{5}.", "6", False),
    ("Therefore \\boxed{\\frac{2}{3}}", "3/4", False),  # wrong
    ("I computed \\boxed{17}.", "71", False),
    ("Let me think about this problem carefully.", "5", False),  # no answer at all
    ("", "5", False),
    ("The answer is \\boxed{\\frac{3", "3/4", False),  # cut in the middle of the box
]


@pytest.fixture(scope="module")
def tok():
    return smoke.chat_tokenizer()


def _ids(tok, text, end=True):
    ids = tok(text, add_special_tokens=False)["input_ids"]
    return ids + [tok.eos_token_id] if end else ids


@pytest.mark.parametrize("text,answer,correct", TABLE)
def test_math_reward_table(tok, text, answer, correct):
    reward = rewards.get("math", tok, smoke.eos_ids(tok))
    assert reward(Example((1,), answer=answer), _ids(tok, text)) == float(correct)


def test_a_truncated_completion_scores_zero_even_with_a_right_box(tok):
    """Cut off before EOS: no answer (math-verify would otherwise read ``3 + 4 =`` as 7)."""
    strict = rewards.get("math", tok, smoke.eos_ids(tok))
    e = Example((1,), answer="7")
    assert strict(e, _ids(tok, "So 3 + 4 = \\boxed{7}", end=False)) == 0.0
    assert strict(e, _ids(tok, "So 3 + 4 = \\boxed{7}")) == 1.0
    assert strict(e, _ids(tok, "So 3 + 4 =", end=False)) == 0.0
    after_eos = _ids(tok, "3 + 4 = \\boxed{7}") + _ids(tok, "junk")
    assert strict(e, after_eos) == 1.0  # what follows the EOS is ignored
    lenient = rewards.math_reward(tok, smoke.eos_ids(tok), require_eos=False)
    assert lenient(e, _ids(tok, "So 3 + 4 = \\boxed{7}", end=False)) == 1.0


def test_last_boxed_balances_braces():
    assert rewards.last_boxed("a \\boxed{\\frac{1}{2}} b \\fbox{3}") == "\\fbox{3}"
    assert rewards.last_boxed("\\boxed{1} then \\boxed{\\frac{1}{") == "\\boxed{1}"
    assert rewards.last_boxed("no box") is None


def test_bad_answers_are_named(tok):
    reward = rewards.get("math", tok, smoke.eos_ids(tok))
    for answer, match in ((None, "no `answer`"), ("  ", "no `answer`"), ([1], "text or a number")):
        with pytest.raises(ValueError, match=rf"line 3 of the data: .*{match}"):
            reward(Example((1,), answer=answer, line=3), _ids(tok, "\\boxed{1}"))


def test_rewards_by_name(tok):
    lab = rewards.get("opd_jax.lab.data:reward_fn", tok)  # a factory of the tokenizer alone
    assert callable(lab)
    with pytest.raises(ValueError, match=r"unknown reward 'maths'; built-in: \['math'\]"):
        rewards.get("maths", tok)
    with pytest.raises(ValueError, match=r"cannot import nope from opd_jax\.rewards"):
        rewards.get("opd_jax.rewards:nope", tok)
    with pytest.raises(ValueError, match=r"reward 'math' reads the completion's text: it needs a "):
        rewards.get("math", None)
