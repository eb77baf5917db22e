"""On-policy self-distillation (OPSD, Zhao et al., arXiv 2601.18734) of Qwen3-1.7B on math: the
model is its own teacher, frozen at its initial weights, seeing a privileged reference solution
before the problem; full-vocabulary JSD(0.5) at temperature 1.1, one rollout per problem.

    python -m opd_jax.main --config experiments/qwen3_opsd.py:1gpu --workdir runs/qwen3_opsd \\
        --set data.path=data/math/opsd_train.jsonl
    python -m opd_jax.main --config experiments/qwen3_opsd.py:smoke --workdir /tmp/opsd  # CPU

Arguments: ``1gpu`` (the default), ``8gpu``, ``v5e-8``, ``smoke``. Checkpoints come from the
local Hugging Face cache or a directory, as in ``qwen3_math_opd.py``. Each record carries the
student's prompt and the teacher's privileged one, both chats rendered by the model's template:
``{"messages": [{"role": "user", "content": "Problem: <problem>\\n\\nPlease reason step by step,
and put your final answer within \\boxed{}."}], "teacher_messages": [{"role": "user",
"content": "<problem>\\n\\nHere is a reference solution to this problem:\\n<solution>\\nAfter
understanding the reference solution and the rationale behind each step, now articulate your own
step-by-step reasoning that derives the same final answer to the problem below: ..."}],
"answer": "<reference answer>"}`` (the paper's prompts, from its code).

As in ``qwen3_math_opd.py`` the student is evaluated on ``data/math/test.jsonl`` with
math-verify (``reward="math"``) at steps 0, 100 and 200 (pass@4, lengths, truncation, and the
token diagnostics against the initial model, which reads a held-out record's
``teacher_messages`` if it has them, else the student's prompt), and exported in bfloat16 to
``<workdir>/hf/step_200``. An evaluation of 500 problems (16 per batch, 64 sampled rows of up to
2048 tokens) takes ~32 x 10 s ~ 5 min on ``1gpu`` (estimated, not measured).

Memory and step time (estimates from the model sizes, not measured; see qwen3_math_opd.py for
the per-model figures and how they scale from BENCHMARKS.md):

- the student's training state 27.5 GB (float32 weights, AdamW, gradients) and the frozen
  initial copy 6.9 GB (float32). Sequences: teacher prompts up to 1024 tokens (the reference
  solution), 2048 new tokens; KV cache 112 KiB per token x rows x (512 + 2048).
- ``1gpu``: 16 prompts x 1 sample, remat, 4 micro-batches: KV cache 4.6 GB, the teacher
  pass's attention (16 heads x 3072^2 x 4 bytes = 0.6 GB per row) 9.7 GB: ~50 GB peak.
  Step: up to 2048 decode steps at ~2 ms ~4 s; scoring 16 x 3072 tokens of the 1.7B model
  1.7e14 FLOP ~1 s; update 2.5e14 FLOP ~2 s: ~7 s.
- ``8gpu``: data parallel, 128 prompts (16 per GPU): the same memory and ~7 s per step.
- ``v5e-8``: FSDP over 8 chips (34 GB of state -> 4.3 GB per chip), 32 prompts (4 per chip),
  2 micro-batches: ~10 GB per chip; ~10-15 s per step (sampling slowed by the weight gathers).
"""

from opd_jax import smoke
from opd_jax.objectives.recipes import OPSDConfig
from opd_jax.sampling import SamplerConfig
from opd_jax.training.config import (CheckpointConfig, DataConfig, EvalConfig, Experiment,
                                     MeshConfig, ModelSpec, OptimConfig, RunConfig, TeacherSpec)
from opd_jax.training.step import StepConfig

STUDENT = "Qwen/Qwen3-1.7B"
PRESETS = {  # preset -> (mesh, prompts per step, micro-batches)
    "1gpu": (MeshConfig(data=1), 16, 4),
    "8gpu": (MeshConfig(data=8), 128, 4),
    "v5e-8": (MeshConfig(data=1, fsdp=8), 32, 2),
}


def get_config(arg: str = "") -> Experiment:
    arg = arg or "1gpu"
    if arg == "smoke":
        return smoke_config()
    if arg not in PRESETS:
        raise ValueError(f"qwen3_opsd.py: unknown argument {arg!r}; use one of "
                         f"{sorted(PRESETS) + ['smoke']}")
    mesh, prompts, accum = PRESETS[arg]
    return Experiment(
        student=ModelSpec(path=STUDENT, param_dtype="float32", dtype="bfloat16", remat=True),
        teacher=TeacherSpec(kind="initial"),
        objective=OPSDConfig(temperature=1.1, beta=0.5),
        sampler=SamplerConfig(max_new_tokens=2048, num_samples=1, temperature=1.1,
                              prompt_buckets=(512, 1024), new_token_buckets=(2048,)),
        optim=OptimConfig(lr=2e-6, schedule="cosine", warmup_steps=10, clip_norm=1.0),
        step=StepConfig(grad_accum=accum, chunk_size=256),
        mesh=mesh,
        data=DataConfig(path="data/math/opsd_train.jsonl", batch_size=prompts,
                        max_prompt_len=1024, chat_template=True),
        ckpt=CheckpointConfig(every=25, keep=2, export_dtype="bfloat16"),
        run=RunConfig(steps=200, workdir="runs/qwen3_opsd", diagnostics_k=16),
        eval=EvalConfig(path="data/math/test.jsonl", every=100, at_start=True, k=4),
        reward="math",
    )


def smoke_config() -> Experiment:
    """Tiny random Qwen3 written as an HF checkpoint with a chat-template tokenizer; 16 problems
    whose teacher context holds a worked solution; 2 steps, each evaluated on 8 held-out
    problems and exported in bfloat16."""
    return Experiment(
        student=ModelSpec(config=smoke.student_config(), seed=0),
        teacher=TeacherSpec(kind="initial"),
        objective=OPSDConfig(temperature=1.1),
        sampler=SamplerConfig(max_new_tokens=16, num_samples=1, temperature=1.1,
                              new_token_buckets=(16,)),
        optim=OptimConfig(lr=1e-3),
        data=DataConfig(path="", batch_size=8, max_prompt_len=256, chat_template=True),
        ckpt=CheckpointConfig(every=0, keep=1, export_every=1, export_dtype="bfloat16"),
        run=RunConfig(steps=2, workdir="runs/qwen3_opsd_smoke", tensorboard=False,
                      diagnostics_k=4),
        eval=EvalConfig(every=1, k=2),  # eval.path: written by prepare
        reward="math",
    )


def prepare(exp: Experiment) -> Experiment:
    """Smoke runs (no data path): write the tiny model, the privileged records and the held-out
    ones."""
    if exp.data.path:
        return exp
    return smoke.prepare_run(exp, privileged=True)
