"""The jitted train step: score with the teacher, differentiate the student's objective, update.

``train_step`` is a pure function of data (the train state, a batch, the teacher's parameters)
with the static pieces (model graph definitions, optimizer, objective, step options) bound by
:func:`make_train_step`. Loss normalisation is global: with gradient accumulation the step
divides each loss term once, by its count over the *whole* batch, so ``grad_accum = M`` gives
the gradient of the same loss as one big micro-batch. For token-local objectives that count is
the number of valid tokens, known from the mask; for the others (quantile selections,
sequence weights) a forward-only pass over the micro-batches finds the counts first.
"""

import dataclasses
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx, struct
from jax.sharding import NamedSharding, PartitionSpec as P

import opd_jax.objectives as O
from opd_jax.models import lora
from opd_jax.training.batch import STUDENT_TURN, TrainBatch, completion_hidden
from opd_jax.training.extrapolation import last_scale

Array = jax.Array
sg = jax.lax.stop_gradient


@dataclasses.dataclass(frozen=True, kw_only=True)
class StepConfig:
    """Static options of the train step."""
    grad_accum: int = 1  # micro-batches per optimizer step (the batch must divide evenly)
    chunk_size: int = 256  # completion positions per vocabulary block (memory vs. speed)
    one_pass: bool = True  # token-local objectives: gradient computed in the fused forward

    def __post_init__(self):
        if self.grad_accum < 1:
            raise ValueError(f"grad_accum must be >= 1, got {self.grad_accum}.")
        if self.chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {self.chunk_size}.")


@struct.dataclass
class TrainState:
    """Everything that changes during training, as data (so Orbax and sharding see plain trees)."""
    step: Array  # int32 [], optimizer steps taken
    params: Any  # the student's nnx.State of parameters
    opt_state: Any
    obj_state: Any
    key: Array  # uint32 [2], raw PRNG key data (checkpointable)
    cursor: Array  # int32 [], prompts consumed from the data stream


def _is_adapter(path, _) -> bool:
    return any(str(getattr(k, "key", k)).startswith(lora.PREFIX) for k in path)


def trainable(params):
    """``(trained, frozen)``: the student's low-rank adapters and the rest when it has adapters
    (:mod:`opd_jax.models.lora`), else all of ``params`` and None. The optimizer sees only the
    first; gradients are taken of it alone."""
    if not any(_is_adapter(path, None) for path, _ in nnx.to_flat_state(params)):
        return params, None
    return nnx.split_state(params, _is_adapter, ...)


def _joined(trained, frozen):
    return trained if frozen is None else nnx.merge_state(trained, frozen)


def with_student_base(teacher_params, student_params):
    """A teacher's parameters as its model takes them: the student's own for None (the student
    is its own teacher); a teacher that holds only low-rank adapters (the initial or EMA copy of
    a student with adapters, which shares the student's frozen base weights rather than holding
    them twice) with the student's frozen weights joined in; any other as it is."""
    if teacher_params is None:
        return student_params
    if isinstance(teacher_params, nnx.State):
        own, rest = trainable(teacher_params)
        if rest is not None and not jax.tree.leaves(rest):
            return _joined(own, trainable(student_params)[1])
    return teacher_params


def init_state(params, tx: optax.GradientTransformation, objective: O.Objective, seed: int,
               cursor: int = 0) -> TrainState:
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(trainable(params)[0]),
                      obj_state=objective.init(), key=jax.random.key_data(jax.random.key(seed)),
                      cursor=jnp.asarray(cursor, jnp.int32))


def sharded_init_state(params, tx: optax.GradientTransformation, objective: O.Objective, seed: int,
                       mesh, param_shardings, cursor: int = 0) -> tuple[TrainState, TrainState]:
    """The initial state placed on ``mesh``, and the sharding of every leaf.

    Optimizer moments take their parameter's sharding; scalars and the objective state are
    replicated. The state is built by one jitted function with these ``out_shardings``, so no
    leaf is first materialised on a single device.
    """
    rep = NamedSharding(mesh, P())
    fn = partial(init_state, tx=tx, objective=objective, seed=seed, cursor=cursor)
    abstract = jax.eval_shape(fn, params)
    opt_sh = optax.tree_map_params(tx, lambda _, s: s, abstract.opt_state, trainable(param_shardings)[0],
                                   transform_non_params=lambda _: rep)
    shardings = TrainState(step=rep, params=param_shardings, opt_state=opt_sh,
                           obj_state=jax.tree.map(lambda _: rep, abstract.obj_state), key=rep,
                           cursor=rep)
    return jax.jit(fn, out_shardings=shardings)(params), shardings


def teacher_view(batch: TrainBatch, teacher_graphdef, teacher_params, n: int):
    """The teacher's completion hidden states and head, or None for a sparse/absent teacher.

    Several teachers (tuples of graph definitions and parameters) arrive as one: their heads
    stacked along the hidden axis, ``[sum_j D_j, V]``, and ``batch.teacher_hidden`` holding each
    teacher's hidden states times its per-row weight, concatenated the same way (see
    :func:`combine_teachers`), so that ``hidden @ head = sum_j w_j * logits_j``.
    """
    if teacher_graphdef is None:
        return None, None
    if isinstance(teacher_graphdef, tuple):
        if batch.teacher_hidden is None:
            raise ValueError("several teachers need batch.teacher_hidden (combine_teachers)")
        heads = [nnx.merge(g, sg(p)).lm_head_weight().astype(jnp.float32)
                 for g, p in zip(teacher_graphdef, teacher_params)]
        return sg(batch.teacher_hidden), sg(jnp.concatenate(heads, axis=0))
    teacher = nnx.merge(teacher_graphdef, sg(teacher_params))
    if batch.teacher_hidden is not None:
        return sg(batch.teacher_hidden), sg(teacher.lm_head_weight())
    hidden = completion_hidden(teacher, batch.teacher_sequences, n, batch.teacher_rows_group)
    return sg(hidden), sg(teacher.lm_head_weight())


def combine_teachers(hidden: list[Array] | tuple[Array, ...], weights: Array) -> Array:
    """Several teachers' completion hidden states ``[B, N, D_j]`` and per-row weights ``[B, J]``
    → ``[B, N, sum_j D_j]``, the hidden states of the combined teacher (see ``teacher_view``)."""
    if weights.shape != (hidden[0].shape[0], len(hidden)):
        raise ValueError(f"teacher weights have shape {weights.shape}; expected "
                         f"(rows, teachers) = {(hidden[0].shape[0], len(hidden))}")
    return jnp.concatenate([h.astype(jnp.float32) * weights[:, j, None, None].astype(jnp.float32)
                            for j, h in enumerate(hidden)], axis=-1)


def _sparse_teacher(extras):
    if "teacher_topk_ids" in extras:
        return O.TeacherTopK(extras["teacher_topk_ids"], extras["teacher_topk_logp"])
    return None


def policy_drift(logp, behavior_logp, mask) -> dict[str, Array]:
    """How far the student has moved from the policy that sampled its tokens, over ``mask``:
    ``policy/ratio_dev``, the mean ``|pi / mu - 1|`` of the sampled tokens, and
    ``policy/approx_kl``, the mean ``log mu - log pi`` (an estimate of ``KL(mu || pi)``). Both are 0
    on the first step on fresh samples (untruncated, at the sampler's temperature) and grow over
    the later steps on the same batch (``loop.minibatches``, ``loop.epochs``)."""
    log_ratio = jnp.where(mask, sg(logp) - behavior_logp, 0.0)
    return {"policy/ratio_dev": O.masked_mean(jnp.abs(jnp.expm1(log_ratio)), mask),
            "policy/approx_kl": O.masked_mean(-log_ratio, mask)}


def _micro(params, mb: TrainBatch, teacher_params, obj_state, step, key, scales, den_tokens, *,
           graphdef, teacher_graphdef, objective: O.Objective, cfg: StepConfig, drift: bool = False):
    """Loss (already divided by the global counts) of one micro-batch, and its aux outputs
    (``drift``: also :func:`policy_drift`, for objectives whose loss reads the behaviour log-prob)."""
    n = mb.completion_len
    t_hidden, t_head = teacher_view(mb, teacher_graphdef, teacher_params, n)
    model = nnx.merge(graphdef, params)
    hidden, head = completion_hidden(model, mb.student, n, mb.group), model.lm_head_weight()
    extras = {"behavior_logp": mb.behavior_logp, **mb.extras}
    topk = _sparse_teacher(extras)
    vocab = dict(tokens=mb.targets, mask=mb.loss_mask, hidden=hidden, head=head,
                 teacher_hidden=t_hidden, teacher_head=t_head, teacher_topk=topk)
    if cfg.one_pass and objective.token_loss is not None:
        weights = mb.loss_mask.astype(jnp.float32) / jnp.maximum(den_tokens, 1.0)
        loss, feats = O.fused_token_loss(objective.token_loss, objective.features, weights=weights,
                                         extras=extras, step=step, chunk_size=cfg.chunk_size,
                                         **vocab)
        ctx = O.TokenCtx(mask=mb.loss_mask, features=feats, extras=extras, step=step, key=key)
        terms, obj_state, metrics = objective.apply(ctx, obj_state)
        terms = jax.tree.map(sg, terms)
    else:
        feats = O.compute_features(objective.features, chunk_size=cfg.chunk_size, **vocab)
        # final hidden states at the completion (the student's carries gradient), for
        # hidden-state matching (UniSD)
        extras = {**extras, "hidden": hidden}
        if t_hidden is not None:
            extras["teacher_hidden"] = t_hidden
        ctx = O.TokenCtx(mask=mb.loss_mask, features=feats, extras=extras, step=step, key=key)
        terms, obj_state, metrics = objective.apply(ctx, obj_state)
        if scales is None:  # one micro-batch: its counts are the global counts
            loss = O.total(terms)
        else:
            loss = sum(t.num * scales[k] for k, t in terms.items())
    if drift and "logp" in feats:
        metrics = {**metrics, **policy_drift(feats["logp"], mb.behavior_logp, mb.loss_mask.astype(bool))}
    if STUDENT_TURN in mb.extras:
        metrics = {**metrics, **turn_metrics(mb.extras[STUDENT_TURN], mb.loss_mask, feats.get("logp"),
                                             feats.get("teacher_logp", extras.get("teacher_logp")))}
    return loss, (obj_state, terms, metrics)


def turn_metrics(member, mask, logp=None, teacher_logp=None) -> dict[str, O.Reduced]:
    """Per student turn ``k`` of multi-turn episodes (``member``: :data:`STUDENT_TURN`):
    ``turns/k/token_share``, its share of the loss tokens, and with both log-probs
    ``turns/k/reverse_kl``, the mean ``log p - log q`` of its sampled tokens (the sampled-token
    estimate of the student's reverse KL to the teacher, whose negative OPD's advantage is). As
    sums and counts, so that micro-batches combine exactly."""
    m = mask.astype(jnp.float32)
    out = {}
    for k in range(member.shape[-1]):
        inside = member[..., k].astype(jnp.float32) * m
        out[f"turns/{k + 1}/token_share"] = O.Reduced(jnp.sum(inside), jnp.sum(m))
        if logp is not None and teacher_logp is not None:
            gap = jnp.where(inside > 0, sg(logp) - sg(teacher_logp), 0.0)
            out[f"turns/{k + 1}/reverse_kl"] = O.Reduced(jnp.sum(gap), jnp.sum(inside))
    return out


def _split(batch: TrainBatch, m: int) -> TrainBatch:
    def one(x):
        if x.shape[0] % m:
            raise ValueError(f"batch size {x.shape[0]} is not divisible by grad_accum={m}.")
        return x.reshape(m, x.shape[0] // m, *x.shape[1:])
    return jax.tree.map(one, batch)


def train_step(state: TrainState, batch: TrainBatch, teacher_params, *, graphdef,
               teacher_graphdef, tx: optax.GradientTransformation, objective: O.Objective,
               cfg: StepConfig, drift: bool = False) -> tuple[TrainState, dict[str, Array]]:
    """One optimizer step on ``batch``; returns the new state and scalar metrics.

    ``teacher_params=None`` makes the student its own teacher (stop-gradient), for
    self-distillation with the current weights; a teacher of adapters alone takes the student's
    frozen base weights (``with_student_base``).
    """
    batch.check()
    teacher_params = with_student_base(teacher_params, state.params)
    key = jax.random.fold_in(jax.random.wrap_key_data(state.key), state.step)
    m = cfg.grad_accum
    trained, frozen = trainable(state.params)
    micro = partial(_micro, graphdef=graphdef, teacher_graphdef=teacher_graphdef,
                    objective=objective, cfg=cfg, drift=drift)
    differentiated = lambda tr, *args: micro(_joined(tr, frozen), *args)  # noqa: E731
    den_tokens = jnp.sum(batch.loss_mask.astype(jnp.float32))
    mbs = _split(batch, m)
    scales = None
    if m > 1 and not (cfg.one_pass and objective.token_loss is not None):
        scales = _global_scales(micro, state, mbs, teacher_params, key, den_tokens)

    def body(carry, xs):
        grads, loss, obj_state = carry
        mb, i = xs
        (l, (obj_state, terms, metrics)), g = jax.value_and_grad(differentiated, has_aux=True)(
            trained, mb, teacher_params, obj_state, state.step, jax.random.fold_in(key, i),
            scales, den_tokens)
        grads = jax.tree.map(jnp.add, grads, g)
        return (grads, loss + l, obj_state), (terms, metrics)

    zeros = jax.tree.map(jnp.zeros_like, trained)
    (grads, loss, obj_state), (terms, metrics) = jax.lax.scan(
        body, (zeros, jnp.zeros((), jnp.float32), state.obj_state), (mbs, jnp.arange(m)))
    updates, opt_state = tx.update(grads, state.opt_state, trained)
    params = _joined(optax.apply_updates(trained, updates), frozen)
    out = {"loss/total": loss, "opt/grad_norm": optax.tree.norm(grads),
           "opt/update_norm": optax.tree.norm(updates), "loss/tokens": den_tokens,
           "loss/max_len": jnp.max(jnp.sum(batch.loss_mask.astype(jnp.int32), axis=1))}
    for k in terms:  # each term over the whole batch: summed counts, one division
        out[f"loss/{k}"] = O.Reduced(jnp.sum(terms[k].num), jnp.sum(terms[k].den)).value()
    # a metric given as a sum and a count (turn_metrics) is combined over micro-batches exactly
    out.update({k: O.Reduced(jnp.sum(v.num), jnp.sum(v.den)).value() if isinstance(v, O.Reduced)
                else jnp.mean(v) for k, v in metrics.items()})
    if (scale := last_scale(opt_state)) is not None:
        out["opt/extrapolation_scale"] = scale
    new = state.replace(step=state.step + 1, params=params, opt_state=opt_state, obj_state=obj_state)
    return new, out


def _global_scales(micro, state, mbs, teacher_params, key, den_tokens):
    """``1 / count`` of every loss term over all micro-batches (a forward-only pass)."""
    def body(obj_state, xs):
        mb, i = xs
        _, (obj_state, terms, _) = micro(state.params, mb, teacher_params, obj_state, state.step,
                                         jax.random.fold_in(key, i), None, den_tokens)
        return obj_state, {k: t.den for k, t in terms.items()}
    _, dens = jax.lax.scan(body, state.obj_state, (mbs, jnp.arange(jax.tree.leaves(mbs)[0].shape[0])))
    return {k: sg(1.0 / jnp.maximum(jnp.sum(d), 1e-30)) for k, d in dens.items()}


def make_train_step(*, graphdef, teacher_graphdef, tx, objective, cfg: StepConfig,
                    state_shardings=None, batch_shardings=None, teacher_shardings=None,
                    drift: bool = False):
    """``jax.jit`` of :func:`train_step` with the static pieces bound; the state is donated.

    ``state_shardings``: the new state's (and with ``batch_shardings``, the inputs'). Left to XLA,
    the new state's are equivalent but not equal (``P()`` for a replicated leaf): not those that
    checkpoints restore into, and a second entry in jit's cache for the second step."""
    fn = partial(train_step, graphdef=graphdef, teacher_graphdef=teacher_graphdef, tx=tx,
                 objective=objective, cfg=cfg, drift=drift)
    kwargs = {}
    if state_shardings is not None:
        kwargs["out_shardings"] = (state_shardings, None)
        if batch_shardings is not None:
            kwargs["in_shardings"] = (state_shardings, batch_shardings, teacher_shardings)
    return jax.jit(fn, donate_argnums=(0,), **kwargs)
