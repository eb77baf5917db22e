"""Rewards of completions: verifiers, by name, in the form the trainer and the evaluation take.

A reward function is ``f(example, completion_ids) -> float``: ``example`` an
:class:`opd_jax.data.Example` (its ``answer`` field is the reference), ``completion_ids`` the
sampled tokens, up to and including the end-of-sequence token when the completion finished.
Verifiers read text, so they are built from the tokenizer: :func:`get` returns
``factory(tokenizer, eos_ids)`` for a built-in name (:data:`REWARDS`) or for
``"package.module:factory"`` (any importable factory with that signature, e.g.
``"opd_jax.lab.data:reward_fn"``, the lab's countdown verifier).

``"math"``: :func:`math_reward`, the answer checked with ``math-verify`` (Hugging Face's
LaTeX/sympy answer parser): the last ``\\boxed{...}`` of the completion (after any
``</think>``), or if it has none, the final answer math-verify finds in the text, compared with
the record's ``answer`` symbolically (``0.5`` = ``\\frac{1}{2}``, ``2\\sqrt{2}`` = ``\\sqrt{8}``).
1.0 if equal, else 0.0; a completion cut off before its end-of-sequence token scores 0.0 (an
unfinished answer is not an answer: math-verify would otherwise read ``3 + 4 =`` as ``7``).
"""

from __future__ import annotations

import functools
import inspect
import threading
from collections.abc import Callable, Sequence

import numpy as np

RewardFn = Callable[..., float]
THINK_END = "</think>"
_BOX = ("\\boxed{", "\\fbox{")


def completion_text(tokenizer, completion_ids, eos_ids: Sequence[int] = ()) -> tuple[str, bool]:
    """The text of ``completion_ids`` before the first end-of-sequence id (special tokens
    dropped), and whether the completion ended with one."""
    ids = [int(t) for t in np.asarray(completion_ids).reshape(-1)]
    stop = next((i for i, t in enumerate(ids) if t in set(eos_ids)), None)
    finished = stop is not None
    return tokenizer.decode(ids if stop is None else ids[:stop], skip_special_tokens=True), finished


def last_boxed(text: str) -> str | None:
    """The last complete ``\\boxed{...}`` (or ``\\fbox{...}``) of ``text``, braces balanced, or
    None if there is none."""
    found = None
    for marker in _BOX:
        start = text.find(marker)
        while start >= 0:
            depth, i = 1, start + len(marker)
            while i < len(text) and depth:
                depth += {"{": 1, "}": -1}.get(text[i], 0)
                i += 1
            if depth == 0 and (found is None or start > found[0]):
                found = (start, text[start:i])
            start = text.find(marker, start + 1)
    return None if found is None else found[1]


def _timeouts() -> dict:
    """math-verify times out with SIGALRM, which works on the main thread only."""
    on_main = threading.current_thread() is threading.main_thread()
    return {"parsing_timeout": 5 if on_main else None}


@functools.lru_cache(maxsize=65536)
def _parse_gold(answer: str):
    from math_verify import parse
    text = answer if ("$" in answer or "\\boxed" in answer) else f"${answer}$"
    gold = parse(text, **_timeouts())
    return gold if gold else parse(answer, **_timeouts())


def math_equal(answer, text: str) -> bool:
    """Whether the final answer of ``text`` (its last ``\\boxed{}``, else math-verify's final-answer
    extraction) equals ``answer`` (text or a number) symbolically."""
    from math_verify import parse, verify
    if answer is None or (isinstance(answer, str) and not answer.strip()):
        raise ValueError("the record has no `answer` to check the completion against")
    if isinstance(answer, bool) or not isinstance(answer, (str, int, float)):
        raise ValueError(f"a math answer must be text or a number, got {answer!r}")
    gold = _parse_gold(str(answer))
    if not gold:
        raise ValueError(f"math-verify cannot parse the reference answer {answer!r}")
    if THINK_END in text:
        text = text.rsplit(THINK_END, 1)[1]
    boxed = last_boxed(text)
    pred = parse(boxed if boxed is not None else text, **_timeouts())
    if not pred:
        return False
    timeout = _timeouts()["parsing_timeout"]
    return bool(verify(gold, pred, timeout_seconds=timeout))


def math_reward(tokenizer, eos_ids: Sequence[int] = (), *, require_eos: bool = True) -> RewardFn:
    """``f(example, completion_ids) -> 1.0 / 0.0``: :func:`math_equal` on the decoded completion
    and ``example.answer``. With ``require_eos`` (and known ``eos_ids``) a completion without
    an end-of-sequence token scores 0.0."""
    eos = tuple(int(i) for i in eos_ids)

    def reward(example, completion_ids) -> float:
        text, finished = completion_text(tokenizer, completion_ids, eos)
        if require_eos and eos and not finished:
            return 0.0
        try:
            return float(math_equal(example.answer, text))
        except ValueError as e:
            raise ValueError(f"line {getattr(example, 'line', '?')} of the data: {e}") from e
    return reward


REWARDS: dict[str, Callable[..., RewardFn]] = {"math": math_reward}


def get(name: str, tokenizer, eos_ids: Sequence[int] = ()) -> RewardFn:
    """The reward function called ``name``: a key of :data:`REWARDS`, or ``"module:factory"``;
    either is called as ``factory(tokenizer, eos_ids)`` (a factory that takes only the tokenizer,
    such as the lab's, is called with it alone)."""
    from opd_jax.config import named_factory
    factory = named_factory("reward", name, REWARDS, "factory(tokenizer, eos_ids) -> f")
    if tokenizer is None:
        raise ValueError(f"reward {name!r} reads the completion's text: it needs a tokenizer "
                         "(a student checkpoint with tokenizer files)")
    try:
        takes_eos = len(inspect.signature(factory).parameters) >= 2
    except (TypeError, ValueError):
        takes_eos = True
    return factory(tokenizer, tuple(eos_ids)) if takes_eos else factory(tokenizer)
