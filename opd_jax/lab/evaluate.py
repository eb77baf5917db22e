"""The lab's evaluation of a model on held-out problems: the general evaluation
(:func:`opd_jax.evaluate.evaluate`) with the countdown verifier as its reward.

``evaluate`` samples greedily (pass@1 of the greedy answer) and ``k`` times at temperature 1 per
problem (unbiased pass@1 and pass@k, distinct correct solutions per problem, and the mean
per-token entropy estimated by the sampled tokens' ``-log p``, whose expectation under the
model's own samples is its entropy).

With ``turns > 1`` every answer is a multi-turn episode: after each wrong answer the lab's retry
environment (:func:`opd_jax.lab.data.retry_environment`) says ``"no:"`` and the model answers
again, up to ``turns`` answers; the metrics read the last answer (the episode's), ``turns``
reports the mean number of answers per sample, and ``turn<j>_pass@1`` / ``turn<j>_greedy_pass@1``
(``j < turns``) those of the episodes cut after ``j`` answers (``turn1``: the first answers').
"""

from __future__ import annotations

import functools

from opd_jax import environments as EN
from opd_jax import evaluate as E
from opd_jax.lab import countdown as C
from opd_jax.lab import data as L
from opd_jax.lab.tokenizer import EOS_ID, PAD_ID
from opd_jax.sampling import SamplerConfig


def distinct_correct(tokenizer):
    """A per-problem hook: how many different correct solutions (up to the order of steps and of
    commutative operands) the samples hold."""
    def hook(example, completions, rewards) -> dict[str, float]:
        _, fmt = L.answer_problem(example.answer)
        good = {C.canonical(L.parse_answer(L.completion_text(tokenizer, c), fmt))
                for c, r in zip(completions, rewards) if r >= 1.0}
        return {"distinct_correct": float(len(good))}
    return hook


TEACHER_METRICS = ("reverse_kl", "student_entropy", "teacher_entropy", "entropy_gap", "top1_agree",
                   "overlap_ratio")


def evaluate(graphdef, params, examples, tokenizer, *, k: int = 8, max_new_tokens: int = 32,
             seed: int = 0, mesh=None, teacher=None, turns: int = 1) -> dict[str, float]:
    """Metrics of the model ``(graphdef, params)`` on ``examples`` (records with ``answer``);
    with ``teacher=(graphdef, params)`` also the exact token diagnostics against it on the
    samples (``TEACHER_METRICS``); ``turns``: answers per episode (see the module docstring)."""
    width = max(len(e.prompt_ids) for e in examples) if examples else 1
    # a later turn's prompt is the episode so far (3 turns fit the models' 128 positions)
    later = tuple(b for b in (64, 96) if b > width) if turns > 1 else ()
    cfg = SamplerConfig(max_new_tokens=max_new_tokens, eos_ids=(EOS_ID,), pad_id=PAD_ID,
                        temperature=1.0, prompt_buckets=(width,) + later,
                        new_token_buckets=(max_new_tokens,))
    responder = functools.partial(EN.responder, L.retry_environment(tokenizer), render=None) if turns > 1 else None
    r = E.evaluate(graphdef, params, examples, reward_fn=L.reward_fn(tokenizer), cfg=cfg, k=k,
                   seed=seed, mesh=mesh, per_problem={"distinct": distinct_correct(tokenizer)},
                   teacher=teacher, turns=turns, responder=responder)
    extra = {m: r[m] for m in TEACHER_METRICS if teacher is not None}
    extra |= {m: r[m] for m in r if m == "turns" or m.startswith("turn") and m.endswith("pass@1")}
    return extra | {"greedy_pass@1": r["greedy_pass@1"], "pass@1": r["pass@1"], f"pass@{k}": r[f"pass@{k}"],
            "distinct_correct": r["distinct_correct"], "entropy": r["entropy"],
            "finished": 1.0 - r["truncated"]}
