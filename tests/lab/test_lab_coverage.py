"""Coverage records: a first step in the prompt (legal, or legal operands with a wrong result),
continued by legal, correctly computed steps; a solution whenever one continues the first step."""

import numpy as np
import pytest

from opd_jax.lab import countdown as C
from opd_jax.lab import coverage as CV
from opd_jax.lab import data as L
from opd_jax.lab import tokenizer as T
from opd_jax.models import load_tokenizer


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return load_tokenizer(T.save(tmp_path_factory.mktemp("tok")))


def test_first_steps_are_every_legal_step_once():
    p = C.Problem((6, 3, 3), 15)
    got = {(s.a, s.op, s.b, s.result) for s in CV.first_steps(p)}
    want = {(6, "+", 3, 9), (6, "-", 3, 3), (6, "*", 3, 18), (6, "/", 3, 2), (3, "+", 3, 6), (3, "*", 3, 9),
            (3, "/", 3, 1)}
    assert got == want and len(CV.first_steps(p)) == len(want)


@pytest.mark.parametrize("numbers", [(9, 8, 5), (3, 7, 12), (2, 3, 5, 7)])
def test_records_continue_with_correct_arithmetic(tok, numbers):
    rng = np.random.default_rng(0)
    targets = {s[-1].result for t in range(1, 120) for s in C.solutions(C.Problem(numbers, t))}
    for target in sorted(targets)[:8]:
        problem = C.Problem(numbers, target)
        for _ in range(10):
            r = CV.record(rng, problem, tok)
            if r is None:
                continue
            head = L.prompt(problem)
            assert r["prompt"].startswith(head) and r["prompt_ids"] == tok(r["prompt"], add_special_tokens=False)["input_ids"]
            first = C.parse(r["prompt"][len(head):].strip(), "forward")
            assert len(first) == 1 and r["completion_ids"][-1] == T.EOS_ID
            if C.check(problem, first) is None:  # solved already: the completion ends the answer
                assert r["completion"] == "" and r["completion_ids"] == [T.EOS_ID]
                continue
            rest = C.parse(r["completion"], "forward")
            assert rest
            assert all(C.apply(s.a, s.op, s.b) == s.result for s in rest)  # every step computes
            legal = C.apply(first[0].a, first[0].op, first[0].b) == first[0].result
            whole = [first[0]] + rest
            if legal and any(C.check(problem, [first[0], *s]) is None
                             for s in [x[1:] for x in C.solutions(problem)]):
                assert C.check(problem, whole) is None  # a solution continues it: written out
            if C.check(problem, whole) is not None:  # no solution: the next step computes from the
                assert first[0].result in (rest[0].a, rest[0].b)  # written result (not the target)


def test_wrong_results_are_wrong_and_records_cover_every_problem(tok):
    rng = np.random.default_rng(1)
    step = C.Step(9, "*", 8, 72)
    assert all(CV.wrong_result(rng, step).result not in (72,) for _ in range(50))
    problems = [C.Problem((9, 8, 5), 67), C.Problem((3, 7, 12), 33)]
    recs = CV.records(rng, problems, tok, 20)
    assert len(recs) == 20 and {r["answer"]["target"] for r in recs} == {67, 33}
    with pytest.raises(ValueError, match="continue forward answers"):
        CV.record(rng, problems[0], tok, fmt="backward")
