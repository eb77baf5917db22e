"""Evaluate a model on held-out prompts with answers, through the jitted sampler.

Per problem, one greedy completion and ``k`` sampled ones (the sampler's temperature and
filters), each scored by a reward function ``f(example, completion_ids) -> float``
(:mod:`opd_jax.rewards`); a completion is *correct* when its reward is at least ``threshold``.
Reported (means over problems unless said otherwise):

- ``greedy_pass@1``: the greedy completion is correct;
- ``pass@1`` and ``pass@k``: the unbiased estimators from the ``k`` samples (:func:`pass_at_k`);
- ``reward``, ``greedy_reward``: mean rewards of the samples / greedy completions;
- ``mean_length``, ``greedy_mean_length``: completion tokens (the end-of-sequence token
  included); ``truncated``, ``greedy_truncated``: the fraction cut off at ``max_new_tokens``
  before an end-of-sequence token;
- ``entropy``: the mean of ``-log p`` of the sampled tokens under the distribution they were
  drawn from (an estimate of the model's per-token entropy; exact below with a teacher);
- with ``teacher=(graphdef, params)``, on the ``k`` samples, token means of the exact
  ``reverse_kl`` to the teacher, ``student_entropy``, ``teacher_entropy``, ``entropy_gap``
  (teacher minus student) and ``entropy_gap_abs``, ``top1_agree``, ``overlap_ratio`` (top
  ``diagnostics_k``), the teacher reading its own (possibly privileged) prompt;
- each ``per_problem`` hook's values, averaged over problems (e.g. the lab's distinct correct
  solutions);
- with ``draft_tokens > 0`` and ``target=(graphdef, params)``, the model as a speculative-decoding
  drafter of that many tokens per forward of ``target``, sampling ``k`` answers per problem at
  the sampler's settings (``opd_jax.sampling.speculative``; the answers follow the target's
  distribution and are not scored): ``acceptance_length`` (completion tokens per target forward)
  and ``acceptance_rate`` (the share of drafts accepted).

With ``turns > 1`` every completion is a multi-turn episode (:mod:`opd_jax.sampling.turns`; the
environment's replies, :mod:`opd_jax.environments`, by default the records' ``env_turns_ids``):
the rewards (and ``per_problem`` hooks) read the model's last turn, its final answer; lengths,
truncation and entropy read its own tokens of all its turns (the environment's are left out);
``turns`` reports the mean number of model turns of the samples, ``turn<j>_greedy_pass@1`` and
``turn<j>_pass@1`` (``j < turns``) those of the episodes cut after ``j`` model turns (the reward
of the last answer given by then: ``turn1`` the first answers', before any environment turn),
and the teacher diagnostics read the first turns.

Prompts go through the sampler ``batch_size`` at a time (the last batch padded with copies,
which are dropped); every prompt keeps its own PRNG stream (its index in ``examples``), so the
results do not depend on the batch size. The model does not change during an evaluation, so it
is laid out for the sampler once (``opd_jax.sampling.freeze``: a per-layer copy of the weights
held for the evaluation, instead of one made inside every sampler call).
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
from collections.abc import Callable, Mapping, Sequence

import jax
import numpy as np

from opd_jax import environments as EN
from opd_jax.data import Example, left_pad, right_pad
from opd_jax.evaluate import teacher as TD
from opd_jax.sampling import SamplerConfig, sample
from opd_jax.sampling.frozen import freeze_if_possible
from opd_jax.sampling.speculative import speculative_sample
from opd_jax.sampling.turns import continue_turns, sample_row_ids, student_tokens, student_turns
from opd_jax.training.batch import Sequences
from opd_jax.training.batches import completion_width

Hook = Callable[[Example, list[np.ndarray], list[float]], Mapping[str, float]]
_WIDTH_SLICES = 8  # the teacher diagnostics' completion widths: multiples of max_new_tokens / 8


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from ``n`` samples of which ``c`` are correct: the probability that ``k``
    of them drawn without replacement include a correct one, ``1 - C(n - c, k) / C(n, k)``."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"need 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    # C(n-c, k) / C(n, k) = prod_{i=0}^{k-1} (n - c - i) / (n - i), a product of ratios <= 1.
    return float(1.0 - np.prod((n - c - np.arange(k)) / (n - np.arange(k))))


def _host(x) -> np.ndarray:
    """A (possibly multi-host sharded) array as a numpy array on this host."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        from jax.experimental import multihost_utils
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(jax.device_get(x))


def _completions(roll) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Completion tokens, mask and sampled log-probs ``[R, N]``, and ``finished [R]``."""
    p = roll.prompt_len
    return (_host(roll.tokens)[:, p:], _host(roll.completion_mask)[:, p:], _host(roll.logp)[:, p:],
            _host(roll.finished))


def _check(examples, k, batch_size, cfg) -> int:
    """Validate the arguments; returns the number of prompts per sampler call."""
    if not isinstance(cfg, SamplerConfig):
        raise TypeError(f"cfg must be a SamplerConfig, got {type(cfg).__name__}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if not examples:
        raise ValueError("no examples to evaluate")
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    return len(examples) if batch_size is None else batch_size


def evaluate(graphdef, params, examples: Sequence[Example], *, reward_fn, cfg: SamplerConfig,
             k: int = 8, seed: int = 0, batch_size: int | None = None, mesh=None, teacher=None,
             temperature: float = 1.0, diagnostics_k: int = 16, chunk_size: int = 64,
             threshold: float = 1.0, per_problem: Mapping[str, Hook] | None = None,
             details: bool = False, tokenizer=None, turns: int = 1, responder=None, target=None,
             draft_tokens: int = 0) -> dict:
    """Metrics of the model ``(graphdef, params)`` on ``examples`` (see the module docstring).

    ``cfg`` gives ``max_new_tokens``, ``eos_ids``, ``pad_id`` and the sampling distribution of the
    ``k`` draws (its ``num_samples`` is replaced by ``k``; the greedy pass uses temperature 0).
    ``batch_size`` prompts per sampler call (None: all at once; under ``mesh`` the rows are
    spread over its data-parallel devices, fastest when they divide evenly). ``temperature`` is
    the one the teacher diagnostics compare the two models at. ``details=True`` adds
    ``"problems"``, one entry per example (with ``tokenizer``, the greedy completion's text).
    ``turns``: model turns per episode at most (see the module docstring); ``responder(examples)``
    gives the environment's replies (:func:`opd_jax.environments.responder`; default: the
    records' ``env_turns_ids``).
    """
    bs = _check(examples, k, batch_size, cfg)
    if draft_tokens and target is None:
        raise ValueError(f"draft_tokens={draft_tokens} needs target=(graphdef, params), the model to draft for")
    if draft_tokens and any(e.teacher_prompt_ids not in (None, e.prompt_ids) for e in examples):
        raise ValueError(f"draft_tokens={draft_tokens}: the target verifies the drafts after the model's own "
                         "prompts, so it must read them (these records give the teacher other prompts)")
    n = len(examples)
    width = max(len(e.prompt_ids) for e in examples)
    t_width = max(len(e.teacher_prompt_ids or e.prompt_ids) for e in examples)
    later = cfg.prompt_buckets  # a later turn's prompts: the episodes so far
    if not cfg.prompt_buckets:  # one prompt width for every batch: one compiled program
        cfg = cfg.replace(prompt_buckets=(width,))
    greedy_cfg, draw_cfg = cfg.replace(temperature=0.0, num_samples=1), cfg.replace(num_samples=k)
    key = jax.random.key(seed)
    per = {"greedy_reward": [], "greedy_len": [], "greedy_trunc": [], "rewards": [], "lens": [],
           "truncs": [], "nll": [], "tokens": 0, "hooks": {name: [] for name in per_problem or {}},
           "greedy_text": [], "turns": [], "turn_greedy": {}, "turn_rewards": {}, "drafts": np.zeros(4)}
    sums, count = {}, 0.0
    with jax.set_mesh(mesh) if mesh is not None else contextlib.nullcontext():
        frozen = freeze_if_possible(graphdef, params)
        drafted_for = freeze_if_possible(*target) if draft_tokens else None
        for start in range(0, n, bs):
            idx = list(range(start, min(start + bs, n)))
            real = len(idx)
            idx += [idx[-1]] * (bs - real)  # pad the last batch; the copies are dropped below
            exs = [examples[i] for i in idx]
            prompts, mask = left_pad([e.prompt_ids for e in exs], width, cfg.pad_id)
            row_ids = np.asarray(idx, np.int32)
            greedy = sample(*frozen, prompts, mask, key, cfg=greedy_cfg, row_ids=row_ids)
            drawn = sample(*frozen, prompts, mask, key, cfg=draw_cfg, row_ids=row_ids)
            g, d = _completions(greedy), _completions(drawn)
            answers = (None, None)
            if turns > 1:
                more = dict(frozen=frozen, key=key, turns=turns, pad_id=cfg.pad_id, responder=responder
                            or functools.partial(EN.responder, EN.RecordTurns(), render=None))
                g = _episodes(g, exs, greedy_cfg.replace(prompt_buckets=later), row_ids, **more)
                d = _episodes(d, [e for e in exs for _ in range(k)],
                              draw_cfg.replace(num_samples=1, prompt_buckets=later),
                              sample_row_ids(row_ids, k), **more)
                per["turns"] += d[4][:real * k].tolist()
                _cut_episodes(per, exs[:real], g[5], d[5], reward_fn, k, turns)
                answers = ([a[-1] for a in g[5]], [a[-1] for a in d[5]])
            _score(per, exs[:real], g[:4], d[:4], reward_fn, k, per_problem, tokenizer, answers)
            if draft_tokens:  # the real rows' emitted, blocks, accepted, drafted
                _, st = speculative_sample(frozen, drafted_for, prompts, mask, key, cfg=draw_cfg,
                                           draft_tokens=draft_tokens, row_ids=row_ids)
                per["drafts"] += [float(_host(x)[:real * k].sum()) for x in (st.emitted, st.blocks, st.accepted,
                                                                             st.drafted)]
            if teacher is not None:
                t_prompts, t_mask = left_pad([e.teacher_prompt_ids or e.prompt_ids for e in exs],
                                             t_width, cfg.pad_id)
                s, c = _teacher_sums(graphdef, params, teacher, drawn, t_prompts, t_mask, k, real,
                                     temperature, diagnostics_k, chunk_size)
                sums = {name: sums.get(name, 0.0) + v for name, v in s.items()}
                count += c
    return _summary(per, examples, k, threshold, sums, count, details)


def _episodes(first, exs, cfg: SamplerConfig, row_ids, *, frozen, key, turns: int, pad_id: int,
              responder):
    """The model's own tokens of multi-turn episodes that start with ``first`` (turn 1's
    :func:`_completions`), as ``(tokens, mask, logp, finished, turns)`` of the same shapes, and
    each row's turns (token ids, at least one)."""
    tok, mask, logp, fin = first

    def rows(t, m, lp, f):
        return [a[b].tolist() for a, b in zip(t, m)], [a[b].tolist() for a, b in zip(lp, m)], f

    def sample_turn(seqs, t):
        p, pm = left_pad(seqs, max(len(x) for x in seqs), pad_id)
        return rows(*_completions(sample(*frozen, p, pm, jax.random.fold_in(key, t), cfg=cfg,
                                         row_ids=row_ids)))
    comp, lps, student, ended, taken = continue_turns(
        [e.prompt_ids for e in exs], *rows(tok, mask, logp, fin), responder(exs), turns, sample_turn)
    own = student_tokens(comp, student)
    answers = [[np.asarray(a, np.int32) for a in student_turns(c, m)] or [np.zeros(0, np.int32)]
               for c, m in zip(comp, student)]
    own_logp = [[x for x, s in zip(lp, m) if s] for lp, m in zip(lps, student)]
    out_tok, out_mask = right_pad(own, max(1, max(len(o) for o in own)), pad_id)
    out_logp = np.zeros(out_tok.shape, np.float32)
    for r, lp in enumerate(own_logp):
        out_logp[r, :len(lp)] = lp
    return out_tok, out_mask, out_logp, ended, taken, answers


def _cut_episodes(per, exs, greedy, drawn, reward_fn, k, turns):
    """The rewards of multi-turn episodes cut after ``j < turns`` model turns: of the last answer
    each had given by then (``greedy`` and ``drawn``: each row's turns)."""
    def reward(e, answers, j):  # of the last answer within the first j turns
        return float(reward_fn(e, answers[min(j, len(answers)) - 1]))
    for j in range(1, turns):
        per["turn_greedy"].setdefault(j, []).extend(reward(e, greedy[b], j) for b, e in enumerate(exs))
        per["turn_rewards"].setdefault(j, []).extend(
            [reward(e, drawn[r], j) for r in range(b * k, (b + 1) * k)] for b, e in enumerate(exs))


def _score(per, exs, greedy, drawn, reward_fn, k, hooks, tokenizer, answers=(None, None)):
    """Rewards, lengths and truncation of this batch's real rows (host side), from the greedy
    and the drawn completions' ``(tokens, mask, logp, finished)``; ``answers``: the greedy and the
    drawn rows' last turns, which the rewards and hooks read instead (multi-turn episodes)."""
    g_tok, g_mask, _, g_fin = greedy
    d_tok, d_mask, d_logp, d_fin = drawn
    g_ans, d_ans = answers
    for b, e in enumerate(exs):
        ids = g_tok[b][g_mask[b]]
        per["greedy_reward"].append(float(reward_fn(e, ids if g_ans is None else g_ans[b])))
        per["greedy_len"].append(len(ids))
        per["greedy_trunc"].append(not g_fin[b])
        if tokenizer is not None:
            per["greedy_text"].append(tokenizer.decode(ids.tolist()))
        rows = range(b * k, (b + 1) * k)
        comps = [d_tok[r][d_mask[r]] for r in rows]
        comps = comps if d_ans is None else [d_ans[r] for r in rows]
        rewards = [float(reward_fn(e, c)) for c in comps]
        per["rewards"].append(rewards)
        per["lens"].append([int(d_mask[r].sum()) for r in rows])
        per["truncs"].append([not d_fin[r] for r in rows])
        per["nll"].append(float(-d_logp[b * k:(b + 1) * k][d_mask[b * k:(b + 1) * k]].sum()))
        per["tokens"] += int(d_mask[b * k:(b + 1) * k].sum())
        for name, hook in (hooks or {}).items():
            per["hooks"][name].append(dict(hook(e, comps, rewards)))


def _teacher_sums(graphdef, params, teacher, drawn, t_prompts, t_mask, k, real, temperature,
                  diagnostics_k, chunk):
    """The teacher diagnostics' sums over the real rows of one batch."""
    t_graph, t_params = teacher
    p = drawn.prompt_len
    tokens, mask = _host(drawn.tokens), _host(drawn.mask)
    # Only the completion columns some row uses (rounded up: a few widths, a few compiles); the
    # columns cut hold padding, which no position before them attends to.
    used = np.flatnonzero(mask[:, p:].any(axis=0))
    width = completion_width(int(used[-1]) + 1 if used.size else 1, tokens.shape[1] - p, _WIDTH_SLICES)
    tokens, mask = tokens[:, :p + width], mask[:, :p + width]
    comp, comp_mask = tokens[:, p:], mask[:, p:]
    counted = comp_mask.copy()
    counted[real * k:] = False  # the padded prompts' samples do not count
    rep = lambda x: np.repeat(x, k, axis=0)  # noqa: E731
    t_seq = Sequences.from_left_padded(np.concatenate([rep(t_prompts), comp], 1),
                                       np.concatenate([rep(t_mask), comp_mask], 1))
    s_seq = Sequences.from_left_padded(tokens, mask)
    # The k samples of a prompt are consecutive rows: each model runs each prompt once.
    sums, count = TD.token_sums(graphdef, params, t_graph, t_params, s_seq, t_seq, comp, counted,
                                k=diagnostics_k, temperature=float(temperature), chunk=chunk, group=k)
    return {name: float(_host(v)) for name, v in sums.items()}, float(_host(count))


def _summary(per, examples, k, threshold, sums, count, details) -> dict:
    correct = [sum(r >= threshold for r in rs) for rs in per["rewards"]]
    out = {
        "problems": len(examples), "k": k,
        "greedy_pass@1": float(np.mean([r >= threshold for r in per["greedy_reward"]])),
        "pass@1": float(np.mean([c / k for c in correct])),
        f"pass@{k}": float(np.mean([pass_at_k(k, c, k) for c in correct])),
        "reward": float(np.mean(per["rewards"])),
        "greedy_reward": float(np.mean(per["greedy_reward"])),
        "mean_length": float(np.mean(per["lens"])),
        "greedy_mean_length": float(np.mean(per["greedy_len"])),
        "truncated": float(np.mean(per["truncs"])),
        "greedy_truncated": float(np.mean(per["greedy_trunc"])),
        "entropy": float(sum(per["nll"]) / max(per["tokens"], 1)),
    }
    if per["turns"]:
        out["turns"] = float(np.mean(per["turns"]))
        for j, greedy in per["turn_greedy"].items():
            out[f"turn{j}_greedy_pass@1"] = float(np.mean([r >= threshold for r in greedy]))
            out[f"turn{j}_pass@1"] = float(np.mean([sum(r >= threshold for r in rs) / k
                                                    for rs in per["turn_rewards"][j]]))
    if count:
        out.update(TD.means(sums, count))
    emitted, blocks, accepted, drafted = per["drafts"]
    if blocks:
        out.update(acceptance_length=float(emitted / blocks), acceptance_rate=float(accepted / max(drafted, 1.0)))
    for name, rows in per["hooks"].items():
        for key in rows[0] if rows else ():
            out[key] = float(np.mean([r[key] for r in rows]))
    if details:
        out["problems_detail"] = [
            {"line": e.line, "answer": e.answer, "greedy_reward": per["greedy_reward"][i],
             "correct": int(correct[i]), "rewards": per["rewards"][i],
             **({"greedy_text": per["greedy_text"][i]} if per["greedy_text"] else {})}
            for i, e in enumerate(examples)]
    bad = [name for name, v in out.items() if isinstance(v, float) and not math.isfinite(v)]
    if bad:
        raise FloatingPointError(f"evaluation produced non-finite {bad}")
    return out


def write_result(result: Mapping, path: str) -> None:
    """Write ``result`` as JSON at ``path`` atomically (a temporary file renamed into place), so a
    reader never sees a partial file and an earlier result is replaced whole or not at all."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        json.dump(dict(result), f, indent=2)
    os.replace(tmp, path)
