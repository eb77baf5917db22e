"""A local teacher that also looks one step ahead of the student's candidate tokens (LGR).

For the ``lgr`` objective (:mod:`opd_jax.objectives.lookahead`) every scored batch gets, besides
the teacher's usual scores, the extras ``lgr_ids``/``lgr_reward`` ``[B, N, k]``:

1. the student (its current weights: the policy that sampled the batch) reads its completions
   once; at each row's ``branch_points`` positions of highest entropy (at least ``min_entropy``)
   its top-``k`` tokens are the candidates;
2. the teacher reads its sequences once with every candidate appended as a one-token branch
   (tree attention, :func:`opd_jax.models.branches.branch_hidden`): the same forward gives its
   hidden states at the completion positions (its usual scores) and its next-token distribution
   after each candidate, whose confidence, normalised within the position's ``k`` candidates, is
   the candidate's reward.

The extra cost per step is a student forward without gradients and ``branch_points * k`` more
tokens per row in the teacher's forward (not in the iteration's FLOP metrics). The student forward
is skipped when the sampler recorded the student's top-``k`` and entropy while sampling the batch
(the trainer asks for that for this objective: ``batches.student_sampler``; the extras
:data:`~opd_jax.training.batch.RECORDED_EXTRAS`, absent on off-policy batches and with golden rows). Only a teacher
that is one local model (``teacher.kind`` model, self, initial or ema) can be read this way;
a served teacher (:class:`ServedLookahead`) is asked instead for its top next-token log-prob after
each candidate appended to its prefix (``branch_points * k`` short requests per row, beside its
usual scoring; the ``max_prob`` confidence only).
"""

from concurrent.futures import ThreadPoolExecutor

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import opd_jax.objectives as O
from opd_jax.models.branches import branch_hidden
from opd_jax.teachers.base import Student, Teacher, Wrapping
from opd_jax.training.batch import BEHAVIOR_ENTROPY, RECORDED_EXTRAS, Sequences, completion_hidden

sg = jax.lax.stop_gradient
_BLOCK = 1 << 22  # logits per block when reading many positions' distributions (16 MiB)


def _blocked(model, h_PD, fn):
    """``fn(logits)`` of the positions ``h [P, D]``, a block of positions at a time (never all
    ``[P, V]`` logits at once)."""
    P, vocab = h_PD.shape[0], model.lm_head_weight().shape[-1]
    size = max(1, min(P, _BLOCK // vocab))
    pad = -P % size
    h = jnp.pad(h_PD, ((0, pad), (0, 0))).reshape(-1, size, h_PD.shape[-1])
    out = jax.lax.map(lambda x: fn(model.logits(x[None])[0]), h)
    return jax.tree.map(lambda y: y.reshape(-1, *y.shape[2:])[:P], out)


def _student_topk(s_graph, s_params, student: Sequences, B: int, N: int, group: int, k: int,
                  temperature: float):
    """The student's entropy ``[B, N]`` and top-``k`` ids ``[B, N, k]`` at the completion positions."""
    s_model = nnx.merge(s_graph, sg(s_params))
    h_s = completion_hidden(s_model, student, N, group)
    entropy, top = _blocked(s_model, h_s.reshape(B * N, -1), lambda z: O.entropy_and_topk(
        z, k, temperature=temperature))
    return entropy.reshape(B, N), top.reshape(B, N, k)


def _choose(s_graph, s_params, student: Sequences, loss_mask, group, cfg: O.LGRConfig,
            recorded=None):
    """Each row's branch points ``index [B, M]`` (``active``: real ones) and their candidates
    ``[B, M, k]``; ``recorded``: the sampler's ``(entropy, top-k ids)`` of the batch, else None (a
    student forward computes them)."""
    B, N = loss_mask.shape
    entropy, top = recorded if recorded is not None else _student_topk(
        s_graph, s_params, student, B, N, group, cfg.k, cfg.temperature)
    index, active = O.branch_points(entropy, loss_mask, min(cfg.branch_points, N),
                                    min_entropy=cfg.min_entropy)
    return index, active, jnp.take_along_axis(top, index[..., None], axis=1)


choose_candidates = jax.jit(_choose, static_argnums=(0, 4, 5))


def _extras(index, candidates, reward, n: int) -> dict:
    """LGR's extras ``[B, n, k]``: each branch point's candidates and rewards at its position
    (``index [B, M]``), zeros elsewhere."""
    B, _, k = candidates.shape
    rows = jnp.arange(B)[:, None]
    return {O.LGR_IDS: jnp.zeros((B, n, k), jnp.int32).at[rows, index].set(candidates),
            O.LGR_REWARD: jnp.zeros((B, n, k), jnp.float32).at[rows, index].set(reward)}


def _lookahead(s_graph, s_params, t_graph, t_params, student: Sequences, teacher: Sequences,
               loss_mask, group, cfg: O.LGRConfig, recorded=None):
    t_model = nnx.merge(t_graph, sg(t_params))
    N = loss_mask.shape[1]
    index, active, candidates = _choose(s_graph, s_params, student, loss_mask, group, cfg, recorded)
    width = teacher.tokens.shape[1]
    h_rows, h_branch = branch_hidden(t_model, teacher.tokens, teacher.positions, teacher.mask,
                                     width - N + index, candidates)
    conf = _blocked(t_model, h_branch.reshape(-1, h_branch.shape[-1]), lambda z: O.confidence(
        z, cfg.confidence, temperature=cfg.temperature)).reshape(candidates.shape)
    reward = O.group_rewards(conf, active)
    return h_rows[:, width - N - 1:width - 1], _extras(index, candidates, reward, N)


lookahead_scores = jax.jit(_lookahead, static_argnums=(0, 2, 7, 8))


def _recorded(batch, k: int):
    """The sampler's ``(entropy, top-k ids)`` of ``batch`` when it recorded ``k`` tokens, else None."""
    ids, entropy = batch.extras.get(RECORDED_EXTRAS["topk_ids"]), batch.extras.get(BEHAVIOR_ENTROPY)
    return None if ids is None or ids.shape[-1] != k else (entropy, ids)


def _without_records(extras: dict) -> dict:
    """``extras`` less the sampler's records (read here; the train step does not need them)."""
    return {name: x for name, x in extras.items() if name not in RECORDED_EXTRAS.values()}


class WithLookahead(Wrapping):
    """``inner`` (one local model) scored with look-ahead branches: its usual dense scores plus
    LGR's candidates and rewards (:data:`opd_jax.objectives.LOOKAHEAD_INPUTS`)."""

    def __init__(self, inner: Teacher, student: Student, cfg: O.LGRConfig):
        if not hasattr(inner, "model"):
            raise ValueError(f"look-ahead branches need a teacher that is one local model (a served "
                             f"one: ServedLookahead), not {type(inner).__name__}")
        super().__init__(inner)
        self.cfg, self.student_graphdef = cfg, student.graphdef

    def score(self, batch, prompts, student_params):
        g, p = self.inner.model(student_params)
        hidden, extras = lookahead_scores(self.student_graphdef, student_params, g, p,
                                          batch.student, batch.teacher_sequences, batch.loss_mask,
                                          batch.group, self.cfg, _recorded(batch, self.cfg.k))
        return batch.replace(teacher_hidden=hidden, extras={**_without_records(batch.extras), **extras})

    def start_score(self, batch, prompts, student_params):
        return lambda: self.score(batch, prompts, student_params)


def branch_prompts(tokens, mask, n: int, index, active, candidates) -> list[list[int]]:
    """Host side of a served look-ahead: for every active branch point ``index[r, m]`` (a
    completion position, of ``n``) of every row, each candidate appended to the row's real tokens
    before that position (``tokens``/``mask`` ``[R, W]``, the completion in the last ``n``
    columns), row by row, branch point by branch point."""
    width, out = tokens.shape[1], []
    for r, m in zip(*np.nonzero(active)):
        col = width - n + int(index[r, m])
        prefix = tokens[r, :col][mask[r, :col]].tolist()
        out += [prefix + [int(v)] for v in candidates[r, m]]
    return out


class ServedLookahead(Wrapping):
    """``inner`` (a served teacher) with LGR's candidates and rewards: each candidate, appended to
    its prefix, goes to the server as a prompt whose next token's top log-prob is asked for
    (``confidence="max_prob"`` only: the server sends no whole distribution). The requests run
    beside the inner teacher's scoring; the student's choice of candidates runs here (from the
    sampler's records, or a student forward)."""

    def __init__(self, inner: Teacher, student: Student, cfg: O.LGRConfig, runtime):
        if not hasattr(inner, "next_logp") or cfg.confidence != "max_prob":
            raise ValueError("a served look-ahead reads the teacher's top next-token log-prob: it "
                             "needs teacher.kind='served' and objective.confidence='max_prob'")
        super().__init__(inner)
        self.cfg, self.student_graphdef, self.rows = cfg, student.graphdef, runtime.rows
        self._pool: ThreadPoolExecutor | None = None
        self._counts: dict[str, float] = {}

    def start_score(self, batch, prompts, student_params):
        index, active, cands = (self.rows.to_local(x) for x in choose_candidates(
            self.student_graphdef, student_params, batch.student, batch.loss_mask, batch.group,
            self.cfg, _recorded(batch, self.cfg.k)))
        seq = batch.teacher_sequences
        n = batch.completion_len
        branches = branch_prompts(self.rows.to_local(seq.tokens), self.rows.to_local(seq.mask), n,
                                  index, active, cands)
        pending = self.inner.start_score(batch, prompts, student_params)
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1)
        future = self._pool.submit(self.inner.next_logp, branches)

        def finish():
            scored = pending()
            logp, counts, error = future.result()
            self.inner.agree(error)
            self._counts = {name.replace("teacher/", "teacher/lookahead_"): x for name, x in counts.items()}
            conf = np.zeros(cands.shape, np.float32)
            conf[active] = np.exp(logp).reshape(-1, cands.shape[-1])
            extras = _extras(index, cands, O.group_rewards(conf, active), n)
            return scored.replace(extras={**_without_records(scored.extras),
                                          **{k: self.rows.to_global(np.asarray(x)) for k, x in extras.items()}})
        return finish

    def score(self, batch, prompts, student_params):
        return self.start_score(batch, prompts, student_params)()

    def metrics(self):
        return {**self.inner.metrics(), **self._counts}

    def close(self):
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
        self.inner.close()
