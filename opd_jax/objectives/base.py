"""The composition layer: features, the token context, and objectives.

An objective is computed in two phases, so that no phase needs more memory than it must:

1. **Vocabulary phase.** Named features (:class:`Feature`) — per-token functions of the student and
   teacher logits, such as ``token_logp``, ``reverse_kl`` or the teacher's entropy — reduce
   the ``[..., V]`` axis to one float per token. :mod:`opd_jax.objectives.vocab` evaluates
   them naively, chunked over tokens, or fused with the LM head; all three agree.
2. **Token phase.** A pure function of a :class:`TokenCtx` (the features plus the rollout's
   per-token inputs) builds advantages, gates, surrogates and returns named
   :class:`~opd_jax.objectives.reductions.Reduced` terms.

An :class:`Objective` bundles the features it needs with its token-phase function. Objectives
compose with :func:`weighted_sum`; :mod:`opd_jax.objectives.recipes` builds the papers'
methods from a typed config, in one place.
"""

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import struct

from opd_jax.objectives.reductions import Reduced, token_mean
from opd_jax.objectives.topk import TeacherTopK

Array = jax.Array

# Names of the inputs a feature can read (fields of VocabInputs; "teacher" picks the dense
# teacher when there is one, else the sparse one; "extra:<name>" one of the batch's per-token
# extra inputs, see `extra`).
STUDENT, TEACHER_LOGITS, TEACHER_TOPK, TEACHER, TOKENS = (
    "logits", "teacher_logits", "teacher_topk", "teacher", "tokens")
EXTRA_PREFIX = "extra:"


def extra(name: str) -> str:
    """The feature-input name of the per-token extra input ``name`` (e.g. the behaviour
    policy's top-k log-probs), for :func:`feature`."""
    return EXTRA_PREFIX + name


def mask_rows(x: Array, mask: Array) -> Array:
    """``x [B, T, ...]`` with the positions where ``mask [B, T]`` is False replaced by zeros."""
    m = mask.astype(bool).reshape(mask.shape + (1,) * (x.ndim - mask.ndim))
    return jnp.where(m, x, jnp.zeros((), x.dtype))


class VocabInputs(NamedTuple):
    """One block of rows of the vocabulary phase (all ``[N, ...]``)."""
    logits: Array  # student logits [N, V]; the only input that carries gradient
    teacher_logits: Array | None  # [N, V]
    teacher_topk: TeacherTopK | None  # [N, K]
    tokens: Array  # sampled tokens [N]
    extras: Mapping[str, Array] | None = None  # per-token extra inputs [N, ...], no gradient

    def get(self, name: str):
        if name.startswith(EXTRA_PREFIX):
            key = name[len(EXTRA_PREFIX):]
            if not self.extras or key not in self.extras:
                raise ValueError(f"a feature reads the extra input {key!r}, which this batch does "
                                 f"not have (extras: {sorted(self.extras or {})}); see "
                                 "opd_jax.objectives.required_inputs for what a recipe needs.")
            return self.extras[key]
        if name == TEACHER:
            value = self.teacher_logits if self.teacher_logits is not None else self.teacher_topk
        else:
            value = getattr(self, name)
        if value is None:
            raise ValueError(f"a feature needs {name!r} but it was not provided; a sparse teacher "
                             "(TeacherTopK) cannot feed full-vocabulary features.")
        return value


@dataclasses.dataclass(frozen=True)
class Feature:
    """A per-token function of the vocabulary inputs: ``fn(*inputs, **kwargs) -> [N]``.

    Features are plain data (hashable, comparable), so two objectives asking for the same
    quantity share one computation, and a name used twice for different things is an error.
    """
    fn: Callable[..., Array]
    inputs: tuple[str, ...]
    kwargs: tuple[tuple[str, Any], ...] = ()

    def __call__(self, v: VocabInputs) -> Array:
        return self.fn(*(v.get(n) for n in self.inputs), **dict(self.kwargs))

    @property
    def needs_teacher_logits(self) -> bool:
        return TEACHER_LOGITS in self.inputs

    @property
    def extra_inputs(self) -> tuple[str, ...]:
        """The names of the per-token extra inputs this feature reads."""
        return tuple(n[len(EXTRA_PREFIX):] for n in self.inputs if n.startswith(EXTRA_PREFIX))


def feature(fn: Callable[..., Array], *inputs: str, **kwargs) -> Feature:
    """``feature(reverse_kl, "logits", "teacher_logits", temperature=1.0)``; an extra input is
    named with :func:`extra`."""
    for name in inputs:
        if (name not in (STUDENT, TEACHER_LOGITS, TEACHER_TOPK, TEACHER, TOKENS)
                and not (name.startswith(EXTRA_PREFIX) and len(name) > len(EXTRA_PREFIX))):
            raise ValueError(f"unknown feature input {name!r}")
    return Feature(fn, tuple(inputs), tuple(sorted(kwargs.items())))


def merge_features(*groups: Mapping[str, Feature]) -> dict[str, Feature]:
    """Union of feature maps; the same name must mean the same feature."""
    out: dict[str, Feature] = {}
    for group in groups:
        for name, feat in group.items():
            if name in out and out[name] != feat:
                raise ValueError(f"feature {name!r} is defined twice with different meanings: "
                                 f"{out[name]} vs {feat}; rename one.")
            out[name] = feat
    return out


@struct.dataclass
class TokenCtx:
    """Everything the token phase may read; per-token arrays are ``[B, T]`` (or ``[B, T, ...]``).

    ``features`` come from the vocabulary phase (``"logp"``, the student's log-prob of the
    sampled token, carries the gradient; so does any divergence feature). ``extras`` are the
    rollout's other per-token inputs, leading axes ``[B, T]``: ``"behavior_logp"`` (recorded by
    the sampler), a sparse teacher's ``"teacher_logp"``, ``"reward"``, auxiliary teachers'
    log-probs ``[B, T, K]``, hidden states ``[B, T, D]``... ``step`` is the optimizer step and
    ``key`` a PRNG key for stochastic token selection.
    """
    mask: Array
    features: dict[str, Array]
    extras: dict[str, Array] = struct.field(default_factory=dict)
    step: Array = struct.field(default_factory=lambda: jnp.zeros((), jnp.int32))
    key: Array | None = None

    def __getitem__(self, name: str) -> Array:
        if name in self.features:
            return self.features[name]
        if name in self.extras:
            return self.extras[name]
        raise KeyError(f"{name!r} is neither a feature ({sorted(self.features)}) nor an extra "
                       f"input ({sorted(self.extras)}) of this batch.")

    def __contains__(self, name: str) -> bool:
        return name in self.features or name in self.extras

    def masked(self) -> "TokenCtx":
        """This context with every per-token extra zeroed where ``mask`` is False.

        Padding may hold anything (a ``-inf`` behaviour or sparse-teacher log-prob, a NaN
        reward); zeroing it before any arithmetic is what makes masked positions contribute
        exactly 0 with a zero gradient. Features are already 0 there (vocabulary phase).
        """
        b_t = self.mask.shape
        extras = {k: mask_rows(v, self.mask) if v.shape[:len(b_t)] == b_t else v
                  for k, v in self.extras.items()}
        return self.replace(extras=extras)

    @property
    def logp(self) -> Array:
        return self["logp"]

    @property
    def behavior_logp(self) -> Array:
        return self["behavior_logp"]

    @property
    def teacher_logp(self) -> Array:
        return self["teacher_logp"]


Terms = dict[str, Reduced]
Metrics = dict[str, Array]


class Objective(NamedTuple):
    """Features to compute, and the token-phase function that turns them into loss terms.

    ``apply(ctx, state) -> (terms, state, metrics)``; the loss is
    :func:`~opd_jax.objectives.reductions.total` of the terms. ``token_loss``, when set, is the
    same objective written per token (``ctx -> [B, T]``, averaged over valid tokens): such an
    objective is *token-local* and can run through the one-pass fused path
    (:func:`opd_jax.objectives.vocab.fused_token_loss`).
    """
    features: Mapping[str, Feature]
    apply: Callable[[TokenCtx, Any], tuple[Terms, Any, Metrics]]
    init: Callable[[], Any] = lambda: ()
    token_loss: Callable[[TokenCtx], Array] | None = None


def stateless(fn: Callable[[TokenCtx], tuple[Terms, Metrics]], features: Mapping[str, Feature]
              ) -> Objective:
    """An objective from ``fn(ctx) -> (terms, metrics)``; ``fn`` sees :meth:`TokenCtx.masked`."""
    def apply(ctx, state):
        terms, metrics = fn(ctx.masked())
        return terms, state, metrics
    return Objective(dict(features), apply)


def token_objective(token_loss: Callable[[TokenCtx], Array], features: Mapping[str, Feature], *,
                    name: str = "loss",
                    metrics: Callable[[TokenCtx], Metrics] | None = None) -> Objective:
    """A token-local objective: ``mean over valid tokens of token_loss(ctx)``.

    ``token_loss`` and ``metrics`` see :meth:`TokenCtx.masked` (also on the fused one-pass
    path, which calls the objective's ``token_loss`` directly).
    """
    def masked_loss(ctx):
        return token_loss(ctx.masked())

    def apply(ctx, state):
        terms = {name: token_mean(masked_loss(ctx), ctx.mask)}
        return terms, state, ({} if metrics is None else metrics(ctx.masked()))
    return Objective(dict(features), apply, token_loss=masked_loss)


def coefficient(coef, step) -> Array:
    """A number, or a schedule ``step -> number`` (any optax schedule) evaluated at ``step``."""
    return jnp.asarray(coef(step) if callable(coef) else coef, jnp.float32)


def weighted_sum(**parts: tuple[Any, Objective]) -> Objective:
    """``sum_i coef_i * objective_i``, each coefficient a number or a schedule of the step.

    Terms and metrics are prefixed with the part's name (``"fkl/loss"``); each term keeps its
    own denominator. The sum is token-local when every part is.
    """
    if not parts:
        raise ValueError("weighted_sum needs at least one part")
    features = merge_features(*(obj.features for _, obj in parts.values()))

    def init():
        return {name: obj.init() for name, (_, obj) in parts.items()}

    def apply(ctx, state):
        terms, metrics, new_state = {}, {}, {}
        for name, (coef, obj) in parts.items():
            t, new_state[name], m = obj.apply(ctx, state[name])
            c = coefficient(coef, ctx.step)
            terms.update({f"{name}/{k}": r.scale(c) for k, r in t.items()})
            metrics.update({f"{name}/{k}": v for k, v in m.items()})
            metrics[f"{name}/coef"] = c
        return terms, new_state, metrics

    token_loss = None
    if all(obj.token_loss is not None for _, obj in parts.values()):
        def token_loss(ctx):
            return sum(coefficient(c, ctx.step) * obj.token_loss(ctx) for c, obj in parts.values())
    return Objective(features, apply, init, token_loss)
