"""The sampler configuration: frozen and hashable, so it is a static argument of the jitted sampler."""

from __future__ import annotations

import dataclasses
import math
from typing import Literal


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


@dataclasses.dataclass(frozen=True, kw_only=True)
class SamplerConfig:
    """How to sample completions.

    The token distribution is built in this order: divide the logits by ``temperature``, keep the
    ``top_k`` largest, keep the smallest most-probable set with mass >= ``top_p``, keep tokens with
    probability >= ``min_p`` x the largest, renormalise. Each filter sees the distribution the
    previous one left; tokens tied with the last kept one are kept too. ``temperature=0`` is
    greedy (arg-max, recorded log-probability 0: the point mass it was drawn from).

    The defaults (temperature 1, no truncation) are the training defaults: the recorded
    log-probabilities are then the model's own, and the importance ratio is 1 at step 0.
    With truncation the recorded log-probability is that of the truncated distribution
    ``mu(y) = pi_T(y) / Z`` on the kept set (``Z`` = the kept mass of the tempered ``pi_T``); a
    trainer that scores with the untruncated ``pi_T`` sees ``pi_T / mu = Z <= 1`` instead of 1, and
    tokens outside the kept set are never sampled, so their gradient is never estimated.

    Buckets: the prompt is left-padded to the smallest entry of ``prompt_buckets`` that holds it
    and the completion buffer has the smallest entry of ``new_token_buckets`` >= ``max_new_tokens``
    columns (an empty tuple means powers of two from 16). Calls within the same buckets reuse one
    compiled program: ``max_new_tokens`` itself is a traced loop bound.

    ``cache_len`` fixes the KV-cache length (prompt bucket + generated tokens per row), so one cache
    shape serves every prompt bucket; at most ``cache_len`` - prompt bucket tokens are generated.
    By default it is the prompt bucket plus the generation bucket, so the cache never fills.
    ``cache_dtype``: None (the default) keeps the cache in the model's compute dtype, except on CPU,
    where ``sample`` keeps it in float32: beside bf16 weights a float32 cache decodes faster than
    a bf16 one (XLA:CPU casts a bf16 cache to float32 for its attention on every step; a float32
    one is read in place), at twice the cache's memory. Name a dtype to have exactly that one.

    ``cache_phases``: the cache grows to ``cache_len`` in up to this many steps (phases of at
    least 32 generated tokens), so early decode steps attend over fewer slots: decode attention
    costs in proportion to the slots, and on CPU it dominates a small model's step. Each phase is
    one more compiled decode loop (compile time), and a growth step briefly holds the old and the
    new cache of each layer. 1 = one loop over a full-size cache. ``"auto"`` (the default): 4
    phases where attention over the full cache is at least ``AUTO_ATTENTION_SHARE`` of a decode
    step's multiply-adds (``ModelConfig.decode_macs``), else 1: at ~100M parameters and 160 slots
    (3%) the phases cost 1-2.5 s of compile and saved no decode time; at the tiny benchmark
    model (20%) they saved 15%. Fewer phases for fewer rows (``AUTO_PHASES_BY_ROWS``): what a phase
    saves is attention over rows x slots, while a small batch's step is mostly reading the weights.
    One row gets 2 (XLA:CPU compiles a one-row product into a kernel of its own in every loop, so
    each phase costs twice the compile), up to 32 rows 3; at the tiny model these decoded as fast as
    4 and compiled 0.1-0.5 s faster (BENCHMARKS.md). The share is of multiply-adds, while the
    time depends on the CPU: on an AVX2 one (no AVX-512) attention took 29% of the ~100M step at
    64 rows, and ``cache_phases=4`` decoded 11% faster there than "auto"'s 1. Results do not
    depend on it.

    ``teacher_blend``: how a teacher beside the student joins each draw (``sample(...,
    teacher=..., teacher_mix=...)``): ``"coin"`` (MiniLLM) takes the teacher's token with
    probability ``teacher_mix``; ``"geometric"`` (TRB, arXiv 2605.31159) draws from the blend
    ``(1 - beta) z_student + beta z_teacher`` of the logits with the largest ``beta`` in [0, 1] whose
    distribution is within ``teacher_mix`` nats of KL from the student's (``distribution.choose``).

    ``record_topk``: at every completion step also record the student's ``record_topk`` most
    probable tokens, their log-probabilities and the distribution's entropy, all of
    ``softmax(logits / record_temperature)`` (the student's own distribution, unfiltered, also
    when a teacher joins the draw): ``Rollout.topk_ids``, ``topk_logp``, ``entropy``. What a
    policy-gradient objective over the behaviour policy's top tokens reads without a second
    forward (0 = off: the program records nothing).
    """

    max_new_tokens: int
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    eos_ids: tuple[int, ...] = ()
    pad_id: int = 0
    num_samples: int = 1
    prompt_buckets: tuple[int, ...] = ()
    new_token_buckets: tuple[int, ...] = ()
    cache_len: int | None = None
    cache_dtype: str | None = None  # None: the compute dtype (float32 on CPU: sampler.cache_dtype_for)
    cache_phases: Literal["auto"] | int = "auto"
    teacher_blend: Literal["coin", "geometric"] = "coin"
    record_topk: int = 0
    record_temperature: float = 1.0

    def __post_init__(self):
        if not _is_int(self.max_new_tokens) or self.max_new_tokens <= 0:
            raise ValueError(f"max_new_tokens must be an int >= 1, got {self.max_new_tokens!r}; "
                             "ask for at least one new token")
        if not isinstance(self.temperature, (int, float)) or not math.isfinite(self.temperature) \
                or self.temperature < 0:
            raise ValueError(f"temperature must be a finite number >= 0 (0 = greedy), got {self.temperature!r}")
        if not _is_int(self.top_k) or self.top_k < 0:
            raise ValueError(f"top_k must be an int >= 0 (0 = off), got {self.top_k!r}")
        if not isinstance(self.top_p, (int, float)) or not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1] (1 = off), got {self.top_p!r}")
        if not isinstance(self.min_p, (int, float)) or not 0 <= self.min_p < 1:
            raise ValueError(f"min_p must be in [0, 1) (0 = off), got {self.min_p!r}")
        if not isinstance(self.eos_ids, tuple) or not all(_is_int(i) and i >= 0 for i in self.eos_ids):
            raise ValueError(f"eos_ids must be a tuple of non-negative ints, got {self.eos_ids!r} "
                             "(write (id,) for a single id)")
        if not _is_int(self.pad_id) or self.pad_id < 0:
            raise ValueError(f"pad_id must be a non-negative int, got {self.pad_id!r}")
        if not _is_int(self.num_samples) or self.num_samples < 1:
            raise ValueError(f"num_samples must be an int >= 1, got {self.num_samples!r}")
        for name in ("prompt_buckets", "new_token_buckets"):
            b = getattr(self, name)
            if not isinstance(b, tuple) or not all(_is_int(x) and x > 0 for x in b) \
                    or list(b) != sorted(set(b)):
                raise ValueError(f"{name} must be a strictly increasing tuple of positive ints "
                                 f"(or () for powers of two), got {b!r}")
        if self.new_token_buckets and self.max_new_tokens > self.new_token_buckets[-1]:
            raise ValueError(f"max_new_tokens={self.max_new_tokens} exceeds the largest of "
                             f"new_token_buckets={self.new_token_buckets}; add a larger bucket")
        if self.cache_len is not None and (not _is_int(self.cache_len) or self.cache_len <= 0):
            raise ValueError(f"cache_len must be None or a positive int, got {self.cache_len!r}")
        if self.cache_phases != "auto" and (not _is_int(self.cache_phases) or self.cache_phases < 1):
            raise ValueError(f"cache_phases must be 'auto' or an int >= 1 (1 = no growth), "
                             f"got {self.cache_phases!r}")
        if self.teacher_blend not in ("coin", "geometric"):
            raise ValueError(f"teacher_blend must be 'coin' (MiniLLM) or 'geometric' (TRB), "
                             f"got {self.teacher_blend!r}")
        if not _is_int(self.record_topk) or self.record_topk < 0:
            raise ValueError(f"record_topk must be an int >= 0 (0 = record nothing), got {self.record_topk!r}")
        if not isinstance(self.record_temperature, (int, float)) or not math.isfinite(self.record_temperature) \
                or self.record_temperature <= 0:
            raise ValueError(f"record_temperature must be a finite number > 0, got {self.record_temperature!r}")
        if self.cache_dtype not in (None, "float32", "bfloat16", "float16"):
            raise ValueError(f"cache_dtype must be None, 'float32', 'bfloat16' or 'float16', "
                             f"got {self.cache_dtype!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    @property
    def truncated(self) -> bool:
        """Whether the sampling distribution differs from the tempered softmax on some tokens."""
        return self.top_k > 0 or self.top_p < 1 or self.min_p > 0

    def replace(self, **changes) -> SamplerConfig:
        return dataclasses.replace(self, **changes)

    def prompt_bucket(self, length: int) -> int:
        """Padded prompt length for a prompt of ``length`` tokens (capped to leave one cache slot)."""
        size = _bucket(length, self.prompt_buckets, "prompt_buckets", "prompt length")
        return size if self.cache_len is None else max(min(size, self.cache_len - 1), length)

    def new_token_bucket(self) -> int:
        """Columns of the completion buffer."""
        return _bucket(self.max_new_tokens, self.new_token_buckets, "new_token_buckets", "max_new_tokens")

    def cache_size(self, prompt_bucket: int) -> int:
        return prompt_bucket + self.new_token_bucket() if self.cache_len is None else self.cache_len

    def phases(self, attention_share: float | None = None, rows: int | None = None) -> int:
        """The number of cache phases asked for: ``cache_phases``, or for ``"auto"`` 1 if
        ``attention_share`` (attention's share of a decode step's multiply-adds at the full
        cache; None: unknown) is below ``AUTO_ATTENTION_SHARE``, else the first count of
        ``AUTO_PHASES_BY_ROWS`` whose row bound holds ``rows`` (the rows the program decodes; None:
        unknown), and ``AUTO_PHASES`` beyond them."""
        if self.cache_phases != "auto":
            return self.cache_phases
        if attention_share is not None and attention_share < AUTO_ATTENTION_SHARE:
            return 1
        if rows is not None:
            for most_rows, phases in AUTO_PHASES_BY_ROWS:
                if rows <= most_rows:
                    return phases
        return AUTO_PHASES

    def cache_capacities(self, prompt_bucket: int, attention_share: float | None = None,
                         rows: int | None = None) -> tuple[int, ...]:
        """The cache sizes of the decode phases: increasing, the last is ``cache_size``.

        The generated slots are split into ``phases(attention_share, rows)`` equal parts (at least
        ``_MIN_PHASE`` slots each), each capacity rounded up to a multiple of 8.
        """
        total = self.cache_size(prompt_bucket)
        generated = total - prompt_bucket
        n = max(1, min(self.phases(attention_share, rows), generated // _MIN_PHASE))
        caps = []
        for j in range(1, n + 1):
            cap = min(total, -(-(prompt_bucket - (-generated * j // n)) // 8) * 8)
            if not caps or cap > caps[-1]:
                caps.append(cap)
        caps[-1] = total
        return tuple(caps)


_MIN_PHASE = 32  # generated slots per cache phase, at least
AUTO_PHASES = 4  # cache phases of cache_phases="auto" where attention is worth them
AUTO_ATTENTION_SHARE = 0.05  # ... that is, where it is at least this share of a decode step
AUTO_PHASES_BY_ROWS = ((1, 2), (32, 3))  # ... but fewer for fewer rows: (at most these rows, these phases)


def _bucket(n: int, buckets: tuple[int, ...], name: str, what: str) -> int:
    if not buckets:
        return max(16, 1 << max(n - 1, 0).bit_length())
    for b in buckets:
        if b >= n:
            return b
    raise ValueError(f"{what} {n} exceeds the largest of {name}={buckets}; add a larger bucket")
