"""Multi-turn episodes on the host: the student's turn, the environment's next turn, the student's
next turn, and so on (the training loop's ``loop.turns``, the evaluation's ``eval.turns``).

After turn 1 (an ordinary rollout), each row whose last turn ended with an EOS token and whose
environment replies (:mod:`opd_jax.environments`) gets the reply appended, and ``next_turn``
samples the next turn of every row from the episodes so far (rows already over are sampled too
and their draw ignored, so every call has the same rows). What is returned keeps, per row, every
completion token in order and which of them are the student's. An episode's reward reads its
last student turn, its final answer (:func:`last_turn`).
"""

from collections.abc import Callable, Sequence

import numpy as np

Tokens = list[int]


def sample_row_ids(row_ids, num_samples: int) -> np.ndarray:
    """int32 ``[B * n]``: the global id ``row_ids[b] * n + j`` of sample ``j`` of prompt ``b``,
    whose PRNG stream the sampler gives it (a later turn samples each row once on that id)."""
    n, ids = num_samples, np.asarray(row_ids, np.int64)
    return (np.repeat(ids * n, n) + np.tile(np.arange(n), len(ids))).astype(np.int32)


def continue_turns(prompts: Sequence[Sequence[int]], comp: list[Tokens], logp: list[list[float]],
                   ended: np.ndarray, respond: Callable[[list[int], list[list[Tokens]]], list], turns: int,
                   next_turn: Callable[[list[tuple[int, ...]], int], tuple[list[Tokens], list[list[float]],
                                                                            np.ndarray]],
                   anywhere: Callable[[bool], bool] = bool, fill=0.0):
    """Episodes of up to ``turns`` student turns from turn 1's completions.

    ``prompts[r]``, ``comp[r]``, ``logp[r]``: row ``r``'s prompt, its first turn's tokens and their
    log-probs; ``ended[r]``: that turn ended with an EOS token. ``respond(rows, owns)``: the
    environment's replies to ``rows`` after their student turns ``owns`` (token ids; None ends an
    episode; asked once per turn, of the rows whose last turn ended with an EOS token).
    ``next_turn(sequences, t)`` samples turn ``t`` (from 2) of every row from
    the given sequences (prompt and episode so far) and returns each row's new tokens, their
    log-probs and whether each ended with an EOS token. ``anywhere(flag)``: whether ``flag`` holds
    on some host (every host makes the same calls). The log-probs are carried as they are: any
    per-token value will do (the training loop's also say where each token was drawn), ``fill``
    the environment's tokens'.

    Returns ``(comp, logp, student, ended, taken)``: each row's completion tokens (the student's and
    the environment's), their log-probs (``fill`` for the environment's), which are the student's (lists
    of bools), whether its last turn ended with an EOS token, and its number of student turns.
    """
    comp, logp = [list(c) for c in comp], [list(x) for x in logp]
    student = [[True] * len(c) for c in comp]
    own = [[list(c)] for c in comp]  # each row's student turns
    alive, taken = np.asarray(ended, bool).copy(), np.ones(len(comp), np.int32)
    last_ended = alive.copy()
    for t in range(2, turns + 1):
        asked = [int(r) for r in np.flatnonzero(alive)]
        env = [None] * len(comp)
        for r, x in zip(asked, respond(asked, [own[r] for r in asked])):
            env[r] = x
        go = alive & np.array([x is not None for x in env], bool)
        if not anywhere(bool(go.any())):
            break
        for r in np.flatnonzero(go):
            comp[r] += list(env[r])
            logp[r] += [fill] * len(env[r])
            student[r] += [False] * len(env[r])
        more, more_logp, more_ended = next_turn([tuple(p) + tuple(c) for p, c in zip(prompts, comp)], t)
        for r in np.flatnonzero(go):
            comp[r] += list(more[r])
            own[r].append(list(more[r]))
            logp[r] += list(more_logp[r])
            student[r] += [True] * len(more[r])
        more_ended = np.asarray(more_ended, bool)
        last_ended = np.where(go, more_ended, last_ended)
        alive, taken = go & more_ended, taken + go
    return comp, logp, student, last_ended, taken


def student_tokens(comp: list[Tokens], student: list[list[bool]]) -> list[Tokens]:
    """Each row's own tokens, its turns one after the other (what a reward reads)."""
    return [[t for t, s in zip(c, m) if s] for c, m in zip(comp, student)]


def student_turns(tokens: Sequence[int], student: Sequence[bool]) -> list[list[int]]:
    """A row's student turns in order: the runs of ``tokens`` where ``student`` holds (the
    environment's replies, never empty, separate them; padding, False, is skipped)."""
    runs: list[list[int]] = []
    for i, (t, s) in enumerate(zip(tokens, student)):
        if s:
            if i == 0 or not student[i - 1]:
                runs.append([])
            runs[-1].append(int(t))
    return runs


def last_turn(tokens: Sequence[int], student: Sequence[bool]) -> list[int]:
    """A row's last student turn (what an episode's reward reads: its final answer); empty if
    it has none."""
    runs = student_turns(tokens, student)
    return runs[-1] if runs else []
