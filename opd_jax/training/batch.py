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

Array = jax.Array


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
    phase; otherwise the train step scores the teacher itself.
    """
    student: Sequences
    targets: Array
    loss_mask: Array
    behavior_logp: Array
    teacher: Sequences | None = None
    extras: dict = struct.field(default_factory=dict)
    teacher_hidden: Array | None = None  # [B, N, D_T], when the teacher was scored beforehand

    @property
    def completion_len(self) -> int:
        return self.targets.shape[1]

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


def completion_hidden(model, seq: Sequences, n: int) -> Array:
    """Final hidden states at the ``n`` positions that predict the completion, ``[B, n, D]``."""
    h, _ = model.hidden(seq.tokens, seq.positions, mask=seq.mask)
    return h[:, -n - 1:-1]
