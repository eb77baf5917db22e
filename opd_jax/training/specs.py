"""Where an experiment's models come from: the student's (:class:`ModelSpec`) and the teacher's
(:class:`TeacherSpec`, and :class:`ServedSpec` for one behind an inference server), validated on
construction; part of the experiment configuration (:mod:`opd_jax.training.config`)."""

import dataclasses
from typing import Literal

from opd_jax.models.config import LORA_TARGETS, ModelConfig
from opd_jax.training.peers import PeerSpec


def require(cond: bool, msg: str):
    """Raise ``ValueError(msg)`` unless ``cond``."""
    if not cond:
        raise ValueError(msg)


@dataclasses.dataclass(frozen=True, kw_only=True)
class ModelSpec:
    """Where a model comes from: a Hugging Face checkpoint, or a random init of ``config``."""
    path: str = ""  # local HF directory or repo id in the local HF cache ("" = random init)
    config: ModelConfig | None = None  # architecture for a random init (ignored with a path)
    param_dtype: Literal["float32", "bfloat16"] = "float32"
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"  # compute dtype
    remat: bool = False
    seed: int = 0  # random-init seed (and the adapters' A factors)
    # Low-rank adapters (opd_jax.models.lora), the student only: train lora_rank-wide factors on
    # lora_targets (default: every weight matrix of a layer) and freeze the rest; 0 = train everything
    lora_rank: int = 0
    lora_alpha: float = 32.0  # the adapters' product is scaled by lora_alpha / lora_rank
    lora_targets: tuple[str, ...] = LORA_TARGETS
    lora_rslora: bool = False  # rank-stabilized LoRA: the product scaled by lora_alpha / sqrt(lora_rank)
    # Start the adapters from these (a PEFT adapter directory: PEFT's save_pretrained, or an
    # export's adapter/) instead of fresh ones; its rank, alpha, targets and scaling are the run's
    # (lora_rank, lora_alpha, lora_targets and lora_rslora may be left at their defaults, or must say
    # the same)
    lora_path: str = ""

    def __post_init__(self):
        require(bool(self.path) or self.config is not None,
               "a model needs a checkpoint `path` or a `config` to initialise randomly")
        require(isinstance(self.lora_rank, int) and not isinstance(self.lora_rank, bool) and self.lora_rank >= 0,
                f"lora_rank must be an int >= 0 (0: no adapters), got {self.lora_rank!r}")
        require(isinstance(self.lora_alpha, int | float) and self.lora_alpha > 0,
                f"lora_alpha must be > 0, got {self.lora_alpha!r}")
        targets = tuple(self.lora_targets)
        require(bool(targets) and len(set(targets)) == len(targets) and set(targets) <= set(LORA_TARGETS),
                f"lora_targets must be distinct names among {LORA_TARGETS}, got {self.lora_targets!r}")
        if self.config is not None and self.config.lora_rank:
            raise ValueError("set adapters with lora_rank / lora_alpha / lora_targets on the model spec, "
                             "not in its config")


@dataclasses.dataclass(frozen=True, kw_only=True)
class ServedSpec:
    """A teacher served by an inference engine (``teacher.kind="served"``).

    The trainer sends each row's prompt plus the student's completion as token ids and reads back
    the log-probability of every completion token and the teacher's ``top_k`` most likely
    alternatives (the sparse teacher of :class:`opd_jax.objectives.TeacherTopK`). ``api="openai"``
    speaks the OpenAI-compatible completions endpoint with vLLM's ``prompt_logprobs``
    (``vllm serve``, ``python -m opd_jax.serve``); ``api="sglang"`` speaks SGLang's native
    ``/generate``. See :mod:`opd_jax.teachers.served` for the commands that start each server.
    """
    url: str = ""  # e.g. http://teacher-host:8000
    model: str = ""  # the served model's name ("" = the server's only model)
    api: Literal["openai", "sglang"] = "openai"
    top_k: int = 20  # alternatives per token (vLLM's default --max-logprobs is 20)
    timeout_s: float = 60.0  # per request
    retries: int = 3  # further attempts of a failed request, with exponential backoff
    backoff_s: float = 1.0  # first wait between attempts (then doubled)
    max_in_flight: int = 4  # requests open at once
    rows_per_request: int = 8  # sequences batched in one request
    # Score the next batch while the student updates on this one: the next batch is then sampled
    # with the weights before this update (one step off-policy; behaviour log-probs stay exact, so
    # importance ratios correct policy gradients). A resumed run samples its first batch on-policy.
    overlap: bool = False

    def __post_init__(self):
        require(self.api in ("openai", "sglang"),
               f"teacher.served.api must be 'openai' or 'sglang', got {self.api!r}")
        require(self.top_k >= 1, f"teacher.served.top_k must be >= 1, got {self.top_k}")
        require(self.timeout_s > 0, f"teacher.served.timeout_s must be > 0, got {self.timeout_s}")
        require(self.retries >= 0, f"teacher.served.retries must be >= 0, got {self.retries}")
        require(self.backoff_s >= 0, f"teacher.served.backoff_s must be >= 0, got {self.backoff_s}")
        require(self.max_in_flight >= 1,
               f"teacher.served.max_in_flight must be >= 1, got {self.max_in_flight}")
        require(self.rows_per_request >= 1,
               f"teacher.served.rows_per_request must be >= 1, got {self.rows_per_request}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class TeacherSpec:
    """The teacher: a separate model, several models, the student itself (now, as an EMA, or as it
    was at the start), a model served by an inference engine, or a separate model with its own
    tokenizer (``kind="cross_tokenizer"``, :mod:`opd_jax.teachers.aligned`).

    Several teachers (``kind="models"``) act as one: per row, the teacher logits are
    ``sum_j w_j * z_j`` over the teachers' logits ``z_j``. ``combine="route"`` takes one-hot
    weights from each record's ``teacher`` field (a name from ``names``, or an index): each prompt
    is scored by its own teacher (multi-domain distillation). ``combine="mix"`` uses the fixed
    ``weights`` for every row: a log-linear ensemble (product of experts, renormalised by the
    log-softmax). Teacher rollouts (cold start, sequence KD) are drawn from each row's routed
    teacher; they need ``combine="route"``.

    ``ema_decay``/``ema_every`` left at None take the objective's own defaults (UniSD: 0.9 every
    10 steps, see :func:`opd_jax.objectives.loop_defaults`), else 0.999 every step.
    """
    kind: Literal["model", "models", "self", "ema", "initial", "served", "cross_tokenizer"] = "model"
    model: ModelSpec | None = None  # kind == "model" or "cross_tokenizer"
    models: tuple[ModelSpec, ...] = ()  # kind == "models"
    names: tuple[str, ...] = ()  # kind == "models": names for the records' ``teacher`` field
    combine: Literal["route", "mix"] = "route"
    weights: tuple[float, ...] = ()  # combine == "mix" (default: uniform)
    ema_decay: float | None = None  # kind == "ema": theta_T <- d * theta_T + (1 - d) * theta
    ema_every: int | None = None  # kind == "ema": update period in optimizer steps
    served: ServedSpec = dataclasses.field(default_factory=ServedSpec)  # "served" (or "cross_tokenizer")
    # A context of the row's peer samples for the teacher (MOPD; off by default): peers.PeerSpec.
    peers: PeerSpec = dataclasses.field(default_factory=PeerSpec)
    # kind == "cross_tokenizer" (a teacher with its own tokenizer, opd_jax.teachers.aligned; with
    # served.url set the model is served and model.path names its tokenizer): its completion slots
    # per student slot (the completion re-encoded by its tokenizer must fit).
    token_ratio: float = 2.0
    # kind == "cross_tokenizer": where spans may end (opd_jax.teachers.spans): "consistent" cuts,
    # where both tokens admit the same continuations, or every common character cut ("text")
    span_cuts: Literal["consistent", "text"] = "consistent"
    # kind == "cross_tokenizer" with objective=simct: the teacher's most likely tokens, among those
    # both vocabularies write alike, that make the virtual vocabulary at each span (0: all of them)
    shared_topk: int = 0
    # kind == "cross_tokenizer" with objective=simct: which tokens the two vocabularies share: those
    # that write the same text ("text", SimCT's), or only those the same characters also extend
    # alike ("consistent": the same events, opd_jax.teachers.virtual.shared_vocabulary)
    shared_tokens: Literal["text", "consistent"] = "text"

    def __post_init__(self):
        require(self.kind not in ("model", "cross_tokenizer") or self.model is not None,
               f"teacher.kind={self.kind!r} needs teacher.model")
        require(not any(m.lora_rank or m.lora_path for m in (self.model, *self.models) if m is not None),
                "teacher.model.lora_rank > 0 or lora_path: a teacher is not trained, so adapters belong on "
                "the student (student.lora_rank, student.lora_path); set the teacher's lora_rank=0 and "
                "lora_path='' (a teacher with adapters: export it merged and load that)")
        require(self.token_ratio > 0, f"teacher.token_ratio must be > 0, got {self.token_ratio}")
        require(isinstance(self.shared_topk, int) and self.shared_topk >= 0,
               f"teacher.shared_topk must be an integer >= 0, got {self.shared_topk!r}")
        require(self.shared_tokens in ("consistent", "text"),
               f"teacher.shared_tokens must be 'text' or 'consistent', got {self.shared_tokens!r}")
        require(self.span_cuts in ("consistent", "text"),
               f"teacher.span_cuts must be 'consistent' or 'text', got {self.span_cuts!r}")
        require(self.kind != "models" or len(self.models) >= 1,
               "teacher.kind='models' needs at least one model in teacher.models")
        require(self.kind != "served" or bool(self.served.url),
               "teacher.kind='served' needs teacher.served.url (e.g. http://localhost:8000)")
        require(not self.names or len(self.names) == len(self.models),
               f"teacher.names has {len(self.names)} names for {len(self.models)} teacher.models")
        require(len(set(self.names)) == len(self.names), f"teacher.names repeat: {self.names}")
        require(self.combine in ("route", "mix"),
               f"teacher.combine must be 'route' or 'mix', got {self.combine!r}")
        require(not self.weights or len(self.weights) == len(self.models),
               f"teacher.weights has {len(self.weights)} weights for {len(self.models)} models")
        require(all(w >= 0 for w in self.weights) and (not self.weights or sum(self.weights) > 0),
               f"teacher.weights must be >= 0 and not all 0, got {self.weights}")
        require(self.ema_decay is None or 0.0 <= self.ema_decay < 1.0,
               f"teacher.ema_decay must lie in [0, 1), got {self.ema_decay}")
        require(self.ema_every is None or self.ema_every >= 1,
               f"teacher.ema_every must be >= 1, got {self.ema_every}")

    def mix_weights(self) -> tuple[float, ...]:
        """``combine="mix"``: the weights, normalised to sum to 1."""
        w = self.weights or (1.0,) * len(self.models)
        return tuple(x / sum(w) for x in w)
