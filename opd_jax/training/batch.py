"""What one train step consumes: token sequences for the student and the teacher, and the
completion targets with their per-token inputs.

Every sequence is a left-padded prompt followed by the same ``N`` completion slots, so the
completion occupies the last ``N`` positions of the student's sequence *and* of the teacher's,
whatever their prompt lengths. That is how a teacher seeing a different, privileged prompt
(self-distillation) is aligned with the student: position ``-N - 1 + i`` of either sequence
predicts completion token ``i``.
"""

import jax
import jax.numpy as jnp
from flax import struct

from opd_jax.models import KVCache, init_cache

Array = jax.Array

# What a sampler records beside each completion token (``SamplerConfig.record_topk``), as the
# batch extras that carry it: the sampling policy's top-k ids and log-probs (what topk_opd's PPO
# form reads) and its entropy.
BEHAVIOR_ENTROPY = "behavior_entropy"
RECORDED_EXTRAS = {"topk_ids": "behavior_topk_ids", "topk_logp": "behavior_topk_logp",
                   "entropy": BEHAVIOR_ENTROPY}
# The extra of a batch of multi-turn episodes (``loop.turns``) that says which student turn each
# completion token is in: bool ``[B, N, turns]``, ``[b, i, k]`` true when token i is in turn k + 1
# (environment tokens and padding are in none); the train step logs each turn's share and KL.
STUDENT_TURN = "student_turn"


@struct.dataclass
class Sequences:
    """Tokens a model reads, ``[B, T]``: ids, explicit positions and the real-token mask."""
    tokens: Array
    positions: Array
    mask: Array

    @staticmethod
    def from_left_padded(tokens: Array, mask: Array) -> "Sequences":
        positions = jnp.maximum(jnp.cumsum(mask.astype(jnp.int32), axis=-1) - 1, 0)
        return Sequences(tokens.astype(jnp.int32), positions.astype(jnp.int32), mask.astype(bool))


@struct.dataclass
class TrainBatch:
    """A batch of completions to learn from (all leading axes ``[B, ...]``).

    ``targets``/``loss_mask``/``behavior_logp`` are ``[B, N]``; ``extras`` hold other per-token
    inputs ``[B, N, ...]`` (rewards, sparse-teacher log-probs, ...). ``teacher`` is the
    teacher's own context (None: the student's sequences). ``teacher_hidden`` holds the
    teacher's final hidden states at the completion positions when scoring ran as its own
    phase; otherwise the train step scores the teacher itself. ``group``: rows come in groups
    of this many consecutive rows with the same prompts (samples of one prompt), which the
    forwards run once per group (see :func:`completion_hidden`); 1 when nothing is known.
    """
    student: Sequences
    targets: Array
    loss_mask: Array
    behavior_logp: Array
    teacher: Sequences | None = None
    extras: dict = struct.field(default_factory=dict)
    teacher_hidden: Array | None = None  # [B, N, D_T], when the teacher was scored beforehand
    group: int = struct.field(pytree_node=False, default=1)
    # The same for the teacher's sequences (0: ``group``); 1 when each row has its own teacher
    # context (contexts built from the row's peers, opd_jax.training.peers).
    teacher_group: int = struct.field(pytree_node=False, default=0)

    @property
    def completion_len(self) -> int:
        return self.targets.shape[1]

    @property
    def teacher_rows_group(self) -> int:
        """The ``group`` of the teacher's sequences."""
        return self.teacher_group or self.group

    @property
    def teacher_sequences(self) -> Sequences:
        """What the teacher reads: its own context if it has one, else the student's."""
        return self.teacher if self.teacher is not None else self.student

    def check(self) -> None:
        """Shape checks (trace time): completions must sit at the end of both sequences."""
        b, n = self.targets.shape
        for name, seq in (("student", self.student), ("teacher", self.teacher)):
            if seq is None:
                continue
            if seq.tokens.shape[0] != b or seq.tokens.shape[1] <= n:
                raise ValueError(f"{name} sequences {seq.tokens.shape} must be [B={b}, T > N={n}] "
                                 "(a prompt of at least one token, then the completion).")
        for name in ("loss_mask", "behavior_logp"):
            if getattr(self, name).shape != (b, n):
                raise ValueError(f"{name} has shape {getattr(self, name).shape}, expected {(b, n)}.")
        for name, x in self.extras.items():
            if x.shape[:2] != (b, n):
                raise ValueError(f"extra {name!r} has shape {x.shape}; it must start with {(b, n)}.")


def completion_hidden(model, seq: Sequences, n: int, group: int = 1) -> Array:
    """Final hidden states at the ``n`` positions that predict the completion, ``[B, n, D]``.

    ``group``: the rows come in groups of this many consecutive rows with the same prompt (all
    but the last ``n`` columns: several samples of one prompt), so each group's prompt runs once
    (see :func:`shared_prompt_hidden`); the result is that of the whole-sequence forward up to
    rounding. Falls back to the whole-sequence forward when ``group`` does not divide the rows,
    under remat (the shared path keeps every layer's activations), or for a model with no
    KV-cached ``decoder()`` (the lab's table models).
    """
    shareable = hasattr(model, "decoder") and not getattr(model.cfg, "remat", False)
    if group > 1 and seq.tokens.shape[0] % group == 0 and shareable:
        return shared_prompt_hidden(model, seq, n, group)
    h, _ = model.hidden(seq.tokens, seq.positions, mask=seq.mask)
    return h[:, -n - 1:-1]


def shared_prompt_hidden(model, seq: Sequences, n: int, group: int) -> Array:
    """:func:`completion_hidden` of rows whose prompts repeat in groups of ``group``: the first
    row of each group's prompt runs into a KV cache, the cache is repeated to every row of the
    group, and each row's completion (but its last token, which predicts nothing) runs as one
    chunk against it. Differentiable: gradients reach the prompt's keys and values from every
    row of its group."""
    rows, width = seq.tokens.shape
    p = width - n
    first = lambda x: x[::group, :p]  # noqa: E731
    dec = model.decoder()
    cache = init_cache(model.cfg, rows // group, width - 1)
    h_p, cache = dec.hidden(first(seq.tokens), first(seq.positions), mask=first(seq.mask),
                            cache=cache)
    rep = lambda x: jnp.repeat(x, group, axis=0)  # noqa: E731
    last = rep(h_p[:, -1:])  # predicts the first completion token
    if n == 1:
        return last
    cache = KVCache(k=[rep(k) for k in cache.k], v=[rep(v) for v in cache.v],
                    valid=rep(cache.valid), index=cache.index)
    rest = lambda x: x[:, p:width - 1]  # noqa: E731
    h_c, _ = dec.hidden(rest(seq.tokens), rest(seq.positions), mask=rest(seq.mask), cache=cache)
    return jnp.concatenate([last, h_c], axis=1)
