"""One step's batch: its prompts (a function of the data position only), its source, and the
sequences the student learns from.

A batch comes from one of four sources, chosen per step by :func:`choose_source`:

- ``"cold_start"``: teacher rollouts during the first ``loop.cold_start_steps`` (SFT objective);
- ``"on_policy"``: fresh student samples, with probability ``loop.lmbda`` (GKD's lambda);
- ``"seq_kd"``: teacher samples on the other steps when ``loop.seq_kd`` (sequence-level KD);
- ``"data"``: the records' reference completions on the other steps otherwise.

Every host builds its own rows (its contiguous slice of the global batch) as NumPy arrays;
:class:`Rows` turns them into global arrays sharded over the mesh's data axes and back.
"""

import dataclasses
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec as P

import opd_jax.objectives as O
from opd_jax import data as D
from opd_jax.objectives import masked_mean
from opd_jax.sampling import sample
from opd_jax.sampling.config import SamplerConfig
from opd_jax.sampling.speculative import speculative_sample
from opd_jax.sampling.turns import last_turn
from opd_jax.training.batch import RECORDED_EXTRAS, Sequences, TrainBatch
from opd_jax.training.checks import CONTEXT_FIELDS
from opd_jax.training.errors import TrainingError

SOURCES = ("cold_start", "on_policy", "seq_kd", "data")
TEACHER_ROLLOUTS = ("cold_start", "seq_kd")  # the sources a teacher samples


class Rows:
    """Host rows ↔ global arrays whose leading (row) axis is sharded over ``("data", "fsdp")``."""

    def __init__(self, mesh):
        self.mesh = mesh
        self.sharding = NamedSharding(mesh, P(("data", "fsdp")))

    def to_global(self, x: np.ndarray | None) -> jax.Array | None:
        """This process's rows → one global array (None stays None)."""
        if x is None:
            return None
        if jax.local_device_count() == jax.device_count():
            return jax.device_put(x, self.sharding)
        return jax.make_array_from_process_local_data(self.sharding, x)

    def to_local(self, x: jax.Array) -> np.ndarray:
        """This process's rows of a global array (the inverse of :meth:`to_global`)."""
        if jax.process_count() == 1:
            return np.asarray(jax.device_get(x))
        return np.asarray(multihost_utils.global_array_to_host_local_array(
            x, self.mesh, P(("data", "fsdp"))))


@dataclasses.dataclass(frozen=True)
class Prompts:
    """One step's prompts on this host, left-padded to the widest prompt of the data set (so every
    step has the same shapes)."""
    examples: tuple[D.Example, ...]  # this host's records, in row order
    tokens: np.ndarray  # int32 [b, P]
    mask: np.ndarray  # bool [b, P]
    teacher_tokens: np.ndarray | None  # the teacher's own prompts, when any record has one
    teacher_mask: np.ndarray | None
    row_ids: np.ndarray  # int32 [b]: global indices of the prompts (the sampler's PRNG streams)
    next_cursor: int  # the data position after this step


def prompt_widths(examples: list[D.Example]) -> tuple[int, int | None]:
    """The widest prompt of the data set, and the widest teacher prompt (None when no record has
    one): the widths every step's prompts are padded to. A pass over the whole data set, so a
    caller that builds many steps computes it once and hands it to :func:`prompts_at`."""
    width = max(len(e.prompt_ids) for e in examples)
    if not any(e.teacher_prompt_ids is not None for e in examples):
        return width, None
    return width, max(len(e.teacher_prompt_ids or e.prompt_ids) for e in examples)


def prompts_at(examples: list[D.Example], cursor: int, *, batch_size: int, shuffle_seed: int,
               pad_id: int, widths: tuple[int, int | None] | None = None) -> Prompts:
    """The prompts of the step that starts at data position ``cursor`` (this host's slice);
    ``widths``: :func:`prompt_widths` of ``examples`` (computed here when not given)."""
    idx = D.global_indices(len(examples), shuffle_seed, cursor, batch_size)
    local = idx[D.host_slice(batch_size, jax.process_index(), jax.process_count())]
    exs = tuple(examples[i] for i in local)
    width, t_width = widths or prompt_widths(examples)
    p, m = D.left_pad([e.prompt_ids for e in exs], width, pad_id)
    tp = tm = None
    if t_width is not None:
        tp, tm = D.left_pad([e.teacher_prompt_ids or e.prompt_ids for e in exs], t_width, pad_id)
    row_ids = (np.arange(len(exs), dtype=np.int32) + cursor
               + jax.process_index() * len(exs))
    return Prompts(exs, p, m, tp, tm, row_ids, cursor + batch_size)


def choose_source(loop, key: jax.Array, step: int) -> str:
    """The source of step ``step``'s batch (one of :data:`SOURCES`), drawn from the step's key."""
    if step < loop.cold_start_steps:
        return "cold_start"
    if loop.lmbda >= 1.0:
        return "on_policy"
    u = float(jax.random.uniform(jax.random.fold_in(key, 1)))
    if u < loop.lmbda:
        return "on_policy"
    return "seq_kd" if loop.seq_kd else "data"


def student_sampler(exp) -> SamplerConfig:
    """The config the student samples with: ``exp.sampler``, recording its top-``k`` tokens and
    entropy at the objective's temperature (``SamplerConfig.record_topk``) when the objective reads
    the sampling policy's top-k (topk_opd's PPO form) or looks ahead of the student's top-k
    candidates (lgr, whose look-ahead then needs no student forward)."""
    if {O.BEHAVIOR_TOPK_IDS, O.LGR_IDS} & O.required_inputs(exp.objective):
        return exp.sampler.replace(record_topk=exp.objective.k,
                                   record_temperature=exp.objective.temperature)
    return exp.sampler


def student_rollout(exp, s_graph, params, teacher, prompts, mask, key, row_ids, step: int):
    """An on-policy step's samples, their sampling metrics, and where the teacher rejected the
    student's drafts (None unless speculative). The student samples alone, teacher-mixed
    (``loop.teacher_mix``: ``sample/teacher_mix`` and the teacher's share) or drafts for the
    teacher's model (``loop.draft_tokens``: ``sample/acceptance_length``, completion tokens per
    teacher forward, and ``sample/acceptance_rate``, the share of drafts accepted)."""
    cfg = student_sampler(exp)
    if exp.loop.draft_tokens:
        roll, drafts = speculative_sample((s_graph, params), teacher.mixer(params), prompts, mask, key, cfg=cfg,
                                          draft_tokens=exp.loop.draft_tokens, row_ids=row_ids)
        return roll, {"sample/acceptance_length": drafts.acceptance_length(),
                      "sample/acceptance_rate": drafts.acceptance_rate()}, drafts.draft_error
    mix = exp.loop.teacher_mix_at(step)
    roll = sample(s_graph, params, prompts, mask, key, cfg=cfg, row_ids=row_ids,
                  teacher=teacher.mixer(params) if mix > 0 else None, teacher_mix=mix)
    stats = {"sample/teacher_mix": mix, **mixing_stats(roll)} if exp.loop.teacher_mix > 0 else {}
    return roll, stats, None


def sampling_prompts(rows: Rows, prompts: Prompts, source: str):
    """The global prompts a sampler starts from (a teacher rollout: the teacher's own prompt)."""
    if source in TEACHER_ROLLOUTS and prompts.teacher_tokens is not None:
        return rows.to_global(prompts.teacher_tokens), rows.to_global(prompts.teacher_mask)
    return rows.to_global(prompts.tokens), rows.to_global(prompts.mask)


def join(prompts, prompt_mask, completion, completion_mask) -> Sequences:
    """A left-padded prompt followed by the completion."""
    return Sequences.from_left_padded(jnp.concatenate([prompts, completion], 1),
                                      jnp.concatenate([prompt_mask, completion_mask], 1))


def assemble(prompts, prompt_mask, completion, completion_mask, behavior_logp, t_prompts=None,
             t_mask=None, loss_mask=None) -> TrainBatch:
    """Sequences = left-padded prompt ++ completion, for the student and (own prompt) the
    teacher; ``loss_mask``: the completion tokens the loss counts (default: all of them; a
    multi-turn episode's student tokens, not its environment's)."""
    loss_mask = completion_mask if loss_mask is None else loss_mask
    return TrainBatch(student=join(prompts, prompt_mask, completion, completion_mask),
                      targets=completion, loss_mask=loss_mask, behavior_logp=behavior_logp,
                      teacher=None if t_prompts is None else join(t_prompts, t_mask, completion,
                                                                  completion_mask))


def completion_width(longest: int, width: int, slices: int) -> int:
    """How many of a ``width``-column completion buffer a batch keeps when its longest completion
    has ``longest`` tokens: the smallest ``ceil(width * j / slices)``, ``j = 1 .. slices``, that
    holds it. The columns cut hold padding only (every loss masks them), so the train step and
    the teacher's scoring skip them; ``slices`` bounds the distinct widths, hence the compiles of
    each (1: never cut)."""
    for j in range(1, slices + 1):
        if -(-width * j // slices) >= longest:
            return -(-width * j // slices)
    return width


@jax.jit
def _longest(completion_mask: jax.Array) -> jax.Array:
    """One past the last completion column any row uses."""
    cols = jnp.arange(1, completion_mask.shape[1] + 1)
    return jnp.max(jnp.where(completion_mask, cols, 0))


_masked_mean = jax.jit(masked_mean)


def mixing_stats(roll) -> dict[str, float]:
    """A teacher-mixed rollout's teacher share, averaged over its completion tokens:
    ``sample/from_teacher`` (the fraction of tokens the teacher drew: ``teacher_blend="coin"``)
    or ``sample/teacher_weight`` (the blends' mean beta: ``"geometric"``); empty without a teacher."""
    return {f"sample/{name}": float(_masked_mean(getattr(roll, name), roll.completion_mask))
            for name in ("from_teacher", "teacher_weight") if getattr(roll, name) is not None}


def from_rollout(rows: Rows, prompts: Prompts, roll, num_samples: int,
                 slices: int = 1, golden: np.ndarray | None = None, pad_id: int = 0,
                 draft_error=None) -> TrainBatch:
    """The batch of sampled completions (``num_samples`` per prompt), with each row's prompts;
    the completion columns cut by :func:`completion_width` (``slices``). ``golden``: bool ``[b]``
    over this host's prompts; the last sample of each marked prompt is replaced by its record's
    reference completion, cut at the rollout's width, behaviour log-prob 0 until the caller sets
    the student's own (see :func:`golden_rows`). What the sampler recorded beside each token
    (``SamplerConfig.record_topk``) becomes the extras :data:`RECORDED_EXTRAS` names, unless
    golden rows replaced some samples (their records would be the replaced samples'). ``draft_error``
    (bool ``[R, P + N]``, speculative rollouts) becomes the float extra :data:`O.DRAFT_ERROR`."""
    def rep(x):
        return None if x is None else rows.to_global(np.repeat(x, num_samples, axis=0))
    start = roll.prompt_len
    width = roll.tokens.shape[1] - start
    tokens, cmask, logp = (x[:, start:] for x in (roll.tokens, roll.completion_mask, roll.logp))
    if golden is not None:
        tokens, cmask, logp = (np.array(rows.to_local(x)) for x in (tokens, cmask, logp))
        comp, comp_mask = D.right_pad([e.completion_ids for e in prompts.examples], width, pad_id)
        r = _last_samples(golden, num_samples)
        tokens[r], cmask[r], logp[r] = comp[golden], comp_mask[golden], 0.0
        tokens, cmask, logp = (rows.to_global(x) for x in (tokens, cmask, logp))
    end = width if slices == 1 else completion_width(int(_longest(cmask)), width, slices)
    recorded = {} if golden is not None or roll.entropy is None else {
        name: getattr(roll, field)[:, start:start + end] for field, name in RECORDED_EXTRAS.items()}
    if draft_error is not None:
        recorded[O.DRAFT_ERROR] = draft_error[:, start:start + end].astype(jnp.float32)
    return assemble(rep(prompts.tokens), rep(prompts.mask), tokens[:, :end], cmask[:, :end],
                    logp[:, :end], rep(prompts.teacher_tokens), rep(prompts.teacher_mask)).replace(
                        group=num_samples, extras=recorded)


def _last_samples(golden: np.ndarray, num_samples: int) -> np.ndarray:
    """The rows of the marked prompts' last samples (rows come ``num_samples`` per prompt)."""
    return np.flatnonzero(golden) * num_samples + num_samples - 1


def with_own_logp(rows: Rows, batch: TrainBatch, golden: np.ndarray, num_samples: int,
                  own_logp: Callable[[TrainBatch], jax.Array]) -> TrainBatch:
    """``batch`` whose golden rows (:func:`from_rollout`'s ``golden``) take the behaviour log-prob
    ``own_logp(batch)`` (the student's own, so their importance ratio starts at 1)."""
    row = np.zeros(len(golden) * num_samples, bool)
    row[_last_samples(golden, num_samples)] = True
    where = rows.to_global(row)[:, None]
    return batch.replace(behavior_logp=jnp.where(where, own_logp(batch), batch.behavior_logp))


def golden_rows(loop, key: jax.Array, prompts: Prompts) -> np.ndarray:
    """StableOPD's rollout mixture: which of this host's prompts have their last sample replaced
    by the reference completion (each with probability ``loop.golden_fraction``, drawn from the
    step's key per global prompt index, so every host and a resumed run draw the same)."""
    k = jax.random.fold_in(key, 3)
    u = jax.vmap(lambda i: jax.random.uniform(jax.random.fold_in(k, i)))(jnp.asarray(prompts.row_ids))
    return np.asarray(u) < loop.golden_fraction


def from_data(rows: Rows, prompts: Prompts, sampler: SamplerConfig, slices: int = 1) -> TrainBatch:
    """The batch of the records' reference completions (one row per prompt), cut at the
    sampler's generation bucket, then by :func:`completion_width` (``slices``, the longest
    completion over every host's rows); their behaviour log-prob is undefined and set to 0."""
    if any(e.completion_ids is None for e in prompts.examples):
        raise TrainingError("an off-policy step (loop.lmbda < 1, seq_kd off) trains on the "
                            "data's reference completions, but some records have none")
    bucket = sampler.new_token_bucket()
    longest = max(min(len(e.completion_ids), bucket) for e in prompts.examples)
    if jax.process_count() > 1:
        longest = int(np.max(multihost_utils.process_allgather(np.int32(longest))))
    c, cm = D.right_pad([e.completion_ids for e in prompts.examples],
                        completion_width(longest, bucket, slices), sampler.pad_id)
    g = rows.to_global
    return assemble(g(prompts.tokens), g(prompts.mask), g(c), g(cm),
                    g(np.zeros(c.shape, np.float32)), g(prompts.teacher_tokens),
                    g(prompts.teacher_mask))


def with_rewards(rows: Rows, batch: TrainBatch, prompts: Prompts,
                 reward_fn: Callable[[D.Example, np.ndarray], float], episodes: bool = False) -> TrainBatch:
    """``batch`` with the ``reward`` extra: ``reward_fn(example, completion)`` of each of this
    host's rows, broadcast over the row's tokens; of multi-turn ``episodes``, the student's last
    turn (its final answer)."""
    comp, mask = rows.to_local(batch.targets), rows.to_local(batch.loss_mask)
    per = len(comp) // len(prompts.examples)  # rows per prompt (samples, or 1 for data)
    answer = (lambda c, m: np.asarray(last_turn(c, m), c.dtype)) if episodes else (lambda c, m: c[m])
    r = np.array([reward_fn(prompts.examples[i // per], answer(comp[i], mask[i]))
                  for i in range(len(comp))], np.float32)
    reward = rows.to_global(np.broadcast_to(r[:, None], comp.shape).copy())
    return batch.replace(extras={**batch.extras, "reward": reward})


def with_contexts(rows: Rows, batch: TrainBatch, prompts: Prompts, teacher, params,
                  contexts: list[str], sampler: SamplerConfig) -> TrainBatch:
    """``batch`` with the teacher's log-probs of its completions under the records' other
    contexts (UniSD's auxiliary and bad teachers: ``contexts``, the extras the objective reads)."""
    extras, k = dict(batch.extras), sampler.num_samples

    def logp(prompt_lists):
        p, m = D.left_pad(prompt_lists, max(len(x) for x in prompt_lists), sampler.pad_id)
        rep = lambda x: rows.to_global(np.repeat(x, k, axis=0))  # noqa: E731
        return teacher.context_logp(rep(p), rep(m), batch.targets, batch.loss_mask, params)
    records = [e.record for e in prompts.examples]
    if "aux_teacher_logp" in contexts:
        aux = [r[CONTEXT_FIELDS["aux_teacher_logp"]] for r in records]
        if any(len(a) != len(aux[0]) for a in aux):
            raise TrainingError("every record needs the same number of aux_teacher_prompts_ids "
                                "contexts")
        extras["aux_teacher_logp"] = jnp.stack(
            [logp([tuple(a[j]) for a in aux]) for j in range(len(aux[0]))], axis=-1)
    if "bad_teacher_logp" in contexts:
        extras["bad_teacher_logp"] = logp(
            [tuple(r[CONTEXT_FIELDS["bad_teacher_logp"]]) for r in records])
    return batch.replace(extras=extras)


@functools.lru_cache(maxsize=None)
def _slicer(sharding):
    """A jitted ``rows [start, start + size)`` of every array of a batch, sharded like a batch."""
    def cut(batch, start: int, size: int):
        return jax.tree.map(lambda x: jax.lax.slice_in_dim(x, start, start + size, axis=0), batch)
    return jax.jit(cut, static_argnums=(1, 2), out_shardings=sharding)


def minibatch(rows: Rows, batch: TrainBatch, index: int, count: int) -> TrainBatch:
    """Slice ``index`` of ``count`` equal slices of ``batch``'s rows (whole prompts with all their
    samples, in order: ``loop.minibatches``), sharded over the data axes as a batch is."""
    if count == 1:
        return batch
    size = batch.targets.shape[0] // count
    return _slicer(rows.sharding)(batch, index * size, size)
