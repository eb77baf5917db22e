"""The lab's task against independent oracles: a verifier that tries every reading of an answer,
and a classic Countdown enumeration of expression trees."""

import itertools
import random

import numpy as np
import pytest

from opd_jax.lab import countdown as C


_legal = C.apply  # the rule of a single step, checked case by case below; the oracles here are
# independent in how they read answers and enumerate solutions


def _take(given, results, x):
    """Every way to use one ``x``: a given number or an earlier result."""
    for k, v in enumerate(given):
        if v == x:
            yield given[:k] + given[k + 1:], results
    for k, v in enumerate(results):
        if v == x:
            yield given, results[:k] + results[k + 1:]


def _reference_valid(numbers, target, steps):
    """Valid iff SOME reading of the operands (each one a given number or an earlier result)
    makes every step legal, uses every intermediate result and ends on the target."""
    def go(i, given, results):
        if i == len(steps):
            return results == (target,)
        a, op, b, r = steps[i]
        if _legal(a, op, b) != r:
            return False
        return any(go(i + 1, g2, r2 + (r,)) for g1, r1 in _take(given, results, a) for g2, r2 in _take(g1, r1, b))

    return bool(steps) and steps[-1][3] == target and go(0, tuple(numbers), ())


def _random_steps(rng, numbers):
    """Random step lists over the numbers and their results: many invalid, some valid."""
    pool, steps = list(numbers), []
    for _ in range(rng.randint(1, len(numbers))):
        a, b = rng.choice(pool), rng.choice(pool)
        op = rng.choice(C.OPS)
        r = _legal(a, op, b)
        if r is None or rng.random() < 0.1:
            r = (a + b) if r is None else r + rng.choice((-1, 1))  # a wrong result
            r = max(r, 1)
        steps.append((a, op, b, r))
        pool.append(r)
        if rng.random() < 0.5 and a in pool:
            pool.remove(a)
    return steps


def test_verify_agrees_with_a_verifier_that_tries_every_reading():
    rng = random.Random(0)
    seen = {True: 0, False: 0}
    for _ in range(3000):
        numbers = tuple(rng.randint(1, 9) for _ in range(rng.randint(2, 4)))
        steps = _random_steps(rng, numbers)
        target = steps[-1][3] if rng.random() < 0.8 else rng.randint(1, 50)
        if target < 1:
            continue
        expected = _reference_valid(numbers, target, steps)
        problem = C.Problem(numbers, target)
        for fmt in C.FORMATS:
            text = C.write([C.Step(*s) for s in steps], fmt)
            assert C.verify(problem, text, fmt) == expected, (numbers, target, text)
        seen[expected] += 1
    assert seen[True] > 200 and seen[False] > 200  # both verdicts exercised


def _trees(values):
    """``(value, steps)`` of every legal expression tree over sub-multisets of ``values`` (the
    classic Countdown recursion: combine any two, recurse); ``steps`` is the tree's steps as a
    sorted tuple of ``"a op b=r"`` (commutative operands larger first)."""
    out = set()

    def go(items):  # items: tuple of (value, steps that built it)
        for i, j in itertools.combinations(range(len(items)), 2):
            (a, sa), (b, sb) = items[i], items[j]
            rest = items[:i] + items[i + 1:j] + items[j + 1:]
            for x, y in ((a, b), (b, a)):
                for op in C.OPS:
                    r = _legal(x, op, y)
                    if r is None:
                        continue
                    hi, lo = (max(x, y), min(x, y)) if op in "+*" else (x, y)
                    steps = tuple(sorted(sa + sb + (f"{hi}{op}{lo}={r}",)))
                    out.add((r, steps))
                    go(rest + ((r, steps),))

    go(tuple((v, ()) for v in values))
    return out


@pytest.mark.parametrize("numbers", [(3, 7, 12), (2, 3, 4, 6), (1, 1, 5, 9), (4, 4, 8, 2)])
def test_solutions_are_the_steps_of_every_expression_tree_that_reaches_the_target(numbers):
    trees = _trees(numbers)
    for target in sorted({r for r, _ in trees})[:40]:
        problem = C.Problem(numbers, target)
        sols = C.solutions(problem)
        expected = {" ".join(steps) for r, steps in trees if r == target}
        assert C.distinct(sols) == expected, (numbers, target)
        for s in sols:
            for fmt in C.FORMATS:
                assert C.verify(problem, C.write(s, fmt), fmt)
        assert len(set(sols)) == len(sols)


def test_formats_are_incompatible_and_both_verify():
    p = C.Problem((11, 8, 7, 4), 25)
    steps = [C.Step(11, "-", 8, 3), C.Step(7, "*", 4, 28), C.Step(28, "-", 3, 25)]
    fwd, bwd = C.write(steps, "forward"), C.write(steps, "backward")
    assert fwd == "11-8=3 7*4=28 28-3=25" and bwd == "25=28-3 28=7*4 3=11-8"
    assert C.verify(p, fwd, "forward") and C.verify(p, bwd, "backward")
    assert not C.verify(p, fwd, "backward") and not C.verify(p, bwd, "forward")
    assert C.verify(p, "4*7=28 11-8=3 28-3=25", "forward")  # independent steps in either order
    assert C.verify(p, "25=28-3 3=11-8 28=4*7", "backward")


@pytest.mark.parametrize("text, why", [
    ("11-8=3 7*4=28 28-3=26", "not a legal step"),
    ("11-8=3 7*4=28 28+3=31", "not the target"),
    ("11-8=3 7*7=49", "not available"),
    ("11+7=18 7*4=28 28-3=25", "not available"),
    ("11-8=3 7+4=11 7*4=28 28-3=25", "not available"),
    ("8+4=12 7*4=28 28-3=25", "not available"),
])
def test_check_names_the_broken_step(text, why):
    problem = C.Problem((11, 8, 7, 4), 25)
    steps = C.parse(text, "forward")
    assert steps is not None and why in C.check(problem, steps)
    assert not C.verify(problem, text, "forward")


def test_dead_steps_and_malformed_answers_are_refused():
    p = C.Problem((2, 3, 5, 9), 15)
    assert C.verify(p, "5*3=15", "forward")
    assert "never used" in C.check(p, C.parse("9-2=7 5*3=15", "forward"))
    assert C.check(p, []) == "no steps"
    for text in ("", "   ", "5*3=15.", "5x3=15", "05*3=15", "5*3==15", "5*3=15 junk", "15=5*3"):
        assert not C.verify(p, text, "forward"), text
    with pytest.raises(ValueError, match="unknown answer format"):
        C.verify(p, "5*3=15", "sideways")


def test_identity_steps_and_non_integer_results_are_not_steps():
    legal = {(1, "+", 1): 2, (9, "-", 4): 5, (2, "*", 3): 6, (8, "/", 4): 2, (6, "/", 6): 1}
    illegal = [(5, "*", 1), (1, "*", 5), (5, "/", 1), (7, "/", 2), (3, "/", 6), (3, "-", 3), (3, "-", 5), (3, "%", 2)]
    assert all(C.apply(*step) == r for step, r in legal.items())
    assert all(C.apply(*step) is None for step in illegal)


def test_sampled_problems_have_several_distinct_solutions_and_respect_the_difficulty():
    rng = np.random.default_rng(0)
    d = C.Difficulty(count=4, max_number=9, max_target=60, min_solutions=3)
    problems = [C.sample_problem(rng, d) for _ in range(20)]
    for p in problems:
        assert len(p.numbers) == 4 and max(p.numbers) <= 9 and p.target <= 60 and p.target not in p.numbers
        assert len(C.distinct(C.solutions(p))) >= 3
    again = [C.sample_problem(np.random.default_rng(0), d) for _ in range(1)]
    assert again[0] == problems[0]  # a seed gives the same problems
    with pytest.raises(ValueError, match="count must be 2..5"):
        C.Difficulty(count=6)
    with pytest.raises(ValueError, match="positive int"):
        C.Problem((3, 0), 5)


def test_split_is_a_function_of_the_problem_with_the_asked_fraction():
    rng = random.Random(1)
    problems = {C.Problem(tuple(rng.randint(1, 30) for _ in range(4)), rng.randint(1, 200)) for _ in range(4000)}
    test = [p for p in problems if C.split_of(p, 0.2) == "test"]
    n = len(problems)
    assert abs(len(test) - 0.2 * n) < 5 * (0.2 * 0.8 * n) ** 0.5  # binomial: a 5-sigma band
    for p in list(problems)[:200]:
        shuffled = C.Problem(tuple(reversed(p.numbers)), p.target)
        assert C.split_of(shuffled, 0.2) == C.split_of(p, 0.2)
    assert all(C.split_of(p, 0.0) == "train" and C.split_of(p, 1.0) == "test" for p in list(problems)[:50])
    with pytest.raises(ValueError, match="test_fraction"):
        C.split_of(next(iter(problems)), 1.5)
