"""The lab's evaluation of a model on held-out problems, through the jitted sampler.

``evaluate`` samples greedily (pass@1 of the greedy answer) and ``k`` times at temperature 1 per
problem (unbiased pass@1 and pass@k, distinct correct solutions per problem, and the mean
per-token entropy estimated by the sampled tokens' ``-log p``, whose expectation under the
model's own samples is its entropy).
"""

from __future__ import annotations

import contextlib

import jax
import numpy as np

from opd_jax.data import left_pad
from opd_jax.lab import countdown as C
from opd_jax.lab import data as L
from opd_jax.lab import metrics
from opd_jax.lab.tokenizer import EOS_ID, PAD_ID
from opd_jax.sampling import SamplerConfig, sample


def _texts(tokenizer, roll) -> tuple[list[str], np.ndarray, np.ndarray]:
    P = roll.prompt_len
    toks, mask = np.asarray(roll.tokens)[:, P:], np.asarray(roll.completion_mask)[:, P:]
    texts = [L.completion_text(tokenizer, t[m]) for t, m in zip(toks, mask)]
    return texts, mask, np.asarray(roll.logp)[:, P:]


def evaluate(graphdef, params, examples, tokenizer, *, k: int = 8, max_new_tokens: int = 32,
             seed: int = 0, mesh=None) -> dict[str, float]:
    """Metrics of the model ``(graphdef, params)`` on ``examples`` (records with ``answer``)."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    problems = [L.answer_problem(e.answer) for e in examples]
    width = max(len(e.prompt_ids) for e in examples)
    prompts, mask = left_pad([tuple(e.prompt_ids) for e in examples], width, PAD_ID)
    base = SamplerConfig(max_new_tokens=max_new_tokens, eos_ids=(EOS_ID,), pad_id=PAD_ID,
                         prompt_buckets=(width,), new_token_buckets=(max_new_tokens,))
    key = jax.random.key(seed)
    with jax.set_mesh(mesh) if mesh is not None else contextlib.nullcontext():
        greedy = sample(graphdef, params, prompts, mask, key, cfg=base.replace(temperature=0.0))
        drawn = sample(graphdef, params, prompts, mask, key, cfg=base.replace(temperature=1.0, num_samples=k))
    g_texts, _, _ = _texts(tokenizer, greedy)
    s_texts, s_mask, s_logp = _texts(tokenizer, drawn)
    greedy_ok = [C.verify(p, t, fmt) for (p, fmt), t in zip(problems, g_texts)]
    pass1, passk, distinct = [], [], []
    for i, (p, fmt) in enumerate(problems):
        rows = s_texts[i * k:(i + 1) * k]
        parsed = (C.parse(t, fmt) for t in rows)
        good = [steps for steps in parsed if steps is not None and C.check(p, steps) is None]
        pass1.append(len(good) / k)
        passk.append(metrics.pass_at_k(k, len(good), k))
        distinct.append(len({C.canonical(s) for s in good}))
    return {
        "greedy_pass@1": float(np.mean(greedy_ok)),
        "pass@1": float(np.mean(pass1)),
        f"pass@{k}": float(np.mean(passk)),
        "distinct_correct": float(np.mean(distinct)),
        "entropy": float(-s_logp[s_mask].mean()) if s_mask.any() else 0.0,
        "finished": float(np.asarray(drawn.finished).mean()),
    }

