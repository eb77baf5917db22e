"""One full on-policy distillation iteration (sample, score, update): opd_jax vs TRL's GKDTrainer.

Both sides hold the same student and teacher weights (tiny HF Qwen3 models saved by PyTorch and
loaded by ``opd_jax.models.from_pretrained``), train on the same batch of prompts with the same
lengths (no end-of-sequence token can stop a row early, so both generate exactly
``--new-tokens`` tokens), with GKD's JSD(beta = 0.5) loss, ``lmbda = 1`` (always on-policy),
temperature 1 and AdamW. An iteration is: sample completions from the student, run the teacher
on them, one forward/backward of the student, one optimizer step. TRL's is
``GKDTrainer.training_step`` (generation with ``transformers.generate``, KV cache on) plus the
optimizer step; ours is ``Trainer.iteration()``. Runs alternate (A B A B ...); medians.

    python benchmarks/bench_iteration.py             # tiny models, batch 8, 32-token prompts, 64 new
    python benchmarks/bench_iteration.py --smoke     # seconds
"""

import argparse
import json
import os
import statistics
import sys
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402

from benchmarks.common import alternate, command_line  # noqa: E402

MODELS = {  # HF Qwen3 configurations; the teacher is wider and deeper than the student
    "student": dict(vocab_size=1024, hidden_size=64, intermediate_size=192, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                    tie_word_embeddings=True),
    "teacher": dict(vocab_size=1024, hidden_size=128, intermediate_size=384, num_hidden_layers=4,
                    num_attention_heads=4, num_key_value_heads=2, head_dim=32,
                    tie_word_embeddings=True),
}
LR, BETA = 1e-5, 0.5
NO_EOS = 1023  # the generation config's eos id; generation is forced to run to full length


def save_models(workdir):
    paths = {}
    for i, (name, kw) in enumerate(MODELS.items()):
        torch.manual_seed(i)
        cfg = transformers.AutoConfig.for_model("qwen3", eos_token_id=None, pad_token_id=0, **kw)
        model = transformers.AutoModelForCausalLM.from_config(cfg, attn_implementation="sdpa")
        paths[name] = os.path.join(workdir, name)
        model.save_pretrained(paths[name])
    return paths


def tiny_tokenizer(path):
    """A word-level tokenizer over the models' vocabulary (GKDTrainer needs one for its pad id)."""
    from tokenizers import Tokenizer, models
    vocab = {f"t{i}": i for i in range(MODELS["student"]["vocab_size"])}
    tok = transformers.PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="t1")), pad_token="t0",
        unk_token="t1")
    tok.save_pretrained(path)
    return tok


def trl_iteration(paths, prompts, new_tokens, workdir):
    from trl.experimental.gkd import GKDConfig, GKDTrainer
    student = transformers.AutoModelForCausalLM.from_pretrained(paths["student"])
    teacher = transformers.AutoModelForCausalLM.from_pretrained(paths["teacher"])
    tok = tiny_tokenizer(os.path.join(workdir, "tokenizer"))
    args = GKDConfig(output_dir=os.path.join(workdir, "trl"), lmbda=1.0, beta=BETA, temperature=1.0,
                     max_new_tokens=new_tokens, learning_rate=LR, per_device_train_batch_size=len(prompts),
                     report_to=[], use_cpu=True, disable_tqdm=True, bf16=False)
    ds = __import__("datasets").Dataset.from_dict({"messages": [[{"role": "user", "content": "x"}]]})
    trainer = GKDTrainer(model=student, teacher_model=teacher, args=args, train_dataset=ds,
                         processing_class=tok, data_collator=lambda rows: rows)
    trainer.generation_config.eos_token_id = NO_EOS  # never sampled: the rows run to full length
    trainer.generation_config.min_new_tokens = new_tokens
    trainer.create_optimizer_and_scheduler(num_training_steps=10_000)
    trainer.current_gradient_accumulation_steps = 1  # set by Trainer.train(), which we bypass
    p = torch.tensor(prompts, dtype=torch.long)
    inputs = {"prompts": p, "prompt_attention_mask": torch.ones_like(p), "input_ids": p,
              "attention_mask": torch.ones_like(p), "labels": torch.full_like(p, -100)}

    def run():
        trainer.training_step(trainer.model, dict(inputs))
        trainer.optimizer.step()
        trainer.optimizer.zero_grad(set_to_none=True)
    return run


def ours_iteration(paths, prompts, new_tokens, workdir, cpu_devices=1):
    import opd_jax.objectives as O
    from opd_jax.sampling import SamplerConfig
    from opd_jax.training.config import (DataConfig, Experiment, LoopConfig, MeshConfig,
                                         ModelSpec, OptimConfig, RunConfig, TeacherSpec)
    from opd_jax.training.loop import Trainer
    from opd_jax.training.step import StepConfig
    data = os.path.join(workdir, "prompts.jsonl")
    with open(data, "w") as f:
        for p in prompts:
            f.write(json.dumps({"prompt_ids": p}) + "\n")
    exp = Experiment(
        student=ModelSpec(path=paths["student"]),
        teacher=TeacherSpec(kind="model", model=ModelSpec(path=paths["teacher"])),
        objective=O.GKDConfig(beta=BETA), loop=LoopConfig(lmbda=1.0),  # every step on-policy
        sampler=SamplerConfig(max_new_tokens=new_tokens, pad_id=0, eos_ids=(),
                              new_token_buckets=(new_tokens,), prompt_buckets=(len(prompts[0]),)),
        optim=OptimConfig(lr=LR, clip_norm=0.0), step=StepConfig(chunk_size=64),
        mesh=MeshConfig(data=cpu_devices), data=DataConfig(path=data, batch_size=len(prompts)),
        run=RunConfig(steps=10_000, workdir=os.path.join(workdir, "ours"), progress=False,
                      tensorboard=False, diagnostics_k=0))
    trainer = Trainer(exp)
    return lambda: trainer.iteration()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--reps", type=int, default=11)
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--cpu-devices", type=int, default=1, help="split the host CPU into this many JAX "
                    "devices and spread ours' rows over them (python -m opd_jax.main --cpu-devices)")
    a = ap.parse_args()
    if a.cpu_devices < 1:
        ap.error(f"--cpu-devices must be >= 1, got {a.cpu_devices}")
    if a.cpu_devices > 1:  # before JAX creates its CPU client
        jax.config.update("jax_num_cpu_devices", a.cpu_devices)
    if a.smoke:
        a.batch, a.prompt_len, a.new_tokens, a.reps = 2, 8, 8, 1
    rng = np.random.default_rng(0)
    prompts = rng.integers(2, NO_EOS, (a.batch, a.prompt_len)).tolist()
    with tempfile.TemporaryDirectory() as workdir:
        paths = save_models(workdir)
        runs = {"opd_jax": ours_iteration(paths, prompts, a.new_tokens, workdir, a.cpu_devices),
                "TRL GKDTrainer": trl_iteration(paths, prompts, a.new_tokens, workdir)}
        for run in runs.values():  # warm-up: compile ours, warm PyTorch
            run()
        times = alternate(runs, a.reps)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"command: {command_line()}")
    print(f"jax {jax.__version__}, torch {torch.__version__} ({torch.get_num_threads()} threads), "
          f"transformers {transformers.__version__}; {os.cpu_count()} CPUs; float32; "
          f"batch {a.batch}, prompt {a.prompt_len}, {a.new_tokens} new tokens; opd_jax on "
          f"{a.cpu_devices} CPU device(s); "
          f"medians of {a.reps} alternating runs\n")
    print("| system | s / iteration | tokens / s | speed-up vs TRL |")
    print("|---|---|---|---|")
    for name in runs:
        print(f"| {name} | {med[name]:.3f} | {a.batch * a.new_tokens / med[name]:,.0f} | "
              f"{med['TRL GKDTrainer'] / med[name]:.2f}x |")


if __name__ == "__main__":
    main()
