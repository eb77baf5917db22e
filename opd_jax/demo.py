"""A two-minute end-to-end demo on CPU: train a teacher, distil it on-policy into a smaller student.

The task is synthetic and verifiable. A prompt ``[BOS, a, b, c]`` of three distinct symbols
has two valid answers: the symbols twice in order (``a b c a b c``) or twice reversed
(``c b a c b a``), then EOS. The first answer token is a genuine choice (the teacher's entropy
is high there), every later one is determined (low entropy): the structure entropy-aware OPD
methods reason about.

1. A teacher (2 layers, width 64) is trained from scratch by supervised learning on both kinds
   of answer (the same ``Trainer``, objective ``sft``, on the data's completions).
2. A student (2 layers, width 32) learns from the teacher on its own samples with sampled-token
   reverse-KL OPD (``opd``) after a short supervised cold start on teacher samples: sample →
   score with the teacher → one jitted update.

Printed: the exact reverse KL to the teacher on fresh student samples and the fraction of
valid answers, before and after; everything runs through the same code path as a real run.

    python -m opd_jax.demo [--workdir DIR] [--steps 250]   # DIR: a new runs/demo/<time> by default
"""

import argparse
import json
import os
import time

import numpy as np

SYMBOLS, OFFSET, BOS, EOS, REPEATS = 29, 3, 1, 2, 2
V = OFFSET + SYMBOLS
LENGTH = 3 * REPEATS + 1  # answer tokens including EOS


def answers(prompt: list[int]) -> list[list[int]]:
    a, b, c = prompt[1:4]
    return [[a, b, c] * REPEATS + [EOS], [c, b, a] * REPEATS + [EOS]]


def is_valid(prompt: list[int], completion: list[int]) -> bool:
    return list(completion) in answers(list(prompt))


def random_prompt(rng) -> list[int]:
    return [BOS] + [OFFSET + int(x) for x in rng.choice(SYMBOLS, 3, replace=False)]


def write_data(path: str, n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    with open(path, "w") as f:
        for _ in range(n):
            prompt = random_prompt(rng)
            completion = answers(prompt)[int(rng.random() < 0.5)]
            f.write(json.dumps({"prompt_ids": prompt, "completion_ids": completion}) + "\n")


def experiment(workdir: str, data: str, *, student, teacher, objective, steps, lr, loop, batch):
    from opd_jax.sampling import SamplerConfig
    from opd_jax.training.config import (DataConfig, Experiment, MeshConfig, OptimConfig,
                                         RunConfig)
    return Experiment(student=student, teacher=teacher, objective=objective, loop=loop,
                      sampler=SamplerConfig(max_new_tokens=LENGTH, eos_ids=(EOS,), pad_id=0,
                                            num_samples=4),
                      optim=OptimConfig(lr=lr, warmup_steps=20, schedule="cosine"),
                      mesh=MeshConfig(data=1), data=DataConfig(path=data, batch_size=batch),
                      run=RunConfig(steps=steps, workdir=workdir, diagnostics_k=8, progress=True))


def valid_fraction(trainer, prompts) -> float:
    import jax
    from opd_jax.data import left_pad
    from opd_jax.sampling import sample
    p, m = left_pad([tuple(x) for x in prompts], 4, 0)
    cfg = trainer.exp.sampler.replace(num_samples=1)
    with jax.set_mesh(trainer.mesh):
        roll = sample(trainer.s_graph, trainer.state.params, p, m, jax.random.key(7), cfg=cfg)
    toks, mask = np.asarray(roll.tokens), np.asarray(roll.completion_mask)
    return float(np.mean([is_valid(list(pr), list(t[mk])) for pr, t, mk in zip(prompts, toks, mask)]))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", default=None,
                        help="a new or empty directory (default: runs/demo/<date-time>)")
    parser.add_argument("--teacher-steps", type=int, default=600)
    parser.add_argument("--cold-start-steps", type=int, default=150)
    parser.add_argument("--steps", type=int, default=250, help="OPD steps after the cold start")
    args = parser.parse_args(argv)

    import jax  # noqa: F401  (imported late so that --help is instant)
    import opd_jax.objectives as O
    from opd_jax.models.config import tiny_config
    from opd_jax.training.config import LoopConfig, ModelSpec, TeacherSpec
    from opd_jax.training.loop import Trainer

    if args.workdir is None:
        args.workdir = os.path.join("runs", "demo", time.strftime("%Y%m%d-%H%M%S"))
    if os.path.isdir(args.workdir) and os.listdir(args.workdir):
        parser.error(f"--workdir {args.workdir} is not empty (a previous run's checkpoints would "
                     "be resumed); pass a new directory, or leave --workdir out for a fresh one.")
    os.makedirs(args.workdir, exist_ok=True)
    data = os.path.join(args.workdir, "progressions.jsonl")
    write_data(data, 2048, seed=0)
    rng = np.random.default_rng(1)
    held_out = [random_prompt(rng) for _ in range(128)]
    t0 = time.time()

    teacher_spec = ModelSpec(config=tiny_config(vocab_size=V, hidden_size=64, num_layers=2,
                                                intermediate_size=128), seed=1)
    print(f"1/2 training the teacher by supervised learning ({args.teacher_steps} steps)")
    sft = Trainer(experiment(os.path.join(args.workdir, "teacher"), data, student=teacher_spec,
                             teacher=TeacherSpec(kind="self"), objective=O.SFTConfig(),
                             steps=args.teacher_steps, lr=3e-3,
                             loop=LoopConfig(lmbda=0.0), batch=64))
    sft.run()
    print(f"   teacher: {valid_fraction(sft, held_out):.0%} valid answers on held-out prompts")
    # the run exported the trained teacher at its end as a Hugging Face checkpoint: what the
    # student's run names as its teacher, so that its config.json describes the teacher it used
    teacher_dir = sft.export_dir()

    total = args.cold_start_steps + args.steps
    print(f"2/2 a smaller student: {args.cold_start_steps} supervised steps on teacher samples "
          f"(cold start), then {args.steps} steps of on-policy distillation")
    student_spec = ModelSpec(config=tiny_config(vocab_size=V, hidden_size=32,
                                                num_layers=2,
                                                intermediate_size=64), seed=0)
    opd = Trainer(experiment(os.path.join(args.workdir, "student"), data, student=student_spec,
                             teacher=TeacherSpec(kind="model", model=ModelSpec(path=teacher_dir)),
                             objective=O.OPDConfig(), steps=total, lr=3e-3,
                             loop=LoopConfig(cold_start_steps=args.cold_start_steps), batch=16))
    rows = [("initial", opd.evaluate(), valid_fraction(opd, held_out))]
    for name, steps in (("after the cold start", args.cold_start_steps), ("after OPD", total)):
        opd.run(until=steps)  # continues from the state in memory (and its checkpoint)
        rows.append((name, opd.evaluate(), valid_fraction(opd, held_out)))
    print("   student               reverse KL to teacher (nats/token)   valid answers")
    for name, ev, valid in rows:
        print(f"   {name:21s} {ev['eval/reverse_kl']:12.3f} {valid:28.0%}")
    print(f"done in {time.time() - t0:.0f} s; metrics in {args.workdir}/*/metrics.jsonl")


if __name__ == "__main__":
    main()
