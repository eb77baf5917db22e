"""Tiny on-policy distillation: a random 1-layer student learns from a random 2-layer teacher on
synthetic prompts. Nothing is downloaded; the prompt file is written into the work directory.

    python -m opd_jax.main --config experiments/tiny_opd.py:smoke --workdir /tmp/tiny_opd

``smoke``: 4 steps, a checkpoint every 2; about 15-30 s on a laptop CPU, nearly all of it JAX
start-up and compilation (the steps themselves take milliseconds). Run the same command again
and it resumes from the last checkpoint (finding nothing left to do). ``default`` (or no
argument): 200 steps with a cosine schedule, a few minutes on a CPU. Any field can be changed,
e.g. ``--set objective=eopd --set objective.tau=0.9 --set optim.lr=3e-3``.
"""

import dataclasses
import json
import os

import numpy as np

from opd_jax.models.config import tiny_config
from opd_jax.objectives.recipes import OPDConfig
from opd_jax.sampling import SamplerConfig
from opd_jax.training.config import (CheckpointConfig, DataConfig, Experiment, ModelSpec,
                                     OptimConfig, RunConfig, TeacherSpec)

VOCAB = 32
EOS, PAD = 1, 0
SETTINGS = {  # arg -> (steps, checkpoint period, learning-rate schedule)
    "smoke": (4, 2, "constant"),
    "default": (200, 50, "cosine"),
}


def get_config(arg: str = "") -> Experiment:
    arg = arg or "default"
    if arg not in SETTINGS:
        raise ValueError(f"tiny_opd.py: unknown argument {arg!r}; use one of {sorted(SETTINGS)}")
    steps, every, schedule = SETTINGS[arg]
    return Experiment(
        student=ModelSpec(config=tiny_config(vocab_size=VOCAB, hidden_size=32, num_layers=1),
                          seed=0),
        teacher=TeacherSpec(kind="model", model=ModelSpec(
            config=tiny_config(vocab_size=VOCAB, hidden_size=48, num_layers=2), seed=1)),
        objective=OPDConfig(),
        sampler=SamplerConfig(max_new_tokens=8, eos_ids=(EOS,), pad_id=PAD, num_samples=2),
        optim=OptimConfig(lr=1e-2, schedule=schedule),
        data=DataConfig(path="", batch_size=8, max_prompt_len=16),  # "": synthetic, see prepare
        ckpt=CheckpointConfig(every=every, keep=2),
        run=RunConfig(steps=steps, workdir="runs/tiny_opd", tensorboard=False, diagnostics_k=4),
    )


def prepare(exp: Experiment) -> Experiment:
    """Called by ``opd_jax.main`` once the configuration is final: with no ``data.path``, write
    64 synthetic prompts to ``<workdir>/prompts.jsonl`` (if missing) and train on them."""
    if exp.data.path:
        return exp
    path = os.path.join(exp.run.workdir, "prompts.jsonl")
    if not os.path.exists(path):
        write_prompts(path, n=64, vocab=VOCAB, seed=0)
    return dataclasses.replace(exp, data=dataclasses.replace(exp.data, path=path))


def reward_fn(example, completion) -> float:
    """A toy verifier (used by reward objectives, e.g. ``--set objective=reinforce``): the
    fraction of even token ids in the completion."""
    return float(np.mean(completion % 2 == 0)) if len(completion) else 0.0


def write_prompts(path: str, *, n: int, vocab: int, seed: int) -> None:
    """``n`` prompts of 2-8 random ids in [2, vocab), written atomically (hosts may race)."""
    rng = np.random.default_rng(seed)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        for _ in range(n):
            ids = rng.integers(2, vocab, rng.integers(2, 9)).tolist()
            f.write(json.dumps({"prompt_ids": ids}) + "\n")
    os.replace(tmp, path)
