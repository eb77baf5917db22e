"""On-policy distillation of Qwen3-1.7B from Qwen3-8B on math prompts (sampled-token reverse KL,
Thinking Machines' recipe), with a math-verify reward for evaluation and reward objectives.

    python -m opd_jax.main --config experiments/qwen3_math_opd.py:1gpu --workdir runs/qwen3_math \\
        --set data.path=data/math/train.jsonl
    python -m opd_jax.main --config experiments/qwen3_math_opd.py:smoke --workdir /tmp/q3  # CPU

Arguments: ``1gpu`` (the default), ``8gpu``, ``v5e-8`` (a TPU v5e-8 slice, one host), ``smoke``.

Checkpoints and data live on the machine (nothing is downloaded): ``student.path`` and
``teacher.model.path`` are repo ids looked up in the local Hugging Face cache (fill it beforehand
with ``huggingface-cli download Qwen/Qwen3-1.7B`` and ``Qwen/Qwen3-8B`` on a machine with network,
then copy ``~/.cache/huggingface/hub``), or local directories (``--set student.path=/models/q17``).
The data file holds one JSON object per line: ``{"messages": [{"role": "user", "content":
"<problem> Please reason step by step, and put your final answer within \\boxed{}."}],
"answer": "<reference answer>"}`` (or ``"prompt"`` text, wrapped by the chat template because
``data.chat_template`` is on). The tokenizer and chat template are the student's; sampling stops
at every end-of-sequence id of its ``generation_config.json``.

The run evaluates the student on the held-out ``data/math/test.jsonl`` (records with ``answer``,
checked by math-verify: ``reward="math"``) before the first step, every 100 steps and at the end
(``<workdir>/eval/<step>.json``; greedy pass@1, pass@1 and pass@4, lengths, truncation, and the
exact reverse KL, top-16 overlap and entropy gap to the teacher on the student's samples), and
exports it in bfloat16 at the end (``<workdir>/hf/step_200``, for ``transformers`` or vLLM).
``--set eval.path=`` turns the evaluation off. The teacher's own score, the ceiling, comes from
``python -m opd_jax.evaluate --model Qwen/Qwen3-8B --data data/math/test.jsonl --k 4``.

Memory and step time (estimates from the model sizes, not measured; scale from BENCHMARKS.md's
H100 figures: decode ~2.5 ms/step at 1.7B and 32 rows, teacher scoring at ~56% MFU, the
student's update at ~21% MFU of 731 TFLOP/s):

- sizes: Qwen3-1.7B has 1.72e9 parameters (0.31e9 in the tied embedding), Qwen3-8B 8.19e9.
  Student: float32 master weights 6.9 GB + AdamW moments 13.8 GB + gradients 6.9 GB = 27.5 GB;
  teacher bf16 16.4 GB. KV cache of the student while sampling: 2 x 28 layers x 8 heads x 128 x
  2 bytes = 112 KiB per token, x rows x (512 prompt + 1024 new) = 5.6 GB at 32 rows. Attention is
  materialised (float32 scores, [rows, heads, T, T]): the teacher's scoring pass holds
  32 heads x 1536^2 x 4 bytes = 0.3 GB per row for one layer at a time, 9.7 GB at 32 rows.
- ``1gpu`` (H100 80 GB or H200): 8 prompts x 4 samples = 32 rows, remat, 4 micro-batches:
  ~60 GB peak (set ``XLA_PYTHON_CLIENT_MEM_FRACTION=0.92`` on an 80 GB card). Step: sampling up to
  1024 decode steps ~3 s, teacher scoring 8.5e14 FLOP ~2 s, update 6.8e14 FLOP ~4.5 s: ~10 s.
- ``8gpu``: data parallel over 8 GPUs, 64 prompts x 4 = 256 rows, the same per-GPU work and
  memory as ``1gpu`` plus a 6.9 GB gradient all-reduce (~30 ms on NVLink): ~10 s per step.
- evaluation (not measured): 500 problems in batches of 8 prompts, each a greedy call of 8 rows
  and a sampled call of 32 rows of up to 1024 tokens (~3 s each at 1.7B on one GPU), plus the
  teacher's scoring pass: ~63 x 7 s ~ 7 min per evaluation on ``1gpu``, three per run (steps 0,
  100, 200). Lower ``eval.limit`` or raise ``eval.every`` to spend less.
- ``v5e-8`` (8 chips x 16 GB HBM, 197 bf16 TFLOP/s each): FSDP over the 8 chips (weights and
  optimizer state 44 GB / 8 = 5.5 GB per chip), 16 prompts x 4 = 64 rows (8 per chip), 2
  micro-batches: ~13 GB per chip. Step: ~3e15 FLOP at ~35% MFU ~6 s, plus sampling slowed by the
  per-step weight gathers of FSDP (~10 ms x 1024): ~15-20 s.
"""

from opd_jax import smoke
from opd_jax.objectives.recipes import OPDConfig
from opd_jax.sampling import SamplerConfig
from opd_jax.training.config import (CheckpointConfig, DataConfig, EvalConfig, Experiment,
                                     MeshConfig, ModelSpec, OptimConfig, RunConfig, TeacherSpec)
from opd_jax.training.step import StepConfig

STUDENT, TEACHER = "Qwen/Qwen3-1.7B", "Qwen/Qwen3-8B"
# preset -> (mesh, prompts per step, micro-batches)
PRESETS = {
    "1gpu": (MeshConfig(data=1), 8, 4),
    "8gpu": (MeshConfig(data=8), 64, 4),
    "v5e-8": (MeshConfig(data=1, fsdp=8), 16, 2),
}


def get_config(arg: str = "") -> Experiment:
    arg = arg or "1gpu"
    if arg == "smoke":
        return smoke_config()
    if arg not in PRESETS:
        raise ValueError(f"qwen3_math_opd.py: unknown argument {arg!r}; use one of "
                         f"{sorted(PRESETS) + ['smoke']}")
    mesh, prompts, accum = PRESETS[arg]
    return Experiment(
        student=ModelSpec(path=STUDENT, param_dtype="float32", dtype="bfloat16", remat=True),
        teacher=TeacherSpec(kind="model", model=ModelSpec(path=TEACHER, param_dtype="bfloat16",
                                                          dtype="bfloat16")),
        objective=OPDConfig(),
        sampler=SamplerConfig(max_new_tokens=1024, num_samples=4, temperature=1.0,
                              prompt_buckets=(256, 512), new_token_buckets=(1024,)),
        optim=OptimConfig(lr=2e-6, schedule="cosine", warmup_steps=10, clip_norm=1.0),
        step=StepConfig(grad_accum=accum, chunk_size=256),
        mesh=mesh,
        data=DataConfig(path="data/math/train.jsonl", batch_size=prompts, max_prompt_len=512,
                        chat_template=True),
        ckpt=CheckpointConfig(every=25, keep=2, export_dtype="bfloat16"),
        run=RunConfig(steps=200, workdir="runs/qwen3_math_opd", diagnostics_k=16),
        eval=EvalConfig(path="data/math/test.jsonl", every=100, at_start=True, k=4),
        reward="math",  # opd_jax.rewards: evaluation, and reward objectives (objective=reinforce)
    )


def smoke_config() -> Experiment:
    """The same code path at toy size: tiny random Qwen3 models written as HF checkpoints with a
    chat-template tokenizer (see ``prepare``), 16 arithmetic problems, 2 steps, evaluated on 8
    held-out ones before the first step and after each, exported at the end."""
    return Experiment(
        student=ModelSpec(config=smoke.student_config(), dtype="float32", seed=0),
        teacher=TeacherSpec(kind="model", model=ModelSpec(config=smoke.teacher_config(), seed=1)),
        objective=OPDConfig(),
        sampler=SamplerConfig(max_new_tokens=16, num_samples=2, new_token_buckets=(16,)),
        optim=OptimConfig(lr=1e-3),
        data=DataConfig(path="", batch_size=8, max_prompt_len=192, chat_template=True),
        ckpt=CheckpointConfig(every=0, keep=1),  # the student exported at the end (float32)
        run=RunConfig(steps=2, workdir="runs/qwen3_math_opd_smoke", tensorboard=False,
                      diagnostics_k=4),
        eval=EvalConfig(every=1, at_start=True, k=2),  # eval.path: written by prepare
        reward="math",
    )


def prepare(exp: Experiment) -> Experiment:
    """Smoke runs (no data path): write the tiny models as HF checkpoints and the problems as
    chat records under the work directory, train on them and evaluate on the held-out ones."""
    if exp.data.path:
        return exp
    return smoke.prepare_run(exp, privileged=False)
