"""Coverage records: partial answers a student might write, continued with correct arithmetic.

A teacher trained only on correct solutions has seen every answer end at the target. In a state
no correct solution passes through (a dead-end first step, or one with a wrong result, which is
most of a weak student's answers) it does not compute: it writes the target as the last step's
result whatever the operands (measured: ``opd_jax.lab.diagnose`` and ``experiments/README.md``),
and on-policy distillation then teaches the student false arithmetic in exactly the states it
visits most. These records give a teacher that coverage. Each one's *prompt* is a problem followed
by one first step (a legal step, or legal operands with a wrong result), and its completion is
the rest of an answer: a solution when one continues the first step, else legal steps with
correct results that consume every intermediate result (the answer is then wrong, but every
step in it computes). The supervised loss counts only the completion, so the teacher learns to
continue from such states without ever learning to write a bad first step.
"""

from __future__ import annotations

import numpy as np

from opd_jax.lab import countdown as C
from opd_jax.lab import data as L
from opd_jax.lab.tokenizer import EOS_ID


def first_steps(problem: C.Problem) -> list[C.Step]:
    """Every legal first step (commutative operands larger first), each once."""
    out = {}
    n = problem.numbers
    for i in range(len(n)):
        for j in range(len(n)):
            if i == j:
                continue
            for op in C.OPS:
                a, b = n[i], n[j]
                if op in "+*" and a < b:
                    continue
                r = C.apply(a, op, b)
                if r is not None:
                    out[(a, op, b)] = C.Step(a, op, b, r)
    return list(out.values())


def wrong_result(rng, step: C.Step) -> C.Step:
    """The same operands with a wrong result: a nearby number (a slip in a digit or two)."""
    r = step.result
    for _ in range(100):
        x = int(r + rng.integers(-max(3, r // 4), max(3, r // 4) + 1))
        if x >= 1 and x != r:
            return C.Step(step.a, step.op, step.b, x)
    return C.Step(step.a, step.op, step.b, r + 1)


def continuation(rng, problem: C.Problem, first: C.Step, sols=None) -> list[C.Step] | None:
    """Steps after ``first``: none when ``first`` already solves the problem, a solution's when
    one continues it (uniformly drawn), else legal steps that each use the previous result and
    one unused given number, until none is left or no legal step exists. None when not even one
    legal step follows."""
    if C.check(problem, [first]) is None:
        return []
    sols = C.solutions(problem) if sols is None else sols
    same = lambda s: (max(s.a, s.b), s.op, min(s.a, s.b), s.result) if s.op in "+*" else \
        (s.a, s.op, s.b, s.result)  # noqa: E731
    if C.illegal_step(problem, [first]) is None:
        rests = [s[1:] for s in sols if len(s) > 1 and same(s[0]) == same(first)]
        if rests:
            return list(rests[rng.integers(len(rests))])
    left = list(problem.numbers)
    for x in (first.a, first.b):
        if x in left:
            left.remove(x)
    steps, r = [], first.result
    while left:
        options = []
        for k, c in enumerate(left):
            for op in C.OPS:
                for a, b in ((r, c), (c, r)):
                    if op in "+*" and a < b:
                        continue
                    v = C.apply(a, op, b)
                    if v is not None:
                        options.append((k, C.Step(a, op, b, v)))
        if not options:
            break
        k, step = options[rng.integers(len(options))]
        steps.append(step)
        r = step.result
        left.pop(k)
        if rng.random() < 0.5:  # stopping early is allowed: unused given numbers are fine
            break
    return steps or None


def record(rng, problem: C.Problem, tokenizer, *, wrong: float = 0.5, fmt: str = "forward") -> dict | None:
    """One coverage record for ``problem`` (see the module docstring): a first step drawn
    uniformly among the legal ones, its result made wrong with probability ``wrong``."""
    if fmt != "forward":
        raise ValueError("coverage records continue forward answers (the backward format writes the "
                         "target's step first)")
    first = first_steps(problem)
    step = first[rng.integers(len(first))]
    if rng.random() < wrong:
        step = wrong_result(rng, step)
    rest = continuation(rng, problem, step)
    if rest is None:
        return None
    encode = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    out = L.record(problem, tokenizer, fmt=fmt)
    out["prompt"] = out["prompt"] + C.write([step], fmt) + " "
    out["prompt_ids"] = encode(out["prompt"])
    out["completion"] = C.write(rest, fmt) if rest else ""
    out["completion_ids"] = (encode(out["completion"]) if rest else []) + [EOS_ID]
    return out


def records(rng, problems: list[C.Problem], tokenizer, count: int, *, wrong: float = 0.5) -> list[dict]:
    """``count`` coverage records over ``problems`` (cycled in a random order)."""
    out, order = [], rng.permutation(len(problems))
    i = 0
    while len(out) < count:
        r = record(rng, problems[order[i % len(order)]], tokenizer, wrong=wrong)
        i += 1
        if r is not None:
            out.append(r)
        if i > 20 * count + 100:
            raise ValueError(f"only {len(out)} of {count} coverage records could be made")
    return out
