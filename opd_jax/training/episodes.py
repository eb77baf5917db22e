"""Multi-turn episodes (``loop.turns``): the student answers, the environment replies with its
record's next turn (``env_turns_ids``: a user message, a tool's output, as token ids), the student
answers again, and so on. One batch row is one episode: its prompt, then the student's turns and
the environment's in their order. The teacher reads the whole episode; the loss counts the
student's tokens only (``loss_mask``), each with the log-prob the sampler drew it with.

Turn 1 is the ordinary rollout (``num_samples`` per prompt). For every later turn, each row whose
last turn ended with an EOS token and whose record has an environment turn left gets that turn
appended, and the student samples the next turn of every row in one sampler call whose prompts
are the episodes so far (rows already over are sampled too and their draw ignored, so each call
has the same rows; the prompt widths fall into the sampler's buckets). Row ``r``'s draw in turn
``t`` uses the PRNG stream of its global row id under the step's key folded with ``t``.
"""

from collections.abc import Callable

import jax
import numpy as np
from jax.experimental import multihost_utils

from opd_jax import data as D
from opd_jax.sampling import SamplerConfig, sample
from opd_jax.training import batches as B
from opd_jax.training.batch import TrainBatch


def _anywhere(flag: bool) -> bool:
    """Whether ``flag`` holds on some host (every host makes the same sampler calls)."""
    if jax.process_count() == 1:
        return flag
    return bool(np.any(multihost_utils.process_allgather(np.int32(flag))))


def row_ids(prompts: B.Prompts, num_samples: int) -> np.ndarray:
    """The global row id of each of this host's rows (sample ``j`` of prompt ``b``: ``b * n + j``)."""
    n = num_samples
    return (np.repeat(prompts.row_ids.astype(np.int64) * n, n)
            + np.tile(np.arange(n), len(prompts.row_ids))).astype(np.int32)


def student_turns(graphdef, params, cfg: SamplerConfig, rows: B.Rows, prompts: B.Prompts, key):
    """The ``next_turn`` of :func:`episodes` for the student ``(graphdef, params)``: one sample
    per row with ``cfg``, turn ``t`` under ``fold_in(key, t)``, each row on its global row id's
    stream."""
    ids, one = rows.to_global(row_ids(prompts, cfg.num_samples)), cfg.replace(num_samples=1)
    return lambda tokens, mask, t: sample(graphdef, params, tokens, mask, jax.random.fold_in(key, t),
                                          cfg=one, row_ids=ids)


def _completions(rows: B.Rows, roll):
    """This host's rows of a rollout: each completion's tokens, log-probs, and whether it ended
    with an EOS token."""
    start = roll.prompt_len
    tokens, mask, logp = (rows.to_local(x)[:, start:] for x in (roll.tokens, roll.completion_mask,
                                                                roll.logp))
    return ([t[m].tolist() for t, m in zip(tokens, mask)], [lp[m].tolist() for lp, m in zip(logp, mask)],
            rows.to_local(roll.finished).astype(bool))


def episodes(rows: B.Rows, prompts: B.Prompts, first, *, num_samples: int, turns: int, pad_id: int,
             next_turn: Callable[[jax.Array, jax.Array, int], object]) -> tuple[TrainBatch, float]:
    """The batch of episodes that start with the rollout ``first`` (turn 1) and go on for up to
    ``turns`` turns, and the mean number of student turns in this host's episodes;
    ``next_turn(tokens, mask, t)`` samples turn ``t`` (from 2) of every row from the left-padded
    episodes so far (global arrays, one sample per row)."""
    n = num_samples
    examples = [e for e in prompts.examples for _ in range(n)]
    comp, logp, alive = _completions(rows, first)
    student = [[True] * len(c) for c in comp]  # which completion tokens are the student's
    taken = np.ones(len(comp))  # student turns per episode
    for t in range(2, turns + 1):
        env = [e.env_turns_ids[t - 2] if t - 2 < len(e.env_turns_ids) else None for e in examples]
        go = alive & np.array([x is not None for x in env])
        if not _anywhere(bool(go.any())):
            break
        for r in np.flatnonzero(go):
            comp[r], logp[r], student[r] = (comp[r] + list(env[r]), logp[r] + [0.0] * len(env[r]),
                                            student[r] + [False] * len(env[r]))
        seqs = [tuple(e.prompt_ids) + tuple(c) for e, c in zip(examples, comp)]
        tokens, mask = D.left_pad(seqs, max(len(s) for s in seqs), pad_id)
        more, more_logp, ended = _completions(rows, next_turn(rows.to_global(tokens),
                                                              rows.to_global(mask), t))
        for r in np.flatnonzero(go):
            comp[r], logp[r], student[r] = (comp[r] + more[r], logp[r] + more_logp[r],
                                            student[r] + [True] * len(more[r]))
        alive, taken = go & ended, taken + go
    longest = max(len(c) for c in comp)
    if jax.process_count() > 1:
        longest = int(np.max(multihost_utils.process_allgather(np.int32(longest))))
    # a multiple of an eighth of the next power of two: at most 8 widths (compiled shapes) per
    # octave, at most ~1/8 of padding
    unit = max(16, (1 << max(longest - 1, 0).bit_length()) // 8)
    width = -(-max(longest, 1) // unit) * unit
    tokens, real = D.right_pad([tuple(c) for c in comp], width, pad_id)
    loss = np.zeros_like(real)
    behavior = np.zeros(real.shape, np.float32)
    for r, (s, lp) in enumerate(zip(student, logp)):
        loss[r, :len(s)], behavior[r, :len(lp)] = s, lp
    g = rows.to_global

    def rep(x):
        return None if x is None else g(np.repeat(x, n, axis=0))
    batch = B.assemble(rep(prompts.tokens), rep(prompts.mask), g(tokens), g(real), g(behavior),
                       rep(prompts.teacher_tokens), rep(prompts.teacher_mask), loss_mask=g(loss))
    return batch.replace(group=n), float(taken.mean())
