"""The lab's prompts, privileged teacher contexts, data records and verifier reward.

A student sees ``"11 8 7 4 -> 25:"`` and answers ``"11-8=3 7*4=28 28-3=25"`` then EOS (in the
``forward`` format; see ``countdown``). A teacher may see more, before the same prompt:

- a *hint*: one reference solution of this problem (instance-specific privileged information);
- a *rule*: a constraint shared by every problem that changes which solutions are preferred
  (``RULES``: never subtract; multiply in the first step).

Multi-turn episodes: after a wrong answer the lab's environment (:func:`retry_environment`) says
``RETRY`` (``"no:"``) and the student answers again: ``"11 8 7 4 -> 25:11-8=3 3*7=21<eos>no:11-8=3
7*4=28 28-3=25<eos>"``.

Records are what ``opd_jax.data.load_examples`` reads (JSONL): the texts and their token ids
(``*_ids`` take precedence there), and ``answer`` = the problem and format the verifier needs.
An answer's format may also be ``"either"`` (:data:`EITHER`): the verifier then accepts a
forward or a backward writing (a student that a backward-format teacher has taught answers
backward; the compatibility experiment scores both).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterable

import numpy as np

from opd_jax.lab import countdown as C
from opd_jax.lab.tokenizer import EOS_ID


@dataclasses.dataclass(frozen=True)
class Rule:
    text: str  # what a teacher's context says
    holds: Callable[[list[C.Step]], bool]  # whether a solution follows it


EITHER = "either"  # an answer format: forward or backward, whichever parses
RETRY = "no:"  # what the lab's environment says after a wrong answer
ANSWER_FORMATS = C.FORMATS + (EITHER,)

RULES = {
    "no_subtraction": Rule("rule no -", lambda steps: all(s.op != "-" for s in steps)),
    "multiply_first": Rule("rule * first", lambda steps: steps[0].op == "*"),
}


def prompt(problem: C.Problem) -> str:
    return " ".join(map(str, problem.numbers)) + f" -> {problem.target}:"


def teacher_prompt(problem: C.Problem, *, hint: str | None = None, rule: str | None = None) -> str:
    """The prompt behind a privileged context: ``hint`` an answer text, ``rule`` a key of ``RULES``."""
    if (hint is None) == (rule is None):
        raise ValueError("give exactly one of hint= (an answer text) and rule= (a key of RULES)")
    if rule is not None and rule not in RULES:
        raise ValueError(f"unknown rule {rule!r}; known: {sorted(RULES)}")
    context = f"hint {hint}" if hint is not None else RULES[rule].text
    return f"{context} | {prompt(problem)}"


def record(problem: C.Problem, tokenizer, *, steps=None, fmt: str = "forward", teacher_context: dict | None = None
           ) -> dict:
    """One JSONL record: the prompt, optionally a completion (``steps`` written in ``fmt``, then
    EOS) and a teacher prompt (``teacher_context``: ``teacher_prompt``'s keywords)."""
    encode = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    out = {"prompt": prompt(problem), "answer": {"numbers": list(problem.numbers), "target": problem.target,
                                                   "format": fmt}}
    out["prompt_ids"] = encode(out["prompt"])
    if steps is not None:
        out["completion"] = C.write(steps, fmt)
        out["completion_ids"] = encode(out["completion"]) + [EOS_ID]
    if teacher_context is not None:
        out["teacher_prompt"] = teacher_prompt(problem, **teacher_context)
        out["teacher_prompt_ids"] = encode(out["teacher_prompt"])
    return out


def write_records(path: str, records: Iterable[dict]) -> int:
    n = 0
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
            n += 1
    return n


def answer_problem(answer) -> tuple[C.Problem, str]:
    """The problem and format stored in a record's ``answer`` field."""
    try:
        problem = C.Problem(tuple(int(x) for x in answer["numbers"]), int(answer["target"]))
        fmt = answer.get("format", "forward")
    except (TypeError, KeyError, ValueError) as e:
        raise ValueError(f"a lab record's answer must be {{'numbers': [...], 'target': n, 'format': f}}, "
                         f"got {answer!r}") from e
    if fmt not in ANSWER_FORMATS:
        raise ValueError(f"a lab record's answer format must be one of {ANSWER_FORMATS}, got {fmt!r}")
    return problem, fmt


def parse_answer(text: str, fmt: str) -> list[C.Step] | None:
    """The steps of an answer in ``fmt`` (one of :data:`ANSWER_FORMATS`; ``"either"``: the
    forward reading if it parses, else the backward one), or None."""
    if fmt not in ANSWER_FORMATS:
        raise ValueError(f"unknown answer format {fmt!r}; known: {ANSWER_FORMATS}")
    if fmt != EITHER:
        return C.parse(text, fmt)
    steps = C.parse(text, "forward")
    return steps if steps is not None else C.parse(text, "backward")


def verify_answer(problem: C.Problem, text: str, fmt: str) -> bool:
    """``countdown.verify`` for any of :data:`ANSWER_FORMATS` (``"either"``: a correct answer in
    either writing; no text parses both ways, the two step patterns being disjoint)."""
    steps = parse_answer(text, fmt)
    return steps is not None and C.check(problem, steps) is None


def follows_rule(steps: list[C.Step], rule: str) -> bool:
    """Whether the steps (in computation order) follow ``RULES[rule]``."""
    if rule not in RULES:
        raise ValueError(f"unknown rule {rule!r}; known: {sorted(RULES)}")
    return bool(steps) and RULES[rule].holds(steps)


def completion_text(tokenizer, completion_ids) -> str:
    """The answer text of sampled ids: everything before the first EOS, specials dropped."""
    ids = [int(t) for t in np.asarray(completion_ids).reshape(-1)]
    if EOS_ID in ids:
        ids = ids[:ids.index(EOS_ID)]
    return tokenizer.decode(ids, skip_special_tokens=True)


def reward_fn(tokenizer) -> Callable:
    """``f(example, completion_ids) -> 1.0 or 0.0``: the verifier's verdict, for ``Trainer(reward_fn=)``."""
    def reward(example, completion_ids) -> float:
        problem, fmt = answer_problem(example.answer)
        return float(verify_answer(problem, completion_text(tokenizer, completion_ids), fmt))
    return reward


verifier = reward_fn  # (the name retry_environment's reward_fn argument hides)


def retry_environment(tokenizer=None, eos_ids=(), reward_fn=None):
    """The lab's multi-turn environment (``environment="opd_jax.lab.data:retry_environment"``):
    :class:`opd_jax.environments.Retry` saying :data:`RETRY` after each answer the verifier
    (``reward_fn``, default :func:`reward_fn`) finds wrong."""
    from opd_jax.environments import Retry
    if tokenizer is None:
        raise ValueError("the lab's retry environment encodes its message with the lab's tokenizer; give it")
    ids = tokenizer(RETRY, add_special_tokens=False)["input_ids"]
    return Retry(reward_fn or verifier(tokenizer), message=ids)
