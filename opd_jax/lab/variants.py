"""Derived record files of a lab data directory: the training and held-out records that some
experiments need beyond ``train.jsonl`` and ``test.jsonl``, written next to them from them.

- ``train_backward.jsonl``: every training record with its solution written in the backward
  format; a teacher trained on it is *incompatible* with a forward-writing student (Rethinking
  OPD's setting);
- ``train_contexts.jsonl``: every training record once, its prompt plain, behind a rule its
  solution follows, or behind a hint (its own solution), a third each: a student trained on it
  reads privileged contexts, so that it can be its own teacher (OPSD, UniSD);
- ``train_rule_<rule>.jsonl``: a record per training problem that some solution following the
  rule solves: the plain prompt for the student, the rule before it for the teacher (OPSD with a
  shared rule);
- ``train_hint.jsonl``: a record per training problem: the plain prompt, and for the teacher one
  of its solutions (drawn uniformly) as a hint (OPSD with instance-specific information);
- ``train_unisd.jsonl``: ``train_hint``'s records plus UniSD's extra contexts: two auxiliary
  teachers (hints with other solutions of the problem, repeated when it has fewer) and a bad
  teacher (the hint with its last step's result made wrong);
- ``train_coverage.jsonl``: every training record, plus one coverage record per training problem
  (:mod:`opd_jax.lab.coverage`: a student-like first step, legal or with a wrong result, as the
  prompt, continued with correct arithmetic): a teacher fine-tuned on it is informed in the
  states a weak student visits, not only on the solutions' paths;
- ``train_retry.jsonl``: every training record, plus one retry record per training problem: a
  wrong answer (a first step drawn as the coverage records' are, continued with legal steps that
  miss the target), the end of the turn, the lab environment's ``RETRY`` and then, as the
  completion, a correct solution: a model trained on it answers again after being told it was
  wrong (the lab's multi-turn episodes, :func:`opd_jax.lab.data.retry_environment`);
- ``train_retry2.jsonl``: the same with deeper episodes: every training record, plus per training
  problem a retry record with one wrong answer and one with two (each followed by ``RETRY``)
  before the solution: a model trained on it answers a second and a third time;
- ``test_either.jsonl``: the held-out records, answers accepted in either format;
- ``train_text.jsonl``, ``test_text.jsonl``: the records as text only (no token ids), for a
  model with another tokenizer (the numbers tokenizer of :mod:`opd_jax.lab.tokenizer`).

Every file is a pure function of the directory's own records (seeded draws), written whole or
not at all (a temporary file renamed into place) and kept once written.
"""

from __future__ import annotations

import json
import os
import zlib

import numpy as np

from opd_jax.lab import countdown as C
from opd_jax.lab import data as L

BACKWARD = "train_backward.jsonl"
CONTEXTS = "train_contexts.jsonl"
HINT = "train_hint.jsonl"
UNISD = "train_unisd.jsonl"
COVERAGE = "train_coverage.jsonl"
RETRY = "train_retry.jsonl"
RETRY2 = "train_retry2.jsonl"
TEST_EITHER = "test_either.jsonl"
TRAIN_TEXT, TEST_TEXT = "train_text.jsonl", "test_text.jsonl"
RULE_PREFIX = "train_rule_"
MAX_CONTEXT_PROMPT_LEN = 96  # a teacher's prompt with a hint of 3 steps fits (128 positions - 32 new)
AUX_CONTEXTS = 2


def names() -> list[str]:
    """Every derived file name this module builds."""
    return [BACKWARD, CONTEXTS, HINT, UNISD, COVERAGE, RETRY, RETRY2, TEST_EITHER, TRAIN_TEXT, TEST_TEXT] + \
        [f"{RULE_PREFIX}{r}.jsonl" for r in sorted(L.RULES)]


def _read(path: str) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _solved(records: list[dict]) -> list[tuple[C.Problem, list[C.Step]]]:
    """Each record's problem and the steps of its completion (computation order)."""
    out = []
    for r in records:
        problem, fmt = L.answer_problem(r["answer"])
        steps = C.parse(r["completion"], fmt)
        if steps is None:
            raise ValueError(f"a training record's completion does not parse in its format {fmt!r}: {r!r}")
        out.append((problem, steps))
    return out


def _problems(records: list[dict]) -> list[C.Problem]:
    """The distinct problems of the records, in first-seen order."""
    seen: dict[str, C.Problem] = {}
    for r in records:
        p, _ = L.answer_problem(r["answer"])
        seen.setdefault(p.key, p)
    return list(seen.values())


def _encode(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _as_prompt(record: dict, tokenizer, text: str) -> dict:
    """``record`` with ``text`` as the prompt the model reads (a context before the problem)."""
    return {**record, "prompt": text, "prompt_ids": _encode(tokenizer, text)}


def _distinct(rng, problem: C.Problem) -> list[tuple[C.Step, ...]]:
    from opd_jax.lab.dataset import every_solution
    sols = every_solution(rng, problem)
    return [sols[i] for i in rng.permutation(len(sols))]


def backward(train: list[dict], tokenizer, rng) -> list[dict]:
    return [L.record(p, tokenizer, steps=s, fmt="backward") for p, s in _solved(train)]


def contexts(train: list[dict], tokenizer, rng) -> list[dict]:
    out = []
    for problem, steps in _solved(train):
        r = L.record(problem, tokenizer, steps=steps)
        u = rng.random()
        rules = [name for name in sorted(L.RULES) if L.follows_rule(steps, name)]
        if u < 1 / 3 or (u < 2 / 3 and not rules):
            out.append(r)
        elif u < 2 / 3:
            rule = rules[rng.integers(len(rules))]
            out.append(_as_prompt(r, tokenizer, L.teacher_prompt(problem, rule=rule)))
        else:
            out.append(_as_prompt(r, tokenizer, L.teacher_prompt(problem, hint=C.write(steps, "forward"))))
    return out


def rule(name: str):
    """The builder of ``train_rule_<name>.jsonl``."""
    if name not in L.RULES:
        raise ValueError(f"unknown rule {name!r}; known: {sorted(L.RULES)}")

    def build(train: list[dict], tokenizer, rng) -> list[dict]:
        return [L.record(p, tokenizer, teacher_context={"rule": name}) for p in _problems(train)
                if any(L.follows_rule(list(s), name) for s in C.solutions(p))]
    return build


def hint(train: list[dict], tokenizer, rng) -> list[dict]:
    out = []
    for p in _problems(train):
        text = C.write(_distinct(rng, p)[0], "forward")
        out.append(L.record(p, tokenizer, teacher_context={"hint": text}))
    return out


def bad_hint(rng, steps) -> str:
    """A hint whose last step's result is wrong (the answer misses the target)."""
    from opd_jax.lab.coverage import wrong_result
    return C.write(list(steps[:-1]) + [wrong_result(rng, steps[-1])], "forward")


def unisd(train: list[dict], tokenizer, rng) -> list[dict]:
    out = []
    for p in _problems(train):
        sols = _distinct(rng, p)
        main = sols[0]
        others = sols[1:] or sols
        aux = [others[j % len(others)] for j in range(AUX_CONTEXTS)]
        r = L.record(p, tokenizer, teacher_context={"hint": C.write(main, "forward")})
        r["aux_teacher_prompts_ids"] = [_encode(tokenizer, L.teacher_prompt(p, hint=C.write(s, "forward")))
                                        for s in aux]
        r["bad_teacher_prompt_ids"] = _encode(tokenizer, L.teacher_prompt(p, hint=bad_hint(rng, main)))
        out.append(r)
    return out


def with_coverage(train: list[dict], tokenizer, rng) -> list[dict]:
    from opd_jax.lab.coverage import records
    problems = _problems(train)
    return train + records(rng, problems, tokenizer, len(problems))


def wrong_answer(rng, problem: C.Problem) -> list[C.Step] | None:
    """A wrong answer to ``problem`` (see ``train_retry.jsonl``), or None if the draws found none."""
    from opd_jax.lab import coverage
    first = coverage.first_steps(problem)
    for _ in range(20):
        step = first[rng.integers(len(first))]
        step = coverage.wrong_result(rng, step) if rng.random() < 0.5 else step
        rest = coverage.continuation(rng, problem, step)
        if rest is not None and C.check(problem, [step] + rest) is not None:
            return [step] + rest
    return None


def _retry_record(problem: C.Problem, tokenizer, wrong: list[list[C.Step]], solution) -> dict:
    """``problem``'s record whose prompt holds the ``wrong`` answers, each ended by EOS and the
    environment's ``RETRY``, and whose completion is ``solution``."""
    from opd_jax.lab.tokenizer import EOS_ID
    r = L.record(problem, tokenizer, steps=list(solution))
    ids = _encode(tokenizer, L.prompt(problem))
    for w in wrong:
        r["prompt"] += f"{C.write(w, 'forward')}{tokenizer.eos_token}{L.RETRY}"
        ids += _encode(tokenizer, C.write(w, "forward")) + [EOS_ID] + _encode(tokenizer, L.RETRY)
    r["prompt_ids"] = ids
    return r


def with_retries(train: list[dict], tokenizer, rng) -> list[dict]:
    out = list(train)
    for p in _problems(train):
        wrong = wrong_answer(rng, p)
        if wrong is None:
            continue
        out.append(_retry_record(p, tokenizer, [wrong], _distinct(rng, p)[0]))
    return out


def with_two_retries(train: list[dict], tokenizer, rng) -> list[dict]:
    out = list(train)
    for p in _problems(train):
        wrong = [w for w in (wrong_answer(rng, p), wrong_answer(rng, p)) if w is not None]
        if not wrong:
            continue
        sols = _distinct(rng, p)
        out.append(_retry_record(p, tokenizer, wrong[:1], sols[0]))
        if len(wrong) == 2:
            out.append(_retry_record(p, tokenizer, wrong, sols[-1]))
    return out


def test_either(test: list[dict], tokenizer, rng) -> list[dict]:
    return [{**r, "answer": {**r["answer"], "format": L.EITHER}} for r in test]


def text_only(records: list[dict], tokenizer, rng) -> list[dict]:
    """The records without their token-id fields (text and answers kept)."""
    return [{k: v for k, v in r.items() if not k.endswith("_ids")} for r in records]


def _builder(name: str):
    if name.startswith(RULE_PREFIX) and name.endswith(".jsonl"):
        return "train.jsonl", rule(name[len(RULE_PREFIX):-len(".jsonl")])
    table = {BACKWARD: backward, CONTEXTS: contexts, HINT: hint, UNISD: unisd, COVERAGE: with_coverage,
             RETRY: with_retries, RETRY2: with_two_retries}
    if name in table:
        return "train.jsonl", table[name]
    if name == TEST_EITHER:
        return "test.jsonl", test_either
    if name in (TRAIN_TEXT, TEST_TEXT):
        return name.replace("_text", ""), text_only
    raise ValueError(f"unknown derived record file {name!r}; known: {names()}")


def ensure(data_dir: str, name: str) -> str:
    """The path of record file ``name`` in ``data_dir``, written first if it is a derived file
    (:func:`names`) not there yet; the directory's own files must exist."""
    path = os.path.join(data_dir, name)
    if name in ("train.jsonl", "test.jsonl"):
        if not os.path.exists(path):
            raise FileNotFoundError(f"{path} is missing: build the lab's data directory first "
                                    "(python -m opd_jax.lab.zoo build)")
        return path
    source, build = _builder(name)
    if os.path.exists(path):
        return path
    from opd_jax.models import load_tokenizer
    tokenizer = load_tokenizer(os.path.join(data_dir, "tokenizer"))
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    records = build(_read(ensure(data_dir, source)), tokenizer, rng)
    if not records:
        raise ValueError(f"{name}: no record could be derived from {source} in {data_dir}")
    tmp = f"{path}.{os.getpid()}.tmp"
    L.write_records(tmp, records)
    os.replace(tmp, path)
    return path

