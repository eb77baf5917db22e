"""Multi-turn episodes (``loop.turns``): the student answers, the environment replies
(:mod:`opd_jax.environments`: by default the record's next ``env_turns_ids``; a user message, a
tool's output, as token ids), the student answers again, and so on. One batch row is one
episode: its prompt, then the student's turns and the environment's in their order. The teacher
reads the whole episode; the loss counts the student's tokens only (``loss_mask``), each with the
log-prob the sampler drew it with.

Turn 1 is the ordinary rollout (``num_samples`` per prompt); the later turns are
:func:`opd_jax.sampling.turns.continue_turns`'s, one sampler call per turn over all the rows
(their prompt widths fall into the sampler's buckets). Row ``r``'s draw in turn ``t`` uses the
PRNG stream of its global row id under the step's key folded with ``t``. What the sampler records
beside each token (``SamplerConfig.record_topk``: the policy's top-k and entropy, for objectives
that read them) is gathered from each turn's rollout into the episode's columns (zeros for the
environment's tokens and the padding, as for a single turn's dead columns).
"""

from collections.abc import Callable

import jax
import numpy as np
from jax.experimental import multihost_utils

from opd_jax import data as D
from opd_jax.sampling import SamplerConfig, sample
from opd_jax.sampling.turns import continue_turns, sample_row_ids
from opd_jax.training import batches as B
from opd_jax.training.batch import RECORDED_EXTRAS, STUDENT_TURN, TrainBatch


def _anywhere(flag: bool) -> bool:
    """Whether ``flag`` holds on some host (every host makes the same sampler calls)."""
    if jax.process_count() == 1:
        return flag
    return bool(np.any(multihost_utils.process_allgather(np.int32(flag))))


def student_turns(graphdef, params, cfg: SamplerConfig, rows: B.Rows, prompts: B.Prompts, key, *,
                  teacher=None, teacher_mix: float = 0.0):
    """The ``next_turn`` of :func:`episodes` for the student ``(graphdef, params)``: one sample
    per row with ``cfg``, turn ``t`` under ``fold_in(key, t)``, each row on its global row id's
    stream; teacher-mixed as turn 1 was with ``teacher=(graphdef, params)`` (``sample``'s)."""
    ids, one = rows.to_global(sample_row_ids(prompts.row_ids, cfg.num_samples)), cfg.replace(num_samples=1)
    return lambda tokens, mask, t: sample(graphdef, params, tokens, mask, jax.random.fold_in(key, t),
                                          cfg=one, row_ids=ids, teacher=teacher, teacher_mix=teacher_mix)


def _completions(rows: B.Rows, roll, turn: int | None = None):
    """This host's rows of a rollout: each completion's tokens, log-probs, and whether it ended
    with an EOS token. With ``turn``, each token's log-prob comes as ``(log-prob, turn, column)``:
    where in which turn's rollout it was drawn."""
    start = roll.prompt_len
    tokens, mask, logp = (rows.to_local(x)[:, start:] for x in (roll.tokens, roll.completion_mask,
                                                                roll.logp))
    if turn is None:
        drawn = [lp[m].tolist() for lp, m in zip(logp, mask)]
    else:
        drawn = [[(x, turn, c) for x, c in zip(lp[m].tolist(), np.flatnonzero(m).tolist())]
                 for lp, m in zip(logp, mask)]
    return [t[m].tolist() for t, m in zip(tokens, mask)], drawn, rows.to_local(roll.finished).astype(bool)


# Per-token rollout fields an episode gathers from its turns: what the sampler records for an
# objective (``RECORDED_EXTRAS``), and a teacher-mixed rollout's share of the teacher.
_PER_TOKEN = (*RECORDED_EXTRAS, "from_teacher", "teacher_weight")


def _gathered(rows: B.Rows, rolls: list, drawn: list, width: int) -> dict[str, np.ndarray]:
    """This host's ``[rows, width, ...]`` of each per-token field the rollouts have, each token's
    taken from the rollout and column it was drawn at (``drawn``: per row, ``(log-prob, turn,
    column)`` per completion token, turn -1 for the environment's; zeros there and past the end)."""
    turn, col = np.full((len(drawn), width), -1), np.zeros((len(drawn), width), np.int64)
    for r, row in enumerate(drawn):
        if row:
            _, turn[r, :len(row)], col[r, :len(row)] = zip(*row)
    out = {}
    for field in (f for f in _PER_TOKEN if getattr(rolls[0], f) is not None):
        for t, roll in enumerate(rolls):
            values = np.asarray(rows.to_local(getattr(roll, field)))[:, roll.prompt_len:]
            if t == 0:
                out[field] = np.zeros((len(drawn), width) + values.shape[2:], values.dtype)
            r, c = np.nonzero(turn == t)
            out[field][r, c] = values[r, col[r, c]]
    return out


def episodes(rows: B.Rows, prompts: B.Prompts, first, *, num_samples: int, turns: int, pad_id: int,
             next_turn: Callable[[jax.Array, jax.Array, int], object], responder: Callable
             ) -> tuple[TrainBatch, dict[str, float]]:
    """The batch of episodes that start with the rollout ``first`` (turn 1) and go on for up to
    ``turns`` turns (:func:`opd_jax.sampling.turns.continue_turns`), and its sampling metrics:
    ``sample/turns``, the mean number of student turns in this host's episodes, and of a
    teacher-mixed rollout the teacher's share of the student's tokens (``sample/from_teacher`` or
    ``sample/teacher_weight``); ``next_turn(tokens, mask, t)`` samples turn ``t`` (from
    2) of every row from the left-padded episodes so far (global arrays, one sample per row);
    ``responder(examples)`` is the environment's ``respond`` for this host's rows
    (:func:`opd_jax.environments.responder`)."""
    n = num_samples
    examples = [e for e in prompts.examples for _ in range(n)]

    # each turn's rollout, if it has per-token fields to gather
    rolls = [first] if any(getattr(first, f) is not None for f in _PER_TOKEN) else None

    def sample_turn(seqs, t):
        tokens, mask = D.left_pad(seqs, max(len(s) for s in seqs), pad_id)
        roll = next_turn(rows.to_global(tokens), rows.to_global(mask), t)
        if rolls is not None:
            rolls.append(roll)
        return _completions(rows, roll, None if rolls is None else len(rolls) - 1)
    comp, logp, ended = _completions(rows, first, None if rolls is None else 0)
    comp, logp, student, _, taken = continue_turns(
        [e.prompt_ids for e in examples], comp, logp, ended, responder(examples), turns, sample_turn,
        anywhere=_anywhere, fill=0.0 if rolls is None else (0.0, -1, 0))
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
    for r, (m, lp) in enumerate(zip(student, logp)):
        loss[r, :len(m)], behavior[r, :len(lp)] = m, lp if rolls is None else [x[0] for x in lp]
    g = rows.to_global
    fields = {} if rolls is None else _gathered(rows, rolls, logp, width)
    recorded = {name: g(fields[f]) for f, name in RECORDED_EXTRAS.items() if f in fields}
    stats = {"sample/turns": float(taken.mean())}
    for f in ("from_teacher", "teacher_weight"):  # the teacher's share of the student's tokens
        if f in fields:
            stats[f"sample/{f}"] = _mean_over_hosts(fields[f], loss)

    def rep(x):
        return None if x is None else g(np.repeat(x, n, axis=0))
    batch = B.assemble(rep(prompts.tokens), rep(prompts.mask), g(tokens), g(real), g(behavior),
                       rep(prompts.teacher_tokens), rep(prompts.teacher_mask), loss_mask=g(loss))
    extras = {**batch.extras, **recorded, STUDENT_TURN: g(turn_membership(loss, turns))}
    return batch.replace(group=n, extras=extras), stats


def _mean_over_hosts(values: np.ndarray, mask: np.ndarray) -> float:
    """The mean of ``values`` where ``mask`` holds, over every host's rows."""
    total = np.array([np.sum(np.where(mask, values, 0.0)), np.sum(mask)], np.float64)
    if jax.process_count() > 1:
        total = np.sum(multihost_utils.process_allgather(total), axis=0)
    return float(total[0] / max(total[1], 1.0))


def turn_membership(loss_mask: np.ndarray, turns: int) -> np.ndarray:
    """bool ``[B, N, turns]``: whether each completion token is in the student's turn ``k + 1``, a
    turn being a run of student tokens (``loss_mask``; the environment's replies are never empty,
    so consecutive turns are never adjacent)."""
    m = np.asarray(loss_mask, bool)
    starts = m & ~np.pad(m, ((0, 0), (1, 0)))[:, :-1]
    turn = np.cumsum(starts, axis=1) - 1  # 0-based turn of each student token
    if m.any() and turn[m].max() >= turns:
        raise ValueError(f"an episode holds {turn[m].max() + 1} student turns, more than turns={turns}")
    return m[:, :, None] & (turn[:, :, None] == np.arange(turns))
