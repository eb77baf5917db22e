"""What the sampler returns (``Rollout``) and what its decode loop carries (``SamplingState``)."""

import jax
from flax import struct

from opd_jax.models.cache import KVCache


@struct.dataclass
class Rollout:
    """Sampled sequences ``[R = B * num_samples, P + N]``: the left-padded prompt, then the completion.

    Row ``b * num_samples + j`` is sample ``j`` of prompt ``b``. Columns ``[0, prompt_len)`` hold the
    (re-padded) prompt; the completion starts at column ``prompt_len``. Scoring with one full
    forward: the logits at column ``t - 1`` predict ``tokens[:, t]``, to compare with ``logp[:, t]``.

    tokens:          int32, ``pad_id`` on padding and after the end of a completion.
    mask:            bool, real prompt tokens and completion tokens up to and including the first EOS.
    completion_mask: bool, the completion part of ``mask`` (the tokens a loss counts).
    logp:            float32, log-probability of each completion token under the distribution it
                     was drawn from (tempered, filtered; with teacher mixing, the mixture); 0 elsewhere.
    positions:       int32, RoPE positions ``cumsum(mask) - 1`` (clipped at 0).
    finished:        bool ``[R]``, the completion ended with an EOS token (else it was cut off).
    student_logp, teacher_logp: float32, each model's log-probability of the token under the same
                     temperature and filters (teacher mixing only; ``-inf`` where a filter dropped
                     the token the other model drew). The student's importance weight against the
                     behaviour mixture is ``exp(student_logp - logp)`` (MiniLLM).
    from_teacher:    bool, the token was drawn from the teacher (``teacher_blend="coin"`` only).
    teacher_weight:  float32, the teacher's weight beta in the token's geometric blend
                     (``teacher_blend="geometric"`` only, TRB).
    topk_ids, topk_logp: int32 / float32 ``[R, P + N, k]``, entropy: float32: at each completion
                     token's column, the student's ``k = cfg.record_topk`` most probable tokens
                     at that step, their log-probs and the entropy, of its unfiltered distribution
                     at ``cfg.record_temperature`` (0 elsewhere; None unless ``record_topk``).
    """

    tokens: jax.Array
    mask: jax.Array
    completion_mask: jax.Array
    logp: jax.Array
    positions: jax.Array
    finished: jax.Array
    student_logp: jax.Array | None = None
    teacher_logp: jax.Array | None = None
    from_teacher: jax.Array | None = None
    teacher_weight: jax.Array | None = None
    topk_ids: jax.Array | None = None
    topk_logp: jax.Array | None = None
    entropy: jax.Array | None = None
    prompt_len: int = struct.field(pytree_node=False, default=0)


@struct.dataclass
class SamplingState:
    """The ``while_loop`` carry: buffers ``[R, P + N]`` filled one column per step, the caches, and
    the logits of the next token."""

    step: jax.Array  # int32 []: completion tokens sampled so far
    tokens: jax.Array
    mask: jax.Array
    logp: jax.Array
    done: jax.Array  # bool [R]: the row has sampled an EOS token
    logits: jax.Array  # float32 [R, V]
    cache: KVCache
    teacher_logits: jax.Array | None = None
    teacher_cache: KVCache | None = None
    student_logp: jax.Array | None = None
    teacher_logp: jax.Array | None = None
    from_teacher: jax.Array | None = None
    teacher_weight: jax.Array | None = None
    topk_ids: jax.Array | None = None
    topk_logp: jax.Array | None = None
    entropy: jax.Array | None = None
