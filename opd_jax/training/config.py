"""The experiment configuration: frozen dataclasses, one per concern, validated on construction.

An experiment file returns an :class:`Experiment`; the command line changes any field with
``--set section.field=value`` (see :mod:`opd_jax.config`).
"""

import dataclasses
import json
import math
from typing import Literal

from opd_jax.objectives.recipes import ObjectiveConfig, OPDConfig, make_config
from opd_jax.objectives.requirements import loop_defaults
from opd_jax.sampling import SamplerConfig
from opd_jax.training.extrapolation import RULES as EXTRAPOLATION_RULES
from opd_jax.training.specs import ModelSpec, ServedSpec, TeacherSpec  # noqa: F401 (part of the config)
from opd_jax.training.specs import require as _check
from opd_jax.training.step import StepConfig


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
    # a system message put first in every chat without one (prompts, teacher contexts, environment
    # turns), e.g. a tool's description; records whose prompts are not chats are then refused
    system_prompt: str = ""

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
    # model turns per answer, the environment's replies between them (multi-turn episodes, as
    # loop.turns trains on; 1 = single-turn answers)
    turns: int = 1
    # also sample the k answers per problem by speculative decoding, the student drafting this
    # many tokens per forward of the teacher's model: acceptance_length (completion tokens per
    # teacher forward) and acceptance_rate, how good a drafter the student is (0 = not)
    draft_tokens: int = 0

    def __post_init__(self):
        _check(self.every >= 0, f"eval.every must be >= 0, got {self.every}")
        _check(isinstance(self.draft_tokens, int) and not isinstance(self.draft_tokens, bool)
               and self.draft_tokens >= 0, f"eval.draft_tokens must be an int >= 0 (0 = no speculative "
               f"sampling), got {self.draft_tokens!r}")
        _check(isinstance(self.turns, int) and not isinstance(self.turns, bool) and self.turns >= 1,
               f"eval.turns must be an int >= 1, got {self.turns!r}")
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
    # Draft-OPD's target-assisted rollouts: on-policy samples come from speculative decoding, the
    # student drafting this many tokens per forward of the teacher's model, which verifies them
    # (the text follows the teacher's distribution; the batch marks the positions of rejected
    # drafts, the extra draft_error, and the metrics the acceptance); 0 = the student samples alone
    draft_tokens: int = 0
    # assistant turns per episode (multi-turn on-policy distillation): after each of the student's
    # turns that ends with an EOS token, the environment's reply (`environment`; by default the
    # record's next env_turns: a user message, a tool's output) is appended and the student answers
    # again; the teacher scores the whole episode and the loss counts the student's tokens only
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
        _check(isinstance(self.draft_tokens, int) and not isinstance(self.draft_tokens, bool)
               and self.draft_tokens >= 0,
               f"loop.draft_tokens must be an int >= 0 (0 = the student samples alone), got {self.draft_tokens!r}")
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
    # What answers the student between the turns of multi-turn episodes (loop.turns, eval.turns;
    # opd_jax.environments.get): "" = the records' env_turns, "retry" (try again after a wrong
    # answer, by the reward function), "calculator" (a tool), or "package.module:factory"; or the
    # one given to the Trainer.
    environment: str = ""

    def __post_init__(self):
        _check(not self.environment or self.loop.turns > 1 or self.eval.turns > 1,
               f"environment={self.environment!r} answers the student between the turns of "
               "multi-turn episodes, and this experiment has none: set loop.turns > 1 (and/or "
               "eval.turns > 1), or unset environment")
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
