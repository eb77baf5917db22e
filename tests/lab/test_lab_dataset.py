"""The lab's data directory: disjoint splits, verifiable solutions, uniform solution draws, no
half-written or overwritten dataset."""

import json
import os
from collections import Counter

import numpy as np
import pytest

from opd_jax.data import load_examples
from opd_jax.lab import countdown as C
from opd_jax.lab import data as L
from opd_jax.lab import dataset
from opd_jax.models import load_tokenizer

SMALL = C.Difficulty(count=3, max_number=9, max_target=40, min_solutions=2)


def test_build_writes_disjoint_verifiable_splits_deterministically(tmp_path):
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    manifest = dataset.build(a, difficulty=SMALL, train=40, test=10, test_fraction=0.2, seed=3)
    dataset.build(b, difficulty=SMALL, train=40, test=10, test_fraction=0.2, seed=3)
    for name in ("train.jsonl", "test.jsonl"):
        assert open(os.path.join(a, name)).read() == open(os.path.join(b, name)).read()
    tok = load_tokenizer(os.path.join(a, "tokenizer"))
    train = load_examples(os.path.join(a, "train.jsonl"), tokenizer=tok, max_prompt_len=manifest["max_prompt_len"],
                          vocab_size=manifest["vocab_size"])
    test = load_examples(os.path.join(a, "test.jsonl"), tokenizer=tok, max_prompt_len=manifest["max_prompt_len"])
    assert len(train) == 40 and len(test) == 10
    train_problems = [L.answer_problem(e.answer)[0] for e in train]
    test_problems = [L.answer_problem(e.answer)[0] for e in test]
    assert not {p.key for p in train_problems} & {p.key for p in test_problems}
    assert len({p.key for p in train_problems}) == 40
    assert all(C.split_of(p, 0.2) == "train" for p in train_problems)
    assert all(C.split_of(p, 0.2) == "test" for p in test_problems)
    reward = L.reward_fn(tok)
    assert all(reward(e, np.array(e.completion_ids)) == 1.0 for e in train)
    assert all(e.completion_ids is None for e in test)
    assert json.load(open(os.path.join(a, "dataset.json")))["format"] == "forward"


def test_a_second_build_into_the_same_directory_is_refused_and_writes_nothing(tmp_path):
    out = str(tmp_path / "d")
    dataset.build(out, difficulty=SMALL, train=5, test=2, test_fraction=0.3)
    before = {n: os.path.getmtime(os.path.join(out, n)) for n in os.listdir(out)}
    with pytest.raises(FileExistsError, match="already holds a dataset"):
        dataset.build(out, difficulty=SMALL, train=5, test=2, test_fraction=0.3)
    assert before == {n: os.path.getmtime(os.path.join(out, n)) for n in os.listdir(out)}


def test_impossible_requests_fail_before_writing(tmp_path):
    tiny = C.Difficulty(count=2, max_number=3, max_target=10, min_solutions=1)  # only a few problems exist
    with pytest.raises(ValueError, match="distinct train problems"):
        dataset.build(str(tmp_path / "x"), difficulty=tiny, train=500, test=1)
    with pytest.raises(ValueError, match="unknown answer format"):
        dataset.build(str(tmp_path / "y"), difficulty=SMALL, fmt="sideways")
    with pytest.raises(ValueError, match="leaves no test problems"):
        dataset.build(str(tmp_path / "z"), difficulty=SMALL, train=2, test=2, test_fraction=0.0)
    assert not os.listdir(tmp_path)


def test_solutions_are_drawn_uniformly_over_distinct_ones():
    """Chi-square against uniform over the distinct solutions (false-alarm rate 1e-3)."""
    problem = C.Problem((2, 3, 5, 9), 15)
    sols = C.solutions(problem)
    m = len(C.distinct(sols))
    assert m >= 5
    rng = np.random.default_rng(0)
    n = 300 * m
    counts = Counter(C.canonical(list(dataset.draw_solution(rng, problem, sols))) for _ in range(n))
    assert len(counts) == m
    stat = sum((c - n / m) ** 2 / (n / m) for c in counts.values())
    df, z = m - 1, 3.0902  # z: the standard normal's 0.999 quantile
    critical = df * (1 - 2 / (9 * df) + z * (2 / (9 * df)) ** 0.5) ** 3  # Wilson-Hilferty
    assert stat < critical


def test_every_problem_is_the_space_sample_problem_draws_from():
    """Each enumerated problem qualifies by an independent count of its distinct solutions, every
    qualifying (numbers, target) pair is enumerated, and draws of sample_problem land in it."""
    import itertools
    d = C.Difficulty(count=3, max_number=7, max_target=25, min_solutions=2)
    space = {p.key for p in C.every_problem(d)}
    expected = set()
    for numbers in itertools.combinations_with_replacement(range(1, 8), 3):
        for target in range(1, 26):
            if target not in numbers and len(C.distinct(C.solutions(C.Problem(numbers, target)))) >= 2:
                expected.add(C.Problem(numbers, target).key)
    assert space == expected and len(space) > 50
    rng = np.random.default_rng(1)
    assert {C.sample_problem(rng, d).key for _ in range(300)} <= space


def test_whole_split_with_every_solution(tmp_path):
    d = C.Difficulty(count=3, max_number=7, max_target=25, min_solutions=2)
    out = str(tmp_path / "all")
    manifest = dataset.build(out, difficulty=d, train=None, test=5, test_fraction=0.2, solutions="all")
    tok = load_tokenizer(os.path.join(out, "tokenizer"))
    train = load_examples(os.path.join(out, "train.jsonl"), tokenizer=tok, max_prompt_len=32)
    by_problem = {}
    for e in train:
        p, fmt = L.answer_problem(e.answer)
        assert C.verify(p, e.record["completion"], fmt)
        by_problem.setdefault(p.key, set()).add(C.canonical(C.parse(e.record["completion"], fmt)))
    want = {p.key for p in C.every_problem(d) if C.split_of(p, 0.2) == "train"}
    assert set(by_problem) == want and manifest["train"] == len(want)
    for key, found in by_problem.items():  # every distinct solution, once
        numbers, target = key.split(" -> ")
        p = C.Problem(tuple(int(x) for x in numbers.split()), int(target))
        assert found == C.distinct(C.solutions(p))
    assert manifest["records"] == len(train) == sum(len(v) for v in by_problem.values())
