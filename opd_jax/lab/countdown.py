"""The lab's task: Countdown-style arithmetic with verifiable answers and several solutions.

A problem is a few small numbers and a target. An answer is a short list of steps, each combining
two available numbers with ``+ - * /`` into a new available number (the two are used up); the last
step's result must be the target. Not every number has to be used, every intermediate result must
be (no dead steps), and every result is a positive integer (``a - b`` needs ``a > b``, ``a / b``
needs ``b`` to divide ``a``; multiplying or dividing by 1 is not a step). Most problems have
several solutions: a model trained on uniformly drawn solutions is uncertain at the planning
choices (which pair, which operation) and certain at the arithmetic results, the token structure
entropy-aware OPD methods reason about.

Two answer formats, the same solutions written in incompatible ways (the "Rethinking OPD"
compatible/incompatible teacher setting):

- ``forward``: steps in the order they are computed, ``a op b=c``: ``3*7=21 21+12=33``;
- ``backward``: from the target down, ``c=a op b``: ``33=21+12 21=3*7``.

Commutative operands are written larger first. ``verify`` parses any text and checks every step;
it accepts either operand order, and it never compares with a stored reference answer.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from collections import Counter
from collections.abc import Iterator

FORMATS = ("forward", "backward")
OPS = ("+", "-", "*", "/")


@dataclasses.dataclass(frozen=True)
class Problem:
    numbers: tuple[int, ...]
    target: int

    def __post_init__(self):
        if len(self.numbers) < 2 or any(not isinstance(n, int) or n < 1 for n in self.numbers):
            raise ValueError(f"a problem needs at least two positive int numbers, got {self.numbers!r}")
        if not isinstance(self.target, int) or self.target < 1:
            raise ValueError(f"the target must be a positive int, got {self.target!r}")

    @property
    def key(self) -> str:
        """Canonical identity (the numbers' order does not matter): what the split hashes."""
        return " ".join(map(str, sorted(self.numbers))) + f" -> {self.target}"


@dataclasses.dataclass(frozen=True)
class Step:
    a: int
    op: str
    b: int
    result: int

    def text(self, fmt: str) -> str:
        expr = f"{self.a}{self.op}{self.b}"
        return f"{expr}={self.result}" if fmt == "forward" else f"{self.result}={expr}"


def apply(a: int, op: str, b: int) -> int | None:
    """``a op b`` if it is a legal step (a positive integer, not an identity), else None."""
    if op == "+":
        return a + b
    if op == "-":
        return a - b if a > b else None
    if op == "*":
        return a * b if a > 1 and b > 1 else None
    if op == "/":
        return a // b if b > 1 and a % b == 0 else None
    return None


def _ordered(a: int, op: str, b: int) -> tuple[int, int]:
    """Operands as written: commutative ones larger first."""
    return (max(a, b), min(a, b)) if op in "+*" else (a, b)


def write(steps: tuple[Step, ...] | list[Step], fmt: str) -> str:
    """The answer text of ``steps`` (in computation order) in format ``fmt``."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown answer format {fmt!r}; known: {FORMATS}")
    order = list(steps) if fmt == "forward" else list(reversed(steps))
    return " ".join(s.text(fmt) for s in order)


_STEP = {"forward": re.compile(r"^(\d+)([-+*/])(\d+)=(\d+)$"), "backward": re.compile(r"^(\d+)=(\d+)([-+*/])(\d+)$")}


def parse(text: str, fmt: str) -> list[Step] | None:
    """The steps of an answer in computation order, or None if the text is not well formed."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown answer format {fmt!r}; known: {FORMATS}")
    steps = []
    for word in text.split():
        m = _STEP[fmt].match(word)
        if m is None:
            return None
        g = m.groups()
        a, op, b, r = (g[0], g[1], g[2], g[3]) if fmt == "forward" else (g[1], g[2], g[3], g[0])
        if any(len(x) > 1 and x[0] == "0" for x in (a, b, r)):  # no leading zeros
            return None
        steps.append(Step(int(a), op, int(b), int(r)))
    if not steps:
        return None
    return steps if fmt == "forward" else steps[::-1]


def _play(problem: Problem, steps: list[Step]) -> tuple[str | None, Counter]:
    """Apply ``steps`` in order: the first broken step's reason (None if every step is legal and
    uses available numbers), and the intermediate results not yet used."""
    pool = Counter(problem.numbers)
    produced = Counter()  # intermediate results not yet used
    for i, s in enumerate(steps):
        if apply(s.a, s.op, s.b) != s.result:
            return f"step {i + 1}: {s.a}{s.op}{s.b} is not a legal step giving {s.result}", produced
        for x in (s.a, s.b):
            # An operand equal to both an unused result and a given number uses the result: the
            # two are interchangeable later, and only results must all be used.
            if produced[x] > 0:
                produced[x] -= 1
            elif pool[x] > 0:
                pool[x] -= 1
            else:
                return f"step {i + 1}: {x} is not available", produced
        produced[s.result] += 1
    return None, produced


def illegal_step(problem: Problem, steps: list[Step]) -> str | None:
    """Why a partial answer (its first steps, in computation order) is broken: a step that is not
    legal arithmetic or uses a number that is not available; None if every step so far is fine."""
    return _play(problem, steps)[0]


def check(problem: Problem, steps: list[Step]) -> str | None:
    """Why ``steps`` do not solve ``problem`` (None: they do)."""
    if not steps:
        return "no steps"
    why, produced = _play(problem, steps)
    if why is not None:
        return why
    if steps[-1].result != problem.target:
        return f"the last step gives {steps[-1].result}, not the target {problem.target}"
    produced[steps[-1].result] -= 1
    if sum(produced.values()) > 0:
        return "a step's result is never used"
    return None


def verify(problem: Problem, text: str, fmt: str) -> bool:
    """Whether ``text`` is a well-formed answer in format ``fmt`` that reaches the target."""
    steps = parse(text, fmt)
    return steps is not None and check(problem, steps) is None


def canonical(steps: list[Step]) -> str:
    """A solution as the set of its steps (commutative operands larger first), sorted: equal for
    two answers that differ only in the order of their steps or of commutative operands. (Its
    expression tree is not always unique: with a result equal to a given number, either may be
    the operand a step names.)"""
    written = []
    for s in steps:
        a, b = _ordered(s.a, s.op, s.b)
        written.append(f"{a}{s.op}{b}={s.result}")
    return " ".join(sorted(written))


def _search(pool: tuple[int, ...], used: tuple[bool, ...], steps: tuple[Step, ...], depth: int, given: int
            ) -> Iterator[tuple[tuple[Step, ...], bool]]:
    """Every step sequence from ``pool`` (the ``given`` numbers, then results; ``used`` marks the
    consumed ones), up to ``depth`` more steps, with whether every result but the last is used."""
    if depth == 0:
        return
    live = [i for i, u in enumerate(used) if not u]
    for x, i in enumerate(live):
        for j in live[x + 1:]:
            for op in OPS:
                for a, b in ((pool[i], pool[j]), (pool[j], pool[i])):
                    if op in "+*" and (a, b) != _ordered(a, op, b):
                        continue  # one order of a commutative pair
                    r = apply(a, op, b)
                    if r is None:
                        continue
                    new_used = tuple(u or k in (i, j) for k, u in enumerate(used)) + (False,)
                    new = steps + (Step(a, op, b, r),)
                    yield new, all(new_used[given:-1])
                    yield from _search(pool + (r,), new_used, new, depth - 1, given)


def solutions(problem: Problem, max_steps: int | None = None) -> list[tuple[Step, ...]]:
    """Every solution (step sequences, each in one canonical writing: independent steps in every
    order, commutative operands larger first). Exponential in the count of numbers: meant for
    the lab's 3 to 5."""
    n = len(problem.numbers)
    depth = n - 1 if max_steps is None else max_steps
    out = {}  # equal numbers give the same sequence more than once
    for steps, no_dead in _search(tuple(problem.numbers), (False,) * n, (), depth, n):
        if no_dead and steps[-1].result == problem.target:
            out[steps] = None
    return list(out)


def distinct(solution_steps) -> set[str]:
    """The distinct solutions among step sequences (see ``canonical``)."""
    return {canonical(list(s)) for s in solution_steps}


def split_of(problem: Problem, test_fraction: float, salt: str = "lab") -> str:
    """``"test"`` or ``"train"``, a pure function of the problem (not of its numbers' order), so a
    held-out problem never enters training whatever generated it."""
    if not 0 <= test_fraction <= 1:
        raise ValueError(f"test_fraction must be in [0, 1], got {test_fraction}")
    h = int.from_bytes(hashlib.sha256(f"{salt}|{problem.key}".encode()).digest()[:8], "big")
    return "test" if h / 2**64 < test_fraction else "train"


@dataclasses.dataclass(frozen=True)
class Difficulty:
    """How problems are drawn: ``count`` numbers from ``[1, max_number]``; a target reachable in
    at least ``min_solutions`` distinct ways and no larger than ``max_target``."""

    count: int = 3
    max_number: int = 30
    max_target: int = 150
    min_solutions: int = 2

    def __post_init__(self):
        if not 2 <= self.count <= 5:
            raise ValueError(f"count must be 2..5 (solution search is exponential), got {self.count}")
        if self.max_number < 2 or self.max_target < 1 or self.min_solutions < 1:
            raise ValueError(f"max_number >= 2, max_target >= 1 and min_solutions >= 1 needed, got {self}")


def qualifying_targets(numbers: tuple[int, ...], difficulty: Difficulty) -> list[int]:
    """The targets a problem on ``numbers`` may have: results reachable with no dead step, at most
    ``max_target``, none of the numbers, in at least ``min_solutions`` distinct ways (sorted)."""
    d = difficulty
    by_target: dict[int, set[str]] = {}
    for steps, no_dead in _search(numbers, (False,) * len(numbers), (), len(numbers) - 1, len(numbers)):
        r = steps[-1].result
        if no_dead and r <= d.max_target and r not in numbers:
            by_target.setdefault(r, set()).add(canonical(list(steps)))
    return sorted(t for t, ways in by_target.items() if len(ways) >= d.min_solutions)


def sample_problem(rng, difficulty: Difficulty = Difficulty(), max_tries: int = 1000) -> Problem:
    """A random problem with at least ``difficulty.min_solutions`` distinct solutions.

    ``rng``: a ``numpy.random.Generator``. The target is drawn uniformly among the qualifying
    results reachable from the drawn numbers, none of which it equals.
    """
    d = difficulty
    for _ in range(max_tries):
        numbers = tuple(int(x) for x in rng.integers(1, d.max_number + 1, d.count))
        ok = qualifying_targets(numbers, d)
        if ok:
            return Problem(numbers, int(ok[rng.integers(len(ok))]))
    raise ValueError(f"no problem with {d.min_solutions} solutions found in {max_tries} draws of {d}")


def every_problem(difficulty: Difficulty = Difficulty()) -> Iterator[Problem]:
    """Every problem of ``difficulty`` once (its numbers sorted): the whole space that
    ``sample_problem`` draws from (about 22,000 problems for the default difficulty)."""
    import itertools
    d = difficulty
    for numbers in itertools.combinations_with_replacement(range(1, d.max_number + 1), d.count):
        for target in qualifying_targets(numbers, d):
            yield Problem(numbers, target)
