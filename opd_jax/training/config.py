"""The experiment configuration: frozen dataclasses, one per concern, validated on construction.

An experiment file returns an :class:`Experiment`; the command line changes any field with
``--set section.field=value`` (see :mod:`opd_jax.config`).
"""

import dataclasses
import json
import math
from typing import Literal

from opd_jax.models.config import ModelConfig
from opd_jax.objectives.recipes import ObjectiveConfig, OPDConfig, make_config
from opd_jax.objectives.requirements import loop_defaults
from opd_jax.sampling import SamplerConfig
from opd_jax.training.extrapolation import RULES as EXTRAPOLATION_RULES
from opd_jax.training.peers import PeerSpec
from opd_jax.training.step import StepConfig


def _check(cond: bool, msg: str):
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
    seed: int = 0  # random-init seed

    def __post_init__(self):
        _check(bool(self.path) or self.config is not None,
               "a model needs a checkpoint `path` or a `config` to initialise randomly")


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
        _check(self.api in ("openai", "sglang"),
               f"teacher.served.api must be 'openai' or 'sglang', got {self.api!r}")
        _check(self.top_k >= 1, f"teacher.served.top_k must be >= 1, got {self.top_k}")
        _check(self.timeout_s > 0, f"teacher.served.timeout_s must be > 0, got {self.timeout_s}")
        _check(self.retries >= 0, f"teacher.served.retries must be >= 0, got {self.retries}")
        _check(self.backoff_s >= 0, f"teacher.served.backoff_s must be >= 0, got {self.backoff_s}")
        _check(self.max_in_flight >= 1,
               f"teacher.served.max_in_flight must be >= 1, got {self.max_in_flight}")
        _check(self.rows_per_request >= 1,
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
        _check(self.kind not in ("model", "cross_tokenizer") or self.model is not None,
               f"teacher.kind={self.kind!r} needs teacher.model")
        _check(self.token_ratio > 0, f"teacher.token_ratio must be > 0, got {self.token_ratio}")
        _check(isinstance(self.shared_topk, int) and self.shared_topk >= 0,
               f"teacher.shared_topk must be an integer >= 0, got {self.shared_topk!r}")
        _check(self.shared_tokens in ("consistent", "text"),
               f"teacher.shared_tokens must be 'text' or 'consistent', got {self.shared_tokens!r}")
        _check(self.span_cuts in ("consistent", "text"),
               f"teacher.span_cuts must be 'consistent' or 'text', got {self.span_cuts!r}")
        _check(self.kind != "models" or len(self.models) >= 1,
               "teacher.kind='models' needs at least one model in teacher.models")
        _check(self.kind != "served" or bool(self.served.url),
               "teacher.kind='served' needs teacher.served.url (e.g. http://localhost:8000)")
        _check(not self.names or len(self.names) == len(self.models),
               f"teacher.names has {len(self.names)} names for {len(self.models)} teacher.models")
        _check(len(set(self.names)) == len(self.names), f"teacher.names repeat: {self.names}")
        _check(self.combine in ("route", "mix"),
               f"teacher.combine must be 'route' or 'mix', got {self.combine!r}")
        _check(not self.weights or len(self.weights) == len(self.models),
               f"teacher.weights has {len(self.weights)} weights for {len(self.models)} models")
        _check(all(w >= 0 for w in self.weights) and (not self.weights or sum(self.weights) > 0),
               f"teacher.weights must be >= 0 and not all 0, got {self.weights}")
        _check(self.ema_decay is None or 0.0 <= self.ema_decay < 1.0,
               f"teacher.ema_decay must lie in [0, 1), got {self.ema_decay}")
        _check(self.ema_every is None or self.ema_every >= 1,
               f"teacher.ema_every must be >= 1, got {self.ema_every}")

    def mix_weights(self) -> tuple[float, ...]:
        """``combine="mix"``: the weights, normalised to sum to 1."""
        w = self.weights or (1.0,) * len(self.models)
        return tuple(x / sum(w) for x in w)


@dataclasses.dataclass(frozen=True, kw_only=True)
class OptimConfig:
    lr: float = 1e-5
    schedule: Literal["constant", "cosine", "linear"] = "constant"
    warmup_steps: int = 0
    weight_decay: float = 0.0
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    clip_norm: float = 1.0  # global-norm gradient clipping (0 = off)
    # EffOPD's parameter extrapolation (opd_jax.training.extrapolation): every `extrapolate_every`
    # steps, a jump of up to `extrapolate_scale` times the window's displacement (0 = off), its
    # length set by the windows' cosine or by a secant line search along it
    extrapolate_every: int = 0
    extrapolate_scale: float = 1.0
    extrapolate_rule: Literal["cosine", "secant"] = "cosine"

    def __post_init__(self):
        _check(self.lr > 0, f"optim.lr must be > 0, got {self.lr}")
        _check(type(self.extrapolate_every) is int and self.extrapolate_every >= 0,
               f"optim.extrapolate_every must be an int >= 0 (0 = off), got {self.extrapolate_every!r}")
        _check(isinstance(self.extrapolate_scale, (int, float)) and math.isfinite(self.extrapolate_scale)
               and self.extrapolate_scale >= 0,
               f"optim.extrapolate_scale must be a finite number >= 0, got {self.extrapolate_scale!r}")
        _check(self.extrapolate_rule in EXTRAPOLATION_RULES,
               f"optim.extrapolate_rule must be 'cosine' or 'secant', got {self.extrapolate_rule!r}")
        _check(self.extrapolate_rule != "secant" or self.extrapolate_every != 1,
               "optim.extrapolate_rule=secant needs optim.extrapolate_every >= 2 (two gradients per window)")
        _check(self.warmup_steps >= 0, f"optim.warmup_steps must be >= 0, got {self.warmup_steps}")
        _check(self.clip_norm >= 0, f"optim.clip_norm must be >= 0, got {self.clip_norm}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class MeshConfig:
    data: int = -1  # -1: all remaining devices
    fsdp: int = 1
    tensor: int = 1


TemplateValue = bool | int | float | str | None


@dataclasses.dataclass(frozen=True, kw_only=True)
class DataConfig:
    """Prompts (JSONL or Parquet), read in a seeded order that depends only on the cursor.

    Text (``prompt``, ``messages``, ``completion``; see :mod:`opd_jax.data`) is tokenized by the
    student checkpoint's tokenizer, or by ``tokenizer`` (a directory or a repo id in the local HF
    cache) when set; ``chat_template_kwargs`` go to the chat template, e.g. Qwen3's
    ``{"enable_thinking": False}`` (``--set 'data.chat_template_kwargs={"enable_thinking": false}'``
    from the command line).
    """
    path: str = ""
    batch_size: int = 8  # prompts per optimizer step, over all hosts
    max_prompt_len: int = 512  # longer prompts are an error naming the line
    shuffle_seed: int = 0
    chat_template: bool = False  # wrap text prompts in the tokenizer's chat template
    tokenizer: str = ""  # a tokenizer replacing the student checkpoint's ("" = the student's)
    chat_template_kwargs: dict[str, TemplateValue] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        _check(self.batch_size >= 1, f"data.batch_size must be >= 1, got {self.batch_size}")
        _check(self.max_prompt_len >= 1, f"data.max_prompt_len must be >= 1, got {self.max_prompt_len}")
        kw = self.chat_template_kwargs
        _check(isinstance(kw, dict) and all(isinstance(k, str) for k in kw),
               f"data.chat_template_kwargs must be a mapping of names to values, got {kw!r}")
        _check(all(v is None or isinstance(v, (bool, int, float, str)) for v in kw.values()),
               f"data.chat_template_kwargs values must be booleans, numbers or text, got {kw!r}")
        # a copy, so that the caller's dict cannot change a frozen config afterwards
        object.__setattr__(self, "chat_template_kwargs", json.loads(json.dumps(kw)))


@dataclasses.dataclass(frozen=True, kw_only=True)
class EvalConfig:
    """Held-out evaluation during and after a run (``eval.path`` set; needs a reward function).

    At every ``every``-th optimizer step, at the last one (``run.steps``) and, with ``at_start``,
    before the first, the student answers each held-out problem greedily and ``k`` times by
    sampling; the reward function scores the answers (:mod:`opd_jax.evaluate` lists the metrics:
    greedy pass@1, unbiased pass@1 and pass@k, lengths, truncation, and the token diagnostics
    against a local teacher). Results go to ``<workdir>/eval/<step>.json`` and, prefixed
    ``eval/``, into that step's metrics. The records are read like ``data.path``'s (same
    tokenizer and chat template). Evaluation never changes what the run trains on: every
    setting here may change when a run resumes.
    """
    path: str = ""  # held-out records with an `answer` ("" = no evaluation)
    every: int = 0  # also every N optimizer steps (0 = only at the end)
    at_start: bool = False  # also before the first step (step 0: the starting model)
    k: int = 8  # samples per problem (pass@k)
    batch_size: int = 0  # prompts per sampler call (0 = data.batch_size)
    max_new_tokens: int = 0  # 0 = sampler.max_new_tokens
    temperature: float | None = None  # of the k samples (None = sampler.temperature)
    limit: int = 0  # evaluate the first N records only (0 = all)

    def __post_init__(self):
        _check(self.every >= 0, f"eval.every must be >= 0, got {self.every}")
        _check(self.k >= 1, f"eval.k must be >= 1, got {self.k}")
        for name in ("batch_size", "max_new_tokens", "limit"):
            _check(getattr(self, name) >= 0, f"eval.{name} must be >= 0, got {getattr(self, name)}")
        _check(self.temperature is None or self.temperature >= 0,
               f"eval.temperature must be >= 0 (0 = greedy), got {self.temperature}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class LoopConfig:
    """What each iteration trains on."""
    # GKD's lambda: probability that a step trains on fresh student samples (None: the
    # objective's default, see opd_jax.objectives.loop_defaults: GKD 0.5; otherwise 1.0)
    lmbda: float | None = None
    seq_kd: bool = False  # off-policy steps use teacher samples (sequence-level KD), else data
    cold_start_steps: int = 0  # supervised steps on teacher rollouts before OPD (Rethinking OPD)
    # teacher-mixed sampling, as sampler.teacher_blend says: "coin" (MiniLLM) takes each token
    # from the teacher with this probability; "geometric" (TRB) is each token's KL budget (nats)
    teacher_mix: float = 0.0
    # 0: teacher_mix at every step; N: it decays linearly to 0 over the first N steps (TRB's
    # warm-up, after which the student samples alone)
    teacher_mix_steps: int = 0
    # each batch keeps the smallest k/completion_slices of the completion buffer's columns that
    # holds its longest completion: the train step and the teacher's scoring skip padding, at the
    # cost of up to this many compiled shapes of each (1 = always the whole buffer)
    completion_slices: int = 8
    # StableOPD's rollout mixture: on an on-policy step each prompt's last sample is replaced, with
    # this probability, by its record's reference completion (cut at the sampler's buffer), whose
    # behaviour log-prob is the student's own (0 = student samples only)
    golden_fraction: float = 0.0
    # optimizer steps per sampled batch (verl's ppo_mini_batch_size = batch / minibatches, and
    # ppo_epochs): the batch, scored once, trains in `minibatches` steps, each on an equal slice of
    # its prompts with all their samples, in order, repeated `epochs` times. After the first step
    # the student has moved from the policy that sampled the batch, so clipped surrogates' ratios
    # (eopd, reopold, topk_opd's ppo, ...) leave 1. run.steps counts optimizer steps.
    minibatches: int = 1
    epochs: int = 1
    # assistant turns per episode (multi-turn on-policy distillation): after each of the student's
    # turns that ends with an EOS token, its record's next environment turn (env_turns_ids: a user
    # message, a tool's output, rendered as token ids) is appended and the student answers again;
    # the teacher scores the whole episode and the loss counts the student's tokens only
    turns: int = 1

    @property
    def updates(self) -> int:
        """Optimizer steps per sampled batch."""
        return self.minibatches * self.epochs

    def __post_init__(self):
        _check(self.lmbda is None or 0.0 <= self.lmbda <= 1.0,
               f"loop.lmbda must lie in [0, 1], got {self.lmbda}")
        _check(self.cold_start_steps >= 0, "loop.cold_start_steps must be >= 0")
        _check(0.0 <= self.teacher_mix < math.inf, f"loop.teacher_mix must be a finite number >= 0, "
               f"got {self.teacher_mix}")
        _check(isinstance(self.teacher_mix_steps, int) and self.teacher_mix_steps >= 0,
               f"loop.teacher_mix_steps must be an int >= 0 (0 = no decay), got {self.teacher_mix_steps!r}")
        _check(isinstance(self.completion_slices, int) and self.completion_slices >= 1,
               f"loop.completion_slices must be an int >= 1 (1 = never cut the completion "
               f"buffer), got {self.completion_slices!r}")
        _check(0.0 <= self.golden_fraction <= 1.0,
               f"loop.golden_fraction must lie in [0, 1], got {self.golden_fraction}")
        for name in ("minibatches", "epochs", "turns"):
            value = getattr(self, name)
            _check(isinstance(value, int) and not isinstance(value, bool) and value >= 1,
                   f"loop.{name} must be an int >= 1, got {value!r}")

    def teacher_mix_at(self, step: int) -> float:
        """``teacher_mix`` at optimizer step ``step`` (its linear decay over ``teacher_mix_steps``)."""
        if not self.teacher_mix_steps:
            return self.teacher_mix
        return self.teacher_mix * max(0.0, 1.0 - step / self.teacher_mix_steps)


@dataclasses.dataclass(frozen=True, kw_only=True)
class CheckpointConfig:
    """Orbax checkpoints of the whole train state in ``<workdir>/checkpoints`` (what a run resumes
    from), and the student as a Hugging Face checkpoint in ``<workdir>/hf/step_<N>`` (what
    ``transformers`` and vLLM load: weights, tokenizer, generation config), each written whole
    or not at all."""
    every: int = 0  # save every N optimizer steps (0 = only at the end)
    keep: int = 2
    async_save: bool = True
    resume_step: int | None = None  # restore this step instead of the latest (None: the latest)
    export: bool = True  # write the student as an HF checkpoint at the end of the run
    export_every: int = 0  # and every N optimizer steps (0 = only at the end)
    export_dtype: Literal["float32", "bfloat16"] | None = None  # None: student.param_dtype

    def __post_init__(self):
        _check(self.every >= 0, f"ckpt.every must be >= 0, got {self.every}")
        _check(self.export_every >= 0, f"ckpt.export_every must be >= 0, got {self.export_every}")
        _check(self.export_dtype in (None, "float32", "bfloat16"),
               f"ckpt.export_dtype must be float32 or bfloat16 (or None), got "
               f"{self.export_dtype!r}")
        _check(self.keep >= 1, f"ckpt.keep must be >= 1, got {self.keep}")
        _check(self.resume_step is None or self.resume_step >= 0,
               f"ckpt.resume_step must be >= 0 (or None), got {self.resume_step}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class RunConfig:
    steps: int = 100
    seed: int = 0
    workdir: str = "runs/default"
    log_every: int = 1
    diagnostics_k: int = 16  # top-k of the token diagnostics (0 = off)
    tensorboard: bool = True
    wandb: bool = False  # log to Weights & Biases (when installed)
    progress: bool = True
    # resume even if the configuration differs from the checkpoint's (recorded in config.json)
    allow_config_change: bool = False

    def __post_init__(self):
        _check(self.steps >= 1, f"run.steps must be >= 1, got {self.steps}")
        _check(self.log_every >= 1, f"run.log_every must be >= 1, got {self.log_every}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Experiment:
    student: ModelSpec
    teacher: TeacherSpec
    objective: ObjectiveConfig = dataclasses.field(default_factory=OPDConfig,
                                                   metadata={"factory": make_config})
    sampler: SamplerConfig = dataclasses.field(
        default_factory=lambda: SamplerConfig(max_new_tokens=64))
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    step: StepConfig = dataclasses.field(default_factory=StepConfig)
    loop: LoopConfig = dataclasses.field(default_factory=LoopConfig)
    mesh: MeshConfig = dataclasses.field(default_factory=MeshConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    ckpt: CheckpointConfig = dataclasses.field(default_factory=CheckpointConfig)
    run: RunConfig = dataclasses.field(default_factory=RunConfig)
    eval: EvalConfig = dataclasses.field(default_factory=EvalConfig)
    # The reward function by name (opd_jax.rewards.get: "math", or "package.module:factory"),
    # for reward objectives and evaluation; "" = none, or the one given to the Trainer.
    reward: str = ""

    def __post_init__(self):
        _check(self.sampler.teacher_blend != "coin" or self.loop.teacher_mix <= 1.0,
               f"loop.teacher_mix={self.loop.teacher_mix} is a probability with "
               "sampler.teacher_blend='coin' and must lie in [0, 1] (with 'geometric' it is a KL "
               "budget in nats)")


# The loop's own defaults for the settings an objective may have its own default for.
LOOP_DEFAULTS = {"lmbda": 1.0, "ema_decay": 0.999, "ema_every": 1}


def resolve(exp: Experiment) -> Experiment:
    """``exp`` with every setting left unset (None) filled in: the objective's own default
    (:func:`opd_jax.objectives.loop_defaults`, e.g. GKD's lambda 0.5), else the loop's
    (:data:`LOOP_DEFAULTS`). What runs, and what ``config.json`` records, is the result."""
    d = {**LOOP_DEFAULTS, **loop_defaults(exp.objective)}
    pick = lambda value, name: d[name] if value is None else value  # noqa: E731
    loop = dataclasses.replace(exp.loop, lmbda=pick(exp.loop.lmbda, "lmbda"))
    teacher = dataclasses.replace(exp.teacher, ema_decay=pick(exp.teacher.ema_decay, "ema_decay"),
                                  ema_every=pick(exp.teacher.ema_every, "ema_every"))
    return dataclasses.replace(exp, loop=loop, teacher=teacher)
