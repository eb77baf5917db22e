"""Qwen3-0.6B trained as Qwen3-8B's speculative-decoding drafter on math prompts (Draft-OPD, arXiv
2605.29343, as ``objective=draft_opd`` reads it): every step samples by speculative decoding, the
student drafting 4 tokens per forward of the teacher, which verifies them (``loop.draft_tokens``),
and the student learns the total variation to the teacher at every position of those
target-assisted rollouts, the positions where the teacher rejected a draft weighted 2.

    python -m opd_jax.main --config experiments/qwen3_draft_opd.py:1gpu --workdir runs/q3_draft \\
        --set data.path=data/math/train.jsonl
    python -m opd_jax.main --config experiments/qwen3_draft_opd.py:smoke --workdir /tmp/draft  # CPU

Arguments: ``1gpu`` (the default), ``8gpu``, ``smoke``. Data and checkpoints as in
``qwen3_math_opd.py`` (the two models share Qwen3's tokenizer, which speculative sampling needs).
What to watch: ``sample/acceptance_length`` (completion tokens per teacher forward, at most 5)
and ``sample/acceptance_rate`` (the share of drafts accepted) in ``metrics.jsonl``, measured on
every step's own rollouts; ``draft_opd/error_frac``, the share of tokens that replaced a rejected
draft. The held-out evaluation (before the first step and at the end) reports the same
acceptance on held-out problems (``eval.draft_tokens``: ``eval/acceptance_length``,
``eval/acceptance_rate``), the drafter's own pass@k and its reverse KL to the teacher.
``--set objective.divergence=forward_kl`` or ``--set objective.error_weight=0`` are the ablations
of ``experiments/lab/speculative_drafter.py`` (in the lab the divergence mattered, the rollouts
and the weight did not).

Memory and step time (estimates from the model sizes, not measured): Qwen3-0.6B has 0.6e9
parameters (float32 master weights, AdamW moments and gradients 9.6 GB), Qwen3-8B 8.19e9 (bf16
16.4 GB). Speculative sampling keeps both models' KV caches, each row ``prompt + 1024 + 4`` slots:
112 KiB (0.6B) + 144 KiB (8B) per slot in bf16, 12.9 GB at 32 rows of 512-token prompts. ``1gpu``
(H100 80 GB): 8 prompts x 4 samples, remat, 4 micro-batches. Each block of 4 drafts costs 5
single-token forwards of the 0.6B model and one 5-token forward of the 8B one, which reads the
8B weights once for several tokens: that is where speculative decoding is faster than the 8B
model decoding alone, if the drafts are accepted.
"""

from opd_jax import smoke
from opd_jax.objectives.configs_2026 import DraftOPDConfig
from opd_jax.sampling import SamplerConfig
from opd_jax.training.config import (CheckpointConfig, DataConfig, EvalConfig, Experiment, LoopConfig,
                                     MeshConfig, ModelSpec, OptimConfig, RunConfig, TeacherSpec)
from opd_jax.training.step import StepConfig

STUDENT, TEACHER = "Qwen/Qwen3-0.6B", "Qwen/Qwen3-8B"
DRAFT_TOKENS = 4
# preset -> (mesh, prompts per step, micro-batches)
PRESETS = {"1gpu": (MeshConfig(data=1), 8, 4), "8gpu": (MeshConfig(data=8), 64, 4)}


def get_config(arg: str = "") -> Experiment:
    arg = arg or "1gpu"
    if arg == "smoke":
        return smoke_config()
    if arg not in PRESETS:
        raise ValueError(f"qwen3_draft_opd.py: unknown argument {arg!r}; use one of {sorted(PRESETS) + ['smoke']}")
    mesh, prompts, accum = PRESETS[arg]
    return Experiment(
        student=ModelSpec(path=STUDENT, param_dtype="float32", dtype="bfloat16", remat=True),
        teacher=TeacherSpec(kind="model", model=ModelSpec(path=TEACHER, param_dtype="bfloat16",
                                                          dtype="bfloat16")),
        objective=DraftOPDConfig(),
        loop=LoopConfig(draft_tokens=DRAFT_TOKENS),
        sampler=SamplerConfig(max_new_tokens=1024, num_samples=4, temperature=1.0,
                              prompt_buckets=(256, 512), new_token_buckets=(1024,)),
        optim=OptimConfig(lr=5e-6, schedule="cosine", warmup_steps=10, clip_norm=1.0),
        step=StepConfig(grad_accum=accum, chunk_size=256),
        mesh=mesh,
        data=DataConfig(path="data/math/train.jsonl", batch_size=prompts, max_prompt_len=512,
                        chat_template=True),
        ckpt=CheckpointConfig(every=25, keep=2, export_dtype="bfloat16"),
        run=RunConfig(steps=200, workdir="runs/qwen3_draft_opd", diagnostics_k=16),
        eval=EvalConfig(path="data/math/test.jsonl", at_start=True, k=4, draft_tokens=DRAFT_TOKENS),
        reward="math",
    )


def smoke_config() -> Experiment:
    """The same code path at toy size: tiny random Qwen3 models written as HF checkpoints with a
    chat-template tokenizer, 16 arithmetic problems, 2 steps, evaluated before the first and at
    the end (``opd_jax.smoke``)."""
    return Experiment(
        student=ModelSpec(config=smoke.student_config(), dtype="float32", seed=0),
        teacher=TeacherSpec(kind="model", model=ModelSpec(config=smoke.teacher_config(), seed=1)),
        objective=DraftOPDConfig(),
        loop=LoopConfig(draft_tokens=DRAFT_TOKENS),
        sampler=SamplerConfig(max_new_tokens=16, num_samples=2, new_token_buckets=(16,)),
        optim=OptimConfig(lr=1e-3),
        data=DataConfig(path="", batch_size=8, max_prompt_len=192, chat_template=True),
        ckpt=CheckpointConfig(every=0, keep=1),
        run=RunConfig(steps=2, workdir="runs/qwen3_draft_opd_smoke", tensorboard=False, diagnostics_k=4),
        eval=EvalConfig(at_start=True, k=2, draft_tokens=DRAFT_TOKENS),  # eval.path: written by prepare
        reward="math",
    )


def prepare(exp: Experiment) -> Experiment:
    """Smoke runs (no data path): write the tiny models as HF checkpoints and the problems as
    chat records under the work directory, train on them and evaluate on the held-out ones."""
    if exp.data.path:
        return exp
    return smoke.prepare_run(exp, privileged=False)
