"""Build the lab's data directory: its tokenizer, training records with solutions, held-out prompts.

    python -m opd_jax.lab.dataset --out runs/lab/data [--count 3] [--train 8192] [--test 256]

writes ``tokenizer/`` (load with ``opd_jax.models.load_tokenizer``), ``train.jsonl`` (prompt and
one solution per record, for supervised training and as off-policy data) and ``test.jsonl``
(held-out prompts; no problem in it is in ``train.jsonl``, by ``countdown.split_of``), plus
``dataset.json`` (what built it). Each training solution is drawn uniformly among the problem's
distinct solutions, then uniformly among the orders of its steps: the planning choices a teacher
learns from these records are genuinely uncertain.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os

import numpy as np

from opd_jax.lab import countdown as C
from opd_jax.lab import data as L
from opd_jax.lab import tokenizer as T


def draw_solution(rng, problem: C.Problem, sols=None) -> tuple[C.Step, ...]:
    """A solution uniform over the distinct ones (``countdown.canonical``), then over its step orders."""
    sols = C.solutions(problem) if sols is None else sols
    by_solution: dict[str, list] = {}
    for s in sols:
        by_solution.setdefault(C.canonical(list(s)), []).append(s)
    if not by_solution:
        raise ValueError(f"{problem} has no solution")
    keys = sorted(by_solution)
    orders = by_solution[keys[rng.integers(len(keys))]]
    return orders[rng.integers(len(orders))]


def every_solution(rng, problem: C.Problem, sols=None) -> list[tuple[C.Step, ...]]:
    """Each distinct solution once, written in a step order drawn uniformly among its orders."""
    sols = C.solutions(problem) if sols is None else sols
    by_solution: dict[str, list] = {}
    for s in sols:
        by_solution.setdefault(C.canonical(list(s)), []).append(s)
    return [orders[rng.integers(len(orders))] for _, orders in sorted(by_solution.items())]


def split_problems(rng, difficulty: C.Difficulty, split: str, test_fraction: float) -> list[C.Problem]:
    """Every problem of ``split`` (``countdown.every_problem``), in a random order, each with its
    numbers in a random order."""
    out = [C.Problem(tuple(int(x) for x in rng.permutation(p.numbers)), p.target)
           for p in C.every_problem(difficulty) if C.split_of(p, test_fraction) == split]
    return [out[i] for i in rng.permutation(len(out))]


def problems(rng, difficulty: C.Difficulty, count: int, split: str, test_fraction: float) -> list[C.Problem]:
    """``count`` distinct problems of ``split`` (rejection on ``split_of``)."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    share = test_fraction if split == "test" else 1 - test_fraction
    if count and share <= 0:
        raise ValueError(f"test_fraction={test_fraction} leaves no {split} problems")
    out, seen = [], set()
    for _ in range(max(100, int(50 * count / share))):
        if len(out) == count:
            return out
        p = C.sample_problem(rng, difficulty)
        if p.key not in seen and C.split_of(p, test_fraction) == split:
            seen.add(p.key)
            out.append(p)
    raise ValueError(f"found only {len(out)} distinct {split} problems of {difficulty}; ask for fewer or "
                     "allow larger numbers or targets")


def build(out: str, *, difficulty: C.Difficulty = C.Difficulty(), train: int | None = 8192,
          test: int = 256, test_fraction: float = 0.1, fmt: str = "forward", seed: int = 0,
          solutions: str = "one") -> dict:
    """Write the data directory ``out`` (must not hold a dataset already); returns its manifest.

    ``train``: how many training problems (None: every problem of the training split);
    ``solutions``: ``"one"`` record per problem (a solution drawn uniformly among the distinct
    ones) or ``"all"`` (a record per distinct solution)."""
    if fmt not in C.FORMATS:
        raise ValueError(f"unknown answer format {fmt!r}; known: {C.FORMATS}")
    if solutions not in ("one", "all"):
        raise ValueError(f"solutions must be 'one' or 'all', got {solutions!r}")
    if os.path.exists(os.path.join(out, "dataset.json")):
        raise FileExistsError(f"{out} already holds a dataset (dataset.json); pick a new directory")
    rng = np.random.default_rng(seed)  # everything is drawn before anything is written
    if train is None:
        train_problems = split_problems(rng, difficulty, "train", test_fraction)
    else:
        train_problems = problems(rng, difficulty, train, "train", test_fraction)
    test_problems = problems(rng, difficulty, test, "test", test_fraction)
    if solutions == "one":
        answers = [(p, draw_solution(rng, p)) for p in train_problems]
    else:
        answers = [(p, s) for p in train_problems for s in every_solution(rng, p)]
    os.makedirs(out, exist_ok=True)
    from opd_jax.config import write_json
    from opd_jax.models import load_tokenizer
    tok = load_tokenizer(T.save(os.path.join(out, "tokenizer")))
    L.write_records(os.path.join(out, "train.jsonl"), (L.record(p, tok, steps=s, fmt=fmt) for p, s in answers))
    L.write_records(os.path.join(out, "test.jsonl"), (L.record(p, tok, fmt=fmt) for p in test_problems))
    manifest = dict(difficulty=dataclasses.asdict(difficulty), train=len(train_problems),
                    records=len(answers), solutions=solutions, test=test, test_fraction=test_fraction,
                    format=fmt, seed=seed, vocab_size=T.vocab_size(),
                    max_prompt_len=max(len(L.prompt(p)) for p in train_problems + test_problems))
    write_json(manifest, os.path.join(out, "dataset.json"))  # last, atomic: it marks a whole dataset
    return manifest


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="a new directory")
    d = C.Difficulty()
    ap.add_argument("--count", type=int, default=d.count, help="numbers per problem (2..5)")
    ap.add_argument("--max-number", type=int, default=d.max_number)
    ap.add_argument("--max-target", type=int, default=d.max_target)
    ap.add_argument("--min-solutions", type=int, default=d.min_solutions)
    ap.add_argument("--train", default="8192", help="training problems, or 'all' (the whole split)")
    ap.add_argument("--solutions", default="one", choices=("one", "all"),
                    help="a record per problem (one drawn solution) or per distinct solution")
    ap.add_argument("--test", type=int, default=256)
    ap.add_argument("--test-fraction", type=float, default=0.1)
    ap.add_argument("--format", default="forward", choices=C.FORMATS)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    try:
        d = C.Difficulty(count=a.count, max_number=a.max_number, max_target=a.max_target,
                         min_solutions=a.min_solutions)
        train = None if a.train == "all" else int(a.train)
        manifest = build(a.out, difficulty=d, train=train, test=a.test, test_fraction=a.test_fraction,
                         fmt=a.format, seed=a.seed, solutions=a.solutions)
    except (ValueError, FileExistsError) as e:
        ap.error(str(e))
    print(json.dumps(manifest))


if __name__ == "__main__":
    main()
